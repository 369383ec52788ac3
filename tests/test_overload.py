"""Overload: a SYN flood against a full table, colliding keys against the index, non-SYNs without a flow.

A flood may take only what was never established: half-open entries go first, oldest first, and an
established flow keeps being translated. Keys aimed at one index slot find a bounded probe run and
are refused (counted as probe_limit) once it is full; another secret spreads the same keys out.
"""
from __future__ import annotations

import random
import socket
import struct

import pytest
from scapy.all import IP, TCP, Ether, raw

from conftest import Harness, make_switch, service_toml
from l4emu.datapath._flowtable import PROBE_LIMIT

VIP = "10.0.0.100"
REALS = ("10.1.0.1:8080", "10.1.0.2:8080")
E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
TEMPLATE = bytearray(raw(E / IP(src="172.16.0.1", dst=VIP) / TCP(sport=1024, dport=80, flags="S")))


def config(max_connections: int, sloppy: bool = False) -> str:
    table = f"[table]\nmax_connections = {max_connections}\nsloppy_tcp = {str(sloppy).lower()}\n"
    return table + service_toml(VIP + ":80", REALS)


def client_frame(addr: int, port: int, flags: int = 0x02) -> bytes:
    """A TCP segment client -> VIP:80 (checksums are not the datapath's business here)."""
    frame = bytearray(TEMPLATE)
    frame[26:30] = struct.pack("!I", addr)
    frame[34:36] = struct.pack("!H", port)
    frame[47] = flags
    return bytes(frame)


def real_frame(real: str, addr: int, port: int, flags: int = 0x12) -> bytes:
    """A TCP segment real -> client, as a reply on the client's flow."""
    ip, rport = real.split(":")
    frame = bytearray(TEMPLATE)
    frame[26:30] = socket.inet_aton(ip)
    frame[30:34] = struct.pack("!I", addr)
    frame[34:36] = struct.pack("!H", int(rport))
    frame[36:38] = struct.pack("!H", port)
    frame[47] = flags
    return bytes(frame)


def dotted(addr: int) -> str:
    return socket.inet_ntoa(struct.pack("!I", addr))


def establish(harness: Harness, clients, t: float):
    """SYN, SYN-ACK from the chosen real, ACK: the flows are ESTABLISHED (assured); returns their reals."""
    results = harness.run([client_frame(a, p) for a, p in clients], times_s=[t] * len(clients))
    assert all(v == "new" for v, _, _ in results)
    reals = [REALS[d] for _, d, _ in results]
    replies = harness.run([real_frame(r, a, p) for r, (a, p) in zip(reals, clients)], times_s=[t] * len(clients))
    acks = harness.run([client_frame(a, p, 0x10) for a, p in clients], times_s=[t] * len(clients))
    assert {v for v, _, _ in replies} == {"reply"} and {v for v, _, _ in acks} == {"forward"}
    return reals


def test_a_syn_flood_never_evicts_established_flows(tmp_path):
    n, k, flood = 64, 16, 3000
    switch = make_switch(config(n), tmp_path)
    harness = Harness(switch)
    memory = switch.table_info()["memory_bytes"]
    established = [(0x0A630000 + i, 5000 + i) for i in range(k)]
    reals = establish(harness, established, 1.0)
    rng = random.Random(7)
    sources = [(rng.getrandbits(32), rng.randrange(1024, 65536)) for _ in range(flood)]
    frames, kinds, times = [], [], []
    for i, (addr, port) in enumerate(sources):
        frames.append(client_frame(addr, port))
        kinds.append("flood")
        if i % 100 == 99:                   # the established flows keep talking, both ways
            for j, (a, p) in enumerate(established):
                frames += [client_frame(a, p, 0x18), real_frame(reals[j], a, p, 0x18)]
                kinds += ["client", "real"]
    times = [2.0 + i * 1e-4 for i in range(len(frames))]     # 0.6 s of packet time: nothing times out
    results = harness.run(frames, times_s=times)
    by_kind = {kind: [v for (v, _, _), kk in zip(results, kinds) if kk == kind] for kind in ("flood", "client", "real")}
    assert set(by_kind["client"]) == {"forward"} and set(by_kind["real"]) == {"reply"}
    assert len(by_kind["client"]) == k * (flood // 100)
    assert set(by_kind["flood"]) == {"new"}             # always a half-open entry to make room with
    stats = switch.stats()
    assert stats["evicted"] == flood - (n - k) and stats["dropped"] == {}
    assert stats["connections"] == stats["peak_connections"] == n
    rows = switch.conntrack()
    assert sum(r["state"] == "ESTABLISHED" for r in rows) == k
    half_open = sorted(r["source"] for r in rows if r["state"] == "SYN_RECV")
    newest = sorted(f"{dotted(a)}:{p}" for a, p in sources[-(n - k):])
    assert half_open == newest                          # the oldest half-open went first
    assert switch.table_info()["memory_bytes"] == memory


def test_a_table_full_of_established_flows_refuses_new_ones_and_counts_them(tmp_path):
    switch = make_switch(config(8), tmp_path)
    harness = Harness(switch)
    clients = [(0x0A630000 + i, 6000 + i) for i in range(8)]
    establish(harness, clients, 1.0)
    results = harness.run([client_frame(0x0B000000 + i, 7000) for i in range(5)]
                          + [client_frame(a, p, 0x10) for a, p in clients], times_s=[2.0] * 13)
    assert [v for v, _, _ in results[:5]] == ["drop"] * 5
    assert {v for v, _, _ in results[5:]} == {"forward"}
    stats = switch.stats()
    assert stats["dropped"] == {"table_full": 5} and stats["evicted"] == 0 and stats["connections"] == 8


@pytest.mark.parametrize("sloppy", [False, True])
def test_a_non_syn_for_an_evicted_flow_follows_the_sloppy_tcp_policy(tmp_path, sloppy):
    """After eviction (or a restart), a flow's next segment finds no entry: dropped and counted as
    tcp_not_syn, or with sloppy_tcp (IPVS's sloppy_tcp, conntrack's tcp_loose) picked up as a new flow."""
    switch = make_switch(config(2, sloppy), tmp_path)
    harness = Harness(switch)
    first, second, third = [(0x0A000001 + i, 4000 + i) for i in range(3)]
    results = harness.run([client_frame(*first), client_frame(*second), client_frame(*third),
                           client_frame(*first, 0x10)], times_s=[1.0, 1.1, 1.2, 1.3])
    assert [v for v, _, _ in results[:3]] == ["new"] * 3 and switch.stats()["evicted"] >= 1
    verdict, detail, _ = results[3]
    if sloppy:
        assert verdict == "new"
    else:
        assert (verdict, switch.stats()["dropped"]) == ("drop", {"tcp_not_syn": 1})
    rst = harness.one(client_frame(0x0A0000FF, 4999, 0x04), t=1.4)    # a RST never opens a flow
    assert rst[0] == "drop"


def colliding_clients(switch, count: int, slot: int, start: int = 0):
    """Clients (address, port) whose forward key's home slot is `slot`: an attacker who knows the secret."""
    found, vip = [], bytes([10, 0, 0, 100])
    candidate = start
    while len(found) < count:
        addr, port = 0xC0000000 + candidate // 60000, 1024 + candidate % 60000
        if switch.hash_key(struct.pack("!I", addr), vip, port, 80, 6) % switch.table_info()["slots"] == slot:
            found.append((addr, port))
        candidate += 1
    return found


def test_colliding_keys_find_bounded_probes_and_counted_refusals(tmp_path):
    switch = make_switch(config(256), tmp_path, seed=1)
    clients = colliding_clients(switch, 120, slot=100)
    harness = Harness(switch)
    results = harness.run([client_frame(a, p) for a, p in clients], times_s=[1.0] * len(clients))
    accepted = [c for c, (v, _, _) in zip(clients, results) if v == "new"]
    refused = len(clients) - len(accepted)
    stats = switch.stats()
    assert 0 < len(accepted) <= PROBE_LIMIT and refused > 0
    assert stats["dropped"] == {"probe_limit": refused} and stats["insert_failed"] == refused
    assert stats["evicted"] == 0                        # a refusal never costs another flow its entry
    assert max(switch.probe_lengths()) <= PROBE_LIMIT
    again = harness.run([client_frame(a, p, 0x10) for a, p in accepted], times_s=[2.0] * len(accepted))
    assert {v for v, _, _ in again} == {"forward"}      # every accepted flow is still found
    other = make_switch(config(256), tmp_path, seed=2)   # another secret: the same keys spread out
    results = Harness(other).run([client_frame(a, p) for a, p in clients], times_s=[1.0] * len(clients))
    assert {v for v, _, _ in results} == {"new"} and other.stats()["insert_failed"] == 0
    assert max(other.probe_lengths()) < 16
