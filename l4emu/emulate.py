"""Drive a Switch packet by packet when some of its reals are emulated hosts.

Each packet goes through the same datapath as ever; one the switch sends to an emulated real is
handed to that host, and the host's answers go back through the datapath (reverse NAT to the VIP)
at the triggering packet's time plus 1 us per answer, never the wall clock. Two views come out:
`outside` is what the clients see (their packets as they arrive, re-stamped; answers after SNAT),
`inside` what the real servers see (after DNAT; answers before SNAT).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from l4emu.datapath._batch import VERDICT_NAMES, Batch
from l4emu.errors import OptionError
from l4emu.hosts.packets import TCP, UDP, parse, reply_link_header
from l4emu.hosts.restamp import Restamper

REPLY_GAP_NS = 1000
PROTOCOL_NUMBERS = {"tcp": TCP, "udp": UDP}
VERDICT = {name: number for number, name in enumerate(VERDICT_NAMES)}


@dataclass(slots=True)
class Out:
    frame: bytes
    ts_ns: int
    origlen: int
    iface: int
    linktype: int
    verdict: int
    detail: int


class Emulator:
    """The switch plus its hosts, one packet at a time; `outside`/`inside` receive each Out in order."""

    def __init__(
        self,
        switch,
        outside: Callable[[Out], None] | None = None,
        inside: Callable[[Out], None] | None = None,
        restamp: bool = True,
    ):
        if switch.hosts is None:
            raise OptionError("no real in this config is emulated (emulated = true)")
        self.switch, self.hosts = switch, switch.hosts
        self.outside, self.inside = outside, inside
        self.restamper = Restamper() if restamp else None
        self.scratch = Batch(1, 1 << 16)
        # Client address -> (link type, interface, link header) of its last packet: how answers go back.
        self.links: dict[bytes, tuple[int, int, bytes]] = {}
        self.last_ts = 0
        self.answers = 0
        self.superseded = 0  # captured packets from an emulated host's address: the host speaks for it
        # A service whose reals all answer for themselves: what the capture recorded from its VIP or
        # capture servers is superseded too (answering twice would fork the stream).
        self.recorded_fronts = {
            (address.packed, port, PROTOCOL_NUMBERS[svc.protocol])
            for svc in switch.config.services
            if all(real.emulated for real in svc.reals)
            for address, port in ((svc.vip, svc.port), *svc.capture_servers)
        }

    def client(self, frame: bytes, ts: int, origlen: int, iface: int, linktype: int) -> None:
        """One packet as it arrives at the switch (replay: the next one of the capture)."""
        self.advance(ts)
        seg = parse(frame, linktype)
        if seg is not None and (
            seg.src in self.hosts.by_address or (seg.src, seg.sport, seg.proto) in self.recorded_fronts
        ):
            self.superseded += 1  # e.g. a recorded server's replies: answering twice would fork the stream
            return
        if self.restamper is not None and seg is not None and seg.proto == TCP:
            frame = self.restamper.client(frame, seg)
        self._through(frame, ts, origlen, iface, linktype, from_host=False)

    def advance(self, now: int) -> None:
        """Let the hosts' clocks reach `now` (accepts at the application's pace, TIME-WAIT ending)."""
        for at, packet in self.hosts.advance(now):
            self._answers([packet], at)

    def _through(self, frame: bytes, ts: int, origlen: int, iface: int, linktype: int, from_host: bool) -> None:
        batch = self.scratch
        batch.reset()
        batch.append(frame, ts, iface, linktype, origlen)
        self.switch.process(batch)
        verdict, detail = batch.result(0)
        after = batch.packet(0)
        ts = self.last_ts = max(ts, self.last_ts)  # what is written never goes back in time
        out = Out(frame, ts, origlen, iface, linktype, VERDICT[verdict], detail)
        if verdict == "drop":
            self._emit(self.outside, out)
        elif verdict in ("new", "forward"):  # client -> real, DNAT
            self._emit(self.outside, out)
            self._emit(self.inside, Out(after, ts, origlen, iface, linktype, out.verdict, detail))
            host = self.hosts.by_real[detail]
            if host is not None:
                self._deliver(host, after, ts, iface, linktype)
        elif verdict in ("reply", "answer"):  # real -> client, SNAT
            self._emit(self.outside, Out(after, ts, origlen, iface, linktype, out.verdict, detail))
            self._emit(self.inside, out)
            if from_host and self.restamper is not None:
                self.restamper.server(after, linktype)
        else:  # passed untouched: maybe straight to or from a host
            seg = parse(frame, linktype)
            host = self.hosts.by_address.get(seg.dst) if seg is not None else None
            self._emit(self.outside, out)
            if host is not None or from_host:
                self._emit(self.inside, out)
            if from_host and self.restamper is not None:
                self.restamper.server(frame, linktype)
            if host is not None and not from_host:
                self._deliver(host, frame, ts, iface, linktype)

    def _deliver(self, host, frame: bytes, ts: int, iface: int, linktype: int) -> None:
        seg = parse(frame, linktype)
        if seg is None:  # snapped, fragmented or not TCP/UDP: nothing to read
            host.counters["unreadable"] += 1
            return
        self.links[seg.src] = (linktype, iface, reply_link_header(frame[: seg.l3], linktype))
        self._answers(host.receive(seg, frame[seg.l3 : seg.end], ts), ts)

    def _answers(self, packets: list[bytes], ts: int) -> None:
        for k, packet in enumerate(packets, 1):
            peer = packet[16:20] if packet[0] >> 4 == 4 else packet[24:40]
            linktype, iface, header = self.links.get(peer, (101, 0, b""))
            self.answers += 1
            frame = header + packet
            self._through(frame, ts + k * REPLY_GAP_NS, len(frame), iface, linktype, from_host=True)

    def intercept(self, batch) -> int:
        """Live mode: after the switch processed `batch`, take out what it sent to emulated hosts (those
        packets are marked dropped, so they are not sent on) and let the hosts answer; returns how many."""
        taken = 0
        for i in range(len(batch)):
            verdict, detail = batch.result(i)
            if verdict in ("new", "forward"):
                host = self.hosts.by_real[detail]
            elif verdict == "pass":
                ts, _, iface, linktype = batch.meta(i)
                seg = parse(batch.packet(i), linktype)
                host = self.hosts.by_address.get(seg.dst) if seg is not None else None
            else:
                continue
            if host is None:
                continue
            ts, _, iface, linktype = batch.meta(i)
            frame = batch.packet(i)
            batch.set_result(i, VERDICT["drop"], 0)
            self.last_ts = max(self.last_ts, ts)
            self._deliver(host, frame, ts, iface, linktype)
            taken += 1
        return taken

    @staticmethod
    def _emit(sink, out: Out) -> None:
        if sink is not None:
            sink(out)


class BatchSink:
    """Collects Outs into a Batch and hands full batches to a capture writer (verdicts kept for --annotate)."""

    def __init__(self, writer, annotate: bool = False, comments=None, capacity: int = 1024):
        self.writer, self.annotate, self.comments = writer, annotate, comments
        self.batch = Batch(capacity)

    def __call__(self, out: Out) -> None:
        if not self.batch.append(out.frame, out.ts_ns, out.iface, out.linktype, out.origlen):
            self.flush()
            self.batch.append(out.frame, out.ts_ns, out.iface, out.linktype, out.origlen)
        self.batch.set_result(len(self.batch) - 1, out.verdict, out.detail)

    def flush(self) -> None:
        if len(self.batch):
            self.writer.write(self.batch, include_dropped=self.annotate, comments=self.comments)
            self.batch.reset()
