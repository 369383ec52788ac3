"""gslb simulate: emulated clients resolve through the GSLB (real DNS messages on the wire), then connect
to the answered VIP through that site's switch to its emulated reals. The output is read back with scapy,
dnspython and tshark; the switch-over after a failure is held to Flavel et al.'s figures."""
from __future__ import annotations

import ipaddress
import json
import subprocess

import dns.flags
import dns.message
import pytest
from scapy.all import IP, TCP, UDP, rdpcap

from conftest import PCAPS, needs_tshark, run_cli
from l4emu import schedulers
from l4emu.clients.gen import START_NS
from l4emu.datapath._batch import NS
from l4emu.events import parse_event
from l4emu.gslb import config as gslbconfig
from l4emu.gslb.simulate import simulate
from l4emu.workload import from_config

SAMPLE = PCAPS / "gslb-sim.toml"
PREFIX = {"east": ipaddress.ip_network("172.16.0.0/25"), "west": ipaddress.ip_network("172.16.0.128/25")}
VIP = {"east": "10.10.0.100", "west": "10.20.0.100"}
DOWN_AT_S = 2.0
TTL_S = 1  # the fixture's record: short, so that east's clients move within its 4 s
TOLERANCE = 0.02  # the "within 2 points"


def run(config=SAMPLE, events=(), output=None, **flags):
    checked = gslbconfig.load(config, schedulers.catalog())
    given = {"clients": 200, "rate": 100.0, "duration": 4.0, "seed": 1, **flags}
    workload = from_config(checked.sites[0].config, str(config), given)
    return simulate(checked, workload, [parse_event(e) for e in events], output)


def site_of_client(address: str) -> str:
    return next(name for name, prefix in PREFIX.items() if ipaddress.ip_address(address) in prefix)


@pytest.fixture(scope="module")
def short_ttl(tmp_path_factory):
    config = tmp_path_factory.mktemp("gslb-sim-config") / "short-ttl.toml"
    config.write_text(SAMPLE.read_text().replace("ttl = 20", f"ttl = {TTL_S}"))
    return config


@pytest.fixture(scope="module")
def ran(tmp_path_factory, short_ttl):
    out = tmp_path_factory.mktemp("gslb-sim") / "out.pcap"
    summary = run(short_ttl, events=(f"{DOWN_AT_S:g}:site-down:east",), output=out)
    return summary, out, rdpcap(str(out))


def test_answers_parse_with_dnspython_and_match_their_queries(ran):
    _, _, packets = ran
    queries = {}
    answers = 0
    for pkt in packets:
        if UDP not in pkt:
            continue
        message = dns.message.from_wire(bytes(pkt[UDP].payload))
        if pkt[UDP].dport == 53:
            assert pkt[IP].dst == "10.53.0.1" and not message.flags & dns.flags.QR
            queries[(pkt[IP].src, pkt[UDP].sport)] = (message, pkt.time)
            continue
        query, sent = queries.pop((pkt[IP].dst, pkt[UDP].dport))
        assert message.id == query.id and message.question == query.question
        assert message.flags & dns.flags.AA and message.flags & dns.flags.RD  # authoritative, RD echoed
        (rrset,) = message.answer
        assert rrset.ttl == TTL_S and pkt.time - sent == pytest.approx(0.001)  # the workload's rtt
        up = {"east", "west"} if pkt.time < START_NS / NS + DOWN_AT_S else {"west"}
        want = site_of_client(pkt[IP].dst) if site_of_client(pkt[IP].dst) in up else "west"
        assert [r.address for r in rrset] == [VIP[want]], (pkt[IP].dst, pkt.time)
        answers += 1
    assert not queries and answers > 10


def test_topology_sends_each_prefixs_clients_to_its_site_until_it_fails(ran):
    summary, _, packets = ran
    down = START_NS / NS + DOWN_AT_S
    syns = [p for p in packets if TCP in p and p[TCP].flags == "S"]
    before = {(site_of_client(p[IP].src), p[IP].dst) for p in syns if p.time < down}
    assert before == {("east", VIP["east"]), ("west", VIP["west"])}
    after = {(site_of_client(p[IP].src), p[IP].dst) for p in syns if p.time >= down}
    assert ("west", VIP["east"]) not in after and ("east", VIP["west"]) in after  # east's clients moved as caches let go
    # Cached clients keep sending east SYNs while it is down: each such session is counted refused.
    refused = {(p[IP].src, p[TCP].sport) for p in syns if p.time >= down and p[IP].dst == VIP["east"]}
    east = next(s for s in summary["sites"] if s["site"] == "east")
    assert east["refused_while_down"] == len(refused) > 0
    assert east["connections_broken"] == east["refused_while_down"] + east["held_at_failure"]


def test_the_summary_counts_what_the_capture_holds(ran):
    summary, _, packets = ran
    queries = sum(1 for p in packets if UDP in p and p[UDP].dport == 53)
    dns_ = summary["dns"]
    assert dns_["queries"] == queries == summary["resolution"]["resolved"]
    assert dns_["client_cache_hits"] + dns_["resolver_cache_hits"] + dns_["queries"] == summary["sessions"]
    assert sum(s["queries_answered"] for s in summary["sites"]) == queries
    served = sum(1 for p in packets if TCP in p and p[TCP].flags == "SA")
    assert served == sum(s["connections"] for s in summary["sites"])
    assert summary["written"] == len(packets)
    (failure,) = summary["events"]
    assert failure["event"] == "2:site-down:east" and failure["clients_on_site"] > 0


@needs_tshark
def test_tshark_reads_the_output_without_malformed_packets_or_errors(ran):
    _, out, _ = ran
    expert = subprocess.run(["tshark", "-r", str(out), "-q", "-z", "expert"], capture_output=True, text=True,
                            check=True).stdout
    assert "Errors" not in expert and "Warns" not in expert and "Malformed" not in expert, expert
    assert "HTTP/1.1 200 OK" in expert
    dns_lines = subprocess.run(["tshark", "-r", str(out), "-Y", "dns.flags.response == 1 && dns.a"],
                               capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(dns_lines) == ran[0]["dns"]["queries"]


def test_same_seed_same_bytes_another_seed_other_bytes(ran, short_ttl, tmp_path):
    _, out, _ = ran
    again, other = tmp_path / "again.pcap", tmp_path / "other.pcap"
    run(short_ttl, events=(f"{DOWN_AT_S:g}:site-down:east",), output=again)
    run(short_ttl, events=(f"{DOWN_AT_S:g}:site-down:east",), output=other, seed=2)
    assert again.read_bytes() == out.read_bytes()
    assert other.read_bytes() != out.read_bytes()


def test_the_switch_over_after_a_failure_reproduces_flavel_within_2_points(tmp_path):
    """Every client is east's; east fails, and its clients move as their caches let go: with the default
    caching model and a 20 s TTL, 90% of their sessions switched within 60 s and 2% are still stale after
    15 minutes (Flavel, Mani and Maltz 2014), here from the simulated sessions themselves."""
    config = tmp_path / "all-east.toml"
    config.write_text(SAMPLE.read_text().replace('["172.16.0.0/25"]', '["172.16.0.0/12"]')
                      .replace('["172.16.0.128/25"]', '["192.168.0.0/16"]').replace("resolvers = 20", "resolvers = 100"))
    summary = run(config, events=("110:site-down:east",), clients=1000, rate=100.0, duration=1020.0)
    (failure,) = summary["events"]
    share = {p["after_s"]: p["share"] for p in failure["stale_sessions"]}
    assert abs((1 - share[60]) - 0.90) <= TOLERANCE, failure["stale_sessions"]
    assert abs(share[900] - 0.02) <= TOLERANCE, failure["stale_sessions"]
    assert share[10] > share[30] > share[120]  # the shape: most move within a TTL or two, a tail stays
    assert failure["moved_within_s"]["99%"] is None  # the 2% pinned past any failure never move


def test_the_cli_prints_the_run_and_refuses_what_it_cannot_run(tmp_path):
    args = ("gslb", "simulate", "-c", SAMPLE, "--clients", "50", "--rate", "50/s", "--duration", "1", "--rtt", "0.004")
    out = run_cli(*args).stdout
    assert "GSLB simulate, seed 1" in out and "p50 4 / p90 4 / p99 4 ms (query to answer" in out
    data = json.loads(run_cli(*args, "--json").stdout)
    assert [s["site"] for s in data["sites"]] == ["east", "west"] and data["resolution"]["p99_ms"] == 4.0
    least = tmp_path / "least.toml"
    least.write_text(SAMPLE.read_text().replace('policy = "topology"', 'policy = "least_conn"'))
    bad = run_cli("gslb", "simulate", "-c", least, check=False)
    assert bad.returncode == 2 and "least_conn" in bad.stderr and "Traceback" not in bad.stderr
    unknown = run_cli(*args, "--event", "1:site-down:north", check=False)
    assert unknown.returncode == 2 and "no site 'north'" in unknown.stderr


def test_the_clients_take_the_client_given_per_arrival_and_refuse_a_bad_table():
    """Generator(arrival_clients=...): a site's sessions come from the clients that resolved to it."""
    from l4emu.clients._gen import ARRIVALS, Generator
    from l4emu.clients.gen import model_arguments
    from l4emu.datapath._batch import Batch

    checked = gslbconfig.load(SAMPLE, schedulers.catalog())
    arguments = model_arguments(from_config(checked.sites[0].config, "t", {"clients": 50, "seed": 3}))
    times = [START_NS + k * NS // 10 for k in range(5)]
    arguments.update(arrival=ARRIVALS["capture"], arrivals=times, arrival_clients=[7, 0, 49, 7, 20])
    batch = Batch(4096)
    Generator(**arguments).fill(batch)
    syns = [IP(batch.packet(i)[14:]) for i in range(len(batch))]
    sources = [p.src for p in syns if p[TCP].flags == "S"]
    assert sources == ["172.16.0.8", "172.16.0.1", "172.16.0.50", "172.16.0.8", "172.16.0.21"]
    for bad, why in (([1, 2], "one client per arrival"), ([0, 1, 2, 3, 50], "outside")):
        with pytest.raises(ValueError, match=why):
            Generator(**{**arguments, "arrival_clients": bad})


def test_health_follows_real_events_and_a_site_without_reals_is_no_longer_answered(short_ttl, tmp_path):
    out = tmp_path / "reals-down.pcap"
    events = ("1:down:10.11.0.1:8080", "1:down:10.11.0.2:8080")  # east's every real
    summary = run(short_ttl, events=events, output=out, duration=3.0)
    down = START_NS / NS + 1
    named = [(p.time, dns.message.from_wire(bytes(p[UDP].payload)).answer[0][0].address)
             for p in rdpcap(str(out)) if UDP in p and p[UDP].sport == 53]
    assert {vip for t, vip in named if t < down} == {VIP["east"], VIP["west"]}
    assert {vip for t, vip in named if t > down} == {VIP["west"]}  # east's clients asking now get west
    east = next(s for s in summary["sites"] if s["site"] == "east")
    assert east["failures"]["timed_out"] > 0 and east["connections_broken"] == 0  # cached clients: SYNs unanswered
    assert [e["event"] for e in summary["events"]] == list(events) and summary["events"][0]["site"] == "east"


def test_a_session_waits_for_the_answer_whose_query_is_still_on_the_wire(tmp_path):
    """One client asking again (or a neighbour behind its resolver) while its first query is on the wire
    does not connect before that answer arrives: with a 0.5 s round trip and sessions every 50 ms, no SYN
    precedes the first answer (they did: the cache was filled when the query left)."""
    out = tmp_path / "one.pcap"
    run(clients=1, rate=20.0, duration=2.0, rtt=0.5, output=out)
    packets = rdpcap(str(out))
    answers = [p.time for p in packets if UDP in p and p[UDP].sport == 53]
    syns = [p.time for p in packets if TCP in p and p[TCP].flags == "S"]
    assert answers and len(syns) > 10
    assert min(syns) >= min(answers)
