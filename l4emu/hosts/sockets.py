"""A host's socket table: handles, listening sockets with their two queues, connections, UDP sockets.

Handles are numbered as POSIX file descriptors are: the lowest free number on the host, reused
after close. 0, 1 and 2 stand for stdin, stdout and stderr, so the first socket is 3; listening
sockets are opened first (in config order), accepted connections take what is free when accepted.
States are named as `ss` names them.
"""

from __future__ import annotations

import heapq
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from l4emu.hosts.apps import StreamApp

FIRST_HANDLE = 3
LISTEN, SYN_RECV, ESTAB = "LISTEN", "SYN-RECV", "ESTAB"
FIN_WAIT_1, FIN_WAIT_2, CLOSING, TIME_WAIT = "FIN-WAIT-1", "FIN-WAIT-2", "CLOSING", "TIME-WAIT"
CLOSE_WAIT, LAST_ACK, CLOSED, UNCONN = "CLOSE-WAIT", "LAST-ACK", "CLOSED", "UNCONN"


class Handles:
    """Lowest free number first, like open(2) and accept(2)."""

    def __init__(self, first: int = FIRST_HANDLE):
        self.next = first
        self.free: list[int] = []  # released numbers, all below self.next

    def take(self) -> int:
        if self.free:
            return heapq.heappop(self.free)
        self.next += 1
        return self.next - 1

    def release(self, handle: int) -> None:
        heapq.heappush(self.free, handle)

    @property
    def in_use(self) -> int:
        return self.next - FIRST_HANDLE - len(self.free)


def endpoint(address: bytes, port: int | str) -> str:
    if len(address) == 4:
        return f"{socket.inet_ntop(socket.AF_INET, address)}:{port}"
    return f"[{socket.inet_ntop(socket.AF_INET6, address)}]:{port}"


@dataclass(eq=False)
class Listener:
    """listen(2) on one port: SYN queue (half-open), accept queue (complete, not yet accepted)."""

    port: int
    app: str
    backlog: int
    accept_rate: float  # accepts per second on the packet clock; 0: as soon as queued
    abort_on_overflow: bool  # Linux tcp_abort_on_overflow
    handle: int
    syn_queue: dict = field(default_factory=dict)  # peer key -> Conn
    accept_queue: deque = field(default_factory=deque)
    ready_ns: int = 0  # the application's next accept() may happen from here
    accepted: int = 0

    def accept_queue_full(self) -> bool:
        # Linux's sk_acceptq_is_full() tests ">": one more than the backlog fits (include/net/sock.h).
        return len(self.accept_queue) > self.backlog

    def syn_queue_full(self) -> bool:
        # inet_csk_reqsk_queue_is_full() with tcp_syncookies = 0: half-open requests up to the backlog.
        return len(self.syn_queue) >= self.backlog


@dataclass(eq=False)
class Conn:
    """One TCP connection from the host's side (RFC 793 names, `ss` spellings)."""

    family: int
    peer: bytes
    peer_port: int
    port: int
    listener: Listener
    iss: int
    irs: int
    state: str = SYN_RECV
    snd_una: int = 0
    snd_nxt: int = 0
    snd_wnd: int = 0  # the peer's window in bytes
    snd_shift: int = 0  # the peer's window scale, once both sides agreed on scaling
    rcv_shift: int = 0  # ours, sent in the SYN-ACK when the peer offered scaling
    scaling: bool = False
    mss: int = 536  # the peer's MSS (RFC 9293 default without the option)
    rcv_nxt: int = 0
    recv_buf: bytearray = field(default_factory=bytearray)  # arrived, not read by the application
    send_buf: bytearray = field(default_factory=bytearray)  # written by the application, not sent yet
    fin_pending: bool = False  # the application closed: FIN after the send buffer
    fin_sent: bool = False
    peer_fin: bool = False
    handle: int | None = None
    app: StreamApp | None = None
    born_ns: int = 0
    deadline_ns: int = 0  # TIME-WAIT or SYN-RECV ends then

    @property
    def key(self) -> tuple:
        return self.peer, self.peer_port, self.port

    def row(self, local: bytes) -> dict:
        return {
            "netid": "tcp",
            "state": self.state,
            "recv_q": len(self.recv_buf),
            "send_q": ((self.snd_nxt - self.snd_una) & 0xFFFFFFFF)
            + len(self.send_buf)
            + (1 if self.fin_pending and not self.fin_sent else 0),
            "local": endpoint(local, self.port),
            "peer": endpoint(self.peer, self.peer_port),
            "handle": self.handle,
        }


@dataclass(eq=False)
class UdpSocket:
    """A bound UDP socket answering datagrams (ss: UNCONN)."""

    port: int
    app: str
    handle: int
    received: int = 0
    answered: int = 0


def listener_row(local: bytes, lst: Listener) -> dict:
    """ss shows a listener's accept-queue length as Recv-Q and its backlog as Send-Q."""
    any_peer = "0.0.0.0:*" if len(local) == 4 else "[::]:*"
    return {
        "netid": "tcp",
        "state": LISTEN,
        "recv_q": len(lst.accept_queue),
        "send_q": lst.backlog,
        "local": endpoint(local, lst.port),
        "peer": any_peer,
        "handle": lst.handle,
        "syn_queue": len(lst.syn_queue),
        "app": lst.app,
    }


def udp_row(local: bytes, sock: UdpSocket) -> dict:
    any_peer = "0.0.0.0:*" if len(local) == 4 else "[::]:*"
    return {
        "netid": "udp",
        "state": UNCONN,
        "recv_q": 0,
        "send_q": 0,
        "local": endpoint(local, sock.port),
        "peer": any_peer,
        "handle": sock.handle,
        "app": sock.app,
    }
