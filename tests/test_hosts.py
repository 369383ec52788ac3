"""Emulated real servers: handshakes, handles, listen queues, resets, apps; scapy reads every answer."""
from __future__ import annotations

import pytest
from scapy.all import AH, ICMP, IP, TCP, UDP, Dot1Q, Ether, IPv6, IPv6ExtHdrHopByHop, raw
from scapy.layers.inet6 import ICMPv6DestUnreach

from conftest import NS, make_switch
from l4emu.emulate import Emulator
from l4emu.hosts._engine import read_frame

VIP, VIP6 = "10.0.0.100", "2001:db8::100"
REAL = "10.1.0.1"


def config(extra: str = "", app: str = "http", udp_app: str = "echo") -> str:
    return f"""
[[service]]
vip = "{VIP}:80"
  [[service.real]]
  address = "{REAL}:8080"
  emulated = true
  app = "{app}"
{extra}
[[service]]
vip = "{VIP}:53"
protocol = "udp"
  [[service.real]]
  address = "10.1.0.11:53"
  emulated = true
  app = "{udp_app}"
[[service]]
vip = "[{VIP6}]:80"
  [[service.real]]
  address = "[2001:db8:1::1]:8080"
  emulated = true
"""


class Lab:
    """A switch with emulated hosts, driven by raw IP packets; collects what clients would receive."""

    def __init__(self, tmp_path, toml: str, seed: int = 1):
        self.switch = make_switch(toml, tmp_path, seed)
        self.received = []
        self.emu = Emulator(self.switch, outside=self._out, restamp=False)
        self.t = NS

    def _out(self, out):
        if out.frame != self.sent:                 # not the client's own packet: an answer (via the switch)
            self.received.append((out.ts_ns, IP(out.frame) if out.frame[0] >> 4 == 4 else IPv6(out.frame)))

    def send(self, pkt, t: float | None = None):
        """Send one client packet; the answers it caused (scapy packets)."""
        self.t = int(t * NS) if t is not None else self.t + NS // 100
        before = len(self.received)
        self.sent = raw(pkt)
        self.emu.client(self.sent, self.t, len(self.sent), 0, 101)
        return [p for _, p in self.received[before:]]

    def host(self, address=REAL) -> dict:
        return next(h for h in self.switch.sockets() if h["host"] == address)

    def rows(self, address=REAL, state=None) -> list[dict]:
        return [r for r in self.host(address)["sockets"] if state is None or r["state"] == state]


class Client:
    """One TCP client connection through the VIP that keeps its own sequence numbers."""

    def __init__(self, lab: Lab, sport: int, src: str = "172.16.0.1", dst: str = VIP):
        self.lab, self.sport, self.src, self.dst = lab, sport, src, dst
        self.seq, self.ack = 1000 * sport, 0

    def ip(self):
        return IPv6(src=self.src, dst=self.dst) if ":" in self.dst else IP(src=self.src, dst=self.dst)

    def send(self, flags, data=b"", t=None, seq=None, ack=None, options=()):
        pkt = self.ip() / TCP(sport=self.sport, dport=80, flags=flags, seq=self.seq if seq is None else seq,
                              ack=self.ack if ack is None else ack, window=65535, options=list(options))
        replies = self.lab.send(pkt / data if data else pkt, t)
        self.seq += len(data) + (1 if "S" in flags else 0) + (1 if "F" in flags else 0)
        for r in replies:
            if TCP in r and r[TCP].dport == self.sport:
                end = r[TCP].seq + len(r[TCP].payload) + (1 if r[TCP].flags.S else 0) + (1 if r[TCP].flags.F else 0)
                self.ack = max(self.ack, end)
        return [r for r in replies if TCP in r and r[TCP].dport == self.sport]

    def connect(self, t=None):
        replies = self.send("S", t=t, options=[("MSS", 1400)])
        assert [r[TCP].flags for r in replies] == ["SA"]
        return self.send("A")

    def close(self):
        return self.send("FA") + self.send("A")


def handles(lab: Lab) -> list:
    return [r["handle"] for r in lab.rows(state="ESTAB")]


def test_syn_ack_has_mss_and_acknowledges_the_syn(tmp_path):
    lab = Lab(tmp_path, config())
    [syn_ack] = Client(lab, 40000).send("S", options=[("MSS", 1400), ("WScale", 7)])
    assert syn_ack[TCP].flags == "SA" and syn_ack[TCP].ack == 40000 * 1000 + 1
    assert dict(syn_ack[TCP].options)["MSS"] == 1460 and dict(syn_ack[TCP].options)["WScale"] == 7
    assert syn_ack[IP].src == VIP and syn_ack[TCP].sport == 80         # the answer went back through the switch
    [syn_ack6] = Client(lab, 40001, "2001:db8:ff::1", VIP6).send("S", options=[("MSS", 1400)])
    assert dict(syn_ack6[TCP].options) == {"MSS": 1440}                 # no scaling when not offered


def test_one_handle_per_completed_handshake_and_none_for_half_open(tmp_path):
    lab = Lab(tmp_path, config())
    for port in (40001, 40002, 40003):
        Client(lab, port).connect()
    Client(lab, 40004).send("S")                                        # half-open: SYN-RECV, no handle
    assert sorted(handles(lab)) == [4, 5, 6]                            # 3 is the listening socket
    [half] = lab.rows(state="SYN-RECV")
    assert half["handle"] is None and half["peer"] == "172.16.0.1:40004"
    assert lab.rows(state="LISTEN")[0]["handle"] == 3
    flows = {row["source"]: row["handle"] for row in lab.switch.conntrack() if row["protocol"] == "TCP"}
    assert flows == {"172.16.0.1:40001": 4, "172.16.0.1:40002": 5, "172.16.0.1:40003": 6, "172.16.0.1:40004": None}


def test_handles_are_reused_lowest_first(tmp_path):
    lab = Lab(tmp_path, config())
    clients = {port: Client(lab, port) for port in (40001, 40002, 40003)}
    for c in clients.values():
        c.connect()
    clients[40002].close()                                              # frees 5, then 4
    clients[40001].close()
    assert handles(lab) == [6]
    Client(lab, 40004).connect()
    Client(lab, 40005).connect()
    Client(lab, 40006).connect()
    got = {r["peer"]: r["handle"] for r in lab.rows(state="ESTAB")}
    assert got == {"172.16.0.1:40003": 6, "172.16.0.1:40004": 4, "172.16.0.1:40005": 5, "172.16.0.1:40006": 7}


def test_request_response_and_close_sequence_numbers(tmp_path):
    lab = Lab(tmp_path, config())
    c = Client(lab, 40001)
    c.connect()
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    [ack] = c.send("PA", request[:10])                                  # no complete header block yet
    assert ack[TCP].flags == "A" and len(ack[TCP].payload) == 0 and ack[TCP].ack == c.seq
    [answer] = c.send("PA", request[10:])
    assert answer[TCP].flags == "PA" and bytes(answer[TCP].payload).startswith(b"HTTP/1.1 200 OK\r\n")
    body = b"served by 10.1.0.1:8080\n"
    assert bytes(answer[TCP].payload).endswith(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert answer[TCP].ack == c.seq                                      # the whole request acknowledged
    fin = c.send("FA")
    assert [r[TCP].flags for r in fin] == ["FA"] and fin[0][TCP].ack == c.seq
    assert lab.rows(state="LAST-ACK") and c.send("A") == []
    assert lab.rows(state="LAST-ACK") == [] and handles(lab) == []


def test_connection_close_request_makes_the_server_close_first(tmp_path):
    lab = Lab(tmp_path, config())
    c = Client(lab, 40001)
    c.connect()
    [answer] = c.send("PA", b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert answer[TCP].flags == "FPA" and b"Connection: close" in bytes(answer[TCP].payload)
    assert lab.rows(state="FIN-WAIT-1")[0]["handle"] is None             # closed by the app: no handle
    assert c.send("A") == [] and lab.rows(state="FIN-WAIT-2")
    [last] = c.send("FA")
    assert last[TCP].flags == "A" and lab.rows(state="TIME-WAIT")
    lab.send(IP(src="172.16.0.9", dst="10.0.0.200") / UDP(), t=lab.t / NS + 59)
    assert lab.rows(state="TIME-WAIT")
    lab.send(IP(src="172.16.0.9", dst="10.0.0.200") / UDP(), t=lab.t / NS + 2)
    assert lab.rows(state="TIME-WAIT") == []                             # 60 s on the packet clock


def test_pipelined_requests_get_one_answer_each_and_bad_ones_400(tmp_path):
    lab = Lab(tmp_path, config())
    c = Client(lab, 40001)
    c.connect()
    [answer] = c.send("PA", b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.1\r\n\r\n")
    assert bytes(answer[TCP].payload).count(b"HTTP/1.1 200 OK") == 3
    d = Client(lab, 40002)
    d.connect()
    [bad] = d.send("PA", b"hello\r\n\r\n")
    assert bytes(bad[TCP].payload).startswith(b"HTTP/1.1 400 Bad Request") and bad[TCP].flags.F


def test_echo_and_discard_apps(tmp_path):
    lab = Lab(tmp_path, config(app="echo"))
    c = Client(lab, 40001)
    c.connect()
    answers = c.send("PA", b"x" * 3000)                                 # more than the client's MSS (1400)
    echoed = [r for r in answers if len(r[TCP].payload)]
    assert len(answers) == len(echoed) == 3
    assert b"".join(bytes(r[TCP].payload) for r in echoed) == b"x" * 3000
    assert [len(r[TCP].payload) for r in echoed] == [1400, 1400, 200]
    lab2 = Lab(tmp_path, config(app="discard"))
    d = Client(lab2, 40001)
    d.connect()
    [ack] = d.send("PA", b"y" * 100)
    assert ack[TCP].flags == "A" and len(ack[TCP].payload) == 0 and ack[TCP].ack == d.seq


def test_syn_to_a_closed_port_gets_a_reset(tmp_path):
    lab = Lab(tmp_path, config())
    [rst] = lab.send(IP(src="172.16.0.1", dst=REAL) / TCP(sport=40001, dport=22, flags="S", seq=777))
    assert rst[IP].src == REAL and rst[TCP].flags == "RA" and rst[TCP].ack == 778 and rst[TCP].seq == 0
    [rst] = lab.send(IP(src="172.16.0.1", dst=REAL) / TCP(sport=40001, dport=8080, flags="A", seq=5, ack=99))
    assert rst[TCP].flags == "R" and rst[TCP].seq == 99                  # a stray ACK to the listener
    assert lab.host()["counters"]["closed_port"] == 1 and lab.host()["counters"]["resets_sent"] == 2


def test_udp_echo_and_port_unreachable(tmp_path):
    lab = Lab(tmp_path, config())
    [echo] = lab.send(IP(src="172.16.0.1", dst=VIP) / UDP(sport=5000, dport=53) / b"query")
    assert echo[IP].src == VIP and echo[UDP].sport == 53 and bytes(echo[UDP].payload) == b"query"
    [icmp] = lab.send(IP(src="172.16.0.1", dst="10.1.0.11") / UDP(sport=5000, dport=9999) / b"x")
    assert icmp[ICMP].type == 3 and icmp[ICMP].code == 3 and icmp[ICMP].payload.payload.dport == 9999
    lab6 = Lab(tmp_path, config())
    [icmp6] = lab6.send(IPv6(src="2001:db8:ff::1", dst="2001:db8:1::1") / UDP(sport=5000, dport=9) / b"x")
    assert ICMPv6DestUnreach in icmp6 and icmp6[ICMPv6DestUnreach].code == 4
    labh = Lab(tmp_path, config(udp_app="http"))
    [text] = labh.send(IP(src="172.16.0.1", dst=VIP) / UDP(sport=5000, dport=53) / b"?")
    assert bytes(text[UDP].payload) == b"served by 10.1.0.11:53\n"


def test_full_accept_queue_drops_the_syn(tmp_path):
    # backlog 2: Linux's accept queue takes backlog + 1; the app accepts one at once, then one per 1000 s.
    lab = Lab(tmp_path, config("  backlog = 2\n  accept_rate = 0.001"))
    for port in range(40001, 40005):
        Client(lab, port).connect()
    [listener] = lab.rows(state="LISTEN")
    assert (listener["recv_q"], listener["send_q"]) == (3, 2)
    assert handles(lab) == [4, None, None, None]
    assert Client(lab, 40005).send("S") == []                           # dropped: no SYN-ACK, no state
    assert lab.host()["counters"]["listen_drops"] == 1 and lab.rows(state="SYN-RECV") == []


@pytest.mark.parametrize("overflow", ["drop", "reset"])
def test_handshake_into_a_full_accept_queue(tmp_path, overflow):
    lab = Lab(tmp_path, config(f"  backlog = 2\n  accept_rate = 0.001\n  syn_overflow = \"{overflow}\""))
    for port in (40001, 40002, 40003):
        Client(lab, port).connect()                                     # one accepted, two queued
    late = [Client(lab, 40004), Client(lab, 40005)]
    for c in late:
        assert [r[TCP].flags for r in c.send("S")] == ["SA"]            # both fit the SYN queue
    assert late[0].send("A") == []                                      # the queue now holds 3: full
    answer = late[1].send("A")
    if overflow == "reset":                                             # tcp_abort_on_overflow = 1
        assert [r[TCP].flags for r in answer] == ["R"] and answer[0][TCP].seq == late[1].ack
        assert lab.rows(state="SYN-RECV") == []
    else:                                                               # ignored: still half-open
        assert answer == [] and [r["peer"] for r in lab.rows(state="SYN-RECV")] == ["172.16.0.1:40005"]
    assert lab.host()["counters"]["listen_overflows"] == 1


def test_accept_rate_paces_the_application_on_the_packet_clock(tmp_path):
    lab = Lab(tmp_path, config("  accept_rate = 10"))
    a, b = Client(lab, 40001), Client(lab, 40002)
    a.connect(t=1.0)                                                    # SYN at 1.0, ACK at 1.01: accepted at once
    b.connect(t=1.02)                                                   # ACK at 1.03: queued until 1.11
    assert b.send("PA", b"GET / HTTP/1.1\r\n\r\n", t=1.05)[0][TCP].flags == "A"
    assert [r["recv_q"] for r in lab.rows(state="ESTAB") if r["peer"].endswith(":40002")] == [18]
    lab.send(IP(src="172.16.0.9", dst="10.0.0.200") / UDP(), t=1.5)      # the packet clock moves on
    t, answer = [(t, r) for t, r in lab.received if TCP in r and r[TCP].dport == 40002][-1]
    assert t == 1_110_000_000 + 1000 and b"200 OK" in bytes(answer[TCP].payload)   # accept at 1.11, +1 us
    assert {r["peer"]: r["handle"] for r in lab.rows(state="ESTAB")} == {"172.16.0.1:40001": 4, "172.16.0.1:40002": 5}


def test_reset_from_the_client_frees_the_handle_and_data_after_close_is_reset(tmp_path):
    lab = Lab(tmp_path, config())
    a = Client(lab, 40001)
    a.connect()
    [challenge] = a.send("R", seq=a.seq + 5)                            # not the expected sequence number
    assert challenge[TCP].flags == "A" and challenge[TCP].ack == a.seq  # RFC 5961 challenge ACK
    assert handles(lab) == [4]
    a.send("R")
    assert handles(lab) == [] and lab.host()["handles_in_use"] == 1
    b = Client(lab, 40002)
    b.connect()
    b.send("PA", b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    [rst] = b.send("PA", b"more")                                       # the app closed its socket
    assert rst[TCP].flags.R and lab.rows(state="FIN-WAIT-1") == []


def test_out_of_order_data_gets_a_duplicate_ack_and_a_repeated_syn_the_same_syn_ack(tmp_path):
    lab = Lab(tmp_path, config(app="echo"))
    c = Client(lab, 40001)
    [first] = c.send("S")
    c.seq -= 1
    [again] = c.send("S")
    assert (again[TCP].seq, again[TCP].ack) == (first[TCP].seq, first[TCP].ack)
    c.send("A")
    expected = c.seq
    [dup] = c.send("PA", b"late", seq=expected + 100)
    assert dup[TCP].flags == "A" and dup[TCP].ack == expected and len(dup[TCP].payload) == 0
    assert lab.host()["counters"]["out_of_order"] == 1


def test_isns_follow_the_seed(tmp_path):
    def isn(seed):
        return Client(Lab(tmp_path, config(), seed=seed), 40001).send("S")[0][TCP].seq
    assert isn(1) == isn(1) != isn(2)


def _checksums_as_scapy_computes(pkt) -> bool:
    """Every checksum of a packet (IP, TCP/UDP/ICMP) equals what scapy computes afresh."""
    layers = [layer for layer in (IP, TCP, UDP, ICMP, ICMPv6DestUnreach) if layer in pkt]
    stated = [pkt[layer].chksum if layer is not ICMPv6DestUnreach else pkt[layer].cksum for layer in layers]
    for layer in layers:
        if layer is ICMPv6DestUnreach:
            del pkt[layer].cksum
        else:
            del pkt[layer].chksum
    again = pkt.__class__(raw(pkt))
    return stated == [again[layer].chksum if layer is not ICMPv6DestUnreach else again[layer].cksum for layer in layers]


def test_built_packets_have_the_checksums_scapy_computes(tmp_path):
    """The engine builds every answer in C: SYN-ACKs with options, data, FIN, RST, UDP, ICMP and ICMPv6."""
    lab = Lab(tmp_path, config(app="echo"))
    c = Client(lab, 40001)
    answers = c.send("S", options=[("MSS", 1400), ("WScale", 2)]) + c.send("A") + c.send("PA", b"odd" * 501)
    answers += c.close()
    answers += lab.send(IP(src="172.16.0.1", dst=REAL) / TCP(sport=40009, dport=22, flags="S"))
    answers += lab.send(IP(src="172.16.0.1", dst=VIP) / UDP(sport=5000, dport=53) / b"abcde")
    answers += lab.send(IP(src="172.16.0.1", dst="10.1.0.11") / UDP(sport=5000, dport=9999) / b"x")
    answers += lab.send(IPv6(src="2001:db8:ff::1", dst="2001:db8:1::1") / UDP(sport=5000, dport=9) / b"x")
    answers += Client(lab, 40002, "2001:db8:ff::1", VIP6).send("S")
    assert len(answers) >= 9
    assert all(_checksums_as_scapy_computes(pkt) for pkt in answers)


def test_parse_refuses_what_it_cannot_read_whole():
    good = raw(IP(src="1.2.3.4", dst="5.6.7.8") / TCP(sport=1, dport=2) / b"data")
    assert read_frame(good, 101)[11] == b"data"
    assert read_frame(good[:-1], 101) is None                             # snapped
    assert read_frame(good[:30], 101) is None
    assert read_frame(raw(IP(src="1.2.3.4", dst="5.6.7.8", flags="MF") / UDP()), 101) is None
    bad_offset = bytearray(good)
    bad_offset[32] = 0x40                                               # data offset 16 bytes < 20
    assert read_frame(bytes(bad_offset), 101) is None
    assert read_frame(b"", 101) is None and read_frame(b"\x60" + bytes(10), 101) is None


@pytest.mark.parametrize("frame, linktype", [
    # An IPv6 authentication header: the switch walks it, so the host must read what is behind it.
    (raw(IPv6(src="2001:db8:ff::10", dst="2001:db8:1::1") / IPv6ExtHdrHopByHop() / AH(nh=6, payloadlen=4, spi=7, icv=bytes(12))
         / TCP(sport=40000, dport=8080, flags="PA") / b"GET"), 101),
    (raw(IP(src="172.16.0.1", dst="10.1.0.1") / TCP(sport=40000, dport=8080, flags="PA") / b"GET"), 228),
    (raw(Ether() / Dot1Q(vlan=10) / Dot1Q(vlan=20) / IP(src="172.16.0.1", dst="10.1.0.1")
         / TCP(sport=40000, dport=8080, flags="PA") / b"GET"), 1),
])
def test_the_hosts_read_every_packet_the_datapath_parses(frame, linktype):
    """One parser: whatever the datapath can classify (and so DNAT to an emulated real), a host reads."""
    seg = read_frame(frame, linktype)
    assert seg is not None and (seg[4], seg[5], seg[11]) == (40000, 8080, b"GET")
