"""Render what-if comparisons and ipvsadm --stats views from plain data (never live internals)."""

from __future__ import annotations

import os

from l4emu.errors import OptionError
from l4emu.io.pcap.writer import write_atomic


def human(value: int, exact: bool) -> str:
    """ipvsadm's K/M/G suffixes (powers of 1000) unless --exact."""
    if exact:
        return str(value)
    for suffix, size in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if value >= size * 10:
            return f"{value // size}{suffix}"
    return str(value)


def per_real_table(snapshot: dict, columns: str, values, exact: bool = False) -> str:
    """ipvsadm's per-service/per-real number tables (--stats, --rate): `values(real)` gives a row;
    the service's row is the sum of its reals'."""
    lines = [f"Prot LocalAddress:Port          {columns}", "  -> RemoteAddress:Port"]
    for svc in snapshot["services"]:
        rows = [values(real) for real in svc["reals"]]
        totals = [sum(col) for col in zip(*rows, strict=True)] if rows else []
        lines.append(f"{svc['protocol']:<4} {svc['vip']:<28}" + "".join(f" {human(int(v), exact):>8}" for v in totals))
        for real, row in zip(svc["reals"], rows, strict=True):
            lines.append(f"  -> {real['address']:<28}" + "".join(f" {human(int(v), exact):>8}" for v in row))
    return "\n".join(lines)


STATS_KEYS = ("conns", "in_pkts", "out_pkts", "in_bytes", "out_bytes")


def stats_text(snapshot: dict, exact: bool = False) -> str:
    """`ipvsadm -L -n --stats`: Conns InPkts OutPkts InBytes OutBytes per service and real."""
    return per_real_table(
        snapshot, "     Conns   InPkts  OutPkts  InBytes OutBytes", lambda real: [real[k] for k in STATS_KEYS], exact
    )


def compare_text(result: dict) -> str:
    """One table per service: a row per scheduler; then what each event did under each scheduler."""
    lines = [
        f"capture {result['capture']} ({result['span_s']:g} s of packets), seed {result['seed']}"
        + (f", events: {', '.join(result['events'])}" if result["events"] else "")
    ]
    runs = result["runs"]
    for s_index, first in enumerate(runs[0]["services"]):
        lines += [
            "",
            f"{first['service']}: reals {'  '.join(first['reals'])}",
            f"  {'scheduler':<10} {'new conns per real':<24} {'peak active per real':<24} "
            f"{'imbalance':>9} {'overprov':>8}",
        ]
        for run in runs:
            svc = run["services"][s_index]
            lines.append(
                f"  {run['scheduler']:<10} {' '.join(map(str, svc['new_connections'])):<24} "
                f"{' '.join(map(str, svc['peak_active'])):<24} {svc['imbalance_mean']:>9.2f} "
                f"{svc['overprovisioning']:>8.2f}"
            )
    if result["events"]:
        lines += [
            "",
            f"  {'scheduler':<10} {'event':<32} {'conns on real':>13} {'moved':>6} {'broken':>6} {'black-holed':>11}",
        ]
        for run in runs:
            for effect in run["events"]:
                lines.append(
                    f"  {run['scheduler']:<10} {effect['event']:<32} {effect['connections_on_real']:>13} "
                    f"{effect['rescheduled']:>6} {effect['broken']:>6} {effect['blackholed']:>11}"
                )
    lines += [
        "",
        "imbalance: max/mean of active connections across a service's reals, averaged over time;",
        "overprov: its worst moment (the Maglev paper's over-provisioning factor).",
    ]
    return "\n".join(lines)


def simulate_text(result: dict) -> str:
    """The clients' experience per real and in total: requests, response times, queues, utilisation."""
    udp = result.get("protocol") == "udp"
    mixed = result.get("protocol") == "mixed"
    lost = "dropped" if udp else "refused"  # requests a real's full queue turned away: datagrams, or SYNs
    lines = [
        f"workload   {result['workload']}; scheduler {', '.join(result['schedulers'])}",
        f"simulated  {result['span_s']:g} s: {result['sessions']:,} sessions, {result['connections']:,} "
        f"{'sockets' if udp else 'connections'}, "
        f"{result['requests']:,} requests, {result['answered']:,} answered",
        "",
        f"  {'real':<24} {'requests':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'queue':>6} {'max q':>6} {'util':>6} {'turned' if mixed else lost:>8}",
    ]
    for r in result["reals"]:
        queue = (
            f"{r['queue_mean']:>6.2f} {r['queue_max']:>6} {r['utilisation']:>6.1%}"
            if "queue_mean" in r
            else (f"{'-':>6} {'-':>6} {'-':>6}")
        )
        lines.append(
            f"  {r['real']:<24} {r['requests']:>9,} {r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{r['max_ms']:>8.2f} {queue} {r.get('dropped', r.get('refused', 0)):>8,}"
        )
    for name, part in result.get("by_protocol", {}).items():
        lines.append(
            f"  {'all ' + name.upper():<24} {part['answered']:>9,} {part['p50_ms']:>8.2f} {part['p90_ms']:>8.2f} "
            f"{part['p99_ms']:>8.2f} {part['max_ms']:>8.2f}"
        )
    lines.append(
        f"  {'all':<24} {result['answered']:>9,} {result['p50_ms']:>8.2f} {result['p90_ms']:>8.2f} "
        f"{result['p99_ms']:>8.2f} {result['max_ms']:>8.2f}"
    )
    failed = {k: v for k, v in result["failures"].items() if v}
    lines += [
        "",
        "response time: from the request's first byte at the switch to the answer's last byte, plus the round trip;",
        "queue: requests waiting for a worker (time average, then the longest); util: busy workers' share.",
        *(["dropped: request datagrams that found the wait queue (backlog) full."] if udp else []),
        *(["turned: SYNs (TCP reals) or request datagrams (UDP reals) a full queue turned away."] if mixed else []),
        *[
            f"{name:<10} {part['sessions']:,} sessions, {part['requests']:,} requests, {part['answered']:,} answered"
            for name, part in result.get("by_protocol", {}).items()
        ],
        f"failures   {', '.join(f'{k} {v:,}' for k, v in failed.items()) or 'none'}"
        + (f"; {result['syn_retransmits']:,} SYNs sent again" if result["syn_retransmits"] else "")
        + (f"; {result['late_answers']:,} answer datagrams came too late" if result.get("late_answers") else ""),
        f"packets    {result['packets']['clients']:,} from clients, {result['packets']['answers']:,} from reals"
        + (f", written to {result['output']}" if result["output"] else ""),
        f"time       {result['cpu_s']:.3f} s of CPU",
    ]
    if result.get("health"):
        from l4emu.render.views import health_lines

        lines += ["", *health_lines(result["health"])]
    return "\n".join(lines)


def simulate_compare_text(results: list[dict]) -> str:
    """One row per scheduler: response time percentiles overall and per real, failures."""
    lines = [f"workload   {results[0]['workload']}", ""]
    reals = [r["real"] for r in results[0]["reals"]]
    lines.append(
        f"  {'scheduler':<10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}  "
        f"{'p99 ms per real (' + ', '.join(reals) + ')'}"
    )
    for result in results:
        per_real = " ".join(f"{r['p99_ms']:.2f}" for r in result["reals"])
        lines.append(
            f"  {result['schedulers'][0]:<10} {result['p50_ms']:>8.2f} {result['p90_ms']:>8.2f} "
            f"{result['p99_ms']:>8.2f} {result['max_ms']:>8.2f}  {per_real}"
        )
    lines += ["", f"  {'scheduler':<10} {'requests per real':<28} {'mean queue per real':<28} {'util per real'}"]
    for result in results:
        requests = " ".join(str(r["requests"]) for r in result["reals"])
        queues = " ".join(f"{r.get('queue_mean', 0):.2f}" for r in result["reals"])
        utilisation = " ".join(f"{r.get('utilisation', 0):.0%}" for r in result["reals"])
        lines.append(f"  {result['schedulers'][0]:<10} {requests:<28} {queues:<28} {utilisation}")
    return "\n".join(lines)


def simulate_plot(results: list[dict], path) -> None:
    """Left: the response-time CDF, a line per scheduler; right: each real's wait queue over time, a row
    per scheduler. Written atomically; needs matplotlib."""
    plt = _pyplot()
    rows = len(results)
    fig, axes = plt.subplots(rows, 2, figsize=(10, 2.6 * rows + 0.6), squeeze=False, layout="constrained")
    cdf = axes[0, 0]
    for result in results:
        steps = len(result["cdf_ms"])
        cdf.plot(result["cdf_ms"], [(k + 1) / steps for k in range(steps)], label=result["schedulers"][0])
    cdf.set_xlabel("response time (ms)")
    cdf.set_ylabel("share of requests")
    cdf.set_title("response time CDF", fontsize=9, loc="left")
    cdf.grid(alpha=0.3)
    cdf.legend(fontsize=7)
    for row in range(1, rows):
        axes[row, 0].axis("off")
    for row, result in enumerate(results):
        ax = axes[row, 1]
        times = [t for t, _, _ in result["queue_over_time"]]
        for i, real in enumerate(r["real"] for r in result["reals"]):
            ax.plot(times, [q[i] for _, q, _ in result["queue_over_time"]], label=real, linewidth=1.1)
        ax.set_title(f"{result['schedulers'][0]}: requests waiting per real", fontsize=9, loc="left")
        ax.set_ylabel("waiting", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[-1, 1].set_xlabel("seconds of packet time")
    _save_atomically(fig, path)
    plt.close(fig)


def _pyplot():
    """matplotlib's pyplot on the file-only backend, or a one-line error naming the extra to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise OptionError("--plot needs matplotlib: pip install 'l4emu[plot]'") from None
    return plt


def sweep_text(result: dict) -> str:
    """A line per grid point and service, in grid order; failed points say why."""
    lines = [f"sweep {result['spec']}: {len(result['rows'])} runs on {result['engine']}", ""]
    lines.append(
        f"{'#':>3} {'capture':<18} {'config':<14} {'scheduler':<10} {'events':<28} {'seed':>6} "
        f"{'service':<24} {'new conns per real':<20} {'imbalance':>9} {'overprov':>8} {'dropped':>8}"
    )
    for row in result["rows"]:
        point = row["point"]
        head = (
            f"{point['index']:>3} {_short(point['capture'], 18)} {_short(point['config'], 14)} "
            f"{point['scheduler']:<10} {','.join(point['events']) or '-':<28} {point['seed']:>6}"
        )
        if "error" in row:
            lines.append(f"{head} error: {row['error']}")
            continue
        for svc in row["run"]["services"]:
            lines.append(
                f"{head} {svc['service']:<24} {' '.join(map(str, svc['new_connections'])):<20} "
                f"{svc['imbalance_mean']:>9.2f} {svc['overprovisioning']:>8.2f} {_dropped(row['run']):>8}"
            )
    failed = sum("error" in row for row in result["rows"])
    lines += ["", f"{len(result['rows']) - failed} runs done, {failed} failed"]
    return "\n".join(lines)


def _dropped(run: dict) -> int:
    """Packets the switch dropped in a run, every reason together."""
    return sum(run["dropped"].values())


def _short(path: str, width: int) -> str:
    name = os.path.basename(path)
    return f"{name:<{width}}" if len(name) <= width else name[: width - 1] + "~"


SWEEP_CSV_COLUMNS = (
    "index",
    "capture",
    "config",
    "scheduler",
    "events",
    "seed",
    "service",
    "new_connections",
    "peak_active",
    "imbalance_mean",
    "overprovisioning",
    "dropped",
    "error",
)


def sweep_csv(result: dict) -> str:
    """One CSV row per grid point and service (a failed point: one row with its error)."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SWEEP_CSV_COLUMNS)
    for row in result["rows"]:
        p = row["point"]
        axes = [p["index"], p["capture"], p["config"], p["scheduler"], " ".join(p["events"]), p["seed"]]
        if "error" in row:
            writer.writerow(axes + [""] * 6 + [row["error"]])
            continue
        for svc in row["run"]["services"]:
            writer.writerow(
                axes
                + [
                    svc["service"],
                    " ".join(map(str, svc["new_connections"])),
                    " ".join(map(str, svc["peak_active"])),
                    svc["imbalance_mean"],
                    svc["overprovisioning"],
                    row["run"]["dropped"],
                    "",
                ]
            )
    return out.getvalue()


def sweep_plot(result: dict, path) -> None:
    """compare's plot with a row per grid point that ran, each titled by its place in the grid."""
    runs = [
        {**row["run"], "label": f"#{row['point']['index']} {row['label']}"} for row in result["rows"] if "run" in row
    ]
    if not runs:
        raise OptionError("--plot: no run of the sweep finished, nothing to draw")
    compare_plot({"runs": runs}, path)


def compare_plot(result: dict, path) -> None:
    """Active connections per real over time: a row per scheduler, a column (panel) per service; each
    event a dotted line saying what happened, drawn where its real serves. Written under a temporary
    name and renamed, so a failed write leaves nothing. Needs matplotlib."""
    plt = _pyplot()
    runs = result["runs"]
    columns = max(len(run["services"]) for run in runs)  # a sweep's configs may differ in their services
    # constrained layout makes room for the legends outside the panels, so they never cover a line
    fig, axes = plt.subplots(
        len(runs),
        columns,
        figsize=(4.6 * columns, 2.3 * len(runs) + 0.9),
        sharex=True,
        squeeze=False,
        layout="constrained",
    )
    for row, run in enumerate(runs):
        for col in range(len(run["services"]), columns):
            axes[row, col].axis("off")
        for col, svc in enumerate(run["services"]):
            _service_panel(axes[row, col], run.get("label", run["scheduler"]), svc, _marks_for(run, result, svc))
    for col in range(columns):
        axes[-1, col].set_xlabel("seconds after the first packet")
        handles, labels = axes[-1, col].get_legend_handles_labels()
        axes[-1, col].legend(
            handles,
            labels,
            fontsize=7,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.32),
            ncol=min(3, len(labels)) or 1,
            frameon=False,
        )
    _save_atomically(fig, path)
    plt.close(fig)


def _marks_for(run: dict, result: dict, svc: dict) -> list[dict]:
    """The events about one of this service's reals: the run's own (a sweep's runs differ in their
    events), else the comparison's (older results carry times only: unlabelled)."""
    marks = run.get("event_marks", result.get("event_marks")) or [
        {"t": t, "real": None, "label": ""} for t in result.get("event_times_s", ())
    ]
    return [m for m in marks if m["real"] is None or m["real"] in svc["reals"]]


def _service_panel(ax, scheduler: str, svc: dict, marks: list[dict]) -> None:
    """One scheduler's run for one service: a line per real, the events as labelled dotted lines."""
    times = [t for t, _ in svc["active_over_time"]]
    for i, real in enumerate(svc["reals"]):
        ax.plot(times, [a[i] for _, a in svc["active_over_time"]], label=real, linewidth=1.2)
    for k, mark in enumerate(marks):
        ax.axvline(mark["t"], color="black", linestyle=":", linewidth=1)
        # the label hangs from the top of the line; several events step down so they do not overprint
        ax.annotate(
            mark["label"],
            xy=(mark["t"], 1 - 0.12 * k),
            xycoords=("data", "axes fraction"),
            xytext=(3, -2),
            textcoords="offset points",
            fontsize=7,
            va="top",
            bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
        )
    ax.set_title(f"{scheduler}: {svc['service']}", fontsize=9, loc="left")
    ax.set_ylabel("active conns", fontsize=8)
    # headroom above the data for the event labels, so that they never hide a line
    peak = max([1] + [max(a, default=0) for _, a in svc["active_over_time"]])
    ax.set_ylim(bottom=0, top=peak / max(0.3, 0.9 - 0.12 * len(marks)))
    ax.yaxis.get_major_locator().set_params(integer=True)  # connections are whole numbers
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def _save_atomically(fig, path) -> None:
    """Save under "<path>.part" and rename: a full disk or a missing directory leaves no half image."""
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    write_atomic(path, lambda f: fig.savefig(f, format=fmt, dpi=110))
