"""`l4emu report`: the HTML page's numbers are the replay's, every string is escaped, the page stands
alone (no script, nothing fetched), and headless Chromium renders it without a console error."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser

import pytest

from conftest import PCAPS, run_cli
from l4emu.events import parse_event
from l4emu.render.html import report_html, state_html
from l4emu.replay import replay
from l4emu.switch import Switch
from l4emu.timeline import record

SAMPLE = PCAPS / "sample.pcap"
EVENT = "5.0:down:10.1.0.2:8080"
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


class Tables(HTMLParser):
    """The page's tables as lists of rows of cell texts (unescaped, as a reader sees them), and its tags."""

    def __init__(self, page: str):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.tags: list[tuple[str, dict]] = []
        self.cell: list[str] | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)

    def rows(self, first_header: str) -> list[list[str]]:
        """The rows (header row left out) of the table whose first column is headed `first_header`."""
        for table in self.tables:
            if table[0][0] == first_header:
                return table[1:]
        raise AssertionError(f"no table headed {first_header!r}")

    def table(self, first_header: str) -> dict[str, list[str]]:
        """As rows, keyed by the first cell: first cell -> the row's other cells."""
        return {row[0]: row[1:] for row in self.rows(first_header)}


@pytest.fixture(scope="module")
def timeline():
    return record(SAMPLE, Switch.from_config(None).config, [parse_event(EVENT)], seed=5)


def test_the_page_shows_the_replays_numbers(timeline):
    # an independent replay with the same capture, config, event and seed, not sampled
    switch = Switch.from_config(None, seed=5)
    summary = replay(SAMPLE, switch, events=[parse_event(EVENT)])
    page = Tables(report_html(timeline))
    shown = page.table("figure")
    assert int(shown["packets"][0]) == summary["packets"] > 0
    assert int(shown["translated"][0]) == summary["translated"]
    assert int(shown["new connections"][0]) == sum(summary["new_connections"].values()) > 0
    assert int(shown["peak connections in the table"][0]) == summary["peak_connections"]
    assert int(shown["connections at the end"][0]) == summary["final_connections"]
    assert int(shown["dropped"][0]) == sum(summary["dropped"].values())
    reals = page.table("real")
    assert set(reals) == set(summary["new_connections"])
    for real, row in reals.items():
        assert int(row[1]) == summary["new_connections"][real]
    events = page.table("event")
    assert list(events) == [e["event"] for e in summary["events"]] and len(events) == 1
    for effect in summary["events"]:
        figures = ("connections_on_real", "rescheduled", "broken", "blackholed")
        assert [int(c) for c in events[effect["event"]]] == [effect[k] for k in figures]
    states = page.table("protocol and state")
    assert sum(int(v[0]) for v in states.values()) == summary["final_connections"]
    # the states chart ends where the unsampled replay ends: its table, state by state
    unsampled = Counter(row["state"] for row in switch.snapshot()["connections"])
    assert timeline["samples"][-1]["states"] == unsampled and sum(unsampled.values()) > 10
    areas = [a["data-name"] for t, a in page.tags if t == "polygon"]
    assert set(areas) == {name for s in timeline["samples"] for name in s["states"]} >= set(unsampled)
    # ... in the datapath's order of states (IPVS's), whichever sample saw each first
    assert areas == [name for name in timeline["state_names"] if name in areas]


def test_the_states_chart_stacks_the_samples(timeline):
    page = Tables(report_html(timeline))
    areas = {a["data-name"]: a["points"] for t, a in page.tags if t == "polygon"}
    samples = timeline["samples"]
    assert {"SYN_RECV", "ESTABLISHED", "TIME_WAIT", "UDP"} <= set(areas)
    # the top edge of the last area is the total of every state at each sample: the table's
    # entries (the default config has no persistence templates)
    last = list(areas.values())[-1].split()[: len(samples)]
    tops = [float(point.split(",")[1]) for point in last]
    entries = [s["table_used"] for s in samples]
    assert [sum(s["states"].values()) for s in samples] == entries
    peak = max(entries)
    # y = TOP + plot_h * (1 - v / y_max): the highest total is the highest point, the empty table the floor
    assert min(tops) == tops[entries.index(peak)] and max(tops) == tops[entries.index(min(entries))]


def test_the_series_add_up_to_the_totals(timeline):
    samples = timeline["samples"]
    assert 150 <= len(samples) <= 202  # 200 steps of the span, plus the end
    assert [s["t"] for s in samples] == sorted(s["t"] for s in samples)
    assert samples[-1]["t"] == pytest.approx(timeline["span_s"], abs=1e-6)
    new = timeline["summary"]["new_connections"]
    assert {r["real"]: samples[-1]["conns"][i] for i, r in enumerate(timeline["reals"])} == new
    # the down real takes no new connection after its event
    down = [r["real"] for r in timeline["reals"]].index("10.1.0.2:8080")
    after = [s["conns"][down] for s in samples if s["t"] > 5.0 + timeline["span_s"] / 200]
    assert after and len(set(after)) == 1


def test_the_page_stands_alone(timeline):
    page = report_html(timeline)
    tags = Tables(page).tags
    assert not [t for t, _ in tags if t in ("script", "link", "img", "iframe", "object")]
    assert not [a for _, a in tags if "src" in a or "href" in a]
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", page)
    assert sum(t == "svg" for t, _ in tags) == 4  # new and active per real, table, states; no drop to draw
    assert "No packet was dropped." in page
    names = [a["data-name"] for t, a in tags if t == "polyline"]
    assert "entries" in names
    for real in timeline["reals"]:  # legends name the service too: the default config has several
        assert names.count(f"{real['real']} ({real['service']})") == 2


def test_drops_by_reason_over_time(tmp_path):
    config = Switch.from_config(PCAPS / "forwarding.toml").config
    data = record(PCAPS / "forwarding.pcap", config, seed=2)
    dropped = data["summary"]["dropped"]
    assert dropped and sum(dropped.values()) >= 3
    page = report_html(data, config_name="forwarding.toml")
    parsed = Tables(page)
    assert {k: int(v[0]) for k, v in parsed.table("reason").items()} == dropped
    assert sum(t == "svg" for t, _ in parsed.tags) == 5
    lines = {a["data-name"]: a["points"] for t, a in parsed.tags if t == "polyline"}
    assert set(dropped) <= set(lines)
    # per interval: the drops over all samples add up to the total of each reason
    for reason, total in dropped.items():
        cumulative = [s["dropped"].get(reason, 0) for s in data["samples"]]
        assert cumulative[-1] == total and cumulative == sorted(cumulative)


HOSTILE = '<script>alert("x")</script>&amp;\'"'


def test_every_string_is_escaped(timeline):
    forged = json.loads(json.dumps(timeline))
    forged["capture"] = HOSTILE
    forged["reals"][0]["real"] = HOSTILE
    forged["event_marks"][0]["label"] = HOSTILE
    forged["summary"]["events"][0]["event"] = HOSTILE
    forged["snapshot"]["connections"][0]["state"] = HOSTILE
    forged["samples"][-1]["dropped"][HOSTILE] = 1
    forged["samples"][-1]["states"][HOSTILE] = 1
    page = report_html(forged, config_name=HOSTILE)
    assert "<script" not in page and "&amp;amp;" in page
    parsed = Tables(page)
    assert HOSTILE in parsed.table("real")  # the reader sees the text as it was
    assert f"TCP {HOSTILE}" in parsed.table("protocol and state")
    assert HOSTILE in {a.get("data-name") for t, a in parsed.tags if t == "polyline"}
    assert HOSTILE in {a.get("data-name") for t, a in parsed.tags if t == "polygon"}
    snapshot = json.loads(json.dumps(timeline["snapshot"]))
    snapshot["services"][0]["reals"][0]["address"] = HOSTILE
    snapshot["stats"]["dropped"][HOSTILE] = 3
    page = state_html(snapshot, HOSTILE)
    assert "<script" not in page
    assert Tables(page).table("reason")[HOSTILE] == ["3"]


def test_report_from_a_state_file(tmp_path):
    state = tmp_path / "state.json"
    run_cli("replay", SAMPLE, "--seed", "3", "--state-out", state)
    out = tmp_path / "state.html"
    proc = run_cli("report", "--from", state, "-o", out)
    assert proc.stdout.strip() == f"report written to {out}"
    page = out.read_text()
    assert "single snapshot" in page and "no time series" in page and "<svg" not in page
    snapshot = json.loads(state.read_text())
    shown = {(row[0], row[2]): row for row in Tables(page).rows("service")}
    expected = {(f"{s['protocol']} {s['vip']}", r["address"]): r for s in snapshot["services"] for r in s["reals"]}
    assert set(shown) == set(expected) and len(shown) == 7
    for key, real in expected.items():
        assert [int(c) for c in shown[key][3:]] == [real[k] for k in ("weight", "active", "inactive", "conns",
                                                                      "in_pkts", "out_pkts")]


def test_report_refuses_bad_input(tmp_path):
    out = tmp_path / "r.html"
    for args, words in [
        ((), "give a CAPTURE, --from STATE or --control SOCK"),
        ((SAMPLE, "--from", SAMPLE), "give a CAPTURE, --from STATE or --control SOCK"),
        (("--from", SAMPLE, "--control", "x.sock"), "(one of them)"),
        (("--control", "x.sock", "--seed", "3"), "--control: a live switch is reported as it is"),
        (("--control", "/nonexistent/l4emu.sock"), "/nonexistent/l4emu.sock: No such file or directory"),
        (("--from", SAMPLE), "not a state file"),
        ((SAMPLE, "--event", "1:explode:1.2.3.4:80"), "--event"),
        ((SAMPLE, "--schedulers", "rr,nope"), "nope"),
        ((SAMPLE, "-o", SAMPLE), "is the input capture"),
    ]:
        proc = run_cli("report", *args, *(() if "-o" in args else ("-o", out)), check=False)
        assert proc.returncode == 2, proc.stderr
        assert words in proc.stderr and "Traceback" not in proc.stderr
        assert proc.stderr.count("\n") == 1
    assert not out.exists() and not list(tmp_path.glob("*.part"))


def _chromium(*args: str, timeout: int = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _console_errors(stderr: str) -> list[str]:
    """What a page logged to its console as an error or warning, or an uncaught exception (Chromium
    writes each console message to stderr with --enable-logging=stderr as `CONSOLE(...)` lines)."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


@needs_chromium
def test_chromium_renders_the_report(tmp_path):
    page = tmp_path / "report.html"
    run_cli("report", SAMPLE, "--event", EVENT, "--schedulers", "rr,mh", "--seed", "7", "-o", page)
    dom = _chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr
    # the report's four (no drops in the sample), and one per scheduler and service compared (3 services)
    assert dom.stdout.count("<svg") == 4 + 2 * 3
    assert dom.stdout.count("<polygon") >= 3  # the states, stacked
    assert dom.stdout.count("<polyline") >= 3 * 4
    for real in ("10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"):
        assert f'data-name="{real} (TCP 10.0.0.100:80)"' in dom.stdout and f"<td>{real}</td>" in dom.stdout
    screenshot = tmp_path / "report.png"
    shot = _chromium(
        "--enable-logging=stderr", "--v=0", f"--screenshot={screenshot}", "--window-size=1200,2000", page.as_uri()
    )
    print(f"screenshot of the report: {screenshot}")
    assert shot.returncode == 0, shot.stderr
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000
    assert _console_errors(shot.stderr) == []
    # the check can fail: a page that logs an error is caught by the same reading of stderr
    broken = tmp_path / "broken.html"
    broken.write_text('<!DOCTYPE html><html><body><script>console.error("l4emu-probe")</script></body></html>')
    logged = _chromium("--enable-logging=stderr", "--v=0", "--dump-dom", broken.as_uri())
    assert any("l4emu-probe" in line for line in _console_errors(logged.stderr)), logged.stderr
