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


class TunSide:
    """The live switch and the GSLB answerer as the TUN loop drives them: a round of frames in, the
    answers out (each client frame kept from the TUN: the answerer marks it dropped)."""

    def __init__(self):
        self.answerer = TunAnswerer(gslbconfig.load(PCAPS / "gslb.toml", schedulers.catalog()), seed=1)
        self.switch = Switch.from_config(None, 1)

    def round(self, frames, t: int) -> list:
        batch = Batch(len(frames))
        for frame in frames:
            assert batch.append(raw(frame), t, 0, LINKTYPE_RAW)
        self.switch.process(batch)
        answers = self.answerer.answer(batch)
        assert {batch.result(i)[0] for i in range(len(frames))} == {"drop"}
        return [IP(answers.packet(i)) for i in range(len(answers))] if answers is not None else []


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
    # the UDP query and the TCP SYN to the listen address are taken (answered), the other address's passes
    assert [batch.result(i)[0] for i in range(3)] == ["drop", "pass", "drop"]
    assert answers is not None and len(answers) == 2 and answers.meta(0)[0] == 2000
    syn_ack = IP(answers.packet(1))
    assert (syn_ack.src, syn_ack[TCP].sport, syn_ack[TCP].flags) == ("10.53.0.1", 53, "SA")
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


def test_dns_over_tcp_is_answered_on_the_tun_and_an_idle_connection_closed():
    """A client's whole conversation as the TUN hands it over: the answerer's TCP side (gslb/tcp.py, no
    re-stamping: the client talks to it) answers the handshake, the query behind its length and the FIN."""
    import struct

    side = TunSide()
    answerer = side.answerer
    client, ms = dict(src="172.16.0.2", dst="10.53.0.1"), 1_000_000

    def step(frame, t):
        return side.round([frame], t)

    (syn_ack,) = step(IP(**client) / TCP(sport=6000, dport=53, flags="S", seq=100), 1 * ms)
    assert syn_ack[TCP].flags == "SA" and syn_ack[TCP].ack == 101
    server = syn_ack[TCP].seq + 1
    assert step(IP(**client) / TCP(sport=6000, dport=53, flags="A", seq=101, ack=server), 2 * ms) == []
    message = bytes(DNS(id=77, rd=1, qd=DNSQR(qname="www.example.com")))
    query = struct.pack("!H", len(message)) + message
    (answer,) = step(IP(**client) / TCP(sport=6000, dport=53, flags="PA", seq=101, ack=server) / query, 3 * ms)
    data = bytes(answer[TCP].payload)
    response = dns.message.from_wire(data[2:])
    assert struct.unpack("!H", data[:2])[0] == len(data) - 2 and response.id == 77
    assert [r.address for r in response.answer[0]] == ["10.10.0.100"] and answer[TCP].ack == 101 + len(query)
    server += len(data)
    (fin,) = step(IP(**client) / TCP(sport=6000, dport=53, flags="FA", seq=101 + len(query), ack=server), 4 * ms)
    assert "F" in str(fin[TCP].flags) and fin[TCP].ack == 102 + len(query)
    assert answerer.tcp_counters()["dns_queries"] == 1
    # a second connection left idle: closed by the answerer's clock, 30 s on
    (syn_ack,) = step(IP(**client) / TCP(sport=6001, dport=53, flags="S", seq=500), 10 * ms)
    assert step(IP(**client) / TCP(sport=6001, dport=53, flags="A", seq=501, ack=syn_ack[TCP].seq + 1), 11 * ms) == []
    assert answerer.next_deadline() == 11 * ms + 30 * 1000 * ms
    assert answerer.advance(11 * ms + 29 * 1000 * ms) is None
    closed = answerer.advance(11 * ms + 31 * 1000 * ms)
    assert closed is not None and len(closed) == 1 and IP(closed.packet(0))[TCP].flags == "FA"
    assert answerer.tcp_counters()["dns_idle_closed"] == 1
    # the client never answers that FIN: the connection is forgotten 60 s on (no loss, no retransmission
    # timer to end it), so an abandoned close cannot hold one of the listener's 150 places for ever
    # (the first connection's LAST-ACK, whose last ACK this client never sent, ends first: 4 ms + 60 s)
    assert answerer.next_deadline() == 4 * ms + 60 * 1000 * ms
    assert answerer.advance(11 * ms + 100 * 1000 * ms) is None
    assert answerer.tcp_counters()["dns_orphans_ended"] == 2 and answerer.next_deadline() is None
    assert answerer.tcp.engine.host_state(0)[5] == []  # no connection left


def test_more_tcp_answers_than_one_batch_holds_all_reach_the_tun():
    """120 clients' queries in one read round, three segments of one query each: more answer segments than
    the answers batch first holds (256). The emulated TCP does not retransmit, so none may be dropped:
    the batch grows."""
    import struct

    side = TunSide()
    answerer, round_trip = side.answerer, side.round
    clients = range(6000, 6120)  # within the listener's SYN backlog (128)

    synacks = round_trip([IP(src="172.16.0.2", dst="10.53.0.1") / TCP(sport=p, dport=53, flags="S", seq=100)
                          for p in clients], 1_000_000)
    assert len(synacks) == len(clients)
    server = {a[TCP].dport: a[TCP].seq + 1 for a in synacks}
    message = bytes(DNS(id=7, rd=1, qd=DNSQR(qname="www.example.com")))
    query = struct.pack("!H", len(message)) + message
    answers = round_trip([IP(src="172.16.0.2", dst="10.53.0.1")
                          / TCP(sport=p, dport=53, flags="PA", seq=101 + k * len(query), ack=server[p]) / query
                          for k in range(3) for p in clients], 2_000_000)
    assert len(answers) > 256  # more than the batch first held
    assert answerer.tcp_counters()["dns_queries"] == 3 * len(clients)
    for port in (clients[0], clients[-1]):  # every answer went out, the last client's too
        stream = b"".join(bytes(a[TCP].payload) for a in answers if a[TCP].dport == port)
        ids = []
        while stream:
            (length,) = struct.unpack("!H", stream[:2])
            ids.append(dns.message.from_wire(stream[2 : 2 + length]).id)
            stream = stream[2 + length :]
        assert ids == [7, 7, 7]


def test_bytes_dripped_without_a_whole_query_do_not_hold_a_connection_open():
    """The idle time (30 s) restarts at the accept and at each answered message, not at any byte: a client
    sending one byte of a query every 10 s is closed 30 s after its connection opened."""
    side = TunSide()
    answerer = side.answerer
    client, s = dict(src="172.16.0.2", dst="10.53.0.1"), 1_000_000_000

    def step(frame, t):
        return side.round([frame], t)

    (syn_ack,) = step(IP(**client) / TCP(sport=7000, dport=53, flags="S", seq=100), 1 * s)
    server = syn_ack[TCP].seq + 1
    step(IP(**client) / TCP(sport=7000, dport=53, flags="A", seq=101, ack=server), 1 * s)
    for k, t in enumerate((10, 20, 29)):  # a length prefix of 0x4000 and one byte more: never a whole query
        step(IP(**client) / TCP(sport=7000, dport=53, flags="PA", seq=101 + k, ack=server) / b"\x40", t * s)
    assert 31 * s <= answerer.next_deadline() < 32 * s  # from the accept (not 29 s + 30 s)
    closed = answerer.advance(32 * s)
    assert closed is not None and IP(closed.packet(0))[TCP].flags == "FA"
    assert answerer.tcp_counters()["dns_idle_closed"] == 1
