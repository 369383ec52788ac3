"""--metrics without a TUN: the families of a switch's snapshot through prometheus_client's exposition and parser,
the endpoint's hand-off to the loop's thread, the address option, and the example Grafana dashboard."""
from __future__ import annotations

import json
import re
import threading
import urllib.request

import pytest
from conftest import ROOT
from prometheus_client.parser import text_string_to_metric_families
from scapy.all import IP, TCP, Ether

from l4emu.errors import OptionError
from l4emu.live.metrics import MetricsServer, parse_address

DASHBOARD = ROOT / "docs" / "examples" / "grafana-dashboard.json"
TUN = {"packets_in": 7, "packets_out": 5, "bytes_in": 700, "bytes_out": 500, "gso_in": 1, "gso_out": 0,
       "write_errors": 2}
# PromQL words that are not metric names: functions are followed by "(", these are not (always).
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset"}


def snapshot_of(switch) -> dict:
    return {"services": switch.services(), "stats": switch.stats(), "table": switch.table_info(), "tun": TUN,
            "reloads": {"applied": 3, "refused": 1},
            "health": [{"vip": "10.0.0.100:80", "protocol": "TCP", "address": "10.1.0.2:8080", "healthy": False,
                        "success": 4, "failure": 2, "down": 1, "up": 0}]}


def scrape_once(snapshot) -> str:
    """Serve `snapshot` on a free port, answer the scrape from this thread as the live loop does, return the body."""
    import select

    server = MetricsServer("127.0.0.1:0", lambda: snapshot)
    body = {}
    client = threading.Thread(target=lambda: body.update(
        text=urllib.request.urlopen(f"http://{server.address}/metrics", timeout=10).read().decode()))
    client.start()
    poll = select.epoll()
    poll.register(server.fd, select.EPOLLIN)
    try:
        while client.is_alive():
            if poll.poll(0.05):
                server.serve()
        client.join()
    finally:
        poll.close()
        server.close()
    return body["text"]


def samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_scrape_reads_the_switch_counters(switch, harness):
    syns = [Ether() / IP(src=f"172.16.0.{k}", dst="10.0.0.100") / TCP(sport=40000 + k, dport=80, flags="S")
            for k in range(1, 7)]
    harness.run(syns)
    got = samples(scrape_once(snapshot_of(switch)))
    assert got[("node_ipvs_connections_total", ())] == 6
    assert got[("l4emu_packets_total", (("verdict", "new"),))] == 6
    assert got[("l4emu_table_connections", ())] == 6
    labels = (("local_address", "10.0.0.100"), ("local_mark", ""), ("local_port", "80"), ("proto", "TCP"),
              ("remote_address", "10.1.0.1"), ("remote_port", "8080"))
    assert got[("node_ipvs_backend_connections_active", labels)] == 2       # SYN_RECV is active; rr: 2 each
    assert got[("node_ipvs_backend_weight", labels)] == 1
    assert got[("l4emu_tun_write_errors_total", ())] == 2
    assert got[("l4emu_reloads_total", (("result", "refused"),))] == 1
    checked = (("local_address", "10.0.0.100"), ("local_mark", ""), ("local_port", "80"), ("proto", "TCP"),
               ("remote_address", "10.1.0.2"), ("remote_port", "8080"))
    assert got[("l4emu_backend_healthy", checked)] == 0
    assert got[("l4emu_health_transitions_total", tuple(sorted((*checked, ("to", "down")))))] == 1
    assert got[("l4emu_drops_total", (("reason", "table_full"),))] == 0      # every reason, from the start


def test_series_are_bounded_by_the_config_not_the_clients(switch, harness):
    before = set(samples(scrape_once(snapshot_of(switch))))
    harness.run([Ether() / IP(src=f"172.16.{k // 250}.{k % 250 + 1}", dst="10.0.0.100") / TCP(sport=k + 1024, dport=80,
                                                                                                flags="S")
                 for k in range(500)])
    assert set(samples(scrape_once(snapshot_of(switch)))) == before


@pytest.mark.parametrize("text", ["9101", "localhost:9101", "127.0.0.1:http", "127.0.0.1:70000", "[::1]9101"])
def test_metrics_address_must_be_an_address_and_port(text):
    with pytest.raises(OptionError, match="--metrics"):
        parse_address(text)


def test_metrics_address_forms():
    assert parse_address("127.0.0.1:9101") == ("127.0.0.1", 9101)
    assert parse_address("[::1]:0") == ("::1", 0)


def metric_names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers outside label matchers, ranges and by (...)
    clauses that are not functions, keywords or Grafana's $variables (and label_values' label)."""
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\$\w+|\"[^\"]*\"", " ", expr)
    expr = re.sub(r"\b(by|without)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"label_values\(\s*([\w:]+)\s*,\s*\w+\s*\)", r"\1", expr)   # Grafana's: (metric, label)
    words = re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*(?!\s*\()\b", expr)
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"\d+\w*", w)}


def test_the_example_dashboard_queries_only_what_l4emu_exports(switch):
    dashboard = json.loads(DASHBOARD.read_text())
    exported = {name for name, _ in samples(scrape_once(snapshot_of(switch)))}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = set().union(*(metric_names_in(e) for e in exprs))
    assert used and used <= exported, sorted(used - exported)
    assert {"node_ipvs_backend_connections_active", "l4emu_drops_total", "l4emu_table_connections"} <= used
