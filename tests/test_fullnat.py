"""Full-NAT (docs/forwarding.md, DPVS's fullnat) against an oracle: scapy builds, from each input packet,
the packet DPVS would write (both ends translated, TTL - 1, TOA after the fixed TCP header in the
client's packets that acknowledge the real's SYN-ACK, the SYN-ACK's MSS lowered by TOA's length), and
the switch's bytes must equal it, checksums included; the way back must reach the client from the VIP."""

import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from l4emu import config as configmod
from l4emu import schedulers
from l4emu.config import ConfigError
from l4emu.datapath._batch import Batch
from l4emu.render.views import conntrack_text, services_text
from l4emu.replay import replay
from l4emu.switch import Switch

MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
FAMILIES = {
    4: {"vip": "10.0.0.100", "real": "10.1.0.1", "local": ["10.0.0.11", "10.0.0.12"], "client": "192.0.2.1"},
    6: {"vip": "2001:db8::100", "real": "2001:db8:1::1", "local": ["2001:db8::11"], "client": "2001:db8:9::1"},
}
TOA_KIND = 254


def endpoint(address, port):
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def make_switch(family=4, toa=True, port_range=(1025, 65535), protocol="tcp", mtu=1500):
    f = FAMILIES[family]
    text = f"""
[table]
local_port_range = [{port_range[0]}, {port_range[1]}]
[[service]]
vip = "{endpoint(f["vip"], 80)}"
protocol = "{protocol}"
mtu = {mtu}
local_addresses = {f["local"]!r}
  [[service.real]]
  address = "{endpoint(f["real"], 8080)}"
  forward = "fullnat"
  toa = {str(toa).lower()}
"""
    return Switch(configmod.from_dict(tomllib.loads(text), schedulers.catalog()), seed=1)


def ip(family, src, dst, **fields):
    return IP(src=src, dst=dst, flags="DF", **fields) if family == 4 else IPv6(src=src, dst=dst, **fields)


def run(switch, frames, headroom=True, t0=1):
    """The frames through the switch in one batch (copied in with headroom, or from_frames without)."""
    if headroom:
        batch = Batch()
        for k, frame in enumerate(frames):
            batch.append(bytes(frame), t0 + k)
    else:
        batch = Batch.from_frames([bytes(f) for f in frames], 1, [t0 + k for k in range(len(frames))])
    switch.process(batch)
    return [(batch.packet(i), batch.result(i)) for i in range(len(batch))]


def rebuilt(frame):
    """The frame with every checksum and length scapy computes: equal bytes mean valid checksums."""
    pkt = Ether(frame)
    for layer in (IP, TCP, UDP, ICMP):
        if layer in pkt:
            del pkt[layer].chksum
    if IP in pkt:
        del pkt[IP].len
    if IPv6 in pkt:
        del pkt[IPv6].plen
    return bytes(Ether(bytes(pkt)))


def ip_rebuilt(frame):
    """The frame with its IPv4 header checksum computed again (a fragment's UDP checksum covers the datagram)."""
    pkt = Ether(frame)
    del pkt[IP].chksum
    return bytes(pkt)


def l3(frame):
    pkt = Ether(frame)
    return pkt[IP] if IP in pkt else pkt[IPv6]


def toa_value(family, client, cport):
    packed = socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6, client)
    return cport.to_bytes(2, "big") + packed


def expected_in(frame, family, laddr, lport, toa=None):
    """DPVS's packet to the real: the client's end becomes the local address and port, the VIP's the real's,
    TTL - 1, and TOA (when given) first among the options."""
    pkt = Ether(bytes(frame))
    net = l3(bytes(frame))
    real = FAMILIES[family]["real"]
    if family == 4:
        head = IP(src=laddr, dst=real, flags=net.flags, tos=net.tos, id=net.id, ttl=net.ttl - 1)
    else:
        head = IPv6(src=laddr, dst=real, tc=net.tc, fl=net.fl, hlim=net.hlim - 1)
    out = Ether(src=pkt.src, dst=pkt.dst) / head
    seg = net.payload.copy()
    seg.sport, seg.dport = lport, 8080
    del seg.chksum
    if isinstance(seg, TCP):
        seg.dataofs = None
        if toa is not None:
            seg.options = [(TOA_KIND, toa)] + list(seg.options)
    else:
        del seg.len
    return bytes(out / seg)


def conversation(family, cport=40000, options=(("MSS", 1460), ("SAckOK", b""))):
    """A client's HTTP exchange and the real's answers to the local address (filled in by the test)."""
    f = FAMILIES[family]
    c = Ether(**MACS) / ip(family, f["client"], f["vip"], **({"ttl": 64} if family == 4 else {"hlim": 64}))
    syn = c / TCP(sport=cport, dport=80, flags="S", seq=100, options=list(options))
    ack = c / TCP(sport=cport, dport=80, flags="A", seq=101, ack=9001)
    data = c / TCP(sport=cport, dport=80, flags="PA", seq=101, ack=9001) / Raw(b"GET / HTTP/1.1\r\n\r\n")
    later = c / TCP(sport=cport, dport=80, flags="A", seq=119, ack=9101)
    return syn, ack, data, later


def answers(family, laddr, lport):
    f = FAMILIES[family]
    r = Ether(**MACS) / ip(family, f["real"], laddr)
    synack = r / TCP(sport=8080, dport=lport, flags="SA", seq=9000, ack=101, options=[("MSS", 1460)])
    body = r / TCP(sport=8080, dport=lport, flags="PA", seq=9001, ack=119) / Raw(b"x" * 100)
    return synack, body


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("headroom", [True, False])
def test_conversation_matches_dpvs(family, headroom):
    """Every packet of a conversation, both ways, against the oracle; TOA in the handshake's ACK and the
    request (they acknowledge the SYN-ACK and nothing more), not in the SYN nor once the real's data is acked."""
    f = FAMILIES[family]
    switch = make_switch(family)
    syn, ack, data, later = conversation(family)
    [(out, (verdict, _))] = run(switch, [syn], headroom)
    laddr, lport = l3(out).src, l3(out)[TCP].sport
    assert verdict == "new" and laddr == f["local"][0] and 1025 <= lport <= 65535
    assert out == expected_in(syn, family, laddr, lport) == rebuilt(out)
    synack, body = answers(family, laddr, lport)
    toa = toa_value(family, f["client"], 40000)
    outs = run(switch, [synack, ack, data, body, later], headroom, t0=10)
    assert [v for _, (v, _) in outs] == ["reply", "forward", "forward", "reply", "forward"]
    back = Ether(outs[0][0])
    assert (l3(outs[0][0]).src, l3(outs[0][0]).dst, back[TCP].sport, back[TCP].dport) == (f["vip"], f["client"], 80, 40000)
    mss = dict(back[TCP].options)["MSS"]
    assert mss == 1460 - len(toa) - 2, "DPVS lowers the SYN-ACK's MSS by TOA's length"
    assert outs[0][0] == rebuilt(outs[0][0])
    assert outs[1][0] == expected_in(ack, family, laddr, lport, toa) == rebuilt(outs[1][0])
    assert outs[2][0] == expected_in(data, family, laddr, lport, toa) == rebuilt(outs[2][0])
    assert Ether(outs[2][0])[Raw].load == b"GET / HTTP/1.1\r\n\r\n"
    assert Ether(outs[3][0])[Raw].load == b"x" * 100 and outs[3][0] == rebuilt(outs[3][0])
    assert l3(outs[3][0]).dst == f["client"] and Ether(outs[3][0])[TCP].dport == 40000
    assert outs[4][0] == expected_in(later, family, laddr, lport) == rebuilt(outs[4][0])
    assert switch.stats()["toa_added"] == 2
    snapshot = switch.snapshot()
    assert snapshot["connections"][0]["forward"] == "FullNat" and "FullNat" in conntrack_text(snapshot)
    assert "FullNat" in services_text(snapshot, 4096)


def _ones_diff(a, b):
    """a - b in one's complement arithmetic (modulo 0xFFFF)."""
    return (a - b) % 0xFFFF


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("error", [1, 0x100, 0x7FFF, 0xFFFE])
def test_a_wrong_checksum_stays_wrong_by_as_much(family, error):
    """RFC 1624: the rewrites (both ends and TOA on the way in, both ends on the way out) carry a
    checksum's error over as it came, neither mending nor adding to it (the sums are taken in the
    machine's byte order: a byte-order slip would change the error)."""
    switch = make_switch(family)
    syn, _, data, _ = conversation(family)
    [(out, _)] = run(switch, [syn])
    laddr, lport = l3(out).src, Ether(out)[TCP].sport
    synack, body = answers(family, laddr, lport)
    wrong = []
    for frame in (data, body):
        frame = bytearray(bytes(frame))
        at = len(frame) - len(Ether(bytes(frame))[TCP]) + 16
        good = int.from_bytes(frame[at:at + 2], "big")
        frame[at:at + 2] = ((good + error) % 0xFFFF or 0xFFFF).to_bytes(2, "big")
        wrong.append((bytes(frame), good))
    outs = run(switch, [synack, wrong[0][0], wrong[1][0]], t0=10)
    assert switch.stats()["toa_added"] == 1
    for (frame, (verdict, _)), (sent, good) in zip(outs[1:], wrong, strict=True):
        assert verdict in ("forward", "reply")
        came = int.from_bytes(sent[len(sent) - len(Ether(sent)[TCP]) + 16:][:2], "big")
        written = Ether(frame)[TCP].chksum
        right = Ether(rebuilt(frame))[TCP].chksum
        assert _ones_diff(came, good) == _ones_diff(written, right) == error % 0xFFFF


def test_toa_false_and_udp_translate_only():
    """toa = false: the addresses and ports change, no option, the MSS stays; UDP: both ends too."""
    switch = make_switch(4, toa=False)
    syn, ack, _, _ = conversation(4)
    [(out, _)] = run(switch, [syn])
    laddr, lport = l3(out).src, Ether(out)[TCP].sport
    synack, _ = answers(4, laddr, lport)
    outs = run(switch, [synack, ack], t0=10)
    assert dict(Ether(outs[0][0])[TCP].options)["MSS"] == 1460
    assert outs[1][0] == expected_in(ack, 4, laddr, lport) == rebuilt(outs[1][0])
    udp = make_switch(6, protocol="udp")
    f = FAMILIES[6]
    query = Ether(**MACS) / IPv6(src=f["client"], dst=f["vip"]) / UDP(sport=5353, dport=80) / Raw(b"q" * 33)
    [(out, (verdict, _))] = run(udp, [query])
    assert verdict == "new" and out == expected_in(query, 6, f["local"][0], Ether(out)[UDP].sport) == rebuilt(out)
    answer = Ether(**MACS) / IPv6(src=f["real"], dst=f["local"][0]) / UDP(sport=8080, dport=Ether(out)[UDP].sport)
    [(back, (verdict, _))] = run(udp, [answer / Raw(b"a")], t0=5)
    assert verdict == "reply" and back == rebuilt(back)
    assert (l3(back).src, l3(back).dst, Ether(back)[UDP].sport, Ether(back)[UDP].dport) == (f["vip"], f["client"], 80, 5353)


def test_ports_round_robin_exhaustion_and_release():
    """Two local addresses of two ports each: four flows, round robin over the addresses (DPVS
    __get_laddr); the fifth SYN is dropped and counted; the ports come back when the flows expire."""
    switch = make_switch(4, port_range=(5000, 5001))
    syns = [conversation(4, cport=41000 + k)[0] for k in range(5)]
    outs = run(switch, syns)
    got = [(l3(o).src, Ether(o)[TCP].sport) for o, (v, _) in outs[:4]]
    assert got == [("10.0.0.11", 5000), ("10.0.0.12", 5000), ("10.0.0.11", 5001), ("10.0.0.12", 5001)]
    assert outs[4][1][0] == "drop" and outs[4][0] == bytes(syns[4])
    assert switch.stats()["dropped"] == {"local_ports_exhausted": 1}
    assert [in_use for _, _, in_use, _ in switch._datapath.local_addresses()] == [2, 2]
    late = run(switch, [conversation(4, cport=42000)[0]], t0=61 * 10**9)      # SYN_RECV lasts 60 s
    assert late[0][1][0] == "new" and l3(late[0][0]).src == "10.0.0.11" and Ether(late[0][0])[TCP].sport in (5000, 5001)
    assert [in_use for _, _, in_use, _ in switch._datapath.local_addresses()] == [1, 0]


def test_toa_skipped_without_room():
    """No TOA where the options are full (DPVS: EDPVS_NOROOM) or the packet would outgrow the MTU
    (EDPVS_FRAG): the packet is still translated, and each skip is counted."""
    switch = make_switch(4, mtu=1280)
    full = [("NOP", None)] * 2 + [("Timestamp", (1, 2))] * 3 + [("NOP", None)] * 2     # 36 bytes of options
    syn, _, _, _ = conversation(4)
    [(out, _)] = run(switch, [syn])
    laddr, lport = l3(out).src, Ether(out)[TCP].sport
    synack, _ = answers(4, laddr, lport)
    c = Ether(**MACS) / IP(src="192.0.2.1", dst="10.0.0.100", flags="DF")
    crowded = c / TCP(sport=40000, dport=80, flags="A", seq=101, ack=9001, options=full)
    big = c / TCP(sport=40000, dport=80, flags="PA", seq=101, ack=9001) / Raw(b"y" * (1280 - 40 - 4))
    outs = run(switch, [synack, crowded, big], t0=10)
    assert outs[1][0] == expected_in(crowded, 4, laddr, lport) == rebuilt(outs[1][0])
    assert outs[2][0] == expected_in(big, 4, laddr, lport) == rebuilt(outs[2][0])
    stats = switch.stats()
    assert (stats["toa_added"], stats["toa_no_room"], stats["toa_too_big"]) == (0, 1, 1)


@pytest.mark.parametrize("method", ["masq", "fullnat"])
def test_ttl_runs_out_both_ways(method):
    """IPVS __ip_vs_get_out_rt (to the real) and Linux's ip_forward (the answer back): TTL 1 is not
    forwarded; ICMP time exceeded goes back to the sender, quoting its packet as it came."""
    text = f"""
[[service]]
vip = "10.0.0.100:80"
source_address = "10.0.0.2"
{'local_addresses = ["10.0.0.11"]' if method == "fullnat" else ""}
  [[service.real]]
  address = "10.1.0.1:8080"
  forward = "{method}"
"""
    switch = Switch(configmod.from_dict(tomllib.loads(text), schedulers.catalog()), seed=1)
    c = Ether(**MACS) / IP(src="192.0.2.1", dst="10.0.0.100")
    dying = c.copy()
    dying[IP].ttl = 1
    outs = run(switch, [c / TCP(sport=40000, dport=80, flags="S"), dying / TCP(sport=40001, dport=80, flags="S")])
    assert [v for _, (v, _) in outs] == ["new", "icmp"]
    err = Ether(outs[1][0])
    assert (err[IP].src, err[IP].dst, err[ICMP].type, err[ICMP].code) == ("10.0.0.2", "192.0.2.1", 11, 0)
    assert err[IPerror].dst == "10.0.0.100" and err[TCPerror].sport == 40001 and outs[1][0] == rebuilt(outs[1][0])
    to_real = Ether(outs[0][0])
    answer = Ether(**MACS) / IP(src="10.1.0.1", dst=to_real[IP].src, ttl=1) / TCP(
        sport=8080, dport=to_real[TCP].sport, flags="SA")
    [(out, (verdict, reason))] = run(switch, [answer], t0=5)
    assert verdict == "icmp" and Ether(out)[IP].dst == "10.1.0.1" and Ether(out)[ICMP].type == 11
    assert switch.stats()["dropped"] == {"ttl_exceeded": 2}


def test_icmp_errors_translated_both_ends():
    """An ICMP error about a full-NAT flow: the error and its quote get both ends translated, each way."""
    switch = make_switch(6)
    f = FAMILIES[6]
    syn, _, _, _ = conversation(6)
    [(out, _)] = run(switch, [syn])
    lport = Ether(out)[TCP].sport
    quoted_in = IPv6(src=f["local"][0], dst=f["real"]) / TCP(sport=lport, dport=8080, flags="S", seq=100)
    from_real = Ether(**MACS) / IPv6(src=f["real"], dst=f["local"][0]) / ICMPv6DestUnreach(code=4) / bytes(quoted_in)
    quoted_out = IPv6(src=f["vip"], dst=f["client"]) / TCP(sport=80, dport=40000, flags="SA")
    from_client = Ether(**MACS) / IPv6(src=f["client"], dst=f["vip"]) / ICMPv6DestUnreach(code=4) / bytes(quoted_out)
    outs = run(switch, [from_real, from_client], t0=5)
    assert [v for _, (v, _) in outs] == ["reply", "forward"]
    back, on = IPv6(bytes(Ether(outs[0][0])[IPv6])), IPv6(bytes(Ether(outs[1][0])[IPv6]))
    assert (back.src, back.dst) == (f["vip"], f["client"]) and (on.src, on.dst) == (f["local"][0], f["real"])
    inner_back, inner_on = IPv6(bytes(back.payload)[8:]), IPv6(bytes(on.payload)[8:])
    assert (inner_back.src, inner_back.dst, inner_back[TCP].sport, inner_back[TCP].dport) == (
        f["client"], f["vip"], 40000, 80)
    assert (inner_on.src, inner_on.dst, inner_on[TCP].sport, inner_on[TCP].dport) == (f["real"], f["local"][0], 8080, lport)
    for frame in (outs[0][0], outs[1][0]):
        pkt = Ether(frame)
        del pkt[IPv6].payload.cksum
        assert bytes(Ether(bytes(pkt))) == frame, "ICMPv6 checksum"
        assert IPv6(bytes(pkt[IPv6].payload)[8:])[TCP].chksum == IPv6(bytes(IPv6(bytes(pkt[IPv6].payload)[8:])))[
            TCP].chksum


OPTIONS = st.lists(
    st.sampled_from([("NOP", None), ("MSS", 1400), ("WScale", 7), ("SAckOK", b""), ("Timestamp", (5, 6)),
                     ("SAck", (1, 2)), (99, b"ab")]),
    max_size=8,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=st.sampled_from([4, 6]), options=OPTIONS, payload=st.binary(max_size=300),
       acked=st.booleans(), headroom=st.booleans())
def test_toa_writing_against_oracle(family, options, payload, acked, headroom):
    """Any options and payload: TOA first where it fits and the ACK matches, else the packet as it came
    but translated; every checksum valid either way."""
    f = FAMILIES[family]
    switch = make_switch(family)
    syn, _, _, _ = conversation(family)
    [(out, _)] = run(switch, [syn])
    laddr, lport = l3(out).src, Ether(out)[TCP].sport
    synack, _ = answers(family, laddr, lport)
    c = Ether(**MACS) / ip(family, f["client"], f["vip"])
    seg = c / TCP(sport=40000, dport=80, flags="A", seq=101, ack=9001 if acked else 9002, options=options) / payload
    opt_len = len(bytes(TCP(options=options))) - 20
    assume(opt_len <= 40)                           # more is no TCP header (the parser drops it)
    seg = Ether(bytes(seg))
    outs = run(switch, [synack, seg], headroom, t0=10)
    fits = opt_len + len(toa_value(family, f["client"], 40000)) + 2 <= 40
    toa = toa_value(family, f["client"], 40000) if acked and fits else None
    assert outs[1][0] == expected_in(seg, family, laddr, lport, toa) == rebuilt(outs[1][0])
    if acked and not fits:
        assert switch.stats()["toa_no_room"] == 1


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=st.sampled_from([4, 6]), options=st.binary(max_size=40), payload=st.binary(max_size=64))
def test_fuzz_harness_on_arbitrary_option_bytes(family, options, payload):
    """fuzz/common.py's forward harness (each frame in an exactly-sized batch, so a read past its end
    is caught under AddressSanitizer) on full-NAT conversations whose SYN-ACK and ACK carry any bytes as
    options: the MSS parse and TOA's writing stay in bounds and the invariants hold."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fuzz"))
    from common import check_invariants, encode, fullnat_conversation, run_forward

    switch = run_forward(encode(1, fullnat_conversation(family, options, payload), [1, 1, 1]))
    check_invariants(switch)
    stats = switch.stats()
    assert stats["new"] == 1 and stats["toa_added"] + stats["toa_no_room"] <= 1


def test_fuzz_harness_covers_fullnat():
    """fuzz/common.py's forward harness has full-NAT services; their frames keep every invariant."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fuzz"))
    from common import LINKTYPES, check_invariants, encode, run_forward

    syn, ack, data, _ = conversation(4)
    frames = []
    for frame in (syn, ack, data):
        pkt = Ether(bytes(frame))
        pkt[IP].dst = "10.0.0.101"
        del pkt[IP].chksum, pkt[TCP].chksum
        frames.append(bytes(pkt))
    switch = run_forward(encode(LINKTYPES[LINKTYPES.index(1)], frames))
    check_invariants(switch)
    assert switch.stats()["new"] == 1


@pytest.mark.parametrize(
    ("service", "real", "key", "words"),
    [
        ("", "", "service[0].local_addresses", "missing"),
        ('local_addresses = ["10.0.0.11"]', 'forward = "masq"', "service[0].local_addresses", "full-NAT"),
        ("", 'local_addresses = ["2001:db8::1"]', "service[0].real[0].local_addresses[0]", "IPv6"),
        ('local_addresses = ["10.0.0.11", "10.0.0.11"]', "", "service[0].local_addresses[1]", "twice"),
        ('local_addresses = ["10.0.0.11"]\nfragments = "track"', "", "service[0].fragments", "drop"),
        ("", 'forward = "dr"\nmac = "02:00:00:00:00:09"\ntoa = false', "service[0].real[0].toa", "full-NAT"),
        ('local_addresses = ["10.0.0.11"]', 'mac = "02:00:00:00:00:09"', "service[0].real[0].mac", "dr"),
    ],
)
def test_config_errors_name_the_key(service, real, key, words):
    real_lines = real if "forward" in real else f'forward = "fullnat"\n{real}'
    text = f"""
[[service]]
vip = "10.0.0.100:80"
{service}
  [[service.real]]
  address = "10.1.0.1:8080"
  {real_lines}
"""
    with pytest.raises(ConfigError) as err:
        configmod.from_dict(tomllib.loads(text), schedulers.catalog())
    assert err.value.key == key and words in str(err.value)


def test_port_range_checked():
    text = """
[table]
local_port_range = [2000, 1000]
[[service]]
vip = "10.0.0.100:80"
local_addresses = ["10.0.0.11"]
  [[service.real]]
  address = "10.1.0.1:8080"
  forward = "fullnat"
"""
    with pytest.raises(ConfigError) as err:
        configmod.from_dict(tomllib.loads(text), schedulers.catalog())
    assert err.value.key == "table.local_port_range"


PCAPS = Path(__file__).resolve().parent.parent / "pcaps"


def test_sample_capture_through_fullnat_toml():
    """pcaps/front.pcap (clients and the VIP's answers) through pcaps/fullnat.toml: every packet sent to a
    real leaves from a local address of its pool with TTL - 1 and valid checksums, TOA exactly in the
    packets that acknowledge the VIP's SYN-ACK (for the reals with toa), the answers as they came."""
    from l4emu.io import open_capture

    config = configmod.load(PCAPS / "fullnat.toml", schedulers.catalog())
    switch = Switch(config, seed=1)
    fdata = {}                                                      # client (address, port) -> SYN-ACK seq + 1
    checked = toa_seen = 0
    with open_capture(PCAPS / "front.pcap") as reader:
        for batch in reader.batches():
            before = [batch.packet(i) for i in range(len(batch))]
            switch.process(batch)
            for i, old in enumerate(before):
                verdict, detail = batch.result(i)
                pkt_in, out = Ether(old), batch.packet(i)
                if verdict == "answer" and TCP in pkt_in and pkt_in[TCP].flags == "SA":
                    fdata[(l3(old).dst, pkt_in[TCP].dport)] = pkt_in[TCP].seq + 1
                if verdict not in ("new", "forward"):
                    assert verdict != "answer" or out == old
                    continue
                svc, real = switch.reals[detail]
                net_in, net_out = l3(old), l3(out)
                pool = {str(a) for a in (real.local_addresses or svc.local_addresses)}
                assert net_out.src in pool and net_out.dst == str(real.address)
                hops = (net_in.ttl, net_out.ttl) if IP in pkt_in else (net_in.hlim, net_out.hlim)
                assert hops[1] == hops[0] - 1 and out == rebuilt(out)
                if TCP in pkt_in:
                    seg = pkt_in[TCP]
                    options = Ether(out)[TCP].options
                    acked = fdata.get((net_in.src, seg.sport)) == seg.ack and not seg.flags.S and not seg.flags.R
                    if real.toa and acked:
                        assert options[0] == (TOA_KIND, toa_value(net_in.version, net_in.src, seg.sport))
                        toa_seen += 1
                    else:
                        assert not options or options[0][0] != TOA_KIND
                checked += 1
    assert checked > 50 and toa_seen > 5 and switch.stats()["toa_added"] == toa_seen


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_finds_every_checksum_good(tmp_path):
    out = tmp_path / "fullnat.pcap"
    config = configmod.load(PCAPS / "fullnat.toml", schedulers.catalog())
    replay(PCAPS / "front.pcap", Switch(config, seed=1), out)
    fields = subprocess.run(
        ["tshark", "-r", str(out), "-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE",
         "-o", "udp.check_checksum:TRUE", "-T", "fields", "-e", "ip.checksum.status",
         "-e", "tcp.checksum.status", "-e", "udp.checksum.status", "-e", "tcp.option_kind"],
        capture_output=True, text=True, check=True).stdout
    statuses = [s for line in fields.splitlines() for s in line.split("\t")[:3] if s]
    assert statuses and "0" not in statuses      # 0 = Bad, 1 = Good
    assert any("254" in line.split("\t")[3].split(",") for line in fields.splitlines() if line.count("\t") >= 3)


def test_over_the_mtu_fragmented_or_answered():
    """DPVS checks the route MTU first: IPv4 without DF is fragmented on the way out (verdict more, each
    piece from the local address), with DF the client gets ICMP fragmentation needed."""
    switch = make_switch(4, mtu=1280)
    c = Ether(**MACS) / IP(src="192.0.2.1", dst="10.0.0.100")
    big = c / UDP(sport=7, dport=80) / Raw(bytes(1400))
    udp = make_switch(4, protocol="udp", mtu=1280)
    outs = run(udp, [big])
    assert [v for _, (v, _) in outs] == ["new", "more"]
    pieces = [IP(bytes(Ether(o)[IP])) for o, _ in outs]
    assert {p.src for p in pieces} == {"10.0.0.11"} and all(o == ip_rebuilt(o) for o, _ in outs)
    assert sum(len(p.payload) for p in pieces) == 1408 and pieces[0].flags.MF and not pieces[1].flags.MF
    df = c.copy()
    df[IP].flags = "DF"
    [(out, (verdict, _))] = run(switch, [df / TCP(sport=7, dport=80, flags="S") / Raw(bytes(1400))])
    assert verdict == "icmp" and Ether(out)[ICMP].type == 3 and Ether(out)[ICMP].code == 4
    assert Ether(out)[ICMP].nexthopmtu == 1280


def test_inside_view_shows_the_reals_answering_their_local_address(tmp_path):
    """--inside: what the reals saw and sent; a full-NAT real's answer goes to the local address and
    port its flow was given (the way in came from there)."""
    from scapy.utils import rdpcap

    config = configmod.load(PCAPS / "fullnat.toml", schedulers.catalog())
    inside = tmp_path / "inside.pcap"
    replay(PCAPS / "front.pcap", Switch(config, seed=1), tmp_path / "out.pcap", inside=inside)
    reals = {(str(r.address), r.port) for svc in config.services for r in svc.reals}
    sent, answered = set(), 0
    for pkt in rdpcap(str(inside)):
        net = pkt[IP] if IP in pkt else pkt[IPv6]
        seg = pkt[TCP] if TCP in pkt else pkt[UDP]
        if (net.dst, seg.dport) in reals:
            sent.add((net.src, seg.sport, net.dst, seg.dport))
        elif (net.src, seg.sport) in reals:
            assert (net.dst, seg.dport, net.src, seg.sport) in sent, "an answer to where the flow came from"
            answered += 1
    assert answered > 20


def test_a_reload_keeps_the_ports_running_connections_hold():
    """apply() carries the local addresses' port rings over: the ports lent to running connections stay
    lent (a new flow after the reload gets another one), and come back when those connections end."""
    switch = make_switch(4, port_range=(5000, 5001))
    first = run(switch, [conversation(4, cport=41000 + k)[0] for k in range(2)])
    lent = {(l3(o).src, Ether(o)[TCP].sport) for o, _ in first}
    switch.apply(switch.config)
    assert [in_use for _, _, in_use, _ in switch._datapath.local_addresses()] == [1, 1]
    after = run(switch, [conversation(4, cport=41002)[0]], t0=2 * 10**9)
    assert (l3(after[0][0]).src, Ether(after[0][0])[TCP].sport) not in lent
    run(switch, [conversation(4, cport=42000)[0]], t0=61 * 10**9)       # the first two expired (SYN_RECV, 60 s)
    assert sum(in_use for _, _, in_use, _ in switch._datapath.local_addresses()) == 2


def test_a_reload_that_changes_local_addresses_is_refused():
    switch = make_switch(4)
    changed = make_switch(4, port_range=(6000, 6100)).config
    with pytest.raises(ConfigError, match=r"local_addresses: full-NAT's local addresses or local_port_range changed"):
        switch.apply(changed)
