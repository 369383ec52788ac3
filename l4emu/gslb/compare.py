"""compare --gslb: one capture through the GSLB and its sites once per policy, the per-site reports side
by side, with the connections each site received and the queries answered with it over time (a plot).

Every run has the same capture, sites, events and seed; only the records' policy differs. The capture's
clients connect where they did when it was taken, so across policies the connections a site received
stay the same: what differs is what the GSLB answered (and, with least_conn, which load it saw).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path

from l4emu.compare import capture_bounds_ns
from l4emu.datapath._batch import NS
from l4emu.events import Event
from l4emu.gslb.config import POLICY_ALIASES, GslbConfig
from l4emu.gslb.replay import replay
from l4emu.gslb.tally import CONNECTED

SAMPLES = 200  # points per series over the capture's duration, as compare draws per scheduler


def policy_name(name: str) -> str:
    """A policy as the config spells it: its own name, or the alias production GSLBs use for it."""
    return POLICY_ALIASES.get(name, name)


def with_policy(config: GslbConfig, policy: str) -> GslbConfig:
    """The same config with every record on `policy`: wrr with the record's weights (1 each if it had
    none), failover with its groups (the vips' order, one site a group, if it had none)."""
    records = []
    for record in config.records:
        names = [answer.site for answer in record.answers]
        weights = record.weights if policy == "wrr" and record.weights else ()
        groups = record.groups if policy == "failover" and record.groups else ()
        if policy == "wrr" and not weights:
            weights = (1,) * len(names)
        if policy == "failover" and not groups:
            groups = tuple((name,) for name in names)
        records.append(dataclasses.replace(record, policy=policy, weights=weights, groups=groups))
    return dataclasses.replace(config, records=tuple(records))


def series(timeline: list[tuple[int, int, int]], sites: int, start_ns: int, span_s: float) -> list[list]:
    """[t, connections received so far per site, queries answered so far per site] at SAMPLES + 1 evenly
    spaced moments from the first packet to the last, in one walk over the timeline (in packet order)."""
    connected, answered = [0] * sites, [0] * sites
    out, n = [], 0
    for j in range(SAMPLES + 1):
        t = span_s * j / SAMPLES
        moment = start_ns + round(t * NS)
        while n < len(timeline) and timeline[n][0] <= moment:
            _, kind, k = timeline[n]
            (connected if kind == CONNECTED else answered)[k] += 1
            n += 1
        out.append([round(t, 6), list(connected), list(answered)])
    return out


def run_one(capture: str | Path, config: GslbConfig, policy: str, events: Sequence[Event], seed: int, bounds) -> dict:
    """One replay with every record on `policy`: its summary and its series."""
    timeline: list[tuple[int, int, int]] = []
    summary = replay(capture, with_policy(config, policy), events=events, seed=seed, timeline=timeline)
    start_ns, last_ns = bounds or (0, 0)
    over_time = series(timeline, len(config.sites), start_ns, (last_ns - start_ns) / NS)
    # No elapsed time: measured on the wall clock it is the emulator's speed, and a repeated comparison
    # gives the same bytes.
    kept = ("dns", "records", "sites", "resolution", "events", "warnings", "error")
    return {"policy": policy, **{key: summary[key] for key in kept}, "over_time": over_time}


def compare(
    capture: str | Path,
    config: GslbConfig,
    policies: Sequence[str],
    events: Sequence[Event] = (),
    seed: int | None = None,
) -> dict:
    """One GSLB replay per policy, same capture, config, events and seed (drawn and returned when not given,
    so that the comparison can be repeated)."""
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 32)
    bounds = capture_bounds_ns(capture)
    span = (bounds[1] - bounds[0]) / NS if bounds else 0.0
    return {
        "capture": str(capture),
        "span_s": round(span, 6),
        "seed": seed,
        "sites": [site.name for site in config.sites],
        "events": [str(e) for e in events],
        "event_marks": [{"t": e.at_s, "label": str(e)} for e in events],
        "runs": [run_one(capture, config, policy_name(name), events, seed, bounds) for name in policies],
    }
