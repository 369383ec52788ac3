"""Render what-if comparisons and ipvsadm --stats views from plain data (never live internals)."""
from __future__ import annotations


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
        totals = [sum(col) for col in zip(*rows)] if rows else []
        lines.append(f"{svc['protocol']:<4} {svc['vip']:<28}" + "".join(f" {human(int(v), exact):>8}" for v in totals))
        for real, row in zip(svc["reals"], rows):
            lines.append(f"  -> {real['address']:<28}" + "".join(f" {human(int(v), exact):>8}" for v in row))
    return "\n".join(lines)


STATS_KEYS = ("conns", "in_pkts", "out_pkts", "in_bytes", "out_bytes")


def stats_text(snapshot: dict, exact: bool = False) -> str:
    """`ipvsadm -L -n --stats`: Conns InPkts OutPkts InBytes OutBytes per service and real."""
    return per_real_table(snapshot, "     Conns   InPkts  OutPkts  InBytes OutBytes",
                          lambda real: [real[k] for k in STATS_KEYS], exact)


def compare_text(result: dict) -> str:
    """One table per service: a row per scheduler; then what each event did under each scheduler."""
    lines = [f"capture {result['capture']} ({result['span_s']:g} s of packets)"
             + (f", events: {', '.join(result['events'])}" if result["events"] else "")]
    runs = result["runs"]
    for s_index, first in enumerate(runs[0]["services"]):
        lines += ["", f"{first['service']}: reals {'  '.join(first['reals'])}",
                  f"  {'scheduler':<10} {'new conns per real':<24} {'peak active per real':<24} "
                  f"{'imbalance':>9} {'overprov':>8} {'new flows/s':>12}"]
        for run in runs:
            svc = run["services"][s_index]
            lines.append(f"  {run['scheduler']:<10} {' '.join(map(str, svc['new_connections'])):<24} "
                         f"{' '.join(map(str, svc['peak_active'])):<24} {svc['imbalance_mean']:>9.2f} "
                         f"{svc['overprovisioning']:>8.2f} {run['new_flows_per_s']:>12,}")
    if result["events"]:
        lines += ["", f"  {'scheduler':<10} {'event':<32} {'conns on real':>13} {'moved':>6} {'broken':>6} "
                      f"{'black-holed':>11}"]
        for run in runs:
            for effect in run["events"]:
                lines.append(f"  {run['scheduler']:<10} {effect['event']:<32} {effect['connections_on_real']:>13} "
                             f"{effect['rescheduled']:>6} {effect['broken']:>6} {effect['blackholed']:>11}")
    lines += ["", "imbalance: max/mean of active connections across a service's reals, averaged over time;",
              "overprov: its worst moment (the Maglev paper's over-provisioning factor)."]
    return "\n".join(lines)


def compare_plot(result: dict, path) -> None:
    """Active connections per real over time, one panel per scheduler (needs matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'l4emu[plot]'") from None
    runs = result["runs"]
    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 2.4 * len(runs)), sharex=True, squeeze=False)
    for ax, run in zip(axes[:, 0], runs):
        for svc in run["services"]:
            times = [t for t, _ in svc["active_over_time"]]
            for i, real in enumerate(svc["reals"]):
                ax.plot(times, [a[i] for _, a in svc["active_over_time"]], label=real, linewidth=1.2)
        for at in result["event_times_s"]:
            ax.axvline(at, color="black", linestyle=":", linewidth=1)
        ax.set_title(f"{run['scheduler']}: active connections per real (dotted: events)", fontsize=10, loc="left")
        ax.set_ylabel("active")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right", ncol=2)
    axes[-1, 0].set_xlabel("seconds after the first packet")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
