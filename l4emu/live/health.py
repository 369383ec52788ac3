"""Live health checks (keepalived's TCP_CHECK, HTTP_GET, SSL_GET and MISC_CHECK) from the switch's namespace.

Each attempt is a probe (l4emu/live/probes.py) on a descriptor in the live loop's epoll, with deadlines
in a heap: a check never blocks the packet path. Each checked real runs one attempt at a time; results
move it down or up through the hysteresis of its check (the real's `[service.real.check]`, else its
service's `[service.check]`, l4emu/checks.py), and the Switch hears of it as of an admin's `real set`
(down mark, or weight 0 with inhibit_on_failure; a misc_dynamic command's weight).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import select
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from l4emu import checks
from l4emu.check_state import UP, CheckState
from l4emu.checks import HealthCheck
from l4emu.live import probes
from l4emu.live.probes import Outcome
from l4emu.reconfig import service_key
from l4emu.switch import Switch

log = logging.getLogger("l4emu.live")


@dataclass
class Target:
    """One checked real of one service, and where its check stands."""

    key: tuple
    index: int  # the real's index in the Switch (changes with a reload)
    label: str  # "10.1.0.2:8080 (TCP 10.0.0.100:80)", for the log
    real: probes.Real
    check: HealthCheck
    weight: int  # the config's, restored when an inhibited real comes back
    dynamic: int | None = None  # misc_dynamic: the weight the command's last exit status gave
    probe: probes.Probe | None = None
    mask: int = 0  # the events its probe's descriptor is registered for
    state: CheckState = field(init=False)  # the hysteresis, shared with the emulated checks

    def __post_init__(self) -> None:
        self.state = CheckState(self.check)

    @property
    def up_weight(self) -> int:
        return self.weight if self.dynamic is None else self.dynamic


class HealthChecks:
    """The checks of every real that has one (its own or its service's); the live loop drives them."""

    def __init__(self, switch: Switch, on_change: Callable[[str, bool], None] | None = None):
        self.switch = switch
        self.on_change = on_change  # told each transition (endpoint, healthy): the report marks them
        self.targets: dict[tuple, Target] = {}
        self.by_fd: dict[int, Target] = {}
        self.leftovers: dict[int, probes.Leftover] = {}  # timed-out commands being stopped and reaped
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
            check = checks.effective(svc, real)
            if check is None:
                continue
            key = (service_key(svc), real.endpoint)
            port = check.connect_port or real.port
            target = Target(
                key,
                index,
                f"{real.endpoint} ({svc.protocol.upper()} {svc.endpoint})",
                probes.Real(str(real.address), port, real.address.version, real.port),
                check,
                real.weight,
            )
            kept = old.pop(key, None)
            if kept is not None:
                state = target.state
                state.healthy, state.rises, state.counts = kept.state.healthy, kept.state.rises, kept.state.counts
                target.dynamic = kept.dynamic if check.misc_dynamic else None
                self._abort(kept)
                if not state.healthy:
                    self._mark(target, healthy=False, why="still failing after the reload", transition=False)
                elif target.dynamic is not None:  # the reload set the config's weight: the command's again
                    self.switch.set_real_at(index, weight=target.dynamic)
            self.targets[key] = target
            heapq.heappush(self.timers, (now if kept is None else now + check.delay_loop, next(self.seq), key))
        for gone in old.values():
            self._abort(gone)

    def timeout(self) -> float | None:
        """Seconds until the next attempt or deadline (None: no checks)."""
        due = [t.probe.deadline for t in self.by_fd.values() if t.probe is not None]
        due += [leftover.deadline for leftover in self.leftovers.values()]
        if self.timers:
            due.append(self.timers[0][0])
        return max(0.0, min(due) - time.monotonic()) if due else None

    def owns(self, fd: int) -> bool:
        return fd in self.by_fd or fd in self.leftovers

    def run_due(self) -> None:
        """Start the attempts that are due; fail those past their deadline; SIGKILL overdue leftovers."""
        now = time.monotonic()
        for target in [t for t in self.by_fd.values() if t.probe is not None and t.probe.deadline <= now]:
            assert target.probe is not None
            self._done(target, target.probe.expire())
        for leftover in self.leftovers.values():
            if leftover.deadline <= now:
                leftover.overdue()
        while self.timers and self.timers[0][0] <= now:
            _, _, key = heapq.heappop(self.timers)
            due = self.targets.get(key)
            if due is not None and due.probe is None:
                self._start(due, now)

    def _start(self, target: Target, now: float) -> None:
        started = probes.start(target.check, target.real, now)
        if isinstance(started, Outcome):
            return self._done(target, started)
        target.probe, target.mask = started, started.mask
        self.by_fd[started.fd] = target
        assert self.epoll is not None, "register() comes first"
        self.epoll.register(started.fd, started.mask)

    def on_event(self, fd: int, events: int) -> None:
        leftover = self.leftovers.get(fd)
        if leftover is not None:
            if leftover.exited():
                self._unregister(fd)
                leftover.close()
                del self.leftovers[fd]
            return
        target = self.by_fd[fd]
        probe = target.probe
        assert probe is not None
        outcome = probe.step(events)
        if outcome is not None:
            return self._done(target, outcome)
        if probe.mask != target.mask:
            assert self.epoll is not None
            self.epoll.modify(fd, probe.mask)
            target.mask = probe.mask

    def _unregister(self, fd: int) -> None:
        if self.epoll is not None and not self.epoll.closed:  # the loop closes its epoll before close()
            self.epoll.unregister(fd)

    def _abort(self, target: Target) -> None:
        """End its attempt: a command still running is stopped and reaped later (its pidfd stays watched)."""
        probe, target.probe = target.probe, None
        if probe is None:
            return
        self.by_fd.pop(probe.fd, None)
        self._unregister(probe.fd)  # before release() closes it
        leftover = probe.release(time.monotonic())
        if leftover is not None:
            self.leftovers[leftover.fd] = leftover
            if self.epoll is not None and not self.epoll.closed:
                self.epoll.register(leftover.fd, select.EPOLLIN)

    def _done(self, target: Target, outcome: Outcome) -> None:
        """One attempt's result: retries, hysteresis, transitions, and when the next attempt comes."""
        self._abort(target)
        if outcome.ok and outcome.weight is not None:
            self._dynamic(target, outcome.weight)
        delay, turn, why = target.state.result(outcome.ok, outcome.error)
        if turn is not None:
            self._mark(target, healthy=turn == UP, why=why)
        now = time.monotonic()
        heapq.heappush(self.timers, (now + delay, next(self.seq), target.key))

    def _dynamic(self, target: Target, weight: int) -> None:
        """misc_dynamic: the weight an exit status gives, set now if the real is up (else when it comes up)."""
        if weight == target.dynamic:
            return
        target.dynamic = weight
        if target.state.healthy:
            self.switch.set_real_at(target.index, weight=weight)
        log.info("health: real %s weight %d (misc_dynamic: exit status %d)", target.label, weight, weight + 2)

    def _mark(self, target: Target, healthy: bool, why: str, transition: bool = True) -> None:
        """Tell the switch, and log a transition (a mark made again after a reload is not one)."""
        if target.check.inhibit_on_failure:  # the weight says it; a down mark from before the reload goes
            self.switch.set_real_at(target.index, weight=target.up_weight if healthy else 0, down=False)
        elif healthy and target.dynamic is not None:
            self.switch.set_real_at(target.index, weight=target.dynamic, down=False)
        else:
            self.switch.set_real_at(target.index, down=not healthy)
        if transition:
            how = "weight 0 (inhibit_on_failure)" if target.check.inhibit_on_failure and not healthy else ""
            log.warning(
                "health: real %s %s: %s%s", target.label, "up" if healthy else "down", why, f"; {how}" if how else ""
            )
            if self.on_change is not None:
                self.on_change(target.key[1], healthy)

    def snapshot(self) -> list[dict]:
        """Per checked real: its state and counts (for --metrics)."""
        return [
            {
                "vip": t.key[0][1],
                "protocol": t.key[0][0].upper(),
                "address": t.key[1],
                "healthy": t.state.healthy,
                **t.state.counts,
            }
            for t in self.targets.values()
        ]

    def close(self) -> None:
        """Stop every attempt; commands still running are killed and reaped here."""
        for target in list(self.targets.values()):
            self._abort(target)
        for fd, leftover in list(self.leftovers.items()):
            self._unregister(fd)
            leftover.kill()
            del self.leftovers[fd]
