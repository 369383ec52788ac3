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


def test_live_answers_dig_for_the_gslb_address_on_its_tun():
    """`l4emu live --gslb` in the lab (namespaces l4g...t-*): the GSLB's listen address is routed into the
    TUN like a VIP, and dig from the lab's client gets its site's VIP from the switch's own loop, over UDP
    and over TCP."""
    from ipaddress import ip_address

    from l4emu.live.lab import Lab

    lab = Lab.from_config(None, f"{TAG}t", f"{TAG}t0")
    lab.vips.append(ip_address("10.53.0.1"))
    live = None
    try:
        lab.up()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        live = subprocess.Popen(
            [sys.executable, "-m", "l4emu.cli", "live", "--netns", lab.lb, "--tun", lab.tun, "--gslb",
             str(PCAPS / "gslb.toml"), "--seed", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env)
        line = live.stderr.readline()
        assert line.startswith(f"live on {lab.tun}"), line + (live.stderr.read() if live.poll() is not None else "")

        def ask(*args):
            return in_ns(lab.client, "dig", "@10.53.0.1", "+time=2", "+tries=2", *args).stdout

        full = ask("www.example.com", "A")
        assert "status: NOERROR" in full and "flags: qr aa rd" in full  # the lab's client is 172.16.0.2: east
        assert "www.example.com.\t20\tIN\tA\t10.10.0.100" in full
        assert ask("+short", "+subnet=192.168.7.0/24", "www.example.com").split() == ["10.20.0.100"]
        assert "status: NXDOMAIN" in ask("nosuch.example.com")
        assert ask("+tcp", "+short", "www.example.com").split() == ["10.10.0.100"]  # the TUN's TCP side
        live.terminate()
        out, err = live.communicate(timeout=20)
        assert live.returncode == 0, err
        assert "dns          NOERROR 3, NXDOMAIN 1" in out, out
        assert "dns over tcp accepted 1" in out and "dns_queries 1" in out, out
    finally:
        if live is not None and live.poll() is None:
            live.kill()
            live.wait()
        lab.down()
