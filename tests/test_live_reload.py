"""Reloads of a live switch under load: iperf3 through the VIP across 10 reloads (l4emu apply and SIGHUP)
that keep the flow's real, then `l4emu save`; in namespaces this module makes and removes."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
from test_live_lab import Running, _workdir, l4emu, pytestmark, wait_for  # noqa: F401 (pytestmark: root, TUN)

from l4emu import config as configmod
from l4emu import reconfig, schedulers
from l4emu.live import control

pytestmark = [*pytestmark, pytest.mark.skipif(shutil.which("iperf3") is None, reason="needs iperf3")]
PERF_REALS = ("10.1.0.1", "10.1.0.2")
SECONDS = 25   # the transfer: the ten reloads (about a second each, under load) all come while it runs


def config(*, weights=(1, 1), third=False, established=900, web_scheduler="rr", threshold=0, udp=True,
           nodest=False) -> str:
    """The lab's default services, and iperf3's: sh (the control and the data connection from one client
    go to one real), on 10.1.0.1 and 10.1.0.2 (and 10.1.0.3 when `third`)."""
    text = f"[table]\nexpire_nodest_conn = {str(nodest).lower()}\n[timeouts]\nestablished = {established}\n"
    text += f'[[service]]\nvip = "10.0.0.100:80"\nscheduler = "{web_scheduler}"\n'
    text += "".join(f'  [[service.real]]\n  address = "10.1.0.{k}:8080"\n' for k in (1, 2, 3))
    if udp:
        text += '[[service]]\nvip = "10.0.0.100:53"\nprotocol = "udp"\n'
        text += "".join(f'  [[service.real]]\n  address = "10.1.0.{k}:53"\n' for k in (11, 12))
    text += '[[service]]\nvip = "10.0.0.100:5201"\nscheduler = "sh"\n'
    for address, weight in zip(PERF_REALS, weights):
        text += f'  [[service.real]]\n  address = "{address}:5201"\n  weight = {weight}\n'
        text += f"  upper_threshold = {threshold}\n" if threshold else ""
    if third:
        text += '  [[service.real]]\n  address = "10.1.0.3:5201"\n'
    return text + '[[service]]\nvip = "[2001:db8::100]:80"\n  [[service.real]]\n  address = "[2001:db8:1::1]:8080"\n' \
        '  [[service.real]]\n  address = "[2001:db8:1::2]:8080"\n'


def reloads(flow_real: str) -> list[str]:
    """Ten configs, none without the flow's real: weights, a real added and removed, timeouts, another
    service's scheduler and removal, thresholds, a sysctl, and back."""
    mine = PERF_REALS.index(flow_real)
    heavy = tuple(3 if k == mine else 1 for k in range(2))
    return [config(weights=heavy), config(weights=heavy, third=True), config(third=True), config(established=600),
            config(web_scheduler="wlc"), config(udp=False), config(threshold=100), config(nodest=True),
            config(weights=tuple(0 if k != mine else 1 for k in range(2))), config()]


@pytest.fixture
def running(tmp_path):
    workdir = _workdir()
    lb_toml = workdir / "lb.toml"
    lb_toml.write_text(config())
    lab = Running(f"l4r{os.getpid() % 100000}", "l4r0", workdir, "-c", str(lb_toml))
    servers = []
    try:
        lab.start()
        for address in (*PERF_REALS, "10.1.0.3"):
            servers.append(subprocess.Popen(["ip", "netns", "exec", lab.lab.servers, "iperf3", "-s", "-1", "-B",
                                             address, "-p", "5201"], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))
        time.sleep(0.5)
        yield lab, lb_toml
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
        lab.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def perf_flows(sock) -> set[tuple[str, str]]:
    return {(row["source"], row["destination"]) for row in control.request(sock, "conntrack")
            if row["virtual"] == "10.0.0.100:5201" and row["state"] == "ESTABLISHED"}


def test_iperf3_runs_unbroken_across_ten_reloads(running):
    lab, lb_toml = running
    client = subprocess.Popen(["ip", "netns", "exec", lab.lab.client, "iperf3", "-c", "10.0.0.100", "-p", "5201",
                               "-t", str(SECONDS), "-i", "1", "-J"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        wait_for(lambda: len(perf_flows(lab.control)) == 2, what="iperf3's control and data connections")
        flows = perf_flows(lab.control)
        (flow_real,) = {dst.split(":")[0] for _, dst in flows}
        time.sleep(1)
        shown = []
        for k, text in enumerate(reloads(flow_real)):
            new = lab.workdir / f"reload{k}.toml"
            new.write_text(text)
            if k % 2:       # SIGHUP re-reads -c
                lb_toml.write_text(text)
                lab.live.send_signal(signal.SIGHUP)
                want = reconfig.config_data(configmod.load(new, schedulers.catalog()))
                wait_for(lambda: control.request(lab.control, "config") == json.loads(json.dumps(want)),
                         what=f"reload {k} by SIGHUP")
            else:
                shown.append(l4emu("apply", str(new), "--control", lab.control).stdout)
            assert perf_flows(lab.control) == flows, f"reload {k} moved or dropped iperf3's connections"
            time.sleep(0.3)
        assert client.poll() is None, "iperf3 ended before the ten reloads did: make SECONDS longer"
        out, err = client.communicate(timeout=SECONDS + 20)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    report = json.loads(out)
    assert client.returncode == 0 and "error" not in report, (report.get("error"), err)
    intervals = [i["sum"]["bytes"] for i in report["intervals"]]
    assert len(intervals) >= SECONDS and min(intervals) > 0, intervals      # bytes flowed every second
    assert report["end"]["sum_received"]["bytes"] > 0
    stats = control.request(lab.control, "stats")["stats"]
    assert stats["broken"] == 0 and stats["nodest"] == 0
    # What apply printed: ipvsadm's steps (the first reload raises the flow's real's weight).
    assert f"-e -t 10.0.0.100:5201 -r {flow_real}:5201 -m -w 3    # weight 1 -> 3" in shown[0]
    # What needs a restart is refused with the key, and the switch goes on as it was.
    bad = lab.workdir / "bad.toml"
    bad.write_text(config().replace("[table]\n", "[table]\nmax_connections = 1000\n"))
    refused = l4emu("apply", str(bad), "--control", lab.control, check=False)
    assert refused.returncode == 2 and f"{bad}: table.max_connections: 1048576 -> 1000" in refused.stderr
    assert lab.live.poll() is None
    # The running config, as ipvsadm-save prints it, is the last one applied.
    saved = l4emu("save", "--control", lab.control).stdout
    assert saved == l4emu("save", "-c", str(lb_toml)).stdout and "-A -t 10.0.0.100:5201 -s sh\n" in saved
