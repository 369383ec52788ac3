"""--metrics end to end: a real live run in the lab, scraped over HTTP and read by prometheus_client's own parser."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_live_lab import REALS, Running, _workdir, l4emu, pytestmark, wait_for  # noqa: F401 (pytestmark: root, TUN)

from l4emu.live import control

METRICS = "127.0.0.1:9101"  # inside the load balancer's namespace: nothing else listens there


@pytest.fixture(scope="module")
def running():
    workdir = _workdir()
    lab = Running(f"l4m{os.getpid() % 100000}", "l4m0", workdir, "--metrics", METRICS)
    try:
        yield lab.start()
    finally:
        lab.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def scrape(running) -> dict:
    """GET /metrics from inside the load balancer's namespace; {(name, labels): value} by the real parser."""
    got = subprocess.run(["ip", "netns", "exec", running.lab.lb, "curl", "-sS", "--fail", "-m", "10",
                          f"http://{METRICS}/metrics"], capture_output=True, text=True, timeout=30)
    assert got.returncode == 0, got.stderr
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(got.stdout) for s in family.samples}


def backend(vip: str, real: str, proto: str = "TCP") -> tuple:
    (la, lp), (ra, rp) = vip.rsplit(":", 1), real.rsplit(":", 1)
    return tuple(sorted({"local_address": la.strip("[]"), "local_port": lp, "remote_address": ra.strip("[]"),
                         "remote_port": rp,
                         "proto": proto, "local_mark": ""}.items()))


def settled(running) -> tuple[dict, dict]:
    """A scrape and the control socket's stats that agree on the packet counters (the last FIN/ACKs are in)."""
    result = {}

    def stable():
        before = control.request(running.control, "stats")
        result.update(sample=scrape(running), stats=control.request(running.control, "stats"))
        return before["stats"]["packets"] == result["stats"]["stats"]["packets"]
    wait_for(stable, what="the counters to settle")
    return result["sample"], result["stats"]


def test_scrape_matches_the_switch_and_series_do_not_grow_with_clients(running):
    wait_for(lambda: subprocess.run(["ip", "netns", "exec", running.lab.lb, "curl", "-s", "-o", "/dev/null",
                                     f"http://{METRICS}/metrics"]).returncode == 0, what="the metrics endpoint")
    empty = scrape(running)
    for _ in range(6):
        assert running.curl() == b"hello\n"
    sample, stats = settled(running)
    # Each curl came from a new client port: the series are the same ones as before any traffic.
    assert set(sample) == set(empty)
    reals = [(svc, real) for svc in stats["services"] for real in svc["reals"]]
    assert sample[("node_ipvs_connections_total", ())] == sum(r["conns"] for _, r in reals) == 6
    for name, key in (("incoming_packets", "in_pkts"), ("outgoing_packets", "out_pkts"),
                      ("incoming_bytes", "in_bytes"), ("outgoing_bytes", "out_bytes")):
        assert sample[(f"node_ipvs_{name}_total", ())] == sum(r[key] for _, r in reals) > 0
    for svc, real in reals:
        labels = backend(svc["vip"], real["address"], svc["protocol"])
        assert sample[("node_ipvs_backend_weight", labels)] == real["weight"]
        assert sample[("node_ipvs_backend_connections_active", labels)] == real["active"]
        assert sample[("node_ipvs_backend_connections_inactive", labels)] == real["inactive"]
        assert sample[("l4emu_backend_incoming_packets_total", labels)] == real["in_pkts"]
        assert sample[("l4emu_scheduler_decisions_total", (*labels, ("scheduler", svc["scheduler"])))] \
            == real["conns"]
    # rr over three reals: two connections each, and TIME_WAIT/CLOSE entries count as inactive.
    for real in REALS:
        labels = backend("10.0.0.100:80", f"{real}:8080")
        assert sample[("l4emu_scheduler_decisions_total", (*labels, ("scheduler", "rr")))] == 2
    assert sample[("l4emu_packets_total", (("verdict", "new"),))] == stats["stats"]["new"] == 6
    assert sample[("l4emu_drops_total", (("reason", "no_real"),))] == stats["stats"]["dropped"].get("no_real", 0)
    assert sample[("l4emu_table_connections", ())] == stats["stats"]["connections"]
    tun = stats["tun"]
    assert sample[("l4emu_tun_packets_total", (("direction", "in"),))] == tun["packets_in"] > 0
    assert sample[("l4emu_tun_bytes_total", (("direction", "out"),))] == tun["bytes_out"] > 0


def test_a_weight_change_shows_in_the_next_scrape(running):
    l4emu("real", "set", "10.1.0.2:8080", "--weight", "3", "--down", "--control", running.control)
    try:
        labels = backend("10.0.0.100:80", "10.1.0.2:8080")
        sample = scrape(running)
        assert sample[("node_ipvs_backend_weight", labels)] == 3
        assert sample[("l4emu_backend_up", labels)] == 0
        assert sample[("l4emu_backend_up", backend("10.0.0.100:80", "10.1.0.1:8080"))] == 1
    finally:
        l4emu("real", "set", "10.1.0.2:8080", "--weight", "1", "--up", "--control", running.control)
