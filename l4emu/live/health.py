"""Live health checks (keepalived's TCP_CHECK and HTTP_GET) from the switch's namespace to its reals.

Non-blocking sockets in the live loop's epoll and a heap of deadlines: a check never blocks the
packet path. Each checked real runs one attempt at a time; results move it down or up through the
hysteresis of its service's `[service.check]` (l4emu/checks.py), and the Switch hears of it as of an
admin's `real set` (down mark, or weight 0 with inhibit_on_failure).
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import os
import re
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from l4emu.checks import HealthCheck
from l4emu.reconfig import service_key
from l4emu.switch import Switch

MAX_STATUS_LINE = 4096  # bytes read for an answer's status line; a longer line fails the check
STATUS_LINE = re.compile(rb"HTTP/\d\.\d (\d{3})(?: |\r|\n|$)")
log = logging.getLogger("l4emu.live")


def status_code(head: bytes) -> int | None:
    """The status code of an HTTP answer's first line (None: not an HTTP status line)."""
    match = STATUS_LINE.match(head)
    return int(match.group(1)) if match else None


@dataclass
class Target:
    """One checked real of one service, and where its check stands."""

    key: tuple
    index: int  # the real's index in the Switch (changes with a reload)
    label: str  # "10.1.0.2:8080 (TCP 10.0.0.100:80)", for the log
    address: tuple  # (host, port) to connect to
    family: int
    check: HealthCheck
    weight: int  # the config's, restored when an inhibited real comes back
    healthy: bool = True
    attempt: int = 0  # failed attempts in the current check
    rises: int = 0  # checks in a row that succeeded while down
    sock: socket.socket | None = None
    inbuf: bytes = b""
    deadline: float = 0.0
    counts: dict = field(default_factory=lambda: {"success": 0, "failure": 0, "down": 0, "up": 0})
    last_error: str = ""


class HealthChecks:
    """The checks of every real whose service has a `[service.check]`; the live loop drives them."""

    def __init__(self, switch: Switch, on_change: Callable[[str, bool], None] | None = None):
        self.switch = switch
        self.on_change = on_change  # told each transition (endpoint, healthy): the report marks them
        self.targets: dict[tuple, Target] = {}
        self.by_fd: dict[int, Target] = {}
        self.timers: list[tuple[float, int, tuple]] = []  # (when, seq, target key): the next attempt
        self.seq = itertools.count()
        self.epoll: select.epoll | None = None
        self.rebuild(switch)

    def register(self, epoll: select.epoll) -> None:
        self.epoll = epoll

    def rebuild(self, switch: Switch) -> None:
        """After a reload (and at start): targets from the running config; a real kept keeps its state and
        counts, a new one starts healthy, a gone one's check is dropped."""
        self.switch = switch
        old, self.targets, self.timers = self.targets, {}, []
        now = time.monotonic()
        for index, (svc, real) in enumerate(switch.reals):
            if svc.check is None:
                continue
            key = (service_key(svc), real.endpoint)
            port = svc.check.connect_port or real.port
            target = Target(
                key,
                index,
                f"{real.endpoint} ({svc.protocol.upper()} {svc.endpoint})",
                (str(real.address), port),
                real.address.version,
                svc.check,
                real.weight,
            )
            kept = old.pop(key, None)
            if kept is not None:
                target.healthy, target.rises, target.counts = kept.healthy, kept.rises, kept.counts
                self._abort(kept)
                if not kept.healthy:
                    self._mark(target, healthy=False, why="still failing after the reload")
            self.targets[key] = target
            heapq.heappush(self.timers, (now if kept is None else now + svc.check.delay_loop, next(self.seq), key))
        for gone in old.values():
            self._abort(gone)

    def timeout(self) -> float | None:
        """Seconds until the next attempt or deadline (None: no checks)."""
        due = [t.deadline for t in self.by_fd.values()]
        if self.timers:
            due.append(self.timers[0][0])
        return max(0.0, min(due) - time.monotonic()) if due else None

    def owns(self, fd: int) -> bool:
        return fd in self.by_fd

    def run_due(self) -> None:
        """Start the attempts that are due; fail those past their connect_timeout."""
        now = time.monotonic()
        for target in [t for t in self.by_fd.values() if t.deadline <= now]:
            self._done(target, False, f"no answer within {target.check.connect_timeout:g} s")
        while self.timers and self.timers[0][0] <= now:
            _, _, key = heapq.heappop(self.timers)
            due = self.targets.get(key)
            if due is not None and due.sock is None:
                self._start(due, now)

    def _start(self, target: Target, now: float) -> None:
        family = socket.AF_INET if target.family == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        err = sock.connect_ex(target.address)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            return self._done(target, False, os.strerror(err))
        target.sock, target.inbuf, target.deadline = sock, b"", now + target.check.connect_timeout
        self.by_fd[sock.fileno()] = target
        assert self.epoll is not None, "register() comes first"
        self.epoll.register(sock.fileno(), select.EPOLLOUT)

    def on_event(self, fd: int, events: int) -> None:
        target = self.by_fd[fd]
        sock = target.sock
        assert sock is not None
        if events & select.EPOLLOUT:  # connected, or refused
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                return self._done(target, False, os.strerror(err))
            if target.check.type == "tcp":
                return self._done(target, True, "")
            host = f"[{target.address[0]}]" if target.family == 6 else target.address[0]
            request = f"GET {target.check.path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: l4emu-check\r\n\r\n"
            try:
                sock.send(request.encode())  # a few dozen bytes: a fresh socket's buffer takes them whole
            except OSError as exc:
                return self._done(target, False, exc.strerror or str(exc))
            assert self.epoll is not None
            self.epoll.modify(fd, select.EPOLLIN)
            return
        try:
            chunk = sock.recv(MAX_STATUS_LINE)
        except BlockingIOError:
            return
        except OSError as exc:
            return self._done(target, False, exc.strerror or str(exc))
        target.inbuf += chunk
        if b"\n" not in target.inbuf and chunk and len(target.inbuf) < MAX_STATUS_LINE:
            return
        code = status_code(target.inbuf)
        if code is None:
            return self._done(target, False, "the answer is not HTTP")
        wanted = target.check.status_code
        self._done(target, code == wanted, "" if code == wanted else f"status {code}, not {wanted}")

    def _abort(self, target: Target) -> None:
        if target.sock is not None:
            fd = target.sock.fileno()
            self.by_fd.pop(fd, None)
            if self.epoll is not None:
                self.epoll.unregister(fd)
            target.sock.close()
            target.sock = None

    def _done(self, target: Target, ok: bool, error: str) -> None:
        """One attempt's result: retries, hysteresis, transitions, and when the next attempt comes."""
        self._abort(target)
        check, now = target.check, time.monotonic()
        target.counts["success" if ok else "failure"] += 1
        if ok:
            target.attempt = 0
            if not target.healthy:
                target.rises += 1
                if target.rises >= check.rise:
                    self._mark(target, healthy=True, why=f"{target.rises} check(s) in a row succeeded")
            delay = check.delay_loop
        elif target.attempt < check.retry:
            target.attempt += 1
            target.last_error = error
            delay = check.delay_before_retry
        else:
            target.attempt, target.rises, target.last_error = 0, 0, error
            if target.healthy:
                self._mark(target, healthy=False, why=f"{error} ({check.retry + 1} attempt(s))")
            delay = check.delay_loop
        heapq.heappush(self.timers, (now + delay, next(self.seq), target.key))

    def _mark(self, target: Target, healthy: bool, why: str) -> None:
        """Tell the switch, log and count (a mark made again after a reload is not a new transition)."""
        if target.check.inhibit_on_failure:  # the weight says it; a down mark from before the reload goes
            self.switch.set_real_at(target.index, weight=target.weight if healthy else 0, down=False)
        else:
            self.switch.set_real_at(target.index, down=not healthy)
        if target.healthy != healthy:
            target.healthy = healthy
            target.counts["up" if healthy else "down"] += 1
            how = "weight 0 (inhibit_on_failure)" if target.check.inhibit_on_failure and not healthy else ""
            log.warning(
                "health: real %s %s: %s%s", target.label, "up" if healthy else "down", why, f"; {how}" if how else ""
            )
            if self.on_change is not None:
                self.on_change(target.key[1], healthy)

    def snapshot(self) -> list[dict]:
        """Per checked real: its state and counts (for --metrics)."""
        return [
            {"vip": t.key[0][1], "protocol": t.key[0][0].upper(), "address": t.key[1], "healthy": t.healthy, **t.counts}
            for t in self.targets.values()
        ]

    def close(self) -> None:
        for target in list(self.targets.values()):
            self._abort(target)
