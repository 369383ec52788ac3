"""`l4emu gen` and the workload model: scapy and tshark judge the capture, statistics judge the arrivals."""
from __future__ import annotations

import itertools
import json
import math
import shutil
import statistics
import subprocess

import pytest
from scapy.all import IP, TCP, IPv6, rdpcap

from conftest import PCAPS, needs_tshark, run_cli
from l4emu import config as configmod
from l4emu import schedulers
from l4emu.clients.gen import START_NS, capture_arrivals, generate
from l4emu.config import ConfigError
from l4emu.datapath._batch import NS
from l4emu.workload import Distribution, from_config, parse_distribution

DEFAULT = configmod.load(None, schedulers.catalog())
EMULATED = PCAPS / "emulated.toml"


def workload(**flags):
    return from_config(DEFAULT, "default config", flags)


def syn_times(path) -> list[int]:
    return capture_arrivals(path, math.inf)


def test_the_generator_is_the_compiled_extension():
    from l4emu.clients import _gen
    assert _gen.__file__.endswith(".so")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """IPv4 and IPv6 clients, two requests a connection, answers of four segments (two ACKs each)."""
    path = tmp_path_factory.mktemp("gen") / "mixed.pcap"
    w = workload(rate=300, duration=1, ipv6_share=0.3, requests_per_conn=2, response_size=5000, seed=5)
    return path, generate(w, path), w


def _l4(pkt):
    return (pkt[IP] if IP in pkt else pkt[IPv6]), pkt[TCP]


def test_scapy_reads_every_packet_with_good_checksums_in_time_order(mixed):
    path, summary, _ = mixed
    packets = rdpcap(str(path))
    assert len(packets) == summary["packets"] > 0
    times = [p.time for p in packets]
    assert times == sorted(times)
    for pkt in packets:
        ip, tcp = _l4(pkt)
        stated = (ip.chksum if IP in pkt else None, tcp.chksum)
        if IP in pkt:
            del pkt[IP].chksum
        del pkt[TCP].chksum
        rebuilt = pkt.__class__(bytes(pkt))
        assert stated == ((rebuilt[IP].chksum if IP in rebuilt else None), rebuilt[TCP].chksum)


def test_each_conversation_is_a_whole_client_side(mixed):
    """SYN (Linux's options), ACK, per request a PSH|ACK and two ACKs of the 5000-byte answer, FIN, ACK."""
    path, summary, _ = mixed
    flows: dict = {}
    for pkt in rdpcap(str(path)):
        ip, tcp = _l4(pkt)
        flows.setdefault((ip.src, tcp.sport), []).append(tcp)
    assert len(flows) == summary["conversations"] == summary["sessions"]
    assert summary["requests"] == 2 * len(flows)
    v6 = sum(":" in src for src, _ in flows)
    assert v6 == summary["conversations_ipv6"] > 0
    for segments in flows.values():
        assert [str(s.flags) for s in segments] == ["S", "A", "PA", "A", "A", "PA", "A", "A", "FA", "A"]
        assert [o[0] for o in segments[0].options] == ["MSS", "NOP", "NOP", "SAckOK", "NOP", "WScale"]
        syn, request = segments[0], segments[2]
        assert request.seq == syn.seq + 1 and len(request.payload) == 128
        assert bytes(request.payload).startswith(b"GET /") and bytes(request.payload).endswith(b"\r\n\r\n")
        assert segments[4].ack - segments[1].ack == 5000       # both ACKs together take the whole answer


@needs_tshark
def test_tshark_counts_the_conversations_and_finds_nothing_wrong(mixed):
    path, summary, _ = mixed
    conv = subprocess.run(["tshark", "-r", str(path), "-q", "-z", "conv,tcp"], capture_output=True, text=True,
                          check=True).stdout
    rows = [line for line in conv.splitlines() if "<->" in line]
    assert len(rows) == summary["conversations"]
    expert = subprocess.run(["tshark", "-r", str(path), "-q", "-z", "expert"], capture_output=True, text=True,
                            check=True).stdout
    assert "Errors" not in expert and "Warnings" not in expert and "Malformed" not in expert, expert
    checks = subprocess.run(["tshark", "-r", str(path), "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
                             "-T", "fields", "-e", "ip.checksum.status", "-e", "tcp.checksum.status"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert len(checks) >= summary["packets"] and set(checks) == {"1"}     # 1 = Good (IPv6 has no IP checksum)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_poisson_arrivals_have_the_rate_and_the_spread(tmp_path, seed):
    """Exponential gaps: the mean within 4% of 1/rate and a coefficient of variation within 4% of 1
    (both estimates have a standard error near 1% at 10,000 arrivals: 4 of them)."""
    rate, path = 2000.0, tmp_path / "p.pcap"
    summary = generate(workload(rate=rate, duration=5, seed=seed), path)
    times = syn_times(path)
    assert len(times) == summary["sessions"] and abs(len(times) - rate * 5) < 4 * math.sqrt(rate * 5)
    gaps = [(b - a) / NS for a, b in itertools.pairwise(times)]
    mean = statistics.fmean(gaps)
    assert abs(mean * rate - 1) < 0.04
    assert abs(statistics.pstdev(gaps) / mean - 1) < 0.04


def test_fixed_arrivals_are_exact(tmp_path):
    path = tmp_path / "f.pcap"
    generate(workload(arrival="fixed", rate=1000, duration=2, seed=1), path)
    assert syn_times(path) == [START_NS + k * 1_000_000 for k in range(2000)]


def test_capture_arrivals_copy_the_syn_times(tmp_path):
    from scapy.all import rdpcap as read
    wanted = sorted(int(p.time * NS) for p in read(str(PCAPS / "sample.pcap"))
                    if TCP in p and p[TCP].flags & 0x12 == 0x02)
    out = tmp_path / "c.pcap"
    run_cli("gen", "--capture", PCAPS / "sample.pcap", "-o", out, "--seed", 1)
    assert wanted and syn_times(out) == wanted


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    args = ["gen", "--rate", "500/s", "--duration", "0.5", "--ipv6-share", "0.5", "--think-time", "0.01",
            "--requests-per-conn", "3"]
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        run_cli(*args, "--seed", seed, "-o", tmp_path / f"{name}.pcap")
    a, b, c = ((tmp_path / f"{n}.pcap").read_bytes() for n in "abc")
    assert a == b and a != c


def test_the_ipv6_share_is_respected(tmp_path):
    """4,000 sessions over 1,000 clients of which 250 are IPv6: the share within 0.03 (4 standard errors)."""
    summary = generate(workload(rate=4000, duration=1, clients=1000, ipv6_share=0.25, seed=3), tmp_path / "s.pcap")
    assert abs(summary["conversations_ipv6"] / summary["conversations"] - 0.25) < 0.03


def test_without_keep_alive_each_request_has_its_connection(tmp_path):
    path = tmp_path / "k.pcap"
    summary = generate(workload(arrival="fixed", rate=100, duration=1, requests_per_conn=3, keep_alive=False,
                                think_time=0.05, seed=2), path)
    assert (summary["sessions"], summary["conversations"], summary["requests"]) == (100, 300, 300)
    assert len(syn_times(path)) == 300


def test_request_sizes_follow_their_distribution(tmp_path):
    path = tmp_path / "r.pcap"
    doc = configmod.from_dict({"service": [{"vip": "10.0.0.1:80", "real": [{"address": "10.1.0.1:80"}]}],
                               "workload": {"request_size": {"dist": "empirical", "values": [100, 700, 1400]},
                                            "linktype": "raw", "rate": 300}}, schedulers.catalog())
    generate(from_config(doc, "x"), path)
    sizes = {len(p[TCP].payload) for p in rdpcap(str(path)) if p[TCP].flags & 0x08}
    assert sizes == {100, 700, 1400}


def test_distributions_parse_and_draw_their_mean():
    import random
    assert parse_distribution(0.5, "k") == Distribution.fixed(0.5)
    rng = random.Random(1)
    for spec in ({"dist": "exponential", "mean": 2.0}, {"dist": "lognormal", "mean": 2.0, "sigma": 0.5}):
        d = parse_distribution(spec, "k")
        assert abs(statistics.fmean(d.sample(rng) for _ in range(20000)) / 2.0 - 1) < 0.05
    assert parse_distribution({"dist": "empirical", "values": [1, 2, 6]}, "k").mean == 3
    with pytest.raises(ConfigError, match="k.dist: 'pareto' is not one of"):
        parse_distribution({"dist": "pareto", "mean": 1}, "k")


def test_generated_clients_are_answered_through_emulated_reals(tmp_path):
    """The end-to-end check: replay with every real emulated answers each generated request."""
    clients, whole = tmp_path / "clients.pcap", tmp_path / "whole.pcap"
    gen = json.loads(run_cli("gen", "-c", EMULATED, "--rate", 200, "--ipv6-share", 0.25, "--requests-per-conn", 2,
                             "--seed", 3, "-o", clients, "--json").stdout)
    summary = json.loads(run_cli("replay", clients, "-c", EMULATED, "-o", whole, "--seed", 1, "--json").stdout)
    assert summary["emulated"]["accepted"] == gen["conversations"] and summary["dropped"] == {}
    answers = [p for p in rdpcap(str(whole)) if TCP in p and bytes(p[TCP].payload).startswith(b"HTTP/1.1 200 OK")]
    assert len(answers) == gen["requests"] == 2 * gen["conversations"]
    if shutil.which("tshark"):      # the whole conversation, answers and re-stamped ACKs: nothing tshark minds
        expert = subprocess.run(["tshark", "-r", str(whole), "-q", "-z", "expert"], capture_output=True, text=True,
                                check=True).stdout
        assert "Errors" not in expert and "Warnings" not in expert and "Malformed" not in expert, expert


@pytest.mark.parametrize("args, message", [
    (["--rate", "-5"], "l4emu: error: --rate: -5.0 is not a number above 0"),
    (["--ipv6-share", "0.5", "-c", "{v4}"], "--ipv6-share: 0.5 of the clients are IPv6, but no TCP service has an IPv6 VIP"),
    (["-c", "{bad}"], "workload.think_time.dist: 'weibull' is not one of fixed, exponential, lognormal, empirical"),
    (["--request-size", "20"], "--request-size: a request of these headers is at least"),
    (["--capture", "{missing}"], "missing.pcap"),
])
def test_bad_input_is_one_line(tmp_path, args, message):
    (tmp_path / "v4.toml").write_text('[[service]]\nvip = "10.0.0.1:80"\n  [[service.real]]\n  address = "10.1.0.1:80"\n')
    (tmp_path / "bad.toml").write_text((tmp_path / "v4.toml").read_text()
                                       + '[workload]\nthink_time = { dist = "weibull", mean = 1 }\n')
    paths = {"v4": tmp_path / "v4.toml", "bad": tmp_path / "bad.toml", "missing": tmp_path / "missing.pcap"}
    proc = run_cli("gen", *[a.format(**paths) for a in args], "-o", tmp_path / "o.pcap", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("l4emu: error: ")
    assert message in proc.stderr
    assert not (tmp_path / "o.pcap").exists()


def test_a_config_with_a_workload_table_still_replays(tmp_path):
    path = tmp_path / "lb.toml"
    path.write_text((PCAPS / "emulated.toml").read_text() + "\n[workload]\nrate = 10\nclients = 3\n")
    assert "OK" in run_cli("check", path).stdout
    run_cli("replay", PCAPS / "sample.pcap", "-c", path)
    path.write_text(path.read_text() + "colour = 1\n")
    proc = run_cli("check", path, check=False)
    assert proc.returncode == 2 and "workload.colour: unknown key" in proc.stderr
