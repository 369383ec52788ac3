"""What a GSLB replay counts per site: answers given, clients and connections received, connections a
site failure broke, and how fast the failed site's clients moved to another (50/90/99% of them)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from l4emu.datapath._batch import NS

MOVED_SHARES = (0.5, 0.9, 0.99)
ANSWERED, CONNECTED = 0, 1  # what a timeline entry records


@dataclass
class Failure:
    """One site-down: the clients whose last connection went to the site, and when each first connected
    to another site after it."""

    event: dict
    site: int
    at_ns: int
    clients: set = field(default_factory=set)
    moved_after_s: dict = field(default_factory=dict)

    def report(self, ttl_s: float | None) -> dict:
        times = sorted(self.moved_after_s.values())
        n = len(self.clients)
        moved: dict[str, float | None] = {}
        for share in MOVED_SHARES:
            needed = math.ceil(share * n)
            moved[f"{round(share * 100)}%"] = round(times[needed - 1], 6) if n and needed <= len(times) else None
        return {
            **self.event,
            "clients_on_site": n,
            "clients_moved": len(times),
            "moved_within_s": moved,
            "ttl_s": ttl_s,
        }


class Tally:
    def __init__(self, n_sites: int):
        self.answered = [0] * n_sites  # queries whose answer named the site
        self.clients: list[set] = [set() for _ in range(n_sites)]
        self.connections = [0] * n_sites
        self.broken = [0] * n_sites
        self.dropped_down = [0] * n_sites  # packets for a site while it was down
        self.packets = [0] * n_sites  # packets the site's switch took (new, forward, reply, drop, ...)
        self.dropped = [0] * n_sites  # ... and dropped
        self.last_site: dict[bytes, int] = {}
        self.failures: list[Failure] = []
        self.events: list[Failure | dict] = []  # in order: a site-down's Failure, or what another event found
        self.dns: Counter[str] = Counter()
        self.timeline: list[tuple[int, int, int]] | None = None  # (ts, ANSWERED/CONNECTED, site) when kept
        # Resolution: a client's first query for a record that got no address (REFUSED, SERVFAIL, TC) waits
        # here until an answer with one; each resolution's time goes to the answered site.
        self.asked_at: dict[tuple, int] = {}
        self.resolution_ns: list[list[int]] = [[] for _ in range(n_sites)]

    def query(self, key: tuple, ts_ns: int, answered_ns: int | None, site: int) -> None:
        """A query for a record: `key` its client and record; `answered_ns` when an answer with an address
        left (None: it got none), naming `site` first."""
        if answered_ns is None:
            self.asked_at.setdefault(key, ts_ns)
            return
        self.resolution_ns[site].append(answered_ns - self.asked_at.pop(key, ts_ns))

    def answer(self, sites: tuple[int, ...], ts_ns: int) -> None:
        for k in sites:
            self.answered[k] += 1
            if self.timeline is not None:
                self.timeline.append((ts_ns, ANSWERED, k))

    def connection(self, client: bytes, site: int, ts_ns: int) -> None:
        """A new connection from `client` reached `site`'s switch."""
        self.clients[site].add(client)
        self.connections[site] += 1
        self.last_site[client] = site
        if self.timeline is not None:
            self.timeline.append((ts_ns, CONNECTED, site))
        for failure in self.failures:
            if site != failure.site and client in failure.clients and client not in failure.moved_after_s:
                failure.moved_after_s[client] = (ts_ns - failure.at_ns) / NS

    def event(self, found: dict, site: int, moment_ns: int, site_down: bool) -> None:
        if not site_down:
            self.events.append(found)
            return
        self.broken[site] += found["connections_broken"]
        on_site = {client for client, k in self.last_site.items() if k == site}
        self.failures.append(Failure(found, site, moment_ns, on_site))
        self.events.append(self.failures[-1])
