"""Emulated real servers: the hosts behind the switch, each owning its sockets (the engine: _engine.pyx).

Python sets the engine up from the config and turns its snapshots into `ss`-style rows; every packet
is the engine's (and the emulate loop's, _emulate.pyx) alone.
"""

from __future__ import annotations

import random
import socket

from l4emu.config import Distribution
from l4emu.datapath._batch import NS
from l4emu.hosts._engine import Engine

LISTEN, UNCONN = "LISTEN", "UNCONN"


def endpoint(address: bytes, port: int | str) -> str:
    if len(address) == 4:
        return f"{socket.inet_ntop(socket.AF_INET, address)}:{port}"
    return f"[{socket.inet_ntop(socket.AF_INET6, address)}]:{port}"


def _any_peer(address: bytes) -> str:
    return "0.0.0.0:*" if len(address) == 4 else "[::]:*"


def _dist(d: Distribution) -> tuple:
    """A distribution as the engine takes it."""
    return (d.kind, d.mean, d.sigma, d.values)


class Hosts:
    """Every emulated host of a config, found by address or by the switch's real index."""

    def __init__(self, reals: list, rng: random.Random):
        hosts: dict[bytes, int] = {}
        settings = []
        for _, real in reals:
            if not real.emulated:
                continue
            packed = real.address.packed
            if packed not in hosts:  # one generator per host, drawn in config order: seeded runs repeat
                hosts[packed] = len(hosts)
                settings.append((packed, random.Random(rng.getrandbits(64))))
        # The tables' secrets come last from the hosts' own generator: the ISNs above stay as they were.
        self.engine = Engine(rng.randbytes(16))
        self.loop_secret = rng.randbytes(16)  # the emulate loop's re-stamping table
        for packed, host_rng in settings:
            self.engine.add_host(packed, host_rng)
        self.protocols: list[str] = []
        by_real: list[int | None] = []
        for svc, real in reals:
            self.protocols.append(svc.protocol)
            if not real.emulated:
                by_real.append(None)
                continue
            host = hosts[real.address.packed]
            name = endpoint(real.address.packed, real.port)
            capacity = {}
            if real.workers or real.response_bytes is not None:
                # drawn after everything above, so configs without capacity keep their bytes
                capacity = {
                    "workers": real.workers,
                    "service": _dist(real.service_time),
                    "response": _dist(real.response_bytes) if real.response_bytes is not None else None,
                    "seed64": rng.getrandbits(64),
                }
            if svc.protocol == "tcp":
                interval = int(NS / real.accept_rate) if real.accept_rate else 0
                self.engine.listen(
                    host, real.port, real.app, real.backlog, interval, real.syn_overflow == "reset", name, **capacity
                )
            else:  # with capacity, request-reply: each datagram a request for a worker (hosts/_udp.pxi)
                self.engine.bind_udp(host, real.port, real.app, name, backlog=real.backlog, **capacity)
            by_real.append(host)
        self.engine.set_reals(by_real)
        self.addresses = list(hosts)

    def next_deadline(self) -> int | None:
        """The earliest moment on the packet clock some host's clock has something to do."""
        return self.engine.next_deadline()

    def handle_of(self, real_index: int, port: int, client: bytes, cport: int) -> int | None:
        """The handle of the socket carrying this client's traffic to `port` of the real's host."""
        return self.engine.handle_of(real_index, self.protocols[real_index] == "tcp", port, client, cport)

    def snapshot(self) -> list[dict]:
        """Plain data per host: ss-like rows (listeners and UDP sockets first, then connections by
        handle) and counters."""
        return [self._host(h) for h in range(self.engine.host_count())]

    def _host(self, h: int) -> dict:
        address, in_use, counters, listeners, udps, conns = self.engine.host_state(h)
        rows = [
            {
                "netid": "tcp",
                "state": LISTEN,
                "recv_q": accept_q,  # ss shows a listener's accept-queue length as Recv-Q, its backlog as Send-Q
                "send_q": backlog,
                "local": endpoint(address, port),
                "peer": _any_peer(address),
                "handle": handle,
                "syn_queue": syn_q,
                "app": app,
            }
            for port, app, backlog, accept_q, syn_q, handle in listeners
        ]
        rows += [
            {
                "netid": "udp",
                "state": UNCONN,
                "recv_q": 0,
                "send_q": 0,
                "local": endpoint(address, port),
                "peer": _any_peer(address),
                "handle": handle,
                "app": app,
            }
            for port, app, handle in udps
        ]
        conns = sorted(conns, key=lambda c: (c[6] is None, c[6] or 0, c[4], c[5]))  # stable: creation order
        rows += [
            {
                "netid": "tcp",
                "state": state,
                "recv_q": recv_q,
                "send_q": send_q,
                "local": endpoint(address, port),
                "peer": endpoint(peer, peer_port),
                "handle": handle,
            }
            for state, recv_q, send_q, port, peer, peer_port, handle in conns
        ]
        family = socket.AF_INET if len(address) == 4 else socket.AF_INET6
        return {
            "host": socket.inet_ntop(family, address),
            "handles_in_use": in_use,
            "counters": counters,
            "sockets": rows,
        }
