"""Live mode with emulated reals under dr, tun (ipip, gue, gre) and fullnat (issue 15): real curl and a real UDP
socket in the lab's client namespace reach the VIP through `l4emu live`, the emulated app answers, and what the
control socket reports says how: Route/Tunnel/FullNat flows, dr and tun answers past the switch (`direct`, no
OutPkts), fullnat answers through it. A capture on the client's own interface shows every answer from the VIP
with good checksums, and a 300 KB upload (64 KiB TSO super-packets from the TUN, ICMP "fragmentation needed"
for a tunnel's smaller MTU) goes through as it does to a masq real."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from l4emu.live import control
from l4emu.live.lab import CLIENT4, CLIENT6, LB_CLIENT4, Lab
from test_emulated_forwarding import config_text
from test_live_emulated import curl, pytestmark  # noqa: F401  (root, /dev/net/tun, curl and iproute2)
from test_live_lab import _workdir, live_in_lab, wait_for

VIP4, VIP6 = "10.0.0.100", "2001:db8::100"
METHODS = ["dr", "ipip", "gue", "gre", "fullnat"]
NAMES = {"dr": "Route", "ipip": "Tunnel", "gue": "Tunnel", "gre": "Tunnel", "fullnat": "FullNat"}
UPLOAD = 300_000            # bytes: several 64 KiB super-packets
UDP_ASK = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(b"ping over udp", (sys.argv[1], 53))
data, peer = s.recvfrom(2048)
print(data.decode(), peer[0], peer[1])
"""


@pytest.fixture(scope="module", params=METHODS)
def lab(request):
    """One lab per method, `l4emu live` in it with tests/test_emulated_forwarding.py's config for the method
    (pcaps/emulated.toml's services, every real emulated and owning the VIP's port)."""
    method = request.param
    workdir = _workdir()
    config = workdir / f"{method}.toml"
    config.write_text(config_text(method))
    try:
        with live_in_lab(config, f"l4m{os.getpid() % 100000}", "l4m0", workdir, "--seed", "1") as (lab, sock):
            yield method, lab, sock, workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def udp_ask(lab: Lab, vip: str) -> str:
    return subprocess.run(["ip", "netns", "exec", lab.client, sys.executable, "-c", UDP_ASK, vip],
                          capture_output=True, text=True, timeout=30, check=True).stdout


def test_real_clients_get_the_emulated_answers_and_the_counters_say_how(lab):
    method, lab, sock, _ = lab
    # Nothing runs in the servers' namespace: every answer comes from l4emu's emulated hosts.
    assert subprocess.run(["ip", "netns", "pids", lab.servers], capture_output=True, text=True).stdout == ""
    got = sorted(curl(lab, f"http://{VIP4}/") for _ in range(2))
    assert got == [b"served by 10.1.0.1:80\n", b"served by 10.1.0.2:80\n"]
    assert curl(lab, f"http://[{VIP6}]/") == b"served by [2001:db8:1::1]:80\n"
    assert udp_ask(lab, VIP4) == f"ping over udp {VIP4} 53\n"       # the echo app, from the VIP's address

    rows = control.request(sock, "conntrack")
    assert {(r["protocol"], r["source"].rsplit(":", 1)[0]) for r in rows} >= {
        ("TCP", CLIENT4), ("TCP", f"[{CLIENT6}]"), ("UDP", CLIENT4)}
    assert {r["forward"] for r in rows} == {NAMES[method]}
    stats = control.request(sock, "stats")
    reals = [real for svc in stats["services"] for real in svc["reals"]]
    assert {real["forward"] for real in reals} == {NAMES[method]}
    emulated = stats["emulated"]
    assert emulated["answers"] >= 3 * 3 + 1 and emulated["syns"] >= 3        # 3 HTTP exchanges, 1 datagram
    if method == "fullnat":
        # The reals answer the local address, through the switch, which translates back to the VIP.
        assert "direct" not in emulated
        assert sum(real["out_pkts"] for real in reals) == emulated["answers"] == stats["stats"]["reply"]
    else:
        # The reals own the VIP and answer the client straight: the switch sees one direction only.
        assert emulated["direct"] == emulated["answers"]
        assert sum(real["out_pkts"] for real in reals) == 0 and stats["stats"]["reply"] == 0


def seen(pcap, display_filter: str) -> bool:
    """Does the capture (still being written) hold a packet matching the filter yet?"""
    return bool(subprocess.run(["tshark", "-r", str(pcap), "-Y", display_filter], capture_output=True,
                               text=True).stdout.strip())


PROBE_PORT = 9               # discard: nothing listens on the switch's namespace, the kernel says unreachable


def probe(lab: Lab) -> bool:
    """One datagram from the client to the switch's namespace's own address (not through the TUN)."""
    subprocess.run(["ip", "netns", "exec", lab.client, sys.executable, "-c",
                    f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'probe', "
                    f"('{LB_CLIENT4}', {PROBE_PORT}))"], check=True, timeout=30)
    return True


def test_a_capture_on_the_client_shows_every_answer_from_the_vip_with_good_checksums(lab):
    method, lab, sock, workdir = lab
    if shutil.which("dumpcap") is None or shutil.which("tshark") is None:
        pytest.skip("needs dumpcap and tshark")
    pcap = workdir / "client.pcapng"
    capture = subprocess.Popen(["ip", "netns", "exec", lab.client, "dumpcap", "-q", "-i", "c0", "-w", str(pcap),
                                "-f", "tcp or udp"], stderr=subprocess.PIPE, text=True)
    try:
        assert "Capturing on" in capture.stderr.readline()
        # dumpcap says so before its filter takes packets: the first exchange can be missed. Probe (a
        # datagram to the switch's own address on c1, past the TUN) until the capture shows one.
        wait_for(lambda: probe(lab) and seen(pcap, f"udp.dstport == {PROBE_PORT}"), what="the capture to start")
        assert curl(lab, f"http://{VIP4}/").startswith(b"served by ")
        assert curl(lab, f"http://[{VIP6}]/").startswith(b"served by ")
        assert udp_ask(lab, VIP4).startswith("ping over udp")
        # dumpcap hands packets over a block at a time: the last answer reaches the file a little later.
        wait_for(lambda: seen(pcap, "udp.srcport == 53"), what="the UDP answer in the capture")
    finally:
        capture.terminate()
        capture.wait(timeout=10)
    fields = subprocess.run(["tshark", "-r", str(pcap), "-o", "tcp.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
                             "-Y", f"ip.dst == {CLIENT4} or ipv6.dst == {CLIENT6}", "-T", "fields", "-E", "separator=,",
                             "-e", "ip.src", "-e", "ipv6.src", "-e", "tcp.checksum.status", "-e", "udp.checksum.status"],
                            capture_output=True, text=True, check=True).stdout.split()
    answers = [line.split(",") for line in fields]
    assert len(answers) >= 2 * 3 + 1, answers           # SYN-ACK, answer, FIN each; the datagram
    assert {ip4 or ip6 for ip4, ip6, _, _ in answers} == {VIP4, VIP6}
    assert {tcp or udp for _, _, tcp, udp in answers} == {"1"}        # 1: Good, each one as the client got it


def test_an_upload_in_super_packets_goes_through(lab):
    """The TUN hands l4emu 64 KiB TSO super-packets; each stands for segments that fit the MTU, as IPVS
    takes them (under a tunnel the first full-size segment gets ICMP fragmentation needed, and the
    client's smaller segments then fit). Held to the MTU whole, every one was refused and curl hung."""
    method, lab, sock, workdir = lab
    body = workdir / "body"
    body.write_bytes(b"u" * UPLOAD)
    gso_before = control.request(sock, "stats")["tun"]["gso_in"]
    for url in (f"http://{VIP4}/", f"http://[{VIP6}]/"):
        got = subprocess.run(["ip", "netns", "exec", lab.client, "curl", "-sS", "-g", "-m", "10", "--data-binary",
                              f"@{body}", url], capture_output=True, timeout=30)
        assert got.returncode == 0, got.stderr
        assert got.stdout.startswith(b"served by ")
    stats = control.request(sock, "stats")
    assert stats["tun"]["gso_in"] > gso_before
    too_big = stats["stats"]["dropped"].get("too_big", 0)
    assert (too_big > 0) == (method not in ("dr", "fullnat"))     # a full segment plus the tunnel's header
