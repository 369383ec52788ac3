"""Render a cluster comparison (l4emu.cluster.run.compare): the designs side by side, as text or a plot."""

from __future__ import annotations

from l4emu.errors import OptionError
from l4emu.render.report import _save_atomically


def _pct(share: float) -> str:
    return f"{100 * share:.2f}%"


def cluster_text(result: dict) -> str:
    """A row per design (totals), then each event's effects per design, memory and load, and a legend."""
    lines = [
        f"capture {result['capture']}: {result['instances']} instances, ecmp {result['ecmp']}, seed {result['seed']}"
        + (f", events: {', '.join(result['events'])}" if result["events"] else "")
    ]
    lines += [
        "",
        f"  {'design':<25} {'conns':>7} {'moved':>6} {'broken':>7} {'(real down)':>11} {'black-holed':>11} "
        f"{'redirected':>10} {'share':>7}",
    ]
    for run in result["runs"]:
        t = run["totals"]
        lines.append(
            f"  {run['design']:<25} {t['connections']:>7} {t['moved']:>6} {t['broken']:>7} {t['broken_real_down']:>11} "
            f"{t['blackholed']:>11} {t['redirected_packets']:>10} {_pct(t['redirected_share']):>7}"
        )
    if result["events"]:
        lines += [
            "",
            f"  {'design':<25} {'event':<24} {'alive':>6} {'on it':>6} {'moved':>6} {'broken':>7} "
            f"{'black-holed':>11} {'redirected':>10}",
        ]
        for run in result["runs"]:
            for e in run["events"]:
                lines.append(
                    f"  {run['design']:<25} {e['event']:<24} {e['alive']:>6} {e['on_target']:>6} {e['moved']:>6} "
                    f"{e['broken']:>7} {e['blackholed']:>11} {e['redirected_packets']:>10}"
                )
    lines += [
        "",
        f"  {'design':<25} {'table entries per instance':<30} {'bytes per instance':<30} {'reals max/mean cv':<18} "
        f"{'instances max/mean cv'}",
    ]
    for run in result["runs"]:
        entries = " ".join(str(m["entries"]) for m in run["memory"])
        size = " ".join(str(m["bytes"]) for m in run["memory"])
        busiest = max(run["load"]["reals"], key=lambda s: sum(s["connections_per_real"]))
        inst = run["load"]["instances"]
        lines.append(
            f"  {run['design']:<25} {entries:<30} {size:<30} {busiest['max_mean']:>8.2f} {busiest['cv']:>5.2f}    "
            f"{inst['max_mean']:>8.2f} {inst['cv']:>5.2f}"
        )
        if run["global_table"]:
            lines.append(
                f"  {'':<25} + global table: {run['global_table']['entries']} entries, "
                f"{run['global_table']['bytes']} bytes"
            )
    cheetah = next((run for run in result["runs"] if run["design"] == "cheetah"), None)
    if cheetah is not None:
        t = cheetah["totals"]
        lines += [
            "",
            f"cheetah: {t['syns_with_timestamp']} of {t['syns']} SYNs carry a TCP timestamp "
            f"({_pct(t['syns_with_timestamp_share'])}); the rest fall back to maglev",
        ]
    lines += [
        "",
        "moved: connections ECMP sent to another instance; broken: connections whose packets reached two reals",
        "(PCC violations; '(real down)': of those, the ones whose real had gone down); black-holed: connections",
        "with a packet sent to a down real or dropped; redirected: packets a real handed on (second chance, daisy",
        "chain), and their share of the packets toward the VIPs; alive, on it: connections alive at the event, and",
        "on its real or instance. Loads: connections per real of the busiest service, packets per instance.",
    ]
    return "\n".join(lines)


def cluster_plot(result: dict, path) -> None:
    """Two panels: alive connections over time per design (events as dotted lines), and what each design
    broke, black-holed and redirected. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise OptionError("--plot needs matplotlib: pip install 'l4emu[plot]'") from None
    runs = result["runs"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), layout="constrained")
    for run in runs:
        series = run["alive_over_time"]
        top.plot(
            [t for t, _, _ in series], [sum(per_real) for _, per_real, _ in series], label=run["design"], linewidth=1.2
        )
    for text in result["events"]:
        at = float(text.split(":", 1)[0])
        top.axvline(at, color="black", linestyle=":", linewidth=1)
        top.annotate(text, xy=(at, 0.98), xycoords=("data", "axes fraction"), fontsize=7, va="top", rotation=90)
    top.set_xlabel("seconds after the first packet")
    top.set_ylabel("alive connections")
    top.set_title(
        f"{result['capture']}: {result['instances']} instances, ecmp {result['ecmp']}", fontsize=9, loc="left"
    )
    top.legend(fontsize=7, ncol=3)
    top.grid(alpha=0.3)
    names = [run["design"] for run in runs]
    width = 0.27
    for k, (key, label) in enumerate(
        (("broken", "broken"), ("blackholed", "black-holed"), ("redirected_connections", "redirected"))
    ):
        bottom.bar(
            [i + (k - 1) * width for i in range(len(runs))], [run["totals"][key] for run in runs], width, label=label
        )
    bottom.set_xticks(range(len(runs)), names, rotation=20, fontsize=7)
    bottom.set_ylabel("connections")
    bottom.legend(fontsize=7)
    bottom.grid(alpha=0.3, axis="y")
    _save_atomically(fig, path)
    plt.close(fig)
