"""`l4emu gslb simulate`: emulated clients resolve the service's name through the GSLB, then connect to
the answered VIP, through that site's switch, to its emulated reals (closed loop, as `l4emu simulate`).

The lookups come first (l4emu/gslb/resolve.py: caches, queries, the authority's answers on the sites'
health, events on the packet clock); then each site runs its own sessions, each in its own switch, up
span by up span: a site that goes down stops at that moment (the connections it held are broken; the
sessions cached clients still send it are refused), and one that comes back starts again with an empty
table. The two phases are exact because nothing the connections do changes an answer: health follows
the events (real events and site events alike), and a policy that reads the sites' load (least_conn)
is refused. Every packet (queries, answers, each site's conversations) goes to one capture in time
order.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
import time
from collections.abc import Sequence
from pathlib import Path

from l4emu.datapath._batch import NS, Batch
from l4emu.errors import OptionError
from l4emu.events import Event
from l4emu.gslb.caching import CHECKPOINTS_S, WINDOW_S
from l4emu.gslb.config import Answer, GslbConfig, Record
from l4emu.gslb.replay import resolution
from l4emu.gslb.resolve import ClientCaches, Lookups, arrivals, stale_sessions
from l4emu.gslb.server import Authority
from l4emu.gslb.sites import NO_SITE, Sites
from l4emu.gslb.tally import Failure, Tally
from l4emu.simulate import MS, PERCENTILES, check_emulated, percentile
from l4emu.switch import Switch
from l4emu.workload import Workload

NEVER = (1 << 64) - 1  # the loop's "no timer due"
BATCH_PACKETS = 4096


class _SiteDown(Exception):
    """The loop's timer reached the moment the site went down: its run stops there."""


def record_of(config: GslbConfig) -> Record:
    """The service the clients use: the first A record (IPv4 clients)."""
    for record in config.records:
        if record.rdtype == "A":
            return record
    raise OptionError("gslb simulate: the config has no [[gslb]] record of type A (its clients are IPv4)")


def check(config: GslbConfig, record: Record, workload: Workload) -> None:
    """What this path runs: IPv4 TCP clients, a policy that does not read the sites' load."""
    if record.policy == "least_conn":
        raise OptionError(
            "gslb simulate: policy least_conn reads the sites' load, which the lookups (run first) do not "
            "have yet: use another policy"
        )
    if workload.protocol != "tcp" or workload.ipv6_clients:
        raise OptionError("gslb simulate: the clients are IPv4 TCP ones (--protocol tcp, --ipv6-share 0)")
    if workload.arrival == "capture":
        raise OptionError("gslb simulate: arrivals are poisson or fixed (--arrival), not a capture's")
    for answer in record.answers:
        check_emulated(config.site(answer.site).config, _at(workload, answer))


def _at(workload: Workload, answer: Answer) -> Workload:
    return dataclasses.replace(workload, target=(answer.address, answer.port), target6=None)


def simulate(
    config: GslbConfig,
    workload: Workload,
    events: Sequence[Event] = (),
    output: str | Path | None = None,
    fmt: str | None = None,
) -> dict:
    """The workload's clients, resolving then connecting, through every site; the summary (plain data)."""
    from l4emu.clients.gen import START_NS

    record = record_of(config)
    check(config, record, workload)
    sites = Sites(config, workload.seed)
    sites.check(events)
    authority = Authority(config, sites.healthy, sites.load)
    caches = ClientCaches(record, config.cache, workload, sites, authority)
    started = time.process_time()
    timed = sorted(((START_NS + round(e.at_s * NS), e) for e in events), key=lambda pair: pair[0])
    lookups = caches.run(arrivals(workload, caches.rng, START_NS), timed)
    runs = [SiteRun(k, name, timed, output is not None) for k, name in enumerate(sites.names)]
    answers = {sites.index(a.site): a for a in record.answers}
    for run in runs:
        if run.index in answers:
            run.play(config, workload, answers[run.index], lookups, timed)
    written = _write(output, fmt, workload, lookups, runs) if output else 0
    summary = _summary(config, record, workload, lookups, runs, caches, authority, START_NS)
    summary.update(
        output=str(output) if output else None, written=written, cpu_s=round(time.process_time() - started, 3)
    )
    return summary


class SiteRun:
    """One site's sessions, run span by span (the times it is up) in its own switch to its emulated reals."""

    def __init__(self, index: int, name: str, timed: Sequence[tuple[int, Event]], keep: bool):
        self.index, self.name, self.keep = index, name, keep
        self.spans = _up_spans(name, timed)
        self.crowds: list = []  # the sessions the site served, a crowd per up span
        self.dead: list = []  # the sessions cached clients sent it while it was down, a crowd per down span
        self.held_at_down: dict[int, int] = {}  # site-down moment -> connections it broke
        self.packets: list[tuple[int, bytes]] = []  # (ts, frame), when kept for the output

    def play(self, config: GslbConfig, workload: Workload, answer: Answer, lookups: Lookups, timed) -> None:
        real_events = [(t, e) for t, e in timed if not e.site and _holds_real(config, self.name, e)]
        mine = sorted((start, c) for start, c, k in lookups.sessions if k == self.index)
        for n, (begin, end) in enumerate(self.spans):
            inside = [(start, c) for start, c in mine if begin <= start < end]
            if inside:
                self._span(config, workload, answer, inside, real_events, end, f"up {n}")
        after = [*self.spans[1:], (NEVER, NEVER)]  # each down span: from an up span's end to the next one's start
        downs = [(end, begin) for (_, end), (begin, _) in zip(self.spans, after, strict=True)]
        for n, (begin, end) in enumerate(downs):
            inside = [(start, c) for start, c in mine if begin <= start < end]
            if inside:
                self._span(config, workload, answer, inside, [], NEVER, f"down {n}")

    @property
    def refused(self) -> int:
        """Sessions cached clients sent while the site was down (each connect timed out)."""
        return sum(crowd.sessions for crowd in self.dead)

    def up(self, moment: int) -> bool:
        return any(begin <= moment < end for begin, end in self.spans)

    def _span(self, config, workload, answer, sessions, real_events, end: int, name: str) -> None:
        """The sessions of one span through a fresh switch of the site (a site back up has an empty
        table); in a down span every real is down, so the clients' SYNs go unanswered until they give up."""
        from l4emu.clients._clients import Clients
        from l4emu.clients._gen import ARRIVALS
        from l4emu.clients.gen import model_arguments
        from l4emu.emulate import BatchSink, Emulator

        seed = random.Random(f"{workload.seed}:{self.name}:{name}").getrandbits(64)
        site = config.site(self.name).config
        switch = Switch(site, seed)
        dead = name.startswith("down")
        if dead:
            for endpoint in {real.endpoint for svc in site.services for real in svc.reals}:
                switch.set_real(endpoint, down=True)
        begin = sessions[0][0]
        for t, event in real_events:
            if t < begin:
                event.apply(switch)
        arguments = model_arguments(_at(workload, answer))
        arguments.update(
            seed64=seed,
            arrival=ARRIVALS["capture"],
            arrivals=[s for s, _ in sessions],
            arrival_clients=[c for _, c in sessions],
        )
        crowd = Clients(timeout_ns=round(workload.timeout * NS), **arguments)
        emulator = Emulator(switch, outside=BatchSink(self._keep) if self.keep else None, restamp=False)
        timer = _Timer(switch, [(t, e) for t, e in real_events if t >= begin], end)
        try:
            emulator.loop.simulate(crowd, 0, None, timer)
        except _SiteDown:
            self.held_at_down[end] = sum(counter["active"] for counter in switch.real_counters())
        emulator.flush()
        (self.dead if dead else self.crowds).append(crowd)

    def _keep(self, batch: Batch) -> None:
        for i in range(len(batch)):
            self.packets.append((batch.timestamp_ns(i), batch.packet(i)))


def _up_spans(site: str, timed: Sequence[tuple[int, Event]]) -> list[tuple[int, int]]:
    """[begin, end) moments the site is up: from the start, cut by its site-down and site-up events."""
    spans, up, since = [], True, 0
    for t, event in timed:
        if event.site != site:
            continue
        if up and event.action == "site-down":
            spans.append((since, t))
            up = False
        elif not up and event.action == "site-up":
            up, since = True, t
    if up:
        spans.append((since, NEVER))
    return spans


class _Timer:
    """The loop's timer: the site's real events at their moments, and the stop at the site's failure."""

    def __init__(self, switch: Switch, events: list[tuple[int, Event]], end: int):
        self.switch, self.events, self.end = switch, events, end

    def __call__(self, now: int) -> int:
        if now >= self.end:
            raise _SiteDown
        while self.events and self.events[0][0] <= now:
            self.events.pop(0)[1].apply(self.switch)
        return min(self.events[0][0] if self.events else NEVER, self.end)


def _holds_real(config: GslbConfig, site: str, event: Event) -> bool:
    return any(real.endpoint == event.endpoint for svc in config.site(site).config.services for real in svc.reals)


def _write(output, fmt, workload: Workload, lookups: Lookups, runs: list[SiteRun]) -> int:
    """Every packet in time order (ties: queries and answers first, then the sites in order)."""
    from l4emu.clients.gen import LINKTYPE, SNAPLEN
    from l4emu.io import Interface, open_writer

    linktype = LINKTYPE[workload.linktype]
    dns = sorted(
        [(q.sent_ns, q.frames[0]) for q in lookups.queries]
        + [(q.answered_ns, q.frames[1]) for q in lookups.queries if q.frames[1]],
        key=lambda pair: pair[0],
    )
    streams = [dns, *(sorted(run.packets, key=lambda pair: pair[0]) for run in runs)]
    batch = Batch(BATCH_PACKETS)
    written = 0
    with open_writer(output, [Interface(linktype, SNAPLEN, True)], nanosecond=True, fmt=fmt) as writer:
        for ts, frame in heapq.merge(*streams, key=lambda pair: pair[0]):
            if not batch.append(frame, ts, 0, linktype, len(frame)):
                writer.write(batch)
                batch.reset()
                batch.append(frame, ts, 0, linktype, len(frame))
            written += 1
        writer.write(batch)
    return written


def _failures(crowds: list) -> dict[str, int]:
    """Connections of the site's up spans that failed (refused, reset, timed out, cut short), by reason:
    a real that is down or full turns them away, as in `l4emu simulate`."""
    total: dict[str, int] = {}
    for crowd in crowds:
        for reason, count in crowd.failures().items():
            total[reason] = total.get(reason, 0) + count
    return total


def _event(tally: Tally, runs: list[SiteRun], sites: Sites, moment: int, event: Event, found: dict) -> None:
    """An event for the tally: a site failure with the connections its switch held at that moment."""
    k = sites.index(event.site) if event.site else -1
    if event.action == "site-down":
        found = {**found, "connections_broken": runs[k].held_at_down.get(moment, 0)}
    else:  # what the health mirror held is not what the sites' switches held: only what the event named
        found = {"event": found["event"], "site": found["site"]}
    tally.event(found, k, moment, event.action == "site-down")


def _summary(config, record, workload, lookups: Lookups, runs, caches: ClientCaches, authority, start_ns) -> dict:
    n = len(runs)
    tally = Tally(n)
    for q in lookups.queries:
        if q.site != NO_SITE:
            tally.answer((q.site,), q.sent_ns)
    ordered = sorted(lookups.sessions)
    # The tally's moves: the events and the sessions that reached an up site, in time order (an event first).
    pending = list(lookups.events)
    for start, c, k in ordered:
        while pending and pending[0][0] <= start:
            _event(tally, runs, caches.sites, *pending.pop(0))
        if k != NO_SITE and runs[k].up(start):
            tally.connection(caches.address(c), k, start)
    for item in pending:
        _event(tally, runs, caches.sites, *item)
    sites = []
    for run in runs:
        k = run.index
        times = sorted(ns for crowd in run.crowds for _, ns in crowd.response_times())
        sites.append(
            {
                "site": run.name,
                "queries_answered": tally.answered[k],
                "clients": len(tally.clients[k]),
                "sessions": sum(crowd.sessions for crowd in run.crowds),
                "connections": sum(crowd.conversations for crowd in run.crowds),
                "requests": sum(crowd.requests_sent for crowd in run.crowds),
                "answered": len(times),
                **{f"p{p}_ms": round(percentile(times, p) / MS, 3) for p in PERCENTILES},
                "failures": _failures(run.crowds),
                "connections_broken": tally.broken[k] + run.refused,
                "held_at_failure": tally.broken[k],
                "refused_while_down": run.refused,
                "down_at_end": caches.sites.down[k],
                "resolution": resolution([q.answered_ns - q.sent_ns for q in lookups.queries if q.site == k]),
            }
        )
    ttl = record.ttl
    events = []
    for e in tally.events:
        if isinstance(e, Failure):
            report = e.report(ttl)
            after_s = (e.at_ns - start_ns) / NS
            points = [p for p in CHECKPOINTS_S if after_s + p + WINDOW_S / 2 <= workload.duration]
            report["stale_sessions"] = stale_sessions(ordered, e.site, e.at_ns, points)
            events.append(report)
        else:
            events.append(e)
    wire = [q.answered_ns - q.sent_ns for q in lookups.queries if q.site != NO_SITE]
    return {
        "workload": workload.describe(to=f"{record.domain.rstrip('.')} (the GSLB's answer)"),
        "seed": workload.seed,
        "record": {
            "domain": record.domain,
            "type": record.rdtype,
            "listen": record.listen_text,
            "ttl": ttl,
            "policy": record.policy,
        },
        "clients": workload.clients,
        "sessions": len(lookups.sessions),
        "dns": {
            "queries": len(lookups.queries),
            **dict(sorted(authority.counters.items())),
            "client_cache_hits": lookups.client_hits,
            "resolver_cache_hits": lookups.resolver_hits,
            "unresolved": sum(1 for q in lookups.queries if q.site == NO_SITE),
        },
        "resolution": resolution(wire),
        "sites": sites,
        "events": events,
    }
