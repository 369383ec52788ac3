"""The GSLB's sites: one Switch per site, which site a packet is for, and each site's health and load.

A site is healthy for a record's answer when it is up and its switch has an available real for that
service (weight above 0, not marked down, not over its threshold): health follows real events. A site
that goes down (T:site-down:NAME) loses every connection it held: its packets are dropped until it is
back (T:site-up:NAME), its table kept as a partitioned site's would be.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from l4emu.events import Event, EventError
from l4emu.gslb.config import Answer, GslbConfig
from l4emu.switch import Switch

NO_SITE = -1


def _available(counter: dict) -> bool:
    return counter["weight"] > 0 and not counter["down"] and not counter["overloaded"]


class Sites:
    """Every site's switch, seeded from one seed (same seed, same choices in every site)."""

    def __init__(self, config: GslbConfig, seed: int | None):
        draw = random.Random(seed)
        self.config = config
        self.names = [site.name for site in config.sites]
        self.switches = [
            Switch(site.config, draw.getrandbits(64) if seed is not None else None) for site in config.sites
        ]
        self.down = [False] * len(self.switches)
        self.owner: dict[bytes, int] = {}
        self.reals_of: dict[tuple[int, bytes, int], range] = {}  # (site, vip, port) -> the service's real indexes
        for k, site in enumerate(config.sites):
            first = 0
            for svc in site.config.services:
                for address in (svc.vip, *(a for a, _ in svc.capture_servers), *(r.address for r in svc.reals)):
                    self.owner[address.packed] = k
                self.reals_of[(k, svc.vip.packed, svc.port)] = range(first, first + len(svc.reals))
                first += len(svc.reals)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def route(self, src: bytes, dst: bytes) -> int:
        """The site a packet is for: the one owning its destination (a VIP), else its source (a real's reply)."""
        return self.owner.get(dst, self.owner.get(src, NO_SITE))

    def healthy(self, answer: Answer) -> bool:
        k = self.index(answer.site)
        if self.down[k]:
            return False
        counters = self.switches[k].real_counters()
        return any(_available(counters[i]) for i in self.reals_of[(k, answer.address.packed, answer.port)])

    def load(self, answer: Answer) -> int:
        """Active connections of the answer's service in its site's switch (ipvsadm's ActiveConn)."""
        k = self.index(answer.site)
        counters = self.switches[k].real_counters()
        return sum(counters[i]["active"] for i in self.reals_of[(k, answer.address.packed, answer.port)])

    def check(self, events: Sequence[Event]) -> None:
        """Each event names a site, or a real of some site."""
        reals = {real.endpoint for site in self.config.sites for svc in site.config.services for real in svc.reals}
        for event in events:
            if event.instance is not None or event.action.startswith("lb-"):
                raise EventError(f"--event {event}: sites are single switches here, not clusters")
            if event.site and event.site not in self.names:
                raise EventError(f"--event {event}: no site {event.site!r} (sites: {', '.join(self.names)})")
            if not event.site and event.endpoint not in reals:
                raise EventError(f"--event {event}: no real server {event.endpoint} in any site")

    def apply(self, event: Event, moment_ns: int) -> dict:
        """Change a site or a real; returns what the event found (for the summary)."""
        for switch in self.switches:
            switch.advance_clock(moment_ns)
        if event.site:
            k = self.index(event.site)
            alive = sum(counter["active"] for counter in self.switches[k].real_counters())  # ESTABLISHED and such
            was_down, self.down[k] = self.down[k], event.action == "site-down"
            broken = alive if self.down[k] and not was_down else 0
            return {"event": str(event), "site": event.site, "connections_broken": broken}
        found = [
            k
            for k, site in enumerate(self.config.sites)
            if any(r.endpoint == event.endpoint for s in site.config.services for r in s.reals)
        ]
        held = sum(event.apply(self.switches[k]) for k in found)
        return {"event": str(event), "site": ",".join(self.names[k] for k in found), "connections_on_real": held}
