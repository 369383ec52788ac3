"""The GSLB's authority on real sockets: `dig @10.53.0.1 www.example.com` from a namespace this module
makes (and removes, even on failure), answered by `l4emu gslb serve` in another."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import PCAPS

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root"),
    pytest.mark.skipif(shutil.which("dig") is None or shutil.which("ip") is None, reason="needs dig and iproute2"),
]
TAG = f"l4g{os.getpid() % 100000}"
SERVER_NS, CLIENT_NS = f"{TAG}s", f"{TAG}c"
CLIENTS = ("172.16.0.9", "192.168.0.9")  # close to east, close to west (pcaps/gslb.toml)


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def in_ns(ns, *args, **kwargs):
    return subprocess.run(["ip", "netns", "exec", ns, *args], capture_output=True, text=True, timeout=20, **kwargs)


@pytest.fixture(scope="module")
def lab():
    try:
        ip("netns", "add", SERVER_NS)
        ip("netns", "add", CLIENT_NS)
        ip("link", "add", f"{TAG}a", "netns", SERVER_NS, "type", "veth", "peer", "name", f"{TAG}b", "netns", CLIENT_NS)
        ip("-n", SERVER_NS, "addr", "add", "10.53.0.1/24", "dev", f"{TAG}a")
        ip("-n", CLIENT_NS, "addr", "add", "10.53.0.2/24", "dev", f"{TAG}b")
        for client in CLIENTS:
            ip("-n", CLIENT_NS, "addr", "add", f"{client}/32", "dev", f"{TAG}b")
        for ns, dev in ((SERVER_NS, f"{TAG}a"), (CLIENT_NS, f"{TAG}b")):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", dev, "up")
        ip("-n", SERVER_NS, "route", "add", "default", "via", "10.53.0.2")
        yield
    finally:
        for ns in (SERVER_NS, CLIENT_NS):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def serve(*args):
    """`l4emu gslb serve` in the server namespace, once it says it is serving."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        ["ip", "netns", "exec", SERVER_NS, sys.executable, "-m", "l4emu.cli", "gslb", "serve", "-c",
         str(PCAPS / "gslb.toml"), *args], stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stderr.readline()
    assert line.startswith("serving DNS on 10.53.0.1:53"), line
    return proc


def stop(proc):
    proc.terminate()
    try:
        return proc.communicate(timeout=10)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[1]


def dig(*args):
    done = in_ns(CLIENT_NS, "dig", "@10.53.0.1", "+time=2", "+tries=1", *args)
    return done.stdout


def test_dig_gets_each_client_its_sites_vip_over_udp_and_tcp(lab):
    proc = serve()
    try:
        east = dig("-b", CLIENTS[0], "www.example.com", "A")
        assert "status: NOERROR" in east and "flags: qr aa rd" in east
        assert dig("-b", CLIENTS[0], "+short", "www.example.com").split() == ["10.10.0.100"]
        assert dig("-b", CLIENTS[1], "+short", "www.example.com").split() == ["10.20.0.100"]
        assert dig("-b", CLIENTS[0], "+tcp", "+short", "www.example.com").split() == ["10.10.0.100"]
        assert dig("-b", CLIENTS[0], "+short", "+subnet=192.168.7.0/24", "www.example.com").split() == ["10.20.0.100"]
        assert "status: NXDOMAIN" in dig("-b", CLIENTS[0], "nosuch.example.com")
        assert "www.example.com.\t20\tIN\tA\t10.10.0.100" in east
    finally:
        tail = stop(proc)
    assert proc.returncode == 0 and "answered: NOERROR 5, NXDOMAIN 1" in tail, tail


def test_a_site_down_is_not_answered_and_refused_when_none_is_left(lab):
    proc = serve("--down", "east")
    try:
        assert dig("-b", CLIENTS[0], "+short", "www.example.com").split() == ["10.20.0.100"]
    finally:
        stop(proc)
    proc = serve("--down", "east", "--down", "west")
    try:
        assert "status: REFUSED" in dig("-b", CLIENTS[0], "www.example.com")  # fallback = "refuse"
    finally:
        stop(proc)
