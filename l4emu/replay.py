"""Replay a capture through a Switch: read in batches, process, write; the summary users see."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from l4emu.datapath._batch import NS, Batch
from l4emu.datapath._datapath import PARSED_LINKTYPES
from l4emu.emulated_checks import NEVER
from l4emu.errors import OptionError
from l4emu.events import Event, EventError, EventLog
from l4emu.io import CaptureError, open_capture, open_writer, unknown_link_types
from l4emu.io.pcap.writer import output_format
from l4emu.switch import Switch

if TYPE_CHECKING:
    from l4emu.emulate import Emulator
    from l4emu.emulated_checks import EmulatedChecks


def replay(
    capture: str | Path,
    switch: Switch,
    output: str | Path | None = None,
    annotate: bool = False,
    progress: Callable[[int, int], None] | None = None,
    events: Sequence[Event] = (),
    sample_every_s: float | None = None,
    on_sample: Callable[[int], None] | None = None,
    inside: str | Path | None = None,
    at: Sequence[float] = (),
    on_at: Callable[[float, dict], None] | None = None,
    fmt: str | None = None,
    run_name: str | None = None,
) -> dict:
    """Run every packet of `capture` through `switch`; returns the summary (see summary_text).

    `events` change reals at their moment on the packet clock (seconds after the first packet);
    `on_sample(clock_ns)` is called every `sample_every_s` of packet time; `on_at(t, snapshot)`
    gets the switch's state at each time in `at` (seconds after the first packet: everything before
    that moment processed; a time past the last packet is taken at the end, the clock moved on to it).
    `inside` is what the reals see: packets sent to them after DNAT, their answers before SNAT.
    With emulated reals the replay goes packet by packet through emulate.Emulator: `output` is the
    clients' view of the whole conversation. A capture fault stops
    reading after everything good before it was processed and written; the summary then carries
    the fault under "error". `fmt` (pcap or pcapng) overrides the outputs' extensions. An event or
    --at time past the last packet is named under "warnings"; so are packets no connection owned,
    under `run_name` (default: the capture's name), as their number depends on the run's scheduler.
    """
    if annotate and (output is None or output_format(output, fmt) != "pcapng"):
        raise OptionError("--annotate writes packet comments, which need a .pcapng output (-o out.pcapng)")
    known = {real.endpoint for _, real in switch.reals}
    for event in events:
        event_needs_no_cluster(event)
        if event.endpoint not in known:
            raise EventError(f"--event {event}: no real server {event.endpoint} in the config")
    if any(t < 0 for t in at):
        raise OptionError("--at takes seconds after the first packet, from 0")
    started = time.perf_counter()
    written = 0
    writers = []
    with open_capture(capture) as reader:
        writer = open_writer(output, reader.interfaces, nanosecond=reader.nanosecond, fmt=fmt) if output else None
        writers.append(writer)
        comments = switch.comment_table() if annotate else None
        try:
            inner = open_writer(inside, reader.interfaces, nanosecond=reader.nanosecond, fmt=fmt) if inside else None
            writers.append(inner)
            emulator: Emulator | None = None
            checks: EmulatedChecks | None = None
            if switch.hosts is not None:
                from l4emu.emulate import BatchSink, Emulator  # emulated reals only (start-up: tests/test_startup.py)
                from l4emu.emulated_checks import EmulatedChecks

                emulator = Emulator(
                    switch,
                    writer and BatchSink.writer(writer, annotate, comments),
                    inner and BatchSink.writer(inner),
                )
                checks = EmulatedChecks(switch) or None  # [service.check] of emulated reals, on the packet clock
            clock = _Moments(
                events,
                sample_every_s,
                on_sample,
                switch,
                at,
                on_at,
                on_moment=emulator.advance if emulator is not None else None,
                checks=checks,
            )
            if emulator is None:
                _batches(reader, switch, clock, writer, inner, annotate, comments, progress)
            else:
                _packets(reader, emulator, clock, progress)
            clock.finish()
            if emulator is not None:  # what the hosts sent, up to the last --at moment
                emulator.flush()
        finally:
            for each in filter(None, writers):
                each.close()
            written = writer.packets_written if writer is not None else 0
        error = reader.error
    elapsed = time.perf_counter() - started
    summary = summarize(switch, capture, output, written, elapsed, error)
    summary["events"] = clock.event_effects()
    summary["warnings"] = [
        *reader.warnings,
        *unknown_link_types(capture, reader.interfaces, PARSED_LINKTYPES),
        *clock.past_the_end(),
    ]
    summary["warnings"] += outcome_warnings(summary, capture, run_name)
    summary["inside_written"] = writers[1].packets_written if writers[1] is not None else 0
    if emulator is not None:
        summary["emulated"] = {**emulated_summary(switch, writers[1]), **emulator_counts(emulator)}
    if checks is not None:
        summary["health"] = checks.summary()
    return summary


def event_needs_no_cluster(event: Event) -> None:
    """lb-down, lb-up and lb-add change a cluster's instances, site-down and site-up a GSLB's sites: one
    switch has neither."""
    if event.instance is not None or event.action.startswith("lb-"):
        raise EventError(
            f"--event {event}: a cluster event (lb-down, lb-up, lb-add, permute) needs a cluster: "
            "l4emu compare CAPTURE --cluster N"
        )
    if event.site:
        raise EventError(f"--event {event}: a site event needs a GSLB's sites: l4emu gslb replay CAPTURE -c GSLB.toml")


def _batches(reader, switch: Switch, clock: _Moments, writer, inner, annotate: bool, comments, progress) -> None:
    """The batch path: each batch through the switch (stopping at events and samples), then written;
    with `inner` (--inside), a copy taken before the rewrite becomes what the reals saw."""
    before = Batch(1) if inner is not None else None
    for batch in reader.batches():
        if before is not None:
            before.copy_from(batch)
        clock.run(batch)
        if writer is not None:
            writer.write(batch, include_dropped=annotate, comments=comments)
        if before is not None:
            switch.inside_view(before, batch)
            inner.write(before)
        if progress is not None:
            progress(reader.position, reader.size)


def _packets(reader, emulator: Emulator, clock: _Moments, progress) -> None:
    """Emulated reals: each batch through the emulate loop, packet by packet in C, stopping before a
    packet at or past the next moment so that moment is reached first (events, samples, --at)."""
    for batch in reader.batches():
        position = 0
        while position < len(batch):
            clock.reach_start(batch.timestamp_ns(position))
            moment = clock.next_moment()
            position = emulator.run(batch, position, moment)
            if position < len(batch):
                clock.arrive(moment)
        if progress is not None:
            progress(reader.position, reader.size)


def outcome_warnings(summary: dict, capture, run_name: str | None = None) -> list[str]:
    """What the counters say a user should hear: unattributed answers, a capture for no service."""
    warnings = []
    if summary["unattributed"]:
        warnings.append(unattributed_warning(run_name or capture, summary["unattributed"]))
    if summary["translated"] == 0 and summary["passed_by_reason"].get("no_service"):
        warnings.append(
            f"{capture}: no packet was for a service of the config: if the capture was "
            f"taken behind another load balancer, name its servers with --capture-servers"
        )
    return warnings


def unattributed_warning(where, unattributed: dict[str, int]) -> str:
    """One line, after `where` (the capture): which senders on the service side had packets no
    connection owned, and what to do."""
    named = ", ".join(f"{endpoint} {count:,}" for endpoint, count in unattributed.items())
    return (
        f"{where}: {sum(unattributed.values()):,} packets from the service side belong to no connection "
        f"and passed untouched ({named}): their connections began before the capture, were refused, or went "
        f"to another real; to take a capture's servers' packets as the service's answers, name them "
        f"with --capture-servers"
    )


def emulator_counts(emulator: Emulator) -> dict:
    """The emulate loop's own counts, for replay's and live mode's summaries alike."""
    counts: dict[str, object] = {
        "superseded": emulator.superseded,
        "answers": emulator.answers,  # those of masq and fullnat reals went through the switch too
    }
    if emulator.direct:  # ... those of dr and tun reals past it (named only then: masq summaries stay as they were)
        counts["direct"] = emulator.direct
    reassembly = emulator.host_reassembly()
    if reassembly["reasm_reqds"]:  # named only when a fragment reached a host, as direct
        counts["host_reassembly"] = reassembly
    if emulator.fragmented:
        counts["fragmented_undelivered"] = emulator.fragmented
    return counts


def emulated_summary(switch: Switch, inside_writer) -> dict:
    """Totals over the emulated hosts, for the summary line."""
    total: dict[str, int] = {}
    for host in switch.sockets():
        for name, value in host["counters"].items():
            total[name] = total.get(name, 0) + value
    return {
        "hosts": len(switch.sockets()),
        "inside_written": inside_writer.packets_written if inside_writer else 0,
        **{
            name: total.get(name, 0)
            for name in (
                "syns",
                "accepted",
                "listen_drops",
                "listen_overflows",
                "closed_port",
                "resets_sent",
                "segments_out",
                "datagrams_out",
            )
        },
    }


class _Moments:
    """Runs batches through the switch, stopping at each event and sample time on the packet clock."""

    def __init__(
        self,
        events,
        sample_every_s,
        on_sample,
        switch: Switch,
        at=(),
        on_at=None,
        on_moment: Callable[[int], None] | None = None,
        checks: EmulatedChecks | None = None,
    ):
        self.switch = switch
        self.events = sorted(events, key=lambda e: e.at_s)
        self.sample_ns = int(sample_every_s * NS) if sample_every_s else 0
        self.on_sample = on_sample
        self.start_ns: int | None = None
        self.next_sample_ns = 0
        self.log: list[EventLog] = []
        self.at = sorted(set(at)) if on_at is not None else []
        self.at_done = 0
        self.on_at: Callable[[float, dict], None] = on_at or (lambda t, snapshot: None)
        self.on_moment = on_moment  # emulated hosts' clocks follow the switch's
        self.end_ns: int | None = None  # the packet clock when the capture ran out (finish())
        self.superseded = self.answers = 0  # emulated hosts' counts, set by _emulated
        self.checks = checks  # emulated reals' health checks: their attempts are moments too

    def _next_moment(self) -> int:
        assert self.start_ns is not None, "the first packet sets the start"
        moments = [self.start_ns + int(e.at_s * NS) for e in self.events[len(self.log) : len(self.log) + 1]]
        if self.sample_ns:
            moments.append(self.next_sample_ns)
        if self.at_done < len(self.at):
            moments.append(self.start_ns + int(self.at[self.at_done] * NS))
        if self.checks is not None:
            due = self.checks.next_due() if self.checks.start_ns is not None else self.start_ns
            if due != NEVER:
                moments.append(due)
        return max(1, min(moments)) if moments else 0

    def reach_start(self, ts: int) -> None:
        """Packet-at-a-time callers: the first packet's time starts the clock."""
        if self.start_ns is None:
            self.start_ns = self.next_sample_ns = ts

    def next_moment(self) -> int:
        """The next moment to stop at (0: none): packets at or past it wait until it is reached."""
        return self._next_moment()

    def arrive(self, moment: int) -> None:
        self._arrive(moment)

    def finish(self) -> None:
        """After the last packet: the --at times still ahead, the clock moved on to each."""
        self.end_ns = self.switch.clock_ns if self.start_ns is not None else None
        while self.start_ns is not None and self.at_done < len(self.at):
            moment = self.start_ns + int(self.at[self.at_done] * NS)
            if self.on_moment is not None:
                self.on_moment(moment)
            self.switch.advance_clock(moment)
            self.on_at(self.at[self.at_done], self.switch.snapshot())
            self.at_done += 1

    def run(self, batch) -> None:
        if self.start_ns is None and len(batch):
            self.start_ns = batch.timestamp_ns(0)
            self.next_sample_ns = self.start_ns
        position = 0
        while position < len(batch):
            moment = self._next_moment()
            position = self.switch.process(batch, position, moment)
            if position < len(batch):
                self._arrive(moment)

    def _arrive(self, moment: int) -> None:
        """The packet clock reached `moment`: apply the events and take the samples and snapshots due."""
        assert self.start_ns is not None, "the first packet sets the start"
        if self.on_moment is not None:
            self.on_moment(moment)
        self.switch.advance_clock(moment)
        while len(self.log) < len(self.events) and self.start_ns + int(self.events[len(self.log)].at_s * NS) <= moment:
            event = self.events[len(self.log)]
            before = self.switch.stats()
            self.log.append(EventLog(event, moment, event.apply(self.switch), before))
            if self.checks is not None:
                self.checks.after_event(event.action, event.endpoint, event.weight)
        if self.checks is not None:
            self.checks.run_due(moment)
        if self.sample_ns and self.next_sample_ns <= moment:
            self.on_sample(moment)
            self.next_sample_ns = moment + self.sample_ns
        while self.at_done < len(self.at) and self.start_ns + int(self.at[self.at_done] * NS) <= moment:
            self.on_at(self.at[self.at_done], self.switch.snapshot())
            self.at_done += 1

    def past_the_end(self) -> list[str]:
        """Warnings for the moments the capture never reached: a user who asks for an event at 100 s
        of a 30 s capture would otherwise read a summary without it and not know why."""
        if self.start_ns is None:
            where = "the capture has no packets"
        else:
            assert self.end_ns is not None, "finish() ran"
            where = f"the capture's last packet is at {(self.end_ns - self.start_ns) / NS:.6g} s"
        warnings = [f"--event {event}: never applied, {where}" for event in self.events[len(self.log) :]]
        late = [t for t in self.at if self.start_ns is None or self.start_ns + int(t * NS) > (self.end_ns or 0)]
        warnings += [
            f"--at {t:g}: {where}; the state at {t:g} s has the clock moved on, with no packets since"
            if self.start_ns is not None
            else f"--at {t:g}: not written, {where}"
            for t in late
        ]
        return warnings

    def event_effects(self) -> list[dict]:
        """Each applied event with what followed it until the next one (or the end)."""
        after = [log.counters_before for log in self.log[1:]] + [self.switch.stats()]
        # Not strict: with no event applied there is no log, and one `after`.
        return [log.effects(later) for log, later in zip(self.log, after, strict=False)]


def summarize(switch: Switch, capture, output, written: int, elapsed: float, error: CaptureError | None) -> dict:
    stats = switch.stats()
    final = switch.connection_count()
    return {
        "capture": str(capture),
        "output": str(output) if output else None,
        "seed": switch.seed,
        "packets": stats["packets"],
        "written": written,
        "translated": stats["new"] + stats["forward"] + stats["reply"] + stats["answer"],
        "new": stats["new"],
        "forward": stats["forward"],
        "reply": stats["reply"],
        "answer": stats["answer"],
        "unattributed": stats["unattributed"],
        "passed": stats["passed"],
        "passed_by_reason": stats["passed_by_reason"],
        "dropped": stats["dropped"],
        "icmp": stats["icmp"],  # dropped packets the switch answered (time exceeded, fragmentation needed)
        **{
            name: stats[name]
            for name in ("fragments_made", "fragments_released", "fragments_held", "fragments_expired")
        },
        "new_connections": stats["new_connections"],
        "peak_connections": stats["peak_connections"],
        "final_connections": final,
        "max_connections": switch.config.max_connections,
        "expired": stats["expired"],
        "evicted": stats["evicted"],
        "reused": stats["reused"],
        "rescheduled": stats["rescheduled"],
        "broken": stats["broken"],
        "blackholed": stats["blackholed"],
        "elapsed_s": round(elapsed, 6),
        "packets_per_s": round(stats["packets"] / elapsed) if elapsed > 0 else 0,
        "error": str(error) if error else None,
    }
