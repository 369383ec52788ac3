"""ICMP errors about translated flows are translated with them, quote included, checksums right.

The oracle: the quote inside a translated error must be, byte for byte, the header of the packet
as the other side originally sent it (before the switch rewrote it), but for its TTL / hop limit:
the switch routed it (one less, as IPVS and Linux's forwarding do) and the quote shows it so.
"""
from __future__ import annotations

from scapy.all import ICMP, IP, TCP, UDP, Ether, IPv6, raw
from scapy.layers.inet6 import ICMPv6PacketTooBig

E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
CLIENT, VIP = "192.0.2.7", "10.0.0.100"


def routed(ip) -> bytes:
    """The IP packet as the hop after the switch got it: TTL / hop limit one less, IPv4 checksum again."""
    ip = ip.copy()
    if isinstance(ip, IP):
        ip.ttl -= 1
        del ip.chksum
    else:
        ip.hlim -= 1
    return raw(ip)


def checksums_ok(frame: bytes) -> bool:
    pkt = Ether(frame)
    fresh = pkt.copy()
    for layer in (IP, ICMP):
        if layer in fresh:
            del fresh[layer].chksum
    return raw(Ether(raw(fresh))) == frame


def test_port_unreachable_from_a_real_is_translated_back_to_the_vip(harness):
    query = E / IP(src=CLIENT, dst=VIP, ttl=60) / UDP(sport=5353, dport=53) / b"query"
    (verdict, _, forwarded), = harness.run([query])
    assert verdict == "new" and Ether(forwarded)[IP].dst == "10.1.0.11"
    quote = raw(Ether(forwarded)[IP])[:28]                       # what the real got, as it quotes it
    error = E / IP(src="10.1.0.11", dst=CLIENT) / ICMP(type=3, code=3) / quote
    verdict, _, out = harness.one(error, t=2)
    assert verdict == "reply"
    assert Ether(out)[IP].src == VIP and checksums_ok(out)
    assert raw(Ether(out)[ICMP].payload)[:28] == routed(query[IP])[:28]


def test_fragmentation_needed_for_a_tcp_flow(harness):
    syn = E / IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=80, flags="S", seq=77)
    (_, _, forwarded), = harness.run([syn])
    quote = raw(Ether(forwarded)[IP])[:48]                       # IP + the whole 20-byte TCP header
    error = E / IP(src="10.1.0.1", dst=CLIENT) / ICMP(type=3, code=4, nexthopmtu=1400) / quote
    verdict, _, out = harness.one(error, t=2)
    assert verdict == "reply" and checksums_ok(out)
    assert raw(Ether(out)[ICMP].payload)[:48] == routed(syn[IP])[:48]


def test_time_exceeded_near_the_client_goes_to_the_real(harness):
    syn = E / IP(src=CLIENT, dst=VIP) / TCP(sport=40001, dport=80, flags="S")
    reply = E / IP(src="10.1.0.1", dst=CLIENT) / TCP(sport=8080, dport=40001, flags="SA")
    (_, _, _), (verdict, _, translated_reply) = harness.run([syn, reply])
    assert verdict == "reply"
    quote = raw(Ether(translated_reply)[IP])[:48]                # as a router near the client saw it
    error = E / IP(src="198.51.100.254", dst=VIP) / ICMP(type=11, code=0) / quote
    verdict, _, out = harness.one(error, t=3)
    assert verdict == "forward" and Ether(out)[IP].dst == "10.1.0.1" and checksums_ok(out)
    assert raw(Ether(out)[ICMP].payload)[:48] == routed(reply[IP])[:48]


def test_icmpv6_packet_too_big_from_a_real(harness):
    client6 = "2001:db8:ff::7"
    syn = E / IPv6(src=client6, dst="2001:db8::100") / TCP(sport=1234, dport=80, flags="S")
    (_, _, forwarded), = harness.run([syn])
    quote = raw(Ether(forwarded)[IPv6])[:60]
    error = E / IPv6(src="2001:db8:1::1", dst=client6) / ICMPv6PacketTooBig(mtu=1280) / quote
    verdict, _, out = harness.one(error, t=2)
    assert verdict == "reply"
    pkt = Ether(out)
    assert pkt[IPv6].src == "2001:db8::100"
    fresh = pkt.copy()
    del fresh[ICMPv6PacketTooBig].cksum
    assert raw(Ether(raw(fresh))) == out
    assert raw(pkt[ICMPv6PacketTooBig].payload)[:60] == routed(syn[IPv6])[:60]


def test_errors_without_a_flow_or_with_a_cut_quote_pass_untouched(harness, switch):
    stranger = E / IP(src="10.1.0.1", dst=CLIENT) / ICMP(type=3, code=3) / raw(
        IP(src=CLIENT, dst="10.1.0.1") / UDP(sport=1, dport=2))[:28]
    cut = E / IP(src="10.1.0.1", dst=CLIENT) / ICMP(type=3, code=3) / b"\x45\x00\x00"
    echo = E / IP(src=CLIENT, dst=VIP) / ICMP(type=8)
    results = harness.run([stranger, cut, echo])
    assert [v for v, _, _ in results] == ["pass"] * 3
    assert [out for _, _, out in results] == [raw(stranger), raw(cut), raw(echo)]
