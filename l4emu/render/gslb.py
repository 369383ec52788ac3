"""Render a GSLB replay's or simulate's summary and a switch-over model's curve as text (JSON: views.to_json)."""

from __future__ import annotations

TCP_SHOWN = ("dns_queries", "accepted", "segments_in", "segments_out", "superseded")


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.3f} s"


def gslb_text(summary: dict) -> str:
    """Per site what it answered, received and lost; the DNS outcomes; each event and how fast the failed
    site's clients moved, beside the TTL."""
    lines = [f"{summary['capture']}: GSLB replay, seed {summary['seed']}"]
    if summary["output"]:
        lines.append(f"  written: {summary['written']:,} packets to {summary['output']}")
    for record in summary["records"]:
        lines.append(
            f"  record: {record['type']} {record['domain']} at {record['listen']}, "
            f"ttl {record['ttl']} s, policy {record['policy']}"
        )
    dns = summary["dns"]
    outcomes = ", ".join(f"{name} {count:,}" for name, count in dns.items() if name != "queries" and count)
    lines.append(f"  DNS queries: {dns.get('queries', 0):,} ({outcomes or 'none'})")
    if "dns_tcp" in summary:
        tcp = summary["dns_tcp"]
        rest = ", ".join(f"{name} {count:,}" for name, count in tcp.items() if name not in TCP_SHOWN and count)
        lines.append(
            f"  DNS over TCP: {tcp.get('dns_queries', 0):,} queries, {tcp.get('accepted', 0):,} connections accepted, "
            f"{tcp.get('segments_in', 0):,} segments in, {tcp.get('segments_out', 0):,} out, "
            f"{tcp['superseded']:,} recorded server segments superseded ({rest or 'no other count'})"
        )
    res = summary["resolution"]
    lines.append(
        f"  resolution: {res['resolved']:,} resolved, p50 {res['p50_ms']:g} / p90 {res['p90_ms']:g} / "
        f"p99 {res['p99_ms']:g} ms (first query to an answer with an address), {res['unresolved']:,} unresolved"
    )
    lines.append("  site         answered  clients  connections  broken  dropped-while-down")
    for site in summary["sites"]:
        mark = " (down)" if site["down_at_end"] else ""
        lines.append(
            f"  {site['site'] + mark:<12} {site['queries_answered']:>8,}  {site['clients']:>7,}  "
            f"{site['connections']:>11,}  {site['connections_broken']:>6,}  {site['dropped_while_down']:>18,}"
        )
    for site in summary["sites"]:
        lines += _hosted(site)
    for event in summary["events"]:
        if "moved_within_s" in event:
            moved = ", ".join(f"{share} {_seconds(t)}" for share, t in event["moved_within_s"].items())
            lines.append(
                f"  event {event['event']}: {event['connections_broken']:,} connections broken; "
                f"{event['clients_moved']:,} of {event['clients_on_site']:,} clients moved "
                f"(ttl {event['ttl_s']} s): {moved}"
            )
        else:
            lines.append(
                f"  event {event['event']}: " + ", ".join(f"{k} {v}" for k, v in event.items() if k != "event")
            )
    return "\n".join(lines)


def simulate_text(summary: dict) -> str:
    """gslb simulate: how the sessions got their address, per site what it answered, served and lost, and
    each failure's switch-over (clients moved, sessions still sent to the failed site)."""
    record, dns, res = summary["record"], summary["dns"], summary["resolution"]
    outcomes = ", ".join(f"{name} {dns[name]:,}" for name in ("NOERROR", "REFUSED", "SERVFAIL") if dns.get(name))
    lines = [
        f"{summary['config']}: GSLB simulate, seed {summary['seed']}",
        f"  workload: {summary['workload']}",
        f"  record: {record['type']} {record['domain']} at {record['listen']}, ttl {record['ttl']} s, "
        f"policy {record['policy']}",
        f"  sessions: {summary['sessions']:,}: {dns['client_cache_hits']:,} from the client's cache, "
        f"{dns['resolver_cache_hits']:,} from its resolver's, {dns['queries']:,} after a query on the wire "
        f"({outcomes or 'none'}; {dns['unresolved']:,} got no address)",
        f"  resolution: {res['resolved']:,} queries, p50 {res['p50_ms']:g} / p90 {res['p90_ms']:g} / "
        f"p99 {res['p99_ms']:g} ms (query to answer; cache hits take none and are counted above)",
        "  site         answered  clients  sessions  p50 ms  p99 ms  failed  broken (held / refused)",
    ]
    for site in summary["sites"]:
        mark = " (down)" if site["down_at_end"] else ""
        lines.append(
            f"  {site['site'] + mark:<12} {site['queries_answered']:>8,}  {site['clients']:>7,}  "
            f"{site['sessions']:>8,}  {site['p50_ms']:>6g}  {site['p99_ms']:>6g}  "
            f"{sum(site['failures'].values()):>6,}  {site['connections_broken']:>6,} "
            f"({site['held_at_failure']:,} / {site['refused_while_down']:,})"
        )
    for event in summary["events"]:
        if "moved_within_s" not in event:
            lines.append(
                f"  event {event['event']}: " + ", ".join(f"{k} {v}" for k, v in event.items() if k != "event")
            )
            continue
        moved = ", ".join(f"{share} {_seconds(t)}" for share, t in event["moved_within_s"].items())
        lines.append(
            f"  event {event['event']}: {event['connections_broken']:,} connections held broken; "
            f"{event['clients_moved']:,} of {event['clients_on_site']:,} clients moved "
            f"(ttl {event['ttl_s']} s): {moved}"
        )
        stale = ", ".join(
            f"{p['share']:.1%} at {p['after_s']:g} s" for p in event["stale_sessions"] if p["share"] is not None
        )
        if stale:
            lines.append(f"    sessions of its clients still sent to {event['site']}: {stale}")
    if summary["output"]:
        lines.append(f"  written: {summary['written']:,} packets to {summary['output']}")
    return "\n".join(lines)


def _hosted(site: dict) -> list[str]:
    """A site with emulated reals: what its hosts answered, and its checks' transitions (which made the
    site unhealthy, or healthy again, for the GSLB's answers)."""
    if "emulated" not in site:
        return []
    hosts = site["emulated"]
    direct = f" ({hosts['direct']:,} straight to the clients)" if "direct" in hosts else ""
    lines = [
        f"  {site['site']}: {hosts['hosts']:,} emulated hosts, {hosts['accepted']:,} connections accepted, "
        f"{hosts['answers']:,} packets answered{direct}, {hosts['superseded']:,} recorded packets superseded"
    ]
    for change in site.get("health", {}).get("transitions", []):
        lines.append(f"    {change['at_s']:>9.3f} s  {change['real']} {change['state']}: {change['why']}")
    return lines


def switchover_text(result: dict) -> str:
    """The caching model's switch-over after a site failure: stale share at checkpoints, 50/90/99% times."""
    lines = [
        f"switch-over after a site failure: ttl {result['ttl_s']:g} s, {result['clients']:,} clients behind "
        f"{result['resolvers']:,} resolvers, seed {result['seed']}",
        f"  caches: {result['linger_share']:.0%} keep an answer ~{result['linger_s']:g} s past the TTL, "
        f"{result['stale_share']:.0%} keep it up to {result['stale_cap_s']:g} s",
        "  after the failure    requests still stale",
    ]
    for point in result["stale_requests"]:
        lines.append(f"  {point['after_s']:>10g} s        {point['share']:>8.1%}")
    moved = ", ".join(f"{share} {_seconds(t)}" for share, t in result["clients_moved_within_s"].items())
    lines.append(f"  clients moved: {moved}")
    return "\n".join(lines)


def compare_text(result: dict) -> str:
    """compare --gslb: a row per site and policy (answered, clients, connections, broken), then each site
    failure's switch-over per policy."""
    lines = [
        f"capture {result['capture']} ({result['span_s']:g} s of packets), seed {result['seed']}"
        + (f", events: {', '.join(result['events'])}" if result["events"] else ""),
        "",
        f"  {'site':<12} {'policy':<11} {'answered':>8} {'clients':>8} {'connections':>11} {'broken':>6} "
        f"{'dropped-while-down':>18}",
    ]
    for k, name in enumerate(result["sites"]):
        for run in result["runs"]:
            site = run["sites"][k]
            lines.append(
                f"  {name:<12} {run['policy']:<11} {site['queries_answered']:>8,} {site['clients']:>8,} "
                f"{site['connections']:>11,} {site['connections_broken']:>6,} {site['dropped_while_down']:>18,}"
            )
    failures = [(run["policy"], e) for run in result["runs"] for e in run["events"] if "moved_within_s" in e]
    if failures:
        lines += ["", f"  {'event':<22} {'policy':<11} {'clients moved':>13}  50% / 90% / 99% after it (ttl)"]
        for policy, event in failures:
            moved = " / ".join(_seconds(t) for t in event["moved_within_s"].values())
            lines.append(
                f"  {event['event']:<22} {policy:<11} {event['clients_moved']:>6,} of {event['clients_on_site']:<4,}  "
                f"{moved} (ttl {event['ttl_s']} s)"
            )
    lines += [
        "",
        "answered: queries whose answer named the site; clients and connections: what its switch received",
        "(in a replay, where the capture's clients connected: the policies differ in what they answered).",
    ]
    return "\n".join(lines)


def compare_plot(result: dict, path) -> None:
    """A panel per policy: connections each site received over time (solid) and the queries answered with
    it (dashed), each event a labelled dotted line. Written atomically; needs matplotlib."""
    from l4emu.render.report import _pyplot, _save_atomically

    plt = _pyplot()
    runs = result["runs"]
    fig, axes = plt.subplots(
        len(runs), 1, figsize=(7, 2.2 * len(runs) + 0.8), sharex=True, squeeze=False, layout="constrained"
    )
    for row, run in enumerate(runs):
        ax = axes[row, 0]
        times = [sample[0] for sample in run["over_time"]]
        for k, name in enumerate(result["sites"]):
            line = ax.plot(times, [s[1][k] for s in run["over_time"]], linewidth=1.4, label=f"{name} connections")
            ax.plot(
                times,
                [s[2][k] for s in run["over_time"]],
                linewidth=1,
                linestyle="--",
                color=line[0].get_color(),
                label=f"{name} answered",
            )
        for j, mark in enumerate(result["event_marks"]):
            ax.axvline(mark["t"], color="black", linestyle=":", linewidth=1)
            ax.annotate(
                mark["label"],
                xy=(mark["t"], 1 - 0.12 * j),
                xycoords=("data", "axes fraction"),
                xytext=(3, -2),
                textcoords="offset points",
                fontsize=7,
                va="top",
            )
        ax.set_title(f"policy {run['policy']}", fontsize=9, loc="left")
        ax.set_ylabel("so far", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("seconds after the first packet")
    axes[0, 0].legend(fontsize=7, ncol=2, loc="upper left")
    _save_atomically(fig, path)
    plt.close(fig)
