"""Hostile input as properties: any bytes as a frame or a capture, valid packets with one field broken.

Whatever comes in, no exception escapes; a packet is translated correctly (only the NATed address,
port and checksums change, and each checksum is exactly as valid as it was, checked with scapy), or
it is a counted drop or a pass, byte for byte untouched; the counters add up (every packet gets
one verdict); the table never holds more than its maximum. Fuzzer findings replay from fuzz_cases/.
"""
from __future__ import annotations

import sys
import tomllib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, in4_chksum
from scapy.layers.inet6 import IPv6, in6_chksum
from scapy.layers.l2 import Ether
from scapy.utils import checksum

from conftest import NS, ROOT
from l4emu import config as configmod
from l4emu.datapath._batch import Batch
from l4emu.io.pcap._read import Scanner
from l4emu.io import CaptureError, open_capture, open_writer
from l4emu.switch import Switch

sys.path.insert(0, str(ROOT / "fuzz"))
from common import (HARNESSES, LINKTYPES, VNET_HDR_LEN, check_invariants, encode, encode_records,  # noqa: E402
                    run_capture, run_frames, run_tun)
from make_corpus import tun_records  # noqa: E402

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
VIP4, VIP6 = "10.0.0.100", "2001:db8::100"
CLIENT4, CLIENT6 = "172.16.0.1", "2001:db8:ff::10"
CONFIG = "".join(
    f'[[service]]\nvip = "{vip}:{port}"\nprotocol = "{proto}"\n'
    + "".join(f'  [[service.real]]\n  address = "{real}:{8000 + port}"\n' for real in reals)
    for vip, reals in (("10.0.0.100", ("10.1.0.1", "10.1.0.2")),
                       ("[2001:db8::100]", ("[2001:db8:1::1]", "[2001:db8:1::2]")))
    for port, proto in ((80, "tcp"), (53, "udp")))
FUZZ_CASES = ROOT / "tests" / "fuzz_cases"
_CONFIG = configmod.from_dict(tomllib.loads(CONFIG), {"rr"})

# Every header field with its width; "benign" ones carry nothing the switch may judge a packet by,
# so a packet with only such a field changed must still be translated.
FIELDS = {
    IP: {"version": 4, "ihl": 4, "tos": 8, "len": 16, "id": 16, "flags": 3, "frag": 13, "ttl": 8, "proto": 8,
         "chksum": 16, "src": 32, "dst": 32},
    IPv6: {"version": 4, "tc": 8, "fl": 20, "plen": 16, "nh": 8, "hlim": 8, "src": 128, "dst": 128},
    TCP: {"sport": 16, "dport": 16, "seq": 32, "ack": 32, "dataofs": 4, "reserved": 3, "window": 16,
          "chksum": 16, "urgptr": 16, "flags": 8},
    UDP: {"sport": 16, "dport": 16, "len": 16, "chksum": 16},
}
BENIGN = {"tos", "id", "ttl", "chksum", "tc", "fl", "hlim", "seq", "ack", "window", "urgptr", "reserved"}


def hostile_switch(seed: int = 1) -> Switch:
    return Switch(_CONFIG, seed=seed)


def counters_add_up(switch, packets: int) -> None:
    s = switch.stats()
    verdicts = s["new"] + s["forward"] + s["reply"] + s["answer"] + s["passed"] + s["dropped_total"] + s["icmp"]
    assert s["packets"] == packets == verdicts
    # an ICMP error the switch sends (TTL ran out) stands for a dropped packet: its reason counts with the drops
    assert s["dropped_total"] + s["icmp"] == sum(s["dropped"].values())
    assert s["passed"] == sum(s["passed_by_reason"].values())
    table = switch.table_info()
    assert table["used"] <= table["peak"] <= switch.config.max_connections


# ---- any bytes ------------------------------------------------------------------------------------

@SETTINGS
@given(linktype=st.sampled_from(LINKTYPES), frames=st.lists(st.binary(max_size=120), min_size=1, max_size=8),
       gaps=st.lists(st.integers(0, 40), min_size=8, max_size=8))
def test_any_bytes_as_frames_on_every_link_type(linktype, frames, gaps):
    """Several frames on a 4-entry table with short timeouts (fuzz/common.py): the fuzz harness's checks."""
    switch = run_frames(encode(linktype, frames, gaps))
    counters_add_up(switch, len(frames))


@SETTINGS
@given(data=st.binary(max_size=600))
def test_any_bytes_as_a_capture_in_memory(data):
    run_capture(data)


TUN_RECORDS = tun_records()
# A record: one of live mode's usual reads, one of them with some bytes overwritten (the virtio
# header's flags, GSO type and checksum offsets included), or any bytes.
RECORD = st.one_of(
    st.sampled_from(TUN_RECORDS),
    st.builds(lambda record, edits: bytes(edits.get(k, b) for k, b in enumerate(record)),
              st.sampled_from(TUN_RECORDS), st.dictionaries(st.integers(0, 80), st.integers(0, 255), max_size=4)),
    st.binary(max_size=90))


@SETTINGS
@given(records=st.lists(RECORD, max_size=16))
def test_any_records_through_live_modes_tun_io(records):
    """TunIO.read_into / write_from (fuzz/common.py's run_tun): every packet read, each kept one
    written, GSO writes well-formed, counters add up, whatever the virtio headers say."""
    run_tun(encode_records(records))


def test_live_tun_records_coalesce_udp_runs():
    """The unedited reads: every packet comes back, UDP runs of one flow in one GSO write each."""
    counters = {}
    switch = run_tun(encode_records(TUN_RECORDS), counters)
    readable = sum(len(r) > VNET_HDR_LEN for r in TUN_RECORDS)
    assert counters["packets_in"] == readable == switch.stats()["packets"]
    assert counters["packets_out"] == readable - switch.stats()["dropped_total"]
    assert counters["gso_out"] == 3      # 3 of the first flow; 2 and a short one; 3 over IPv6


SEED_CAPTURES = sorted((ROOT / "pcaps").glob("*.pcap*"))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.sampled_from(SEED_CAPTURES), cut=st.integers(0, 3000),
       edits=st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 255)), max_size=4), fmt=st.sampled_from(["pcap", "pcapng"]))
def test_any_capture_file_replays_and_what_was_read_is_written(tmp_path_factory, seed, cut, edits, fmt):
    """A capture cut and edited anywhere: it fails at open with a message naming the file, or every
    packet read before a fault is processed and written, and reads back from the output."""
    data = bytearray(seed.read_bytes()[:cut])
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    tmp = tmp_path_factory.mktemp("cap")
    path, out = tmp / "in.cap", tmp / f"out.{fmt}"
    path.write_bytes(bytes(data))
    try:
        reader = open_capture(path)
    except CaptureError as e:
        assert str(e).startswith(f"{path}: ") and e.problem
        return
    switch = hostile_switch()
    delivered = []
    with reader, open_writer(out, reader.interfaces, nanosecond=reader.nanosecond) as writer:
        try:
            for batch in reader.batches(capacity=7):
                switch.process(batch)
                writer.write(batch)
                delivered += [batch.packet(i) for i in range(len(batch)) if batch.result(i)[0] != "drop"]
        except Exception as e:      # only a pcap file refusing a second link type may stop the writer
            assert fmt == "pcap" and "several link types" in str(e)
            return
    if reader.error is not None:
        assert str(reader.error).startswith(f"{path}: offset ") and 0 <= reader.error.offset <= len(data)
    counters_add_up(switch, reader.packets_read)
    with open_capture(out) as again:
        written = [b.packet(i) for b in again.batches() for i in range(len(b))]
        assert again.error is None
    assert written == delivered


# ---- valid packets, one field broken ------------------------------------------------------------

def _ip_layer(pkt):
    return pkt[IP] if IP in pkt else pkt[IPv6]


def _checksums(frame: bytes):
    """(IPv4 header checksum valid, L4 checksum valid, UDP checksum absent) of a frame, by scapy."""
    pkt = Ether(frame)
    ip = _ip_layer(pkt)
    raw_ip = frame[14:]
    if ip.version == 4:
        ihl = ip.ihl * 4
        header_ok = checksum(raw_ip[:ihl]) == 0
        segment = raw_ip[ihl:ip.len]
        l4_ok = in4_chksum(ip.proto, ip, segment) == 0
    else:
        header_ok = True
        segment = raw_ip[40:40 + ip.plen]
        l4_ok = in6_chksum(ip.nh, ip, segment) == 0
    no_udp_sum = (ip.proto if ip.version == 4 else ip.nh) == 17 and segment[6:8] == b"\0\0"
    return header_ok, l4_ok, no_udp_sum


def _addr_slices(family: int, dst: bool):
    if family == 4:
        return slice(14 + (16 if dst else 12), 14 + (20 if dst else 16))
    return slice(14 + (24 if dst else 8), 14 + (40 if dst else 24))


def _assert_translated(before: bytes, after: bytes, family: int, dst: bool, addr: bytes, port: int) -> None:
    """Only the address, the port, the TTL / hop limit (one less: NAT routes the packet) and the checksums
    changed, to the expected values; every checksum is as valid as it was (RFC 1624 keeps a good one good
    and a bad one bad)."""
    ip_len = 20 if family == 4 else 40
    l4 = 14 + ((before[14] & 0x0F) * 4 if family == 4 else ip_len)
    proto = before[14 + 9] if family == 4 else before[14 + 6]
    csum = l4 + (16 if proto == 6 else 6)
    port_at = l4 + (2 if dst else 0)
    expected = bytearray(before)
    expected[_addr_slices(family, dst)] = addr
    expected[port_at:port_at + 2] = port.to_bytes(2, "big")
    expected[_hop_at(family)] = before[_hop_at(family)] - 1
    mask = [csum, csum + 1] + ([14 + 10, 14 + 11] if family == 4 else [])
    for k in mask:
        expected[k] = after[k]
    assert after == bytes(expected)
    ok_before, ok_after = _checksums(before), _checksums(after)
    assert ok_before[0] == ok_after[0]
    if ok_before[2]:
        assert ok_after[2]                      # UDP "no checksum" stays 0
    else:
        assert ok_before[1] == ok_after[1]


def _hop_at(family: int) -> int:
    """Where the TTL (IPv4) or hop limit (IPv6) sits in an Ethernet frame."""
    return 14 + (8 if family == 4 else 7)


def _client_packet(family, proto, sport, payload):
    ip = IP(src=CLIENT4, dst=VIP4) if family == 4 else IPv6(src=CLIENT6, dst=VIP6)
    l4 = TCP(sport=sport, dport=80, flags="S", seq=7) if proto == "tcp" else UDP(sport=sport, dport=53)
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / l4 / payload


def _reply_packet(family, proto, real, sport, payload):
    client = CLIENT4 if family == 4 else CLIENT6
    ip = IP(src=str(real.address), dst=client) if family == 4 else IPv6(src=str(real.address), dst=client)
    l4 = (TCP(sport=real.port, dport=sport, flags="SA", seq=9, ack=8) if proto == "tcp"
          else UDP(sport=real.port, dport=sport))
    return Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / ip / l4 / payload


def _corrupt(pkt, layer, field, value):
    bits = FIELDS[layer][field]
    value &= (1 << bits) - 1
    if field in ("src", "dst"):
        value = (".".join(str(b) for b in value.to_bytes(4, "big")) if bits == 32
                 else ":".join(value.to_bytes(16, "big").hex()[k:k + 4] for k in range(0, 32, 4)))
    pkt[layer].setfieldval(field, value)
    return bytes(pkt)


@st.composite
def broken_packets(draw):
    family = draw(st.sampled_from([4, 6]))
    proto = draw(st.sampled_from(["tcp", "udp"]))
    layers = [IP if family == 4 else IPv6, TCP if proto == "tcp" else UDP]
    layer = draw(st.sampled_from(layers))
    field = draw(st.sampled_from([None] + sorted(FIELDS[layer])))
    return (family, proto, draw(st.booleans()), layer, field, draw(st.integers(0, (1 << 128) - 1)),
            draw(st.integers(1024, 65535)), draw(st.binary(max_size=24)))


@settings(max_examples=300, deadline=None)
@given(case=broken_packets())
def test_a_valid_packet_with_one_field_broken(case):
    """To a VIP (a new flow) or a reply on an open flow, with one header field set to anything."""
    family, proto, reply, layer, field, value, sport, payload = case
    switch = hostile_switch()
    packets = 0
    if reply:
        opener = Batch.from_frames([bytes(_client_packet(family, proto, sport, b""))], 1, [NS])
        switch.process(opener)
        verdict, real_index = opener.result(0)
        assert verdict == "new"
        service, real = switch.reals[real_index]
        pkt = _reply_packet(family, proto, real, sport, payload)
        packets += 1
    else:
        pkt = _client_packet(family, proto, sport, payload)
    frame = bytes(pkt) if field is None else _corrupt(pkt, layer, field, value)
    batch = Batch.from_frames([frame], 1, [2 * NS])
    switch.process(batch)
    verdict, detail = batch.result(0)
    out = batch.packet(0)
    counters_add_up(switch, packets + 1)
    if verdict == "icmp":                       # TTL / hop limit 1 or 0: ICMP time exceeded in its place
        assert field in ("ttl", "hlim") and frame[_hop_at(family)] <= 1
        return
    if verdict in ("pass", "drop"):
        assert out == frame
        assert field is not None and field not in BENIGN, f"{field} broken: {verdict} {detail}"
        return
    if reply:
        assert verdict == "reply" and detail == real_index
        _assert_translated(frame, out, family, False, service.vip.packed, service.port)
    else:
        assert verdict == "new"
        _, real = switch.reals[detail]
        _assert_translated(frame, out, family, True, real.address.packed, real.port)


# ---- fuzzer findings ------------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(FUZZ_CASES.glob("*/*")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fuzz_finding_stays_fixed(case):
    """Inputs kept in tests/fuzz_cases/: whatever a fuzzer crashed on, and the boundary inputs that
    caught deliberately weakened length checks (fuzz/README.md). They run clean here, and under
    AddressSanitizer on every fuzz/run.sh."""
    check_invariants(HARNESSES[case.parent.name](case.read_bytes()))


@pytest.mark.parametrize("empty", [b"", bytearray(), memoryview(b"")])
def test_an_empty_buffer_is_a_clean_fault(empty):
    """Found by the debug build (bounds checks on): the reader took &view[0] of an empty buffer."""
    scanner = Scanner(empty)
    assert scanner.failed and scanner.problem == "0 bytes are too few for a capture file"
    assert scanner.fill(Batch(1)) == 0
