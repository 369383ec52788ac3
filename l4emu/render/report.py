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


def compare_plot(result: dict, path) -> None:
    """Active connections per real over time: a row per scheduler, a column (panel) per service; each
    event a dotted line saying what happened, drawn where its real serves. Written under a temporary
    name and renamed, so a failed write leaves nothing. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise OptionError("--plot needs matplotlib: pip install 'l4emu[plot]'") from None
    runs = result["runs"]
    columns = len(runs[0]["services"])
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
        for col, svc in enumerate(run["services"]):
            _service_panel(axes[row, col], run["scheduler"], svc, _marks_for(result, svc))
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


def _marks_for(result: dict, svc: dict) -> list[dict]:
    """The events about one of this service's reals (older results carry times only: unlabelled)."""
    marks = result.get("event_marks") or [{"t": t, "real": None, "label": ""} for t in result["event_times_s"]]
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
