"""Replay a capture through a Switch: read in batches, process, write; the summary users see."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from l4emu.events import NS, Event, EventError, EventLog
from l4emu.io import CaptureError, open_capture, open_writer
from l4emu.switch import Switch


def replay(capture: str | Path, switch: Switch, output: str | Path | None = None, annotate: bool = False,
           progress: Callable[[int, int], None] | None = None, events: Sequence[Event] = (),
           sample_every_s: float | None = None, on_sample: Callable[[int], None] | None = None) -> dict:
    """Run every packet of `capture` through `switch`; returns the summary (see summary_text).

    `events` change reals at their moment on the packet clock (seconds after the first packet);
    `on_sample(clock_ns)` is called every `sample_every_s` of packet time. A capture fault stops
    reading after everything good before it was processed and written; the summary then carries
    the fault under "error".
    """
    if annotate and (output is None or Path(output).suffix != ".pcapng"):
        raise ValueError("--annotate writes packet comments, which need a .pcapng output (-o out.pcapng)")
    known = {real.endpoint for _, real in switch.reals}
    for event in events:
        if event.endpoint not in known:
            raise EventError(f"--event {event}: no real server {event.endpoint} in the config")
    started = time.perf_counter()
    written = 0
    with open_capture(capture) as reader:
        writer = open_writer(output, reader.interfaces, nanosecond=reader.nanosecond) if output else None
        comments = switch.comment_table() if annotate else None
        clock = _Moments(events, sample_every_s, on_sample, switch)
        try:
            for batch in reader.batches():
                clock.run(batch)
                if writer is not None:
                    writer.write(batch, include_dropped=annotate, comments=comments)
                if progress is not None:
                    progress(reader.position, reader.size)
        finally:
            if writer is not None:
                writer.close()
                written = writer.packets_written
        error = reader.error
    elapsed = time.perf_counter() - started
    summary = summarize(switch, capture, output, written, elapsed, error)
    summary["events"] = clock.event_effects()
    return summary


class _Moments:
    """Runs batches through the switch, stopping at each event and sample time on the packet clock."""

    def __init__(self, events, sample_every_s, on_sample, switch: Switch):
        self.switch = switch
        self.events = sorted(events, key=lambda e: e.at_s)
        self.sample_ns = int(sample_every_s * NS) if sample_every_s else 0
        self.on_sample = on_sample
        self.start_ns: int | None = None
        self.next_sample_ns = 0
        self.log: list[EventLog] = []

    def _next_moment(self) -> int:
        moments = [self.start_ns + int(e.at_s * NS) for e in self.events[len(self.log):len(self.log) + 1]]
        if self.sample_ns:
            moments.append(self.next_sample_ns)
        return max(1, min(moments)) if moments else 0

    def run(self, batch) -> None:
        if self.start_ns is None and len(batch):
            self.start_ns = batch.timestamp_ns(0)
            self.next_sample_ns = self.start_ns
        position = 0
        while position < len(batch):
            moment = self._next_moment()
            position = self.switch.datapath.process(batch, position, moment)
            if position < len(batch):
                self._arrive(moment)

    def _arrive(self, moment: int) -> None:
        """The packet clock reached `moment`: apply the events and take the samples due."""
        self.switch.datapath.advance_clock(moment)
        while len(self.log) < len(self.events) and self.start_ns + int(self.events[len(self.log)].at_s * NS) <= moment:
            event = self.events[len(self.log)]
            before = self.switch.stats()
            self.log.append(EventLog(event, moment, event.apply(self.switch), before))
        if self.sample_ns and self.next_sample_ns <= moment:
            self.on_sample(moment)
            self.next_sample_ns = moment + self.sample_ns

    def event_effects(self) -> list[dict]:
        """Each applied event with what followed it until the next one (or the end)."""
        after = [log.counters_before for log in self.log[1:]] + [self.switch.stats()]
        return [log.effects(later) for log, later in zip(self.log, after)]


def summarize(switch: Switch, capture, output, written: int, elapsed: float, error: CaptureError | None) -> dict:
    stats = switch.stats()
    final = switch.connection_count()
    return {
        "capture": str(capture), "output": str(output) if output else None, "seed": switch.seed,
        "packets": stats["packets"], "written": written,
        "translated": stats["new"] + stats["forward"] + stats["reply"],
        "new": stats["new"], "forward": stats["forward"], "reply": stats["reply"],
        "passed": stats["passed"], "passed_by_reason": stats["passed_by_reason"],
        "dropped": stats["dropped"],
        "new_connections": stats["new_connections"],
        "peak_connections": stats["peak_connections"], "final_connections": final,
        "max_connections": switch.config.max_connections,
        "expired": stats["expired"], "evicted": stats["evicted"], "reused": stats["reused"],
        "rescheduled": stats["rescheduled"], "broken": stats["broken"], "blackholed": stats["blackholed"],
        "elapsed_s": round(elapsed, 6),
        "packets_per_s": round(stats["packets"] / elapsed) if elapsed > 0 else 0,
        "error": str(error) if error else None,
    }
