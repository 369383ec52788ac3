"""A GSO super-packet (what a TUN read hands live mode under TSO/USO: Batch gso_size > 0) is held to the route
MTU one segment at a time, as Linux's skb_gso_validate_network_len holds it (IPVS's own check skips GSO): through
dr, tun and fullnat a 20 KB TCP super-packet of 1448-byte segments goes on whole; the same bytes as one packet get
ICMP fragmentation needed; segments that themselves do not fit get the ICMP error (DF) or a counted drop."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import ICMP, IP, TCP, Ether, ICMPv6PacketTooBig, IPv6, raw

from conftest import make_switch
from l4emu.datapath._batch import NS, Batch

MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:fe"}
SEGMENT = 1448                  # a 1500-byte MTU's TCP payload with timestamps (32-byte TCP header)
KEYS = {"dr": 'forward = "dr"\n  mac = "02:00:00:00:01:01"', "ipip": 'forward = "tun"',
        "gue": 'forward = "tun"\n  tun_type = "gue"\n  tun_port = 6080', "fullnat": 'forward = "fullnat"'}
OVERHEAD = {"dr": 0, "ipip": 20, "gue": 32, "fullnat": 0}     # an IPv4 outer header; IPv6's is 20 bytes more


def overhead(method: str, v6: bool) -> int:
    return OVERHEAD[method] + (20 if v6 and OVERHEAD[method] else 0)


def switch_for(method: str, tmp_path, v6: bool = False):
    vip, real, source, local = (("[2001:db8::100]:80", "[2001:db8:1::1]:80", "2001:db8::1", "2001:db8::200") if v6
                                else ("10.0.0.100:80", "10.1.0.1:80", "10.0.0.1", "10.0.0.200"))
    extra = f'local_addresses = ["{local}"]\n' if method == "fullnat" else ""
    return make_switch(f'[[service]]\nvip = "{vip}"\nsource_address = "{source}"\n{extra}'
                       f'  [[service.real]]\n  address = "{real}"\n  {KEYS[method]}\n', tmp_path)


def super_packet(payload: int, v6: bool = False, df: bool = True, flags: str = "PA") -> bytes:
    ip = IPv6(src="2001:db8:ff::9", dst="2001:db8::100") if v6 else IP(src="172.16.0.9", dst="10.0.0.100",
                                                                        flags="DF" if df else 0)
    tcp = TCP(sport=40000, dport=80, flags=flags, seq=1, ack=1, options=[("NOP", None), ("NOP", None),
                                                                         ("Timestamp", (1, 2))])
    return raw(Ether(**MACS) / ip / tcp / (b"u" * payload))


def through(switch, frame: bytes, gso_size: int, v6: bool = False) -> tuple[str, bytes]:
    """The flow's SYN, then `frame` as a super-packet of gso_size-byte segments (0: one packet)."""
    batch = Batch.from_frames([super_packet(0, v6, flags="S"), frame], 1, [NS, 2 * NS], gso_sizes=[0, gso_size])
    switch.process(batch)
    assert batch.result(0)[0] == "new"
    return batch.result(1)[0], batch.packet(1)


@pytest.mark.parametrize("method", ["dr", "ipip", "gue", "fullnat"])
@pytest.mark.parametrize("v6", [False, True])
def test_a_super_packet_of_fitting_segments_goes_on_whole(method, v6, tmp_path):
    segment = SEGMENT - overhead(method, v6) - (20 if v6 else 0)    # what the client sends after PMTU discovery
    frame = super_packet(14 * segment, v6)
    verdict, out = through(switch_for(method, tmp_path, v6), frame, segment, v6)
    assert verdict == "forward" and len(out) >= len(frame)
    assert bytes(out).endswith(b"u" * 14 * segment)            # the whole super-packet, one packet still


@pytest.mark.parametrize("method", ["dr", "ipip", "fullnat"])
def test_the_same_bytes_as_one_packet_get_fragmentation_needed(method, tmp_path):
    frame = super_packet(14 * SEGMENT)
    verdict, out = through(switch_for(method, tmp_path), frame, 0)
    assert verdict == "icmp" and Ether(out)[ICMP].type == 3 and Ether(out)[ICMP].code == 4


@pytest.mark.parametrize("method, v6", [("ipip", False), ("gue", False), ("ipip", True)])
def test_segments_that_outgrow_the_tunnel_mtu_get_the_icmp_error_with_its_mtu(method, v6, tmp_path):
    verdict, out = through(switch_for(method, tmp_path, v6), super_packet(14 * SEGMENT, v6), SEGMENT, v6)
    assert verdict == "icmp"
    if v6:
        assert Ether(out)[ICMPv6PacketTooBig].mtu == 1500 - overhead(method, v6)
    else:
        assert Ether(out)[ICMP].nexthopmtu == 1500 - overhead(method, v6)


def test_segments_that_do_not_fit_without_df_are_a_counted_drop_not_fragments(tmp_path):
    switch = switch_for("ipip", tmp_path)
    verdict, _ = through(switch, super_packet(14 * SEGMENT, df=False), SEGMENT)
    assert verdict == "drop" and switch.stats()["dropped"] == {"too_big_dropped": 1}
    one, _ = through(switch_for("ipip", tmp_path / "x" if (tmp_path / "x").mkdir() is None else None),
                     super_packet(SEGMENT, df=False), 0)
    assert one == "forward"                                     # one packet without DF: fragmented, as IPVS does


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=34, max_size=1600), st.integers(0, 0xFFFF), st.sampled_from(["dr", "ipip", "gue", "fullnat"]))
def test_any_bytes_with_any_gso_size_get_a_verdict(tmp_path_factory, frame, gso_size, method):
    """segment_ip_len reads the TCP header's length: whatever the bytes, a verdict and no crash."""
    switch = SWITCHES.get(method) or SWITCHES.setdefault(method, switch_for(method, tmp_path_factory.mktemp(method)))
    batch = Batch.from_frames([raw(Ether(**MACS) / IP(src="172.16.0.9", dst="10.0.0.100", proto=6) / frame[34:]), frame],
                              1, gso_sizes=[gso_size, gso_size])
    switch.process(batch)
    assert all(verdict != "unseen" for verdict, _ in batch.results())


SWITCHES: dict = {}
