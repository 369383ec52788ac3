"""Changes to real servers scheduled on the packet clock during a replay: `--event 5.0:down:10.1.0.2:8080`."""

from __future__ import annotations

from dataclasses import dataclass

from l4emu.errors import L4emuError

ACTIONS = ("down", "up", "weight")
# A cluster's instances (l4emu/cluster/): take instance K out of ECMP, bring it back (restarted, its table
# empty), add a new one. Real events may also be spelled real-down, real-up, real-weight beside them.
LB_ACTIONS = ("lb-down", "lb-up", "lb-add", "permute")  # permute:N: N buckets pass their reals round (Cheetah's test)
REAL_SPELLINGS = {"real-down": "down", "real-up": "up", "real-weight": "weight"}
# A GSLB's sites (l4emu/gslb/): a whole data centre fails (its connections break, the GSLB stops answering
# with it) and comes back. T:site-down:NAME, T:site-up:NAME.
SITE_ACTIONS = ("site-down", "site-up")


class EventError(L4emuError, ValueError):
    """An --event that cannot be understood."""


@dataclass(frozen=True)
class Event:
    at_s: float  # seconds after the capture's first packet
    action: str  # down | up | weight
    endpoint: str  # "ip:port" (IPv6 as "[ip]:port") of the real ("" for an instance event)
    weight: int | None = None
    instance: int | None = None  # lb-down, lb-up: the cluster's instance K; permute: how many buckets
    site: str = ""  # site-down, site-up: the GSLB site's name

    def __str__(self) -> str:
        if self.action in SITE_ACTIONS:
            return f"{self.at_s:g}:{self.action}:{self.site}"
        if self.action in LB_ACTIONS:
            return f"{self.at_s:g}:{self.action}" + (f":{self.instance}" if self.instance is not None else "")
        tail = f":{self.weight}" if self.action == "weight" else ""
        return f"{self.at_s:g}:{self.action}:{self.endpoint}{tail}"

    def apply(self, switch) -> int:
        """Change the switch; returns the connections the real held at that moment."""
        if self.action in LB_ACTIONS:
            raise EventError(f"--event {self}: an instance event needs a cluster (l4emu compare --cluster N)")
        if self.action in SITE_ACTIONS:
            raise EventError(f"--event {self}: a site event needs a GSLB's sites (l4emu gslb replay)")
        indexes = switch.set_real(self.endpoint, weight=self.weight, down={"down": True, "up": False}.get(self.action))
        counters = switch.real_counters()
        return sum(counters[i]["active"] + counters[i]["inactive"] for i in indexes)


def parse_event(text: str) -> Event:
    """T:down:IP:PORT, T:up:IP:PORT or T:weight:IP:PORT:W (T in seconds after the first packet); for a
    cluster also T:lb-down:K, T:lb-up:K and T:lb-add; for a GSLB's sites T:site-down:NAME and T:site-up:NAME."""
    when, _, rest = text.partition(":")
    action, _, target = rest.partition(":")
    action = REAL_SPELLINGS.get(action, action)
    try:
        at_s = float(when)
    except ValueError:
        raise EventError(f"--event {text!r}: {when!r} is not a time in seconds") from None
    if at_s < 0:
        raise EventError(f"--event {text!r}: the time must not be negative")
    if action in LB_ACTIONS:
        return _instance_event(text, at_s, action, target)
    if action in SITE_ACTIONS:
        if not target or ":" in target:
            raise EventError(f"--event {text!r}: {action} ends with :NAME, the site's name")
        return Event(at_s, action, "", site=target)
    if action not in ACTIONS:
        known = ", ".join((*ACTIONS, *LB_ACTIONS, *SITE_ACTIONS))
        raise EventError(f"--event {text!r}: the action is one of {known}, not {action!r}")
    weight = None
    if action == "weight":
        target, _, value = target.rpartition(":")
        if not value.isdigit():
            raise EventError(f"--event {text!r}: weight events end with :WEIGHT (a whole number)")
        weight = int(value)
    if not target or ":" not in target:
        raise EventError(f"--event {text!r}: name the real as ip:port ([ip]:port for IPv6)")
    return Event(at_s, action, target, weight)


def _instance_event(text: str, at_s: float, action: str, target: str) -> Event:
    if action == "lb-add":
        if target:
            raise EventError(f"--event {text!r}: lb-add takes no instance (the new one is numbered next)")
        return Event(at_s, action, "")
    if action == "permute" and not (target.isdigit() and int(target) >= 2):
        raise EventError(f"--event {text!r}: permute ends with :N, how many buckets (2 or more) pass their reals round")
    if not target.isdigit():
        raise EventError(f"--event {text!r}: {action} ends with :K, the instance's number from 0")
    return Event(at_s, action, "", instance=int(target))


@dataclass
class EventLog:
    """What each applied event found and what followed it, for summaries."""

    event: Event
    applied_ns: int
    connections_on_real: int
    counters_before: dict

    def effects(self, counters_after: dict) -> dict:
        """Flows rescheduled, broken or black-holed between this event and the next (or the end)."""
        keys = ("rescheduled", "broken", "blackholed")
        return {
            "event": str(self.event),
            "connections_on_real": self.connections_on_real,
            **{k: counters_after[k] - self.counters_before[k] for k in keys},
        }
