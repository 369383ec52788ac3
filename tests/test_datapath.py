"""The packet path against scapy as the oracle: NAT, checksums, states, timeouts, limits, link types."""
from __future__ import annotations

import struct

import pytest
from scapy.all import (CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether, IP, IPv6, Loopback, TCP, UDP,
                       raw)
from scapy.layers.inet6 import IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop

from conftest import NS, Harness, make_switch, service_toml
from l4emu.datapath._batch import Batch
from l4emu.datapath._datapath import DROP_REASONS
from l4emu.schedulers._core import PythonScheduler

VIP, CLIENT = "10.0.0.100", "192.0.2.7"
REALS = [("10.1.0.1", 8080), ("10.1.0.2", 8080), ("10.1.0.3", 8080)]
E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def syn(sport=40000, client=CLIENT, flags="S"):
    return E / IP(src=client, dst=VIP) / TCP(sport=sport, dport=80, flags=flags, seq=1000)


def from_real(real, sport=40000, client=CLIENT, flags="SA"):
    return E / IP(src=real[0], dst=client) / TCP(sport=real[1], dport=sport, flags=flags, seq=5000, ack=1001)


def checksums_ok(frame: bytes) -> bool:
    """Recompute with scapy (deleting the fields) and compare with what we wrote."""
    pkt = Ether(frame)
    fresh = pkt.copy()
    for layer in (IP, IPv6, TCP, UDP):
        if layer in fresh and hasattr(fresh[layer], "chksum"):
            if layer is UDP and pkt[UDP].chksum == 0:
                continue
            del fresh[layer].chksum
    return raw(Ether(raw(fresh))) == frame


def test_new_flow_is_dnated_and_reply_snated_with_valid_checksums(harness):
    (v1, real, out1), (v2, _, out2), (v3, _, out3) = harness.run(
        [syn(), from_real(REALS[0]), syn(flags="A")])
    assert (v1, v2, v3) == ("new", "reply", "forward")
    fwd, back = Ether(out1), Ether(out2)
    assert (fwd[IP].dst, fwd[TCP].dport, fwd[IP].src, fwd[TCP].sport) == ("10.1.0.1", 8080, CLIENT, 40000)
    assert (back[IP].src, back[TCP].sport, back[IP].dst, back[TCP].dport) == (VIP, 80, CLIENT, 40000)
    assert all(checksums_ok(f) for f in (out1, out2, out3))


def test_round_robin_spreads_new_flows_and_keeps_each_flow_on_its_real(harness):
    results = harness.run([syn(sport=41000 + k) for k in range(6)] + [syn(sport=41000 + k, flags="A") for k in range(6)])
    dests = [Ether(out)[IP].dst for _, _, out in results]
    assert dests[:6] == ["10.1.0.1", "10.1.0.2", "10.1.0.3"] * 2
    assert dests[6:] == dests[:6]


def test_bad_checksum_stays_bad_and_udp_zero_checksum_stays_zero(harness):
    bad = syn()
    bad[TCP].chksum = 0x1234
    _, _, out = harness.one(bad)
    assert Ether(out)[IP].dst == "10.1.0.1" and not checksums_ok(out)
    udp = E / IP(src=CLIENT, dst=VIP) / UDP(sport=5353, dport=53, chksum=0) / b"query"
    verdict, _, out = harness.one(udp, t=2.0)
    assert verdict == "new" and Ether(out)[UDP].chksum == 0 and Ether(out)[IP].dst == "10.1.0.11"
    assert checksums_ok(out)


def test_ipv6_flow_with_extension_headers(harness):
    client, vip = "2001:db8:ff::7", "2001:db8::100"
    pkt = E / IPv6(src=client, dst=vip) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / TCP(sport=1234, dport=80, flags="S")
    reply = E / IPv6(src="2001:db8:1::1", dst=client) / TCP(sport=8080, dport=1234, flags="SA")
    (v1, _, out1), (v2, _, out2) = harness.run([pkt, reply])
    assert (v1, v2) == ("new", "reply")
    assert Ether(out1)[IPv6].dst == "2001:db8:1::1" and Ether(out1)[TCP].dport == 8080
    assert Ether(out2)[IPv6].src == vip and Ether(out2)[TCP].sport == 80
    assert checksums_ok(out1) and checksums_ok(out2)


@pytest.mark.parametrize("tags", [[Dot1Q(vlan=10)], [Dot1AD(vlan=20), Dot1Q(vlan=30)]])
def test_vlan_tags_are_kept(harness, tags):
    frame = E
    for tag in tags:
        frame = frame / tag
    frame = frame / IP(src=CLIENT, dst=VIP) / TCP(sport=40001, dport=80, flags="S")
    verdict, _, out = harness.one(frame)
    assert verdict == "new"
    assert out[:14 + 4 * len(tags)] == raw(frame)[:14 + 4 * len(tags)]
    assert Ether(out)[IP].dst == "10.1.0.1" and checksums_ok(out)


@pytest.mark.parametrize("linktype,wrap", [
    (101, lambda p: p),
    (113, lambda p: CookedLinux(proto=0x0800) / p),
    (276, lambda p: CookedLinuxV2(proto=0x0800) / p),
    (0, lambda p: Loopback(type=2) / p),
    (108, lambda p: struct.pack("!I", 2) + raw(p)),
])
def test_link_types(harness, linktype, wrap):
    ip = IP(src=CLIENT, dst=VIP) / TCP(sport=40002, dport=80, flags="S")
    frame = raw(wrap(ip))
    verdict, detail, out = harness.one(frame, linktype=linktype)
    assert verdict == "new"
    assert IP(out[len(frame) - len(raw(ip)):]).dst == "10.1.0.1"


def test_untouched_traffic_is_byte_identical(harness):
    frames = [
        E / IP(src=CLIENT, dst="198.51.100.9") / TCP(sport=1, dport=80, flags="S"),       # not a VIP
        E / IP(src=CLIENT, dst=VIP) / TCP(sport=1, dport=443, flags="S"),                 # VIP, no service
        E / IP(src=CLIENT, dst=VIP) / b"\x01\x02",                                         # ICMP-ish proto 0
        Ether(type=0x0806) / (b"\x00" * 28),                                               # ARP
        E / IP(src=CLIENT, dst="198.51.100.9", flags="MF") / UDP(sport=1, dport=2) / (b"x" * 8),  # fragment
    ]
    results = harness.run(frames)
    assert [v for v, _, _ in results] == ["pass"] * len(frames)
    assert [out for _, _, out in results] == [raw(f) for f in frames]


def test_fragment_for_a_vip_is_a_counted_drop(harness, switch):
    verdict, detail, _ = harness.one(E / IP(src=CLIENT, dst=VIP, frag=10) / (b"x" * 16))
    assert verdict == "drop" and switch.stats()["dropped"] == {"fragment": 1}


def test_non_syn_without_flow_is_dropped_unless_sloppy(harness, tmp_path):
    assert harness.one(syn(flags="A"))[0] == "drop"
    sloppy = make_switch(_config("[table]\nsloppy_tcp = true\n"), tmp_path)
    assert Harness(sloppy).one(syn(flags="A"))[0] == "new"


def test_tcp_states_follow_ipvs(harness, switch):
    real = REALS[0]
    # The SYN-ACK is an OUTPUT "syn" event: IPVS stays in SYN_RECV until the client's ACK.
    steps = [(syn(), "SYN_RECV"), (from_real(real), "SYN_RECV"), (syn(flags="A"), "ESTABLISHED"),
             (syn(flags="FA"), "CLOSE_WAIT"), (from_real(real, flags="FA"), "TIME_WAIT")]
    for k, (frame, state) in enumerate(steps):
        harness.one(frame, t=1.0 + k)
        [row] = switch.conntrack()
        assert row["state"] == state, k


def test_timeouts_run_on_the_packet_clock(harness, switch):
    harness.one(syn(), t=100.0)                                   # SYN_RECV: 60 s
    assert switch.conntrack()[0]["expires_in_s"] == 60
    harness.one(E / IP(src="192.0.2.99", dst="198.51.100.1") / TCP(), t=159.5)
    assert len(switch.conntrack()) == 1
    harness.one(E / IP(src="192.0.2.99", dst="198.51.100.1") / TCP(), t=160.0)
    assert switch.conntrack() == []
    assert switch.stats()["expired"] == 1


def test_expired_flow_is_not_used_and_its_packet_is_handled_fresh(harness, switch):
    harness.one(syn(), t=1.0)
    verdict, _, _ = harness.one(syn(flags="A"), t=62.0)          # SYN_RECV expired at 61 s
    assert verdict == "drop"


def test_new_syn_on_time_wait_reopens_with_a_new_real(harness, switch):
    real = REALS[0]
    for k, frame in enumerate([syn(), from_real(real), syn(flags="FA"), from_real(real, flags="FA")]):
        harness.one(frame, t=1 + k)
    assert switch.conntrack()[0]["state"] == "TIME_WAIT"
    verdict, real_index, out = harness.one(syn(), t=10)
    assert verdict == "new" and Ether(out)[IP].dst == "10.1.0.2"
    assert switch.stats()["reused"] == 1


def test_conn_reuse_mode_off_keeps_the_old_real(tmp_path):
    h = Harness(make_switch(_config("[table]\nconn_reuse_mode = false\n"), tmp_path))
    real = REALS[0]
    for k, frame in enumerate([syn(), from_real(real), syn(flags="FA"), from_real(real, flags="FA")]):
        h.one(frame, t=1 + k)
    verdict, _, out = h.one(syn(), t=10)
    assert verdict == "forward" and Ether(out)[IP].dst == "10.1.0.1"


def test_full_table_evicts_half_open_first_and_never_established(tmp_path):
    sw = make_switch(_config("[table]\nmax_connections = 4\n"), tmp_path)
    h = Harness(sw)
    # Two established flows, then a flood of SYNs from other clients.
    for k in range(2):
        h.run([syn(sport=50000 + k), from_real(REALS[k], sport=50000 + k), syn(sport=50000 + k, flags="A")],
              times_s=[1, 1, 1])
    flood = [syn(sport=1000 + k, client=f"203.0.113.{k}") for k in range(50)]
    assert all(v == "new" for v, _, _ in h.run(flood, times_s=[2] * 50))
    assert sw.stats()["evicted"] == 48
    for k in range(2):                                            # established flows keep working
        verdict, _, out = h.one(syn(sport=50000 + k, flags="A"), t=3)
        assert verdict == "forward" and Ether(out)[IP].dst == REALS[k][0]
    states = sorted(row["state"] for row in sw.conntrack())
    assert states == ["ESTABLISHED", "ESTABLISHED", "SYN_RECV", "SYN_RECV"]


def test_full_table_of_established_flows_drops_the_new_flow(tmp_path):
    sw = make_switch(_config("[table]\nmax_connections = 1\n"), tmp_path)
    h = Harness(sw)
    h.run([syn(), from_real(REALS[0]), syn(flags="A")])
    verdict, detail, _ = h.one(syn(sport=1, client="203.0.113.1"), t=5)
    assert verdict == "drop" and sw.stats()["dropped"] == {"table_full": 1}


def test_reply_tuple_clash_is_a_counted_drop(tmp_path):
    toml = """
[[service]]
vip = "10.0.0.100:80"
  [[service.real]]
  address = "10.1.0.1:8080"
[[service]]
vip = "10.0.0.101:80"
  [[service.real]]
  address = "10.1.0.1:8080"
"""
    sw = make_switch(toml, tmp_path)
    h = Harness(sw)
    first = E / IP(src=CLIENT, dst="10.0.0.100") / TCP(sport=7, dport=80, flags="S")
    second = E / IP(src=CLIENT, dst="10.0.0.101") / TCP(sport=7, dport=80, flags="S")
    assert [v for v, _, _ in h.run([first, second])] == ["new", "drop"]
    assert sw.stats()["dropped"] == {"reply_clash": 1}


def test_connection_counts_follow_states(harness, switch):
    harness.run([syn(), from_real(REALS[0]), syn(flags="FA"), from_real(REALS[0], flags="FA")])
    real = switch.services()[0]["reals"][0]
    assert (real["active"], real["inactive"], real["conns"]) == (0, 1, 1)


def _config(table: str) -> str:
    return table + service_toml()


def test_snapped_frame_is_translated_from_its_headers(switch):
    full = raw(syn() / (b"x" * 1400))
    batch = Batch.from_frames([full[:60]], 1, [NS], wire_lengths=[len(full)])
    switch.process(batch)
    assert batch.result(0)[0] == "new"
    assert IP(batch.packet(0)[14:]).dst == "10.1.0.1"


def test_total_length_longer_than_the_wire_is_a_drop(switch):
    full = raw(syn() / (b"x" * 100))
    batch = Batch.from_frames([full[:60]], 1, [NS], wire_lengths=[80])
    switch.process(batch)
    assert batch.result(0) == ("drop", DROP_REASONS.index("truncated_ip"))


class LastReal(PythonScheduler):
    """A plugin in plain Python: always the last real, and it hears flows end."""
    name = "last"

    def __init__(self):
        super().__init__()
        self.seen, self.ended = [], []

    def pick(self, flow, reals):
        self.seen.append((flow["client"], flow["client_port"], flow["vip"], flow["protocol"], len(reals)))
        return len(reals) - 1

    def flow_ended(self, index):
        self.ended.append(index)


def test_a_python_scheduler_plugin_runs_through_the_datapath(tmp_path, monkeypatch):
    from l4emu import schedulers
    monkeypatch.setitem(schedulers.BUILTINS, "last", LastReal)
    sw = make_switch(service_toml(extra='scheduler = "last"'), tmp_path)
    h = Harness(sw)
    verdict, _, out = h.one(syn(), t=1)
    assert verdict == "new" and Ether(out)[IP].dst == "10.1.0.3"
    plugin = sw.schedulers[0]
    assert plugin.seen == [(CLIENT, 40000, VIP, "tcp", 3)]
    h.one(E / IP(src="192.0.2.99", dst="198.51.100.1") / TCP(), t=100)      # SYN_RECV (60 s) expires
    assert plugin.ended == [2] and plugin.errors == []


def test_weight_zero_and_down_take_no_new_flows_but_existing_ones_go_on(harness, switch):
    harness.one(syn(sport=1), t=1)                                         # flow on 10.1.0.1
    switch.set_real("10.1.0.1:8080", weight=0)
    switch.set_real("10.1.0.2:8080", down=True)
    dests = [Ether(out)[IP].dst for _, _, out in harness.run([syn(sport=10 + k) for k in range(3)], times_s=[2] * 3)]
    assert dests == ["10.1.0.3"] * 3
    verdict, _, out = harness.one(syn(sport=1, flags="A"), t=3)
    assert verdict == "forward" and Ether(out)[IP].dst == "10.1.0.1"
    reals = switch.services()[0]["reals"]
    assert [(r["weight"], r["down"]) for r in reals] == [(0, False), (1, True), (1, False)]


def test_upper_threshold_stops_new_flows_until_under_the_lower_one(tmp_path):
    sw = make_switch("""
[[service]]
vip = "10.0.0.100:80"
  [[service.real]]
  address = "10.1.0.1:8080"
  upper_threshold = 2
  lower_threshold = 1
  [[service.real]]
  address = "10.1.0.2:8080"
""", tmp_path)
    h = Harness(sw)
    dests = [Ether(out)[IP].dst for _, _, out in h.run([syn(sport=k) for k in range(6)], times_s=[1] * 6)]
    assert dests == ["10.1.0.1", "10.1.0.2", "10.1.0.1", "10.1.0.2", "10.1.0.2", "10.1.0.2"]
    assert sw.services()[0]["reals"][0]["overloaded"]
    h.one(syn(sport=0, flags="R"), t=1.5)                 # RST on SYN_RECV stays SYN_RECV in IPVS
    h.one(E / IP(src="192.0.2.99", dst="198.51.100.1") / TCP(), t=62)     # both of its flows expire
    assert not sw.services()[0]["reals"][0]["overloaded"]


@pytest.mark.parametrize("flags", ["SF", "SR", "SA", "R", "F"])
def test_only_a_bare_syn_opens_a_tcp_flow(harness, switch, flags):
    assert harness.one(syn(flags=flags))[0] == "drop"
    assert switch.stats()["dropped"] == {"tcp_not_syn": 1}
