"""Live mode with emulated reals: real curl through the VIP is answered by l4emu's own hosts (no servers run)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import PCAPS
from l4emu.live.lab import Lab
from test_live_lab import _workdir, l4emu, live_in_lab

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="live mode tests need root (network namespaces, TUN)"),
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun"),
    pytest.mark.skipif(shutil.which("curl") is None or shutil.which("ip") is None, reason="needs curl and iproute2"),
]
CONFIG = PCAPS / "emulated.toml"
HOLD = "import socket, sys, time; s = socket.create_connection((sys.argv[1], 80)); print('up', flush=True); time.sleep(20)"


@pytest.fixture(scope="module")
def emulated():
    workdir = _workdir()
    try:
        with live_in_lab(CONFIG, f"l4e{os.getpid() % 100000}", "l4e0", workdir, "--seed", "1") as running:
            yield running
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def curl(lab: Lab, url: str) -> bytes:
    return subprocess.run(["ip", "netns", "exec", lab.client, "curl", "-sS", "-g", "-m", "10", url],
                          capture_output=True, timeout=30, check=True).stdout


def test_curl_through_the_vip_gets_the_emulated_backend(emulated):
    lab, control = emulated
    # Nothing listens in the servers' namespace: every answer comes from l4emu's emulated hosts.
    assert subprocess.run(["ip", "netns", "pids", lab.servers], capture_output=True, text=True).stdout == ""
    got = [curl(lab, "http://10.0.0.100/") for _ in range(3)]
    assert sorted(got) == [b"served by 10.1.0.1:8080\n", b"served by 10.1.0.2:8080\n", b"served by 10.1.0.3:8080\n"]
    assert curl(lab, "http://[2001:db8::100]/") == b"served by [2001:db8:1::1]:8080\n"
    hosts = json.loads(l4emu("sockets", "--control", control, "--json").stdout)
    accepted = {h["host"]: h["counters"].get("accepted", 0) for h in hosts}
    assert accepted["10.1.0.1"] + accepted["10.1.0.2"] + accepted["10.1.0.3"] >= 3
    assert accepted["2001:db8:1::1"] >= 1


def test_an_open_connection_has_a_handle_in_sockets_and_conntrack(emulated):
    lab, control = emulated
    holder = subprocess.Popen(["ip", "netns", "exec", lab.client, sys.executable, "-c", HOLD, "10.0.0.100"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "up"
        text = l4emu("sockets", "--control", control).stdout
        estab = [line.split() for line in text.splitlines() if " ESTAB " in line]
        assert len(estab) == 1 and estab[0][-2].startswith("172.16.0.2:") and estab[0][-1] == "4"
        rows = [r for r in json.loads(l4emu("conntrack", "--control", control, "--json").stdout)
                if r["state"] == "ESTABLISHED"]
        assert [(r["source"], r["handle"]) for r in rows] == [(estab[0][-2], 4)]
        assert estab[0][-3] == rows[0]["destination"]
    finally:
        holder.kill()
        holder.wait()
