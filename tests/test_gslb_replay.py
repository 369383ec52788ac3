"""A capture through the GSLB and its sites (pcaps/gslb.pcap, pcaps/gslb.toml): answers follow their
queries as valid DNS responses, connections go through the switch of the site they are for, and a
site's failure breaks its connections and moves its clients."""
from __future__ import annotations

import json
import subprocess

import dns.flags
import dns.message
import pytest
from scapy.all import IP, TCP, UDP, Ether, PcapReader, PcapWriter, raw
from scapy.layers.dns import DNS, DNSQR

from conftest import PCAPS, needs_tshark, run_cli
from l4emu import schedulers
from l4emu.events import parse_event
from l4emu.gslb import config as gslbconfig
from l4emu.gslb.replay import replay

CONFIG = PCAPS / "gslb.toml"
CAPTURE = PCAPS / "gslb.pcap"
EAST_REALS, WEST_REALS = ("10.11.0.1", "10.11.0.2"), ("10.21.0.1", "10.21.0.2")


def load():
    return gslbconfig.load(CONFIG, schedulers.catalog())


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    out = tmp_path_factory.mktemp("gslb") / "out.pcap"
    summary = replay(CAPTURE, load(), out, [parse_event("8:site-down:east")], seed=1)
    return summary, out, list(PcapReader(str(out)))


def checksums_ok(pkt) -> bool:
    fresh = pkt.copy()
    for layer in (IP, TCP, UDP):
        if layer in fresh:
            del fresh[layer].chksum
    return raw(Ether(raw(fresh))) == raw(pkt)


def test_every_packet_is_written_with_right_checksums_and_each_query_is_followed_by_its_answer(replayed):
    summary, _, packets = replayed
    queries = sum(1 for p in PcapReader(str(CAPTURE)) if UDP in p and p[UDP].dport == 53)
    # nothing dropped: east's connections ended before it failed; the DNS conversation over TCP has the
    # emulated server's segments in place of the recorded server's (tests/test_gslb_tcp.py)
    tcp = summary["dns_tcp"]["segments_out"] - summary["dns_tcp"]["superseded"]
    assert len(packets) == summary["written"] == sum(1 for _ in PcapReader(str(CAPTURE))) + queries + tcp
    assert all(checksums_ok(p) for p in packets)
    pairs = 0
    for query, answer in zip(packets, packets[1:]):
        if UDP in query and query[UDP].dport == 53:
            pairs += 1
            assert (answer[IP].src, answer[IP].dst) == (query[IP].dst, query[IP].src)
            assert (answer[UDP].sport, answer[UDP].dport) == (53, query[UDP].sport)
            assert (answer[Ether].src, answer[Ether].dst) == (query[Ether].dst, query[Ether].src)
            response = dns.message.from_wire(bytes(answer[UDP].payload))
            assert response.id == query[DNS].id and response.flags & dns.flags.QR
            if response.question and response.question[0].name.to_text() == "www.example.com.":
                assert response.flags & dns.flags.AA and response.question[0].name.to_text() == "www.example.com."
    assert pairs == queries == summary["dns"]["queries"] == 15


def test_clients_connect_through_the_site_they_were_answered_with(replayed):
    summary, _, packets = replayed
    answered = {}  # client -> the VIP its latest answer named
    for p in packets:
        if UDP in p and p[UDP].sport == 53:
            response = dns.message.from_wire(bytes(p[UDP].payload))
            if response.answer:
                answered[p[IP].dst] = response.answer[0][0].address
        if TCP in p and p[TCP].flags == "S" and p[TCP].dport != 53:
            reals = EAST_REALS if answered[p[IP].src] == "10.10.0.100" else WEST_REALS
            assert p[IP].dst in reals, (p[IP].src, answered[p[IP].src], p[IP].dst)
    by_site = {s["site"]: s for s in summary["sites"]}
    # east: its four clients' queries over UDP, and one over TCP from a client that never connects
    assert (by_site["east"]["queries_answered"], by_site["east"]["connections"], by_site["east"]["clients"]) == (5, 4, 4)
    assert (by_site["west"]["queries_answered"], by_site["west"]["connections"], by_site["west"]["clients"]) == (8, 8, 8)
    assert summary["dns"]["FORMERR"] == summary["dns"]["NXDOMAIN"] == 1
    assert summary["dns"]["NODATA"] == 2  # AAAA over UDP and over TCP
    # each site's own packets only (9 a conversation), though every switch saw them all go by
    assert [(s["packets"], s["dropped"]) for s in summary["sites"]] == [(36, 0), (72, 0)]


def test_the_failed_sites_clients_are_timed_as_they_move(replayed):
    summary, _, _ = replayed
    (event,) = summary["events"]
    assert event["event"] == "8:site-down:east" and event["clients_on_site"] == event["clients_moved"] == 4
    assert event["ttl_s"] == 20
    moved = event["moved_within_s"]
    assert 2 < moved["50%"] <= moved["90%"] == moved["99%"] < 6  # the capture's second visits are at 10-14 s


def test_same_seed_same_bytes(replayed, tmp_path):
    _, out, _ = replayed
    again = tmp_path / "again.pcap"
    replay(CAPTURE, load(), again, [parse_event("8:site-down:east")], seed=1)
    assert again.read_bytes() == out.read_bytes()


@needs_tshark
def test_tshark_decodes_every_answer_as_a_dns_response_without_warnings(replayed):
    _, out, _ = replayed
    fields = subprocess.run(
        ["tshark", "-r", str(out), "-Y", "udp.srcport == 53", "-T", "fields", "-e", "dns.flags.response",
         "-e", "dns.id"], capture_output=True, text=True, check=True).stdout.split("\n")
    rows = [line.split("\t") for line in fields if line]
    assert len(rows) == 15 and all(flag in ("1", "True") for flag, _ in rows)
    bad = subprocess.run(
        ["tshark", "-r", str(out), "-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE", "-Y",
         "udp.srcport == 53 && (_ws.expert.severity >= 0x600000 || _ws.malformed || ip.checksum.status == 0 "
         "|| udp.checksum.status == 0)"], capture_output=True, text=True, check=True).stdout
    assert bad == ""


def test_a_site_failure_breaks_its_open_connections_and_drops_their_packets(tmp_path):
    """A connection open when east fails: counted broken, its later packets dropped; the client asks
    again and gets west."""
    capture = tmp_path / "open.pcap"
    e = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:fe")
    client = "172.16.0.9"
    frames = [
        (1.0, e / IP(src=client, dst="10.10.0.100") / TCP(sport=40000, dport=80, flags="S", seq=1)),
        (1.001, e / IP(src="10.11.0.1", dst=client) / TCP(sport=8080, dport=40000, flags="SA", seq=9, ack=2)),
        (1.002, e / IP(src=client, dst="10.10.0.100") / TCP(sport=40000, dport=80, flags="A", seq=2, ack=10)),
        (6.0, e / IP(src=client, dst="10.10.0.100") / TCP(sport=40000, dport=80, flags="PA", seq=2, ack=10) / b"x"),
        (6.1, e / IP(src=client, dst="10.53.0.1") / UDP(sport=5353, dport=53) / DNS(id=7, rd=1, qd=DNSQR(qname="www.example.com"))),
        (6.2, e / IP(src=client, dst="10.20.0.100") / TCP(sport=40001, dport=80, flags="S", seq=1)),
    ]
    with PcapWriter(str(capture), linktype=1) as writer:
        for t, p in frames:
            p.time = 1_700_000_000 + t
            writer.write(p)
    out = tmp_path / "out.pcap"
    summary = replay(capture, load(), out, [parse_event("3:site-down:east")], seed=1)
    east, west = summary["sites"]
    assert east["connections_broken"] == 1 and east["dropped_while_down"] == 1 and east["down_at_end"]
    assert west["queries_answered"] == 1 and west["connections"] == 1
    assert summary["events"][0]["clients_moved"] == 1
    written = list(PcapReader(str(out)))
    assert len(written) == len(frames)  # one dropped, one answer added
    assert dns.message.from_wire(bytes(written[4][UDP].payload)).answer[0][0].address == "10.20.0.100"


def test_the_cli_prints_the_table_and_json(tmp_path):
    text = run_cli("gslb", "replay", str(CAPTURE), "-c", str(CONFIG), "--seed", "1", "--event", "8:site-down:east")
    assert "DNS queries: 15 (FORMERR 1, NODATA 2, NOERROR 13, NXDOMAIN 1)" in text.stdout  # outcomes: UDP and TCP
    assert "DNS over TCP: 2 queries, 1 connections accepted, 9 segments in, 5 out, 4 recorded server" in text.stdout
    assert "4 of 4 clients moved (ttl 20 s)" in text.stdout
    data = json.loads(run_cli("gslb", "replay", str(CAPTURE), "-c", str(CONFIG), "--seed", "1", "--json").stdout)
    assert [s["connections"] for s in data["sites"]] == [4, 8]
    bad = run_cli("gslb", "replay", str(CAPTURE), "-c", str(CONFIG), "--event", "1:site-down:north", check=False)
    assert bad.returncode == 2 and "no site 'north'" in bad.stderr and bad.stderr.count("\n") == 1
    plain = run_cli("replay", str(CAPTURE), "--event", "1:site-down:east", check=False)
    assert plain.returncode == 2 and "a site event needs a GSLB" in plain.stderr


def test_answers_keep_the_querys_vlan_tag_and_come_over_ipv6_too(tmp_path):
    from scapy.all import IPv6, Dot1Q

    config = tmp_path / "gslb.toml"
    config.write_text(CONFIG.read_text() + '\n[[gslb]]\nlisten = "[2001:db8:53::1]:53"\ndomain = "www.example.com"\n'
                      'policy = "topology"\nvips = { east = "10.10.0.100:80", west = "10.20.0.100:80" }\n')
    e = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:fe")
    q = DNS(id=99, rd=1, qd=DNSQR(qname="www.example.com"))
    frames = [e / Dot1Q(vlan=10) / IP(src="192.168.1.1", dst="10.53.0.1") / UDP(sport=4000, dport=53) / q,
              e / IPv6(src="2001:db8:ff::10", dst="2001:db8:53::1") / UDP(sport=4001, dport=53) / q]
    capture = tmp_path / "q.pcap"
    with PcapWriter(str(capture), linktype=1) as writer:
        for k, p in enumerate(frames):
            p.time = 1_700_000_000 + k
            writer.write(p)
    out = tmp_path / "out.pcap"
    replay(capture, gslbconfig.load(config, schedulers.catalog()), out, seed=1)
    tagged, answer4, _, answer6 = PcapReader(str(out))
    assert Dot1Q in answer4 and answer4[Dot1Q].vlan == 10 and answer4[IP].dst == "192.168.1.1"
    assert answer6[IPv6].src == "2001:db8:53::1" and answer6[UDP].dport == 4001
    # 192.168.1.1 is west's; no site claims the IPv6 client: the first healthy site answers
    for answer, vip in ((answer4, "10.20.0.100"), (answer6, "10.10.0.100")):
        fresh = answer.copy()
        for layer in (IP, UDP):
            if layer in fresh:
                del fresh[layer].chksum
        assert raw(Ether(raw(fresh))) == raw(answer)
        response = dns.message.from_wire(bytes(answer[UDP].payload))
        assert response.id == 99 and response.answer[0][0].address == vip


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from l4emu.datapath._batch import Batch  # noqa: E402
from l4emu.gslb.replay import GslbReplay  # noqa: E402

HOSTILE_RUN = GslbReplay(load(), seed=1)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=80), st.integers(0, 70), st.booleans()), min_size=1, max_size=6))
def test_hostile_frames_to_the_listen_address_are_answered_well_passed_or_dropped(cases):
    """Random DNS payloads, frames cut anywhere, UDP lengths that lie: every answer a valid frame whose
    checksums are right and whose DNS message parses, never an exception."""
    e = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:fe")
    frames = []
    for payload, cut, lie in cases:
        frame = raw(e / IP(src="172.16.0.1", dst="10.53.0.1") / UDP(sport=5000, dport=53, len=7 if lie else None) / payload)
        frames.append(frame[: max(14, len(frame) - cut)] if cut > 60 else frame)
    batch = Batch.from_frames(frames, 1, [10**9 * (k + 1) for k in range(len(frames))])
    answers = []
    HOSTILE_RUN.span(batch, 0, len(batch), answers)
    for _, frame, _, _, _ in answers:
        pkt = Ether(frame)
        fresh = pkt.copy()
        del fresh[IP].chksum, fresh[UDP].chksum
        assert raw(Ether(raw(fresh))) == frame
        assert dns.message.from_wire(bytes(pkt[UDP].payload)).flags & dns.flags.QR


def test_least_conn_answers_with_the_load_at_the_query_not_at_the_end_of_its_batch(tmp_path):
    """East holds one established connection when the query comes and none once it is reset, all in one
    batch: least_conn must answer west (the load at the query's moment)."""
    from l4emu.gslb.compare import with_policy

    client, asker, vip, real = "172.16.0.5", "172.16.0.6", "10.10.0.100", "10.11.0.1"
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    frames = [
        eth / IP(src=client, dst=vip) / TCP(sport=40000, dport=80, flags="S", seq=1),
        eth / IP(src=real, dst=client) / TCP(sport=8080, dport=40000, flags="SA", seq=100, ack=2),
        eth / IP(src=client, dst=vip) / TCP(sport=40000, dport=80, flags="A", seq=2, ack=101),
        eth / IP(src=asker, dst="10.53.0.1") / UDP(sport=5353, dport=53) / DNS(id=7, rd=1, qd=DNSQR(qname="www.example.com")),
        eth / IP(src=client, dst=vip) / TCP(sport=40000, dport=80, flags="R", seq=2),
    ]
    capture, out = tmp_path / "lc.pcap", tmp_path / "out.pcap"
    with PcapWriter(str(capture)) as writer:
        for k, frame in enumerate(frames):
            frame.time = 1.0 + k * 0.01
            writer.write(frame)
    summary = replay(capture, with_policy(load(), "least_conn"), out, seed=1)
    answers = [p for p in PcapReader(str(out)) if UDP in p and p[UDP].sport == 53]
    assert [a.address for a in dns.message.from_wire(bytes(answers[0][UDP].payload)).answer[0]] == ["10.20.0.100"]
    assert [s["queries_answered"] for s in summary["sites"]] == [0, 1]


def test_resolution_time_runs_from_a_clients_first_refused_query_to_the_answer_with_an_address(tmp_path):
    """Both sites down (fallback refuse): a client asks at 0 s and is refused, asks again after east is back
    and resolves 2.5 s after its first query; another is refused and never asks again (unresolved)."""
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")

    def ask(client, qid):
        return eth / IP(src=client, dst="10.53.0.1") / UDP(sport=5353, dport=53) / DNS(id=qid, rd=1, qd=DNSQR(qname="www.example.com"))

    frames = [(0.0, ask("172.16.0.5", 1)), (0.5, ask("192.168.0.5", 2)), (2.5, ask("172.16.0.5", 3)), (3.0, ask("172.16.0.9", 4))]
    capture = tmp_path / "res.pcap"
    with PcapWriter(str(capture)) as writer:
        for t, frame in frames:
            frame.time = 100 + t
            writer.write(frame)
    events = [parse_event(e) for e in ("0:site-down:east", "0:site-down:west", "2:site-up:east")]
    summary = replay(capture, load(), events=events, seed=1)
    assert summary["dns"]["REFUSED"] == 2 and summary["dns"]["NOERROR"] == 2
    east = summary["sites"][0]["resolution"]
    assert east["resolved"] == 2 and east["max_ms"] == pytest.approx(2500.001) and east["p50_ms"] == pytest.approx(0.001)
    assert summary["resolution"]["unresolved"] == 1 and summary["sites"][1]["resolution"]["resolved"] == 0
