"""Prometheus metric families from a live snapshot: node_exporter's IPVS names where they exist, l4emu's own beside.

Every label set is bounded by the config (services, reals) or by fixed vocabularies (drop reasons,
verdicts, directions): no label carries a client's address, so the series count does not grow with
traffic (node_exporter's IPVS collector once reached 18,263 series on one host, node_exporter #1708).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# node_exporter's ipvs collector labels its backends so (collector/ipvs_linux.go); local_mark is the
# fwmark of a fwmark service, which l4emu does not have: always "".
BACKEND_LABELS = ["local_address", "local_port", "remote_address", "remote_port", "proto", "local_mark"]
# IPVS's global stats (/proc/net/ip_vs_stats) are its reals' counters summed: so are these.
IPVS_TOTALS = (
    ("node_ipvs_connections_total", "conns", "The total number of connections made."),
    ("node_ipvs_incoming_packets_total", "in_pkts", "The total number of incoming packets."),
    ("node_ipvs_outgoing_packets_total", "out_pkts", "The total number of outgoing packets."),
    ("node_ipvs_incoming_bytes_total", "in_bytes", "The total amount of incoming data."),
    ("node_ipvs_outgoing_bytes_total", "out_bytes", "The total amount of outgoing data."),
)
VERDICTS = ("new", "forward", "reply", "answer", "passed", "icmp")
TABLE_COUNTERS = (
    ("l4emu_table_expired_total", "expired", "Connections removed at their timeout."),
    ("l4emu_table_evictions_total", "evicted", "Connections evicted to make room in a full table."),
    ("l4emu_table_reused_total", "reused", "Entries a new SYN took over (conn_reuse_mode)."),
    ("l4emu_table_insert_failures_total", "insert_failed", "New connections the table had no room for."),
)
NODEST_OUTCOMES = ("rescheduled", "broken", "blackholed")


def _split(endpoint: str) -> tuple[str, str]:
    """ "ip:port" or "[ip6]:port" -> (ip, port), as node_exporter prints addresses (IPv6 without brackets)."""
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), port


def families(snapshot: dict, drop_reasons, pass_reasons) -> Iterator[Metric]:
    """The metric families of one snapshot ({"services", "stats", "table", "tun", "reloads"}); every reason of the
    datapath's vocabularies appears, at 0 until it happens, so a rate() has a series from the start."""
    services, stats, table, tun = snapshot["services"], snapshot["stats"], snapshot["table"], snapshot["tun"]
    reals = [(svc, real) for svc in services for real in svc["reals"]]
    for name, key, doc in IPVS_TOTALS:
        yield CounterMetricFamily(name, doc, value=sum(real[key] for _, real in reals))
    yield from _backends(reals)
    verdicts = CounterMetricFamily("l4emu_packets_total", "Packets through the switch, by verdict.", labels=["verdict"])
    for verdict in VERDICTS:
        verdicts.add_metric([verdict], stats[verdict])
    verdicts.add_metric(["dropped"], stats["dropped_total"])
    yield verdicts
    yield _by_reason("l4emu_drops_total", "Packets dropped, by reason.", drop_reasons, stats["dropped"])
    yield _by_reason(
        "l4emu_passes_total", "Packets passed untouched, by reason.", pass_reasons, stats["passed_by_reason"]
    )
    yield GaugeMetricFamily("l4emu_table_connections", "Entries in the connection table now.", value=table["used"])
    yield GaugeMetricFamily("l4emu_table_connections_peak", "Most entries the table held at once.", value=table["peak"])
    yield GaugeMetricFamily(
        "l4emu_table_capacity", "Entries the table can hold (max_connections).", value=table["capacity"]
    )
    for name, key, doc in TABLE_COUNTERS:
        yield CounterMetricFamily(name, doc, value=stats[key])
    nodest = CounterMetricFamily(
        "l4emu_nodest_flows_total",
        "Flows of a real that went down, by what their next packet met (expire_nodest_conn).",
        labels=["outcome"],
    )
    for outcome in NODEST_OUTCOMES:
        nodest.add_metric([outcome], stats[outcome])
    yield nodest
    yield from _tun(tun)
    reloads = CounterMetricFamily(
        "l4emu_reloads_total", "Config reloads (l4emu apply, SIGHUP), applied or refused.", labels=["result"]
    )
    for result in ("applied", "refused"):
        reloads.add_metric([result], snapshot["reloads"][result])
    yield reloads
    yield from _health(snapshot["health"])


def _health(checked: list[dict]) -> Iterator[Metric]:
    """Per checked real ([service.check]): its health, checks by result, transitions by direction."""
    healthy = GaugeMetricFamily(
        "l4emu_backend_healthy", "1 while the real passes its health check (checked reals only).", labels=BACKEND_LABELS
    )
    checks = CounterMetricFamily(
        "l4emu_health_checks_total", "Health check attempts, by result.", labels=[*BACKEND_LABELS, "result"]
    )
    transitions = CounterMetricFamily(
        "l4emu_health_transitions_total", "Reals marked down or up by their check.", labels=[*BACKEND_LABELS, "to"]
    )
    for real in checked:
        local_address, local_port = _split(real["vip"])
        remote_address, remote_port = _split(real["address"])
        values = [local_address, local_port, remote_address, remote_port, real["protocol"], ""]
        healthy.add_metric(values, 1 if real["healthy"] else 0)
        for result in ("success", "failure"):
            checks.add_metric([*values, result], real[result])
        for to in ("down", "up"):
            transitions.add_metric([*values, to], real[to])
    yield from (healthy, checks, transitions)


def _by_reason(name: str, doc: str, reasons, counts: dict) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=["reason"])
    for reason in reasons:
        family.add_metric([reason], counts.get(reason, 0))
    return family


def _backends(reals: list[tuple[dict, dict]]) -> Iterator[Metric]:
    """Per real: node_exporter's three gauges, and l4emu's counters and state beside them."""
    labels = BACKEND_LABELS
    active = GaugeMetricFamily(
        "node_ipvs_backend_connections_active",
        "The current active connections by local and remote address.",
        labels=labels,
    )
    inactive = GaugeMetricFamily(
        "node_ipvs_backend_connections_inactive",
        "The current inactive connections by local and remote address.",
        labels=labels,
    )
    weight = GaugeMetricFamily(
        "node_ipvs_backend_weight", "The current backend weight by local and remote address.", labels=labels
    )
    up = GaugeMetricFamily("l4emu_backend_up", "1 unless the real is marked down.", labels=labels)
    overloaded = GaugeMetricFamily(
        "l4emu_backend_overloaded", "1 while the real is over its upper threshold (-x).", labels=labels
    )
    decisions = CounterMetricFamily(
        "l4emu_scheduler_decisions_total",
        "New connections the service's scheduler (or a persistence template) gave this real.",
        labels=[*labels, "scheduler"],
    )
    counters = {
        key: CounterMetricFamily(f"l4emu_backend_{name}_total", f"The real's {doc} (ipvsadm --stats).", labels=labels)
        for key, name, doc in (
            ("in_pkts", "incoming_packets", "incoming packets"),
            ("out_pkts", "outgoing_packets", "outgoing packets"),
            ("in_bytes", "incoming_bytes", "incoming bytes"),
            ("out_bytes", "outgoing_bytes", "outgoing bytes"),
        )
    }
    for svc, real in reals:
        local_address, local_port = _split(svc["vip"])
        remote_address, remote_port = _split(real["address"])
        values = [local_address, local_port, remote_address, remote_port, svc["protocol"], ""]
        active.add_metric(values, real["active"])
        inactive.add_metric(values, real["inactive"])
        weight.add_metric(values, real["weight"])
        up.add_metric(values, 0 if real["down"] else 1)
        overloaded.add_metric(values, 1 if real["overloaded"] else 0)
        decisions.add_metric([*values, svc["scheduler"]], real["conns"])
        for key, family in counters.items():
            family.add_metric(values, real[key])
    yield from (active, inactive, weight, up, overloaded, decisions, *counters.values())


def _tun(tun: dict) -> Iterator[Metric]:
    """The TUN device's reads and writes (a 64 KiB super-packet counts as one packet)."""
    packets = CounterMetricFamily(
        "l4emu_tun_packets_total", "Packets read from (in) and written to (out) the TUN.", labels=["direction"]
    )
    octets = CounterMetricFamily(
        "l4emu_tun_bytes_total", "Bytes read from and written to the TUN.", labels=["direction"]
    )
    gso = CounterMetricFamily(
        "l4emu_tun_gso_packets_total",
        "Segmentation-offload super-packets read (in) and GSO UDP writes (out).",
        labels=["direction"],
    )
    for direction in ("in", "out"):
        packets.add_metric([direction], tun[f"packets_{direction}"])
        octets.add_metric([direction], tun[f"bytes_{direction}"])
        gso.add_metric([direction], tun[f"gso_{direction}"])
    yield from (packets, octets, gso)
    yield CounterMetricFamily("l4emu_tun_write_errors_total", "Packets the TUN refused.", value=tun["write_errors"])
