"""`l4emu simulate`: emulated clients through the switch to emulated reals with finite capacity, held to
queueing theory (tests/queueing.py), to the power-of-two-choices literature, and to tshark.

Tolerances: means within 5% of theory, as the issue asks. The runs are long enough for that: an M/M/1
queue at rho = 0.8 needs most (its response times are strongly correlated); 800,000 requests there
put one run's mean within about 1.5% (two seeds gave 50.5 and 49.9 ms against 50).
"""
from __future__ import annotations

import hashlib
import json
import subprocess

import pytest

from conftest import needs_tshark, run_cli
from l4emu import config as configmod
from l4emu import schedulers
from l4emu.compare import with_scheduler
from l4emu.simulate import percentile, simulate
from l4emu.workload import from_config
from queueing import erlang_c, mm1_response_time, mmc_response_time

TOLERANCE = 0.05
MS = 1e3  # milliseconds per second


def config_text(reals: list[dict], scheduler: str = "rr", workload: str = "") -> str:
    lines = ['[[service]]', 'vip = "10.0.0.100:80"', 'protocol = "tcp"', f'scheduler = "{scheduler}"']
    for k, real in enumerate(reals, start=1):
        lines += ["  [[service.real]]", f'  address = "10.1.0.{k}:8080"', "  emulated = true"]
        lines += [f"  {key} = {value}" for key, value in real.items()]
    lines += ["[workload]", "rtt = 0", "clients = 10000", workload]
    if "keep_alive" not in workload:
        lines.append("keep_alive = false")  # one request per connection: arrivals at the reals stay Poisson
    return "\n".join(lines) + "\n"


def exponential_real(mean_s: float, workers: int = 1) -> dict:
    return {"workers": workers, "backlog": 4096, "service_time": f'{{ dist = "exponential", mean = {mean_s} }}'}


def run(tmp_path, text: str, rate: float, duration: float, seed: int = 1, scheduler: str | None = None) -> dict:
    path = tmp_path / "lb.toml"
    path.write_text(text)
    config = configmod.load(path, schedulers.catalog())
    if scheduler:
        config = with_scheduler(config, scheduler)
    workload = from_config(config, str(path), {"rate": rate, "duration": duration, "seed": seed})
    return simulate(config, workload, seed)


@pytest.mark.slow
@pytest.mark.parametrize("rho, duration", [(0.5, 4000.0), (0.8, 10000.0)])
def test_one_worker_is_an_mm1_queue(tmp_path, rho, duration):
    mu = 100.0
    result = run(tmp_path, config_text([exponential_real(1 / mu)]), rho * mu, duration)
    assert result["failed_requests"] == 0 and result["answered"] == result["requests"] > 0.95 * rho * mu * duration
    expected = mm1_response_time(rho * mu, mu) * MS
    assert result["mean_ms"] == pytest.approx(expected, rel=TOLERANCE)
    real = result["reals"][0]
    assert real["utilisation"] == pytest.approx(rho, rel=TOLERANCE)
    # an arrival waits when the worker is busy: with Poisson arrivals, a share rho of them (PASTA)
    assert real["waited"] / real["served"] == pytest.approx(rho, rel=TOLERANCE)


@pytest.mark.slow
def test_c_workers_wait_as_erlang_c_says(tmp_path):
    c, mu, lam = 4, 100.0, 320.0
    result = run(tmp_path, config_text([exponential_real(1 / mu, workers=c)]), lam, 2000.0)
    real = result["reals"][0]
    assert real["waited"] / real["served"] == pytest.approx(erlang_c(c, lam, mu), rel=TOLERANCE)
    assert result["mean_ms"] == pytest.approx(mmc_response_time(c, lam, mu) * MS, rel=TOLERANCE)


@pytest.mark.slow
def test_least_connections_beats_two_choices_beats_round_robin_at_the_tail(tmp_path):
    """Two reals, one twice as slow, rho = 0.9 overall: rr sends the slow one more than it can serve,
    lc joins the shortest queue, JSQ(2) ('twos') lands between (Mitzenmacher, power of two choices)."""
    text = config_text([exponential_real(0.01), exponential_real(0.02)])
    p99 = {name: run(tmp_path, text, 135.0, 1000.0, scheduler=name)["p99_ms"] for name in ("rr", "lc", "twos")}
    assert p99["lc"] < p99["twos"] < p99["rr"], p99


def test_the_same_seed_writes_the_same_conversation_and_tshark_follows_it(tmp_path):
    (tmp_path / "lb.toml").write_text(config_text([exponential_real(0.002, workers=2)], workload="seed = 5"))
    outs = []
    for name in ("a.pcap", "b.pcap"):
        result = run_cli("simulate", "-c", tmp_path / "lb.toml", "--rate", "200", "--duration", "2", "-o",
                         tmp_path / name, "--json")
        outs.append(json.loads(result.stdout))
    assert outs[0]["answered"] == outs[0]["requests"] > 300
    digest = [hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("a.pcap", "b.pcap")]
    assert digest[0] == digest[1]
    other = run_cli("simulate", "-c", tmp_path / "lb.toml", "--rate", "200", "--duration", "2", "--seed", "6",
                    "-o", tmp_path / "c.pcap")
    assert other.returncode == 0
    assert hashlib.sha256((tmp_path / "c.pcap").read_bytes()).hexdigest() != digest[0]


@needs_tshark
def test_the_conversation_is_whole_with_no_expert_warnings(tmp_path):
    (tmp_path / "lb.toml").write_text(config_text([exponential_real(0.002, workers=2), {"workers": 1}],
                                                  workload="seed = 3\nrequests_per_conn = 3\nkeep_alive = true"))
    result = json.loads(run_cli("simulate", "-c", tmp_path / "lb.toml", "--rate", "100", "--duration", "2",
                                "-o", tmp_path / "s.pcap", "--json").stdout)
    pcap = str(tmp_path / "s.pcap")
    expert = subprocess.run(["tshark", "-r", pcap, "-q", "-z", "expert,note"], capture_output=True, text=True)
    assert "Warning" not in expert.stdout and "Error" not in expert.stdout, expert.stdout
    checked = subprocess.run(["tshark", "-r", pcap, "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
                              "-Y", "tcp.checksum.status == 2 || ip.checksum.status == 2 || _ws.malformed"],
                             capture_output=True, text=True)
    assert checked.stdout == ""
    streams = subprocess.run(["tshark", "-r", pcap, "-T", "fields", "-e", "tcp.stream"], capture_output=True,
                             text=True).stdout.split()
    assert len(set(streams)) == result["connections"]
    answers = subprocess.run(["tshark", "-r", pcap, "-Y", "http.response.code == 200", "-T", "fields",
                              "-e", "frame.number"], capture_output=True, text=True).stdout.split()
    assert len(answers) == result["answered"] == result["requests"] == 3 * result["sessions"]


def test_a_full_backlog_drops_syns_and_the_clients_send_them_again(tmp_path):
    """Linux drops a SYN that finds the accept queue full; the client retransmits after 1 s, 2 s, ..."""
    slow = {"workers": 1, "backlog": 1, "accept_rate": 2}
    result = run(tmp_path, config_text([slow]), 50.0, 2.0)
    assert result["syn_retransmits"] > 0 and result["reals"][0]["refused"] > 0
    assert result["answered"] + result["failed_requests"] <= result["requests"]


def test_a_reset_on_overflow_refuses_the_connection(tmp_path):
    """tcp_abort_on_overflow: the handshake's last ACK into a full accept queue gets a RST; with a round
    trip of 50 ms the queue fills while handshakes are in flight."""
    slow = {"workers": 1, "backlog": 8, "accept_rate": 2, "syn_overflow": '"reset"'}
    result = run(tmp_path, config_text([slow]).replace("rtt = 0\n", "rtt = 0.05\n"), 50.0, 2.0)
    assert result["failures"]["reset"] > 0


def test_sized_answers_have_the_drawn_length(tmp_path):
    text = config_text([{"workers": 1, "response_bytes": 5000}], workload="seed = 2")
    (tmp_path / "lb.toml").write_text(text)
    out = run_cli("simulate", "-c", tmp_path / "lb.toml", "--rate", "20", "--duration", "1", "-o",
                  tmp_path / "s.pcap")
    assert out.returncode == 0
    from scapy.all import TCP, rdpcap

    payload = b"".join(bytes(p[TCP].payload) for p in rdpcap(str(tmp_path / "s.pcap")) if p[TCP].sport == 80)
    assert b"Content-Length: 5000\r\n" in payload and payload.count(b"served by 10.1.0.1:8080\n") > 5


@pytest.mark.parametrize("text, words", [
    (config_text([exponential_real(0.01)]).replace("  emulated = true\n  workers = 1\n  backlog = 4096\n  "
                                                   "service_time = { dist = \"exponential\", mean = 0.01 }\n", ""),
     "has reals that are not emulated (10.1.0.1:8080)"),
])
def test_simulate_needs_emulated_reals(tmp_path, text, words):
    (tmp_path / "lb.toml").write_text(text)
    out = run_cli("simulate", "-c", tmp_path / "lb.toml", "--rate", "10", "--duration", "1", check=False)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and words in out.stderr, out.stderr


def test_compare_simulate_prints_each_scheduler_and_plots(tmp_path):
    (tmp_path / "lb.toml").write_text(config_text([exponential_real(0.01), exponential_real(0.02)]))
    out = run_cli("compare", "--simulate", "-c", tmp_path / "lb.toml", "--schedulers", "rr,lc", "--rate", "60",
                  "--duration", "20", "--seed", "1", "--plot", tmp_path / "cmp.png")
    rows = [line.split()[0] for line in out.stdout.splitlines()[3:5]]
    assert rows == ["rr", "lc"]
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wrong = run_cli("compare", "--simulate", "pcaps/sample.pcap", "-c", tmp_path / "lb.toml", check=False)
    assert wrong.returncode == 2 and "no capture" in wrong.stderr


def test_thousands_of_replaced_timers_at_once(tmp_path):
    """Every SYN leaves its retransmission timer in the clients' heap until it surfaces (a second later):
    at 5,000 connections a second the heap holds thousands more events than conversations."""
    result = run(tmp_path, config_text([exponential_real(0.0001, workers=64)]), 5000.0, 1.0)
    assert result["answered"] == result["requests"] > 4500 and result["syn_retransmits"] == 0


def test_percentiles_are_nearest_rank():
    values = list(range(1, 101))
    assert [percentile(values, p) for p in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert percentile([], 50) == 0.0
