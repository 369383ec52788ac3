"""One attempt of a health check, on a descriptor the live loop's epoll watches: never a blocking call.

`start` makes the attempt a check's type asks for: a non-blocking TCP connection (tcp), then a GET and its
answer (http), through TLS (https: `do_handshake` on the non-blocking socket, as keepalived's SSL_GET does
with OpenSSL), or a command whose pidfd says when it exits (misc). l4emu/live/health.py drives them and
turns their outcomes into a real's health.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import re
import select
import shlex
import signal
import socket
import ssl
import subprocess
from dataclasses import dataclass

from l4emu.checks import HealthCheck

MAX_STATUS_LINE = 4096  # bytes read for an answer's status line; a longer line fails the check
MAX_HEAD = 65536  # with a digest: bytes of status line and headers before the body; more fails the check
READ_SIZE = 65536
MAX_READ_PER_EVENT = 1 << 20  # bytes taken in one wakeup, so a big body does not hold the packet path up
KILL_GRACE = 1.0  # seconds between a timed-out command's SIGTERM and the SIGKILL to its process group
STATUS_LINE = re.compile(rb"HTTP/\d\.\d (\d{3})(?: |\r|\n|$)")
HEAD_END = re.compile(rb"\r?\n\r?\n")


def status_code(head: bytes) -> int | None:
    """The status code of an HTTP answer's first line (None: not an HTTP status line)."""
    match = STATUS_LINE.match(head)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Outcome:
    ok: bool
    error: str = ""  # why it failed, for the log
    weight: int | None = None  # misc_dynamic: the weight its exit status gives


@dataclass(frozen=True)
class Real:
    """What an attempt needs to know of the real it checks."""

    host: str
    port: int  # the port to check (connect_port or the real's)
    family: int
    real_port: int  # the real's own port (a command is told it)


def start(check: HealthCheck, real: Real, now: float) -> Probe | Outcome:
    """An attempt under way, or its outcome when it failed at once (refused by the kernel, no such command)."""
    if check.type == "misc":
        return Command.run(check, real, now)
    return Connection.open(check, real, now)


class Probe:
    """An attempt in flight: the descriptor and events it waits for, and when it gives up."""

    fd: int
    mask: int
    deadline: float

    def step(self, events: int) -> Outcome | None:
        """Its descriptor is ready: the outcome, or None while it goes on (`mask` says what it waits for)."""
        raise NotImplementedError

    def expire(self) -> Outcome:
        """Its deadline passed: the failure to report."""
        raise NotImplementedError

    def release(self, now: float) -> Leftover | None:
        """Close what it holds; a command still running comes back as a Leftover to reap."""
        raise NotImplementedError


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """As keepalived's SSL_GET without a CA: any certificate is taken (a check asks whether the real answers,
    not who it is), and a server that closes without close_notify ends the answer as EOF."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    return context


class Connection(Probe):
    """tcp: connected is enough. http/https: GET `path` (over TLS for https), then the status line and, with
    a digest, the headers and the whole body (HTTP/1.0: the server closes after it), whose MD5 must match."""

    def __init__(self, check: HealthCheck, real: Real, sock: socket.socket, now: float):
        self.check, self.real, self.sock = check, real, sock
        self.fd, self.mask, self.deadline = sock.fileno(), select.EPOLLOUT, now + check.connect_timeout
        self.phase = "connect"  # connect, handshake, send, read
        self.request = b""
        self.head = b""
        self.body: hashlib._Hash | None = None  # with a digest, once the head has been read

    @classmethod
    def open(cls, check: HealthCheck, real: Real, now: float) -> Connection | Outcome:
        family = socket.AF_INET if real.family == 4 else socket.AF_INET6
        try:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except OSError as exc:  # out of descriptors
            return Outcome(False, exc.strerror or str(exc))
        err = sock.connect_ex((real.host, real.port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            return Outcome(False, os.strerror(err))
        return cls(check, real, sock, now)

    def step(self, events: int) -> Outcome | None:
        try:
            if self.phase == "connect":
                err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    return Outcome(False, os.strerror(err))
                if self.check.type == "tcp":
                    return Outcome(True)
                self.request = self._request()
                if self.check.type == "https":
                    self.sock = _tls_context().wrap_socket(
                        self.sock, server_hostname=self.check.sni or None, do_handshake_on_connect=False
                    )  # the same descriptor, now read and written through OpenSSL
                    self.phase = "handshake"
                else:
                    self.phase = "send"
            if self.phase == "handshake":
                assert isinstance(self.sock, ssl.SSLSocket)
                self.sock.do_handshake()
                self.phase = "send"
            if self.phase == "send":
                sent = self.sock.send(self.request)
                self.request = self.request[sent:]
                if self.request:
                    self.mask = select.EPOLLOUT
                    return None
                self.phase, self.mask = "read", select.EPOLLIN
            return self._read()
        except ssl.SSLWantReadError:
            self.mask = select.EPOLLIN
        except ssl.SSLWantWriteError:
            self.mask = select.EPOLLOUT
        except BlockingIOError:
            self.mask = select.EPOLLIN if self.phase == "read" else select.EPOLLOUT
        except ssl.SSLError as exc:
            return Outcome(False, f"TLS: {exc.reason or exc}")
        except OSError as exc:
            return Outcome(False, exc.strerror or str(exc))
        return None

    def _request(self) -> bytes:
        host = self.check.sni or (f"[{self.real.host}]" if self.real.family == 6 else self.real.host)
        return f"GET {self.check.path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: l4emu-check\r\n\r\n".encode()

    def _read(self) -> Outcome | None:
        """What has come of the answer, up to would-block (raised to step) or the end."""
        taken = 0
        while True:
            if taken >= MAX_READ_PER_EVENT and not (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()):
                return None  # the rest at the next wakeup (OpenSSL holds nothing epoll would not see)
            try:
                chunk = self.sock.recv(READ_SIZE)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                chunk = b""
            taken += len(chunk)
            if self.body is not None:
                if not chunk:
                    return self._digest_outcome()
                self.body.update(chunk)
                continue
            self.head += chunk
            outcome = self._head_outcome(eof=not chunk)
            if outcome is not None or not chunk:
                return outcome

    def _head_outcome(self, eof: bool) -> Outcome | None:
        """The status line (and, with a digest, the headers) read so far: an outcome once it can be told."""
        if not self.check.digest:
            if b"\n" not in self.head and not eof and len(self.head) < MAX_STATUS_LINE:
                return None
            return self._status_outcome() or Outcome(True)
        end = HEAD_END.search(self.head)
        if end is None:
            if eof or len(self.head) >= MAX_HEAD:
                return self._status_outcome() or Outcome(False, "the answer's headers do not end")
            return None
        failed = self._status_outcome()
        if failed is not None:
            return failed
        self.body = hashlib.md5(self.head[end.end() :], usedforsecurity=False)
        return None

    def _status_outcome(self) -> Outcome | None:
        """A failure when the status line is not HTTP or not the status wanted; None when it is."""
        code = status_code(self.head)
        if code is None:
            return Outcome(False, "the answer is not HTTP")
        wanted = self.check.status_code
        return None if code == wanted else Outcome(False, f"status {code}, not {wanted}")

    def _digest_outcome(self) -> Outcome:
        assert self.body is not None
        got = self.body.hexdigest()
        wanted = self.check.digest
        return Outcome(True) if got == wanted else Outcome(False, f"body digest {got}, not {wanted}")

    def expire(self) -> Outcome:
        waited = {"connect": "connection", "handshake": "TLS handshake"}.get(self.phase, "answer")
        return Outcome(False, f"no {waited} within {self.check.connect_timeout:g} s")

    def release(self, now: float) -> None:
        self.sock.close()
        return None


class Command(Probe):
    """misc: the command in a session of its own (so a timeout reaches what it started), stdio on /dev/null;
    its pidfd turns readable when it exits. Exit 0 is up, 1 down, 2-255 up (misc_dynamic: weight status - 2,
    as keepalived; without it, down)."""

    def __init__(self, check: HealthCheck, process: subprocess.Popen, fd: int, now: float):
        self.check, self.process, self.fd = check, process, fd
        self.mask, self.deadline = select.EPOLLIN, now + check.command_timeout
        self.name = shlex.split(check.misc_path)[0]

    @classmethod
    def run(cls, check: HealthCheck, real: Real, now: float) -> Command | Outcome:
        argv = shlex.split(check.misc_path)
        env = {**os.environ, "L4EMU_REAL_ADDRESS": real.host, "L4EMU_REAL_PORT": str(real.real_port)}
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
                start_new_session=True,
                env=env,
            )
        except (OSError, ValueError) as exc:  # no such file, not executable, ...
            return Outcome(False, f"{argv[0]}: {getattr(exc, 'strerror', None) or exc}")
        try:
            fd = os.pidfd_open(process.pid)
        except OSError as exc:  # out of descriptors: no way to watch it, so stop it now rather than lose it
            process.kill()
            process.wait()
            return Outcome(False, f"{argv[0]}: cannot watch it: {exc.strerror}")
        return cls(check, process, fd, now)

    def step(self, events: int) -> Outcome | None:
        status = self.process.poll()
        if status is None:
            return None
        if status == 0:
            return Outcome(True)
        if status >= 2 and self.check.misc_dynamic:
            return Outcome(True, weight=status - 2)
        if status < 0:
            return Outcome(False, f"{self.name} killed by {signal.Signals(-status).name}")
        return Outcome(False, f"{self.name} exited with status {status}")

    def expire(self) -> Outcome:
        _signal_group(self.process.pid, signal.SIGTERM)
        return Outcome(False, f"{self.name} did not exit within {self.check.command_timeout:g} s")

    def release(self, now: float) -> Leftover | None:
        if self.process.poll() is not None:
            os.close(self.fd)
            return None
        _signal_group(self.process.pid, signal.SIGTERM)  # again after expire(); first when a reload aborts it
        return Leftover(self.process, self.fd, now + KILL_GRACE)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # gone already (or became someone else's: not ours to signal)


class Leftover:
    """A timed-out command told to stop (SIGTERM): SIGKILL to its group after KILL_GRACE, and reaped when its
    pidfd says it exited, so no zombie stays behind."""

    def __init__(self, process: subprocess.Popen, fd: int, deadline: float):
        self.process, self.fd, self.deadline = process, fd, deadline

    def exited(self) -> bool:
        """Its pidfd is readable: SIGKILL what is left of its group (the leader, unreaped, keeps the group's
        id ours), then reap it. True when reaped."""
        if self.process.returncode is None:
            _signal_group(self.process.pid, signal.SIGKILL)
        return self.process.poll() is not None

    def close(self) -> None:
        """Once reaped (and out of the epoll): its pidfd goes."""
        os.close(self.fd)

    def overdue(self) -> None:
        _signal_group(self.process.pid, signal.SIGKILL)
        self.deadline = float("inf")  # its pidfd says when the kill took

    def kill(self) -> None:
        """At shutdown: kill and reap now (a killed process exits at once)."""
        _signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait()
        os.close(self.fd)
