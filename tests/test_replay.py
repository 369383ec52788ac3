"""`l4emu replay` end to end on the bundled samples, checked by tshark and scapy."""
from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
from scapy.all import ICMP, IP, TCP, UDP, ICMPv6TimeExceeded, IPv6, rdpcap

from conftest import PCAPS, needs_tshark, run_cli
from l4emu import config as configmod
from l4emu.io import open_capture

# The gslb captures are made for their GSLB configs' sites, not the default config (tests/test_gslb_replay.py,
# tests/test_gslb_sites_emulated.py)
SAMPLES = sorted(p for p in PCAPS.glob("*.pcap*") if not p.name.startswith("gslb"))
# behind.pcap was taken behind another load balancer: its two servers stand for the VIP.
CAPTURE_SERVERS = {"behind.pcap": ["--capture-servers", "10.9.0.1:80,10.9.0.2:80"]}
FORMER_SERVERS = {("10.9.0.1", 80), ("10.9.0.2", 80)}
VIPS = {("10.0.0.100", 80), ("10.0.0.100", 53), ("2001:db8::100", 80)}
DEFAULT = configmod.load(None, {"rr"})
REAL_ENDPOINTS = {(str(r.address), r.port) for s in DEFAULT.services for r in s.reals}


def _records(path):
    """(bytes, timestamp ns) of every packet, through our reader (tested against scapy elsewhere)."""
    with open_capture(path) as reader:
        return [(b.packet(i), b.timestamp_ns(i)) for b in reader.batches() for i in range(len(b))]


def _ip_l4(pkt):
    ip = pkt[IP] if IP in pkt else pkt[IPv6] if IPv6 in pkt else None
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP] if UDP in pkt else None
    return ip, l4


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_translated_packets_are_consistent_per_flow(tmp_path, sample):
    out = tmp_path / "out.pcapng"               # --annotate keeps dropped packets: the files stay aligned
    summary = json.loads(run_cli("replay", sample, "-o", out, "--json", "--seed", 3, "--annotate",
                                 *CAPTURE_SERVERS.get(sample.name, [])).stdout)
    assert summary["translated"] > 0 and summary["written"] == summary["packets"]
    before, after = rdpcap(str(sample)), rdpcap(str(out))
    assert len(before) == len(after)
    real_of_flow = {}
    for old, new in zip(before, after):
        ip_old, l4_old = _ip_l4(old)
        ip_new, l4_new = _ip_l4(new)
        if ip_old is None or l4_old is None or bytes(old) == bytes(new) or ICMP in new or ICMPv6TimeExceeded in new:
            continue                                                 # as it came, or TTL 1: time exceeded
        if (ip_old.dst, l4_old.dport) in VIPS | FORMER_SERVERS:     # client -> VIP: DNAT to a configured real
            assert (ip_new.dst, l4_new.dport) in REAL_ENDPOINTS
            flow = (ip_old.src, l4_old.sport)
            assert real_of_flow.setdefault(flow, (ip_new.dst, l4_new.dport)) == (ip_new.dst, l4_new.dport)
        elif (ip_old.src, l4_old.sport) in FORMER_SERVERS:            # a former server's answer: from the VIP
            assert (ip_new.src, l4_new.sport) in VIPS and (ip_new.dst, l4_new.dport) in real_of_flow
        else:                                                        # real -> client: SNAT back to the VIP
            assert (ip_old.src, l4_old.sport) in REAL_ENDPOINTS
            assert (ip_new.src, l4_new.sport) in VIPS
            flow = (ip_new.dst, l4_new.dport)
            assert real_of_flow[flow] == (ip_old.src, l4_old.sport)   # the reply came from the flow's real


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_untouched_packets_and_timestamps_are_kept(tmp_path, sample):
    out = tmp_path / "out.pcapng"               # --annotate keeps dropped packets: the files stay aligned
    args = CAPTURE_SERVERS.get(sample.name, [])
    run_cli("replay", sample, "-o", out, "--annotate", *args)
    before, after = _records(sample), _records(out)
    assert [t for _, t in before] == [t for _, t in after]          # nanoseconds stay nanoseconds
    changed = sum(a != b for (a, _), (b, _) in zip(before, after))
    summary = json.loads(run_cli("replay", sample, "--json", *args).stdout)
    answers_from_the_vip = 0 if args else summary["answer"]         # they leave as they came
    # and a packet whose TTL ran out (forwarding.pcap has two) is replaced by ICMP time exceeded
    assert changed == summary["translated"] - answers_from_the_vip + summary["icmp"]


@needs_tshark
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_tshark_finds_every_checksum_good(tmp_path, sample):
    out = tmp_path / ("out" + sample.suffix)
    run_cli("replay", sample, "-o", out)
    fields = subprocess.run(
        ["tshark", "-r", str(out), "-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE",
         "-o", "udp.check_checksum:TRUE", "-T", "fields", "-e", "ip.checksum.status",
         "-e", "tcp.checksum.status", "-e", "udp.checksum.status"],
        capture_output=True, text=True, check=True).stdout
    statuses = [s for line in fields.splitlines() for s in line.split("\t") if s]
    assert statuses and "0" not in statuses      # 0 = Bad, 1 = Good, 2 = Unverified (e.g. fragments)
    assert statuses.count("1") > len(statuses) // 2


def test_same_input_config_and_seed_give_identical_bytes(tmp_path):
    digests = set()
    for k in range(2):
        out = tmp_path / f"out{k}.pcap"
        run_cli("replay", PCAPS / "sample.pcap", "-o", out, "--seed", 7)
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_json_summary_has_the_documented_keys():
    summary = json.loads(run_cli("replay", PCAPS / "sample.pcap", "--json").stdout)
    for key in ("packets", "translated", "passed", "dropped", "new_connections", "elapsed_s"):
        assert key in summary
    assert sum(summary["new_connections"].values()) == summary["new"]
    assert summary["packets"] == summary["translated"] + summary["passed"] + sum(summary["dropped"].values())


def test_flags_instead_of_a_config(tmp_path):
    out = tmp_path / "out.pcap"
    proc = run_cli("replay", PCAPS / "sample.pcap", "-o", out, "--json",
                   "--vip", "10.0.0.100:80/tcp", "--real", "10.9.0.1:8080", "--real", "10.9.0.2:8080")
    summary = json.loads(proc.stdout)
    assert set(summary["new_connections"]) == {"10.9.0.1:8080", "10.9.0.2:8080"}
    assert summary["new_connections"]["10.9.0.1:8080"] > 0


def test_state_out_and_conntrack_print_the_ipvsadm_table(tmp_path):
    state = tmp_path / "state.json"
    run_cli("replay", PCAPS / "sample.pcap", "--state-out", state)
    text = run_cli("conntrack", state).stdout.splitlines()
    assert text[0] == "IPVS connection entries"
    assert text[1] == "pro expire state       source             virtual            destination"
    rows = [line.split() for line in text[2:]]
    assert rows and all(r[0] in ("TCP", "UDP") and len(r[1]) == 5 and r[1][2] == ":" for r in rows)
    assert {r[2] for r in rows} <= {"NONE", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT", "TIME_WAIT",
                                    "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "SYNACK", "UDP"}
    as_json = json.loads(run_cli("conntrack", state, "--json").stdout)
    assert len(as_json) == len(rows) and {"source", "virtual", "destination", "state"} <= set(as_json[0])


@needs_tshark
def test_annotate_writes_a_comment_per_packet_that_tshark_shows(tmp_path):
    out = tmp_path / "out.pcapng"
    run_cli("replay", PCAPS / "sample.pcap", "-o", out, "--annotate")
    comments = subprocess.run(["tshark", "-r", str(out), "-T", "fields", "-e", "frame.comment"],
                              capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(comments) == len(rdpcap(str(PCAPS / "sample.pcap")))
    assert all(comments)
    assert any(c.startswith("new flow, rr -> 10.1.0.") for c in comments)
    assert any(c.startswith("reply from 10.1.0.") and "SNAT to VIP 10.0.0.100:80" in c for c in comments)
    assert any(c.startswith("passed untouched") for c in comments)


def test_annotate_needs_pcapng(tmp_path):
    proc = run_cli("replay", PCAPS / "sample.pcap", "-o", tmp_path / "x.pcap", "--annotate", check=False)
    assert proc.returncode == 2 and "pcapng" in proc.stderr and "Traceback" not in proc.stderr


def test_capture_cut_short_keeps_everything_before_the_fault(tmp_path):
    data = (PCAPS / "sample.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) - 10])
    out = tmp_path / "out.pcap"
    proc = run_cli("replay", cut, "-o", out, check=False)
    assert proc.returncode == 2 and "cut.pcap" in proc.stderr and "offset" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(rdpcap(str(out))) == len(rdpcap(str(PCAPS / "sample.pcap"))) - 1


@pytest.mark.parametrize("capacity", [1, 7, 16, 17, 100_000])
def test_batch_boundaries_do_not_change_the_result(tmp_path, capacity):
    """The datapath reads ahead in windows; where a batch ends must not matter."""
    from l4emu.switch import Switch
    results = []
    for cap in (4096, capacity):
        switch = Switch.from_config(None, seed=5)
        out = []
        with open_capture(PCAPS / "sample.pcap") as reader:
            for batch in reader.batches(capacity=cap):
                switch.process(batch)
                out += [(batch.packet(i), batch.result(i)) for i in range(len(batch))]
        results.append((out, switch.stats(), switch.conntrack()))
    assert results[0] == results[1]
