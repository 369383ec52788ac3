"""Emulated reals under every forwarding method (issue 15): under `dr` and `tun` the real owns the VIP
(takes the packet, out of the tunnel, as its own) and answers the client from it, past the switch;
under `fullnat` it sees a local address as the client and answers it through the switch. scapy reads
every packet of the whole conversation and of `--inside` (addresses, outer headers, checksums); tshark
finds no expert warning; `simulate` serves the same requests through dr reals as through masq ones."""
from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.all import GRE, IP, TCP, UDP, Ether, IPv6, raw, rdpcap, wrpcap

from conftest import PCAPS, needs_tshark, run_cli
from l4emu import config as configmod
from l4emu import schedulers
from l4emu.simulate import simulate
from l4emu.testing._drivers import tunnel_inner
from l4emu.workload import from_config

VIP4, VIP6 = "10.0.0.100", "2001:db8::100"
SOURCE4, SOURCE6 = "10.0.0.1", "2001:db8::1"
LOCAL4, LOCAL6 = "10.0.0.200", "2001:db8::200"
REALS = {"10.1.0.1": "02:00:00:00:01:01", "10.1.0.2": "02:00:00:00:01:02", "10.1.0.11": "02:00:00:00:01:11",
         "2001:db8:1::1": "02:00:00:00:01:21"}
GUE_PORT = 6080
METHODS = ["dr", "ipip", "gue", "gre", "fullnat"]


def real_keys(method: str, address: str) -> str:
    if method == "fullnat":
        return '  forward = "fullnat"\n'
    if method == "dr":
        return f'  forward = "dr"\n  mac = "{REALS[address]}"\n'
    # GUE with its UDP checksum: a zero one over IPv6 (RFC 6935 allows it for tunnels) is an error to tshark
    port = f'  tun_port = {GUE_PORT}\n  tun_flags = "csum"\n' if method == "gue" else ""
    return f'  forward = "tun"\n  tun_type = "{method}"\n{port}  mac = "{REALS[address]}"\n'


def config_text(method: str) -> str:
    """pcaps/emulated.toml's services, the reals on the VIP's ports (dr and tun own the VIP)."""
    text = ""
    for vip, proto, reals, source, local in [
        (f"{VIP4}:80", "tcp", ["10.1.0.1:80", "10.1.0.2:80"], SOURCE4, LOCAL4),
        (f"{VIP4}:53", "udp", ["10.1.0.11:53"], SOURCE4, LOCAL4),
        (f"[{VIP6}]:80", "tcp", ["[2001:db8:1::1]:80"], SOURCE6, LOCAL6),
    ]:
        text += f'[[service]]\nvip = "{vip}"\nprotocol = "{proto}"\nscheduler = "rr"\nsource_address = "{source}"\n'
        if method == "fullnat":
            text += f'local_addresses = ["{local}"]\n'
        for real in reals:
            address = real.rsplit(":", 1)[0].strip("[]")
            text += f'  [[service.real]]\n  address = "{real}"\n  emulated = true\n'
            text += ('  app = "echo"\n' if proto == "udp" else "") + real_keys(method, address)
    return text


@pytest.fixture(scope="module")
def http_only(tmp_path_factory):
    """pcaps/clients.pcap's HTTP conversations (its DNS echo and closed-port probe draw tshark warnings
    of their own, whatever the method: tests/test_emulated_replay.py)."""
    path = tmp_path_factory.mktemp("capture") / "http.pcap"
    wrpcap(str(path), [p for p in rdpcap(str(PCAPS / "clients.pcap")) if TCP in p and p[TCP].dport == 80])
    return path


def replay(tmp_path, method: str, capture, seed: int = 7) -> dict:
    config = tmp_path / f"{method}.toml"
    config.write_text(config_text(method))
    out, inside = tmp_path / f"{method}-{seed}.pcap", tmp_path / f"{method}-{seed}-inside.pcap"
    summary = json.loads(run_cli("replay", capture, "-c", config, "-o", out, "--inside", inside,
                                 "--seed", seed, "--json").stdout)
    return {"out": out, "inside": inside, "summary": summary}


@pytest.fixture(scope="module", params=METHODS)
def whole(request, tmp_path_factory):
    """The whole of pcaps/clients.pcap (HTTP over IPv4 and IPv6, a UDP echo, a closed port) through the method."""
    return request.param, replay(tmp_path_factory.mktemp(request.param), request.param, PCAPS / "clients.pcap")


def _ip(pkt):
    return pkt[IP] if IP in pkt else pkt[IPv6]


def _vip(ip) -> str:
    return VIP4 if ip.version == 4 else VIP6


def _checksums_hold(pkt) -> None:
    """Every IP, TCP and UDP checksum in the packet (outer and inner) as scapy computes it afresh."""
    stated, layer = [], pkt
    while layer:
        if isinstance(layer, (IP, TCP, UDP)) and not (isinstance(layer, UDP) and layer.chksum == 0):
            stated.append(layer.chksum)     # (an outer UDP checksum of 0: none, ipvsadm's nocsum; RFC 6935 over IPv6)
            del layer.chksum
        layer = layer.payload
    again, computed = pkt.__class__(raw(pkt)), []
    layer = again
    while layer:
        if isinstance(layer, (IP, TCP, UDP)) and not (isinstance(layer, UDP) and layer.chksum == 0):
            computed.append(layer.chksum)
        layer = layer.payload
    assert stated == computed, pkt.summary()


CLIENTS = ("172.16.", "192.168.50.", "2001:db8:ff::")
PROBE_PORT = 22     # clients.pcap's SYN straight to a real's closed port: its RST comes from the real's address


def _answer(pkt) -> bool:
    """A real's answer (to a client, or under fullnat to the local address the real saw)."""
    return _ip(pkt).dst.startswith(CLIENTS) or _ip(pkt).dst in (LOCAL4, LOCAL6)


def _probe(pkt) -> bool:
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    return PROBE_PORT in (l4.sport, l4.dport)


def test_the_clients_see_the_vip_answer(whole):
    method, run = whole
    clients = rdpcap(str(PCAPS / "clients.pcap"))
    out = rdpcap(str(run["out"]))
    answers = [p for p in out if _answer(p)]
    assert len(out) == len(clients) + len(answers) and len(answers) == run["summary"]["emulated"]["answers"]
    ok = 0
    for pkt in out:
        _checksums_hold(pkt)
        if _answer(pkt) and not _probe(pkt):
            ip = _ip(pkt)
            assert ip.src == _vip(ip) and ip.dst.startswith(CLIENTS)
            ok += bytes(pkt[TCP].payload).startswith(b"HTTP/1.1 200 OK") if TCP in pkt else 0
    assert ok == 7                                           # every HTTP conversation answered
    e = run["summary"]["emulated"]
    probe = 1                                                # the RST passes the switch untouched
    assert e.get("direct", 0) == (0 if method == "fullnat" else e["answers"] - probe)  # dr and tun answer past the switch
    assert run["summary"]["reply"] == (e["answers"] - probe if method == "fullnat" else 0)


def test_the_reals_see_the_method(whole):
    """--inside: what the switch sent each real, and what each real answered."""
    method, run = whole
    to_reals = answers = 0
    for pkt in rdpcap(str(run["inside"])):
        _checksums_hold(pkt)
        outer = _ip(pkt)
        if _probe(pkt):
            continue
        if _answer(pkt) and method != "fullnat":
            assert outer.src == _vip(outer) and outer.dst.startswith(CLIENTS)
            assert pkt[Ether].src in REALS.values()      # from the real, past the switch
            answers += 1
            continue
        if method == "fullnat":
            if _answer(pkt):
                assert outer.src in REALS and outer.dst == (LOCAL4 if outer.version == 4 else LOCAL6)
                answers += 1
            else:
                assert outer.dst in REALS and outer.src == (LOCAL4 if outer.version == 4 else LOCAL6)
                to_reals += 1
            continue
        assert pkt[Ether].dst == REALS[outer.dst if method != "dr" else _real_of(pkt, run)]
        if method == "dr":
            assert outer.dst == _vip(outer)              # only the MAC changed
        else:
            assert outer.src == (SOURCE4 if outer.version == 4 else SOURCE6) and outer.dst in REALS
            if method == "ipip":
                assert (outer.proto if outer.version == 4 else outer.nh) in (4, 41)
            elif method == "gue":
                assert pkt[UDP].dport == GUE_PORT
            else:
                assert GRE in pkt
            if method == "gue":                          # scapy does not read GUE: after its 4-byte header
                body = raw(pkt[UDP].payload)[4:]
                inner = IP(body) if body[0] >> 4 == 4 else IPv6(body)
                _checksums_hold(inner)
            else:
                inner = _ip(outer.payload.payload if method == "gre" else outer.payload)
            assert inner.dst == _vip(inner) and inner.src.startswith(CLIENTS)
        to_reals += 1
    assert to_reals == run["summary"]["forward"] + run["summary"]["new"] and answers


def _real_of(pkt, run) -> str:
    """dr: the real a frame went to, by its MAC."""
    return {mac: address for address, mac in REALS.items()}[pkt[Ether].dst]


@needs_tshark
@pytest.mark.parametrize("method", METHODS)
def test_tshark_finds_nothing_to_warn_about(http_only, tmp_path, method):
    run = replay(tmp_path, method, http_only)
    for which in ("out", "inside"):
        expert = subprocess.run(["tshark", "-r", str(run[which]), "-q", "-z", "expert"], capture_output=True,
                                text=True, check=True).stdout
        assert "Warns" not in expert and "Errors" not in expert, (which, expert)
        assert "HTTP/1.1 200 OK" in expert                  # tshark followed the answers through
        checks = subprocess.run(["tshark", "-r", str(run[which]), "-o", "tcp.check_checksum:TRUE",
                                 "-o", "ip.check_checksum:TRUE", "-T", "fields", "-e", "ip.checksum.status",
                                 "-e", "tcp.checksum.status"], capture_output=True, text=True, check=True).stdout
        assert set(checks.replace(",", " ").split()) == {"1"}   # 1 = Good, every checksum (inner and outer)


@pytest.mark.parametrize("method", ["dr", "gre"])
def test_same_seed_same_bytes(http_only, tmp_path, method):
    def digests(run):
        return [hashlib.sha256(run[k].read_bytes()).hexdigest() for k in ("out", "inside")]
    first = replay(tmp_path / "a" if (tmp_path / "a").mkdir() is None else None, method, http_only)
    second = replay(tmp_path / "b" if (tmp_path / "b").mkdir() is None else None, method, http_only)
    assert digests(first) == digests(second)


SIMULATED = """[[service]]
vip = "10.0.0.100:80"
scheduler = "rr"
source_address = "10.0.0.1"
{reals}
[workload]
rtt = 0.002
clients = 200
keep_alive = false
"""


def simulated(tmp_path, method: str) -> dict:
    reals = "".join(f'  [[service.real]]\n  address = "{address}:80"\n  emulated = true\n  workers = 2\n'
                    f'  service_time = {{ dist = "exponential", mean = 0.01 }}\n'
                    + ("" if method == "masq" else real_keys(method, address))
                    for address in ("10.1.0.1", "10.1.0.2"))
    path = tmp_path / f"{method}.toml"
    path.write_text(SIMULATED.format(reals=reals))
    config = configmod.load(path, schedulers.catalog())
    return simulate(config, from_config(config, str(path), {"rate": 200.0, "duration": 5.0, "seed": 3}), 3)


@pytest.mark.parametrize("method", ["dr", "ipip"])
def test_simulate_serves_through_dr_and_tun_as_through_masq(tmp_path, method):
    masq, other = simulated(tmp_path, "masq"), simulated(tmp_path, method)
    assert masq["requests"] > 800 and masq["failed_requests"] == 0
    for key in ("requests", "answered", "failed_requests", "mean_ms", "p99_ms"):
        assert other[key] == masq[key], key
    assert other["packets"] == masq["packets"]         # the answers counted past the switch too


INNER4 = raw(IP(src="172.16.0.1", dst=VIP4) / TCP(sport=1234, dport=80))
INNER6 = raw(IPv6(src="2001:db8:ff::1", dst=VIP6) / TCP(sport=1234, dport=80))


@pytest.mark.parametrize("outer, inner, at", [
    (IP(src=SOURCE4, dst="10.1.0.1", proto=4), INNER4, 20),
    (IPv6(src=SOURCE6, dst="2001:db8:1::1", nh=41), INNER6, 40),
    (IP(src=SOURCE4, dst="10.1.0.1") / GRE(proto=0x0800), INNER4, 24),
    (IP(src=SOURCE4, dst="10.1.0.1") / GRE(proto=0x0800, chksum_present=1, key_present=1, seqnum_present=1,
                                            key=7, sequence_number=9), INNER4, 36),
    (IP(src=SOURCE4, dst="10.1.0.1") / UDP(sport=40000, dport=GUE_PORT) / bytes([0, 4, 0, 0]), INNER4, 32),
    (IP(src=SOURCE4, dst="10.1.0.1") / UDP(sport=40000, dport=GUE_PORT) / bytes([2, 4, 0, 0]) / bytes(8),
     INNER4, 40),                                                   # GUE with two words of options
    (IP(src=SOURCE4, dst="10.1.0.1") / UDP(sport=40000, dport=GUE_PORT), INNER6, 28),  # Katran: variant 1
])
def test_a_tun_real_finds_the_inner_packet(outer, inner, at):
    packet = raw(outer / inner)
    assert tunnel_inner(packet) == at and packet[at:] == inner
    assert tunnel_inner(packet[:at + 19]) == 0                  # cut inside the inner header: not taken apart


@given(st.binary(max_size=120))
def test_any_bytes_give_an_offset_inside_them_or_none(data):
    at = tunnel_inner(data)
    assert at == 0 or (20 <= at and at + 20 <= len(data) and data[at] >> 4 in (4, 6))


def test_a_packet_fragmented_on_its_way_to_an_emulated_real_is_reassembled_by_its_host(tmp_path):
    """An ipip real under a 1400-byte MTU: the client's 1,400-byte UDP datagram (no DF) leaves the switch
    with its tunnel in two fragments, as IPVS sends it; the emulated host reassembles the outer packet,
    takes the inner one out of the tunnel and echoes it whole."""
    mac = REALS["10.1.0.11"]
    config = tmp_path / "lb.toml"
    config.write_text(f'[[service]]\nvip = "{VIP4}:53"\nprotocol = "udp"\nmtu = 1400\nsource_address = "{SOURCE4}"\n'
                      f'  [[service.real]]\n  address = "10.1.0.11:53"\n  emulated = true\n  app = "echo"\n'
                      f'  forward = "tun"\n  mac = "{mac}"\n')
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:fe")
    small = eth / IP(src="172.16.0.9", dst=VIP4) / UDP(sport=4000, dport=53) / (b"q" * 20)
    big = eth / IP(src="172.16.0.9", dst=VIP4) / UDP(sport=4001, dport=53) / (bytes(range(256)) * 5 + b"z" * 92)
    capture = tmp_path / "in.pcap"
    wrpcap(str(capture), [small, big])
    out, inside = tmp_path / "out.pcap", tmp_path / "inside.pcap"
    summary = json.loads(run_cli("replay", capture, "-c", config, "-o", out, "--inside", inside, "--json").stdout)
    assert "fragmented_undelivered" not in summary["emulated"]
    assert summary["emulated"]["host_reassembly"]["reasm_oks"] == 1
    assert summary["emulated"]["host_reassembly"]["reasm_memory"] == 0     # nothing left waiting
    answers = [p for p in rdpcap(str(out)) if IP in p and p[IP].src == VIP4 and UDP in p]
    assert [p[UDP].dport for p in answers] == [4000, 4001]
    assert raw(answers[1][UDP].payload) == raw(big[UDP].payload)
    tunnelled = [p for p in rdpcap(str(inside)) if IP in p and p[IP].dst == "10.1.0.11"]
    assert len(tunnelled) == 3 and all(len(p) - 14 <= 1400 for p in tunnelled)


def test_the_summary_text_says_how_many_answers_went_past_the_switch():
    """22 of clients.pcap's 23 answers under dr (the closed port's RST crosses the switch untouched): the text
    counts them apart, so 'read' is the capture's 43 packets, not 43 less answers the switch never saw."""
    text = run_cli("replay", PCAPS / "clients.pcap", "-c", PCAPS / "emulated-dr.toml").stdout
    assert "packets      43 read (+23 answers from emulated reals, 22 of them past the switch: dr, tun)" in text
    masq = run_cli("replay", PCAPS / "clients.pcap", "-c", PCAPS / "emulated.toml").stdout
    assert "past the switch" not in masq
