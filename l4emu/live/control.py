"""The live control socket: bounded JSON lines over a Unix socket, peer credentials checked, served by the live loop."""

from __future__ import annotations

import grp
import json
import logging
import os
import pwd
import select
import socket
import stat
import struct
import time

from l4emu.errors import L4emuError, OptionError

MAX_REQUEST = 1 << 20  # bytes in one request line (apply carries a whole config); longer is refused
MAX_REPLY = 256 << 20  # a client stops reading a reply past this
REQUEST_TIMEOUT_S = 2.0  # a peer must send its whole line this soon after connecting
READ_OPS = ("conntrack", "services", "stats", "snapshot", "sockets", "config", "timeline")
ADMIN_OPS = ("set_real", "apply")
log = logging.getLogger("l4emu.live")


class ControlError(L4emuError):
    """A control request that failed: the socket could not be reached, or the switch said no."""


class _Peer:
    __slots__ = ("sock", "uid", "gid", "inbuf", "outbuf", "deadline")

    def __init__(self, sock, uid, gid):
        self.sock, self.uid, self.gid = sock, uid, gid
        self.inbuf, self.outbuf = b"", b""
        self.deadline = time.monotonic() + REQUEST_TIMEOUT_S


class ControlServer:
    """Accepts peers and answers one request each; `handle(request, admin)` is the live loop's callback.

    Never blocks: the live loop registers `fds()` with its epoll and calls `on_event`/`expire`.
    """

    def __init__(self, path: str, handle, group: str | None = None, owner_uid: int | None = None):
        self.path, self.handle = path, handle
        try:
            self.gid = grp.getgrnam(group).gr_gid if group else None
        except KeyError as exc:  # --control-group names no group: said as getgrnam says it
            raise OptionError(exc.args[0]) from None
        _remove_stale(path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)  # never a moment with wider permissions than asked for
        try:
            self.listener.bind(path)
        finally:
            os.umask(old)
        try:
            os.chown(path, owner_uid if owner_uid is not None else -1, self.gid if self.gid is not None else -1)
            os.chmod(path, 0o660 if self.gid is not None else 0o600)
            st = os.stat(path)
            self.owner, self.inode = st.st_uid, (st.st_dev, st.st_ino)
            self.listener.listen(16)
        except BaseException:
            self.listener.close()
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        self.peers: dict[int, _Peer] = {}
        self.epoll: select.epoll | None = None

    def register(self, epoll: select.epoll) -> None:
        self.epoll = epoll
        epoll.register(self.listener.fileno(), select.EPOLLIN)

    def owns(self, fd: int) -> bool:
        return fd == self.listener.fileno() or fd in self.peers

    def _allowed(self, uid: int, gid: int) -> bool:
        if uid in (0, self.owner):
            return True
        if self.gid is None:
            return False
        try:
            user = pwd.getpwuid(uid)
            return self.gid in os.getgrouplist(user.pw_name, gid)
        except KeyError:
            return gid == self.gid

    def on_event(self, fd: int, events: int) -> None:
        if fd == self.listener.fileno():
            self._accept()
            return
        peer = self.peers[fd]
        if events & select.EPOLLIN and not peer.outbuf:
            try:
                chunk = peer.sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return self._drop(peer)
            if not chunk:
                return self._drop(peer)
            peer.inbuf += chunk
            if b"\n" in peer.inbuf:
                self._answer(peer, peer.inbuf.split(b"\n", 1)[0])
            elif len(peer.inbuf) > MAX_REQUEST:
                log.warning("control: request refused (uid %d): longer than %d bytes", peer.uid, MAX_REQUEST)
                self._reply(peer, {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"})
        if events & select.EPOLLOUT or peer.outbuf:
            self._flush(peer)
        if events & (select.EPOLLHUP | select.EPOLLERR) and fd in self.peers:
            self._drop(peer)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            if not self._allowed(uid, gid):
                log.warning(
                    "control: connection refused: pid %d uid %d gid %d may not use %s", pid, uid, gid, self.path
                )
                sock.close()
                continue
            peer = _Peer(sock, uid, gid)
            self.peers[sock.fileno()] = peer
            assert self.epoll is not None, "register() comes first"
            self.epoll.register(sock.fileno(), select.EPOLLIN)

    def _answer(self, peer: _Peer, line: bytes) -> None:
        try:
            request = json.loads(line)
            op = request["op"] if isinstance(request, dict) else None
            if op in ADMIN_OPS and peer.uid not in (0, self.owner):
                raise PermissionError(
                    f"{op} is an admin request: only root or the socket's owner "
                    f"(uid {self.owner}) may make it, not uid {peer.uid}"
                )
            if op not in READ_OPS + ADMIN_OPS:
                raise ValueError(f"unknown request {op!r} (known: {', '.join(READ_OPS + ADMIN_OPS)})")
            reply = {"ok": True, "result": self.handle(request)}
        except (ValueError, KeyError, TypeError, PermissionError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            reply = {"ok": False, "error": str(message), "denied": isinstance(exc, PermissionError)}
            log.warning("control: request refused (uid %d): %s", peer.uid, message)
        self._reply(peer, reply)

    def _reply(self, peer: _Peer, reply: dict) -> None:
        peer.outbuf = json.dumps(reply).encode() + b"\n"
        assert self.epoll is not None, "register() comes first"
        self.epoll.modify(peer.sock.fileno(), select.EPOLLOUT)
        self._flush(peer)

    def _flush(self, peer: _Peer) -> None:
        try:
            sent = peer.sock.send(peer.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self._drop(peer)
        peer.outbuf = peer.outbuf[sent:]
        peer.deadline = time.monotonic() + REQUEST_TIMEOUT_S
        if not peer.outbuf:
            self._drop(peer)

    def expire(self) -> None:
        """Close peers that went quiet (slow senders and readers alike)."""
        now = time.monotonic()
        for peer in [p for p in self.peers.values() if p.deadline < now]:
            self._drop(peer)

    def _drop(self, peer: _Peer) -> None:
        fd = peer.sock.fileno()
        self.peers.pop(fd, None)
        if self.epoll is not None:
            self.epoll.unregister(fd)
        peer.sock.close()

    def close(self) -> None:
        """Close the peers and the listener, and remove the socket file whatever else fails (if it is
        still this server's: a later run may have replaced it). Without write access to the directory
        (root dropped) the unlink fails here; live's helper that kept root removes it then."""
        try:
            for peer in list(self.peers.values()):
                try:
                    self._drop(peer)
                except OSError:
                    pass
            self.listener.close()
        finally:
            try:
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self.inode:
                    os.unlink(self.path)
            except OSError:
                pass


def _remove_stale(path: str) -> None:
    """A socket file nobody listens on is left over from a killed run; anything else is kept."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{path}: exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise ControlError(f"{path}: another l4emu live is listening there")


def request(path, op: str, timeout: float = 5.0, **args):
    """Send one request and return its result; raises ControlError with the server's reason."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(os.fspath(path))
        sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_REPLY:
                raise ControlError(f"{path}: reply larger than {MAX_REPLY} bytes")
    except OSError as exc:
        raise ControlError(f"{path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    if not data:
        raise ControlError(f"{path}: the server closed the connection without answering (not allowed in?)")
    reply = json.loads(data)
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "request failed"))
    return reply["result"]
