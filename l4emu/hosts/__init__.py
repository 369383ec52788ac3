"""Emulated real servers: the hosts behind the switch, each owning its sockets (see host.py)."""

from __future__ import annotations

import random

from l4emu.hosts.host import Host


class Hosts:
    """Every emulated host of a config, found by address or by the switch's real index."""

    def __init__(self, reals: list, rng: random.Random):
        self.by_address: dict[bytes, Host] = {}
        self.by_real: list[Host | None] = []
        self.protocols: list[str] = []
        for svc, real in reals:
            self.protocols.append(svc.protocol)
            if not real.emulated:
                self.by_real.append(None)
                continue
            packed = real.address.packed
            host = self.by_address.get(packed)
            if host is None:  # one generator per host, drawn in config order: seeded runs repeat
                host = self.by_address[packed] = Host(packed, random.Random(rng.getrandbits(64)))
            if svc.protocol == "tcp":
                host.listen(real.port, real.app, real.backlog, real.accept_rate, real.syn_overflow == "reset")
            else:
                host.bind_udp(real.port, real.app)
            self.by_real.append(host)

    def advance(self, now: int) -> list[tuple[int, bytes]]:
        """Every host's clocks to `now`; the packets that sends, in time order (hosts in config order on ties)."""
        out = [(at, pkt) for host in self.by_address.values() for at, pkts in host.advance(now) for pkt in pkts]
        return sorted(out, key=lambda item: item[0])

    def next_deadline(self) -> int | None:
        times = [t for t in (host.next_deadline() for host in self.by_address.values()) if t is not None]
        return min(times) if times else None

    def handle_of(self, real_index: int, port: int, client: bytes, cport: int) -> int | None:
        host = self.by_real[real_index]
        return host.handle_of(self.protocols[real_index], port, client, cport) if host else None

    def snapshot(self) -> list[dict]:
        return [host.snapshot() for host in self.by_address.values()]
