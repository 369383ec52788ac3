"""Live mode end to end: real curl, real servers and the control socket, in namespaces this module makes and removes."""
from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from l4emu.live import control
from l4emu.live.lab import Lab

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="live mode tests need root (network namespaces, TUN)"),
    pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun"),
    pytest.mark.skipif(shutil.which("curl") is None or shutil.which("ip") is None, reason="needs curl and iproute2"),
]
REALS = ("10.1.0.1", "10.1.0.2", "10.1.0.3")
VIP = "10.0.0.100"
# http.server without the reverse-DNS lookup in server_bind (which would wait on a resolver the lab cannot
# reach), and with /slow: 20 chunks of 1000 bytes, 0.25 s apart, so a transfer is open for 5 s (several
# control requests, each a new process on a loaded machine, must see it open).
SERVER = """
import http.server, socketserver, sys, time
class Server(http.server.ThreadingHTTPServer):
    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/slow":
            return super().do_GET()
        self.send_response(200)
        self.send_header("Content-Length", "20000")
        self.end_headers()
        for _ in range(20):
            self.wfile.write(b"x" * 1000)
            self.wfile.flush()
            time.sleep(0.25)
handler = lambda *a: Handler(*a, directory=sys.argv[2])
server = Server((sys.argv[1], 8080), handler)
print("ready", flush=True)
server.serve_forever()
"""


def l4emu(*args, check=True):
    done = subprocess.run([sys.executable, "-m", "l4emu.cli", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode:
        raise AssertionError(f"{' '.join(args)} -> {done.returncode}: {done.stderr}")
    return done


def as_nobody(path: str, op: str, **args) -> subprocess.CompletedProcess:
    """The control client (the one the CLI uses) run as uid/gid 65534 with no other groups."""
    code = ("import json, sys; from l4emu.live import control\n"
            "try: print(json.dumps(control.request(sys.argv[1], sys.argv[2], **json.loads(sys.argv[3]))))\n"
            "except control.ControlError as exc: sys.exit(f'refused: {exc}')")
    # The system Python: a per-user interpreter (pyenv under /root) is out of nobody's reach; stdlib is enough.
    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 for the unprivileged client")
    return subprocess.run([python, "-c", code, path, op, json.dumps(args)], capture_output=True, text=True,
                          timeout=30, user=65534, group=65534, extra_groups=[], cwd="/",
                          env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)})


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def live_in_lab(config: Path, prefix: str, tun: str, workdir: Path, *extra: str):
    """A lab for `config` with `l4emu live` running in it; yields (lab, control socket path).
    Everything goes afterwards, whatever happened."""
    with live_process_in_lab(config, prefix, tun, workdir, *extra) as (lab, sock, _):
        yield lab, sock


@contextlib.contextmanager
def live_process_in_lab(config: Path, prefix: str, tun: str, workdir: Path, *extra: str):
    """As live_in_lab, and yields the `l4emu live` process too (to stop it, read its output)."""
    lab = Lab.from_config(config, prefix, tun)
    sock = str(workdir / "l4emu.sock")
    live = None
    try:
        lab.up()
        live = subprocess.Popen([sys.executable, "-m", "l4emu.cli", "live", "--netns", lab.lb, "--tun", lab.tun,
                                 "-c", str(config), "--control", sock, *extra],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: os.path.exists(sock) or live.poll() is not None, what="the control socket")
        assert live.poll() is None, live.communicate()
        yield lab, sock, live
    finally:
        if live is not None and live.poll() is None:
            live.kill()
            live.wait()
        lab.down()


class Running:
    """A lab with backends and `l4emu live` in it; everything stops and goes in stop(), whatever happened."""

    def __init__(self, prefix: str, tun: str, workdir: Path, *live_args: str):
        self.lab = Lab.from_config(None, prefix, tun)
        self.live_args = live_args
        self.workdir = workdir
        self.control = str(workdir / "l4emu.sock")
        self.live = None
        self.servers = []

    def start(self):
        self.lab.up()
        (self.workdir / "www").mkdir()
        (self.workdir / "www" / "index.html").write_text("hello\n")
        (self.workdir / "www" / "big").write_bytes(os.urandom(1 << 20))
        script = self.workdir / "server.py"
        script.write_text(SERVER)
        for real in REALS:
            log = open(self.workdir / f"{real}.log", "w")
            proc = subprocess.Popen(["ip", "netns", "exec", self.lab.servers, sys.executable, str(script), real,
                                     str(self.workdir / "www")], stdout=subprocess.PIPE, stderr=log, text=True)
            assert proc.stdout.readline().strip() == "ready"
            self.servers.append(proc)
        self.live = subprocess.Popen(
            [sys.executable, "-m", "l4emu.cli", "live", "--netns", self.lab.lb, "--tun", self.lab.tun,
             "--control", self.control, "--control-group", "nogroup", *self.live_args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: os.path.exists(self.control) or self.live.poll() is not None, what="the control socket")
        assert self.live.poll() is None, self.live.communicate()
        return self

    def curl(self, path="/", *extra, background=False):
        cmd = ["ip", "netns", "exec", self.lab.client, "curl", "-sS", "-m", "20", *extra, f"http://{VIP}{path}"]
        if background:
            return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return subprocess.run(cmd, capture_output=True, timeout=30, check=True).stdout

    def log(self, real) -> list[str]:
        return [line for line in (self.workdir / f"{real}.log").read_text().splitlines() if '"GET ' in line]

    def stop(self):
        if self.live and self.live.poll() is None:
            self.live.kill()
            self.live.wait()
        self.lab.down()
        for proc in self.servers:
            proc.kill()
            proc.wait()


def _workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="l4emu-live-"))
    path.chmod(0o755)       # `nobody` must reach the control socket (the socket's own mode still applies)
    return path


@pytest.fixture(scope="module")
def running():
    workdir = _workdir()
    lab = Running(f"l4t{os.getpid() % 100000}", "l4t0", workdir)
    try:
        yield lab.start()
    finally:
        lab.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_curl_through_the_vip_spreads_requests_round_robin(running):
    before = {real: len(running.log(real)) for real in REALS}
    for _ in range(6):
        assert running.curl() == b"hello\n"
    got = {real: len(running.log(real)) - before[real] for real in REALS}
    assert got == {real: 2 for real in REALS}
    # Full NAT toward the reals keeps the client's address: the servers see the client, not the switch.
    assert all(line.startswith("172.16.0.2 ") for real in REALS for line in running.log(real))
    # The offloads are in use: the 1 MiB reply arrives intact through 64 KiB super-packets.
    body = running.curl("/big")
    assert body == (running.workdir / "www" / "big").read_bytes()
    stats = l4emu("stats", "--control", running.control, "--json").stdout
    assert '"address": "10.1.0.1:8080"' in stats


UDP_SINK = """
import selectors, socket, sys
sel = selectors.DefaultSelector()
for real in sys.argv[1:]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((real, 53))
    sel.register(sock, selectors.EVENT_READ)
print("ready", flush=True)
got = []
while sel.select(timeout=2.0):
    for key, _ in sel.select(timeout=0):
        got.append(key.fileobj.recv(65535).hex())
print(" ".join(got))
"""
UDP_SOURCE = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for n, line in enumerate(sys.stdin):
    sock.sendto(bytes.fromhex(line), (sys.argv[1], 53))
    if n % 32 == 31:
        time.sleep(0.002)                                   # bursts of 32, within the TUN's queue
"""


def udp_bursts() -> list[bytes]:
    """40 bursts of 32 numbered 64-byte datagrams; some end short, some have a longer one inside."""
    sent = []
    for burst in range(40):
        for k in range(32):
            size = 20 if (burst % 5, k) == (4, 31) else 200 if (burst % 7, k) == (6, 10) else 64
            sent.append(struct.pack("!HH", burst, k).ljust(size, b"u"))
    return sent


def udp_through(lab: Lab, vip: str, reals: list[str]) -> list[bytes]:
    """Send udp_bursts() from the client namespace to vip:53; what the reals' port 53 received, in order."""
    family = "AF_INET6" if ":" in vip else "AF_INET"
    sink = subprocess.Popen(["ip", "netns", "exec", lab.servers, sys.executable, "-c",
                             UDP_SINK.replace("AF_INET,", f"{family},"), *reals], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout.readline().strip() == "ready"
        subprocess.run(["ip", "netns", "exec", lab.client, sys.executable, "-c",
                        UDP_SOURCE.replace("AF_INET,", f"{family},"), vip],
                       input="".join(d.hex() + "\n" for d in udp_bursts()), text=True, check=True, timeout=30)
        return [bytes.fromhex(h) for h in sink.communicate(timeout=30)[0].split()]
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()


def test_udp_bursts_arrive_whole_and_in_order_through_gso_writes(running):
    """Consecutive datagrams of one flow leave the TUN as one GSO write; the real gets each one intact."""
    before = control.request(running.control, "stats")["tun"]["gso_out"]
    assert udp_through(running.lab, VIP, ["10.1.0.11", "10.1.0.12"]) == udp_bursts()
    assert control.request(running.control, "stats")["tun"]["gso_out"] > before


def test_udp_bursts_over_ipv6_arrive_whole_through_gso_writes(tmp_path):
    config = tmp_path / "v6.toml"
    config.write_text('[[service]]\nvip = "[2001:db8::100]:53"\nprotocol = "udp"\n'
                      '  [[service.real]]\n  address = "[2001:db8:1::1]:53"\n')
    with live_in_lab(config, f"l4u{os.getpid() % 100000}", "l4u0", tmp_path) as (lab, sock):
        assert udp_through(lab, "2001:db8::100", ["2001:db8:1::1"]) == udp_bursts()
        assert control.request(sock, "stats")["tun"]["gso_out"] > 0


def established(running) -> list[dict]:
    """The VIP's ESTABLISHED flows, asked in-process (quick: a CLI process may take seconds on a loaded machine)."""
    return [row for row in control.request(running.control, "conntrack")
            if row["state"] == "ESTABLISHED" and row["virtual"] == f"{VIP}:80"]


def test_control_lists_established_flows_and_refuses_admin_from_nobody(running):
    transfer = running.curl("/slow", "-o", "/dev/null", background=True)
    try:
        wait_for(lambda: established(running), what="an established flow")
        assert re.search(r"TCP \d\d:\d\d  ESTABLISHED 172\.16\.0\.2:\d+ +10\.0\.0\.100:80 +10\.1\.0\.\d:8080",
                         l4emu("conntrack", "--control", running.control).stdout)
        # Read-only requests are open to the socket's group (nogroup here); admin ones are not.
        rows = json.loads(as_nobody(running.control, "conntrack").stdout)
        assert any(r["state"] == "ESTABLISHED" and r["virtual"] == "10.0.0.100:80" for r in rows)
        denied = as_nobody(running.control, "set_real", endpoint="10.1.0.1:8080", weight=0)
        assert denied.returncode == 1 and "admin request" in denied.stderr and "uid 65534" in denied.stderr
        assert "Masq    1 " in l4emu("stats", "--control", running.control).stdout
    finally:
        transfer.kill()
        transfer.wait()


def test_drained_real_takes_no_new_connections_and_finishes_open_ones(running):
    transfer = running.curl("/slow", background=True)
    try:
        wait_for(lambda: established(running), what="the slow transfer")
        drained = established(running)[0]["destination"]
        l4emu("real", "set", drained, "--weight", "0", "--control", running.control)
        before = {real: len(running.log(real)) for real in REALS}
        for _ in range(4):
            assert running.curl() == b"hello\n"
        after = {real: len(running.log(real)) for real in REALS}
        assert after[drained.split(":")[0]] == before[drained.split(":")[0]]
        assert sum(after.values()) - sum(before.values()) == 4
        out, _ = transfer.communicate(timeout=20)
        assert transfer.returncode == 0 and out == b"x" * 20000
    finally:
        if transfer.poll() is None:
            transfer.kill()
        l4emu("real", "set", drained, "--weight", "1", "--control", running.control, check=False)


def test_sigterm_stops_cleanly_and_lab_down_leaves_nothing():
    workdir = _workdir()
    lab = Running(f"l4s{os.getpid() % 100000}", "l4s0", workdir)
    try:
        lab.start()
        assert lab.curl() == b"hello\n"
        made = subprocess.Popen(["ip", "netns", "exec", lab.lab.lb, sys.executable, "-m", "l4emu.cli", "live",
                                 "--tun", "l4made0", "--create"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_for(lambda: "l4made0" in subprocess.run(["ip", "-n", lab.lab.lb, "link"], capture_output=True,
                                                      text=True).stdout, what="the --create device")
        outputs = {}
        for name, proc in (("live", lab.live), ("made", made)):
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=10)
            assert proc.returncode == 0, err
            outputs[name] = out if isinstance(out, str) else out.decode()
        assert "new conns    10.1.0.1:8080                    1" in outputs["live"]
        assert "tun          l4s0:" in outputs["live"]
        assert "l4made0" not in subprocess.run(["ip", "-n", lab.lab.lb, "link"], capture_output=True, text=True).stdout
        assert not os.path.exists(lab.control)
        server_pids = [proc.pid for proc in lab.servers]
        assert set(lab.lab.down()) == {lab.lab.client, lab.lab.lb, lab.lab.servers}
        assert not lab.lab.exists()
        for pid in server_pids:
            wait_for(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), what=f"process {pid} to end")
        assert "l4s0" not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    finally:
        lab.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def test_real_down_shows_in_stats_and_the_group_form_of_control_works(running):
    """`l4emu real --control SOCK set ...` (as the README shows it) and `real set ... --control SOCK` both work;
    a real marked down says so in the stats text; --down with --up is refused."""
    done = l4emu("real", "--control", running.control, "set", "10.1.0.3:8080", "--down")
    assert done.stdout == "10.1.0.3:8080: down\n"
    try:
        text = l4emu("stats", "--control", running.control).stdout.splitlines()
        assert text[2].split()[-1] == "State"
        row = next(line for line in text if "-> 10.1.0.3:8080" in line)
        assert row.split()[-1] == "down" and row.split()[3] == "1"      # weight unchanged: only the state says so
        assert next(line for line in text if "-> 10.1.0.1:8080" in line).split()[-1] != "down"
        before = {real: len(running.log(real)) for real in REALS}
        for _ in range(4):
            assert running.curl() == b"hello\n"
        assert len(running.log("10.1.0.3")) == before["10.1.0.3"]
        refused = l4emu("real", "set", "10.1.0.3:8080", "--down", "--up", "--control", running.control, check=False)
        assert (refused.returncode, refused.stderr) == (2, "l4emu: error: --down and --up are mutually exclusive\n")
    finally:
        l4emu("real", "set", "10.1.0.3:8080", "--up", "--control", running.control)
    assert "State" not in l4emu("stats", "--control", running.control).stdout


def _frames(output: str) -> list[str]:
    return [f for f in output.split("Every ")[1:]]


def test_stats_watch_into_a_pipe_prints_frames_with_a_header_and_no_escapes(running):
    watch = subprocess.Popen([sys.executable, "-m", "l4emu.cli", "stats", "--control", running.control,
                              "--watch", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
    finally:
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=10)
    assert watch.returncode == 0 and err == ""
    assert "\033" not in out
    frames = _frames(out)
    assert len(frames) >= 3
    for frame in frames:
        assert re.match(rf"0\.2s: l4emu stats --control {re.escape(running.control)} --watch 0\.2  "
                        r"\w{3} \w{3} \d\d \d\d:\d\d:\d\d \d{4}\n\nIP Virtual Server", frame)
    assert "CPS    InPPS" in frames[1]                     # rates from the second frame on
    # Frames follow each other, one blank line between them.
    assert out.startswith("Every ") and out.count("\n\nEvery ") == len(frames) - 1 and "\n\n\n" not in out


def test_stats_watch_count_stops_after_that_many_frames(running):
    out = l4emu("stats", "--control", running.control, "--watch", "0.1", "--count", "3").stdout
    assert len(_frames(out)) == 3


def test_stats_watch_on_a_terminal_redraws_in_place(running):
    import pty
    master, slave = pty.openpty()
    watch = subprocess.Popen([sys.executable, "-m", "l4emu.cli", "stats", "--control", running.control,
                              "--watch", "0.2"], stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 10
        while out.count(b"\033[H\033[2J") < 3 and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                out += os.read(master, 65536)
    finally:
        watch.send_signal(signal.SIGINT)
        watch.communicate(timeout=10)
        os.close(master)
    screens = out.decode().replace("\r\n", "\n").split("\033[H\033[2J")
    assert screens[0] == "" and len(screens) >= 4           # every frame starts by clearing the screen
    assert all(s.startswith("Every 0.2s: l4emu stats --control ") for s in screens[1:])
    assert watch.returncode == 0


def test_lab_gives_the_tun_a_deep_queue(running):
    """The kernel's 500-packet TUN queue lost half of a 64-byte UDP flood in live_bench; the lab sets 4096."""
    qlen = subprocess.run(["ip", "netns", "exec", running.lab.lb, "cat", f"/sys/class/net/{running.lab.tun}/tx_queue_len"],
                          capture_output=True, text=True, check=True).stdout
    assert int(qlen) == 4096
