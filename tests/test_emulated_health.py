"""Health checks of emulated reals in replay and simulate: judged on the packet clock from each host's state.

The overloaded real (one worker, 1 s per request, half of 10 requests/s under rr) is checked over HTTP
every second with connect_timeout 2.5 s, one retry 0.5 s later, rise 2. The attempt at 0 s passes; at
1 s five requests are ahead of the check (about 6 s to an answer), so it and its retry fail: down at
1.5 s. The real then gets no new work and drains the eight requests it holds (the last ends near 8 s);
the attempt at 7.5 s finds one in service (about 2 s to an answer: passes) and the one at 8.5 s none,
so it is back at 8.5 s, rr gives it half again, and it fails again at 10 s.
"""
from __future__ import annotations

import json

import pytest
from scapy.all import IP, TCP, rdpcap

from conftest import run_cli
from l4emu import config as configmod
from l4emu import schedulers
from l4emu.checks import live_refusal
from l4emu.emulated_checks import answer_delay
from l4emu.events import parse_event
from l4emu.replay import replay
from l4emu.simulate import simulate
from l4emu.switch import Switch
from l4emu.workload import from_config

SLOW, FAST = "10.1.0.1:8080", "10.1.0.2:8080"
NS = 1_000_000_000


def config_text(check: str, slow: str, fast: str = "", duration: float = 20) -> str:
    return f"""
[[service]]
vip = "10.0.0.100:80"
scheduler = "rr"
{check}
  [[service.real]]
  address = "{SLOW}"
  emulated = true
{slow}
  [[service.real]]
  address = "{FAST}"
  emulated = true
{fast}
[workload]
rtt = 0
clients = 1000
arrival = "fixed"
rate = 10
duration = {duration}
keep_alive = false
"""


HTTP_CHECK = """
  [service.check]
  type = "http"
  delay_loop = 1
  connect_timeout = 2.5
  retry = 1
  delay_before_retry = 0.5
  rise = 2
"""
TCP_CHECK = HTTP_CHECK.replace('"http"', '"tcp"').replace("2.5", "1")
OVERLOADED = "  workers = 1\n  backlog = 4\n  service_time = 1.0"
ROOMY = "  workers = 64\n  service_time = 0.01"


def load(tmp_path, text: str, name: str = "lb.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path, configmod.load(path, schedulers.catalog())


def run_simulate(tmp_path, text: str, seed: int = 1, output=None) -> dict:
    path, config = load(tmp_path, text)
    workload = from_config(config, str(path), {"seed": seed})
    return simulate(config, workload, seed, output=output)


def by_real(result: dict) -> dict:
    return {r["real"]: r for r in result["reals"]}


def test_an_overloaded_real_fails_its_http_check_and_traffic_moves(tmp_path):
    checked = run_simulate(tmp_path, config_text(HTTP_CHECK, OVERLOADED, ROOMY))
    moves = [(t["at_s"], t["real"], t["state"]) for t in checked["health"]["transitions"]]
    assert moves[:3] == [(1.5, SLOW, "down"), (8.5, SLOW, "up"), (10.0, SLOW, "down")]
    first = checked["health"]["transitions"][0]
    assert "the app's queue" in first["why"] and "(2 attempt(s))" in first["why"]
    assert checked["health"]["transitions"][1]["why"] == "2 check(s) in a row succeeded"
    health = {r["real"]: r for r in checked["health"]["reals"]}
    assert health[FAST]["failure"] == 0 and health[FAST]["down"] == 0
    assert health[SLOW]["down"] == health[SLOW]["up"] + (not health[SLOW]["healthy"])
    # Without the check rr gives the slow real half of the 200 requests, and they wait for minutes.
    plain = run_simulate(tmp_path, config_text("", OVERLOADED, ROOMY))
    assert "health" not in plain
    assert by_real(plain)[SLOW]["requests"] == 100
    assert by_real(checked)[SLOW]["requests"] < 40 < 160 < by_real(checked)[FAST]["requests"]
    assert checked["p99_ms"] < plain["p99_ms"] / 5


def test_inhibit_on_failure_moves_traffic_by_weight(tmp_path):
    check = HTTP_CHECK + "  inhibit_on_failure = true\n"
    result = run_simulate(tmp_path, config_text(check, OVERLOADED, ROOMY))
    first = result["health"]["transitions"][0]
    assert (first["at_s"], first["state"]) == (1.5, "down") and "weight 0 (inhibit_on_failure)" in first["why"]
    assert by_real(result)[SLOW]["requests"] < 40


def test_simulate_with_checks_repeats_for_a_seed(tmp_path):
    a = run_simulate(tmp_path, config_text(HTTP_CHECK, OVERLOADED, ROOMY), seed=5, output=tmp_path / "a.pcap")
    b = run_simulate(tmp_path, config_text(HTTP_CHECK, OVERLOADED, ROOMY), seed=5, output=tmp_path / "b.pcap")
    assert a["health"] == b["health"]
    assert (tmp_path / "a.pcap").read_bytes() == (tmp_path / "b.pcap").read_bytes()


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    """Clients only (no answers): 200 conversations at 10/s, from `l4emu gen`."""
    tmp = tmp_path_factory.mktemp("health")
    path = tmp / "lb.toml"
    path.write_text(config_text("", OVERLOADED, ROOMY))
    run_cli("gen", "-c", path, "--seed", "3", "-o", tmp / "clients.pcap")
    return tmp / "clients.pcap"


def test_replay_marks_the_overloaded_real_down_and_its_new_flows_go_elsewhere(tmp_path, capture):
    path, _ = load(tmp_path, config_text(HTTP_CHECK, OVERLOADED, ROOMY))
    out, inside = tmp_path / "out.pcap", tmp_path / "inside.pcap"
    proc = run_cli("replay", capture, "-c", path, "--seed", "1", "-o", out, "--inside", inside, "--json")
    summary = json.loads(proc.stdout)
    moves = [(t["at_s"], t["real"], t["state"]) for t in summary["health"]["transitions"]]
    assert moves[:3] == [(1.5, SLOW, "down"), (8.5, SLOW, "up"), (10.0, SLOW, "down")]
    # What the reals saw (scapy reads it): no new connection reached the slow real while it was down.
    packets = rdpcap(str(inside))
    start = float(rdpcap(str(capture), count=1)[0].time)
    syns = [
        (float(p.time) - start, p[IP].dst)
        for p in packets
        if TCP in p and p[TCP].flags & 0x12 == 0x02  # SYN without ACK: a client's new connection
    ]
    down = [dst for t, dst in syns if 1.5 <= t < 8.5]
    assert down and set(down) == {FAST.split(":")[0]}
    assert any(dst == SLOW.split(":")[0] for t, dst in syns if 8.5 <= t < 10.0)
    text = run_cli("replay", capture, "-c", path, "--seed", "1").stdout
    assert "health       10.1.0.1:8080" in text and "1.500 s  10.1.0.1:8080 down: no answer within 2.5 s" in text


def test_tcp_check_follows_real_down_and_up_events(tmp_path, capture):
    """Down at 3 s (the attempt at 3 s and its retry fail: down at 3.5 s); up at 8 s, but the switch takes
    the real back only after two attempts pass (8 s, 9 s): between 8 and 9 s rr skips it."""
    events = [parse_event("3:down:" + SLOW), parse_event("8:up:" + SLOW)]
    counts = {}
    for name, check in (("checked", TCP_CHECK), ("plain", "")):
        _, config = load(tmp_path, config_text(check, "", ""), f"{name}.toml")
        summary = replay(capture, Switch(config, 1), events=events)
        counts[name] = summary["new_connections"][SLOW]
        if check:
            moves = [(t["at_s"], t["real"], t["state"]) for t in summary["health"]["transitions"]]
            assert moves == [(3.5, SLOW, "down"), (9.0, SLOW, "up")]
            assert "the host is down" in summary["health"]["transitions"][0]["why"]
    assert counts["plain"] - counts["checked"] == 5  # the flows of [8, 9) s that rr would have given it


def test_tcp_check_fails_when_the_listen_queue_drops_syns(tmp_path, capture):
    """A real that accepts one connection a second behind a backlog of 2 drops SYNs within the first
    second of 5/s: its TCP check's SYN would be dropped too."""
    _, config = load(tmp_path, config_text(TCP_CHECK, "  backlog = 2\n  accept_rate = 1", ""))
    summary = replay(capture, Switch(config, 1))
    first = summary["health"]["transitions"][0]
    assert (first["at_s"], first["real"], first["state"]) == (1.5, SLOW, "down")
    assert "the listen queue is full" in first["why"]
    assert summary["emulated"]["listen_drops"] > 0


def test_the_answer_delay_model():
    # idle worker: the request's own service time; a busy one and one waiting: two more ahead of it
    assert answer_delay(0, 0, 0, 0, workers=1, busy=0, waiting=0, service_s=0.5) == 0.5
    assert answer_delay(0, 0, 0, 0, workers=1, busy=1, waiting=1, service_s=0.5) == 1.5
    assert answer_delay(0, 0, 0, 0, workers=4, busy=4, waiting=3, service_s=1.0) == 2.0  # 4 finish first
    # no workers (no capacity): answered once accepted; three queued at 10 accepts/s, the next in 0.05 s
    assert answer_delay(0, 3, NS // 10, NS // 20, workers=0, busy=0, waiting=0, service_s=0) == pytest.approx(0.35)


def test_a_reals_own_check_is_judged_as_its_services_would_be(tmp_path):
    own = OVERLOADED + "\n" + HTTP_CHECK.replace("[service.check]", "[service.real.check]")
    result = run_simulate(tmp_path, config_text("", own, ROOMY))
    moves = [(t["at_s"], t["real"], t["state"]) for t in result["health"]["transitions"]]
    assert moves[:3] == [(1.5, SLOW, "down"), (8.5, SLOW, "up"), (10.0, SLOW, "down")]
    assert [r["real"] for r in result["health"]["reals"]] == [SLOW]  # the other real has no check


def test_live_mode_refuses_checks_of_emulated_reals(tmp_path):
    _, config = load(tmp_path, config_text(TCP_CHECK, "", ""))
    assert "service[0].check: live checks connect to real hosts" in live_refusal(config.services)
    _, plain = load(tmp_path, config_text("", "", ""), "plain.toml")
    assert live_refusal(plain.services) is None


def test_the_report_timeline_marks_the_transitions(tmp_path, capture):
    from l4emu.timeline import record

    _, config = load(tmp_path, config_text(HTTP_CHECK, OVERLOADED, ROOMY))
    marks = record(capture, config, seed=1, samples=20)["event_marks"]
    assert marks[:2] == [
        {"t": 1.5, "real": SLOW, "label": f"{SLOW} check down"},
        {"t": 8.5, "real": SLOW, "label": f"{SLOW} check up"},
    ]


def test_checks_put_no_packet_in_the_outputs(tmp_path, capture):
    """Reals that always pass: the outputs (both views) and the summary's counts are those of no check."""
    outputs = {}
    for name, check in (("checked", TCP_CHECK), ("plain", "")):
        path, _ = load(tmp_path, config_text(check, "", ""), f"{name}.toml")
        out, inside = tmp_path / f"{name}-out.pcap", tmp_path / f"{name}-in.pcap"
        summary = json.loads(
            run_cli("replay", capture, "-c", path, "--seed", "2", "-o", out, "--inside", inside, "--json").stdout
        )
        health = summary.pop("health", None)
        if check:
            assert health["transitions"] == [] and all(r["failure"] == 0 for r in health["reals"])
            assert sum(r["success"] for r in health["reals"]) == 2 * 20  # one a second each, 0..19 s
        for key in ("elapsed_s", "packets_per_s", "output", "inside_written"):
            summary.pop(key)
        outputs[name] = (out.read_bytes(), inside.read_bytes(), summary)
    assert outputs["checked"] == outputs["plain"]
