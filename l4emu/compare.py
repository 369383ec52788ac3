"""What-if: replay one capture once per scheduler and measure how each spreads the load."""

from __future__ import annotations

import dataclasses
import random

from l4emu import config as configmod
from l4emu.io import open_capture
from l4emu.replay import replay
from l4emu.switch import Switch

SAMPLES = 200  # active-connection samples over the capture's duration


def capture_bounds_ns(capture) -> tuple[int, int] | None:
    """The first and the last packet's time (a quick pass over the file); None when it has none."""
    first = last = None
    with open_capture(capture) as reader:
        for batch in reader.batches():
            if not len(batch):
                continue
            if first is None:
                first = batch.timestamp_ns(0)
            last = batch.timestamp_ns(len(batch) - 1)
    return None if first is None or last is None else (first, last)


def capture_span_s(capture) -> float:
    """Seconds from the first to the last packet."""
    bounds = capture_bounds_ns(capture)
    return 0.0 if bounds is None else max(0.0, (bounds[1] - bounds[0]) / 1e9)


def with_scheduler(config: configmod.Config, name: str) -> configmod.Config:
    """The same config with every service on scheduler `name` (and that scheduler's defaults)."""
    services = []
    for svc in config.services:
        services.append(dataclasses.replace(svc, scheduler=name, scheduler_flags=()))
    return dataclasses.replace(config, services=tuple(services))


def imbalance(active: list[int]) -> float:
    """max / mean of active connections over one service's reals (1.0 = perfectly even)."""
    mean = sum(active) / len(active) if active else 0
    return max(active) / mean if mean else 1.0


def run_one(capture, config, name: str, events, seed, span_s: float, shown_as: str | None = None) -> dict:
    """One replay with scheduler `name`; `shown_as` names the capture in warnings (a sweep's staged copy
    is read from a worker's temporary directory, but the user knows it by its own path)."""
    switch = Switch(with_scheduler(config, name), seed)
    samples: list[tuple[float, list[int]]] = []
    start: list[int] = []

    def on_sample(clock_ns: int) -> None:
        start[:] = start or [clock_ns]
        samples.append(((clock_ns - start[0]) / 1e9, [r["active"] for r in switch.real_counters()]))

    summary = replay(
        capture,
        switch,
        events=events,
        sample_every_s=max(span_s / SAMPLES, 1e-3),
        on_sample=on_sample,
        run_name=f"{shown_as or capture} with {name}",
    )
    per_real = switch.real_counters()
    services, k = [], 0
    for svc in config.services:
        n = len(svc.reals)
        series = [(t, active[k : k + n]) for t, active in samples]
        ratios = [imbalance(a) for _, a in series if sum(a)]
        services.append(
            {
                "service": f"{svc.protocol.upper()} {svc.endpoint}",
                "reals": [r.endpoint for r in svc.reals],
                "new_connections": [per_real[k + i]["conns"] for i in range(n)],
                "peak_active": [max((a[i] for _, a in series), default=0) for i in range(n)],
                "imbalance_mean": round(sum(ratios) / len(ratios), 3) if ratios else 1.0,
                "overprovisioning": round(max(ratios), 3) if ratios else 1.0,
                "active_over_time": [[round(t, 6), a] for t, a in series],
            }
        )
        k += n
    # No flows per second here: measured on the wall clock it was the emulator's speed, not the capture's.
    return {
        "scheduler": name,
        "services": services,
        "events": summary["events"],
        "dropped": summary["dropped"],
        "unattributed": summary["unattributed"],
        "warnings": summary["warnings"],
    }


def event_mark(event) -> dict:
    """What a plot writes beside an event's line: when, which real, what happened to it."""
    what = f"weight {event.weight}" if event.action == "weight" else event.action
    return {"t": event.at_s, "real": event.endpoint, "label": f"{event.endpoint} {what}"}


def compare(capture, config: configmod.Config, names: list[str], events=(), seed: int | None = None) -> dict:
    """One replay per scheduler, same capture, config, events and seed. Without a seed one is drawn,
    as replay draws its own, and returned under "seed" so that the comparison can be repeated."""
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 32)
    span = capture_span_s(capture)
    return {
        "capture": str(capture),
        "span_s": round(span, 6),
        "seed": seed,
        "events": [str(e) for e in events],
        "event_times_s": [e.at_s for e in events],
        "event_marks": [event_mark(e) for e in events],
        "runs": [run_one(capture, config, name, events, seed, span) for name in names],
    }
