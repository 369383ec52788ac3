"""Replay a capture through a GSLB and its sites: DNS queries to a listen address are answered by the
emulated authoritative server (the answer written right after its query; over TCP the server's side of
the connection, gslb/tcp.py, in place of what the capture holds), every other packet goes through the
switch of the site whose VIP or real it names, or passes untouched.

Each span of packets between events goes through every up site's switch in C, a batch at a time (a
site passes what is not its own untouched); Python then looks only at the packets no site took and at
the new connections. Per packet the cost does not depend on how many flows there are.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING

from l4emu.datapath._batch import NS, VERDICT_NAMES, Batch
from l4emu.datapath._datapath import DROP_REASONS
from l4emu.events import Event
from l4emu.gslb import wire
from l4emu.gslb.config import GslbConfig
from l4emu.gslb.server import Authority
from l4emu.gslb.sites import NO_SITE, Sites
from l4emu.gslb.tally import Failure, Tally
from l4emu.gslb.tcp import Frame, TcpResponder
from l4emu.io import open_capture, open_writer
from l4emu.simulate import MS, PERCENTILES, percentile

if TYPE_CHECKING:
    from l4emu.gslb.stepped import Stepper

VERDICT = {name: number for number, name in enumerate(VERDICT_NAMES)}
DROP_NO_REAL = DROP_REASONS.index("no_real")  # a down site has no real to give
ANSWER_DELAY_NS = 1000  # the authority answers 1 us after the query, as emulated hosts do


class GslbReplay:
    """The sites, the authority and the tally of one run."""

    def __init__(self, config: GslbConfig, seed: int | None = None):
        self.config, self.seed = config, seed
        self.sites = Sites(config, seed)
        self.authority = Authority(config, self.sites.healthy, self.sites.load)
        self.tally = Tally(len(config.sites))
        self.listens = {(listen[0].packed, listen[1]) for listen in self.authority.listens}
        self.listen_addresses = tuple({address for address, _ in self.listens})
        self.tcp: TcpResponder | None = None  # made at the first DNS packet over TCP
        self.tcp_due: int | None = None  # when its clocks next have something to do
        self.replaced: set[int] = set()  # the batch's packets whose place the TCP responder's output takes
        self.stepper: Stepper | None = None  # a packet at a time (sites with emulated or non-masq reals)
        # Answers that depend on what a span's packets do to the sites (a load, a real reaching its
        # threshold) are given with the sites as they were at the query: spans are cut after each query.
        self.state_moves = any(record.policy == "least_conn" for record in config.records) or any(
            real.upper_threshold for site in config.sites for svc in site.config.services for real in svc.reals
        )
        self.site_of_answer = {
            (record.listen, record.domain, record.rdtype): [self.sites.index(a.site) for a in record.answers]
            for record in config.records
        }

    def span(self, batch: Batch, start: int, end: int, out: list) -> None:
        """Packets start..end; when answers depend on the sites' load (state_moves), cut after each DNS
        query to a listen address, so that the authority answers it with the sites as they were at its
        moment, not as they are at the end of the span."""
        if not self.state_moves:
            self._through_sites(batch, start, end, out)
            return
        i = start
        for query in self._queries(batch, start, end):
            self._through_sites(batch, i, query + 1, out)
            i = query + 1
        if end > i:
            self._through_sites(batch, i, end, out)

    def _queries(self, batch: Batch, start: int, end: int) -> list[int]:
        found = []
        for i in range(start, end):
            frame = batch.packet(i)
            if not any(address in frame for address in self.listen_addresses):  # a byte search: most packets
                continue
            dgram = wire.parse(frame, batch.meta(i)[3])
            if dgram is not None and (dgram.dst, dgram.dport) in self.listens:
                found.append(i)
        return found

    def _through_sites(self, batch: Batch, start: int, end: int, out: list) -> None:
        """Packets start..end through every site that is up, each whole span in C; then, in Python, only
        what no site took (a DNS query to answer, a packet of a down site to drop) and the new connections
        (whose client and site the tally counts). Answers go to `out` as (after index, frame, ts, iface,
        linktype). A site's switch passes what is not its own untouched, and a site's addresses are its
        own, so each packet is taken by one site at most: an earlier site's verdict is kept."""
        owner = [NO_SITE] * (end - start)
        for k, switch in enumerate(self.sites.switches):
            if self.sites.down[k]:
                continue
            before = _results(batch, start, end)
            stopped = switch.process(batch, start, 0, end)
            assert stopped == end, "masq sites' switches make no fragment slots (others go a packet at a time)"
            after = _results(batch, start, end)
            for j, (verdict, detail) in enumerate(before):
                if owner[j] != NO_SITE:
                    batch.set_result(start + j, VERDICT[verdict], detail)
                elif after[j][0] != "pass":
                    owner[j] = k
        for j, (verdict, _) in enumerate(_results(batch, start, end)):
            k = owner[j]
            if k == NO_SITE:
                self._unowned(batch, start + j, out)
                continue
            self.tally.packets[k] += 1
            if verdict == "new":
                self._new(batch, start + j, k)
            elif verdict == "drop":
                self.tally.dropped[k] += 1

    def _unowned(self, batch: Batch, i: int, out: list) -> None:
        """A packet no site took: a DNS query is answered, a down site's packet dropped, the rest passes."""
        batch.set_result(i, VERDICT["pass"], 0)
        frame = batch.packet(i)
        ts, origlen, iface, linktype = batch.meta(i)
        if self.tcp_due is not None and ts >= self.tcp_due:
            self._tcp_out(self.tcp.advance(ts) if self.tcp else [], i - 1, out)  # an idle close, before packet i
        dgram = wire.parse(frame, linktype)
        if dgram is None:
            return
        if dgram.proto == wire.TCP and (
            (dgram.dst, dgram.dport) in self.listens or (dgram.src, dgram.sport) in self.listens
        ):
            self._tcp(frame, ts, origlen, iface, linktype, i, out)
            return
        if (dgram.dst, dgram.dport) in self.listens:
            self._query(frame, dgram, ts, iface, linktype, i, out)
            return
        k = self.sites.route(dgram.src, dgram.dst)
        if k != NO_SITE and self.sites.down[k]:
            batch.set_result(i, VERDICT["drop"], DROP_NO_REAL)
            self.tally.dropped_down[k] += 1

    def _new(self, batch: Batch, i: int, site: int) -> None:
        """A new connection at a site: its client (the rewritten packet's source) for the tally."""
        dgram = wire.parse(batch.packet(i), batch.meta(i)[3])
        if dgram is not None:
            self.tally.connection(dgram.src, site, batch.timestamp_ns(i))

    def _tcp(self, frame: bytes, ts: int, origlen: int, iface: int, linktype: int, i: int, out: list) -> None:
        """A packet of a DNS conversation over TCP: the responder's output takes its place."""
        if not wire.answerable_link(linktype):
            self.tally.dns["link_not_answered"] += 1
            return
        if self.tcp is None:
            self.tcp = TcpResponder(self.authority.listens, self.seed, self._tcp_query, self.config.sites[0].config)
        self.replaced.add(i)
        self._tcp_out(self.tcp.client(frame, ts, origlen, iface, linktype), i, out)

    def _tcp_out(self, frames: list[Frame], after: int, out: list) -> None:
        out.extend((after, *frame) for frame in frames)
        assert self.tcp is not None, "only the responder makes TCP output"
        self.tcp_due = self.tcp.next_due()

    def _tcp_query(self, query: bytes, client: bytes, address: bytes, port: int, ts: int) -> bytes | None:
        """One whole message over TCP (the responder's callback): the authority's answer, tallied."""
        response, outcome = self.authority.respond(query, ip_address(client), (ip_address(address), port), tcp=True)
        self._tally(client, response, outcome, ts)
        return response

    def _query(self, frame: bytes, dgram: wire.Datagram, ts: int, iface: int, linktype: int, i: int, out: list) -> None:
        if not wire.answerable_link(linktype):
            self.tally.dns["link_not_answered"] += 1
            return
        client = ip_address(dgram.src)
        listen = (ip_address(dgram.dst), dgram.dport)
        response, outcome = self.authority.respond(dgram.payload(frame), client, listen)
        self.tally.dns["queries"] += 1
        if response is not None:
            answer = wire.answer_frame(frame, linktype, dgram, response)
            out.append((i, answer, ts + ANSWER_DELAY_NS, iface, linktype))
        self._tally(dgram.src, response, outcome, ts)

    def _tally(self, client: bytes, response: bytes | None, outcome, ts: int) -> None:
        """What a query got, for the sites' counts and the client's resolution time."""
        r = outcome.record
        sites: tuple[int, ...] = ()
        if r is not None and outcome.chosen:
            sites = tuple(self.site_of_answer[(r.listen, r.domain, r.rdtype)][i] for i in outcome.chosen)
            self.tally.answer(sites, ts)
        if r is not None:
            resolved = response is not None and sites and not outcome.truncated
            key = (client, r.listen, r.domain, r.rdtype)
            self.tally.query(key, ts, ts + ANSWER_DELAY_NS if resolved else None, sites[0] if sites else NO_SITE)


def replay(
    capture: str | Path,
    config: GslbConfig,
    output: str | Path | None = None,
    events: Sequence[Event] = (),
    seed: int | None = None,
    fmt: str | None = None,
    timeline: list | None = None,
) -> dict:
    """Every packet of `capture` through the GSLB and its sites; returns the summary (render/gslb.py).
    A `timeline` list gets (ts_ns, tally.ANSWERED or tally.CONNECTED, site) for each answer and new
    connection, in packet order (compare --gslb's series; watching does not change the run)."""
    run = GslbReplay(config, seed)
    run.tally.timeline = timeline
    run.sites.check(events)
    ordered = sorted(events, key=lambda e: e.at_s)
    started = time.perf_counter()
    with open_capture(capture) as reader:
        writer = open_writer(output, reader.interfaces, nanosecond=reader.nanosecond, fmt=fmt) if output else None
        try:
            if needs_steps(run.sites):
                applied = _stepped(run, reader, ordered, writer)
            else:
                applied = _batched(run, reader, ordered, writer)
        finally:
            if writer is not None:
                writer.close()
        error = reader.error
        warnings = list(reader.warnings)
    warnings += [f"--event {e}: never applied, the capture ended first" for e in ordered[applied:]]
    return summary(
        run, capture, output, writer.packets_written if writer else 0, time.perf_counter() - started, error, warnings
    )


def needs_steps(sites: Sites) -> bool:
    """Whether any site has an emulated real or one that forwards by other than masq: then the replay goes
    a packet at a time (gslb/stepped.py), since such a switch answers, or makes packets, or hides the client."""
    return any(
        real.emulated or real.forward != "masq"
        for site in sites.config.sites
        for svc in site.config.services
        for real in svc.reals
    )


def _stepped(run: GslbReplay, reader, ordered: list[Event], writer) -> int:
    """The capture a packet at a time through the sites (gslb/stepped.py); returns the events applied."""
    from l4emu.gslb.stepped import Stepper  # emulated hosts' modules, only then (start-up time)

    run.stepper = Stepper(run, ordered)
    for batch in reader.batches():
        run.stepper.batch(batch, writer)
    return run.stepper.finish()


def _batched(run: GslbReplay, reader, ordered: list[Event], writer) -> int:
    """The capture a span at a time through every site's switch in C; returns the events applied."""
    applied = 0
    start_ns: int | None = None
    for batch in reader.batches():
        answers: list[tuple] = []  # (after packet i, frame, ts, iface, linktype)
        if start_ns is None and len(batch):
            start_ns = batch.timestamp_ns(0)
        i = 0
        while i < len(batch):
            assert start_ns is not None, "a batch with packets set it"
            moment = start_ns + int(ordered[applied].at_s * NS) if applied < len(ordered) else None
            stop = _first_at(batch, i, moment) if moment is not None else len(batch)
            if stop > i:
                run.span(batch, i, stop, answers)
            if stop < len(batch):  # the packet clock reached the next event
                assert moment is not None
                apply_event(run, ordered[applied], moment)
                applied += 1
            i = stop
        if writer is not None:
            _write(writer, batch, answers, run.replaced)
        run.replaced = set()
    return applied


def _first_at(batch: Batch, start: int, moment: int) -> int:
    """The first packet from `start` at or past `moment` (len(batch): none), as the plain replay stops."""
    for i in range(start, len(batch)):
        if batch.timestamp_ns(i) >= moment:
            return i
    return len(batch)


def apply_event(run: GslbReplay, event: Event, moment_ns: int) -> None:
    """A site or real event at its moment, and what it found for the tally."""
    found = run.sites.apply(event, moment_ns)
    site = run.sites.index(event.site) if event.site else -1
    run.tally.event(found, site, moment_ns, event.action == "site-down")


def _write(writer, batch: Batch, answers: list[tuple], replaced: set[int]) -> None:
    """The batch as it is, or with each answer right after its query and the replaced packets left out
    (a copy of the batch, only then); an answer after packet -1 comes first."""
    if not answers and not replaced:
        writer.write(batch)
        return
    out = Batch(len(batch) + len(answers))
    pending = iter(answers)
    upcoming = next(pending, None)

    def put(frame: bytes, ts: int, iface: int, linktype: int, origlen: int, verdict: str, detail: int) -> None:
        if not out.append(frame, ts, iface, linktype, origlen):
            writer.write(out)
            out.reset()
            out.append(frame, ts, iface, linktype, origlen)
        out.set_result(len(out) - 1, VERDICT[verdict], detail)

    while upcoming is not None and upcoming[0] < 0:
        frame, ats, aiface, alink = upcoming[1:]
        put(frame, ats, aiface, alink, len(frame), "pass", 0)
        upcoming = next(pending, None)
    for i in range(len(batch)):
        ts, origlen, iface, linktype = batch.meta(i)
        if i not in replaced:
            put(batch.packet(i), ts, iface, linktype, origlen, *batch.result(i))
        while upcoming is not None and upcoming[0] == i:
            frame, ats, aiface, alink = upcoming[1:]
            put(frame, ats, aiface, alink, len(frame), "pass", 0)
            upcoming = next(pending, None)
    writer.write(out)


def summary(run: GslbReplay, capture, output, written: int, elapsed: float, error, warnings: list[str]) -> dict:
    """Plain data: the DNS counts, per site what it answered, received and lost, each event's effects."""
    ttl = min(record.ttl for record in run.config.records)  # the shortest: what clients may obey at best
    events = [e.report(ttl) if isinstance(e, Failure) else e for e in run.tally.events]
    sites = []
    for k, name in enumerate(run.sites.names):
        sites.append(
            {
                "site": name,
                "queries_answered": run.tally.answered[k],
                "clients": len(run.tally.clients[k]),
                "connections": run.tally.connections[k],
                "connections_broken": run.tally.broken[k],
                "dropped_while_down": run.tally.dropped_down[k],
                "down_at_end": run.sites.down[k],
                "packets": run.tally.packets[k],  # the site's own: its switch passes the others' untouched
                "dropped": run.tally.dropped[k],  # by its switch (no real, table full, ...)
                "resolution": resolution(run.tally.resolution_ns[k]),
                **(run.stepper.site_summary(k) if run.stepper is not None else {}),  # emulated hosts, checks
            }
        )
    return {
        "capture": str(capture),
        "output": str(output) if output else None,
        "seed": run.seed,
        "written": written,
        "dns": dict(sorted(run.authority.counters.items())) | dict(run.tally.dns),
        **({"dns_tcp": _tcp_counters(run.tcp)} if run.tcp is not None else {}),
        "records": [
            {"domain": r.domain, "type": r.rdtype, "listen": r.listen_text, "ttl": r.ttl, "policy": r.policy}
            for r in run.config.records
        ],
        "sites": sites,
        "resolution": {
            **resolution(sorted(ns for per_site in run.tally.resolution_ns for ns in per_site)),
            "unresolved": len(run.tally.asked_at),  # clients whose last query for a record got no address
        },
        "events": events,
        "elapsed_s": round(elapsed, 6),
        "warnings": warnings,
        "error": str(error) if error else None,
    }


def _tcp_counters(tcp: TcpResponder) -> dict:
    """DNS over TCP, when the capture had some: the hosts' counters (segments, connections accepted,
    messages answered, closes by limit or bad input) and the recorded server segments superseded."""
    return dict(sorted(tcp.counters().items())) | {"superseded": tcp.superseded}


def resolution(times_ns: list[int]) -> dict:
    """Clients' DNS resolution: how many, and p50/p90/p99/max in ms from a client's first query for a
    record to the answer that gave it an address (retries after REFUSED, SERVFAIL or TC included)."""
    ordered = sorted(times_ns)
    figures = {f"p{p}_ms": round(percentile(ordered, p) / MS, 3) for p in PERCENTILES}
    return {"resolved": len(ordered), **figures, "max_ms": round(ordered[-1] / MS, 3) if ordered else 0.0}


def _results(batch: Batch, start: int, end: int) -> list[tuple[str, int]]:
    """(verdict, detail) of packets start..end: only the span's, so that many short spans stay linear."""
    return [batch.result(i) for i in range(start, end)]
