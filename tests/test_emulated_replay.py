"""`l4emu replay` through emulated real servers on pcaps/clients.pcap: tshark and scapy judge the output."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tomllib

import pytest
from scapy.all import IP, TCP, UDP, IPv6, rdpcap, raw

from conftest import PCAPS, needs_tshark, run_cli
from l4emu import config as configmod
from l4emu.emulate import Emulator
from l4emu.io import open_capture
from l4emu.switch import Switch

CLIENTS = PCAPS / "clients.pcap"
CONFIG = PCAPS / "emulated.toml"
# Older and newer tshark phrasings of the sequence problems a re-stamping mistake would cause.
BAD_WARNINGS = ("ACKed unseen segment", "ACKed segment that wasn't captured", "previous segment not captured",
                "Previous segment(s) not captured", "retransmission", "Dup ACK",
                "Out-Of-Order", "Spurious", "Window is full", "Zero window")


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("emulated")
    out, inside, state = tmp / "whole.pcap", tmp / "reals.pcap", tmp / "state.json"
    summary = json.loads(run_cli("replay", CLIENTS, "-c", CONFIG, "-o", out, "--inside", inside, "--seed", 7,
                                 "--state-out", state, "--at", "2.5", "--at", "100", "--json").stdout)
    return {"out": out, "inside": inside, "state": state, "summary": summary, "dir": tmp}


def _l4(pkt):
    ip = pkt[IP] if IP in pkt else pkt[IPv6]
    return ip, pkt[TCP] if TCP in pkt else pkt[UDP] if UDP in pkt else None


def test_every_client_packet_is_kept_and_every_one_answered(replayed):
    clients, out = rdpcap(str(CLIENTS)), rdpcap(str(replayed["out"]))
    s = replayed["summary"]
    assert s["packets"] == len(out) and s["written"] == len(out)
    from_clients = [p for p in out if _l4(p)[0].src not in ("10.0.0.100", "2001:db8::100", "10.1.0.1")]
    assert len(from_clients) == len(clients)
    for sent, seen in zip(clients, from_clients):
        # Only acknowledgement numbers (and their checksum) change: same ports, flags, payload, time.
        assert (_l4(sent)[1].sport, _l4(sent)[1].dport, bytes(_l4(sent)[1].payload)) == \
               (_l4(seen)[1].sport, _l4(seen)[1].dport, bytes(_l4(seen)[1].payload))
        assert sent.time == seen.time
    e = s["emulated"]
    assert (e["hosts"], e["syns"], e["accepted"], e["resets_sent"], e["datagrams_out"]) == (7, 7, 7, 1, 1)
    assert e["inside_written"] == len(rdpcap(str(replayed["inside"])))


def test_each_request_is_answered_by_the_backend_the_switch_chose(replayed):
    """The inside capture says which real each client port went to; the clients' view must name it."""
    real_of = {}
    for pkt in rdpcap(str(replayed["inside"])):
        ip, l4 = _l4(pkt)
        if TCP in pkt and l4.dport == 8080:
            real = f"[{ip.dst}]:8080" if ":" in ip.dst else f"{ip.dst}:8080"
            assert real_of.setdefault((ip.src, l4.sport), real) == real
    answered = {}
    for pkt in rdpcap(str(replayed["out"])):
        ip, l4 = _l4(pkt)
        body = bytes(l4.payload)
        if TCP in pkt and body.startswith(b"HTTP/1.1 200 OK"):
            assert ip.src in ("10.0.0.100", "2001:db8::100") and l4.sport == 80    # SNATed back to the VIP
            answered[(ip.dst, l4.dport)] = re.search(rb"served by (\S+)\n$", body).group(1).decode()
    assert answered == real_of and len(answered) == 7
    assert {r for r in answered.values()} == {"10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080",
                                              "[2001:db8:1::1]:8080", "[2001:db8:1::2]:8080"}


@needs_tshark
@pytest.mark.parametrize("which", ["out", "inside"])
def test_tshark_follows_every_stream_cleanly(replayed, which):
    path = str(replayed[which])
    errors = subprocess.run(["tshark", "-r", path, "-q", "-z", "expert,error"], capture_output=True, text=True,
                            check=True).stdout
    assert "Errors" not in errors and "Malformed" not in errors
    everything = subprocess.run(["tshark", "-r", path, "-q", "-z", "expert"], capture_output=True, text=True,
                                check=True).stdout
    tcp_lines = "\n".join(line for line in everything.splitlines() if " TCP " in line).lower()
    assert not [w for w in BAD_WARNINGS if w.lower() in tcp_lines], everything
    # The UDP service echoes (app = "echo"), so tshark's DNS dissector sees the query twice; that is all.
    assert [line.split(None, 3)[3] for line in everything.splitlines() if " DNS " in line] == [
        "DNS query retransmission. Original request in frame 40"]
    assert re.search(r"^\s+1\s+Sequence\s+TCP\s+Connection reset \(RST\)$", everything, re.M)   # the closed-port probe only
    streams = subprocess.run(["tshark", "-r", path, "-T", "fields", "-e", "tcp.stream", "-Y", "tcp.flags.fin == 1"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert len(set(streams)) == 7 and len(streams) == 14     # both sides close each of the 7 HTTP streams
    checks = subprocess.run(["tshark", "-r", path, "-o", "tcp.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
                             "-o", "ip.check_checksum:TRUE", "-T", "fields", "-e", "ip.checksum.status",
                             "-e", "tcp.checksum.status", "-e", "udp.checksum.status"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert checks and set(checks) == {"1"}                   # 1 = Good, for every checksum of every packet


@pytest.mark.parametrize("which", ["out", "inside"])
def test_scapy_reads_every_packet_and_its_checksums(replayed, which):
    packets = rdpcap(str(replayed[which]))
    assert packets
    for pkt in packets:
        ip, l4 = _l4(pkt)
        assert l4 is not None
        stated = (ip.chksum if IP in pkt else None, l4.chksum)
        if IP in pkt:
            del ip.chksum
        del l4.chksum
        again = pkt.__class__(raw(pkt))
        ip2, l42 = _l4(again)
        assert (ip2.chksum if IP in again else None, l42.chksum) == stated


def test_same_input_and_seed_give_the_same_bytes(replayed, tmp_path):
    def digest(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()
    again, inside = tmp_path / "again.pcap", tmp_path / "again-inside.pcap"
    run_cli("replay", CLIENTS, "-c", CONFIG, "-o", again, "--inside", inside, "--seed", 7)
    assert digest(again) == digest(replayed["out"]) and digest(inside) == digest(replayed["inside"])
    other = tmp_path / "other.pcap"
    run_cli("replay", CLIENTS, "-c", CONFIG, "-o", other, "--seed", 8)
    assert digest(other) != digest(replayed["out"])          # the emulated ISNs come from the seed


def test_state_at_a_moment_shows_sockets_and_the_handles_of_flows(replayed):
    mid = replayed["dir"] / "state@2.5.json"
    assert (replayed["dir"] / "state@100.json").exists()
    rows = json.loads(run_cli("sockets", mid, "--json").stdout)
    estab = {r["peer"]: r["handle"] for host in rows for r in host["sockets"] if r["state"] == "ESTAB"}
    # At 2.5 s both IPv6 conversations are open (their FINs come at 4.4 and 4.9 s), each on handle 4.
    assert estab == {"[2001:db8:ff::11]:33609": 4, "[2001:db8:ff::10]:36248": 4}
    text = run_cli("conntrack", mid).stdout
    assert text.splitlines()[1].endswith("destination          handle")
    assert re.search(r"ESTABLISHED \[2001:db8:ff::11\]:33609 .* \[2001:db8:1::\d\]:8080 4$", text, re.M)
    ss = run_cli("sockets", mid, "--host", "10.1.0.1").stdout.splitlines()
    assert ss[0].split()[:4] == ["Netid", "State", "Recv-Q", "Send-Q"] and ss[0].endswith("Handle")
    assert ss[1].split() == ["tcp", "LISTEN", "0", "128", "10.1.0.1:8080", "0.0.0.0:*", "3"]
    late = json.loads((replayed["dir"] / "state@100.json").read_text())
    assert late["clock_ns"] - json.loads(mid.read_text())["clock_ns"] == 97_500_000_000    # past the end: 100 s
    assert not [r for h in late["sockets"] for r in h["sockets"] if r["state"] == "TIME-WAIT"]   # 60 s passed


def test_at_needs_a_state_file(tmp_path):
    no_state = run_cli("replay", CLIENTS, "-c", CONFIG, "--at", "1", check=False)
    assert no_state.returncode == 2 and "--state-out" in no_state.stderr
    missing = run_cli("sockets", tmp_path / "none.json", check=False)
    assert missing.returncode == 2


@pytest.mark.parametrize("line, key, words", [
    ('backlog = 5', "real[0].backlog", "only an emulated real"),
    ('emulated = true\n  app = "ftp"', "real[0].app", "not one of http, echo, discard"),
    ('emulated = true\n  backlog = 0', "real[0].backlog", "out of range 1-65535"),
    ('emulated = true\n  accept_rate = -1', "real[0].accept_rate", "accepts per second"),
    ('emulated = true\n  syn_overflow = "rst"', "real[0].syn_overflow", "not one of drop, reset"),
    ('emulated = "yes"', "real[0].emulated", "true or false"),
    ('emulated = true\n  workers = -1', "real[0].workers", "out of range 0-65536"),
    ('emulated = true\n  service_time = 0.01', "real[0].service_time", "needs workers"),
    ('emulated = true\n  workers = 1\n  service_time = { dist = "pareto", mean = 1 }', "real[0].service_time.dist",
     "not one of fixed, exponential, lognormal, empirical"),
    ('emulated = true\n  workers = 1\n  service_time = { dist = "exponential" }', "real[0].service_time.mean",
     "missing"),
    ('emulated = true\n  workers = 1\n  service_time = -2', "real[0].service_time", "not a number from 0 to 3600"),
    ('emulated = true\n  app = "echo"\n  workers = 2', "real[0].workers", "only the http app serves requests"),
    ('emulated = true\n  response_bytes = { dist = "empirical", values = [] }', "real[0].response_bytes.values",
     "non-empty list"),
])
def test_config_errors_name_the_key(line, key, words):
    text = f'[[service]]\nvip = "10.0.0.1:80"\n  [[service.real]]\n  address = "10.1.0.1:80"\n  {line}\n'
    with pytest.raises(configmod.ConfigError) as err:
        configmod.from_dict(tomllib.loads(text), {"rr"})
    assert f"service[0].{key}" in str(err.value) and words in str(err.value)


def test_one_address_is_one_host_and_one_socket_has_one_setting():
    two = ('[[service]]\nvip = "10.0.0.1:80"\n  [[service.real]]\n  address = "10.1.0.1:80"\n  emulated = true\n'
           '[[service]]\nvip = "10.0.0.1:81"\n  [[service.real]]\n  address = "10.1.0.1:81"\n')
    with pytest.raises(configmod.ConfigError, match=r"service\[1\]\.real\[0\]\.emulated: 10\.1\.0\.1 is emulated"):
        configmod.from_dict(tomllib.loads(two), {"rr"})
    clash = ('[[service]]\nvip = "10.0.0.1:80"\n  [[service.real]]\n  address = "10.1.0.1:80"\n  emulated = true\n'
             '[[service]]\nvip = "10.0.0.2:80"\n  [[service.real]]\n  address = "10.1.0.1:80"\n  emulated = true\n'
             '  backlog = 7\n')
    with pytest.raises(configmod.ConfigError, match="is one socket"):
        configmod.from_dict(tomllib.loads(clash), {"rr"})
    udp = ('[[service]]\nvip = "10.0.0.1:53"\nprotocol = "udp"\n  [[service.real]]\n  address = "10.1.0.1:53"\n'
           '  emulated = true\n  backlog = 3\n')
    with pytest.raises(configmod.ConfigError, match=r"real\[0\]\.backlog: a UDP real has no listen queue"):
        configmod.from_dict(tomllib.loads(udp), {"rr"})


@needs_tshark
def test_a_capture_with_recorded_servers_and_two_link_types(tmp_path):
    """sample-ns.pcapng holds the old servers' replies too (skipped: the hosts answer instead); answers
    go out on the interface, and with the link type, their client's packets came in on."""
    out = tmp_path / "out.pcapng"
    summary = json.loads(run_cli("replay", PCAPS / "sample-ns.pcapng", "-c", CONFIG, "-o", out, "--seed", 1,
                                 "--json").stdout)
    assert summary["emulated"]["superseded"] == 14 and summary["emulated"]["accepted"] == 4
    fields = subprocess.run(["tshark", "-r", str(out), "-T", "fields", "-e", "frame.interface_id", "-e",
                             "frame.protocols", "-e", "tcp.stream", "-e", "udp.stream"],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    iface_of_stream = {}
    for line in fields:
        iface, protocols, tcp_stream, udp_stream = (line.split("\t") + ["", ""])[:4]
        assert protocols.startswith("eth:" if iface == "0" else "raw:")
        stream = ("tcp", tcp_stream) if tcp_stream else ("udp", udp_stream)
        assert iface_of_stream.setdefault(stream, iface) == iface
    assert len(iface_of_stream) == 6
    expert = subprocess.run(["tshark", "-r", str(out), "-q", "-z", "expert"], capture_output=True, text=True,
                            check=True).stdout
    tcp_lines = "\n".join(line for line in expert.splitlines() if " TCP " in line).lower()
    assert "Errors" not in expert and not [w for w in BAD_WARNINGS if w.lower() in tcp_lines]


def test_the_restamper_forgets_each_connection_once_both_sides_closed():
    """A long capture must not pile up per-connection state: every conversation of the sample closes."""
    emulator = Emulator(Switch.from_config(PCAPS / "emulated.toml", seed=1))
    with open_capture(PCAPS / "clients.pcap") as reader:
        for batch in reader.batches():
            for i in range(len(batch)):
                ts, origlen, iface, linktype = batch.meta(i)
                emulator.client(batch.packet(i), ts, origlen, iface, linktype)
    assert emulator.answers > 0
    assert emulator.restamp_entries() == 0


def test_expire_nodest_conn_with_emulated_reals_breaks_the_down_reals_connections(tmp_path):
    """expire_nodest_conn drops a down real's flow and reschedules its next packet, here one packet at a
    time through the emulate loop (the datapath read the verdict from a batch the loop does not use)."""
    config = tmp_path / "lb.toml"
    config.write_text('[table]\nexpire_nodest_conn = true\n[[service]]\nvip = "10.0.0.100:80"\nscheduler = "rr"\n'
                      '  [[service.real]]\n  address = "10.1.0.1:8080"\n  emulated = true\n'
                      '  [[service.real]]\n  address = "10.1.0.2:8080"\n  emulated = true\n')
    run_cli("gen", "-c", config, "--rate", "200", "--duration", "2", "--requests-per-conn", "5", "--think-time",
            "0.2", "--seed", "1", "-o", tmp_path / "clients.pcap")
    out = run_cli("replay", tmp_path / "clients.pcap", "-c", config, "--event", "0.5:down:10.1.0.2:8080",
                  "--seed", "1", "--json")
    (effect,) = json.loads(out.stdout)["events"]
    assert effect["connections_on_real"] > 0 and effect["broken"] == effect["connections_on_real"]
