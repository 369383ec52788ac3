"""Stopping live mode, however it stops: the capture is finished (or removed) and the control socket goes,
also after dropping root with --user in directories only root may write; the text summary of a run
with emulated reals; --snaplen."""
from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

import pytest

from conftest import PCAPS
from test_live_lab import _workdir, l4emu, live_process_in_lab, wait_for

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="live mode tests need root (network namespaces, TUN)"),
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun"),
    pytest.mark.skipif(shutil.which("curl") is None or shutil.which("ip") is None, reason="needs curl and iproute2"),
]
CONFIG = PCAPS / "emulated.toml"


def epbs(path) -> list[tuple[int, int]]:
    """(captured, original) length of every packet in a pcapng file: a parser of its own, not l4emu's."""
    data = path.read_bytes()
    assert data[:4] == b"\x0a\x0d\x0d\x0a"
    out, pos = [], 0
    while pos < len(data):
        btype, blen = struct.unpack_from("=II", data, pos)
        assert blen >= 12 and pos + blen <= len(data), f"block at {pos} runs past the end"
        if btype == 6:
            out.append(struct.unpack_from("=II", data, pos + 20))
        pos += blen
    return out


def curl(lab, url="http://10.0.0.100/") -> bytes:
    return subprocess.run(["ip", "netns", "exec", lab.client, "curl", "-sS", "-m", "10", url],
                          capture_output=True, timeout=30, check=True).stdout


@pytest.fixture
def workdir():
    path = _workdir()           # root's, mode 0755: `nobody` may not create, rename or remove anything here
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_user_nobody_finishes_the_capture_and_removes_the_socket(workdir):
    out = workdir / "live.pcapng"
    with live_process_in_lab(CONFIG, f"l4p{os.getpid() % 100000}", "l4p0", workdir, "--seed", "1",
                             "--pcap-out", str(out), "--user", "nobody", "--snaplen", "64") as (lab, sock, live):
        assert os.stat(sock).st_uid == 65534 and (workdir / "live.pcapng.part").exists()
        for _ in range(3):
            assert curl(lab).startswith(b"served by 10.1.0.")
        assert l4emu("stats", "--control", sock).stdout.startswith("IP Virtual Server")
        live.send_signal(signal.SIGTERM)
        stdout, stderr = live.communicate(timeout=20)
        assert live.returncode == 0, stderr
        assert "Traceback" not in stderr
        # The text summary (not --json) of a run with emulated reals.
        assert "answers from emulated reals" in stdout and "tun          l4p0:" in stdout
        assert f"-> {out}" in stdout
        assert not os.path.exists(sock)
        assert sorted(p.name for p in workdir.iterdir()) == ["live.pcapng"]
        lengths = epbs(out)
        assert len(lengths) >= 3 * 8           # three HTTP exchanges, both directions
        assert all(caplen <= 64 for caplen, _ in lengths)
        assert any(orig > 64 and caplen == 64 for caplen, orig in lengths)     # the GETs and the answers, cut
        assert all(caplen == orig for caplen, orig in lengths if orig <= 64)


def test_user_nobody_killed_still_leaves_no_socket_and_no_part_file(workdir):
    out = workdir / "live.pcapng"
    with live_process_in_lab(CONFIG, f"l4k{os.getpid() % 100000}", "l4k0", workdir,
                             "--pcap-out", str(out), "--user", "nobody") as (lab, sock, live):
        assert curl(lab).startswith(b"served by")
        live.kill()                     # no finally runs in it: the helper that kept root cleans up
        live.wait(timeout=10)
        wait_for(lambda: not os.path.exists(sock) and not (workdir / "live.pcapng.part").exists(),
                 what="the socket and the .part file to go")
        assert list(workdir.iterdir()) == []


def test_emulated_text_summary_with_no_traffic(workdir):
    with live_process_in_lab(CONFIG, f"l4q{os.getpid() % 100000}", "l4q0", workdir) as (lab, sock, live):
        live.send_signal(signal.SIGINT)
        stdout, stderr = live.communicate(timeout=20)
        assert live.returncode == 0, stderr
        # Nothing asked the VIPs (the kernel may send a router solicitation or two into the TUN).
        assert re.search(r"^packets      \d+ read \(\+0 answers from emulated reals\), no output file", stdout, re.M)
        assert "emulated     7 hosts:" in stdout
        assert not os.path.exists(sock)


def test_snaplen_needs_pcap_out():
    done = l4emu("live", "--tun", "l4none0", "--snaplen", "64", check=False)
    assert done.returncode == 2 and done.stderr == "l4emu: error: --snaplen is for --pcap-out: give --pcap-out too\n"


def test_a_capture_that_cannot_be_made_stops_live_in_one_line_and_leaves_no_socket(workdir):
    ns = f"l4n{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        sock = workdir / "ctl.sock"
        done = l4emu("live", "--netns", ns, "--tun", "l4n0", "--create", "--control", str(sock),
                     "--pcap-out", str(workdir / "missing" / "live.pcapng"), "--user", "nobody", check=False)
        assert done.returncode == 2
        assert done.stderr == (f"l4emu: error: {workdir}/missing/live.pcapng: cannot create "
                               f"{workdir}/missing/live.pcapng.part: No such file or directory\n")
        assert list(workdir.iterdir()) == []
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)


def test_the_daemon_logs_one_line_per_event(workdir):
    """--log-level info: a real set down and up, a refused request and the stop, each one timestamped line."""
    with live_process_in_lab(CONFIG, f"l4g{os.getpid() % 100000}", "l4g0", workdir,
                             "--log-level", "info") as (lab, sock, live):
        l4emu("real", "set", "10.1.0.1:8080", "--down", "--control", sock)
        l4emu("real", "set", "10.1.0.1:8080", "--up", "--control", sock)
        refused = l4emu("real", "set", "10.9.9.9:80", "--weight", "2", "--control", sock, check=False)
        assert refused.returncode == 2
        live.send_signal(signal.SIGTERM)
        _, stderr = live.communicate(timeout=20)
        assert live.returncode == 0, stderr
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} l4emu\[\d+\] "
    assert re.search(rf"^{stamp}INFO real 10\.1\.0\.1:8080: down \(control request\)$", stderr, re.M), stderr
    assert re.search(rf"^{stamp}INFO real 10\.1\.0\.1:8080: up \(control request\)$", stderr, re.M), stderr
    assert re.search(rf"^{stamp}WARNING control: request refused \(uid 0\): no real server 10\.9\.9\.9:80$",
                     stderr, re.M), stderr
    assert re.search(rf"^{stamp}INFO SIGTERM: stopping$", stderr, re.M), stderr
