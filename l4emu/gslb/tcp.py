"""DNS over TCP at the GSLB's listen addresses: the emulated hosts' TCP (hosts/_engine.pyx, app "dns") as
the authoritative server's side of each connection, driven by the emulate loop (hosts/_emulate.pyx).

Each listen address is an emulated host with a "dns" listener on its port; its answers come from the
authority (dnspython), each behind its 2-byte length (RFC 7766). The loop runs with a datapath that
has no service, so every packet passes and the ones for a listen address reach its host; the clients'
ACK numbers are re-stamped into the host's sequence space (replay only: a capture's clients talked to
another server) and what a capture recorded from a listen address over TCP is superseded (answering
twice would fork the stream). ISNs come from the seed.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

from l4emu.config import Config
from l4emu.datapath._batch import Batch
from l4emu.datapath._datapath import STATE_NAMES, Datapath
from l4emu.hosts._emulate import Loop
from l4emu.hosts._engine import Engine

DNS_APP = "dns"
BACKLOG = 128  # Linux's somaxconn default: the listener's SYN and accept queues
LOOP_TABLE = 16  # the pass-only datapath keeps no flow: its table's smallest useful size
LOOP_CAPACITY = 64  # packets one client packet makes at most before the view is handed over
SEED_LABEL = "gslb-tcp"  # the responder's draws: a stream of their own, apart from the sites'

# answer(query, client, listen address, port, ts_ns) -> response bytes, or None to close the connection
Answer = Callable[[bytes, bytes, bytes, int, int], "bytes | None"]
Frame = tuple[bytes, int, int, int]  # frame, ts_ns, iface, linktype


class TcpResponder:
    """The TCP side of every listen address; `client()` takes one captured packet and returns what the
    clients' side of the wire holds instead: that packet (re-stamped) and the server's answers."""

    def __init__(self, listens: set, seed: int | None, answer: Answer, timeouts_from: Config, restamp: bool = True):
        """`restamp`: move the clients' ACK numbers into the server's space (replay: the capture's clients
        talked to another server; live: off, the clients talk to this one)."""
        draw = random.Random(f"{SEED_LABEL}/{seed}") if seed is not None else random.SystemRandom()
        self.engine = Engine(_bytes(draw, 16))
        self.addresses: list[bytes] = []
        for address, port in sorted(listens, key=lambda listen: (len(listen[0].packed), listen[0].packed, listen[1])):
            packed = address.packed
            if packed not in self.addresses:
                self.addresses.append(packed)
                self.engine.add_host(packed, random.Random(draw.getrandbits(64)))
            name = f"{address}:{port}"
            self.engine.listen(self.addresses.index(packed), port, DNS_APP, BACKLOG, 0, False, name)
        self.engine.set_reals([])
        self.now = 0
        self.engine.set_dns(lambda query, client, host, port: answer(query, client, host, port, self.now))
        timeouts = [timeouts_from.timeouts[name.lower()] for name in STATE_NAMES]
        datapath = Datapath(LOOP_TABLE, _bytes(draw, 16), timeouts)
        self.out: list[Frame] = []
        self.loop = Loop(datapath, self.engine, [], self._take, None, restamp, _bytes(draw, 16), LOOP_CAPACITY)

    def _take(self, batch: Batch) -> None:
        for i in range(len(batch)):
            ts, _origlen, iface, linktype = batch.meta(i)
            self.out.append((batch.packet(i), ts, iface, linktype))

    def client(self, frame: bytes, ts: int, origlen: int, iface: int, linktype: int) -> list[Frame]:
        """One captured packet to or from a listen address over TCP, in capture order."""
        self.now = ts
        self.loop.client_frame(frame, ts, origlen, iface, linktype)
        return self._drain()

    def next_due(self) -> int | None:
        """When a connection's clock next has something to do (an idle close, TIME-WAIT ending), or None."""
        return self.engine.next_deadline()

    def advance(self, now: int) -> list[Frame]:
        """The clocks up to `now`: what they sent (an idle connection's FIN), each at its own moment."""
        self.now = now
        self.loop.advance(now)
        return self._drain()

    def _drain(self) -> list[Frame]:
        self.loop.flush()
        out, self.out = self.out, []
        return out

    @property
    def superseded(self) -> int:
        """Captured packets from a listen address over TCP: the emulated server speaks for it."""
        return self.loop.superseded

    def counters(self) -> dict[str, int]:
        """The hosts' TCP and DNS counters, summed (only those ever counted: a snapshot's rule)."""
        total: dict[str, int] = {}
        for h in range(self.engine.host_count()):
            for name, value in self.engine.host_state(h)[2].items():
                total[name] = total.get(name, 0) + value
        return total


def _bytes(draw: random.Random, n: int) -> bytes:
    return draw.randbytes(n) if not isinstance(draw, random.SystemRandom) else os.urandom(n)
