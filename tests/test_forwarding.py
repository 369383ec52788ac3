"""Forwarding methods dr and tun (docs/forwarding.md) against an oracle: scapy builds, from each input
packet and the real the switch chose, the packet IPVS (ip_vs_dr_xmit, ip_vs_tunnel_xmit, icmp_send)
or Katran (pckt_encap.h) would write, and the switch's bytes must equal it, checksums included."""

import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import ICMPv6PacketTooBig, ICMPv6TimeExceeded, IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from l4emu import config as configmod
from l4emu import schedulers
from l4emu.config import ConfigError
from l4emu.datapath._batch import Batch
from l4emu.datapath._datapath import DROP_REASONS
from l4emu.io import open_capture
from l4emu.render.views import conntrack_text, services_text
from l4emu.replay import replay
from l4emu.switch import Switch

PCAPS = Path(__file__).resolve().parent.parent / "pcaps"
CAPTURE, CONFIG = PCAPS / "forwarding.pcap", PCAPS / "forwarding.toml"
KATRAN_TTL, ICMP_TTL = 64, 64
IPPROTO = {"ipip4": 4, "ipip6": 41, "gue": 17, "gre": 47}


def inner_after_hop(ip, katran):
    """The client's IP packet as the real receives it inside: TTL / hop limit one less (IPVS), or as it
    came (Katran), without the Ethernet padding."""
    if ip.version == 4:
        ip = IP(bytes(ip)[: ip.len])
        if not katran:
            ip.ttl -= 1
            del ip.chksum
    else:
        ip = IPv6(bytes(ip)[: 40 + ip.plen])
        if not katran:
            ip.hlim -= 1
    return IP(bytes(ip)) if ip.version == 4 else IPv6(bytes(ip))


def ds_of(ip):
    return ip.tos if ip.version == 4 else ip.tc


def katran_ipip_source(ip, sport, outer):
    """Katran's encap_v4 / encap_v6 source, computed the way the XDP program does on a little-endian
    CPU: 32-bit words loaded from packet memory, XORed, stored back."""
    src = _packed(ip)
    if outer == 4:
        word = struct.unpack("<I", src[-4:])[0] ^ ((sport & 0xFFFF) << 16)
        word = (word & 0xFFFF0000) | 0x10AC
        return ".".join(str(b) for b in struct.pack("<I", word))
    word = struct.unpack("<I", src[-4:])[0] ^ struct.unpack("<I", struct.pack(">H", sport) + b"\0\0")[0]
    return _ntop6(b"\x01" + bytes(11) + struct.pack("<I", word))


def katran_gue_sport(ip, sport, outer):
    """Katran's gue_encap_v4 / gue_encap_v6 source port, little-endian arithmetic as above."""
    src = _packed(ip)
    if outer == 4:
        mixed = sport ^ (struct.unpack("<I", src[-4:])[0] >> 16)
    else:
        low = struct.unpack("<I", src[-4:])[0] if ip.version == 6 else struct.unpack("<I", src)[0] >> 16
        mixed = (low & 0xFFFF) ^ struct.unpack("<H", struct.pack(">H", sport))[0]
    return struct.unpack(">H", struct.pack("<H", mixed & 0xFFFF))[0]


def _packed(ip):
    return socket.inet_pton(socket.AF_INET if ip.version == 4 else socket.AF_INET6, ip.src)


def _ntop6(packed):
    return socket.inet_ntop(socket.AF_INET6, packed)


def expected_forward(frame, out, svc, real):
    """What IPVS or Katran sends the real for the client's frame (fields only the switch can know, the
    outer IP ID of IPVS and its GUE source port, the flow's hash, are taken from `out` and checked apart)."""
    eth = Ether(frame)
    ip = eth.payload
    katran = real.encap == "katran"
    inner = inner_after_hop(ip, katran)
    mac = real.mac or eth.dst
    if real.forward == "dr":
        eth.dst, eth.src = mac, eth.dst
        if ip.version == 4:
            ip.ttl -= 1
            del ip.chksum
        else:
            ip.hlim -= 1
        return bytes(eth)
    outer = real.address.version
    got = Ether(out).payload
    ds = ds_of(ip)
    if not katran and ds & 3 == 3:
        ds = (ds & ~3) | 2
    proto = {"ipip": IPPROTO["ipip4"] if ip.version == 4 else IPPROTO["ipip6"], "gue": 17, "gre": 47}[real.tun_type]
    inner_proto = 4 if ip.version == 4 else 41
    if katran and real.tun_type == "ipip":
        src = katran_ipip_source(ip, ip.payload.sport, outer)
    else:
        src = str(svc.source_address(outer))
    ttl = KATRAN_TTL if katran else (inner.ttl if ip.version == 4 else inner.hlim)
    if real.tun_type == "gue" and katran:
        payload = UDP(sport=katran_gue_sport(ip, ip.payload.sport, outer), dport=real.tun_port or 6080, chksum=0) / Raw(
            bytes(inner)
        )
    elif real.tun_type == "gue":
        assert 32768 <= got.payload.sport < 61000, "udp_flow_src_port's ephemeral range"
        csum = None if real.tun_flags != "nocsum" else 0
        payload = UDP(sport=got.payload.sport, dport=real.tun_port, chksum=csum) / Raw(
            bytes([0, inner_proto, 0, 0]) + bytes(inner)
        )
    elif real.tun_type == "gre":
        payload = GRE(chksum_present=int(real.tun_flags == "csum"), proto=0x0800 if ip.version == 4 else 0x86DD) / Raw(
            bytes(inner)
        )
    else:
        payload = Raw(bytes(inner))
    if outer == 4:
        df = not katran and ip.version == 4 and bool(ip.flags.DF)
        assert katran or got.id != 0
        head = IP(src=src, dst=str(real.address), tos=ds, ttl=ttl, proto=proto, flags="DF" if df else 0,
                  id=0 if katran else got.id)
    else:
        head = IPv6(src=src, dst=str(real.address), tc=ds, hlim=ttl, nh=proto)
    return bytes(Ether(dst=mac, src=eth.dst, type=0x0800 if outer == 4 else 0x86DD) / head / payload)


def expected_icmp(frame, out, svc, reason, mtu):
    """The ICMP error Linux's icmp_send / icmpv6_send would send the client, quoting the packet (TTL already
    decremented for `too_big`, as IPVS checks the MTU after decrement_ttl) up to 576 / 1280 bytes."""
    eth = Ether(frame)
    ip = eth.payload
    quoted = inner_after_hop(ip, katran=reason != "too_big")
    got = Ether(out).payload
    if ip.version == 4:
        icmp = ICMP(type=11, code=0) if reason == "ttl_exceeded" else ICMP(type=3, code=4, nexthopmtu=mtu)
        head = IP(src=str(svc.source_address(4)), dst=ip.src, tos=0xC0 | (ip.tos & 0x1E), ttl=ICMP_TTL, id=got.id)
        body = icmp / Raw(bytes(quoted)[:548])
    else:
        icmp = ICMPv6TimeExceeded(code=0) if reason == "ttl_exceeded" else ICMPv6PacketTooBig(mtu=mtu)
        head = IPv6(src=str(svc.source_address(6)), dst=ip.src, hlim=ICMP_TTL)
        body = icmp / Raw(bytes(quoted)[:1232])
    return bytes(Ether(dst=eth.src, src=eth.dst, type=eth.type) / head / body)


def run_capture(path=CAPTURE, config=CONFIG, seed=7, fragments=None):
    """(switch, [(frame in, frame out, verdict, detail)]) for every packet of the capture; the fragments
    the switch made of a packet (verdict more) go into `fragments`, by the packet's row."""
    switch = Switch.from_config(config, seed=seed)
    rows = []
    with open_capture(path) as reader:
        for batch in reader.batches():
            before = [batch.packet(i) for i in range(len(batch))]
            switch.process(batch)
            k = 0
            for i in range(len(batch)):
                verdict, detail = batch.result(i)
                if verdict == "more":
                    if fragments is not None:
                        fragments.setdefault(len(rows) - 1, []).append(batch.packet(i))
                    continue
                rows.append((before[k], batch.packet(i), verdict, detail))
                k += 1
            assert k == len(before)
    return switch, rows


def check_row(switch, frame, out, verdict, detail, more=()):
    if verdict in ("new", "forward") and more:       # no DF and too big: Linux's ip_fragment on output
        svc, real = switch.reals[detail]
        whole = Ether(expected_forward(frame, out, svc, real))
        if real.address.version == 6:   # ip6_fragment: the outer packet in pieces that fit, ID the switch's own
            pieces = [Ether(piece) for piece in (out, *more)]
            assert all(len(piece) - 14 <= svc.mtu and piece[IPv6].dst == whole[IPv6].dst for piece in pieces)
            assert {(piece.src, piece.dst) for piece in pieces} == {(whole.src, whole.dst)}
            assert bytes(_defragment6(pieces)) == bytes(whole[IPv6])
            return
        pieces = fragment(whole[IP], fragsize=(svc.mtu - 20) & ~7)
        assert [out, *more] == [bytes(Ether(dst=whole.dst, src=whole.src) / piece) for piece in pieces]
    elif verdict in ("new", "forward"):
        svc, real = switch.reals[detail]
        assert out == expected_forward(frame, out, svc, real), (real, Ether(frame).summary())
    elif verdict == "icmp":
        ip = Ether(frame).payload
        svc = next(s for s, _ in switch.reals if str(s.vip) == ip.dst)
        reason = DROP_REASONS[detail]
        real_mtus = {svc.mtu - _overhead(r) for s, r in switch.reals if s is svc}
        mtus = [m if ip.version == 4 else max(m, 1280) for m in real_mtus] or [0]
        assert any(out == expected_icmp(frame, out, svc, reason, m) for m in mtus), Ether(frame).summary()
    else:
        assert out == frame, (verdict, detail)


def _overhead(real):
    if real.forward != "tun":
        return 0
    n = 20 if real.address.version == 4 else 40
    if real.tun_type == "gue":
        n += 8 + (0 if real.encap == "katran" else 4)
    elif real.tun_type == "gre":
        n += 8 if real.tun_flags == "csum" else 4
    return n


def test_every_output_packet_of_the_forwarding_sample_is_what_the_oracle_builds():
    fragments: dict[int, list] = {}
    switch, rows = run_capture(fragments=fragments)
    verdicts = {}
    for k, (frame, out, verdict, detail) in enumerate(rows):
        check_row(switch, frame, out, verdict, detail, fragments.get(k, ()))
        verdicts[verdict] = verdicts.get(verdict, 0) + 1
    # The no-DF 1500-byte datagrams that went to the gue real left in two fragments each.
    assert fragments and switch.stats()["fragments_made"] == sum(len(more) for more in fragments.values())
    assert all(len(more) == 1 and Ether(rows[k][0])[IP].len == 1500 for k, more in fragments.items())
    stats = switch.stats()
    # The sample holds each case: both TTL 1 SYNs answered, DF / IPv6 full-size segments over a tunnel's
    # MTU answered, Katran's dropped without an answer.
    assert stats["dropped"]["ttl_exceeded"] == 2 and stats["dropped"]["too_big"] >= 2
    assert stats["dropped"]["too_big_dropped"] >= 1 and stats["icmp"] == 4 + stats["dropped"]["too_big"] - 2
    methods = {r.forward + "/" + r.tun_type + "/" + r.encap for s, r in switch.reals}
    used = {r.forward + "/" + r.tun_type + "/" + r.encap for i, (s, r) in enumerate(switch.reals)
            if switch.real_counters()[i]["in_pkts"]}
    assert used == methods, "every method of the config carried packets"


def test_the_same_capture_config_and_seed_give_the_same_bytes(tmp_path):
    outs = []
    for k in range(2):
        replay(CAPTURE, Switch.from_config(CONFIG, seed=3), tmp_path / f"out{k}.pcap")
        outs.append((tmp_path / f"out{k}.pcap").read_bytes())
    assert outs[0] == outs[1]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_finds_no_bad_checksum_and_no_malformed_packet(tmp_path):
    replay(CAPTURE, Switch.from_config(CONFIG, seed=3), tmp_path / "out.pcap")
    checks = [f"{p}.check_checksum:TRUE" for p in ("ip", "tcp", "udp")]  # ICMP and GRE: always checked
    args = [a for c in checks for a in ("-o", c)]
    text = subprocess.run(["tshark", "-r", str(tmp_path / "out.pcap"), "-q", "-z", "expert,warn", *args],
                          capture_output=True, text=True, check=True).stdout
    bad = [line for line in text.splitlines() if "checksum" in line.lower() or "Malformed" in line]
    assert not bad, text
    # The only warnings: the segments the switch answered instead of forwarding are missing downstream.
    warns = [line for line in text.splitlines() if line.strip()[:1].isdigit()]
    assert all("Previous segment(s) not captured" in line for line in warns), text


def test_conntrack_and_services_name_the_methods_as_ipvsadm_does():
    switch, _ = run_capture()
    snapshot = switch.snapshot()
    text = services_text(snapshot, 4096)
    assert "Route" in text and "Tunnel" in text and "Masq" not in text
    table = conntrack_text(snapshot)
    assert table.splitlines()[1].split()[-1] == "Forward"
    assert {line.split()[-1] for line in table.splitlines()[2:]} == {"Route", "Tunnel"}


def test_a_dr_flow_moves_by_ipvs_input_only_rows():
    """IPVS sets NOOUTPUT on dr/tun connections: a client's FIN on ESTABLISHED gives FIN_WAIT (INPUT-ONLY),
    not NAT's CLOSE_WAIT, until a packet from the real's side is seen."""
    doc = {"service": [{"vip": "10.0.0.100:80", "real": [
        {"address": "10.1.0.1:80", "forward": "dr", "mac": "02:00:00:00:00:01"}]}]}
    switch = Switch(configmod.from_dict(doc, {"rr"}), seed=1)
    client = Ether() / IP(src="172.16.0.1", dst="10.0.0.100")
    frames = [client / TCP(sport=1000, dport=80, flags=f) for f in ("S", "A", "FA")]
    batch = Batch.from_frames([bytes(f) for f in frames], 1)
    switch.process(batch)
    assert [row["state"] for row in switch.conntrack()] == ["FIN_WAIT"]


@pytest.mark.parametrize(("real", "key", "words"), [
    ({"forward": "dr"}, "mac", "missing"),
    ({"forward": "masq", "mac": "02:00:00:00:00:01"}, "mac", "only dr and tun"),
    ({"forward": "tun", "tun_type": "gue"}, "tun_port", "missing"),
    ({"forward": "tun", "tun_type": "ipip", "tun_flags": "csum"}, "tun_flags", "only an IPVS gue or gre"),
    ({"forward": "tun", "encap": "katran", "tun_type": "gre"}, "encap", "ipip or gue"),
    ({"forward": "route"}, "forward", "not one of"),
    ({"forward": "dr", "mac": "02:00:00:00:00"}, "mac", "not a MAC"),
    ({"forward": "tun", "address": "[2001:db8::1]:80"}, "source_address", "IPv6 address"),
    ({"forward": "dr", "mac": "02:00:00:00:00:01", "address": "10.1.0.1:8080"}, "address", "owns the VIP"),
])
def test_a_bad_forwarding_key_is_one_error_naming_it(real, key, words):
    entry = {"address": "10.1.0.1:80", **real}
    doc = {"service": [{"vip": "10.0.0.100:80", "real": [entry]}]}
    with pytest.raises(ConfigError) as caught:
        configmod.from_dict(doc, schedulers.catalog())
    assert caught.value.key.endswith(key) and words in str(caught.value)


METHODS = [
    {"forward": "dr", "mac": "02:00:00:00:00:09"},
    {"forward": "tun"},
    {"forward": "tun", "tun_type": "gue", "tun_port": 6080, "tun_flags": "csum"},
    {"forward": "tun", "tun_type": "gue", "tun_port": 6080},
    {"forward": "tun", "tun_type": "gre", "tun_flags": "csum"},
    {"forward": "tun", "tun_type": "gre"},
    {"forward": "tun", "encap": "katran"},
    {"forward": "tun", "encap": "katran", "tun_type": "gue"},
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=st.sampled_from(METHODS), v6=st.booleans(), outer6=st.booleans(), udp=st.booleans(),
       ttl=st.integers(0, 255), tos=st.integers(0, 255), df=st.booleans(), size=st.integers(0, 1500),
       sport=st.integers(1, 65535), mtu=st.sampled_from([1280, 1400, 1500, 9000]))
def test_any_packet_through_any_method_is_what_the_oracle_builds(method, v6, outer6, udp, ttl, tos, df, size,
                                                                  sport, mtu):
    """Generated packets (either family, TCP or UDP, any TTL, DSCP/ECN, DF, size) through each method and
    family of real: forwarded, answered or dropped exactly as the oracle says."""
    real_family = 6 if (outer6 and method["forward"] == "tun") else (6 if v6 and method["forward"] == "dr" else 4)
    if method["forward"] == "dr":
        real_family = 6 if v6 else 4
    address = "[2001:db8:1::5]:80" if real_family == 6 else "10.1.0.5:80"
    vip = "[2001:db8::100]:80" if v6 else "10.0.0.100:80"
    doc = {"service": [{"vip": vip, "protocol": "udp" if udp else "tcp", "mtu": mtu,
                        "source_address": ["10.0.0.2", "2001:db8::2"], "real": [{"address": address, **method}]}]}
    switch = Switch(configmod.from_dict(doc, {"rr"}), seed=5)
    svc, real = switch.reals[0]
    l3 = (IPv6(src="2001:db8:ff::1", dst="2001:db8::100", hlim=ttl, tc=tos) if v6 else
          IP(src="172.16.9.1", dst="10.0.0.100", ttl=ttl, tos=tos, flags="DF" if df else 0, id=77))
    l4 = UDP(sport=sport, dport=80) if udp else TCP(sport=sport, dport=80, flags="S")
    frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:fe") / l3 / l4 / Raw(bytes(size)))
    batch = Batch.from_frames([frame], 1)
    switch.process(batch)
    verdict, detail = batch.result(0)
    out = batch.packet(0)
    katran = real.encap == "katran"
    ip_len = len(frame) - 14
    if not katran and ttl <= 1:
        assert (verdict, out) == ("icmp", expected_icmp(frame, out, svc, "ttl_exceeded", 0))
    elif ip_len + _overhead(real) > mtu:
        if not katran and not v6 and not df:
            more = [batch.packet(k) for k in range(1, len(batch))]
            assert verdict == "new" and {batch.result(k)[0] for k in range(1, len(batch))} == {"more"}
            check_row(switch, frame, out, verdict, detail, more)
        elif katran:                      # Katran does not fragment: dropped and counted
            assert (verdict, out) == ("drop", frame)
        else:
            limit = mtu - _overhead(real)
            assert (verdict, out) == ("icmp", expected_icmp(frame, out, svc, "too_big",
                                                           max(limit, 1280) if v6 else limit))
    else:
        assert verdict == "new" and out == expected_forward(frame, out, svc, real)


def _frames_for_the_forward_harness():
    """Well-formed client frames to the forward harness's VIPs (either family, TTLs around 1, sizes
    around its 1280 MTU), each maybe with a few bytes overwritten or cut short."""
    good = st.builds(
        lambda v6, ttl, size, sport, df: bytes(
            Ether(dst="02:00:00:00:00:fe")
            / (IPv6(src="2001:db8:ff::1", dst="2001:db8::100", hlim=ttl) / UDP(sport=sport, dport=80) if v6 else
               IP(src="172.16.0.1", dst="10.0.0.100", ttl=ttl, flags="DF" if df else 0)
               / TCP(sport=sport, dport=80, flags="S"))
            / Raw(bytes(size))),
        st.booleans(), st.integers(0, 3), st.integers(0, 1300), st.integers(1, 65535), st.booleans())
    edited = st.builds(lambda frame, edits, cut: bytes(edits.get(k, b) for k, b in enumerate(frame))[:cut],
                       good, st.dictionaries(st.integers(14, 60), st.integers(0, 255), max_size=3),
                       st.integers(0, 1400))
    pieces = st.builds(
        lambda k, ident, sport: bytes(Ether(dst="02:00:00:00:00:fe") / fragment(
            IP(src="172.16.0.1", dst="10.0.0.100", id=ident) / TCP(sport=sport, dport=80, flags="S") / bytes(1800),
            fragsize=600)[k]),
        st.integers(0, 3), st.integers(0, 2), st.integers(1, 3))     # fragments of a few datagrams, any order
    return st.one_of(good, edited, pieces)


@settings(max_examples=150, deadline=None)
@given(frames=st.lists(_frames_for_the_forward_harness(), min_size=1, max_size=6),
       linktype=st.sampled_from([1, 101, 113, 276, 0, 228, 229]))
def test_the_forward_fuzz_harness_holds_on_client_frames(frames, linktype):
    """fuzz/common.py's run_forward (the atheris 'forward' harness): dropped and passed frames unchanged,
    every packet one verdict, reasons adding up, on every link type (a raw-IP type takes the frame's
    bytes after the Ethernet header)."""
    sys.path.insert(0, str(PCAPS.parent / "fuzz"))
    from common import LINKTYPES, encode, run_forward

    frames = [f if linktype == 1 else f[14:] for f in frames]
    run_forward(encode(LINKTYPES[LINKTYPES.index(linktype)], frames))


def fragment_rows(rows):
    """The rows of the sample whose input is an IP fragment, by datagram (source, destination, IP ID)."""
    datagrams: dict[tuple, list] = {}
    for frame, out, verdict, detail in rows:
        eth = Ether(frame)
        if eth.haslayer(IPv6ExtHdrFragment):
            key = (eth[IPv6].src, eth[IPv6].dst, eth[IPv6ExtHdrFragment].id)
        elif eth.haslayer(IP) and (eth[IP].flags.MF or eth[IP].frag):
            key = (eth[IP].src, eth[IP].dst, eth[IP].id)
        else:
            continue
        datagrams.setdefault(key, []).append((frame, out, verdict, detail))
    return datagrams


def test_3tuple_sends_every_fragment_of_a_datagram_to_one_real_whatever_the_secret():
    """Maglev's policy: each fragment by (source, destination, protocol) under a fixed key, so every
    fragment of a datagram reaches one real, switches with other secrets agree, both reals get some,
    and each fragment leaves exactly as the oracle tunnels or routes it."""
    switch, rows = run_capture(seed=7)
    other = fragment_rows(run_capture(seed=8)[1])
    datagrams = fragment_rows(rows)
    assert len(datagrams) == 4 and sum(len(d) for d in datagrams.values()) == 11
    reals = set()
    for key, fragments in datagrams.items():
        assert {v for _, _, v, _ in fragments} == {"forward"}
        assert len({d for _, _, _, d in fragments} | {d for _, _, _, d in other[key]}) == 1
        reals.add(fragments[0][3])
        for frame, out, verdict, detail in fragments:
            check_row(switch, frame, out, verdict, detail)
    assert len(reals) == 3, "both reals of the DNS service and one of the IPv6 service"


@pytest.mark.parametrize("policy", ["drop", "3tuple"])
def test_a_tiny_first_fragment_is_dropped_and_drop_drops_them_all(policy):
    """A first fragment that splits the UDP header (RFC 1858) is dropped under 3tuple; under drop
    (the default, Katran's and DPVS's) every fragment for the VIP is."""
    doc = {"service": [{"vip": "10.0.0.100:53", "protocol": "udp", "fragments": policy, "real": [
        {"address": "10.1.0.1:53", "forward": "dr", "mac": "02:00:00:00:00:01"}]}]}
    switch = Switch(configmod.from_dict(doc, {"rr"}), seed=1)
    head = Ether() / IP(src="172.16.0.1", dst="10.0.0.100", proto=17, flags="MF", id=9)
    tiny = bytes(head / Raw(bytes(UDP(sport=5, dport=53, len=1000))[:4]))
    rest = bytes(Ether() / IP(src="172.16.0.1", dst="10.0.0.100", proto=17, frag=1, id=9) / Raw(bytes(992)))
    batch = Batch.from_frames([tiny, rest], 1)
    switch.process(batch)
    assert batch.result(0) == ("drop", DROP_REASONS.index("fragment"))
    assert batch.result(1)[0] == ("drop" if policy == "drop" else "forward")
    assert batch.packet(0) == tiny


def test_3tuple_needs_reals_that_take_packets_without_a_connection():
    doc = {"service": [{"vip": "10.0.0.100:53", "protocol": "udp", "fragments": "3tuple",
                        "real": [{"address": "10.1.0.1:53"}]}]}
    with pytest.raises(ConfigError, match="only dr and tun reals") as caught:
        configmod.from_dict(doc, {"rr"})
    assert caught.value.key == "service[0].fragments"


def test_inside_shows_what_the_reals_receive_fragments_included(tmp_path):
    """--inside: the tunnelled and routed packets as the reals get them, the switch's fragments in
    their place after the first; nothing the switch answered or dropped."""
    summary = replay(CAPTURE, Switch.from_config(CONFIG, seed=7), tmp_path / "out.pcap", inside=tmp_path / "in.pcap")
    fragments: dict[int, list] = {}
    _, rows = run_capture(seed=7, fragments=fragments)
    sent = [out for k, (_, out, verdict, _) in enumerate(rows) if verdict in ("new", "forward")
            for out in [out, *fragments.get(k, [])]]
    with open_capture(tmp_path / "in.pcap") as reader:
        inside = [batch.packet(i) for batch in reader.batches() for i in range(len(batch))]
    assert inside == sent and summary["inside_written"] == len(sent)


TRACKED, TRACK_CONFIG = PCAPS / "fragments.pcap", PCAPS / "fragments.toml"


def _datagram_key(frame):
    eth = Ether(frame)
    if eth.haslayer(IPv6ExtHdrFragment):
        return eth[IPv6].src, eth[IPv6ExtHdrFragment].id
    if eth.haslayer(IP) and (eth[IP].flags.MF or eth[IP].frag):
        return eth[IP].src, eth[IP].id
    return None


def test_track_sends_each_datagram_whole_to_its_first_fragments_real():
    """Cilium's policy with a waiting room: the first fragment opens (or finds) the connection; the later
    ones follow it to the same real, NATed (address only; the first fragment's L4 checksum takes the
    whole change) or routed; those that came first are written right after it. Reassembled by scapy,
    each datagram is the client's, addressed to the real, its TCP/UDP checksum valid."""
    switch = Switch.from_config(TRACK_CONFIG, seed=1)
    outputs, inputs = [], {}
    with open_capture(TRACKED) as reader:
        for batch in reader.batches():
            for i in range(len(batch)):
                key = _datagram_key(batch.packet(i))
                if key:
                    inputs.setdefault(key, []).append(batch.packet(i))
            switch.process(batch)
            outputs += [(batch.packet(i), *batch.result(i)) for i in range(len(batch))]
    lost = (CLIENTS_LOST, 0x16FF)
    by_datagram: dict[tuple, list] = {}
    real = {}
    for out, verdict, detail in outputs:
        key = _datagram_key(out)
        if key is None or verdict == "drop":
            continue
        assert verdict in ("new", "forward", "more")
        by_datagram.setdefault(key, []).append(Ether(out))
        real.setdefault(key, set()).add(detail)
    assert set(by_datagram) == set(inputs) - {lost}
    for key, pieces in by_datagram.items():
        assert len(pieces) == len(inputs[key]) and len(real[key]) == 1
        svc, cfg = switch.reals[real[key].pop()]
        if pieces[0].haslayer(IPv6):
            whole = _defragment6(pieces)
        else:
            for piece in pieces:
                fresh = IP(bytes(piece[IP]))
                del fresh.chksum
                assert IP(bytes(fresh)).chksum == piece[IP].chksum
            whole = _defragment4(pieces)
        l4 = whole.payload
        if cfg.forward == "masq":
            assert str(whole.dst) == str(cfg.address) and l4.dport == cfg.port
        else:       # dr: the VIP stays, the real's MAC on every fragment
            assert str(whole.dst) == str(svc.vip) and {piece.dst for piece in pieces} == {cfg.mac}
        original = l4.chksum
        del l4.chksum
        assert (IP if whole.version == 4 else IPv6)(bytes(whole)).payload.chksum == original
    stats = switch.stats()
    assert stats["fragments_expired"] == 1 and stats["fragments_held"] == 1      # the lost datagram's two
    assert stats["fragments_released"] >= 6 and stats["dropped"] == {}


CLIENTS_LOST = "172.16.0.1"


def _defragment4(pieces):
    """The datagram from IPv4 fragments (any order), as the real's stack reassembles it."""
    pieces = sorted(pieces, key=lambda e: e[IP].frag)
    data = b"".join(bytes(e[IP].payload)[: e[IP].len - e[IP].ihl * 4] for e in pieces)
    head = pieces[0][IP].copy()
    head.remove_payload()
    head.flags, head.frag, head.len, head.chksum = 0, 0, None, None
    return IP(bytes(head / Raw(data)))


def _defragment6(pieces):
    """The packet from IPv6 fragments (any order)."""
    pieces = sorted(pieces, key=lambda e: e[IPv6ExtHdrFragment].offset)
    data = b"".join(bytes(e[IPv6ExtHdrFragment].payload) for e in pieces)
    first = pieces[0]
    head = IPv6(src=first[IPv6].src, dst=first[IPv6].dst, nh=first[IPv6ExtHdrFragment].nh,
                hlim=first[IPv6].hlim, tc=first[IPv6].tc, fl=first[IPv6].fl)
    return IPv6(bytes(head / Raw(data)))


def test_a_fragment_flood_keeps_the_waiting_room_bounded_and_established_flows_going():
    """100k fragments of never-completed datagrams against a track service: the waiting room never
    holds more than its bound, the overflow is counted, and an established flow's packets still go."""
    doc = {"service": [{"vip": "10.0.0.100:53", "protocol": "udp", "fragments": "track",
                        "real": [{"address": "10.1.0.11:53"}]}]}
    switch = Switch(configmod.from_dict(doc, {"rr"}), seed=1)
    flow = bytes(Ether() / IP(src="172.16.9.9", dst="10.0.0.100") / UDP(sport=7, dport=53) / b"q")
    flood = [bytes(Ether() / IP(src="172.16.0.1", dst="10.0.0.100", proto=17, id=k & 0xFFFF, frag=100)
                   / Raw(bytes(64))) for k in range(1000)]
    for r in range(100):
        batch = Batch.from_frames(flood + [flow], 1, [10**9 + r] * (len(flood) + 1))
        switch.process(batch)
        assert batch.result(len(flood))[0] in ("new", "forward")
    stats = switch.stats()
    assert stats["fragments_held"] <= 64 and stats["dropped"]["fragment_overflow"] >= 100 * 1000 - 64
    assert stats["forward"] + stats["new"] == 100


@pytest.mark.parametrize("policy", ["track", "reassemble"])
def test_a_service_of_emulated_reals_takes_a_fragment_policy(policy):
    """The emulated hosts reassemble what reaches them (tests/test_emulated_fragments.py)."""
    doc = {"service": [{"vip": "10.0.0.100:53", "protocol": "udp", "fragments": policy,
                        "real": [{"address": "10.1.0.1:53", "emulated": True, "app": "echo"}]}]}
    assert configmod.from_dict(doc, {"rr"}).services[0].fragments == policy


@pytest.mark.parametrize("other", [{"fragments": "track"}, {"fragments": "reassemble"}])
def test_a_config_with_emulated_reals_takes_fragment_policies_beside_them(other):
    neighbour = {"vip": "10.0.0.100:53", "protocol": "udp", "real": [{"address": "10.1.0.11:53"}], **other}
    doc = {"service": [{"vip": "10.0.0.100:80", "real": [{"address": "10.1.0.1:8080", "emulated": True}]},
                       neighbour]}
    assert configmod.from_dict(doc, {"rr"}).services[1].fragments == other["fragments"]


@pytest.mark.parametrize("other", [{"forward": "tun"}, {"forward": "dr", "mac": "02:00:00:00:00:09"},
                                   {"forward": "fullnat"}])
def test_a_config_with_emulated_reals_takes_every_forwarding_method_beside_them(other):
    """The emulate loop gives the switch a batch to build in: tunnels, dr and full-NAT beside emulated reals."""
    neighbour = {"vip": "10.0.0.100:53", "protocol": "udp", "source_address": "10.0.0.1",
                 "real": [{"address": "10.1.0.11:53", **other}],
                 **({"local_addresses": ["10.0.0.200"]} if other["forward"] == "fullnat" else {})}
    doc = {"service": [{"vip": "10.0.0.100:80", "real": [{"address": "10.1.0.1:8080", "emulated": True}]},
                       neighbour]}
    configmod.from_dict(doc, {"rr"})


def test_an_emulated_socket_answers_from_one_address():
    """A dr real answers from its service's VIP: the same socket cannot also answer another VIP, or as masq."""
    real = {"address": "10.1.0.1:80", "emulated": True}
    doc = {"service": [{"vip": "10.0.0.100:80", "real": [{**real, "forward": "dr", "mac": "02:00:00:00:00:09"}]},
                       {"vip": "10.0.0.101:80", "real": [real]}]}
    with pytest.raises(ConfigError, match="one emulated socket answers from one address") as caught:
        configmod.from_dict(doc, {"rr"})
    assert caught.value.key == "service[1].real[0].forward"


def test_an_emulated_tun_real_is_of_the_vips_family():
    doc = {"service": [{"vip": "10.0.0.100:80", "source_address": ["10.0.0.1", "2001:db8::1"],
                        "real": [{"address": "[2001:db8:1::1]:80", "emulated": True, "forward": "tun"}]}]}
    with pytest.raises(ConfigError, match="decapsulates IPv4 in IPv4 only") as caught:
        configmod.from_dict(doc, {"rr"})
    assert caught.value.key == "service[0].real[0].address"


@pytest.mark.parametrize("reverse", [False, True])
def test_track_translates_a_nat_reals_fragmented_reply_back_to_the_vip(reverse):
    """The real's answer in fragments (first fragment first, or last): the first is SNATed through the
    connection like any reply, the later ones follow it by (real, client, protocol, IP ID), address only;
    reassembled, the client gets the VIP's datagram with a valid checksum."""
    switch = Switch.from_config(TRACK_CONFIG, seed=1)
    query = bytes(Ether() / IP(src="172.16.5.5", dst="10.0.0.100") / UDP(sport=4444, dport=53) / b"query")
    batch = Batch.from_frames([query], 1)
    switch.process(batch)
    verdict, real_index = batch.result(0)
    svc, real = switch.reals[real_index]
    answer = IP(src=str(real.address), dst="172.16.5.5", id=77) / UDP(sport=real.port, dport=4444) / bytes(2500)
    pieces = [bytes(Ether() / piece) for piece in fragment(answer, fragsize=1000)]
    batch = Batch.from_frames(pieces[::-1] if reverse else pieces, 1, [10**9] * len(pieces))
    switch.process(batch)
    out = [Ether(batch.packet(i)) for i in range(len(batch)) if batch.result(i)[0] in ("reply", "more")]
    assert len(out) == len(pieces) and verdict == "new"
    whole = _defragment4(out)
    assert (str(whole.src), whole.sport, str(whole.dst), whole.dport) == (str(svc.vip), svc.port, "172.16.5.5", 4444)
    original = whole[UDP].chksum
    del whole[UDP].chksum
    assert IP(bytes(whole))[UDP].chksum == original
    assert bytes(whole[UDP].payload) == bytes(2500)
