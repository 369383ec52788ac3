"""A growing connection index (a cluster's instances: Switch(grow_index=True)) decides as the whole one.

The index starts at 1024 slots and doubles as flows come, keeping its load at most 0.5; every packet
gets the verdict, the bytes and the table the index allocated at max_connections gives, through the
growths, the expiries (backward-shift deletes) and a reopened table.
"""
from __future__ import annotations

import random
import struct

from scapy.all import IP, TCP, Ether

from conftest import Harness, make_switch, service_toml
from l4emu.switch import Switch

FLOWS = 1200            # 4,800 index slots and more: three doublings past the first 1024
MIN_INDEX_SLOTS = 1024


def frames(rng: random.Random, flows: int):
    """Each flow's SYN, then its ACK and FIN, the flows interleaved; the clients' addresses random."""
    clients = [(struct.pack("!I", rng.getrandbits(32)), rng.randrange(1024, 65536)) for _ in range(flows)]
    out = []
    for flags in ("S", "A", "FA"):
        for addr, port in clients:
            ip = ".".join(str(b) for b in addr)
            out.append(Ether() / IP(src=ip, dst="10.0.0.100") / TCP(sport=port, dport=80, flags=flags))
    return out


def test_a_growing_index_decides_every_packet_as_the_whole_one(tmp_path):
    whole = make_switch(service_toml() + "[table]\nmax_connections = 100000\n", tmp_path)
    growing = Switch(whole.config, seed=1, grow_index=True)
    assert growing.table_info()["slots"] == MIN_INDEX_SLOTS < whole.table_info()["slots"]
    rng = random.Random(14)
    batch = frames(rng, FLOWS)
    times = [1.0 + i * 1e-4 for i in range(len(batch))]
    late = frames(rng, FLOWS // 3)          # after the first flows expired: deletes, then growth again
    late_times = [1000.0 + i * 1e-4 for i in range(len(late))]
    a, b = Harness(whole), Harness(growing)
    assert a.run(batch, times_s=times) == b.run(batch, times_s=times)
    assert growing.table_info()["slots"] >= 4 * growing.table_info()["used"] > MIN_INDEX_SLOTS
    assert a.run(late, times_s=late_times) == b.run(late, times_s=late_times)
    assert whole.table_info()["used"] == growing.table_info()["used"]
    assert whole.table_info()["memory_bytes"] == growing.table_info()["memory_bytes"]     # at capacity
