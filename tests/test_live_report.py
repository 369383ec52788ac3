"""`l4emu report --control`: a running live switch in the lab, real curl through it, the page it writes
held to the control socket's own snapshot and opened in headless Chromium."""
from __future__ import annotations

import os
import shutil
import time

import pytest
from test_live_lab import REALS, Running, _workdir, l4emu, pytestmark, wait_for  # noqa: F401 (pytestmark: root, TUN)
from test_report import CHROMIUM, Tables, _chromium, _console_errors

from l4emu.live import control
from l4emu.live.history import INTERVAL_S


@pytest.fixture(scope="module")
def running():
    workdir = _workdir()
    lab = Running(f"l4r{os.getpid() % 100000}", "l4r0", workdir)
    try:
        yield lab.start()
    finally:
        lab.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def settled(running) -> dict:
    """The control socket's snapshot once the packet counters stop moving (the last FIN/ACKs are in)."""
    seen = {}

    def stable():
        before = control.request(running.control, "stats")["stats"]["packets"]
        time.sleep(0.3)
        seen.update(snapshot=control.request(running.control, "snapshot"))
        return seen["snapshot"]["stats"]["packets"] == before
    wait_for(stable, what="the counters to settle")
    return seen["snapshot"]


def test_the_page_of_a_live_switch_shows_its_counts(running, tmp_path):
    time.sleep(2 * INTERVAL_S)  # a few samples before the traffic
    for _ in range(6):
        assert running.curl() == b"hello\n"
    l4emu("real", "set", "10.1.0.2:8080", "--weight", "2", "--control", running.control)
    for _ in range(3):
        assert running.curl() == b"hello\n"
    snapshot = settled(running)
    page_path = tmp_path / "live.html"
    done = l4emu("report", "--control", running.control, "-o", str(page_path))
    assert done.stdout.strip() == f"report written to {page_path}"
    after = control.request(running.control, "snapshot")
    page = page_path.read_text()
    assert after["stats"]["packets"] == snapshot["stats"]["packets"], "traffic while the page was made"
    parsed = Tables(page)
    shown = parsed.table("real")
    reals = {(f"{s['protocol']} {s['vip']}", r["address"]): r for s in snapshot["services"] for r in s["reals"]}
    assert {(row[0], real) for real, row in shown.items()} == set(reals)
    for real, row in shown.items():
        counters = reals[(row[0], real)]
        assert [int(row[1]), int(row[2])] == [counters["conns"], counters["active"]], real
    # rr, then 10.1.0.2 at weight 2 (wrr is not rr: rr ignores weights): 3 each
    assert {real: int(shown[f"{real}:8080"][1]) for real in REALS} == {real: 3 for real in REALS}
    figures = parsed.table("figure")
    assert int(figures["new connections"][0]) == sum(r["conns"] for r in reals.values()) == 9
    assert int(figures["packets"][0]) == snapshot["stats"]["packets"] > 0
    states = {k: int(v[0]) for k, v in parsed.table("protocol and state").items()}
    assert sum(states.values()) == len(snapshot["connections"]) == 9
    assert states == {"TCP TIME_WAIT": 9} or set(states) <= {"TCP TIME_WAIT", "TCP CLOSE", "TCP FIN_WAIT"}
    assert [label for label in parsed.table("seconds").values()] == [["10.1.0.2:8080 weight 2"]]
    assert page.count("<svg") == 4 and "<polygon" in page and "one every 1 s" in page
    # the ring: a sample a second since live started (a few seconds ago), the last one when asked
    timeline = control.request(running.control, "timeline")
    samples = timeline["samples"]
    assert len(samples) >= 3 and samples[0]["t"] == 0
    steps = [b["t"] - a["t"] for a, b in zip(samples[:-2], samples[1:-1])]
    assert all(0.5 * INTERVAL_S <= step <= 3 * INTERVAL_S for step in steps), steps
    assert sum(samples[-1]["states"].values()) == len(timeline["snapshot"]["connections"])
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium): the page was not rendered")
    dom = _chromium("--dump-dom", page_path.as_uri())
    assert dom.returncode == 0, dom.stderr
    assert dom.stdout.count("<svg") == 4 and "<td>10.1.0.3:8080</td>" in dom.stdout
    screenshot = tmp_path / "live.png"
    shot = _chromium(
        "--enable-logging=stderr", "--v=0", f"--screenshot={screenshot}", "--window-size=1200,2000", page_path.as_uri()
    )
    print(f"screenshot of the live report: {screenshot}")
    assert shot.returncode == 0, shot.stderr
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000
    assert _console_errors(shot.stderr) == []


def test_report_control_refuses_what_it_cannot_reach(tmp_path):
    done = l4emu("report", "--control", str(tmp_path / "none.sock"), "-o", str(tmp_path / "x.html"), check=False)
    assert done.returncode == 2 and "No such file or directory" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x.html").exists()
