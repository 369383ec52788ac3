"""Sites whose reals are emulated hosts, or forward by dr, tun or full-NAT (issue 16): each site's packets
come out of `l4emu gslb replay` exactly as `l4emu replay` writes them with that site's config; the
emulated reals' health checks make a site unhealthy, and the GSLB stops answering with it; the whole
conversation (DNS answer, then the client's TCP to the answered VIP, answered by the site's host) is
valid and the same bytes for the same seed. Captures: pcaps/gslb-emulated.pcap and pcaps/gslb.pcap
(pcaps/make_samples.py)."""
from __future__ import annotations

import random
import subprocess
import tomllib

import dns.message
import pytest
from scapy.all import IP, TCP, UDP, Ether, PcapReader, RawPcapReader, raw

from conftest import PCAPS, needs_tshark
from l4emu import schedulers
from l4emu.events import parse_event
from l4emu.gslb import config as gslbconfig
from l4emu.gslb.replay import replay as gslb_replay
from l4emu.replay import replay
from l4emu.switch import Switch

CONFIG = PCAPS / "gslb-emulated.toml"
CAPTURE = PCAPS / "gslb-emulated.pcap"
EAST_VIP, WEST_VIP = "10.10.0.100", "10.20.0.100"
EAST_CLIENTS = ("172.16.0.1", "172.16.0.2", "172.16.1.7", "172.16.2.9")


def load(text: str | None = None):
    return gslbconfig.from_dict(tomllib.loads(text or CONFIG.read_text()), schedulers.catalog())


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    out = tmp_path_factory.mktemp("sites") / "whole.pcap"
    summary = gslb_replay(CAPTURE, load(), out, seed=1)
    return summary, out, list(PcapReader(str(out)))


def checksums_ok(pkt) -> bool:
    fresh = pkt.copy()
    for layer in (IP, TCP, UDP):
        if layer in fresh:
            del fresh[layer].chksum
    return raw(Ether(raw(fresh))) == raw(pkt)


def answers(packets):
    """(index, client, VIP) of each DNS answer with an address, in order."""
    found = []
    for i, p in enumerate(packets):
        if UDP in p and p[UDP].sport == 53:
            response = dns.message.from_wire(bytes(p[UDP].payload))
            if response.answer:
                found.append((i, p[IP].dst, response.answer[0][0].address))
    return found


def site_packets(path, addresses: set[str]) -> list:
    """The packets to or from a site's addresses, bytes and time."""
    out = []
    for data, meta in RawPcapReader(str(path)):
        ip = Ether(data)[IP]
        if ip.src in addresses or ip.dst in addresses:
            out.append((data, meta.sec, meta.usec))
    return out


def addresses(site) -> set[str]:
    return {str(svc.vip) for svc in site.config.services} | {
        str(real.address) for svc in site.config.services for real in svc.reals
    }


def same_as_plain_replay(capture, config, output, tmp_path, seed=1):
    """Each site's packets in the GSLB's output against `l4emu replay` of the capture through that site's
    config alone, with the seed the GSLB gives the site's switch (l4emu/gslb/sites.py)."""
    draw = random.Random(seed)
    for site in config.sites:
        alone = tmp_path / f"{site.name}.pcap"
        replay(capture, Switch(site.config, draw.getrandbits(64)), alone)
        mine, plain = site_packets(output, addresses(site)), site_packets(alone, addresses(site))
        assert mine == plain and len(mine) > 10, site.name


def test_each_emulated_site_answers_as_l4emu_replay_with_its_config(replayed, tmp_path):
    _, out, _ = replayed
    same_as_plain_replay(CAPTURE, load(), out, tmp_path)


def test_the_whole_conversation_dns_answer_then_tcp_to_the_answered_vip_answered_by_its_site(replayed):
    summary, _, packets = replayed
    assert all(checksums_ok(p) for p in packets)
    latest = {}
    named = {i: (client, vip) for i, client, vip in answers(packets)}
    conversations = 0
    for i, p in enumerate(packets):
        if i in named:
            latest[named[i][0]] = named[i][1]
        if TCP in p and p[TCP].flags == "S":
            assert p[IP].dst == latest[p[IP].src], (i, p[IP].src)  # the VIP its latest answer named
            back = [q for q in packets[i:] if TCP in q and q[IP].src == p[IP].dst and q[TCP].dport == p[TCP].sport]
            assert back[0][TCP].flags == "SA" and back[0][TCP].ack == p[TCP].seq + 1
            conversations += any(bytes(q[TCP].payload).startswith(b"HTTP/1.1 200 OK") for q in back)
    # every client's connection is answered by its site's host, but the last of east's queue (served
    # after the capture's end)
    assert conversations == 13
    by_site = {s["site"]: s for s in summary["sites"]}
    assert by_site["east"]["emulated"]["accepted"] == by_site["east"]["connections"] == 8
    assert by_site["west"]["emulated"]["direct"] == by_site["west"]["emulated"]["answers"] > 0  # dr: past the switch


@needs_tshark
def test_tshark_finds_no_warning_or_error(replayed):
    _, out, _ = replayed
    expert = subprocess.run(["tshark", "-r", str(out), "-q", "-z", "expert"], capture_output=True, text=True,
                            check=True).stdout
    assert "Chats" in expert and "Warnings" not in expert and "Errors" not in expert, expert


def test_same_seed_same_bytes_another_seed_other_isns(replayed, tmp_path):
    _, out, _ = replayed
    again, other = tmp_path / "again.pcap", tmp_path / "other.pcap"
    gslb_replay(CAPTURE, load(), again, seed=1)
    gslb_replay(CAPTURE, load(), other, seed=2)
    assert again.read_bytes() == out.read_bytes()
    assert other.read_bytes() != out.read_bytes()


@pytest.mark.parametrize("policy", ["topology", "failover"])
def test_an_unhealthy_emulated_real_takes_its_site_out_of_the_answers(policy, tmp_path):
    """East's real fails its check at 1 s (requests queued behind it) and passes again at 5 s: in between
    no answer names east, though east's clients ask; before and after, east's clients get east."""
    out = tmp_path / "out.pcap"
    summary = gslb_replay(CAPTURE, load(CONFIG.read_text().replace('"topology"', f'"{policy}"')), out, seed=1)
    east = next(s for s in summary["sites"] if s["site"] == "east")
    turns = [(t["at_s"], t["state"]) for t in east["health"]["transitions"]]
    assert turns[:2] == [(1.0, "down"), (5.0, "up")]
    packets = list(PcapReader(str(out)))
    start = float(packets[0].time)
    asked = [(float(packets[i].time) - start, client, vip) for i, client, vip in answers(packets)]
    during = [vip for t, client, vip in asked if 1.0 < t < 5.0 and client in EAST_CLIENTS]
    after = [vip for t, client, vip in asked if t > 5.0 and client in EAST_CLIENTS]
    assert len(during) == 4 and set(during) == {WEST_VIP}
    assert len(after) == 4 and set(after) == {EAST_VIP}


def test_without_the_check_east_stays_in_the_answers(tmp_path):
    """The control: the same capture, east's check removed: every east client is answered east."""
    text = CONFIG.read_text()
    head, rest = text.split("    [site.service.check]\n", 1)
    unchecked = head + rest[rest.index("    [[site.service.real]]"):]
    out = tmp_path / "out.pcap"
    summary = gslb_replay(CAPTURE, load(unchecked), out, seed=1)
    assert "health" not in summary["sites"][0]
    vips = [vip for _, client, vip in answers(list(PcapReader(str(out)))) if client in EAST_CLIENTS]
    assert len(vips) == 12 and set(vips) == {EAST_VIP}


FORWARDING = (
    PCAPS.joinpath("gslb.toml").read_text()
    .replace('    address = "10.11.0.1:8080"', '    address = "10.11.0.1:80"\n    forward = "dr"\n'
             '    mac = "02:00:00:00:11:01"')
    .replace('    address = "10.11.0.2:8080"', '    address = "10.11.0.2:80"\n    forward = "tun"')
    .replace('  vip = "10.20.0.100:80"', '  vip = "10.20.0.100:80"\n  local_addresses = ["10.20.0.11"]')
    .replace('    address = "10.21.0.1:8080"', '    address = "10.21.0.1:8080"\n    forward = "fullnat"')
    .replace('    address = "10.21.0.2:8080"', '    address = "10.21.0.2:8080"\n    forward = "fullnat"')
)


def test_dr_tun_and_fullnat_reals_in_sites_forward_as_in_a_plain_config(tmp_path):
    config = load(FORWARDING)
    out = tmp_path / "out.pcap"
    summary = gslb_replay(PCAPS / "gslb.pcap", config, out, seed=1)
    same_as_plain_replay(PCAPS / "gslb.pcap", config, out, tmp_path)
    packets = list(PcapReader(str(out)))
    tunnelled = [p for p in packets if IP in p and p[IP].dst == "10.11.0.2" and p[IP].proto == 4]
    direct = [p for p in packets if IP in p and p[IP].dst == "10.10.0.100" and p[Ether].dst == "02:00:00:00:11:01"]
    fullnat = [p for p in packets if IP in p and p[IP].src == "10.20.0.11" and p[IP].dst.startswith("10.21.0.")]
    assert tunnelled and direct and fullnat
    assert all(checksums_ok(p) for p in packets)
    # the clients counted are the clients, not the tunnel's or full-NAT's own source
    by_site = {s["site"]: s for s in summary["sites"]}
    assert (by_site["east"]["clients"], by_site["west"]["clients"], by_site["west"]["connections"]) == (4, 8, 8)


def test_the_packet_at_a_time_path_writes_what_the_batch_path_writes(tmp_path):
    """gslb.pcap with a site-down event and DNS over TCP: a spare site with a dr real (no traffic of its
    own) sends the replay a packet at a time; the output and every count are the batch path's."""
    text = PCAPS.joinpath("gslb.toml").read_text()
    spare = ('[[site]]\nname = "spare"\n  [[site.service]]\n  vip = "10.30.0.100:80"\n'
             '    [[site.service.real]]\n    address = "10.31.0.1:80"\n    forward = "dr"\n'
             '    mac = "02:00:00:00:31:01"\n\n')
    at = text.index("[[gslb]]")
    events = [parse_event("8:site-down:east")]
    batched, stepped = tmp_path / "batched.pcap", tmp_path / "stepped.pcap"
    one = gslb_replay(PCAPS / "gslb.pcap", load(text), batched, events, seed=1)
    other = gslb_replay(PCAPS / "gslb.pcap", load(text[:at] + spare + text[at:]), stepped, events, seed=1)
    assert stepped.read_bytes() == batched.read_bytes()
    for key in ("written", "dns", "dns_tcp", "events", "resolution"):
        assert one[key] == other[key], key
    assert one["sites"] == other["sites"][:2]


def test_live_gslb_answers_with_a_config_whose_sites_have_emulated_reals():
    """`live --gslb` takes such a config: its sites stand idle behind the answerer (their checks do not
    run there), so every site is healthy but those named down."""
    from scapy.layers.dns import DNS, DNSQR

    from l4emu.datapath._batch import VERDICT_NAMES, Batch
    from l4emu.gslb.tun import TunAnswerer
    from l4emu.io.tun._io import LINKTYPE_RAW

    vips = []
    for down in ((), ("east",)):
        answerer = TunAnswerer(load(), down=down, seed=1)
        batch = Batch(1)
        query = IP(src="172.16.0.2", dst="10.53.0.1") / UDP(sport=5000, dport=53) / DNS(
            id=9, rd=1, qd=DNSQR(qname="www.example.com"))
        assert batch.append(raw(query), 1000, 0, LINKTYPE_RAW)
        batch.set_result(0, VERDICT_NAMES.index("pass"), 0)  # the live switch passed it (no service of its own)
        answer = answerer.answer(batch)
        vips.append(dns.message.from_wire(bytes(IP(answer.packet(0))[UDP].payload)).answer[0][0].address)
    assert vips == [EAST_VIP, WEST_VIP]


def test_a_down_site_s_hosts_send_nothing_out(tmp_path):
    """east down at 0.6 s, with requests queued behind its real: the answers its host makes later are
    counted dropped while down, never written, and east's clients are answered west."""
    out = tmp_path / "out.pcap"
    summary = gslb_replay(CAPTURE, load(), out, [parse_event("0.6:site-down:east")], seed=1)
    east = next(s for s in summary["sites"] if s["site"] == "east")
    packets = list(PcapReader(str(out)))
    start = float(packets[0].time)
    late = [p for p in packets if IP in p and p[IP].src == EAST_VIP and float(p.time) - start >= 0.6]
    assert late == [] and east["dropped_while_down"] > 0 and east["down_at_end"]
    vips = {vip for i, client, vip in answers(packets) if float(packets[i].time) - start > 0.6}
    assert vips == {WEST_VIP}
