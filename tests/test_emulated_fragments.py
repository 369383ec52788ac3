"""Fragments for a VIP whose reals are emulated (issue 15): under `reassemble` the switch rebuilds the
datagram and writes it out fragmented as it came; under `track` and `3tuple` the fragments follow the
flow to the real; either way the emulated host reassembles them (Linux's ip_defrag) and its TCP/UDP
stack answers the whole request. scapy reads every packet of both views (checksums, fragments put back
together), the answers carry what the fragmented request asked, and the same seed gives the same bytes."""
from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys

import pytest
from conftest import ROOT, needs_tshark, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, UDP, Ether, IPv6, IPv6ExtHdrFragment, fragment, fragment6, raw, rdpcap, wrpcap

from l4emu.datapath._batch import NS, Batch
from l4emu.emulate import Emulator
from l4emu.switch import Switch

sys.path.insert(0, str(ROOT / "fuzz"))
from common import (  # noqa: E402
    FRAGMENTS_CONFIG,
    HOST_REASSEMBLY_LIMIT,
    MAX_FRAGMENT_CHARGE,
    check_host_reassembly,
    encode,
    run_hosts,
)

VIP = {4: "10.0.0.100", 6: "2001:db8::100"}
REAL_UDP = {4: "10.1.0.11", 6: "2001:db8:1::11"}
REAL_TCP = {4: "10.1.0.1", 6: "2001:db8:1::1"}
CLIENT = {4: "172.16.0.9", 6: "2001:db8:ff::9"}
SOURCE = {4: "10.0.0.1", 6: "2001:db8::1"}
CLIENT_MAC, SWITCH_MAC = "02:00:00:00:00:01", "02:00:00:00:00:fe"
REQUEST_ID = {4: 0x0A0B0C04, 6: 0x0A0B0C06}
REQUEST_BYTES = 3000                    # two or three fragments at a 1500-byte MTU
MS = 1_000_000
UDP_PORT = 9000                         # not 53: tshark would read the requests as DNS
# (policy, forward): 3tuple sends fragments on with no connection, so only dr and tun reals take it
CASES = [("reassemble", "masq"), ("reassemble", "tun"), ("track", "masq"), ("track", "dr"), ("3tuple", "dr"),
         ("3tuple", "tun")]


def real_keys(forward: str, family: int, last: int) -> str:
    mac = f"02:00:00:00:{family:02x}:{last % 256:02x}"
    if forward == "dr":
        return f'  forward = "dr"\n  mac = "{mac}"\n'
    if forward == "tun":
        return f'  forward = "tun"\n  tun_type = "ipip"\n  mac = "{mac}"\n'
    return ""


def config_text(policy: str, forward: str) -> str:
    """A UDP request-reply service and an HTTP one per family, each with one emulated real."""
    text = ""
    for family in (4, 6):
        vip = VIP[family] if family == 4 else f"[{VIP[family]}]"
        for proto, real, port, extra in (("udp", REAL_UDP, UDP_PORT, "  workers = 1\n  response_bytes = 300\n"),
                                         ("tcp", REAL_TCP, 80, "")):
            address = real[family] if family == 4 else f"[{real[family]}]"
            text += (f'[[service]]\nvip = "{vip}:{port}"\nprotocol = "{proto}"\nfragments = "{policy}"\n'
                     f'source_address = "{SOURCE[family]}"\n'
                     f'  [[service.real]]\n  address = "{address}:{port}"\n  emulated = true\n{extra}'
                     + real_keys(forward, family, port))
    return text


def ip(family: int, dst: str, **fields):
    if family == 4:
        return IP(src=CLIENT[family], dst=dst, **fields)
    return IPv6(src=CLIENT[family], dst=dst)


def pieces(packet, family: int, size: int, ident: int):
    """The datagram in fragments, as a host or router would cut it (IPv4 without DF; IPv6 at the source)."""
    if family == 4:
        return fragment(packet, fragsize=size)
    return fragment6(IPv6(src=packet[IPv6].src, dst=packet[IPv6].dst) / IPv6ExtHdrFragment(id=ident)
                     / packet[IPv6].payload, size + 48)


def request_payload(family: int) -> bytes:
    """The request-reply app's request: "L4RQ", its id, padding to its size."""
    head = b"L4RQ" + struct.pack("!I", REQUEST_ID[family])
    return head + bytes((k * 7) & 0xFF for k in range(REQUEST_BYTES - len(head)))


HTTP_REQUEST = (b"GET /fragmented HTTP/1.1\r\nHost: vip\r\nX-Pad: " + b"p" * 2600 + b"\r\n\r\n")


def capture_frames(reverse: bool) -> list:
    """Per family: a UDP request in fragments; an HTTP connection whose request comes in one TCP segment
    in fragments (the ACKs are the capture's: the loop moves them into the emulated server's space)."""
    eth = Ether(src=CLIENT_MAC, dst=SWITCH_MAC)
    frames, t = [], 1_000 * MS
    for family in (4, 6):
        udp = UDP(sport=40000 + family, dport=UDP_PORT)
        datagram = ip(family, VIP[family], id=0x1600 + family) / udp / request_payload(family)
        cut = pieces(datagram, family, 1200, 0x1600 + family)
        for piece in (cut[::-1] if reverse else cut):
            frames.append((t, eth / piece))
            t += MS
        sport = 41000 + family
        frames.append((t, eth / ip(family, VIP[family]) / TCP(sport=sport, dport=80, flags="S", seq=1000)))
        ack = TCP(sport=sport, dport=80, flags="A", seq=1001, ack=1)
        frames.append((t + 2 * MS, eth / ip(family, VIP[family]) / ack))
        segment = ip(family, VIP[family], id=0x1700 + family) / TCP(sport=sport, dport=80, flags="PA", seq=1001,
                                                                      ack=1) / HTTP_REQUEST
        cut = pieces(segment, family, 1200, 0x1700 + family)
        t += 4 * MS
        for piece in (cut[::-1] if reverse else cut):
            frames.append((t, eth / piece))
            t += MS
        t += 10 * MS
    return frames


def write_capture(path, reverse: bool = False):
    packets = []
    for t, frame in capture_frames(reverse):
        frame.time = t / 1e9
        packets.append(frame)
    wrpcap(str(path), packets)


def replay(tmp_path, policy: str, forward: str, reverse: bool = False, seed: int = 5) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config, capture = tmp_path / "lb.toml", tmp_path / "in.pcap"
    config.write_text(config_text(policy, forward))
    write_capture(capture, reverse)
    out, inside = tmp_path / "out.pcap", tmp_path / "inside.pcap"
    summary = json.loads(run_cli("replay", capture, "-c", config, "-o", out, "--inside", inside, "--seed", seed,
                                 "--json").stdout)
    return {"out": out, "inside": inside, "summary": summary}


def ones_sum_ok(data: bytes) -> bool:
    """RFC 1071: a checksummed block (checksum field included) sums to 0xFFFF."""
    data += b"\0" * (len(data) & 1)
    total = sum(int.from_bytes(data[k:k + 2], "big") for k in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def split_ip(b: bytes):
    """(protocol, payload, header, fragment key, offset, more) of an IP packet; key None: not a fragment."""
    if b[0] >> 4 == 4:
        ihl, total, bits = (b[0] & 15) * 4, int.from_bytes(b[2:4], "big"), int.from_bytes(b[6:8], "big")
        assert ones_sum_ok(b[:ihl]), "IPv4 header checksum"
        key = (4, b[12:20], b[9], b[4:6]) if bits & 0x3FFF else None
        return b[9], b[ihl:total], b[:ihl], key, (bits & 0x1FFF) * 8, bool(bits & 0x2000)
    end = 40 + int.from_bytes(b[4:6], "big")
    if b[6] != 44:
        return b[6], b[40:end], b[:40], None, 0, False
    frag = b[40:48]
    header = b[:6] + bytes([frag[0]]) + b[7:40]
    return frag[0], b[48:end], header, (6, b[8:40], frag[0], frag[4:8]), int.from_bytes(frag[2:4], "big") & 0xFFF8, \
        bool(frag[3] & 1)


def with_length(header: bytes, payload: bytes) -> bytes:
    h = bytearray(header)
    if h[0] >> 4 == 4:
        h[2:4] = (len(h) + len(payload)).to_bytes(2, "big")
        h[6:8] = b"\0\0"
        h[10:12] = b"\0\0"
        total = sum(int.from_bytes(h[k:k + 2], "big") for k in range(0, len(h), 2))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        h[10:12] = (~total & 0xFFFF).to_bytes(2, "big")
    else:
        h[4:6] = len(payload).to_bytes(2, "big")
    return bytes(h) + payload


class Datagrams:
    """An independent reassembly of what a view shows: every packet's checksums checked, fragments put
    back together by (source, destination, protocol, ID) and checked whole, tunnels opened (their inner
    packets fragmented or not); `whole` holds the innermost TCP/UDP datagrams, in the order completed."""

    def __init__(self, frames):
        self.whole, self.queues = [], {}
        for frame in frames:
            self.take(raw(frame)[14:])
        assert not self.queues, "fragments left over"

    def take(self, b: bytes):
        proto, payload, header, key, offset, more = split_ip(b)
        if key is not None:
            queue = self.queues.setdefault(key, {"header": None, "parts": {}})
            queue["parts"][offset] = (payload, more)
            if offset == 0:
                queue["header"] = header
            parts = sorted(queue["parts"].items())
            expected, done = 0, False
            for at, (data, more_after) in parts:
                if at != expected:
                    break
                expected += len(data)
                done = not more_after
            if not (done and queue["header"] is not None):
                return
            del self.queues[key]
            self.take(with_length(queue["header"], b"".join(data for _, (data, _) in parts)))
            return
        if proto in (4, 41):                         # ipip: the inner packet, as the real takes it out
            self.take(payload)
            return
        if proto in (6, 17):
            if b[0] >> 4 == 4:
                pseudo = b[12:20] + bytes([0, proto]) + len(payload).to_bytes(2, "big")
            else:
                pseudo = b[8:40] + len(payload).to_bytes(4, "big") + bytes([0, 0, 0, proto])
            if not (proto == 17 and b[0] >> 4 == 4 and payload[6:8] == b"\0\0"):
                assert ones_sum_ok(pseudo + payload), "TCP/UDP checksum"
            self.whole.append(IP(b) if b[0] >> 4 == 4 else IPv6(b))


def answers(datagrams, family: int):
    """The emulated reals' answers to the client, as it receives them (from the VIP)."""
    layer = IP if family == 4 else IPv6
    return [p for p in datagrams if layer in p and p[layer].src == VIP[family] and p[layer].dst == CLIENT[family]]


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("policy,forward", CASES)
def test_a_fragmented_request_is_reassembled_and_answered(tmp_path, policy, forward, family):
    run = replay(tmp_path, policy, forward, reverse=(policy == "track"))
    outside, inside = Datagrams(rdpcap(str(run["out"]))), Datagrams(rdpcap(str(run["inside"])))
    got = answers(outside.whole, family)
    udp = [p for p in got if UDP in p and p[UDP].sport == UDP_PORT]
    tcp = [p for p in got if TCP in p and p[TCP].sport == 80 and len(p[TCP].payload)]
    assert udp and all(raw(p[UDP].payload)[:8] == b"L4RA" + struct.pack("!I", REQUEST_ID[family]) for p in udp)
    assert tcp and raw(tcp[0][TCP].payload).startswith(b"HTTP/1.1 200 OK")
    # the real got the whole request: the datagram and the segment, as the client sent them
    layer = IP if family == 4 else IPv6
    taken = [p for p in inside.whole if layer in p and p[layer].src == CLIENT[family]]
    assert any(UDP in p and raw(p[UDP].payload) == request_payload(family) for p in taken)
    assert any(TCP in p and raw(p[TCP].payload) == HTTP_REQUEST for p in taken)
    reassembly = run["summary"]["emulated"]["host_reassembly"]
    assert reassembly["reasm_memory"] == 0 and "fragmented_undelivered" not in run["summary"]["emulated"]
    # before its answer, the client's fragments went out as the switch writes them: whole under no policy
    fragments = [p for p in rdpcap(str(run["inside"])) if (IP in p and (p[IP].flags.MF or p[IP].frag))
                 or IPv6ExtHdrFragment in p]
    assert fragments


@needs_tshark
@pytest.mark.parametrize("policy,forward", [("reassemble", "masq"), ("3tuple", "tun")])
def test_tshark_reassembles_both_views_and_finds_no_error(tmp_path, policy, forward):
    """tshark puts the fragments together (its own reassembly), follows HTTP through, and every IP, TCP
    and UDP checksum it checks is good."""
    run = replay(tmp_path, policy, forward)
    for view in ("out", "inside"):
        expert = subprocess.run(["tshark", "-r", str(run[view]), "-q", "-z", "expert"], capture_output=True,
                                text=True, check=True).stdout
        assert "Errors" not in expert, (view, expert)
        fields = subprocess.run(["tshark", "-r", str(run[view]), "-o", "ip.check_checksum:TRUE",
                                 "-o", "tcp.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
                                 "-T", "fields", "-e", "ip.checksum.status", "-e", "tcp.checksum.status",
                                 "-e", "udp.checksum.status", "-e", "http.response.code"],
                                capture_output=True, text=True, check=True).stdout
        statuses = set(fields.replace(",", " ").split()) - {"200"}
        assert statuses == {"1"}, (view, statuses)             # 1 = Good
        if view == "out":
            assert "200" in fields.split()                     # the answer to the fragmented request


@pytest.mark.parametrize("policy,forward", [("reassemble", "masq"), ("track", "dr")])
def test_same_seed_same_bytes(tmp_path, policy, forward):
    first = replay(tmp_path / "a", policy, forward, seed=9)
    second = replay(tmp_path / "b", policy, forward, seed=9)
    for view in ("out", "inside"):
        assert hashlib.sha256(first[view].read_bytes()).digest() == hashlib.sha256(second[view].read_bytes()).digest()


FUZZ_VIPS = [(IP, "10.0.0.100", "172.16.0.1", 17, 53), (IP, "10.0.0.100", "172.16.0.1", 6, 80),
             (IPv6, "2001:db8::100", "2001:db8:ff::10", 17, 53), (IPv6, "2001:db8::100", "2001:db8:ff::10", 6, 80)]
hostile_fragment = st.tuples(st.sampled_from(range(len(FUZZ_VIPS))), st.integers(0, 3), st.integers(0, 400),
                             st.booleans(), st.binary(min_size=0, max_size=300))


def hostile_frame(vip: int, ident: int, offset: int, more: bool, data: bytes) -> bytes:
    """A fragment for one of common.FRAGMENTS_CONFIG's VIPs: any offset (8-byte units), length and MF bit."""
    layer, dst, src, proto, port = FUZZ_VIPS[vip]
    eth = Ether(src=CLIENT_MAC, dst=SWITCH_MAC)
    if offset == 0:                                 # a first fragment: the ports where a host looks for them
        header = UDP(sport=40000, dport=port) if proto == 17 else TCP(sport=40000, dport=port, flags="PA")
        data = header.build() + data
    if layer is IP:
        return raw(eth / IP(src=src, dst=dst, id=ident, proto=proto, flags="MF" if more else 0, frag=offset) / data)
    return raw(eth / IPv6(src=src, dst=dst) / IPv6ExtHdrFragment(nh=proto, id=ident, offset=offset, m=int(more))
               / data)


@settings(max_examples=30, deadline=None)
@given(st.lists(hostile_fragment, min_size=1, max_size=24), st.lists(st.integers(0, 255), min_size=24, max_size=24))
def test_hostile_fragments_never_crash_a_host_or_outlive_ipfrag_time(fragments, gaps):
    """Fragments of any offset, size, MF bit and overlap, through every policy to emulated hosts (the
    fuzz harness's body): the invariants hold, the hosts' reassembly stays within its limit and holds
    nothing once every datagram's ipfrag_time is over (common.check_host_reassembly)."""
    frames = [hostile_frame(*f) for f in fragments]
    run_hosts(encode(1, frames, gaps[:len(frames)]), FRAGMENTS_CONFIG, check_host_reassembly)


def test_a_fragment_flood_to_an_emulated_host_stays_within_its_limit_and_is_counted():
    """12,000 never-completed IPv6 datagrams (a middle fragment each, 1,200 bytes) hashed (3tuple) to an
    emulated tun real: its reassembly holds at most ipfrag_high_thresh, refuses the rest (counted), and
    lets every datagram go ipfrag_time (30 s) after it came, counted as timed out; a datagram sent after
    the flood is reassembled and answered."""
    template = bytearray(hostile_frame(2, 0, 100, True, bytes(1200)))
    id_at = 14 + 40 + 4
    frames = []
    for k in range(12_000):
        template[id_at:id_at + 4] = k.to_bytes(4, "big")
        frames.append(bytes(template))
    switch = Switch(FRAGMENTS_CONFIG, seed=1)
    emulator = Emulator(switch)
    emulator.run(Batch.from_frames(frames, 1, [NS + k * 1000 for k in range(len(frames))]))
    counts = emulator.host_reassembly()
    assert counts["reasm_over_memory"] > 0 and counts["reasm_memory"] <= HOST_REASSEMBLY_LIMIT + MAX_FRAGMENT_CHARGE
    assert counts["reasm_peak_memory"] <= HOST_REASSEMBLY_LIMIT + MAX_FRAGMENT_CHARGE
    request = [raw(Ether(src=CLIENT_MAC, dst=SWITCH_MAC) / piece) for piece in pieces(
        IPv6(src="2001:db8:ff::10", dst="2001:db8::100") / UDP(sport=40000, dport=53) / bytes(2000), 6, 1200, 99_999)]
    emulator.run(Batch.from_frames(request, 1, [32 * NS, 32 * NS + 1000]))   # the flood's queues timed out first
    counts = emulator.host_reassembly()
    assert counts["reasm_timeout"] == counts["reasm_reqds"] - counts["reasm_over_memory"] - 2
    assert counts["reasm_oks"] == 1 and counts["reasm_memory"] == 0 and emulator.fragmented > 0
    assert emulator.answers == 1


@pytest.mark.parametrize("policy,forward", [("reassemble", "masq"), ("track", "dr"), ("3tuple", "tun")])
def test_live_intercept_hands_the_hosts_fragments_they_reassemble(tmp_path, policy, forward):
    """Live mode's path (switch.process over a batch, then Emulator.intercept): the fragments the switch
    sent to an emulated real (a reassembled datagram's pieces, tracked or hashed ones) are taken from the
    batch (not sent on) and the host answers the whole request once."""
    config = tmp_path / "lb.toml"
    config.write_text(config_text(policy, forward))
    switch = Switch.from_config(config, seed=1)
    written: list = []
    emulator = Emulator(switch, outside=lambda out: written.append(out), restamp=False)
    frames = [raw(frame) for _, frame in capture_frames(reverse=policy == "track")][:3]    # the IPv4 UDP request
    batch = Batch.from_frames(frames, 1, [NS + k * MS for k in range(len(frames))])
    switch.process(batch)
    emulator.intercept(batch)
    emulator.advance(2 * NS)                   # the request-reply app serves it
    emulator.flush()
    got = [IP(out.frame[14:]) for out in written if out.frame[14] >> 4 == 4]
    udp = [p for p in got if UDP in p and p[UDP].sport == UDP_PORT and p[IP].dst == CLIENT[4]]
    assert [raw(p[UDP].payload)[:8] for p in udp] == [b"L4RA" + struct.pack("!I", REQUEST_ID[4])]
    assert not {batch.result(k)[0] for k in range(len(batch))} & {"new", "forward", "more"}     # none sent on
    assert emulator.host_reassembly()["reasm_oks"] == 1


@pytest.mark.parametrize("family", [4, 6])
def test_fragments_straight_to_an_emulated_hosts_address_are_reassembled_and_answered(tmp_path, family):
    """Not for a VIP (the switch passes them untouched): a client's fragmented request to the real's own
    address reaches its host, which puts it together and answers from that address."""
    config = tmp_path / "lb.toml"
    config.write_text(config_text("drop", "masq"))
    switch = Switch.from_config(config, seed=1)
    written: list = []
    emulator = Emulator(switch, outside=lambda out: written.append(out), inside=lambda out: None)
    datagram = ip(family, REAL_UDP[family], id=0x1900) / UDP(sport=40000, dport=UDP_PORT) / request_payload(family)
    frames = [raw(Ether(src=CLIENT_MAC, dst=SWITCH_MAC) / piece)
              for piece in pieces(datagram, family, 1200, 0x1900)[::-1]]
    emulator.run(Batch.from_frames(frames, 1, [NS + k * MS for k in range(len(frames))]))
    emulator.advance(2 * NS)
    emulator.flush()
    got = Datagrams([Ether(out.frame) for out in written]).whole
    layer = IP if family == 4 else IPv6
    answers = [p for p in got if UDP in p and p[layer].src == REAL_UDP[family] and p[layer].dst == CLIENT[family]]
    assert [raw(p[UDP].payload)[:8] for p in answers] == [b"L4RA" + struct.pack("!I", REQUEST_ID[family])]
    assert emulator.host_reassembly()["reasm_oks"] == 1


@pytest.mark.parametrize("family", [4, 6])
def test_a_datagram_reassembled_for_no_service_passes_as_every_fragment_it_came_in(tmp_path, family):
    """Under `reassemble` a datagram to a VIP port no service serves is rebuilt, then passes as the fragments
    it came in: beside emulated reals, `-o` holds every one of them, as a replay without hosts writes them
    (the loop once wrote only the last: the others, held when they came, were lost)."""
    config = tmp_path / "lb.toml"
    config.write_text(config_text("reassemble", "masq"))
    plain = tmp_path / "plain.toml"
    plain.write_text(config.read_text().replace("  emulated = true\n", "").replace("  workers = 1\n  response_bytes = 300\n", ""))
    eth = Ether(src=CLIENT_MAC, dst=SWITCH_MAC)
    datagram = ip(family, VIP[family], id=0x1900 + family) / UDP(sport=42000, dport=UDP_PORT + 1) / (b"x" * 3000)
    frames = [eth / piece for piece in pieces(datagram, family, 1200, 0x1900 + family)]
    for k, frame in enumerate(frames):
        frame.time = 1 + k / 1000
    capture = tmp_path / "in.pcap"
    wrpcap(str(capture), frames)
    written = {}
    for name, cfg in (("emulated", config), ("plain", plain)):
        out = tmp_path / f"{name}.pcap"
        run_cli("replay", capture, "-c", cfg, "-o", out, "--seed", 1)
        written[name] = [raw(p) for p in rdpcap(str(out))]
    assert len(frames) == 3 and written["emulated"] == written["plain"] == [raw(f) for f in frames]
