"""Replay a capture through a GSLB and its sites: DNS queries to a listen address are answered by the
emulated authoritative server (the answer written right after its query), every other packet goes
through the switch of the site whose VIP or real it names, or passes untouched.

Packets are taken one at a time (a DNS answer must follow its query in the output), each through the
same datapath as a plain replay; their cost does not depend on how many flows or sites there are.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from ipaddress import ip_address
from pathlib import Path

from l4emu.datapath._batch import NS, VERDICT_NAMES, Batch
from l4emu.events import Event
from l4emu.gslb import wire
from l4emu.gslb.config import GslbConfig
from l4emu.gslb.server import Authority
from l4emu.gslb.sites import NO_SITE, Sites
from l4emu.gslb.tally import Failure, Tally
from l4emu.io import open_capture, open_writer

VERDICT = {name: number for number, name in enumerate(VERDICT_NAMES)}
DROP_NO_REAL = 10  # DROP_REASONS.index("no_real"): a down site has no real to give
ANSWER_DELAY_NS = 1000  # the authority answers 1 us after the query, as emulated hosts do


class GslbReplay:
    """The sites, the authority and the tally of one run."""

    def __init__(self, config: GslbConfig, seed: int | None = None):
        self.config, self.seed = config, seed
        self.sites = Sites(config, seed)
        self.authority = Authority(config, self.sites.healthy, self.sites.load)
        self.tally = Tally(len(config.sites))
        self.listens = {(listen[0].packed, listen[1]) for listen in self.authority.listens}
        self.site_of_answer = {
            (record.listen, record.domain, record.rdtype): [self.sites.index(a.site) for a in record.answers]
            for record in config.records
        }

    def packet(self, batch: Batch, i: int, out: list) -> int:
        """Packet i: answered, through its site, dropped or passed; returns the index after it (and after
        any fragments its switch made). Answers go to `out` as (frame, ts, iface, linktype)."""
        frame = batch.packet(i)
        ts, _origlen, iface, linktype = batch.meta(i)
        dgram = wire.parse(frame, linktype)
        if dgram is None:
            batch.set_result(i, VERDICT["pass"], 0)
            return i + 1
        if (dgram.dst, dgram.dport) in self.listens:
            batch.set_result(i, VERDICT["pass"], 0)
            self._query(frame, dgram, ts, iface, linktype, out)
            return i + 1
        k = self.sites.route(dgram.src, dgram.dst)
        if k == NO_SITE:
            batch.set_result(i, VERDICT["pass"], 0)
            return i + 1
        if self.sites.down[k]:
            batch.set_result(i, VERDICT["drop"], DROP_NO_REAL)
            self.tally.dropped_down[k] += 1
            return i + 1
        after = self.sites.switches[k].process(batch, i, 0, i + 1)
        if batch.result(i)[0] == "new":
            self.tally.connection(dgram.src, k, ts)
        return after

    def _query(self, frame: bytes, dgram: wire.Datagram, ts: int, iface: int, linktype: int, out: list) -> None:
        if dgram.proto != wire.UDP:  # DNS over TCP needs a TCP peer: not emulated in replay (docs/gslb.md)
            self.tally.dns["tcp_passed"] += 1
            return
        if not wire.answerable_link(linktype):
            self.tally.dns["link_not_answered"] += 1
            return
        client = ip_address(dgram.src)
        listen = (ip_address(dgram.dst), dgram.dport)
        response, outcome = self.authority.respond(dgram.payload(frame), client, listen)
        self.tally.dns["queries"] += 1
        if outcome.record is not None and outcome.chosen:
            r = outcome.record
            self.tally.answer(tuple(self.site_of_answer[(r.listen, r.domain, r.rdtype)][i] for i in outcome.chosen))
        if response is not None:
            out.append((wire.answer_frame(frame, linktype, dgram, response), ts + ANSWER_DELAY_NS, iface, linktype))


def replay(
    capture: str | Path,
    config: GslbConfig,
    output: str | Path | None = None,
    events: Sequence[Event] = (),
    seed: int | None = None,
    fmt: str | None = None,
) -> dict:
    """Every packet of `capture` through the GSLB and its sites; returns the summary (render/gslb.py)."""
    run = GslbReplay(config, seed)
    run.sites.check(events)
    ordered = sorted(events, key=lambda e: e.at_s)
    applied = 0
    started = time.perf_counter()
    start_ns: int | None = None
    with open_capture(capture) as reader:
        writer = open_writer(output, reader.interfaces, nanosecond=reader.nanosecond, fmt=fmt) if output else None
        try:
            for batch in reader.batches():
                answers: list[tuple] = []  # (after packet i, frame, ts, iface, linktype)
                i = 0
                while i < len(batch):
                    ts = batch.timestamp_ns(i)
                    if start_ns is None:
                        start_ns = ts
                    while applied < len(ordered) and start_ns + int(ordered[applied].at_s * NS) <= ts:
                        _apply(run, ordered[applied], start_ns + int(ordered[applied].at_s * NS))
                        applied += 1
                    made: list = []
                    after = run.packet(batch, i, made)
                    answers.extend((after - 1, *a) for a in made)
                    i = after
                if writer is not None:
                    _write(writer, batch, answers)
        finally:
            if writer is not None:
                writer.close()
        error = reader.error
        warnings = list(reader.warnings)
    warnings += [f"--event {e}: never applied, the capture ended first" for e in ordered[applied:]]
    return summary(
        run, capture, output, writer.packets_written if writer else 0, time.perf_counter() - started, error, warnings
    )


def _apply(run: GslbReplay, event: Event, moment_ns: int) -> None:
    found = run.sites.apply(event, moment_ns)
    site = run.sites.index(event.site) if event.site else -1
    run.tally.event(found, site, moment_ns, event.action == "site-down")


def _write(writer, batch: Batch, answers: list[tuple]) -> None:
    """The batch as it is, or with each answer right after its query (a copy of the batch, only then)."""
    if not answers:
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

    for i in range(len(batch)):
        ts, origlen, iface, linktype = batch.meta(i)
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
        stats = run.sites.switches[k].stats()
        sites.append(
            {
                "site": name,
                "queries_answered": run.tally.answered[k],
                "clients": len(run.tally.clients[k]),
                "connections": run.tally.connections[k],
                "connections_broken": run.tally.broken[k],
                "dropped_while_down": run.tally.dropped_down[k],
                "down_at_end": run.sites.down[k],
                "packets": stats["packets"],
                "dropped": stats["dropped"],
            }
        )
    return {
        "capture": str(capture),
        "output": str(output) if output else None,
        "seed": run.seed,
        "written": written,
        "dns": dict(sorted(run.authority.counters.items())) | dict(run.tally.dns),
        "records": [
            {"domain": r.domain, "type": r.rdtype, "listen": r.listen_text, "ttl": r.ttl, "policy": r.policy}
            for r in run.config.records
        ],
        "sites": sites,
        "events": events,
        "elapsed_s": round(elapsed, 6),
        "warnings": warnings,
        "error": str(error) if error else None,
    }
