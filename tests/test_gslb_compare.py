"""compare --gslb: pcaps/gslb.pcap through the GSLB once per policy, the per-site reports side by side.

Each run must be what `gslb replay` gives with that policy in the config; each policy's answers meet its
definition (failover: east, the first in the vips, until it fails; then only west); the series end at
the totals; the CLI prints, writes JSON and a plot, and refuses what does not go with --gslb."""

from __future__ import annotations

import json

import dns.message
import pytest
from scapy.all import TCP, UDP, PcapReader

from conftest import PCAPS, run_cli
from l4emu import schedulers
from l4emu.events import parse_event
from l4emu.gslb import config as gslbconfig
from l4emu.gslb.compare import compare, with_policy
from l4emu.gslb.replay import replay

CONFIG = PCAPS / "gslb.toml"
CAPTURE = PCAPS / "gslb.pcap"
POLICIES = ["topology", "rr", "failover", "least_conn"]
SITE_DOWN = "8:site-down:east"


def load():
    return gslbconfig.load(CONFIG, schedulers.catalog())


@pytest.fixture(scope="module")
def result():
    return compare(CAPTURE, load(), POLICIES, [parse_event(SITE_DOWN)], seed=1)


def queries_before(seconds: float) -> tuple[int, int]:
    """Queries for the record (NOERROR ones: type A, the domain) before and after `seconds`."""
    packets = list(PcapReader(str(CAPTURE)))
    start = float(packets[0].time)
    before = after = 0
    for p in packets:
        message = None
        if UDP in p and p[UDP].dport == 53:
            message = bytes(p[UDP].payload)
        elif TCP in p and p[TCP].dport == 53 and len(p[TCP].payload) > 2:  # the sample's TCP queries: whole
            message = bytes(p[TCP].payload)[2:]                           # but the split one (AAAA)
        if message is not None:
            try:
                q = dns.message.from_wire(message)
            except Exception:
                continue
            if q.question and q.question[0].name.to_text() == "www.example.com." and q.question[0].rdtype == 1:
                if float(p.time) - start < seconds:
                    before += 1
                else:
                    after += 1
    return before, after


def test_each_run_is_the_gslb_replay_of_that_policy(result):
    assert [run["policy"] for run in result["runs"]] == POLICIES
    for run in result["runs"]:
        alone = replay(CAPTURE, with_policy(load(), run["policy"]), events=[parse_event(SITE_DOWN)], seed=1)
        assert run["sites"] == alone["sites"] and run["dns"] == alone["dns"] and run["events"] == alone["events"]
        assert {r["policy"] for r in run["records"]} == {run["policy"]}


def test_policies_answer_by_their_definitions(result):
    by_policy = {run["policy"]: {s["site"]: s for s in run["sites"]} for run in result["runs"]}
    before, after = queries_before(8.0)
    # failover: every answer before east failed names east (first in the vips), every one after it west
    assert by_policy["failover"]["east"]["queries_answered"] == before
    assert by_policy["failover"]["west"]["queries_answered"] == after
    # rr alternates while both are up; topology follows the prefixes; all answer the same number of queries
    answered = {p: sum(s["queries_answered"] for s in sites.values()) for p, sites in by_policy.items()}
    assert set(answered.values()) == {before + after}
    assert by_policy["topology"]["east"]["queries_answered"] == 5  # four clients over UDP, one over TCP
    # the capture's clients connect where they did, whatever was answered
    assert {tuple(s["connections"] for s in sites.values()) for sites in by_policy.values()} == {(4, 8)}


def test_the_series_rise_to_the_totals_and_stop_at_the_end(result):
    for run in result["runs"]:
        series = run["over_time"]
        times = [s[0] for s in series]
        assert times == sorted(times) and times[0] == 0 and times[-1] == pytest.approx(result["span_s"], abs=1e-6)
        for column, key in ((1, "connections"), (2, "queries_answered")):
            for k, site in enumerate(run["sites"]):
                values = [s[column][k] for s in series]
                assert values == sorted(values) and values[-1] == site[key]
        # failover answers nothing with west before east fails (sample at or before 8 s)
        if run["policy"] == "failover":
            assert all(s[2][1] == 0 for s in series if s[0] < 8.0)


def test_same_seed_same_comparison():
    again = compare(CAPTURE, load(), ["hashed", "wrr"], [parse_event(SITE_DOWN)], seed=7)
    assert again == compare(CAPTURE, load(), ["hashed", "wrr"], [parse_event(SITE_DOWN)], seed=7)
    assert with_policy(load(), "wrr").records[0].weights == (1, 1)
    assert with_policy(load(), "failover").records[0].groups == (("east",), ("west",))


def test_cli_text_json_and_plot(tmp_path):
    args = ["compare", CAPTURE, "-c", CONFIG, "--gslb", "topology,rr,ratio", "--event", SITE_DOWN, "--seed", "1"]
    text = run_cli(*args).stdout
    rows = [line.split() for line in text.splitlines() if line.split()[:1] in (["east"], ["west"])]
    assert [(r[0], r[1]) for r in rows] == [(s, p) for s in ("east", "west") for p in ("topology", "rr", "wrr")]
    assert "8:site-down:east" in text
    data = json.loads(run_cli(*args, "--json").stdout)
    assert [run["policy"] for run in data["runs"]] == ["topology", "rr", "wrr"] and data["seed"] == 1
    pytest.importorskip("matplotlib")
    png = tmp_path / "sites.png"
    run_cli(*args, "--plot", png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--gslb", "topology,nearest"], "--gslb: unknown policy(s) nearest"),
        (["--gslb", "rr", "--simulate"], "--simulate do not go with it"),
        (["--gslb", "rr", "--event", "1:site-down:north"], "no site 'north'"),
    ],
)
def test_cli_refuses_in_one_line(extra, message):
    proc = run_cli("compare", CAPTURE, "-c", CONFIG, *extra, check=False)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_cli_needs_a_gslb_config():
    proc = run_cli("compare", CAPTURE, "--gslb", "rr", check=False)
    assert proc.returncode == 2 and "give a CAPTURE and -c" in proc.stderr
    plain = run_cli("compare", CAPTURE, "-c", PCAPS / "forwarding.toml", "--gslb", "rr", check=False)
    assert plain.returncode == 2 and "l4emu: error:" in plain.stderr


def test_a_run_keeps_no_wall_clock(result):
    assert all("elapsed_s" not in run for run in result["runs"])
