"""DNS over TCP 53 in `gslb replay`: the emulated hosts' TCP (app "dns", hosts/_dns.pxi) is the server's side
of each conversation to a listen address. Checked on the gslb sample's conversation (two queries, the
second split over segments, the recorded server's segments superseded) and on hand-built ones for each
rule: pipelining, bad lengths, unreadable and hostile messages, and the limits on connections, answers
and idle time. Every output packet is read back by scapy, dnspython and tshark."""

from __future__ import annotations

import struct
import subprocess
import tempfile
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, UDP, Ether, PcapReader, PcapWriter, raw
from scapy.layers.dns import DNS, DNSQR

from conftest import PCAPS, needs_tshark
from l4emu import schedulers
from l4emu.gslb import config as gslbconfig
from l4emu.gslb.replay import replay

CONFIG = PCAPS / "gslb.toml"
CAPTURE = PCAPS / "gslb.pcap"
LISTEN = "10.53.0.1"
E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:fe")
NS = 1_000_000_000


def load():
    return gslbconfig.load(CONFIG, schedulers.catalog())


def checksums_ok(pkt) -> bool:
    fresh = pkt.copy()
    for layer in (IP, TCP, UDP):
        if layer in fresh:
            del fresh[layer].chksum
    return raw(Ether(raw(fresh))) == raw(pkt)


def framed(message: bytes) -> bytes:
    return struct.pack("!H", len(message)) + message


def query(qid: int, qtype: str = "A", name: str = "www.example.com") -> bytes:
    return bytes(DNS(id=qid, rd=1, qd=DNSQR(qname=name, qtype=qtype)))


def conversation(client: str, sport: int, segments: list[bytes], t0: float = 1.0, gap: float = 0.01,
                 close: bool = True) -> list:
    """The client's side only: SYN, ACK, each segment, then FIN and the last ACK (the server's side is
    the emulated one's; the ACK numbers are re-stamped into its space, so 1 stands in for them)."""
    seq = 1000
    out = [(t0, E / IP(src=client, dst=LISTEN) / TCP(sport=sport, dport=53, flags="S", seq=seq))]
    seq += 1
    t = t0 + gap
    out.append((t, E / IP(src=client, dst=LISTEN) / TCP(sport=sport, dport=53, flags="A", seq=seq, ack=1)))
    for data in segments:
        t += gap
        out.append((t, E / IP(src=client, dst=LISTEN) / TCP(sport=sport, dport=53, flags="PA", seq=seq, ack=1) / data))
        seq += len(data)
    if close:
        t += gap
        out.append((t, E / IP(src=client, dst=LISTEN) / TCP(sport=sport, dport=53, flags="FA", seq=seq, ack=1)))
        t += gap
        out.append((t, E / IP(src=client, dst=LISTEN) / TCP(sport=sport, dport=53, flags="A", seq=seq + 1, ack=1)))
    return out


def run(tmp: Path, timed: list, seed: int = 1):
    capture, out = tmp / "in.pcap", tmp / "out.pcap"
    writer = PcapWriter(str(capture), linktype=1, sync=True)
    for t, frame in sorted(timed, key=lambda x: x[0]):
        frame.time = t
        writer.write(frame)
    writer.close()
    summary = replay(capture, load(), out, seed=seed)
    return summary, list(PcapReader(str(out))) if out.stat().st_size > 24 else []


def server_side(packets, client: str | None = None, sport: int | None = None) -> list:
    return [p for p in packets if TCP in p and p[IP].src == LISTEN and p[TCP].sport == 53
            and (client is None or p[IP].dst == client) and (sport is None or p[TCP].dport == sport)]


def data(p) -> bytes:
    """The segment's payload without the Ethernet padding scapy hangs under TCP."""
    return bytes(p[TCP].payload)[: p[IP].len - p[IP].ihl * 4 - p[TCP].dataofs * 4]


def messages(segments) -> list[dns.message.Message]:
    """The server's stream, in sequence order, cut at each 2-byte length."""
    chunks = {}
    for p in segments:
        if data(p):
            chunks[p[TCP].seq] = data(p)
    stream = b"".join(chunks[k] for k in sorted(chunks))
    out = []
    while stream:
        (n,) = struct.unpack("!H", stream[:2])
        assert len(stream) >= 2 + n
        out.append(dns.message.from_wire(stream[2:2 + n]))
        stream = stream[2 + n:]
    return out


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("gslb-tcp") / "out.pcap"
    summary = replay(CAPTURE, load(), out, seed=1)
    return summary, out, list(PcapReader(str(out)))


def test_the_samples_conversation_gets_the_emulated_servers_side(sample):
    summary, _, packets = sample
    recorded = [p for p in PcapReader(str(CAPTURE)) if TCP in p and 53 in (p[TCP].sport, p[TCP].dport)]
    client_isn = next(p[TCP].seq for p in recorded if p[TCP].flags == "S")
    recorded_isn = next(p[TCP].seq for p in recorded if p[TCP].flags == "SA")
    ours = server_side(packets)
    assert all(checksums_ok(p) for p in packets if TCP in p)
    syn_ack = ours[0]
    assert syn_ack[TCP].flags == "SA" and syn_ack[TCP].ack == client_isn + 1 and syn_ack[TCP].seq != recorded_isn
    assert summary["dns_tcp"]["superseded"] == sum(1 for p in recorded if p[IP].src == LISTEN)
    answers = messages(ours)
    client_data = b"".join(data(p) for p in recorded if p[IP].dst == LISTEN)
    (n,) = struct.unpack("!H", client_data[:2])
    asked = [dns.message.from_wire(client_data[2:2 + n]), dns.message.from_wire(client_data[4 + n:])]
    assert [a.id for a in answers] == [q.id for q in asked]
    assert answers[0].flags & dns.flags.AA and answers[0].answer[0][0].address == "10.10.0.100"
    assert answers[1].rcode() == dns.rcode.NOERROR and not answers[1].answer  # AAAA: the record is A only
    # the client's ACKs now count in the emulated server's space, and the server closes after the client
    conv = [p for p in packets if TCP in p and 53 in (p[TCP].sport, p[TCP].dport)]
    sent_end = syn_ack[TCP].seq + 1 + sum(len(data(p)) for p in ours) + 1
    assert all(0 < p[TCP].ack - syn_ack[TCP].seq <= sent_end - syn_ack[TCP].seq
               for p in conv if p[IP].dst == LISTEN and p[TCP].flags != "S")
    flags = [(p[IP].src == LISTEN, str(p[TCP].flags)) for p in conv]
    assert flags.index((False, "FA")) < flags.index((True, "FA"))
    assert summary["dns_tcp"]["dns_queries"] == 2 and summary["dns_tcp"]["accepted"] == 1


@needs_tshark
def test_tshark_finds_no_warning_in_the_output(sample):
    _, out, _ = sample
    expert = subprocess.run(["tshark", "-r", str(out), "-q", "-z", "expert"], capture_output=True, text=True,
                            check=True).stdout
    assert "Chats" in expert and "Warnings" not in expert and "Errors" not in expert, expert
    fields = subprocess.run(["tshark", "-r", str(out), "-Y", "tcp.srcport == 53 && dns", "-T", "fields",
                             "-e", "dns.flags.response", "-e", "dns.flags.authoritative"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert len(fields) == 4 and set(fields) <= {"1", "True"}


def test_the_isn_comes_from_the_seed(sample, tmp_path):
    _, out, packets = sample
    again = tmp_path / "again.pcap"
    replay(CAPTURE, load(), again, seed=1)
    assert again.read_bytes() == out.read_bytes()
    other = tmp_path / "other.pcap"
    replay(CAPTURE, load(), other, seed=2)
    isn = lambda ps: server_side(ps)[0][TCP].seq  # noqa: E731
    assert isn(list(PcapReader(str(other)))) != isn(packets)


def test_pipelined_queries_in_one_segment_are_answered_in_order(tmp_path):
    stream = framed(query(1)) + framed(query(2, "AAAA")) + framed(query(3, name="nosuch.example.com"))
    summary, packets = run(tmp_path, conversation("192.168.5.5", 40000, [stream]))
    answers = messages(server_side(packets))
    assert [a.id for a in answers] == [1, 2, 3]
    assert [dns.rcode.to_text(a.rcode()) for a in answers] == ["NOERROR", "NOERROR", "NXDOMAIN"]
    assert answers[0].answer[0][0].address == "10.20.0.100"  # topology: a west client
    assert summary["dns"]["NXDOMAIN"] == 1 and summary["dns_tcp"]["dns_queries"] == 3


def test_a_bad_length_closes_and_an_unreadable_message_gets_formerr(tmp_path):
    bad = conversation("192.168.5.6", 40001, [b"\x00\x03abc"], close=False)
    garbage = b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01"  # a pointer loop
    formerr = conversation("192.168.5.7", 40002, [framed(garbage)], t0=2.0)
    response = bytes(DNS(id=7, qr=1, qd=DNSQR(qname="www.example.com")))  # a response sent to us: never answered
    reflected = conversation("192.168.5.8", 40003, [framed(response)], t0=3.0, close=False)
    summary, packets = run(tmp_path, bad + formerr + reflected)
    assert all(checksums_ok(p) for p in packets)
    for client, sport in (("192.168.5.6", 40001), ("192.168.5.8", 40003)):
        theirs = server_side(packets, client, sport)
        assert theirs[-1][TCP].flags == "FA" and not any(data(p) for p in theirs)
    (answer,) = messages(server_side(packets, "192.168.5.7"))
    assert answer.id == 0xBEEF and answer.rcode() == dns.rcode.FORMERR
    tcp = summary["dns_tcp"]
    assert (tcp["dns_bad_length"], tcp["dns_unanswered"], tcp["dns_queries"]) == (1, 1, 2)
    assert summary["dns"]["FORMERR"] == 1 and summary["dns"]["dropped_response"] == 1


def test_an_idle_connection_is_closed_after_30_s(tmp_path):
    quiet = conversation("192.168.5.9", 40004, [], close=False)
    later = E / IP(src="192.168.6.1", dst=LISTEN) / UDP(sport=5000, dport=53) / query(9)
    summary, packets = run(tmp_path, quiet + [(40.0, later)])
    fin = server_side(packets, "192.168.5.9")[-1]
    assert fin[TCP].flags == "FA" and float(fin.time) == pytest.approx(1.01 + 30, abs=1e-5)
    assert packets.index(fin) < next(i for i, p in enumerate(packets) if UDP in p)  # written in time order
    assert summary["dns_tcp"]["dns_idle_closed"] == 1


def test_a_connection_is_closed_after_100_answers(tmp_path):
    segments = [framed(query(k)) for k in range(101)]
    summary, packets = run(tmp_path, conversation("192.168.5.10", 40005, segments, gap=0.001, close=False))
    theirs = server_side(packets)
    assert [m.id for m in messages(theirs)] == list(range(100))
    # the FIN follows the 100th answer; the 101st query reaches a closed socket: RST, as Linux sends
    assert "F" in str(theirs[-2][TCP].flags) and "R" in str(theirs[-1][TCP].flags)
    assert summary["dns_tcp"]["dns_query_limit"] == 1 and summary["dns_tcp"]["dns_queries"] == 100


def test_at_most_150_connections_are_open(tmp_path):
    syns = [(1.0 + k * 1e-4, E / IP(src="192.168.7.1", dst=LISTEN) / TCP(sport=20000 + k, dport=53, flags="S", seq=k))
            for k in range(151)]
    summary, packets = run(tmp_path, syns)
    assert sum(1 for p in server_side(packets) if p[TCP].flags == "SA") == 128  # the listen backlog comes first
    # accepted ones free the SYN queue: complete 150 handshakes, then one more SYN is over the limit
    handshakes = []
    for k in range(151):
        t = 1.0 + k * 1e-3
        handshakes += [(t, E / IP(src="192.168.7.2", dst=LISTEN) / TCP(sport=30000 + k, dport=53, flags="S", seq=k)),
                       (t + 1e-4, E / IP(src="192.168.7.2", dst=LISTEN) / TCP(sport=30000 + k, dport=53, flags="A",
                                                                          seq=k + 1, ack=1))]
    summary, packets = run(tmp_path, handshakes)
    assert sum(1 for p in server_side(packets) if p[TCP].flags == "SA") == 150
    assert summary["dns_tcp"]["dns_conn_limit"] == 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(qids=st.lists(st.integers(0, 65535), min_size=1, max_size=5), cuts=st.lists(st.integers(1, 200), max_size=6))
def test_a_stream_cut_anywhere_is_answered_message_by_message(qids, cuts):
    stream = b"".join(framed(query(q, "A" if q % 2 else "AAAA")) for q in qids)
    points = sorted({c % len(stream) for c in cuts} - {0})
    segments = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)])]
    with tempfile.TemporaryDirectory() as tmp:
        _, packets = run(Path(tmp), conversation("192.168.5.11", 40006, segments))
    assert [m.id for m in messages(server_side(packets))] == qids
    assert all(checksums_ok(p) for p in packets)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300), cut=st.integers(0, 300))
def test_hostile_bytes_are_answered_or_closed_never_a_crash(data, cut):
    segments = [s for s in (data[:cut], data[cut:]) if s]
    with tempfile.TemporaryDirectory() as tmp:
        summary, packets = run(Path(tmp), conversation("192.168.5.12", 40007, segments))
    assert all(checksums_ok(p) for p in packets)
    for message in messages(server_side(packets)):
        assert message.flags & dns.flags.QR
    tcp = summary["dns_tcp"]
    assert tcp["accepted"] == 1 and tcp.get("dns_queries", 0) <= len(data) // 14


def test_over_ipv6_and_a_vlan_tag(tmp_path):
    from scapy.all import IPv6, Dot1Q

    config = tmp_path / "gslb.toml"
    config.write_text(CONFIG.read_text() + '\n[[gslb]]\nlisten = "[2001:db8:53::1]:53"\ndomain = "www.example.com"\n'
                      'policy = "topology"\nvips = { east = "10.10.0.100:80", west = "10.20.0.100:80" }\n')
    head = E / Dot1Q(vlan=10) / IPv6(src="2001:db8:ff::10", dst="2001:db8:53::1")
    frames = [(1.0, head / TCP(sport=4100, dport=53, flags="S", seq=10)),
              (1.01, head / TCP(sport=4100, dport=53, flags="A", seq=11, ack=1)),
              (1.02, head / TCP(sport=4100, dport=53, flags="PA", seq=11, ack=1) / framed(query(5))),
              (1.03, head / TCP(sport=4100, dport=53, flags="FA", seq=11 + 35, ack=1))]
    capture, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    writer = PcapWriter(str(capture), linktype=1, sync=True)
    for t, frame in frames:
        frame.time = t
        writer.write(frame)
    writer.close()
    summary = replay(capture, gslbconfig.load(config, schedulers.catalog()), out, seed=1)
    ours = [p for p in PcapReader(str(out)) if IPv6 in p and p[IPv6].src == "2001:db8:53::1"]
    assert [str(p[TCP].flags) for p in ours] == ["SA", "PA", "FA"]
    assert all(p[Dot1Q].vlan == 10 and p[Ether].dst == E.src for p in ours)
    fresh = [IPv6(raw(p[IPv6])) for p in ours]
    for p in fresh:
        del p[TCP].chksum
    assert [raw(IPv6(raw(p))) for p in fresh] == [raw(p[IPv6]) for p in ours]  # TCP checksums right
    data = bytes(ours[1][TCP].payload)
    assert dns.message.from_wire(data[2:]).id == 5 and summary["dns_tcp"]["dns_queries"] == 1
