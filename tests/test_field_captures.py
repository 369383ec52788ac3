"""Captures from the field, through the `l4emu` command: what tcpdump's test files hold, rebuilt by hand.

Records over the snaplen, BIG TCP/GSO lengths, LINKTYPE_IPV4/IPV6, routing headers with segments
left, timestamps past 2106 and invalid sub-second fields, and files that libpcap refuses. Each is read
(with a warning where libpcap or Wireshark would differ), and what comes out is checked with scapy,
tshark or by hand against an independent checksum.
"""
from __future__ import annotations

import json
import socket
import struct
import subprocess

from hypothesis import given, settings, strategies as st
from scapy.all import (ICMPv6DestUnreach, IP, IPv6, IPv6ExtHdrRouting, IPv6ExtHdrSegmentRouting, TCP, UDP, Ether,
                       raw, rdpcap)
from scapy.layers.inet6 import IPv6ExtHdrHopByHop, Jumbo
from scapy.utils import checksum

from conftest import NS, needs_tshark, run_cli
from l4emu.datapath._batch import Batch
from l4emu.switch import Switch
from pcapio_build import epb, idb, pcap_header, pcap_record, shb

T0 = 1_700_000_000 * 10**9
VIP6, REAL6 = "2001:db8::100", "2001:db8:1::1"


def eth():
    """Addresses given: scapy would otherwise look for a route and MAC for each packet it builds."""
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def write(path, header, records):
    """A pcap of header + (ts_ns, frame) records, or of ready-made record bytes."""
    path.write_bytes(header + b"".join(r if isinstance(r, bytes) else pcap_record("<", r[0], r[1]) for r in records))
    return path


def replay(src, *args):
    proc = run_cli("replay", src, "--json", *args)
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("l4emu: warning: ")]
    assert len(warnings) == len(proc.stderr.splitlines()), proc.stderr
    return json.loads(proc.stdout), warnings


def syn(dst="10.0.0.100", sport=40000, **tcp):
    return raw(eth() / IP(src="172.16.0.1", dst=dst) / TCP(sport=sport, dport=80, flags="S", **tcp))


def records(path):
    """(caplen bytes, origlen) of each record of a little-endian pcap, read by hand: scapy stops at 64 KiB."""
    data, at, out = path.read_bytes(), 24, []
    while at < len(data):
        caplen, origlen = struct.unpack_from("<II", data, at + 8)
        out.append((data[at + 16:at + 16 + caplen], origlen))
        at += 16 + caplen
    return out


def tshark(path, *fields):
    run = subprocess.run(["tshark", "-r", str(path), "-T", "fields", *sum((["-e", f] for f in fields), [])],
                         capture_output=True, text=True, check=True)
    return [line.split("\t") for line in run.stdout.splitlines()]


# ---- records over the snaplen ------------------------------------------------------------------

def test_records_over_the_snaplen_are_read_whole_with_one_warning(tmp_path):
    dns = [raw(eth() / IP(src="172.16.0.1", dst="10.0.0.100") / UDP(sport=5000 + k, dport=53) / (b"q" * 40))
           for k in range(3)]
    src = write(tmp_path / "in.pcap", pcap_header(snaplen=60), [(T0 + k, f) for k, f in enumerate(dns)])
    out = tmp_path / "out.pcap"
    summary, warnings = replay(src, "-o", out)
    assert warnings == [f"l4emu: warning: {src}: offset 24: record length 82 exceeds snaplen 60 (3 records): read "
                        "whole, as Wireshark does (libpcap cuts such records to the snaplen)"]
    assert summary["error"] is None and summary["new"] == 3
    back = rdpcap(str(out))
    assert [len(p) for p in back] == [82] * 3
    assert [p[IP].dst for p in back] == ["10.1.0.11", "10.1.0.12", "10.1.0.11"]
    assert all(raw(p[UDP].payload) == b"q" * 40 for p in back)


def test_a_pcapng_packet_over_its_interface_snaplen_is_read_whole(tmp_path):
    frame = raw(eth() / IP(src="172.16.0.1", dst="192.0.2.1") / UDP() / (b"z" * 60))
    src = tmp_path / "in.pcapng"
    src.write_bytes(shb() + idb("<", 1, 64) + epb("<", 0, 1, frame) + epb("<", 0, 2, frame[:64], origlen=len(frame)))
    out = tmp_path / "out.pcapng"
    summary, warnings = replay(src, "-o", out)
    assert warnings[0] == (f"l4emu: warning: {src}: offset 48: record length 102 exceeds snaplen 64: read whole, "
                           "as Wireshark does (libpcap cuts such records to the snaplen)")
    assert "no packet was for a service" in warnings[1] and len(warnings) == 2
    assert summary["written"] == 2 and [raw(p) for p in rdpcap(str(out))] == [frame, frame[:64]]


# ---- BIG TCP / GSO: IP length 0, jumbograms -------------------------------------------------------

def pseudo_sum_ok(src, dst, proto, segment, v6):
    """The L4 checksum over a pseudo-header whose length is the segment's, in 32 bits (as for a jumbogram)."""
    family = socket.AF_INET6 if v6 else socket.AF_INET
    pseudo = socket.inet_pton(family, src) + socket.inet_pton(family, dst) + struct.pack("!II", len(segment), proto)
    return checksum(pseudo + segment) == 0


def segment(src, dst, sport, dport, payload, v6, flags="A", proto=6):
    """TCP (or UDP) bytes with a checksum that is right for a length the 16-bit fields cannot hold."""
    l4 = TCP(sport=sport, dport=dport, flags=flags, seq=1000, chksum=0) if proto == 6 else \
        UDP(sport=sport, dport=dport, len=0, chksum=0)
    data = bytearray(raw(l4 / payload))
    family = socket.AF_INET6 if v6 else socket.AF_INET
    pseudo = socket.inet_pton(family, src) + socket.inet_pton(family, dst) + struct.pack("!II", len(data), proto)
    at = 16 if proto == 6 else 6
    data[at:at + 2] = struct.pack("!H", checksum(pseudo + bytes(data)))
    return bytes(data)


def big_v4(dst, sport, payload, proto=6):
    ip = IP(src="172.16.0.1", dst=dst, len=0, proto=proto)
    return raw(eth() / ip / segment("172.16.0.1", dst, sport, 80 if proto == 6 else 4789, payload, False,
                                      proto=proto))


def big_v6(sport, payload, jumbo):
    seg = segment("2001:db8:2::1", VIP6, sport, 80, payload, True)
    if jumbo:
        hbh = IPv6ExtHdrHopByHop(nh=6, options=[Jumbo(jumboplen=8 + len(seg))])
        return raw(eth() / IPv6(src="2001:db8:2::1", dst=VIP6, plen=0, nh=0) / hbh / seg)
    return raw(eth() / IPv6(src="2001:db8:2::1", dst=VIP6, plen=0, nh=6) / seg)


def test_big_tcp_and_gso_packets_are_translated_or_passed_not_dropped(tmp_path):
    bulk = bytes(range(256)) * 280                              # 71,680 bytes: more than an IP length can say
    frames = [
        big_v4("192.0.2.9", 41000, bulk),                       # not for a VIP: untouched
        big_v4("192.0.2.9", 41001, bulk, proto=17),             # GSO UDP (a VXLAN-like tunnel): UDP length 0 too
        syn(sport=42000),                                       # a flow to the VIP, then BIG TCP on it
        big_v4("10.0.0.100", 42000, bulk),
        raw(eth() / IPv6(src="2001:db8:2::1", dst=VIP6) / TCP(sport=43000, dport=80, flags="S")),
        big_v6(43000, bulk, jumbo=True),                        # RFC 2675 jumbogram (hop-by-hop jumbo option)
        raw(eth() / IPv6(src="2001:db8:2::1", dst=VIP6) / TCP(sport=43001, dport=80, flags="S")),
        big_v6(43001, bulk, jumbo=False),                       # payload length 0, no option: BIG TCP today
    ]
    src = write(tmp_path / "in.pcap", pcap_header(snaplen=262144), [(T0 + k, f) for k, f in enumerate(frames)])
    out = tmp_path / "out.pcap"
    summary, warnings = replay(src, "-o", out)
    assert warnings == [] and summary["dropped"] == {}
    assert (summary["new"], summary["forward"], summary["passed"]) == (3, 3, 2)
    back = [data for data, _ in records(out)]
    assert back[:2] == frames[:2]
    v4 = back[3]
    assert v4[30:34] == socket.inet_aton("10.1.0.1") and v4[16:18] == b"\0\0"     # length field kept at 0
    assert v4[36:38] == struct.pack("!H", 8080) and len(v4) == len(frames[3])
    assert pseudo_sum_ok("172.16.0.1", "10.1.0.1", 6, v4[34:], False)
    assert checksum(v4[14:34]) == 0                                                # IPv4 header checksum
    for k, l4 in ((5, 14 + 48), (7, 14 + 40)):
        v6 = back[k]
        assert v6[14 + 24:14 + 40] == socket.inet_pton(socket.AF_INET6, REAL6 if k == 5 else "2001:db8:1::2")
        assert v6[18:20] == b"\0\0" and v6[14 + 40:l4] == frames[k][14 + 40:l4]   # plen 0, the jumbo option kept
        assert pseudo_sum_ok("2001:db8:2::1", REAL6 if k == 5 else "2001:db8:1::2", 6, v6[l4:], True)


def test_a_snapped_big_tcp_packet_takes_its_length_from_the_original_length(tmp_path):
    big = big_v4("10.0.0.100", 42000, b"x" * 70000)
    src = write(tmp_path / "in.pcap", pcap_header(snaplen=96),
                [(T0, syn(sport=42000)), pcap_record("<", T0 + 1, big[:96], origlen=len(big))])
    out = tmp_path / "out.pcap"
    summary, warnings = replay(src, "-o", out)
    assert warnings == [] and summary["dropped"] == {} and summary["forward"] == 1
    data, origlen = records(out)[1]
    assert len(data) == 96 and origlen == len(big)
    assert data[30:34] == socket.inet_aton("10.1.0.1") and data[16:18] == b"\0\0"


def test_an_ip_length_0_that_the_capture_cannot_back_is_still_a_drop(tmp_path):
    short = bytearray(syn(dst="192.0.2.9"))
    short[16:18] = b"\0\0"                       # total length 0 on a 54-byte SYN: presumed TSO, length 40
    jumbo_lies = bytearray(big_v6(43000, b"y" * 70000, jumbo=True))
    jumbo_lies[14 + 44:14 + 48] = struct.pack("!I", 90000 + 8)      # the option claims more than was on the wire
    src = write(tmp_path / "in.pcap", pcap_header(snaplen=262144), [(T0, bytes(short)), (T0 + 1, bytes(jumbo_lies))])
    summary, _ = replay(src)
    assert summary["passed_by_reason"] == {"no_service": 1} and summary["dropped"] == {"truncated_ip": 1}


# ---- LINKTYPE_IPV4 (228) and LINKTYPE_IPV6 (229) ----------------------------------------------------

@needs_tshark
def test_linktype_ipv4_and_ipv6_are_parsed(tmp_path):
    v4 = raw(IP(src="172.16.0.1", dst="10.0.0.100") / UDP(sport=5353, dport=53) / b"query")
    v6 = raw(IPv6(src="2001:db8:2::1", dst=VIP6) / TCP(sport=43000, dport=80, flags="S"))
    a = write(tmp_path / "v4.pcap", pcap_header(linktype=228), [(T0, v4), (T0 + 1, v6)])
    b = write(tmp_path / "v6.pcap", pcap_header(linktype=229), [(T0, v6)])
    summary, warnings = replay(a, "-o", tmp_path / "a.pcap")
    assert warnings == [] and summary["new"] == 1 and summary["dropped"] == {"bad_ip_header": 1}   # v6 in a v4 file
    assert tshark(tmp_path / "a.pcap", "ip.dst", "udp.dstport") == [["10.1.0.11", "53"]]
    out = IP(raw(rdpcap(str(tmp_path / "a.pcap"))[0]))
    got = out[UDP].chksum
    del out[UDP].chksum
    assert IP(raw(out))[UDP].chksum == got
    summary, warnings = replay(b, "-o", tmp_path / "b.pcap")
    assert warnings == [] and summary["new"] == 1
    assert tshark(tmp_path / "b.pcap", "ipv6.dst", "tcp.dstport") == [[REAL6, "8080"]]


# ---- routing header with segments left ------------------------------------------------------------

def l4_checksum_right(frame: bytes) -> bool:
    """scapy recomputes the L4 checksum, with the routing header's final address as RFC 8200 8.1 says."""
    p = Ether(frame)
    kind = ICMPv6DestUnreach if ICMPv6DestUnreach in p else TCP
    got = p[kind].chksum
    del p[kind].chksum
    return got == Ether(raw(p))[kind].chksum


def test_a_routing_header_keeps_the_l4_checksum_right_through_dnat(tmp_path):
    final = "2001:db8:9::9"
    client = IPv6(src="2001:db8:2::1", dst=VIP6)
    frames = [raw(eth() / client / IPv6ExtHdrRouting(addresses=[final], segleft=1) / TCP(sport=44000, flags="S")),
              raw(eth() / client / IPv6ExtHdrSegmentRouting(addresses=[final, VIP6], segleft=1, lastentry=1)
                  / TCP(sport=44001, flags="S")),
              raw(eth() / client / IPv6ExtHdrRouting(addresses=[final], segleft=0) / TCP(sport=44002, flags="S"))]
    assert all(l4_checksum_right(f) for f in frames)
    src = write(tmp_path / "in.pcap", pcap_header(), [(T0 + k, f) for k, f in enumerate(frames)])
    out = tmp_path / "out.pcap"
    summary, warnings = replay(src, "-o", out)
    assert warnings == [] and summary["new"] == 3      # IPVS classifies by the destination field: the VIP
    back = [raw(p) for p in rdpcap(str(out))]
    assert [Ether(f)[IPv6].dst for f in back] == [REAL6, "2001:db8:1::2", REAL6]
    assert [Ether(f)[TCP].dport for f in back] == [8080] * 3
    assert all(l4_checksum_right(f) for f in back)


def test_an_icmpv6_error_with_a_routing_header_keeps_its_checksum_right(tmp_path):
    client = "2001:db8:2::1"
    reply = IPv6(src=VIP6, dst=client) / TCP(sport=80, dport=44000, flags="SA")
    error = raw(eth() / IPv6(src=client, dst=VIP6) / IPv6ExtHdrRouting(addresses=["2001:db8:9::9"], segleft=1)
                / ICMPv6DestUnreach(code=4) / raw(reply))
    frames = [raw(eth() / IPv6(src=client, dst=VIP6) / TCP(sport=44000, dport=80, flags="S")), error]
    src = write(tmp_path / "in.pcap", pcap_header(), [(T0 + k, f) for k, f in enumerate(frames)])
    out = tmp_path / "out.pcap"
    summary, _ = replay(src, "-o", out)
    assert summary["forward"] == 1
    back = raw(rdpcap(str(out))[1])
    assert Ether(back)[IPv6].dst == REAL6 and l4_checksum_right(back)


# ---- timestamps ---------------------------------------------------------------------------------

def test_a_pcap_output_refuses_times_past_2106_and_pcapng_keeps_them(tmp_path):
    late = (2**32 + 5) * 10**9 + 250_000_000                  # 2106-02-07 06:28:20.25 UTC
    src = tmp_path / "in.pcapng"
    src.write_bytes(shb() + idb("<", 1, 0, tsresol=9) + epb("<", 0, late, syn()))
    out = tmp_path / "out.pcap"
    proc = run_cli("replay", src, "-o", out, check=False)
    assert proc.returncode == 2 and not out.exists() and not (tmp_path / "out.pcap.part").exists()
    assert proc.stderr.splitlines() == [f"l4emu: error: {out}: a packet at {2**32 + 5} s after 1970 is past "
                                        "2106-02-07 06:28:15 UTC, the last second a .pcap record can hold: "
                                        "write .pcapng"]
    ng = tmp_path / "out.pcapng"
    run_cli("replay", src, "-o", ng)
    assert [float(p.time) for p in rdpcap(str(ng))] == [late / 1e9]


def test_an_invalid_microsecond_field_warns_keeps_the_packet_and_leaves_the_clock(tmp_path):
    flow = [raw(eth() / IP(src="172.16.0.1", dst="10.0.0.100") / UDP(sport=5000, dport=53) / bytes([k]))
            for k in range(3)]
    records = [pcap_record("<", T0 + 500_000_000, flow[0]),
               pcap_record("<", T0 + 10**9, flow[1], frac=2**31),          # 2,147 s ahead if believed
               pcap_record("<", T0 + 1_600_000_000, flow[2])]
    src = write(tmp_path / "in.pcap", pcap_header(), records)
    out = tmp_path / "out.pcap"
    summary, warnings = replay(src, "-o", out)
    offset = 24 + 16 + len(flow[0])
    assert warnings == [f"l4emu: warning: {src}: offset {offset}: timestamp fraction 2147483648 is not below "
                        "1000000: an error in the record; its packet is kept at the whole second, the clock does "
                        "not move by it"]
    assert (summary["new"], summary["forward"], summary["expired"]) == (1, 2, 0)   # one flow, not expired
    assert [int(p.time * 10) for p in rdpcap(str(out))] == [17000000005, 17000000010, 17000000016]


# ---- files libpcap refuses --------------------------------------------------------------------------

def test_files_libpcap_refuses_are_read_with_a_warning(tmp_path):
    frame = syn()
    cases = {
        "v14.pcap": (pcap_header(version=(1, 4)), "offset 0: pcap version 1.4: libpcap refuses it (archaic pcap "
                                                   "savefile format); read as 2.4"),
        "v25.pcap": (pcap_header(version=(2, 5)), "offset 0: pcap version 2.5: libpcap refuses it (it reads 2.0 to "
                                                   "2.4); read as 2.4"),
        "lt.pcap": (pcap_header(linktype=0x00010001), "offset 0: link-type field 0x00010001 has reserved bits "
                                                       "0x00010000 set: libpcap refuses the file; read as link type 1"),
    }
    for name, (header, text) in cases.items():
        src = write(tmp_path / name, header, [(T0, frame)])
        summary, warnings = replay(src)
        assert warnings == [f"l4emu: warning: {src}: {text}"] and summary["new"] == 1, name
    src = tmp_path / "v11.pcapng"
    src.write_bytes(shb(minor=1) + idb("<", 1) + epb("<", 0, 1, frame) + shb(minor=1) + idb("<", 1)
                    + epb("<", 0, 2, syn(sport=40001)))
    summary, warnings = replay(src)
    assert warnings == [f"l4emu: warning: {src}: offset 0: pcapng version 1.1: libpcap refuses it (it reads 1.0 "
                        "and 1.2); read as 1.0 (2 sections)"]
    assert summary["new"] == 2
    src.write_bytes(shb(minor=2) + idb("<", 1) + epb("<", 0, 1, frame))
    assert replay(src)[1] == []


# ---- hostile: the new length and routing-header paths on cut, lying frames -------------------------

FIELD_KINDS = ("v4-big-tcp", "v4-big-udp", "v6-jumbo", "v6-plen0", "v6-rthdr", "v6-srh")


def field_frame(kind: str, payload: bytes) -> bytes:
    """An IP packet (no link header) to a VIP of the default config, of one of the field-capture kinds."""
    if kind.startswith("v4"):
        return big_v4("10.0.0.100", 42000, payload, proto=17 if "udp" in kind else 6)[14:]
    if kind in ("v6-jumbo", "v6-plen0"):
        return big_v6(43000, payload, jumbo=kind == "v6-jumbo")[14:]
    route = (IPv6ExtHdrRouting(addresses=["2001:db8:9::9"] * 2, segleft=2) if kind == "v6-rthdr"
             else IPv6ExtHdrSegmentRouting(addresses=["2001:db8:9::9", VIP6], segleft=1, lastentry=1))
    return raw(IPv6(src="2001:db8:2::1", dst=VIP6) / route / TCP(sport=44000, flags="S") / payload[:1400])


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(FIELD_KINDS), size=st.sampled_from([0, 1, 9, 1400, 66000]), cut=st.integers(0, 200),
       extra=st.sampled_from([0, 1, 7, 65535, 100000]), ether=st.booleans(),
       edits=st.lists(st.tuples(st.integers(0, 119), st.integers(0, 255)), max_size=3))
def test_cut_and_lying_field_frames_never_touch_their_neighbours(kind, size, cut, extra, ether, edits):
    """Snapped anywhere, wire length anything, a few header bytes changed: the switch counts the
    packet and never writes outside it (its neighbours in the batch buffer stay as they were)."""
    frame = bytearray(field_frame(kind, b"\xa5" * size))
    for at, value in edits:
        if at < len(frame):
            frame[at] = value
    frame = (raw(eth()) if ether else b"") + bytes(frame)
    caplen = min(len(frame), (14 if ether else 0) + cut)
    linktype = 1 if ether else (228 if kind.startswith("v4") else 229)
    guard = bytes(range(64))
    batch = Batch(8)
    batch.append(guard, NS, 0, 147)
    batch.append(frame[:caplen], 2 * NS, 0, linktype, origlen=len(frame) + extra)
    batch.append(guard, 3 * NS, 0, 147)
    switch = Switch.from_config(None, seed=1)
    switch.process(batch)
    assert batch.packet(0) == guard == batch.packet(2)
    assert len(batch.packet(1)) == caplen
    stats = switch.stats()
    assert stats["packets"] == 3 == stats["new"] + stats["forward"] + stats["reply"] + stats["passed"] + \
        stats["dropped_total"]
