"""A replay sampled at fixed steps of the packet clock: what the HTML report draws over time."""

from __future__ import annotations

from l4emu import config as configmod
from l4emu.compare import capture_span_s, event_mark
from l4emu.replay import replay
from l4emu.switch import Switch

SAMPLES = 200  # samples over the capture's span: enough for a smooth line, a small page


def reals_of(switch: Switch) -> list[dict]:
    """The reals a sample's per-real lists follow, in config order: service and endpoint."""
    return [{"service": f"{svc.protocol.upper()} {svc.endpoint}", "real": real.endpoint} for svc, real in switch.reals]


def take_sample(switch: Switch, start_ns: int, clock_ns: int) -> dict:
    """The cumulative counters and current levels at one moment (replay's timeline and live's ring alike).

    Its cost does not depend on how many flows the table holds: the per-real figures, drops, table
    occupancy and the connections per state are all counters the datapath keeps as packets go (the
    states as each flow moves from one to another), so a sample reads a few dozen numbers where a
    count of the table would walk every entry. Entries past their timeout stay counted in their last
    state until the timer wheel reaps them (within a second), as they stay in `table_used`."""
    stats = switch.stats()
    reals = switch.real_counters()
    return {
        "t": round((clock_ns - start_ns) / 1e9, 6),
        "conns": [r["conns"] for r in reals],
        "active": [r["active"] for r in reals],
        "inactive": [r["inactive"] for r in reals],
        "dropped": dict(stats["dropped"]),
        "table_used": switch.table_info()["used"],
        "states": {name: n for name, n in switch.state_counts().items() if n},
        "templates": sum(r["persistent"] for r in reals),
    }


def record(capture, config: configmod.Config, events=(), seed: int | None = None, samples: int = SAMPLES) -> dict:
    """Replay `capture` once, sampling the switch every span/`samples` seconds of packet time and once
    at the end; returns plain data: the summary, the samples, the final snapshot and the events."""
    switch = Switch(config, seed)
    span = capture_span_s(capture)
    taken: list[dict] = []
    start: list[int] = []

    def on_sample(clock_ns: int) -> None:
        start[:] = start or [clock_ns]
        taken.append(take_sample(switch, start[0], clock_ns))

    summary = replay(capture, switch, events=events, sample_every_s=max(span / samples, 1e-3), on_sample=on_sample)
    if start:  # the end of the capture, where the summary's totals are (expired entries reaped by now)
        taken.append(take_sample(switch, start[0], switch.clock_ns))
    snapshot = switch.snapshot()
    return {
        "capture": str(capture),
        "span_s": round(span, 6),
        "seed": summary["seed"],
        "reals": reals_of(switch),
        "state_names": list(switch.state_counts()),
        "capacity": switch.table_info()["capacity"],
        "samples": taken,
        "summary": summary,
        "event_marks": sorted([*map(event_mark, events), *health_marks(summary)], key=lambda m: m["t"]),
        "snapshot": snapshot,
    }


def health_marks(summary: dict) -> list[dict]:
    """Emulated reals' health-check transitions, marked as events are (seconds after the first packet)."""
    return [
        {"t": t["at_s"], "real": t["real"], "label": f"{t['real']} check {t['state']}"}
        for t in summary.get("health", {}).get("transitions", ())
    ]
