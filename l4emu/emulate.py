"""Drive a Switch packet by packet when some of its reals are emulated hosts (the loop: hosts/_emulate.pyx).

Each packet goes through the same datapath as ever; one the switch sends to an emulated real is
handed to that host, and the host's answers go back through the datapath (reverse NAT to the VIP)
at the triggering packet's time plus 1 us per answer, never the wall clock. Two views come out a
batch at a time: `outside` is what the clients see (their packets as they arrive, re-stamped;
answers after SNAT), `inside` what the real servers see (after DNAT; answers before SNAT).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from l4emu.datapath._batch import VERDICT_NAMES, Batch
from l4emu.errors import OptionError
from l4emu.hosts._emulate import Loop

PROTOCOL_NUMBERS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
VERDICT = {name: number for number, name in enumerate(VERDICT_NAMES)}


@dataclass(slots=True)
class Out:
    """One packet of a view, for callers that take them one at a time (tests)."""

    frame: bytes
    ts_ns: int
    origlen: int
    iface: int
    linktype: int
    verdict: int
    detail: int


class BatchSink:
    """A view's consumer that takes whole batches (verdict and detail kept per packet, for --annotate)."""

    def __init__(self, consume: Callable[[Batch], None]):
        self.consume = consume

    def __call__(self, batch: Batch) -> None:
        self.consume(batch)

    @classmethod
    def writer(cls, writer, annotate: bool = False, comments=None) -> BatchSink:
        """A capture writer's sink: one write per batch."""
        return cls(lambda batch: writer.write(batch, include_dropped=annotate, comments=comments))


def _per_packet(callback: Callable[[Out], None]) -> Callable[[Batch], None]:
    def consume(batch: Batch) -> None:
        for i in range(len(batch)):
            ts, origlen, iface, linktype = batch.meta(i)
            verdict, detail = batch.result(i)
            callback(Out(batch.packet(i), ts, origlen, iface, linktype, VERDICT[verdict], detail))

    return consume


class Emulator:
    """The switch plus its hosts. `outside`/`inside`: a BatchSink, or a callable that takes each Out in
    order (then every call hands over what it made before it returns)."""

    def __init__(
        self,
        switch,
        outside: BatchSink | Callable[[Out], None] | None = None,
        inside: BatchSink | Callable[[Out], None] | None = None,
        restamp: bool = True,
    ):
        if switch.hosts is None:
            raise OptionError("no real in this config is emulated (emulated = true)")
        self.switch, self.hosts = switch, switch.hosts
        out_sink, in_sink = (s if s is None or isinstance(s, BatchSink) else _per_packet(s) for s in (outside, inside))
        self.eager = any(s is not None and not isinstance(s, BatchSink) for s in (outside, inside))
        # A service whose reals all answer for themselves: what the capture recorded from its VIP or
        # capture servers is superseded too (answering twice would fork the stream).
        fronts = [
            (address.packed, port, PROTOCOL_NUMBERS[svc.protocol])
            for svc in switch.config.services
            if all(real.emulated for real in svc.reals)
            for address, port in ((svc.vip, svc.port), *svc.capture_servers)
        ]
        datapath = switch.emulation_datapath()
        self.loop = Loop(datapath, self.hosts.engine, fronts, out_sink, in_sink, restamp, self.hosts.loop_secret)

    @property
    def answers(self) -> int:
        return self.loop.answers

    @property
    def direct(self) -> int:
        """Answers of dr and tun reals: from the VIP straight to the client, past the switch."""
        return self.loop.direct

    @property
    def fragmented(self) -> int:
        """What reached an emulated host in fragments and never became a datagram it could read: fragments
        its reassembly refused (overlapping, malformed, over ipfrag_high_thresh), datagrams it gave up on
        (timed out after ipfrag_time, evicted)."""
        counts = self.loop.host_reassembly()
        return counts["fragments_dropped"] + counts["reasm_timeout"] + counts["reasm_evicted"]

    def host_reassembly(self) -> dict[str, int]:
        """The emulated hosts' IP reassembly (one pool, Linux's limits): its Reasm* counters and memory."""
        return self.loop.host_reassembly()

    @property
    def superseded(self) -> int:
        """Captured packets from an emulated host's address (or a superseded front): the host speaks for it."""
        return self.loop.superseded

    def run(self, batch: Batch, start: int = 0, until_ns: int = 0) -> int:
        """The capture's packets start.. (stopping before the first at or past until_ns); returns where it stopped."""
        position = self.loop.run(batch, start, until_ns)
        if self.eager:
            self.loop.flush()
        return position

    def client(self, frame: bytes, ts: int, origlen: int, iface: int, linktype: int) -> None:
        """One packet as it arrives at the switch."""
        self.loop.client_frame(frame, ts, origlen, iface, linktype)
        if self.eager:
            self.loop.flush()

    def advance(self, now: int) -> None:
        """Let the hosts' clocks reach `now` (accepts at the application's pace, TIME-WAIT ending)."""
        self.loop.advance(now)
        if self.eager:
            self.loop.flush()

    def intercept(self, batch: Batch) -> int:
        """Live mode: after the switch processed `batch`, take out what it sent to emulated hosts (those
        packets are marked dropped, so they are not sent on) and let the hosts answer; returns how many."""
        taken = self.loop.intercept(batch)
        if self.eager:
            self.loop.flush()
        return taken

    def flush(self) -> None:
        """Hand what the views still hold to their sinks."""
        self.loop.flush()

    def restamp_entries(self) -> int:
        """Connections whose ACK re-stamping is still remembered."""
        return self.loop.restamp_entries()
