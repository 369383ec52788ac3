"""The GSLB's authority on `l4emu live`'s TUN: DNS queries to a record's listen address that the switch
passed (they are for no service) are answered in a batch of their own and kept from the TUN, so
`dig @GSLB domain` in the lab gets an answer from the switch's own loop.

DNS over TCP is answered by the emulated hosts' TCP as in replay (gslb/tcp.py, without re-stamping: the
clients talk to it); its segments go to the TUN with the answers, and its clocks (an idle connection's
close, TIME-WAIT) follow the live packet clock through advance(). The sites' switches stand idle behind
it, as behind `gslb serve`: every site is healthy but those named down.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import ip_address

from l4emu.datapath._batch import VERDICT_NAMES, Batch
from l4emu.gslb import wire
from l4emu.gslb.config import GslbConfig
from l4emu.gslb.serve import ServeError
from l4emu.gslb.server import Authority
from l4emu.gslb.sites import Sites
from l4emu.gslb.tcp import Frame, TcpResponder

PASS, DROP = VERDICT_NAMES.index("pass"), VERDICT_NAMES.index("drop")
ANSWER_DELAY_NS = 1000  # as in replay: the answer's timestamp, 1 us after its query
ANSWER_SLOTS, ANSWER_BYTES = 256, 1 << 20  # one read round's answers (UDP beyond it: the client retries)


class TunAnswerer:
    """Answers the queries in a switch's processed batch; `counters` are the authority's outcomes."""

    def __init__(self, config: GslbConfig, down: Sequence[str] = (), seed: int | None = None):
        self.sites = Sites(config, seed)
        for name in down:
            if name not in self.sites.names:
                raise ServeError(f"--gslb-down {name}: no site {name!r} (sites: {', '.join(self.sites.names)})")
            self.sites.down[self.sites.index(name)] = True
        self.authority = Authority(config, self.sites.healthy, self.sites.load)
        self.counters = self.authority.counters
        self.listens = {(address.packed, port) for address, port in self.authority.listens}
        self.addresses = {address for address, _ in self.listens}
        self.answer_room = (ANSWER_SLOTS, ANSWER_BYTES)  # the answers batch's slots and bytes (grown for TCP)
        self.answers = Batch(*self.answer_room)
        self.config, self.seed = config, seed
        self.tcp: TcpResponder | None = None  # made at the first DNS segment over TCP

    def answer(self, batch: Batch) -> Batch | None:
        """The answers to the batch's queries (None: it had none); each query is then a drop, so the TUN
        does not take it back."""
        self.answers.reset()
        for i in range(len(batch)):
            if batch.result(i)[0] != "pass":
                continue
            frame = batch.packet(i)
            ts, _origlen, iface, linktype = batch.meta(i)
            dgram = wire.parse(frame, linktype)
            if dgram is None or (dgram.dst, dgram.dport) not in self.listens:
                continue
            batch.set_result(i, DROP, 0)
            if not wire.answerable_link(linktype):
                continue
            if dgram.proto == wire.TCP:
                self._put(self._responder().client(frame, ts, len(frame), iface, linktype))
                continue
            if dgram.proto != wire.UDP:
                continue
            listen = (ip_address(dgram.dst), dgram.dport)
            response, _ = self.authority.respond(dgram.payload(frame), ip_address(dgram.src), listen)
            if response is None:
                continue
            out = wire.answer_frame(frame, linktype, dgram, response)
            if not self.answers.append(out, ts + ANSWER_DELAY_NS, iface, linktype, len(out)):
                continue  # more answers than a batch holds in one read round: the client retries
            self.answers.set_result(len(self.answers) - 1, PASS, 0)
        return self.answers if len(self.answers) else None

    def advance(self, now_ns: int) -> Batch | None:
        """The TCP side's clocks up to `now_ns`: what they sent (an idle connection's FIN), or None."""
        if self.tcp is None:
            return None
        self.answers.reset()
        self._put(self.tcp.advance(now_ns))
        return self.answers if len(self.answers) else None

    def next_deadline(self) -> int | None:
        """When the TCP side's clocks next have something to do (None: nothing)."""
        return self.tcp.next_due() if self.tcp is not None else None

    def tcp_counters(self) -> dict[str, int] | None:
        """The TCP side's counters (None: no DNS over TCP yet)."""
        return self.tcp.counters() if self.tcp is not None else None

    def _responder(self) -> TcpResponder:
        if self.tcp is None:
            self.tcp = TcpResponder(
                self.authority.listens, self.seed, self._tcp_query, self.config.sites[0].config, restamp=False
            )
        return self.tcp

    def _tcp_query(self, query: bytes, client: bytes, address: bytes, port: int, _ts: int) -> bytes | None:
        return self.authority.respond(query, ip_address(client), (ip_address(address), port), tcp=True)[0]

    def _put(self, frames: list[Frame]) -> None:
        """The server's segments among the responder's output (the client's own packet stays off the TUN)."""
        for frame, ts, iface, linktype in frames:
            dgram = wire.parse(frame, linktype)
            if dgram is None or dgram.src not in self.addresses:
                continue
            while not self.answers.append(frame, ts, iface, linktype, len(frame)):
                self._grow()  # never dropped: the emulated TCP does not retransmit
            self.answers.set_result(len(self.answers) - 1, PASS, 0)

    def _grow(self) -> None:
        """A bigger answers batch holding what the full one held."""
        full = self.answers
        self.answer_room = (2 * self.answer_room[0], 2 * self.answer_room[1])
        self.answers = Batch(*self.answer_room)
        for i in range(len(full)):
            ts, origlen, iface, linktype = full.meta(i)
            self.answers.append(full.packet(i), ts, iface, linktype, origlen)
            self.answers.set_result(i, PASS, 0)
