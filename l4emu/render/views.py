"""Render snapshots the way users already read them: `ipvsadm -L -n -c`, `ipvsadm -L -n`, summaries."""

from __future__ import annotations


def _expire(seconds: float) -> str:
    """ipvsadm's mm:ss (minutes keep counting past 59, as ipvsadm prints them)."""
    whole = max(0, int(seconds))
    return f"{whole // 60:02d}:{whole % 60:02d}"


def conntrack_text(snapshot: dict) -> str:
    """`ipvsadm -L -n -c`: pro expire state source virtual destination. With emulated reals, one more
    column, `handle`: blank for a real that is not emulated, or a connection the host's application no
    longer holds (closed, or still waiting to be accepted)."""
    rows = snapshot["connections"]
    with_handles = bool(snapshot.get("sockets"))
    with_forward = any(row.get("forward", "Masq") != "Masq" for row in rows)
    if with_forward:  # a method other than NAT: one more column, the method as ipvsadm -L -n names it
        return _conntrack_with_forward(rows, with_handles)
    width = max([18] + [len(row["destination"]) for row in rows]) if with_handles else 0
    head = "pro expire state       source             virtual            "
    lines = ["IPVS connection entries", head + (f"{'destination':<{width}} handle" if with_handles else "destination")]
    for row in rows:
        cells = "%-3s %-6s %-11s %-18s %-18s " % (
            row["protocol"],
            _expire(row["expires_in_s"]),
            row["state"],
            row["source"],
            row["virtual"],
        )
        if with_handles:
            handle = row.get("handle")
            lines.append(f"{cells}{row['destination']:<{width}} {'' if handle is None else handle}".rstrip())
        else:
            lines.append(cells + row["destination"])
    return "\n".join(lines)


def _conntrack_with_forward(rows: list[dict], with_handles: bool) -> str:
    """`ipvsadm -L -n -c` with a Forward column (Masq, Route, Tunnel) after the destination, and the
    handle column last when there are emulated reals."""
    width = max([18] + [len(row["destination"]) for row in rows])
    head = "pro expire state       source             virtual            "
    head += f"{'destination':<{width}} Forward" + (" handle" if with_handles else "")
    lines = ["IPVS connection entries", head]
    for row in rows:
        cells = "%-3s %-6s %-11s %-18s %-18s %-*s %-7s" % (
            row["protocol"],
            _expire(row["expires_in_s"]),
            row["state"],
            row["source"],
            row["virtual"],
            width,
            row["destination"],
            row.get("forward", "Masq"),
        )
        handle = row.get("handle") if with_handles else None
        lines.append(f"{cells} {'' if handle is None else handle}".rstrip())
    return "\n".join(lines)


def sockets_text(hosts: list[dict]) -> str:
    """`ss -tuan`: Netid State Recv-Q Send-Q Local Address:Port Peer Address:Port, then the handle.
    A listener's Recv-Q is its accept queue and Send-Q its backlog, as ss shows them."""
    rows = [row for host in hosts for row in host["sockets"]]
    local = max([20] + [len(r["local"]) for r in rows])
    peer = max([20] + [len(r["peer"]) for r in rows])
    lines = [f"Netid State      Recv-Q Send-Q {'Local Address:Port':<{local}} {'Peer Address:Port':<{peer}} Handle"]
    for r in rows:
        handle = "" if r["handle"] is None else str(r["handle"])
        lines.append(
            f"{r['netid']:<5} {r['state']:<10} {r['recv_q']:<6} {r['send_q']:<6} {r['local']:<{local}} "
            f"{r['peer']:<{peer}} {handle}".rstrip()
        )
    return "\n".join(lines)


def services_text(snapshot: dict, size: int) -> str:
    """`ipvsadm -L -n`: services and their reals with Forward, Weight, ActiveConn, InActConn. When a real
    takes no new flows for a reason the weight does not show (marked down, or over its upper threshold),
    a State column says so (`down`, `overloaded`); ipvsadm has none, since IPVS removes a failed real."""
    states = {id(real): _real_state(real) for svc in snapshot["services"] for real in svc["reals"]}
    tail = " State" if any(states.values()) else ""
    lines = [
        f"IP Virtual Server version 1.2.1 (size={size})",
        "Prot LocalAddress:Port Scheduler Flags",
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn" + tail,
    ]
    for svc in snapshot["services"]:
        lines.append(f"{svc['protocol']:<4} {svc['vip']} {svc['scheduler']}{_service_flags(svc)}")
        for real in svc["reals"]:
            line = "  -> %-28s %-7s %-6d %-10u %-10u" % (
                real["address"],
                real["forward"],
                real["weight"],
                real["active"],
                real["inactive"],
            )
            lines.append(line + states[id(real)] if tail else line)
    return "\n".join(lines)


def _real_state(real: dict) -> str:
    return "down" if real.get("down") else "overloaded" if real.get("overloaded") else ""


def _service_flags(svc: dict) -> str:
    """ipvsadm's tail of a service line: ` (flag-1,flag-2) persistent 300 mask 255.255.255.0`."""
    text = f" ({','.join(svc['flags'])})" if svc.get("flags") else ""
    if svc.get("persistence"):
        text += f" persistent {svc['persistence']:g}"
        bits = 32 if svc.get("family", 4) == 4 else 128
        prefix = svc.get("persistence_netmask", bits)
        if prefix != bits:
            mask = (
                ".".join(str(((0xFFFFFFFF << (32 - prefix)) >> s) & 0xFF) for s in (24, 16, 8, 0))
                if bits == 32
                else str(prefix)
            )
            text += f" mask {mask}"
    return text


def summary_text(summary: dict) -> str:
    """The replay summary for people: what went in, what came out, where flows went, how fast."""
    dropped = summary["dropped"]
    emulated = summary.get("emulated") or {}
    answers = emulated.get("answers", 0)
    through = answers - emulated.get("direct", 0)  # dr and tun reals answer past the switch
    lines = [
        f"capture      {summary['capture']}" + (f" -> {summary['output']}" if summary["output"] else ""),
        f"packets      {summary['packets'] - through:,} read"
        + (
            f" (+{answers:,} answers from emulated reals"
            + (f", {emulated['direct']:,} of them past the switch: dr, tun" if emulated.get("direct") else "")
            + ")"
            if summary.get("emulated")
            else ""
        )
        + ", "
        + (f"{summary['written']:,} written" if summary["output"] else "no output file (-o)"),
        f"             {summary['translated']:,} translated ({summary['new']:,} new flows, "
        f"{summary['forward']:,} to reals, {summary['reply'] + summary.get('answer', 0):,} replies"
        + (f", {summary['answer']:,} of them as captured from the service side" if summary.get("answer") else "")
        + f"), {summary['passed']:,} passed untouched",
        f"dropped      {sum(dropped.values()):,}"
        + (" (" + ", ".join(f"{k} {v:,}" for k, v in sorted(dropped.items())) + ")" if dropped else "")
        + (f", {summary['icmp']:,} of them answered with an ICMP error" if summary.get("icmp") else ""),
        *(
            [
                f"fragments    {summary['fragments_made']:,} made (no DF, over the MTU), "
                f"{summary['fragments_released']:,} released after their first, "
                f"{summary['fragments_held']:,} waiting, {summary['fragments_expired']:,} expired"
            ]
            if any(summary.get(name) for name in ("fragments_made", "fragments_released", "fragments_held"))
            or summary.get("fragments_expired")
            else []
        ),
        *_columns("new conns", [f"{real:<24} {n:>9,}" for real, n in summary["new_connections"].items()]),
        *_columns(
            "unattributed",
            [f"{sender:<24} {n:>9,}" for sender, n in summary.get("unattributed", {}).items()],
            empty=None,
        ),
        f"table        peak {summary['peak_connections']:,}, final {summary['final_connections']:,} "
        f"of {summary['max_connections']:,}",
        f"time         {summary['elapsed_s']:.3f} s, {summary['packets_per_s']:,.0f} packets/s"
        + (f" ({summary['workers']} workers)" if summary.get("workers", 1) > 1 else ""),
        *_sharding_lines(summary.get("sharding")),
    ]
    emulated = summary.get("emulated")
    if emulated:
        lines.append(
            f"emulated     {emulated['hosts']} hosts: {emulated['accepted']:,} accepted of "
            f"{emulated['syns']:,} SYNs, {emulated['listen_drops']:,} SYNs dropped (listen queues full), "
            f"{emulated['resets_sent']:,} resets sent, {emulated['segments_out']:,} segments and "
            f"{emulated['datagrams_out']:,} datagrams answered"
        )
        if emulated.get("superseded"):
            lines.append(
                f"             {emulated['superseded']:,} captured packets from emulated reals' addresses "
                f"skipped (their hosts answer instead)"
            )
    for effect in summary.get("events", []):
        lines.append(
            f"event        {effect['event']}: {effect['connections_on_real']:,} connections on the real; then "
            f"{effect['rescheduled']:,} moved, {effect['broken']:,} broken, "
            f"{effect['blackholed']:,} black-holed"
        )
    lines += health_lines(summary.get("health"))
    if summary.get("error"):
        lines.append(f"stopped      {summary['error']}")
    return "\n".join(lines)


def health_lines(health: dict | None) -> list[str]:
    """Emulated reals' health checks: each checked real's counts, then every transition on the packet clock."""
    if not health:
        return []
    rows = [
        f"{r['real']:<24} {r['type']:<4} {'up' if r['healthy'] else 'DOWN':<4} {r['success']:,} passed, "
        f"{r['failure']:,} failed, {r['down']:,} down, {r['up']:,} up"
        for r in health["reals"]
    ]
    rows += [f"{t['at_s']:>10.3f} s  {t['real']} {t['state']}: {t['why']}" for t in health["transitions"]]
    return _columns("health", rows)


def _sharding_lines(check: dict | None) -> list[str]:
    """--check-sharding: each real's new connections, sharded beside one worker's."""
    if not check:
        return []
    rows = [
        f"{row['real']:<24} {row['sharded']:>9,} vs {row['one_worker']:>9,} in one worker "
        f"({row['difference_pct']:.2f}%)"
        for row in check["reals"]
    ]
    worst, workers = check["max_difference_pct"], check["workers"]
    title = f"largest difference {worst:.2f}% of a real's connections ({workers} workers)"
    return _columns("sharding", [title, *rows])


def _columns(title: str, rows: list[str], empty: str | None = "none") -> list[str]:
    """The first row beside the title, the rest aligned under it (no rows: `empty`, or no line at all)."""
    rows = rows or ([empty] if empty is not None else [])
    return [f"{title if k == 0 else '':<12} {row}" for k, row in enumerate(rows)]


def to_json(data) -> str:
    import json  # only --json and state files need it (start-up)

    return json.dumps(data, indent=2, sort_keys=False)
