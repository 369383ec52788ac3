"""How a record picks the site it answers with, as production GSLBs name the policies.

A Policy sees the client (its address, or the EDNS Client Subnet it came with), which of the record's
sites are healthy, and each site's active connections; it returns the indexes (in the record's order) of
the answers to give, or an empty list when no site is healthy (the record's fallback then decides).
Every choice is deterministic: a counter or a fixed hash, never the wall clock.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence

from l4emu.gslb.config import Record, Site

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Policy:
    """One record's choice; subclasses keep what their choice remembers (a rotation, current weights)."""

    def __init__(self, record: Record, sites: Sequence[Site]):
        self.record = record
        by_name = {site.name: site for site in sites}
        self.sites = [by_name[answer.site] for answer in record.answers]

    def choose(self, client: Network, healthy: Sequence[bool], load: Sequence[int]) -> list[int]:
        raise NotImplementedError


class Topology(Policy):
    """topology / pickclosest: the healthy site whose prefixes hold the client most specifically (the
    longest match); a client no healthy site claims gets the first healthy site in the record's order.
    The client is its EDNS Client Subnet when the query carries one (RFC 7871), else its address."""

    def choose(self, client, healthy, load):
        best, best_len = -1, -1
        for i, site in enumerate(self.sites):
            if not healthy[i]:
                continue
            for prefix in site.prefixes:
                if prefix.version == client.version and prefix.prefixlen > best_len and _holds(prefix, client):
                    best, best_len = i, prefix.prefixlen
        if best < 0:
            best = next((i for i, up in enumerate(healthy) if up), -1)
        return [best] if best >= 0 else []


def _holds(prefix: Network, client: Network) -> bool:
    """The client's subnet lies inside the prefix (a /24 ECS inside a /16 site prefix, say)."""
    return client.prefixlen >= prefix.prefixlen and client.supernet(new_prefix=prefix.prefixlen) == prefix


class RoundRobin(Policy):
    """rr: each query the next healthy site in turn."""

    def __init__(self, record, sites):
        super().__init__(record, sites)
        self.next = 0

    def choose(self, client, healthy, load):
        n = len(healthy)
        for step in range(n):
            i = (self.next + step) % n
            if healthy[i]:
                self.next = (i + 1) % n
                return [i]
        return []


class WeightedRoundRobin(Policy):
    """wrr / ratio: smooth weighted round robin (nginx's): over any window each healthy site is answered
    in proportion to its weight, interleaved rather than in runs."""

    def __init__(self, record, sites):
        super().__init__(record, sites)
        self.current = [0] * len(record.answers)

    def choose(self, client, healthy, load):
        weights = [w if up else 0 for w, up in zip(self.record.weights, healthy, strict=True)]
        total = sum(weights)
        if not total:
            return []
        for i, weight in enumerate(weights):
            self.current[i] += weight
        best = max((i for i, w in enumerate(weights) if w), key=lambda i: self.current[i])
        self.current[best] -= total
        return [best]


class Failover(Policy):
    """failover: the first group with a healthy member (PowerDNS ifurlup's groups), rotating within it."""

    def __init__(self, record, sites):
        super().__init__(record, sites)
        index = {answer.site: i for i, answer in enumerate(record.answers)}
        self.groups = [[index[name] for name in group] for group in record.groups]
        self.turn = [0] * len(self.groups)

    def choose(self, client, healthy, load):
        for g, group in enumerate(self.groups):
            up = [i for i in group if healthy[i]]
            if up:
                self.turn[g] += 1
                return [up[(self.turn[g] - 1) % len(up)]]
        return []


class LeastConnections(Policy):
    """least_conn: the healthy site whose switch holds the fewest active connections for the record's
    service (ties: the first in the record's order)."""

    def choose(self, client, healthy, load):
        up = [i for i, ok in enumerate(healthy) if ok]
        return [min(up, key=lambda i: load[i])] if up else []


class Hashed(Policy):
    """hashed: sticky per client (PowerDNS pickhashed), by rendezvous hashing over the healthy sites, so
    a site going down moves only its own clients and its return brings back only those."""

    def choose(self, client, healthy, load):
        key = client.network_address.packed + bytes([client.prefixlen])
        scores = [
            (hashlib.blake2b(key + answer.site.encode(), digest_size=8).digest(), i)
            for i, answer in enumerate(self.record.answers)
            if healthy[i]
        ]
        return [max(scores)[1]] if scores else []


POLICY_CLASSES: dict[str, type[Policy]] = {
    "topology": Topology,
    "rr": RoundRobin,
    "wrr": WeightedRoundRobin,
    "failover": Failover,
    "least_conn": LeastConnections,
    "hashed": Hashed,
}


def create(record: Record, sites: Sequence[Site]) -> Policy:
    return POLICY_CLASSES[record.policy](record, sites)
