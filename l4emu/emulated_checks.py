"""Health checks of emulated reals on the packet clock: each attempt judged from its host's state.

No check packet is made: the capture (or the simulated conversation) stays as it was. Every
`delay_loop` (or `delay_before_retry` after a failed attempt) a real's check is judged from what its
emulated host holds at that moment, as keepalived's checker would find it:

- tcp: fails when an event took the real down, nothing listens on the check's port (a reset), or the
  listener would drop the SYN (SYN or accept queue full: the connect times out);
- http: fails as tcp; also when the app does not answer HTTP (echo, discard), answers 200 where
  another status is expected, or would answer later than `connect_timeout`. The answer's delay is
  estimated from the listener's queues: accepted after the connections ahead of it in the accept
  queue (at the accept pace), served after the requests ahead of it (those waiting for a worker and
  those in the accept queue) once a worker is free, each taking the mean service time over the
  workers, then served itself: max(accept wait, worker wait) + mean service time.

Results go through the same hysteresis as live checks (l4emu/check_state.py) and move the real as
live checks do: down mark, or weight 0 with inhibit_on_failure. The next attempt comes off a heap, so
the cost is per attempt, never per packet or flow.
"""

from __future__ import annotations

import heapq
import logging

from l4emu import checks
from l4emu.check_state import DOWN, CheckState
from l4emu.datapath._batch import NS
from l4emu.switch import Switch

NEVER = (1 << 64) - 1  # no attempt due (the packet clock's "never", as the emulate loop takes it)
log = logging.getLogger("l4emu.health")


class EmulatedCheck:
    """One checked emulated real of one service."""

    def __init__(self, index: int, svc, real):
        self.index = index
        self.service = f"{svc.protocol.upper()} {svc.endpoint}"
        self.real = real.endpoint
        check = checks.effective(svc, real)
        assert check is not None, "only checked reals are targets"
        self.port = check.connect_port or real.port
        self.weight = real.weight  # restored when an inhibited real comes back
        self.state = CheckState(check)
        self.host_down = False  # an event took the real down: its host does not answer


class EmulatedChecks:
    """The checks of every emulated real with a check (its own `[service.real.check]`, else its service's)."""

    def __init__(self, switch: Switch):
        assert switch.hosts is not None, "emulated reals only"
        self.switch, self.engine = switch, switch.hosts.engine
        self.targets = [
            EmulatedCheck(index, svc, real)
            for index, (svc, real) in enumerate(switch.reals)
            if checks.effective(svc, real) is not None and real.emulated and svc.protocol == "tcp"
        ]
        self.timers: list[tuple[int, int]] = []  # (when in ns, target): each target's next attempt
        self.start_ns: int | None = None
        self.transitions: list[dict] = []

    def __bool__(self) -> bool:
        return bool(self.targets)

    def start(self, now: int) -> None:
        """The first attempts, at the first moment of the run (as live checks start at once)."""
        self.start_ns = now
        self.timers = [(now, k) for k in range(len(self.targets))]
        heapq.heapify(self.timers)

    def next_due(self) -> int:
        """The packet-clock moment of the next attempt (NEVER: none)."""
        return self.timers[0][0] if self.timers else NEVER

    def run_due(self, now: int) -> int:
        """Judge every attempt due by `now` (starting the checks on the first call); returns next_due()."""
        if self.start_ns is None:
            self.start(now)
        while self.timers and self.timers[0][0] <= now:
            when, k = heapq.heappop(self.timers)
            target = self.targets[k]
            error = self.judge(target, when)
            delay, turn, why = target.state.result(not error, error)
            if turn is not None:
                self._mark(target, when, turn, why)
            heapq.heappush(self.timers, (when + max(1, round(delay * NS)), k))
        return self.next_due()

    def judge(self, target: EmulatedCheck, now: int) -> str:
        """Why an attempt at `now` fails ("": it succeeds)."""
        check = target.state.check
        if target.host_down:
            return f"no answer within {check.connect_timeout:g} s (the host is down)"
        view = self.engine.check_view(target.index, target.port)
        if view is None:
            return f"connection refused (nothing listens on port {target.port})"
        app, syn_dropped, accept_queue, pace_ns, ready_ns, workers, busy, waiting, service_s = view
        if syn_dropped:
            return f"no SYN-ACK within {check.connect_timeout:g} s (the listen queue is full)"
        if check.type == "tcp":
            return ""
        if app == "discard":
            return f"no answer within {check.connect_timeout:g} s (app discard)"
        if app != "http":
            return "the answer is not HTTP"
        if check.status_code != 200:
            return f"status 200, not {check.status_code}"
        answer_s = answer_delay(now, accept_queue, pace_ns, ready_ns, workers, busy, waiting, service_s)
        if answer_s > check.connect_timeout:
            return f"no answer within {check.connect_timeout:g} s (about {answer_s:.3g} s: the app's queue)"
        return ""

    def _mark(self, target: EmulatedCheck, now: int, turn: str, why: str) -> None:
        """Tell the switch, log and keep the transition with its packet-clock time."""
        healthy = turn != DOWN
        inhibit = target.state.check.inhibit_on_failure
        self._apply(target)
        at_s = (now - (self.start_ns or now)) / NS
        how = "weight 0 (inhibit_on_failure)" if inhibit and not healthy else ""
        self.transitions.append(
            {
                "at_s": round(at_s, 9),
                "service": target.service,
                "real": target.real,
                "state": turn,
                "why": why + (f"; {how}" if how else ""),
            }
        )
        log.info("health: real %s (%s) %s at %.6f s: %s", target.real, target.service, turn, at_s, why)

    def _apply(self, target: EmulatedCheck) -> None:
        healthy = target.state.healthy
        if target.state.check.inhibit_on_failure:
            self.switch.set_real_at(target.index, weight=target.weight if healthy else 0)
        elif not healthy:
            self.switch.set_real_at(target.index, down=True)
        elif not target.host_down:
            self.switch.set_real_at(target.index, down=False)

    def after_event(self, action: str, endpoint: str, weight: int | None) -> None:
        """A real event was applied: `down` takes the host down (its checks fail), `up` brings it back,
        and the switch takes it back when its check passes `rise` times; `weight` is the weight an
        inhibited real returns with."""
        for target in self.targets:
            if target.real != endpoint:
                continue
            if action in ("down", "up"):
                target.host_down = action == "down"
            elif weight is not None:
                target.weight = weight
            if not target.state.healthy:
                self._apply(target)  # an event does not bring a failing real back before its check does

    def summary(self) -> dict:
        """Per checked real its state and counts, and every transition (seconds after the first moment)."""
        return {
            "reals": [
                {
                    "service": t.service,
                    "real": t.real,
                    "type": t.state.check.type,
                    "healthy": t.state.healthy,
                    **t.state.counts,
                }
                for t in self.targets
            ],
            "transitions": list(self.transitions),
        }


def answer_delay(
    now: int, accept_queue: int, pace_ns: int, ready_ns: int, workers: int, busy: int, waiting: int, service_s: float
) -> float:
    """Seconds until a check request arriving now would be answered (the model in the module's docstring)."""
    accept_s = (max(0, ready_ns - now) + accept_queue * pace_ns) / NS if pace_ns else 0.0
    if not workers:  # no capacity set: every request answered on arrival
        return accept_s
    ahead = busy + waiting + accept_queue
    worker_s = (ahead - workers + 1) * service_s / workers if ahead >= workers else 0.0
    return max(accept_s, worker_s) + service_s
