"""The GSLB's authority on real sockets: UDP and TCP port 53 (RFC 1035 4.2.2's two-byte length prefix
over TCP, for the answers UDP truncates), so `dig @GSLB domain` in a lab gets an answer.

One thread and a selector: the authority's answers take microseconds, so nothing waits on another.
The sites' switches stand behind it as in replay (health from their reals); `down` names sites that
start down, as after T:site-down:NAME.
"""

from __future__ import annotations

import ipaddress
import selectors
import socket
import struct
from collections.abc import Callable, Sequence

from l4emu.config import IPAddress, format_endpoint
from l4emu.errors import L4emuError
from l4emu.gslb.config import GslbConfig
from l4emu.gslb.server import Authority
from l4emu.gslb.sites import Sites

UDP_MAX = 65535
TCP_LENGTH = struct.Struct("!H")
TCP_BACKLOG = 64
MAX_TCP_BUFFER = 2 + 65535  # one whole message and its prefix: a client sending more is cut off
POLL_S = 0.2  # how often the loop looks at `stop`


class ServeError(L4emuError):
    """A listen address that cannot be bound, or a site to start down that does not exist."""


class Server:
    """Sockets for every record's listen address; `run(stop)` answers until stop() is true."""

    def __init__(self, config: GslbConfig, down: Sequence[str] = (), seed: int | None = None):
        self.sites = Sites(config, seed)
        for name in down:
            if name not in self.sites.names:
                raise ServeError(f"--down {name}: no site {name!r} (sites: {', '.join(self.sites.names)})")
            self.sites.down[self.sites.index(name)] = True
        self.authority = Authority(config, self.sites.healthy, self.sites.load)
        self.selector = selectors.DefaultSelector()
        self.buffers: dict[socket.socket, tuple[bytearray, IPAddress]] = {}  # a TCP client's bytes, its address
        self.endpoints: list[str] = []
        try:
            for address, port in sorted(self.authority.listens, key=lambda e: (e[0].version, e[0].packed, e[1])):
                self._bind(address, port)
        except OSError:
            self.close()
            raise

    def _bind(self, address: IPAddress, port: int) -> None:
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        where = format_endpoint(address, port)
        try:
            udp = socket.socket(family, socket.SOCK_DGRAM)
            self.selector.register(udp, selectors.EVENT_READ, ("udp", (address, port)))
            udp.bind((str(address), port))
            tcp = socket.socket(family, socket.SOCK_STREAM)
            self.selector.register(tcp, selectors.EVENT_READ, ("listen", (address, port)))
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((str(address), port))
            tcp.listen(TCP_BACKLOG)
        except OSError as exc:
            raise ServeError(f"{where}: cannot listen: {exc.strerror or exc}") from None
        for sock in (udp, tcp):
            sock.setblocking(False)
        self.endpoints.append(where)

    def run(self, stop: Callable[[], bool]) -> None:
        while not stop():
            for key, _ in self.selector.select(POLL_S):
                kind, listen = key.data
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if kind == "udp":
                    self._datagram(sock, listen)
                elif kind == "listen":
                    self._accept(sock, listen)
                else:
                    self._stream(sock, listen)

    def _datagram(self, sock: socket.socket, listen) -> None:
        try:
            wire, peer = sock.recvfrom(UDP_MAX)
        except OSError:
            return
        response, _ = self.authority.respond(wire, _client(peer), listen)
        if response is not None:
            try:
                sock.sendto(response, peer)
            except OSError:
                self.authority.counters["send_failed"] += 1

    def _accept(self, sock: socket.socket, listen) -> None:
        try:
            conn, peer = sock.accept()
        except OSError:
            return
        conn.setblocking(False)
        self.buffers[conn] = (bytearray(), _client(peer))
        self.selector.register(conn, selectors.EVENT_READ, ("tcp", listen))

    def _stream(self, conn: socket.socket, listen) -> None:
        """Read what came; answer every whole length-prefixed message in it; close at EOF or excess."""
        try:
            data = conn.recv(MAX_TCP_BUFFER)
        except OSError:
            data = b""
        buffer, client = self.buffers[conn]
        buffer += data
        while len(buffer) >= TCP_LENGTH.size and len(buffer) >= TCP_LENGTH.size + TCP_LENGTH.unpack_from(buffer)[0]:
            size = TCP_LENGTH.unpack_from(buffer)[0]
            wire = bytes(buffer[TCP_LENGTH.size : TCP_LENGTH.size + size])
            del buffer[: TCP_LENGTH.size + size]
            response, _ = self.authority.respond(wire, client, listen, tcp=True)
            if response is not None:
                try:
                    conn.sendall(TCP_LENGTH.pack(len(response)) + response)
                except OSError:
                    data = b""
        if not data or len(buffer) > MAX_TCP_BUFFER:
            self.selector.unregister(conn)
            del self.buffers[conn]
            conn.close()

    def close(self) -> None:
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.selector.close()


def _client(peer) -> IPAddress:
    """The peer's address, without an IPv6 scope (fe80::1%eth0)."""
    return ipaddress.ip_address(peer[0].split("%")[0])
