"""A GSLB simulate's clients, their DNS side: before each session a client looks the service's name up
and learns which site's VIP to connect to.

A client keeps an answer in its own cache (most for what is left of the TTL, `linger_share` past it,
`stale_share` until `stale_cap_s`: l4emu/gslb/caching.py's model, the same draws), and asks its resolver
when it holds none. A resolver is a cache its clients share (neighbouring clients, as an ISP's resolver
serves a prefix); when it holds no answer either, the client's query goes on the wire: a real DNS
message (dnspython) in UDP from the client to the record's listen address, answered by the emulated
authority with the policy's pick, the answer on the wire a round trip (the workload's rtt) later.
Sessions start once the client has an address. Events apply on the packet clock to the sites' health
(the answers); the connections themselves run in each site's switch (l4emu/gslb/simulate.py).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import dns.message
import dns.rdatatype

from l4emu.datapath._batch import NS
from l4emu.events import Event
from l4emu.gslb import wire
from l4emu.gslb.caching import CHECKPOINTS_S, WINDOW_S, cache_kinds, hold
from l4emu.gslb.config import CacheModel, Record
from l4emu.gslb.server import Authority
from l4emu.gslb.sites import NO_SITE, Sites
from l4emu.workload import Workload

# The emulated clients' link (l4emu/clients/_gen.pyx): the next hop's MAC, and a client's own, 02:00 and
# its index, so that a client's DNS packets and its connections come from one MAC.
LB_MAC = bytes((0x02, 0x4C, 0x34, 0x00, 0x00, 0x01))
CLIENT_MAC = b"\x02\x00"
ETHERTYPE_IPV4 = b"\x08\x00"
EPHEMERAL = (32768, 60999)  # Linux's ip_local_port_range: a query's source port
IPV4_HEADER = 20


@dataclass
class Query:
    """One query on the wire: its client, when it left and when the answer came, the site it named
    (NO_SITE: no address, every site down with fallback refuse or servfail), both frames."""

    client: int
    sent_ns: int
    answered_ns: int
    site: int
    frames: tuple[bytes, bytes]


@dataclass
class Lookups:
    """What the clients' lookups gave: every session (start, client, site) in arrival order, the queries on
    the wire, the cache hits, and the events with what each found in the sites' health."""

    sessions: list[tuple[int, int, int]] = field(default_factory=list)
    queries: list[Query] = field(default_factory=list)
    client_hits: int = 0
    resolver_hits: int = 0
    events: list[tuple[int, Event, dict]] = field(default_factory=list)


class ClientCaches:
    """The clients' and resolvers' caches, one seeded generator for every draw (arrivals, query IDs and
    ports, how long each client keeps an answer)."""

    def __init__(self, record: Record, model: CacheModel, workload: Workload, sites: Sites, authority: Authority):
        self.record, self.model, self.workload = record, model, workload
        self.sites, self.authority = sites, authority
        self.rng = random.Random(workload.seed)
        n = workload.clients
        self.kinds = cache_kinds(self.rng, model, n)
        self.resolver_of = _resolvers(n, min(model.resolvers, n), [self._prefix(c) for c in range(n)])
        resolvers = self.resolver_of[-1] + 1
        self.resolver_site = [NO_SITE] * resolvers
        self.resolver_expires = [-1] * resolvers
        # When the last answer arrived: a session that finds an answer whose query is still on the wire
        # (the same client again, or a neighbour behind the same resolver) starts once it is there.
        self.resolver_ready = [-1] * resolvers
        self.client_site = [NO_SITE] * n
        self.client_expires = [-1] * n
        self.client_ready = [-1] * n
        self.site_of = {answer.address.packed: sites.index(answer.site) for answer in record.answers}
        self.rtt_ns = round(workload.rtt * NS)
        self.ttl_ns = record.ttl * NS
        self.raw = workload.linktype == "raw"

    def _prefix(self, client: int) -> object:
        """The most specific site prefix that holds the client (None: no site claims it)."""
        address = IPv4Address(self.address(client))
        held = [p for site in self.sites.config.sites for p in site.prefixes if address in p]
        return max(held, key=lambda p: p.prefixlen) if held else None

    def address(self, client: int) -> bytes:
        """Client k's IPv4 address: its range's base + k + 1, as the emulated clients number them."""
        return (int(self.workload.clients_v4.network_address) + client + 1).to_bytes(4, "big")

    def run(self, arrivals: Sequence[tuple[int, int]], events: Sequence[tuple[int, Event]]) -> Lookups:
        """Each arrival (ns, client) in time order, the events applied to the sites' health at their moments."""
        out = Lookups()
        pending = list(events)
        for t, client in arrivals:
            while pending and pending[0][0] <= t:
                moment, event = pending.pop(0)
                out.events.append((moment, event, self.sites.apply(event, moment)))
            self._session(t, client, out)
        for moment, event in pending:  # after the last arrival: still applied, for the report
            out.events.append((moment, event, self.sites.apply(event, moment)))
        return out

    def _session(self, t: int, c: int, out: Lookups) -> None:
        start = t
        if t >= self.client_expires[c]:
            r = self.resolver_of[c]
            if t >= self.resolver_expires[r]:
                query = self._ask(t, c)
                out.queries.append(query)
                start = query.answered_ns
                if query.site == NO_SITE:
                    out.sessions.append((start, c, NO_SITE))  # no address: the session cannot connect
                    return
                self.resolver_site[r], self.resolver_expires[r] = query.site, start + self.ttl_ns
                self.resolver_ready[r] = start
            else:
                out.resolver_hits += 1
                start = max(t, self.resolver_ready[r])
            left_s = (self.resolver_expires[r] - start) / NS
            self.client_site[c] = self.resolver_site[r]
            self.client_expires[c] = start + round(hold(self.kinds[c], left_s, self.rng, self.model) * NS)
            self.client_ready[c] = start
        else:
            out.client_hits += 1
            start = max(t, self.client_ready[c])
        out.sessions.append((start, c, self.client_site[c]))

    def _ask(self, t: int, c: int) -> Query:
        """Client c's query on the wire and the authority's answer; the site its first address names."""
        message = dns.message.make_query(self.record.domain, self.record.rdtype)
        message.id = self.rng.getrandbits(16)
        sport = self.rng.randint(*EPHEMERAL)
        address = self.address(c)
        listen, port = self.record.listen
        query = _frame(self._link(c), address, sport, listen.packed, port, message.to_wire())
        dgram = wire.parse(query, self._linktype())
        assert dgram is not None, "the query frame is the project's own"
        response, _ = self.authority.respond(dgram.payload(query), IPv4Address(address), self.record.listen)
        site = NO_SITE
        answer = b""
        if response is not None:
            answer = wire.answer_frame(query, self._linktype(), dgram, response)
            for rrset in dns.message.from_wire(response).answer:
                if rrset.rdtype == dns.rdatatype.A:
                    site = self.site_of.get(IPv4Address(rrset[0].address).packed, NO_SITE)
                    break
        return Query(c, t, t + self.rtt_ns, site, (query, answer))

    def _link(self, c: int) -> bytes:
        return b"" if self.raw else LB_MAC + CLIENT_MAC + c.to_bytes(4, "big") + ETHERTYPE_IPV4

    def _linktype(self) -> int:
        return wire.RAW_LINKS[2] if self.raw else wire.ETHERNET


def _resolvers(clients: int, resolvers: int, prefixes: list) -> list[int]:
    """Each client's resolver: neighbours share one, `clients / resolvers` of them, never across a site
    prefix (an ISP's resolver serves its own prefix), so a shared answer suits all its clients."""
    out, current, used = [], 0, 0
    size = clients / resolvers
    for c in range(clients):
        if c and (used >= size or prefixes[c] != prefixes[c - 1]):
            current, used = current + 1, 0
        out.append(current)
        used += 1
    return out


def _frame(link: bytes, src: bytes, sport: int, dst: bytes, dport: int, payload: bytes) -> bytes:
    """A UDP datagram src:sport -> dst:dport on `link`: wire.answer_frame mirrors a frame the other way
    round, so it is given the mirror image of this one's link header and addresses."""
    mirrored = link[6:12] + link[0:6] + link[12:] if link else b""
    l3 = len(link)
    reverse = wire.Datagram(4, dst, src, wire.UDP, dport, sport, l3, l3 + IPV4_HEADER, l3 + IPV4_HEADER)
    return wire.answer_frame(mirrored, wire.ETHERNET if link else wire.RAW_LINKS[2], reverse, payload)


def arrivals(workload: Workload, rng: random.Random, start_ns: int) -> list[tuple[int, int]]:
    """Session starts (ns, client) over the workload's duration: Poisson or fixed at its rate, each to a
    client drawn uniformly, so each client's sessions are a Poisson process of rate/clients."""
    out: list[tuple[int, int]] = []
    t, k = 0.0, 0
    while True:
        if workload.arrival == "fixed":
            t = k / workload.rate
            k += 1
        else:
            t += rng.expovariate(workload.rate)
        if t >= workload.duration:
            return out
        out.append((start_ns + round(t * NS), rng.randrange(workload.clients)))


def stale_sessions(
    sessions: Sequence[tuple[int, int, int]], site: int, at_ns: int, checkpoints: Sequence[float] = CHECKPOINTS_S
) -> list[dict]:
    """After `site` failed at `at_ns`: among the sessions of the clients whose last session before it went
    to the site, the share still sent there within WINDOW_S around each checkpoint (caching.py's curve,
    here from the simulated sessions). `sessions` in time order."""
    last: dict[int, int] = {}
    windows = [[0, 0] for _ in checkpoints]
    for start, client, k in sessions:
        if start < at_ns:
            last[client] = k
            continue
        if last.get(client) != site:
            continue
        after = (start - at_ns) / NS
        for i, point in enumerate(checkpoints):
            if abs(after - point) <= WINDOW_S / 2:
                windows[i][0] += 1
                windows[i][1] += k == site
    return [
        {"after_s": point, "sessions": n, "share": round(stale / n, 6) if n else None}
        for point, (n, stale) in zip(checkpoints, windows, strict=True)
    ]
