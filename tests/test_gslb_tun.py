"""The GSLB's authority in `l4emu live`'s loop (l4emu/gslb/tun.py), without a TUN: a batch as the TUN
hands it over (raw IP) through the live switch, then the answerer. tests/test_live_gslb.py runs it in
namespaces with dig."""

from __future__ import annotations

import dns.message
from scapy.all import IP, TCP, UDP, raw
from scapy.layers.dns import DNS, DNSQR

from conftest import PCAPS, run_cli
from l4emu import schedulers
from l4emu.datapath._batch import Batch
from l4emu.gslb import config as gslbconfig
from l4emu.gslb.tun import TunAnswerer
from l4emu.io.tun._io import LINKTYPE_RAW
from l4emu.switch import Switch


def checksums_ok(pkt) -> bool:
    fresh = IP(raw(pkt))
    del fresh[IP].chksum
    del fresh[UDP].chksum
    return raw(IP(raw(fresh))) == raw(pkt)


def test_queries_the_switch_passed_are_answered_and_kept_from_the_tun():
    gslb = gslbconfig.load(PCAPS / "gslb.toml", schedulers.catalog())
    answerer = TunAnswerer(gslb, down=["east"])
    switch = Switch.from_config(None, 1)
    frames = [
        IP(src="172.16.0.2", dst="10.53.0.1") / UDP(sport=5000, dport=53) / DNS(id=9, rd=1, qd=DNSQR(qname="www.example.com")),
        IP(src="172.16.0.2", dst="10.53.0.9") / UDP(sport=5000, dport=53) / DNS(id=10, qd=DNSQR(qname="www.example.com")),
        IP(src="172.16.0.2", dst="10.53.0.1") / TCP(sport=5001, dport=53, flags="S"),
    ]
    batch = Batch(8)
    for k, frame in enumerate(frames):
        assert batch.append(raw(frame), 1000 * (k + 1), 0, LINKTYPE_RAW)
    switch.process(batch)
    answers = answerer.answer(batch)
    assert [batch.result(i)[0] for i in range(3)] == ["drop", "pass", "pass"]  # only the UDP query is taken
    assert answers is not None and len(answers) == 1 and answers.meta(0)[0] == 2000
    reply = IP(answers.packet(0))
    assert (reply.src, reply.dst, reply[UDP].sport, reply[UDP].dport) == ("10.53.0.1", "172.16.0.2", 53, 5000)
    assert checksums_ok(reply)
    message = dns.message.from_wire(bytes(reply[UDP].payload))
    assert message.id == 9 and [r.address for r in message.answer[0]] == ["10.20.0.100"]  # east is down
    assert answerer.counters["NOERROR"] == 1
    batch.reset()
    assert answerer.answer(batch) is None


def test_live_refuses_gslb_flags_it_cannot_use(tmp_path):
    proc = run_cli("live", "--tun", "l4gnone0", "--gslb-down", "east", check=False)
    assert proc.returncode == 2 and "--gslb-down is for --gslb" in proc.stderr
    proc = run_cli("live", "--tun", "l4gnone0", "--gslb", PCAPS / "gslb.toml", "--gslb-down", "north", check=False)
    assert proc.returncode == 2 and "--gslb-down north: no site 'north'" in proc.stderr
    proc = run_cli("live", "--tun", "l4gnone0", "--gslb", PCAPS / "forwarding.toml", check=False)
    assert proc.returncode == 2 and "forwarding.toml: service: unknown key" in proc.stderr
