"""Malformed frames and the verdict each must get, shared by the datapath tests, the fuzzers and the docs.

Each frame is built well formed with scapy and then broken in one place (a cut, or one header field
set to a lie). A frame is both what was captured and what was on the wire (origlen == len(frame)),
so a length running past the end is a lie, never a snap-length cut. `expect` is "pass" (not dropped:
translated, forwarded or passed through untouched) or "drop:<reason>" with the exact counter name.
Most frames are addressed to the default config's VIPs, so that, well formed, they would be
translated: a drop then proves the parser, not the lack of a service, stopped them.
"""
from typing import NamedTuple

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, CookedLinux, Dot1AD, Dot1Q, Ether

ETHERNET, RAW_IP, LINUX_SLL = 1, 101, 113
VIP, VIP6 = "10.0.0.100", "2001:db8::100"          # default config: tcp/80, udp/53 on VIP; tcp/80 on VIP6
CLIENT, CLIENT6 = "172.16.0.1", "2001:db8:ff::10"
OTHER = "192.0.2.7"                                # no VIP: malformed is dropped whoever it is for
MAC, SWITCH_MAC = "02:00:00:00:00:01", "02:00:00:00:00:fe"
QUERY = bytes.fromhex("1234010000010000000000000377777707657861" "6d706c6503636f6d0000010001")


class Case(NamedTuple):
    """One frame on one link type and the verdict the datapath must give it."""

    name: str
    frame: bytes
    linktype: int
    expect: str


def eth(payload=None, ethertype=None):
    """Ethernet to the switch; scapy picks the ethertype from the payload unless one is forced."""
    head = Ether(src=MAC, dst=SWITCH_MAC) if ethertype is None else Ether(src=MAC, dst=SWITCH_MAC, type=ethertype)
    return bytes(head if payload is None else head / payload)


def sll(payload, proto):
    """A Linux cooked (SLL) header as `tcpdump -i any` writes it for a received packet."""
    return bytes(CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, src=bytes(6) + b"\0\0", proto=proto) / payload)


def syn(dst=VIP, ip=None, tcp=None):
    """A client's SYN to the TCP service: well formed, it would open a translated flow."""
    return IP(src=CLIENT, dst=dst, **(ip or {})) / TCP(sport=40000, dport=80, flags="S", seq=1000, **(tcp or {}))


def query(dst=VIP, ip=None, udp=None):
    """A client's DNS query to the UDP service."""
    return IP(src=CLIENT, dst=dst, **(ip or {})) / UDP(sport=40001, dport=53, **(udp or {})) / QUERY


def syn6(ip=None, tcp=None):
    """A client's SYN to the IPv6 TCP service."""
    return IPv6(src=CLIENT6, dst=VIP6, **(ip or {})) / TCP(sport=40002, dport=80, flags="S", **(tcp or {}))


def l4_cut(ip_head, l4, keep):
    """An IP packet whose own length ends `keep` bytes into its TCP/UDP header (nothing was snapped)."""
    return ip_head / bytes(l4)[:keep]


def hop_by_hop_cut():
    """An IPv6 packet that ends, as its payload length says, 6 bytes into an 8-byte hop-by-hop header."""
    return l4_cut(IPv6(src=CLIENT6, dst=VIP6, nh=0), IPv6ExtHdrHopByHop(nh=6), 6)


def _ethernet():
    """Every rule on Ethernet, where most captures come from."""
    ip4_tcp = IP(src=CLIENT, dst=VIP, proto=6)
    ip4_udp = IP(src=CLIENT, dst=VIP, proto=17)
    ip6 = IPv6(src=CLIENT6, dst=VIP6)
    cases = [
        ("empty_frame", b"", "drop:truncated_l2"),
        ("ethernet_13_bytes", eth(syn())[:13], "drop:truncated_l2"),
        ("vlan_tag_cut", eth(Dot1Q(vlan=10) / syn())[:16], "drop:truncated_l2"),
        ("qinq_inner_tag_cut", eth(Dot1AD(vlan=100) / Dot1Q(vlan=10) / syn())[:20], "drop:truncated_l2"),
        ("ipv4_ethertype_no_payload", eth(ethertype=0x0800), "drop:truncated_ip"),
        ("ipv4_cut_at_10", eth(syn())[:14 + 10], "drop:truncated_ip"),
        ("ipv4_ihl_4", eth(syn(ip={"ihl": 4})), "drop:bad_ip_header"),
        # The total length covers the 60-byte header the IHL claims; only the frame is too short.
        ("ipv4_ihl_15_past_end", eth(syn(ip={"ihl": 15, "len": 60})), "drop:bad_ip_header"),
        ("ipv4_total_length_past_end", eth(syn(ip={"len": 200})), "drop:truncated_ip"),
        ("ipv4_total_length_below_ihl", eth(syn(ip={"len": 16})), "drop:bad_ip_header"),
        ("ipv4_version_5", eth(syn(ip={"version": 5})), "drop:bad_ip_header"),
        ("ipv4_ethertype_carrying_ipv6", eth(syn6(), ethertype=0x0800), "drop:bad_ip_header"),
        ("ipv6_header_cut", eth(syn6())[:14 + 30], "drop:truncated_ip"),
        ("ipv6_payload_length_past_end", eth(syn6(ip={"plen": 100})), "drop:truncated_ip"),
        ("ipv6_ethertype_carrying_ipv4", eth(syn(), ethertype=0x86DD), "drop:bad_ip_header"),
        ("ipv6_hop_by_hop_cut", eth(hop_by_hop_cut()), "drop:truncated_ipv6_ext"),
        ("ipv6_dest_opts_length_past_payload",
         eth(ip6 / IPv6ExtHdrDestOpt(len=4) / TCP(sport=40002, dport=80, flags="S")), "drop:truncated_ipv6_ext"),
        ("ipv6_fragment_header_cut", eth(l4_cut(IPv6(src=CLIENT6, dst=VIP6, nh=44), IPv6ExtHdrFragment(nh=6), 4)),
         "drop:truncated_ipv6_ext"),
        ("tcp_cut_at_12", eth(l4_cut(ip4_tcp, syn()[TCP], 12)), "drop:truncated_tcp"),
        # Ethernet padding after the IP packet must not be read as the rest of the TCP header.
        ("tcp_cut_hidden_by_padding", eth(l4_cut(ip4_tcp, syn()[TCP], 12)).ljust(60, b"\0"), "drop:truncated_tcp"),
        ("tcp_data_offset_4", eth(syn(tcp={"dataofs": 4})), "drop:bad_tcp_offset"),
        ("tcp_data_offset_15_past_end", eth(syn(tcp={"dataofs": 15})), "drop:bad_tcp_offset"),
        ("tcp_data_offset_4_to_other_host", eth(syn(dst=OTHER, tcp={"dataofs": 4})), "drop:bad_tcp_offset"),
        ("ipv6_tcp_cut_at_10", eth(l4_cut(IPv6(src=CLIENT6, dst=VIP6, nh=6), syn6()[TCP], 10)),
         "drop:truncated_tcp"),
        ("udp_cut_at_4", eth(l4_cut(ip4_udp, query()[UDP], 4)), "drop:truncated_udp"),
        ("udp_cut_at_4_to_other_host", eth(l4_cut(IP(src=CLIENT, dst=OTHER, proto=17), query()[UDP], 4)),
         "drop:truncated_udp"),
        ("udp_length_7", eth(query(udp={"len": 7})), "drop:bad_udp_length"),
        ("udp_length_past_end", eth(query(udp={"len": 200})), "drop:bad_udp_length"),
        ("ipv6_udp_length_7", eth(ip6 / UDP(sport=40001, dport=53, len=7) / QUERY), "drop:bad_udp_length"),
        ("arp_request", eth(ARP(op=1, hwsrc=MAC, psrc="10.0.0.1", hwdst="00:00:00:00:00:00", pdst=VIP)), "pass"),
        ("unknown_ethertype_no_payload", eth(ethertype=0x88B5), "pass"),
        ("icmp_echo_to_vip", eth(IP(src=CLIENT, dst=VIP) / ICMP(id=1, seq=1) / b"ping"), "pass"),
        # Only TCP and UDP headers are parsed; anything else is not ours to judge.
        ("icmp_cut_to_vip", eth(IP(src=CLIENT, dst=VIP, proto=1) / b"\x08"), "pass"),
        ("tcp_syn_ethernet_padding", eth(syn()).ljust(60, b"\0"), "pass"),
        ("udp_ethernet_padding", eth(IP(src=CLIENT, dst=VIP) / UDP(sport=40003, dport=53) / bytes(4))
         .ljust(60, b"\0"), "pass"),
        ("ipv4_options_ihl_6", eth(syn(ip={"options": [IPOption(b"\x01\x01\x01\x00")]})), "pass"),
        ("ipv6_hop_by_hop_then_tcp", eth(ip6 / IPv6ExtHdrHopByHop() / TCP(sport=40004, dport=80, flags="S")),
         "pass"),
    ]
    return [Case(name, frame, ETHERNET, expect) for name, frame, expect in cases]


def _other_links():
    """A few of the same faults behind raw IP and Linux SLL headers, whose link parsing differs."""
    return [
        Case("raw_ipv4_cut_at_10", bytes(syn())[:10], RAW_IP, "drop:truncated_ip"),
        Case("raw_ipv4_version_5", bytes(syn(ip={"version": 5})), RAW_IP, "drop:bad_ip_header"),
        Case("raw_tcp_data_offset_4", bytes(syn(tcp={"dataofs": 4})), RAW_IP, "drop:bad_tcp_offset"),
        Case("raw_udp_length_past_end", bytes(query(udp={"len": 200})), RAW_IP, "drop:bad_udp_length"),
        Case("raw_ipv6_hop_by_hop_cut", bytes(hop_by_hop_cut()), RAW_IP, "drop:truncated_ipv6_ext"),
        Case("raw_icmp_to_vip", bytes(IP(src=CLIENT, dst=VIP) / ICMP(id=1, seq=1)), RAW_IP, "pass"),
        Case("sll_15_bytes", sll(syn(), 0x0800)[:15], LINUX_SLL, "drop:truncated_l2"),
        Case("sll_ipv4_total_length_past_end", sll(syn(ip={"len": 200}), 0x0800), LINUX_SLL,
             "drop:truncated_ip"),
        Case("sll_udp_cut_at_4", sll(l4_cut(IP(src=CLIENT, dst=VIP, proto=17), query()[UDP], 4), 0x0800),
             LINUX_SLL, "drop:truncated_udp"),
        Case("sll_arp", sll(ARP(op=1, hwsrc=MAC, psrc="10.0.0.1", hwdst="00:00:00:00:00:00", pdst=VIP), 0x0806),
             LINUX_SLL, "pass"),
    ]


CATALOGUE = _ethernet() + _other_links()


def well_formed_variants():
    """The same flows well formed: each must pass, so a drop above is the fault, not the flow."""
    return [
        Case("syn_to_vip", eth(syn()), ETHERNET, "pass"),
        Case("query_to_vip", eth(query()), ETHERNET, "pass"),
        Case("syn6_to_vip6", eth(syn6()), ETHERNET, "pass"),
        Case("vlan_syn_to_vip", eth(Dot1Q(vlan=10) / syn()), ETHERNET, "pass"),
        Case("qinq_syn_to_vip", eth(Dot1AD(vlan=100) / Dot1Q(vlan=10) / syn()), ETHERNET, "pass"),
        Case("raw_syn_to_vip", bytes(syn()), RAW_IP, "pass"),
        Case("raw_syn6_to_vip6", bytes(syn6()), RAW_IP, "pass"),
        Case("sll_query_to_vip", sll(query(), 0x0800), LINUX_SLL, "pass"),
    ]
