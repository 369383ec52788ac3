"""A mixed workload (protocol = "mixed", udp_share): TCP connections and UDP request datagrams at once,
through one switch to emulated reals of both kinds, reported per protocol and per real.

Tolerance: the UDP sessions are a Poisson stream of rate * udp_share beside the TCP stream of the rest,
so over N sessions the UDP count is off its share by about sqrt(N * share) / N. At 12,000 sessions and a
share of 0.3 that is 0.4% of N (one standard deviation); the test allows 2% of N (five of them).
"""
from __future__ import annotations

import hashlib
import json
import subprocess

from scapy.all import IP, TCP, UDP, PcapReader

from conftest import PCAPS, needs_tshark, run_cli

ROOT_CONFIG = PCAPS / "mixed.toml"  # by its path, whatever the working directory (the debug suite runs elsewhere)
SHARE_TOLERANCE = 0.02  # of all sessions: the UDP share's error (module docstring)


def config(tmp_path, workload: str = "") -> str:
    text = open(ROOT_CONFIG).read()
    path = tmp_path / "lb.toml"
    path.write_text(text + workload)
    return str(path)


def simulate(path, *args) -> dict:
    return json.loads(run_cli("simulate", "-c", path, "--json", *args).stdout)


def test_each_protocol_gets_its_share_of_the_sessions_and_its_own_reals(tmp_path):
    result = simulate(config(tmp_path), "--rate", "1200", "--duration", "10", "--seed", "3")
    tcp, udp = result["by_protocol"]["tcp"], result["by_protocol"]["udp"]
    total = result["sessions"]
    assert total == tcp["sessions"] + udp["sessions"] > 11000
    assert abs(udp["sessions"] / total - 0.3) < SHARE_TOLERANCE, (udp["sessions"], total)
    # keep_alive = false, one request per session: requests follow the sessions, and every one is answered
    assert (tcp["requests"], udp["requests"]) == (tcp["sessions"], udp["sessions"])
    assert (tcp["answered"], udp["answered"]) == (tcp["requests"], udp["requests"])
    by_real = {r["real"]: r for r in result["reals"]}
    assert sum(by_real[r]["requests"] for r in ("10.1.0.1:8080", "10.1.0.2:8080")) == tcp["answered"]
    assert sum(by_real[r]["requests"] for r in ("10.1.0.11:9000", "10.1.0.12:9000")) == udp["answered"]
    assert "refused" in by_real["10.1.0.1:8080"] and "dropped" in by_real["10.1.0.11:9000"]
    # the slow TCP real (twice the service time) answers slower; the UDP reals differ by answer size only
    assert by_real["10.1.0.2:8080"]["p90_ms"] > by_real["10.1.0.1:8080"]["p90_ms"]
    assert result["answered"] == tcp["answered"] + udp["answered"]
    text = run_cli("simulate", "-c", config(tmp_path), "--rate", "100", "--duration", "2", "--seed", "3").stdout
    assert "all TCP" in text and "all UDP" in text and "10.1.0.12:9000" in text


@needs_tshark
def test_the_mixed_capture_is_valid_and_deterministic(tmp_path):
    path = config(tmp_path, "ipv6_share = 0.0\nrequests_per_conn = 2\nthink_time = 0.01\n")
    outs = [simulate(path, "--rate", "150", "--duration", "2", "--seed", "9", "-o", tmp_path / n)
            for n in ("a.pcap", "b.pcap")]
    assert {**outs[0], "cpu_s": 0, "output": 0} == {**outs[1], "cpu_s": 0, "output": 0}
    digests = {hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("a.pcap", "b.pcap")}
    assert len(digests) == 1
    result = outs[0]
    with PcapReader(str(tmp_path / "a.pcap")) as reader:
        packets = list(reader)
    times = [p.time for p in packets]
    assert times == sorted(times)
    to_tcp = [p for p in packets if TCP in p and p[TCP].dport == 80]
    to_udp = [p for p in packets if UDP in p and p[UDP].dport == 9000]
    assert len(to_tcp) == result["by_protocol"]["tcp"]["packets"]
    assert len(to_udp) == result["by_protocol"]["udp"]["packets"] == result["by_protocol"]["udp"]["requests"]
    assert len(packets) == result["packets"]["clients"] + result["packets"]["answers"]
    assert all(IP in p for p in packets)
    pcap = str(tmp_path / "a.pcap")
    # A client's ephemeral port may be 47000, HCrt's registered port: these datagrams are not HCrt.
    tshark = ["tshark", "-r", pcap, "--disable-protocol", "hcrt"]
    expert = subprocess.run([*tshark, "-q", "-z", "expert,note"], capture_output=True, text=True)
    assert "Warning" not in expert.stdout and "Error" not in expert.stdout, expert.stdout
    checked = subprocess.run([*tshark, "-o", "tcp.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
                              "-o", "ip.check_checksum:TRUE", "-Y",
                              "tcp.checksum.status == 2 || udp.checksum.status == 2 || ip.checksum.status == 2"
                              " || _ws.malformed || tcp.analysis.flags"],
                             capture_output=True, text=True)
    assert checked.returncode == 0 and checked.stdout == "", checked.stdout[:500]
    streams = subprocess.run([*tshark, "-Y", "http.response", "-T", "fields", "-e", "tcp.stream"],
                             capture_output=True, text=True).stdout.split()
    assert len(streams) == result["by_protocol"]["tcp"]["answered"]


def test_gen_writes_both_protocols_in_time_order(tmp_path):
    path = config(tmp_path)
    summary = json.loads(run_cli("gen", "-c", path, "-o", tmp_path / "g.pcap", "--rate", "500", "--duration", "2",
                                 "--seed", "4", "--json").stdout)
    with PcapReader(str(tmp_path / "g.pcap")) as reader:
        packets = list(reader)
    assert [p.time for p in packets] == sorted(p.time for p in packets)
    parts = summary["by_protocol"]
    assert sum(TCP in p for p in packets) == parts["tcp"]["packets"]
    assert sum(UDP in p for p in packets) == parts["udp"]["packets"] == parts["udp"]["requests"]
    assert len(packets) == summary["packets"] == parts["tcp"]["packets"] + parts["udp"]["packets"]
    assert 0.2 < parts["udp"]["sessions"] / summary["sessions"] < 0.4
    again = run_cli("gen", "-c", path, "-o", tmp_path / "h.pcap", "--rate", "500", "--duration", "2", "--seed", "4")
    assert again.returncode == 0 and (tmp_path / "g.pcap").read_bytes() == (tmp_path / "h.pcap").read_bytes()


def test_a_mix_is_checked_in_one_line(tmp_path):
    cases = [
        ("--udp-share", "0.3", "--protocol", "udp", "--udp-share"),     # only a mix splits its sessions
        ("--protocol", "mixed", "--udp-share", "1", "--udp-share"),      # all of them is protocol = "udp"
        ("--protocol", "mixed", "--udp-share", "0", "--udp-share"),
    ]
    bare = tmp_path / "bare.toml"
    bare.write_text(open(ROOT_CONFIG).read().replace("udp_share = 0.3", ""))
    for *args, key in cases:
        proc = run_cli("simulate", "-c", bare, "--rate", "10", "--duration", "1", *args, check=False)
        assert proc.returncode == 2 and key in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    ipv6 = run_cli("simulate", "-c", config(tmp_path), "--ipv6-share", "0.3", check=False)
    assert ipv6.returncode == 2 and ipv6.stderr.strip().endswith("no TCP service has an IPv6 VIP"), ipv6.stderr
    missing = run_cli("simulate", "-c", bare, "--protocol", "mixed", check=False)
    assert missing.returncode == 2 and "needs udp_share" in missing.stderr
    target = run_cli("gen", "-c", config(tmp_path, 'target = "10.0.0.100:80"\n'), "-o", tmp_path / "x.pcap",
                     check=False)
    assert target.returncode == 2 and "workload.target" in target.stderr
    capture = run_cli("gen", "-c", config(tmp_path), "--capture", PCAPS / "clients.pcap", "-o", tmp_path / "y.pcap",
                      check=False)
    assert capture.returncode == 2 and "workload.protocol" in capture.stderr


def test_a_tcp_and_a_udp_real_on_one_address_and_port_keep_their_own_queue_lines(tmp_path):
    """DNS-like: the UDP service's first real is the TCP service's first real's address and port. The
    queue-over-time lines are per real and protocol: the TCP real's line is its own, not the UDP one's."""
    text = open(ROOT_CONFIG).read().replace('address = "10.1.0.11:9000"', 'address = "10.1.0.1:8080"')
    path = tmp_path / "lb.toml"
    path.write_text(text)
    result = simulate(str(path), "--rate", "400", "--duration", "5", "--seed", "3")
    names = [(r["service"].split()[0], r["real"]) for r in result["reals"]]
    assert names[0] == ("TCP", "10.1.0.1:8080") and names[2] == ("UDP", "10.1.0.1:8080")
    series = result["queue_over_time"]
    assert all(len(waiting) == len(active) == len(names) for _, waiting, active in series)
    tcp_active = [active[0] for _, _, active in series]
    udp_active = [active[2] for _, _, active in series]
    assert max(tcp_active) > 0 and tcp_active != udp_active
