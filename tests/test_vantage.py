"""A user's own capture, from either vantage point, through the CLI: in front of the service
(answers from the VIP) and behind another load balancer (its servers named as capture servers)."""
from __future__ import annotations

import json
import subprocess

import pytest
from scapy.all import IP, TCP, UDP, IPv6, Ether, raw, rdpcap

from conftest import PCAPS, needs_tshark, run_cli

FRONT, BEHIND = PCAPS / "front.pcap", PCAPS / "behind.pcap"
FORMER = "10.9.0.1:80,10.9.0.2:80"
VIP_ENDPOINTS = {("10.0.0.100", 80), ("10.0.0.100", 53), ("2001:db8::100", 80)}
FORMER_ENDPOINTS = {("10.9.0.1", 80), ("10.9.0.2", 80)}


def endpoints(pkt):
    ip = pkt[IP] if IP in pkt else pkt[IPv6]
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    return (ip.src, l4.sport), (ip.dst, l4.dport)


def checksums_ok(frame: bytes) -> bool:
    """scapy recomputes every checksum (fields deleted) and must get the bytes we wrote."""
    fresh = Ether(frame).copy()
    for layer in (IP, IPv6, TCP, UDP):
        if layer in fresh and hasattr(fresh[layer], "chksum"):
            del fresh[layer].chksum
    return raw(Ether(raw(fresh))) == frame


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("front")
    run = run_cli("replay", FRONT, "-o", tmp / "out.pcap", "--inside", tmp / "in.pcap", "--seed", 1, "--json",
                  "--state-out", tmp / "state.json")
    return {"dir": tmp, "summary": json.loads(run.stdout), "stderr": run.stderr,
            "state": json.loads((tmp / "state.json").read_text())}


def test_answers_from_the_vip_are_the_flows_real_answering(front):
    summary, state = front["summary"], front["state"]
    assert summary["answer"] == 45 and summary["reply"] == 0
    reals = {real["address"]: real for svc in state["services"] for real in svc["reals"]}
    assert sum(real["out_pkts"] for real in reals.values()) == summary["answer"]
    assert all(real["out_pkts"] > 0 for real in reals.values())             # every real answered
    # Both halves drove IPVS's state machine: every whole TCP conversation ended in TIME_WAIT.
    assert {row["state"] for row in state["connections"] if row["protocol"] == "TCP"} == {"TIME_WAIT"}


def test_answers_leave_from_the_vip_untouched_and_show_from_the_real_inside(front):
    before, after = rdpcap(str(FRONT)), rdpcap(str(front["dir"] / "out.pcap"))
    kept = [pkt for pkt in before if (TCP in pkt or UDP in pkt)]
    answers_in = [raw(p) for p in kept if endpoints(p)[0] in VIP_ENDPOINTS]
    answers_out = [raw(p) for p in after if endpoints(p)[0] in VIP_ENDPOINTS]
    assert answers_out == answers_in[:len(answers_out)] and len(answers_out) == len(answers_in)
    inside = rdpcap(str(front["dir"] / "in.pcap"))
    real_of_client = {}
    for pkt in inside:
        src, dst = endpoints(pkt)
        assert checksums_ok(raw(pkt))
        if dst[0].startswith(("10.1.", "2001:db8:1:")):                     # client -> real, after DNAT
            assert real_of_client.setdefault(src, dst) == dst
        else:                                                              # the real's answer, before SNAT
            assert real_of_client[dst] == src
    assert len(inside) == front["summary"]["translated"]


def test_answers_no_flow_owns_are_counted_named_and_warned(front):
    assert front["summary"]["unattributed"] == {"10.0.0.100:80": 2}
    assert front["summary"]["passed_by_reason"] == {"unattributed": 2}
    assert "2 packets from the service side belong to no connection" in front["stderr"]
    assert "10.0.0.100:80 2" in front["stderr"]
    text = run_cli("replay", FRONT).stdout
    assert "unattributed 10.0.0.100:80" in text and "45 of them as captured from the service side" in text


@pytest.fixture(scope="module")
def behind(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("behind")
    run = run_cli("replay", BEHIND, "-o", tmp / "out.pcap", "--inside", tmp / "in.pcap", "--seed", 1, "--json",
                  "--capture-servers", FORMER)
    return {"dir": tmp, "summary": json.loads(run.stdout), "stderr": run.stderr}


def test_behind_a_load_balancer_its_servers_stand_for_the_vip(behind):
    summary = behind["summary"]
    assert summary["new_connections"]["10.1.0.1:8080"] == 7 and summary["new_connections"]["10.1.0.3:8080"] == 6
    assert summary["translated"] == summary["packets"] == 180 and summary["answer"] == 60
    assert not summary["unattributed"] and behind["stderr"] == ""
    before, after = rdpcap(str(BEHIND)), rdpcap(str(behind["dir"] / "out.pcap"))
    for old, new in zip(before, after):
        (src, dst), (nsrc, ndst) = endpoints(old), endpoints(new)
        assert checksums_ok(raw(new))
        if src in FORMER_ENDPOINTS:         # a former server's answer leaves from the VIP
            assert nsrc == ("10.0.0.100", 80) and ndst == dst
        else:                               # a client's packet to a former server goes to l4emu's real
            assert dst in FORMER_ENDPOINTS and ndst[0].startswith("10.1.0.") and ndst[1] == 8080


@needs_tshark
def test_behind_inside_view_is_clean_for_tshark(behind):
    expert = subprocess.run(["tshark", "-r", str(behind["dir"] / "in.pcap"), "-q", "-z", "expert",
                             "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE"],
                            capture_output=True, text=True, check=True).stdout
    assert "Errors" not in expert and "Warns" not in expert
    streams = subprocess.run(["tshark", "-r", str(behind["dir"] / "in.pcap"), "-T", "fields", "-e", "tcp.stream"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert len(set(streams)) == 20                    # each conversation is one stream: both halves at the real


def test_capture_servers_from_the_config_give_the_same_bytes(tmp_path, behind):
    config = tmp_path / "lb.toml"
    default = (PCAPS.parent / "l4emu" / "data" / "default.toml").read_text()
    config.write_text(default.replace('vip = "10.0.0.100:80"\n',
                                      'vip = "10.0.0.100:80"\ncapture_servers = ["10.9.0.1:80", "10.9.0.2:80"]\n', 1))
    run_cli("replay", BEHIND, "-c", config, "-o", tmp_path / "out.pcap", "--seed", 1)
    assert (tmp_path / "out.pcap").read_bytes() == (behind["dir"] / "out.pcap").read_bytes()


def test_without_capture_servers_a_capture_behind_a_balancer_gets_a_hint():
    run = run_cli("replay", BEHIND)
    assert "no packet was for a service" in run.stderr and "--capture-servers" in run.stderr


@pytest.mark.parametrize("flag, words", [
    ("10.9.0.1:81", "more than one service could own these servers: write VIP=servers"),
    ("10.0.0.99:80=10.9.0.1:80", "no service has VIP 10.0.0.99:80"),
    ("10.0.0.100:80=[2001:db8::9]:80", "is IPv6, the VIP is IPv4"),
    ("10.0.0.100:80=10.0.0.100:80", "is the VIP or listed twice"),
    ("10.0.0.100:80=10.9.0.1", "is not address:port"),
])
def test_capture_server_mistakes_are_one_line(flag, words):
    run = run_cli("replay", BEHIND, "--capture-servers", flag, check=False)
    assert run.returncode == 2 and words in run.stderr and len(run.stderr.splitlines()) == 1


def test_a_capture_server_belongs_to_one_service(tmp_path):
    config = tmp_path / "lb.toml"
    config.write_text('[[service]]\nvip = "10.0.0.100:80"\ncapture_servers = ["10.9.0.1:80"]\n'
                      '  [[service.real]]\n  address = "10.1.0.1:8080"\n'
                      '[[service]]\nvip = "10.0.0.101:80"\ncapture_servers = ["10.9.0.1:80"]\n'
                      '  [[service.real]]\n  address = "10.1.0.2:8080"\n')
    run = run_cli("replay", BEHIND, "-c", config, check=False)
    assert run.returncode == 2 and "service[1].capture_servers[0]: TCP 10.9.0.1:80 is already service[0]" in run.stderr


def test_compare_warns_per_scheduler_when_replies_come_from_other_reals():
    # sample.pcap's replies come from the reals rr picks: with sh, many come from a real the flow did not get.
    run = run_cli("compare", PCAPS / "sample.pcap", "--schedulers", "rr,sh")
    assert "with rr" not in run.stderr
    assert "sample.pcap with sh:" in run.stderr and "10.1.0.1:8080" in run.stderr
    # Naming the reals as the capture's servers takes their packets as the flows' answers.
    named = run_cli("compare", PCAPS / "sample.pcap", "--schedulers", "sh", "--json",
                    "--capture-servers", "10.0.0.100:80=10.1.0.1:8080,10.1.0.2:8080,10.1.0.3:8080")
    assert not any(endpoint.startswith("10.1.0.") and endpoint.endswith(":8080")
                   for endpoint in json.loads(named.stdout)["runs"][0]["unattributed"])


def test_annotate_says_whose_answer_it_was(tmp_path):
    run_cli("replay", FRONT, "-o", tmp_path / "a.pcapng", "--annotate", "--seed", 1)
    comments = [pkt.comment for pkt in rdpcap(str(tmp_path / "a.pcapng")) if getattr(pkt, "comment", None)]
    text = [c.decode() if isinstance(c, bytes) else str(c) for c in comments]
    assert any(t.startswith("answer of 10.1.0.") and "leaves from VIP 10.0.0.100:80" in t for t in text)
    assert any(t.startswith("passed untouched: from the service side") for t in text)


def test_emulated_reals_supersede_what_the_vip_answered(tmp_path):
    run = run_cli("replay", FRONT, "-c", PCAPS / "emulated.toml", "-o", tmp_path / "w.pcap", "--seed", 1, "--json")
    summary = json.loads(run.stdout)
    assert summary["emulated"]["superseded"] == 47 and summary["answer"] == 0   # 45 attributable + 2 with no flow
    assert summary["emulated"]["accepted"] == 14
