"""The closed loop's clients on their own, against answers scapy builds: the handshake, an HTTP answer
split anywhere and spelled any way, garbage, a refused SYN. (The answers' reader runs with bounds
checks off: hypothesis feeds it what a server could send, and the debug build runs these too.)"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, Ether, raw

from l4emu import config as configmod
from l4emu import schedulers
from l4emu.clients._clients import Clients
from l4emu.clients.gen import model_arguments
from l4emu.workload import from_config

VIP, PORT = "10.0.0.100", 80
LINKTYPE_ETHERNET = 1
E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")  # explicit: scapy would look a MAC up
SERVER_ISN = 7_000_000


def one_client(rtt: float = 0.0) -> Clients:
    config = configmod.load(None, schedulers.catalog())
    workload = from_config(config, "test", {"rate": 1.0, "duration": 0.5, "seed": 1, "keep_alive": False,
                                            "clients": 1, "rtt": rtt, "arrival": "fixed"})
    return Clients(**model_arguments(workload))


def answer(clients: Clients, syn: TCP, ts: int, flags: str, seq: int, payload: bytes = b"") -> None:
    """The server's segment as the switch sends it to the client (the client reads only what it checks:
    the SYN-ACK's ack number, the data's sequence number)."""
    frame = E / IP(src=VIP, dst=syn.underlayer.src) / TCP(sport=PORT, dport=syn.sport, flags=flags, seq=seq,
                                                                 ack=syn.seq + 1, window=502)
    clients.answer(raw(frame / payload), ts, LINKTYPE_ETHERNET)


def handshake(clients: Clients) -> tuple[TCP, int]:
    """SYN out, SYN-ACK in, then the client's ACK and request out; returns the SYN and the request's time."""
    frame, ts, _ = clients.next_packet()
    syn = Ether(frame)[TCP]
    assert syn.flags == "S"
    answer(clients, syn, ts + 1000, "SA", SERVER_ISN)
    ack_frame, ack_ts, _ = clients.next_packet()
    assert Ether(ack_frame)[TCP].flags == "A" and Ether(ack_frame)[TCP].ack == SERVER_ISN + 1
    request_frame, request_ts, _ = clients.next_packet()
    request = Ether(request_frame)[TCP]
    assert request.flags == "PA" and bytes(request.payload).startswith(b"GET ")
    return syn, request_ts


def response(body: bytes, header_name: bytes = b"Content-Length", extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" + extra + header_name + b": "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3100), max_size=6),
       name=st.sampled_from([b"Content-Length", b"content-length", b"CONTENT-LENGTH", b"Content-length"]),
       extra=st.sampled_from([b"", b"X-Content-Length-Note: 12\r\n", b"Connection: keep-alive\r\n"]))
def test_an_answer_split_anywhere_is_read_whole_once(body, cuts, name, extra):
    clients = one_client()
    syn, request_ts = handshake(clients)
    data = response(body, name, extra)
    points = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    seq = SERVER_ISN + 1
    for k, (a, b) in enumerate(zip(points, points[1:], strict=False)):
        answer(clients, syn, request_ts + 1000 * (k + 1), "A", seq, data[a:b])
        seq += b - a
    times = clients.response_times()
    assert len(times) == 1 and times[0][1] == 1000 * (len(points) - 1), times
    assert clients.stray == 0


@settings(max_examples=150, deadline=None)
@given(garbage=st.binary(max_size=200))
def test_garbage_and_packets_for_nobody_are_stray(garbage):
    clients = one_client()
    syn, request_ts = handshake(clients)
    clients.answer(garbage or b"\x00", request_ts + 1, LINKTYPE_ETHERNET)
    stranger = E / IP(src=VIP, dst="192.0.2.99") / TCP(sport=PORT, dport=1234, flags="A")
    clients.answer(raw(stranger), request_ts + 2, LINKTYPE_ETHERNET)
    assert clients.stray >= 1 and clients.response_times() == []


def test_an_answer_out_of_sequence_is_not_read():
    clients = one_client()
    syn, request_ts = handshake(clients)
    data = response(b"hello")
    answer(clients, syn, request_ts + 1000, "A", SERVER_ISN + 5, data)     # a gap before it
    assert clients.response_times() == [] and clients.stray == 1
    answer(clients, syn, request_ts + 2000, "A", SERVER_ISN + 1, data)
    assert len(clients.response_times()) == 1


def test_a_refused_syn_and_an_unanswered_one():
    clients = one_client()
    frame, ts, _ = clients.next_packet()
    syn = Ether(frame)[TCP]
    answer(clients, syn, ts + 1000, "RA", 0)
    assert clients.failures()["refused"] == 1
    lonely = one_client()
    times = []
    while (packet := lonely.next_packet()) is not None:
        times.append(packet[1])
    # the SYN and its six retransmissions, 1 s doubled each time (Linux: tcp_syn_retries = 6)
    assert [round((t - times[0]) / 1e9) for t in times] == [0, 1, 3, 7, 15, 31, 63]
    assert lonely.failures()["timed_out"] == 1 and lonely.syn_retransmits == 6


@pytest.mark.parametrize("rtt", [0.0, 0.002])
def test_the_response_time_counts_the_round_trip(rtt):
    clients = one_client(rtt)
    syn, request_ts = handshake(clients)
    answer(clients, syn, request_ts + 5_000_000, "PA", SERVER_ISN + 1, response(b"x" * 10))
    assert clients.response_times()[0][1] == 5_000_000 + round(rtt * 1e9)
