"""The GSLB's authority on `l4emu live`'s TUN: DNS queries to a record's listen address that the switch
passed (they are for no service) are answered in a batch of their own and kept from the TUN, so
`dig @GSLB domain` in the lab gets an answer from the switch's own loop.

The sites' switches stand idle behind it, as behind `gslb serve`: every site is healthy but those named
down. DNS over TCP is not answered here (`gslb serve` answers it on sockets).
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

PASS, DROP = VERDICT_NAMES.index("pass"), VERDICT_NAMES.index("drop")
ANSWER_DELAY_NS = 1000  # as in replay: the answer's timestamp, 1 us after its query


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
        self.answers = Batch(256)

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
            if dgram is None or dgram.proto != wire.UDP or (dgram.dst, dgram.dport) not in self.listens:
                continue
            batch.set_result(i, DROP, 0)
            if not wire.answerable_link(linktype):
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
