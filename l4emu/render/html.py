"""The HTML report: one self-contained page (inline CSS, inline SVG) from plain data, viewable offline."""

from __future__ import annotations

import time
from collections import Counter
from html import escape

from l4emu.render.svg import X_LABEL, line_chart, stacked_chart

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px auto;max-width:960px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child{text-align:left}.note{color:#666}
svg.chart{width:100%;height:auto;display:block;margin:8px 0}
svg .title{font-size:13px;font-weight:600}svg .grid{stroke:#e5e5e5}
svg .xlab{font-size:10px;text-anchor:middle;fill:#555}svg .ylab{font-size:10px;text-anchor:end;fill:#555}
svg .legend{font-size:10px}svg .mark{stroke:#000;stroke-dasharray:2 3}svg .marklab{font-size:10px}
"""


def _table(head: list[str], rows: list[list[object]]) -> str:
    """An HTML table; every cell escaped."""
    out = ["<table><tr>", *(f"<th>{escape(str(h))}</th>" for h in head), "</tr>"]
    for row in rows:
        out += ["<tr>", *(f"<td>{escape(str(cell))}</td>" for cell in row), "</tr>"]
    out.append("</table>")
    return "".join(out)


def connection_states(snapshot: dict) -> dict[str, int]:
    """Connections per protocol and state ("TCP ESTABLISHED": n), from a snapshot's table."""
    counts = Counter(f"{row['protocol']} {row['state']}" for row in snapshot["connections"])
    return dict(sorted(counts.items()))


def _page(title: str, body: list[str]) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1>{''.join(body)}</body></html>\n"
    )


def _per_interval(cumulative: list[int], from_first: bool = False) -> list[int]:
    """Counts per sampling interval from a cumulative counter: the first interval starts at 0, or with
    `from_first` at the first sample (a live ring's oldest sample is not where counting began). A counter
    that went down was started again (a real removed and added back): the interval counts its new value."""
    before = [*(cumulative[:1] if from_first else [0]), *cumulative]
    return [now - then if now >= then else now for then, now in zip(before, cumulative, strict=False)]


def _state_series(timeline: dict) -> list[tuple[str, list[int]]]:
    """Connections per state over time, the states any sample saw, in the datapath's order (IPVS's)."""
    samples = timeline["samples"]
    seen = {name for s in samples for name in s.get("states", {})}
    order = [name for name in timeline.get("state_names", ()) if name in seen] + sorted(
        seen - set(timeline.get("state_names", ()))
    )
    return [(name, [s.get("states", {}).get(name, 0) for s in samples]) for name in order]


def _names(reals: list[dict]) -> list[str]:
    """A real's name in a legend: its endpoint, with its service when the config has several."""
    several = len({r["service"] for r in reals}) > 1
    return [f"{r['real']} ({r['service']})" if several else r["real"] for r in reals]


def _timeline_sections(timeline: dict) -> list[str]:
    """The charts over time (per real new and active connections, drops by reason, table occupancy,
    connections per state), the per-real totals, the states at the end and the events."""
    samples, reals = timeline["samples"], timeline["reals"]
    times = [s["t"] for s in samples]
    marks = [(m["t"], m["label"]) for m in timeline["event_marks"]]
    names = _names(reals)
    summary = timeline["summary"]
    from_first = "live" in timeline  # a live ring starts in the middle of the counters' life
    x_label = timeline.get("x_label", X_LABEL)
    new = [(names[i], _per_interval([s["conns"][i] for s in samples], from_first)) for i in range(len(reals))]
    active = [(names[i], [s["active"][i] for s in samples]) for i in range(len(reals))]
    reasons = sorted({reason for s in samples for reason in s["dropped"]})
    drops = [(reason, _per_interval([s["dropped"].get(reason, 0) for s in samples], from_first)) for reason in reasons]
    by_state = _state_series(timeline)
    states = connection_states(timeline["snapshot"])
    final = samples[-1] if samples else {"conns": [0] * len(reals), "active": [0] * len(reals)}
    body = [
        "<h2>Summary</h2>",
        _table(
            ["figure", "value"],
            [
                ["packets", summary["packets"]],
                ["translated", summary["translated"]],
                ["new connections", sum(summary["new_connections"].values())],
                ["peak connections in the table", summary["peak_connections"]],
                ["connections at the end", summary["final_connections"]],
                ["dropped", sum(summary["dropped"].values())],
                ["passed untouched", summary["passed"]],
            ],
        ),
        "<h2>Connections per real</h2>",
        _table(
            ["real", "service", "new connections", "active at the end", "peak active"],
            [
                [r["real"], r["service"], final["conns"][i], final["active"][i], max(active[i][1], default=0)]
                for i, r in enumerate(reals)
            ],
        ),
        line_chart("New connections per real, per interval", times, new, marks, "new conns", x_label),
        line_chart("Active connections per real", times, active, marks, "active conns", x_label),
        "<h2>Drops by reason</h2>",
        line_chart("Packets dropped per interval, by reason", times, drops, marks, "packets", x_label)
        if drops
        else '<p class="note">No packet was dropped.</p>',
        _table(["reason", "packets"], [[k, v] for k, v in sorted(summary["dropped"].items())]) if drops else "",
        "<h2>Connection table</h2>",
        line_chart(
            f"Entries in the table (capacity {timeline['capacity']:,})",
            times,
            [("entries", [s["table_used"] for s in samples])],
            marks,
            "entries",
            x_label,
        ),
        "<h2>Connection states over time</h2>",
        stacked_chart(
            "Connections per state (TCP as IPVS names its states; UDP entries as UDP), stacked",
            times,
            by_state,
            marks,
            "connections",
            x_label,
        )
        if by_state
        else '<p class="note">No connection was in the table at any sample.</p>',
        "<h2>Connection states at the end</h2>",
        _table(["protocol and state", "connections"], list(map(list, states.items())))
        if states
        else '<p class="note">The table is empty.</p>',
    ]
    if summary["events"]:
        body += [
            "<h2>Events</h2>",
            _table(
                ["event", "connections on the real", "moved", "broken", "black-holed"],
                [
                    [e["event"], e["connections_on_real"], e["rescheduled"], e["broken"], e["blackholed"]]
                    for e in summary["events"]
                ],
            ),
        ]
    elif marks:  # live: what changed the switch (control requests, reloads, health checks), when
        body += ["<h2>Events</h2>", _table(["seconds", "event"], [[f"{t:g}", label] for t, label in marks])]
    return body


def _compare_sections(result: dict) -> list[str]:
    """compare's table per service (a row per scheduler) and each scheduler's active connections."""
    body = ["<h2>Schedulers compared</h2>"]
    runs = result["runs"]
    for s_index, first in enumerate(runs[0]["services"]):
        body.append(f"<p>{escape(first['service'])}: reals {escape(', '.join(first['reals']))}</p>")
        body.append(
            _table(
                ["scheduler", "new conns per real", "peak active per real", "imbalance", "overprov", "dropped"],
                [
                    [
                        run["scheduler"],
                        " ".join(map(str, run["services"][s_index]["new_connections"])),
                        " ".join(map(str, run["services"][s_index]["peak_active"])),
                        f"{run['services'][s_index]['imbalance_mean']:.2f}",
                        f"{run['services'][s_index]['overprovisioning']:.2f}",
                        sum(run["dropped"].values()),
                    ]
                    for run in runs
                ],
            )
        )
        for run in runs:
            svc = run["services"][s_index]
            times = [t for t, _ in svc["active_over_time"]]
            series = [(real, [a[i] for _, a in svc["active_over_time"]]) for i, real in enumerate(svc["reals"])]
            mine = [(m["t"], m["label"]) for m in result.get("event_marks", ()) if m["real"] in svc["reals"]]
            body.append(line_chart(f"{run['scheduler']}: active connections, {svc['service']}", times, series, mine))
    body.append(
        '<p class="note">imbalance: max/mean of active connections across a service\'s reals, averaged over '
        "time; overprov: its worst moment (the Maglev paper's over-provisioning factor).</p>"
    )
    return body


def report_html(timeline: dict, comparison: dict | None = None, config_name: str = "the embedded config") -> str:
    """The report of one replay (timeline.record's data), with compare's result when given."""
    head = (
        f'<p class="note">capture {escape(timeline["capture"])} ({timeline["span_s"]:g} s of packets), '
        f"config {escape(config_name)}, seed {timeline['seed']}; samples every "
        f"{timeline['span_s'] / max(1, len(timeline['samples']) - 1):.3g} s of packet time.</p>"
    )
    body = [head, *_timeline_sections(timeline)]
    if comparison is not None:
        body += _compare_sections(comparison)
    return _page(f"l4emu report: {timeline['capture']}", body)


def live_html(timeline: dict) -> str:
    """The report of a running live switch: its ring of samples (l4emu/live/history.py) up to the moment
    it answered, drawn as a replay's, with the control requests, reloads and health changes marked."""
    live = timeline["live"]
    oldest = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(live["oldest_sample_unix_s"]))
    head = (
        f'<p class="note">{escape(timeline["capture"])}, config {escape(live["config"])}: '
        f"{len(timeline['samples'])} samples, one every {live['interval_s']:g} s from {oldest} (the switch keeps "
        f"the last {live['max_samples']:,}), the last one taken when it answered; counts since it started.</p>"
    )
    return _page(f"l4emu report: {timeline['capture']}", [head, *_timeline_sections(timeline)])


def state_html(snapshot: dict, source: str) -> str:
    """The report of a state file: one snapshot (tables and counters), so no time series."""
    stats = snapshot["stats"]
    states = connection_states(snapshot)
    body = [
        f'<p class="note">From the state file {escape(source)}: a single snapshot at packet clock '
        f"{snapshot['clock_ns'] / 1e9:.6f} s, with its tables and counters. It holds no time series: "
        "for charts over time, run <code>l4emu report CAPTURE</code>.</p>",
        "<h2>Services and reals</h2>",
        _table(
            ["service", "scheduler", "real", "weight", "active", "inactive", "conns", "in packets", "out packets"],
            [
                [
                    f"{svc['protocol']} {svc['vip']}",
                    svc["scheduler"],
                    real["address"],
                    real["weight"],
                    real["active"],
                    real["inactive"],
                    real["conns"],
                    real["in_pkts"],
                    real["out_pkts"],
                ]
                for svc in snapshot["services"]
                for real in svc["reals"]
            ],
        ),
        "<h2>Drops by reason</h2>",
        _table(["reason", "packets"], [[k, v] for k, v in sorted(stats["dropped"].items())])
        if stats["dropped"]
        else '<p class="note">No packet was dropped.</p>',
        "<h2>Connection states</h2>",
        _table(["protocol and state", "connections"], list(map(list, states.items())))
        if states
        else '<p class="note">The table is empty.</p>',
        "<h2>Counters</h2>",
        _table(["counter", "value"], [[k, v] for k, v in stats.items() if isinstance(v, int)]),
    ]
    return _page(f"l4emu report: {source}", body)
