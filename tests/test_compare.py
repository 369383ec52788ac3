"""Events during a replay, `l4emu compare`, and `l4emu stats` on the bundled sample."""
from __future__ import annotations

import json

import pytest

from conftest import PCAPS, run_cli
from l4emu.events import EventError, parse_event

SAMPLE = PCAPS / "sample.pcap"


@pytest.mark.parametrize("text,expected", [
    ("5:down:10.1.0.2:8080", ("down", "10.1.0.2:8080", None)),
    ("0.5:up:[2001:db8:1::1]:8080", ("up", "[2001:db8:1::1]:8080", None)),
    ("9.5:weight:10.1.0.3:8080:4", ("weight", "10.1.0.3:8080", 4)),
])
def test_parse_event(text, expected):
    event = parse_event(text)
    assert (event.action, event.endpoint, event.weight) == expected and str(event) == text


@pytest.mark.parametrize("text", ["x:down:10.1.0.2:8080", "5:explode:10.1.0.2:8080", "5:weight:10.1.0.2:8080",
                                  "-1:down:10.1.0.2:8080", "5:down:"])
def test_bad_events_are_refused(text):
    with pytest.raises(EventError):
        parse_event(text)


def test_down_event_mid_replay_stops_new_flows_to_that_real():
    before = json.loads(run_cli("replay", SAMPLE, "--json").stdout)["new_connections"]
    after = json.loads(run_cli("replay", SAMPLE, "--json", "--event", "0:down:10.1.0.2:8080").stdout)
    assert before["10.1.0.2:8080"] > 0 and after["new_connections"]["10.1.0.2:8080"] == 0
    assert after["events"][0]["event"] == "0:down:10.1.0.2:8080"


def test_event_for_an_unknown_real_is_a_one_line_error():
    proc = run_cli("replay", SAMPLE, "--event", "1:down:10.9.9.9:1", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "10.9.9.9:1" in proc.stderr


def test_weight_event_changes_the_listed_weight(tmp_path):
    state = tmp_path / "state.json"
    run_cli("replay", SAMPLE, "--event", "9.5:weight:10.1.0.3:8080:4", "--state-out", state)
    text = run_cli("stats", state).stdout
    assert "  -> 10.1.0.3:8080                Masq    4" in text
    assert "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes" in text
    exact = run_cli("stats", state, "--exact").stdout
    assert "K " not in exact.split("OutBytes", 1)[1]


def test_compare_runs_each_scheduler_on_the_same_capture(tmp_path):
    plot = tmp_path / "cmp.png"
    result = json.loads(run_cli("compare", SAMPLE, "--schedulers", "rr,rr", "--event", "5:down:10.1.0.2:8080",
                                "--json", "--plot", plot).stdout)
    first, second = result["runs"]
    assert first["services"][0]["new_connections"] == second["services"][0]["new_connections"]
    assert sum(first["services"][0]["new_connections"]) == 30
    assert first["services"][0]["peak_active"][1] <= first["services"][0]["peak_active"][0]
    assert first["services"][0]["overprovisioning"] >= first["services"][0]["imbalance_mean"] >= 1.0
    assert first["events"][0]["connections_on_real"] >= 1
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    text = run_cli("compare", SAMPLE, "--schedulers", "rr").stdout
    assert "TCP 10.0.0.100:80: reals 10.1.0.1:8080  10.1.0.2:8080  10.1.0.3:8080" in text


def test_compare_refuses_an_unknown_scheduler():
    proc = run_cli("compare", SAMPLE, "--schedulers", "rr,nope", check=False)
    assert proc.returncode == 2 and "nope" in proc.stderr and "Traceback" not in proc.stderr
