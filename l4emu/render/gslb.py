"""Render a GSLB replay's summary and a switch-over model's curve as text (JSON: views.to_json)."""

from __future__ import annotations


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
    lines.append("  site         answered  clients  connections  broken  dropped-while-down")
    for site in summary["sites"]:
        mark = " (down)" if site["down_at_end"] else ""
        lines.append(
            f"  {site['site'] + mark:<12} {site['queries_answered']:>8,}  {site['clients']:>7,}  "
            f"{site['connections']:>11,}  {site['connections_broken']:>6,}  {site['dropped_while_down']:>18,}"
        )
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
