"""One emulated host: one real server's IP address and every socket on it.

The host owns its sockets and their handles; the switch only knows which real a flow went to.
Packets in are L3 bytes already parsed into a Segment; packets out are L3 bytes addressed to the
peer, which the caller sends back through the switch like any real server's reply.
"""

from __future__ import annotations

import random
import socket
from collections import Counter

from l4emu.hosts.apps import datagram_answer
from l4emu.hosts.packets import TCP, Segment, port_unreachable, udp_packet
from l4emu.hosts.sockets import Handles, UdpSocket, endpoint, listener_row, udp_row
from l4emu.hosts.tcp import TcpResponder


class Host:
    def __init__(self, address: bytes, rng: random.Random):
        self.address = address
        self.family = 4 if len(address) == 4 else 6
        self.name = socket.inet_ntop(socket.AF_INET if self.family == 4 else socket.AF_INET6, address)
        self.handles = Handles()
        self.counters: Counter = Counter()
        self.tcp = TcpResponder(address, self.handles, rng, self.counters)
        self.udp: dict[int, UdpSocket] = {}

    def listen(self, port: int, app: str, backlog: int, accept_rate: float, abort_on_overflow: bool) -> None:
        if port not in self.tcp.listeners:
            self.tcp.listen(port, app, backlog, accept_rate, abort_on_overflow)

    def bind_udp(self, port: int, app: str) -> None:
        if port not in self.udp:
            self.udp[port] = UdpSocket(port, app, self.handles.take())

    def receive(self, seg: Segment, packet: bytes, now: int) -> list[bytes]:
        """Everything the host sends in answer to one packet (`packet`: its IP bytes, for ICMP quotes)."""
        if seg.dst != self.address:
            self.counters["not_for_us"] += 1
            return []
        if seg.proto == TCP:
            return self.tcp.segment(seg, now)
        sock = self.udp.get(seg.dport)
        self.tcp.ip_id = (self.tcp.ip_id + 1) & 0xFFFF
        if sock is None:
            self.counters["udp_closed_port"] += 1
            return [port_unreachable(self.family, self.address, seg.src, packet, self.tcp.ip_id)]
        sock.received += 1
        answer = datagram_answer(sock.app, endpoint(self.address, sock.port), seg.payload)
        if answer is None:
            return []
        sock.answered += 1
        self.counters["datagrams_out"] += 1
        return [udp_packet(self.family, self.address, seg.src, seg.dport, seg.sport, answer, self.tcp.ip_id)]

    def advance(self, now: int) -> list[tuple[int, list[bytes]]]:
        return self.tcp.advance(now)

    def next_deadline(self) -> int | None:
        return self.tcp.next_deadline()

    def handle_of(self, protocol: str, port: int, peer: bytes, peer_port: int) -> int | None:
        """The handle of the socket carrying this peer's traffic to `port`, if the application holds one."""
        if protocol == "udp":
            sock = self.udp.get(port)
            return sock.handle if sock else None
        conn = self.tcp.conns.get((peer, peer_port, port))
        return conn.handle if conn else None

    def snapshot(self) -> dict:
        """Plain data: ss-like rows (listeners and UDP sockets first, then connections by handle) and counters."""
        rows = [listener_row(self.address, lst) for lst in self.tcp.listeners.values()]
        rows += [udp_row(self.address, sock) for sock in self.udp.values()]
        conns = sorted(self.tcp.conns.values(), key=lambda c: (c.handle is None, c.handle or 0, c.peer, c.peer_port))
        rows += [conn.row(self.address) for conn in conns]
        return {
            "host": self.name,
            "handles_in_use": self.handles.in_use,
            "counters": dict(sorted(self.counters.items())),
            "sockets": rows,
        }
