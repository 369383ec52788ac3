"""One checked real's hysteresis, clock-free: attempt results in, transitions and the next delay out.

keepalived's rules: a check fails when its attempt and `retry` retries (`delay_before_retry` apart) all
fail, which marks a healthy real down; `rise` checks in a row that succeed bring a down real back. The
emulated checks (l4emu/emulated_checks.py) use it on the packet clock, the live checks
(l4emu/live/health.py) on the monotonic clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from l4emu.checks import HealthCheck

DOWN, UP = "down", "up"


@dataclass
class CheckState:
    """Where one real's check stands, and what it counted."""

    check: HealthCheck
    healthy: bool = True
    attempt: int = 0  # failed attempts in the current check
    rises: int = 0  # checks in a row that succeeded while down
    last_error: str = ""
    counts: dict = field(default_factory=lambda: {"success": 0, "failure": 0, "down": 0, "up": 0})

    def result(self, ok: bool, error: str = "") -> tuple[float, str | None, str]:
        """One attempt's result: (seconds until the next attempt, DOWN/UP when the real changes state
        (None: no change), why it changed)."""
        check = self.check
        self.counts["success" if ok else "failure"] += 1
        if ok:
            self.attempt = 0
            if not self.healthy:
                self.rises += 1
                if self.rises >= check.rise:
                    why = f"{self.rises} check(s) in a row succeeded"
                    return check.delay_loop, self._turn(True), why
            return check.delay_loop, None, ""
        if self.attempt < check.retry:
            self.attempt += 1
            self.last_error = error
            return check.delay_before_retry, None, ""
        self.attempt, self.rises, self.last_error = 0, 0, error
        if self.healthy:
            return check.delay_loop, self._turn(False), f"{error} ({check.retry + 1} attempt(s))"
        return check.delay_loop, None, ""

    def _turn(self, healthy: bool) -> str:
        self.healthy = healthy
        self.rises = 0
        self.counts[UP if healthy else DOWN] += 1
        return UP if healthy else DOWN
