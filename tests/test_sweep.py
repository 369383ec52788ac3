"""`l4emu sweep`: a grid of replays, serial, on local processes and on Dask (a local cluster, and a real
scheduler with two workers in their own network namespaces); every engine gives the serial results."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from conftest import PCAPS, ROOT, run_cli
from l4emu import schedulers
from l4emu.dist import sweep as sweepmod
from l4emu.cli import main

SPEC = f"""
captures = ["{PCAPS / 'sample.pcap'}", "{PCAPS / 'front.pcap'}"]
schedulers = ["rr", "wlc"]
events = [[], ["0.5:down:10.1.0.2:8080"]]
seeds = [1, 2]
"""
POINTS = 16  # 2 captures x 2 schedulers x 2 event sets x 2 seeds

needs_dask = pytest.mark.skipif(not sweepmod.dask_available(), reason="needs dask[distributed] (the dist extra)")


def write_spec(tmp_path, text=SPEC, name="spec.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def sweep_json(spec, *args) -> dict:
    out = run_cli("sweep", spec, "--json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    return sweep_json(write_spec(tmp_path_factory.mktemp("serial")), "--jobs", "1")


def test_the_grid_is_the_product_of_the_axes_in_order(serial):
    assert serial["engine"] == "serial" and len(serial["rows"]) == POINTS
    points = [row["point"] for row in serial["rows"]]
    assert [p["index"] for p in points] == list(range(POINTS))
    assert points[0]["scheduler"] == "rr" and points[0]["events"] == [] and points[0]["seed"] == 1
    assert points[1]["seed"] == 2 and points[2]["events"] == ["0.5:down:10.1.0.2:8080"] and points[4]["scheduler"] == "wlc"
    assert all("run" in row and "error" not in row for row in serial["rows"])
    # the event moved load: real 2 took new connections before it went down, fewer than without the event
    plain, with_event = serial["rows"][0]["run"], serial["rows"][2]["run"]
    assert plain["services"][0]["new_connections"] != with_event["services"][0]["new_connections"]


def test_processes_give_the_serial_results_run_for_run(tmp_path, serial, monkeypatch):
    monkeypatch.setattr(sweepmod, "dask_available", lambda: False)
    runner = CliRunner()
    out = runner.invoke(main, ["sweep", str(write_spec(tmp_path)), "--jobs", "2", "--json"])
    assert out.exit_code == 0, out.output
    assert "Dask is not installed: running on local processes" in out.stderr
    result = json.loads(out.stdout)
    assert result["engine"] == "processes" and result["rows"] == serial["rows"]


@needs_dask
@pytest.mark.parametrize("stage", [False, True])
def test_a_local_dask_cluster_gives_the_serial_results(tmp_path, serial, stage):
    result = sweep_json(write_spec(tmp_path), "--jobs", "2", *(["--stage"] if stage else []))
    assert result["engine"] == "dask" and result["rows"] == serial["rows"]


def test_a_failed_point_is_named_and_the_others_finish(tmp_path):
    spec = write_spec(tmp_path, f'captures = ["{PCAPS / "sample.pcap"}"]\nschedulers = ["rr"]\n'
                                'events = [[], ["0.5:down:10.9.9.9:80"]]\n')
    out = run_cli("sweep", spec, "--jobs", "1", check=False)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert any(line.startswith("  1 sample.pcap") and "error: --event 0.5:down:10.9.9.9:80: no real server"
               in line for line in lines), out.stdout
    assert "1 runs done, 1 failed" in out.stdout and "Traceback" not in out.stderr


def test_csv_has_a_row_per_point_and_service(tmp_path, serial):
    out = run_cli("sweep", write_spec(tmp_path), "--jobs", "1", "--csv")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    services = sum(len(row["run"]["services"]) for row in serial["rows"])
    assert len(rows) == services and {r["index"] for r in rows} == {str(k) for k in range(POINTS)}
    assert all(r["error"] == "" for r in rows)


def test_the_plot_has_a_row_per_point(tmp_path):
    spec = write_spec(tmp_path, f'captures = ["{PCAPS / "front.pcap"}"]\nschedulers = ["rr", "mh"]\n')
    out = run_cli("sweep", spec, "--jobs", "1", "--plot", tmp_path / "sweep.png")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("text, message", [
    ("captures = []\nschedulers = ['rr']\n", "spec.toml: captures: a non-empty list of strings"),
    ("schedulers = ['rr']\n", "spec.toml: captures: missing (a list of strings)"),
    ("captures = ['nope.pcap']\nschedulers = ['rr']\n", "spec.toml: captures: nope.pcap: no such file"),
    (f"captures = ['{PCAPS / 'sample.pcap'}']\nschedulers = ['nope']\n", "spec.toml: schedulers: unknown scheduler 'nope'"),
    (f"captures = ['{PCAPS / 'sample.pcap'}']\nschedulers = ['rr']\nseeds = [-1]\n", "spec.toml: seeds: a non-empty list"),
    (f"captures = ['{PCAPS / 'sample.pcap'}']\nschedulers = ['rr']\nevents = [['soon:down:x']]\n",
     "spec.toml: events: "),
    (f"captures = ['{PCAPS / 'sample.pcap'}']\nschedulers = ['rr']\nschedulerz = 1\n", "spec.toml: schedulerz: unknown key"),
    ("captures = [", "spec.toml: not valid TOML"),
])
def test_a_bad_spec_is_one_line_naming_file_and_key(tmp_path, text, message):
    out = run_cli("sweep", write_spec(tmp_path, text), "--jobs", "1", check=False)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("l4emu: error: ") and message in out.stderr and out.stderr.count("\n") == 1, out.stderr


def test_paths_in_a_spec_are_relative_to_the_spec(tmp_path):
    shutil.copy(PCAPS / "sample.pcap", tmp_path / "here.pcap")
    spec = sweepmod.load_spec(write_spec(tmp_path, 'captures = ["here.pcap"]\nschedulers = ["rr"]\n'),
                              schedulers.catalog())
    assert spec.captures == (str(tmp_path / "here.pcap"),) and spec.configs == (sweepmod.EMBEDDED_CONFIG,)


# ---- a real Dask scheduler and two workers, each in its own network namespace ------------------------------
_RUN = os.getpid() % 100000  # names and subnet of this run's own: concurrent runs on one machine do not clash
NETNS = (f"l4s{_RUN}s", f"l4s{_RUN}a", f"l4s{_RUN}b")
BRIDGE, SUBNET = f"l4s{_RUN}br", f"10.231.{_RUN % 250}"
SCHEDULER_PORT = 8786


def ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


@contextlib.contextmanager
def dask_in_namespaces(tmp_path):
    """Three namespaces on one bridge: 10.231.0.2 runs the scheduler, .3 and .4 a worker each; this
    process (the client) reaches them through the bridge's 10.231.0.1. Everything is removed after."""
    procs: list[subprocess.Popen] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the workers import this checkout's l4emu
    try:
        ip("link", "add", BRIDGE, "type", "bridge")
        ip("addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
        ip("link", "set", BRIDGE, "up")
        for k, ns in enumerate(NETNS, start=2):
            ip("netns", "add", ns)
            ip("link", "add", f"{ns}h", "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("link", "set", f"{ns}h", "master", BRIDGE, "up")
            ip("-n", ns, "addr", "add", f"{SUBNET}.{k}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
        scheduler = f"tcp://{SUBNET}.2:{SCHEDULER_PORT}"
        log = open(tmp_path / "dask.log", "w")
        procs.append(subprocess.Popen(["ip", "netns", "exec", NETNS[0], sys.executable, "-m",
                                       "distributed.cli.dask_scheduler", "--host", f"{SUBNET}.2", "--port",
                                       str(SCHEDULER_PORT), "--no-dashboard"], env=env, stdout=log, stderr=log))
        for k, ns in enumerate(NETNS[1:], start=3):
            procs.append(subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m",
                                           "distributed.cli.dask_worker", scheduler, "--host", f"{SUBNET}.{k}",
                                           "--nworkers", "1", "--nthreads", "1", "--no-dashboard"],
                                          env=env, stdout=log, stderr=log))
        wait_for_workers(scheduler, 2, tmp_path)
        yield scheduler
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for ns in NETNS:  # a worker's own child processes too
            for pid in ip("netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
            ip("netns", "del", ns, check=False)
        ip("link", "del", BRIDGE, check=False)


def wait_for_workers(scheduler: str, count: int, tmp_path, timeout: float = 60.0) -> None:
    from distributed import Client

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((f"{SUBNET}.2", SCHEDULER_PORT), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError("the scheduler never listened:\n" + (tmp_path / "dask.log").read_text())
            time.sleep(0.2)
    with Client(scheduler, timeout=timeout) as client:
        client.wait_for_workers(count, timeout=timeout)


@needs_dask
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2 (namespaces)")
@pytest.mark.parametrize("stage", [False, True])
def test_a_sweep_over_the_network_gives_the_serial_results(tmp_path, serial, stage):
    with dask_in_namespaces(tmp_path) as scheduler:
        result = sweep_json(write_spec(tmp_path), "--dask", scheduler, *(["--stage"] if stage else []))
        from distributed import Client

        with Client(scheduler) as client:  # both workers ran tasks: it really was spread
            ran = client.run(lambda dask_worker: len(dask_worker.data) + dask_worker.state.executed_count)
    assert result["engine"] == "dask" and result["rows"] == serial["rows"]
    assert len(ran) == 2 and all(n > 0 for n in ran.values()), ran
    assert not set(NETNS) & set(ip("netns", "list").stdout.split())
