"""Health checks in the lab: stopping a real's server marks it down (new connections avoid it), starting it
again brings it back; in namespaces this module makes and removes."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

from test_live_lab import REALS, Running, _workdir, pytestmark, wait_for  # noqa: F401 (pytestmark: root, TUN)

from l4emu.config import DEFAULT_CONFIG
from l4emu.live import control

CHECK = '[service.check]\ntype = "http"\npath = "/"\ndelay_loop = 0.3\nconnect_timeout = 1\nretry = 1\n' \
        'delay_before_retry = 0.1\nrise = 2\n'


def down(sock) -> dict:
    return {r["address"]: r["down"] for svc in control.request(sock, "services") for r in svc["reals"]
            if svc["vip"] == "10.0.0.100:80"}


def test_a_stopped_server_is_marked_down_and_comes_back():
    workdir = _workdir()
    config = workdir / "lb.toml"
    default = DEFAULT_CONFIG.read_text()
    config.write_text(default.replace('scheduler = "rr"\n', 'scheduler = "rr"\n' + CHECK, 1))
    lab = Running(f"l4h{os.getpid() % 100000}", "l4h0", workdir, "-c", str(config))
    try:
        lab.start()
        wait_for(lambda: all(not d for d in down(lab.control).values()), what="every real up")
        lab.servers[1].kill()
        lab.servers[1].wait()
        wait_for(lambda: down(lab.control)["10.1.0.2:8080"], timeout=10, what="10.1.0.2 marked down")
        def from_client(real):      # the checks' GETs come from the switch's side (192.0.2.1)
            return len([line for line in lab.log(real) if line.startswith("172.16.0.2 ")])
        before = {real: from_client(real) for real in REALS}
        for _ in range(4):
            assert lab.curl() == b"hello\n"
        after = {real: from_client(real) - before[real] for real in REALS}
        assert any(line.startswith("192.0.2.1 ") for line in lab.log("10.1.0.1"))
        assert after == {"10.1.0.1": 2, "10.1.0.2": 0, "10.1.0.3": 2}
        # The server again: two checks in a row (rise = 2) bring the real back.
        again = subprocess.Popen(["ip", "netns", "exec", lab.lab.servers, sys.executable,
                                  str(workdir / "server.py"), "10.1.0.2", str(workdir / "www")],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        lab.servers.append(again)
        assert again.stdout.readline().strip() == "ready"
        wait_for(lambda: not down(lab.control)["10.1.0.2:8080"], timeout=10, what="10.1.0.2 back up")
        lab.live.send_signal(signal.SIGTERM)
        _, err = lab.live.communicate(timeout=20)
        assert "health: real 10.1.0.2:8080 (TCP 10.0.0.100:80) down: Connection refused (2 attempt(s))" in err
        assert "health: real 10.1.0.2:8080 (TCP 10.0.0.100:80) up: 2 check(s) in a row succeeded" in err
    finally:
        lab.stop()
        shutil.rmtree(workdir, ignore_errors=True)
