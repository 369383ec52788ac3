"""The hosts' engine at scale: timers on the packet clock, handles after churn, tables that forget.

Thousands of conversations through the emulate loop (raw frames, built here with struct: the engine
never checks a client's checksums), judged by counts, never by wall time.
"""
from __future__ import annotations

import heapq
import random
import struct

import pytest

from conftest import NS, make_switch
from l4emu.datapath._batch import Batch
from l4emu.emulate import BatchSink, Emulator
from l4emu.hosts._engine import FIRST_HANDLE

VIP = bytes([10, 0, 0, 100])
STEP_NS = 50_000                   # between two conversations
GAP_NS = 10_000                    # between a conversation's packets (its answers come 1 us apart before the next)
TIME_WAIT_NS = 60 * NS
CONFIG = """
[table]
max_connections = 262144
[[service]]
vip = "10.0.0.100:80"
  [[service.real]]
  address = "10.1.0.1:8080"
  emulated = true
  backlog = 65535
"""
CLOSE = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"
KEEP = b"GET / HTTP/1.1\r\n\r\n"
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01


def frame(client: int, sport: int, seq: int, flags: int, payload: bytes = b"") -> bytes:
    """Raw IPv4 (LINKTYPE_RAW) client -> VIP:80; the ACK number is re-stamped by the loop."""
    tcp = struct.pack("!HHIIBBHHH", sport, 80, seq & 0xFFFFFFFF, 0, 5 << 4, flags, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0,
                     struct.pack("!I", 0xAC100000 + client), VIP)
    return ip + tcp


class Clients:
    """Conversations from many clients, each packet at its own time, through one Emulator."""

    def __init__(self, tmp_path):
        self.switch = make_switch(CONFIG, tmp_path, 1)
        self.emulator = Emulator(self.switch)            # re-stamping on, no views
        self.engine = self.switch.hosts.engine
        self.frames: list[bytes] = []
        self.times: list[int] = []

    def queue(self, t: int, pkt: bytes) -> None:
        self.frames.append(pkt)
        self.times.append(t)

    def run(self) -> None:
        order = sorted(range(len(self.frames)), key=lambda k: self.times[k])
        batch = Batch.from_frames([self.frames[k] for k in order], 101, [self.times[k] for k in order])
        self.emulator.run(batch)
        self.frames, self.times = [], []

    def counters(self) -> dict:
        return self.switch.sockets()[0]["counters"]


def server_closes(clients: Clients, n: int, t0: int) -> list[int]:
    """n conversations where the server closes first (Connection: close), so it keeps TIME-WAIT;
    returns the moment each one's TIME-WAIT began (the client's last FIN)."""
    ends = []
    for k in range(n):
        client, sport, seq, t = k % 5000, 1024 + k // 5000, 1000 * k, t0 + k * STEP_NS
        clients.queue(t, frame(client, sport, seq, SYN))
        clients.queue(t + GAP_NS, frame(client, sport, seq + 1, ACK))
        clients.queue(t + 2 * GAP_NS, frame(client, sport, seq + 1, PSH | ACK, CLOSE))
        clients.queue(t + 3 * GAP_NS, frame(client, sport, seq + 1 + len(CLOSE), ACK))  # the answer and its FIN
        clients.queue(t + 4 * GAP_NS, frame(client, sport, seq + 1 + len(CLOSE), FIN | ACK))    # -> TIME-WAIT
        ends.append(t + 4 * GAP_NS)
    return ends


def test_twenty_thousand_time_waits_end_at_their_own_moments(tmp_path):
    clients = Clients(tmp_path)
    n = 20_000
    ends = server_closes(clients, n, NS)
    clients.run()
    assert clients.engine.memory()["connections"] == n
    assert clients.engine.memory()["timers"] == n                   # one deadline each, nothing stale
    assert clients.engine.next_deadline() == ends[0] + TIME_WAIT_NS
    for cut in (0, 1, 7_321, n - 1):                                 # right at a deadline, and just before
        moment = ends[cut] + TIME_WAIT_NS
        clients.emulator.advance(moment - 1)
        assert clients.counters().get("time_wait_ended", 0) == cut
        clients.emulator.advance(moment)
        assert clients.counters()["time_wait_ended"] == cut + 1
        assert clients.engine.memory()["connections"] == n - cut - 1
    assert clients.engine.next_deadline() is None
    assert clients.engine.memory()["peers"] == 0                    # no client has a connection left
    assert clients.emulator.restamp_entries() == 0                 # every conversation closed on both sides


def test_half_open_requests_expire_after_63_seconds_in_order(tmp_path):
    clients = Clients(tmp_path)
    for k in range(3000):
        clients.queue(NS + k * STEP_NS, frame(k, 2000, 7 * k, SYN))
    clients.run()
    rows = clients.switch.sockets()[0]["sockets"]
    assert sum(r["state"] == "SYN-RECV" for r in rows) == 3000 and rows[0]["syn_queue"] == 3000
    clients.emulator.advance(NS + 63 * NS + 1499 * STEP_NS)
    assert clients.counters()["syn_recv_expired"] == 1500
    assert clients.switch.sockets()[0]["sockets"][0]["syn_queue"] == 1500
    assert clients.engine.memory()["peers"] == 1500                 # the expired ones' clients are forgotten


def test_handles_after_churn_are_the_lowest_free_ones(tmp_path):
    """Thousands of connections opened and closed at random: every accepted one takes the lowest free
    number, as a min-heap model says (3 is the listener)."""
    clients = Clients(tmp_path)
    rng = random.Random(5)
    free: list[int] = []
    next_handle = FIRST_HANDLE + 1
    expected: dict[tuple, int] = {}
    open_ = []
    t = NS
    for k in range(4000):
        t += STEP_NS
        if open_ and rng.random() < 0.45:                          # the client resets one: its handle is free
            client, sport, seq = open_.pop(rng.randrange(len(open_)))
            clients.queue(t, frame(client, sport, seq, 0x04))
            heapq.heappush(free, expected.pop((client, sport)))
        else:
            client, sport, seq = k % 997, 3000 + k, 11 * k
            clients.queue(t, frame(client, sport, seq, SYN))
            clients.queue(t + GAP_NS, frame(client, sport, seq + 1, ACK))
            open_.append((client, sport, seq + 1))
            if free:
                expected[(client, sport)] = heapq.heappop(free)
            else:
                expected[(client, sport)], next_handle = next_handle, next_handle + 1
        clients.run()
    got = {}
    for row in clients.switch.sockets()[0]["sockets"]:
        if row["state"] == "ESTAB":
            address, port = row["peer"].rsplit(":", 1)
            got[(int.from_bytes(bytes(map(int, address.split("."))), "big") - 0xAC100000, int(port))] = row["handle"]
    assert got == expected and len(got) == len(open_)
    assert clients.switch.sockets()[0]["handles_in_use"] == len(open_) + 1


@pytest.mark.parametrize("keep_alive", [False, True])
def test_the_link_table_keeps_only_clients_with_connections(tmp_path, keep_alive):
    """How answers go back to a client is kept while it has a connection on some host, then dropped."""
    clients = Clients(tmp_path)
    for k in range(2000):
        t = NS + k * STEP_NS
        clients.queue(t, frame(k, 4000, 0, SYN))
        clients.queue(t + GAP_NS, frame(k, 4000, 1, ACK))
        clients.queue(t + 2 * GAP_NS, frame(k, 4000, 1, PSH | ACK, KEEP if keep_alive else CLOSE))
    clients.run()
    assert clients.engine.memory()["peers"] == 2000                 # every client has its connection
    for k in range(2000):
        t = NS + 2000 * STEP_NS + k * STEP_NS
        request = KEEP if keep_alive else CLOSE
        clients.queue(t, frame(k, 4000, 1 + len(request), FIN | ACK))
        clients.queue(t + GAP_NS, frame(k, 4000, 2 + len(request), ACK))
    clients.run()
    clients.emulator.advance(NS + 4000 * STEP_NS + TIME_WAIT_NS + 1)
    assert clients.engine.memory()["connections"] == 0
    assert clients.engine.memory()["peers"] == 0
    assert clients.emulator.restamp_entries() == 0


def test_live_intercept_answers_in_batches_and_forgets_the_links(tmp_path):
    """Live mode's path (switch.process, then Emulator.intercept, no re-stamping): each round's answers
    reach the sink as one Batch, and the link table keeps only clients that still have a connection."""
    switch = make_switch(CONFIG, tmp_path, 1)
    answers: list[int] = []
    emulator = Emulator(switch, outside=BatchSink(lambda batch: answers.append(len(batch))), restamp=False)
    engine = switch.hosts.engine
    n, t0 = 2000, NS

    def round_(frames: list[bytes], t: int) -> int:
        batch = Batch.from_frames(frames, 101, [t + k for k in range(len(frames))])
        switch.process(batch)
        taken = emulator.intercept(batch)
        emulator.flush()
        return taken

    assert round_([frame(k, 4000, 7 * k, SYN) for k in range(n)], t0) == n
    assert answers == [n]                                           # every SYN-ACK in one batch
    assert engine.memory()["peers"] == n and engine.memory()["connections"] == n
    # Half the clients give up: a RST in the window of their half-open request removes it.
    assert round_([frame(k, 4000, 7 * k + 1, 0x04) for k in range(0, n, 2)], t0 + NS) == n // 2
    assert answers == [n]                                           # a RST is not answered
    assert engine.memory()["peers"] == n // 2
    emulator.advance(t0 + 63 * NS + n)                              # the rest of the SYN queue expires
    assert switch.sockets()[0]["counters"]["syn_recv_expired"] == n // 2
    assert engine.memory()["peers"] == 0 and engine.memory()["connections"] == 0
