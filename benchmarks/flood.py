"""Overload figures: a SYN flood against a full table, and keys crafted to collide in the flow index.

    python benchmarks/flood.py [--syns 1000000] [--table 10000] [--established 1000] [--seed 1]

SYN flood: `--established` flows complete their handshake, then `--syns` SYNs from random sources
arrive (batches of 65,536, 100k SYNs per second of packet time) while the established flows go on
talking both ways (one of their packets per 64 flood packets). Printed: the established packets
translated, the flood's packets per second (in-memory datapath, one core), drops by reason,
evictions, and the table's memory against the resident size of the process. Then a shorter flood
against a table full of established flows: nothing may be evicted, every SYN is a table_full drop.

Hash flooding: the flow index is keyed with a secret (SipHash-1-3). With a fixed --seed the secret
is known, so an attacker can brute-force client address:port pairs whose forward keys land in one
narrow window of home slots (`hash_key`, as lookups compute it). For those keys, random keys, and
the same crafted keys against another secret (--seed + 1): flows accepted and refused (counted as
probe_limit), probe lengths, and lookup rates for hits (their flows' ACKs) and misses (ACKs of flows
that do not exist: every one a full probe run, then a tcp_not_syn drop).
"""
from __future__ import annotations

import argparse
import os
import random
import socket
import struct
import sys
import time
from collections import Counter

from l4emu import config as configmod
from l4emu.datapath._batch import NS, Batch
from l4emu.datapath._flowtable import PROBE_LIMIT
from l4emu.switch import Switch

from bench import resident_bytes  # a sibling script: benchmarks/ is on sys.path when run

BATCH = 65_536
VIP, VPORT = "10.0.0.100", 80
REALS = [(f"10.1.0.{k}", 8080) for k in range(1, 5)]
SYN, ACK, PSH_ACK, SYN_ACK = 0x02, 0x10, 0x18, 0x12


def make_switch(table: int, seed: int) -> Switch:
    document = configmod.from_flags([f"{VIP}:{VPORT}/tcp"], [f"{ip}:{port}" for ip, port in REALS], "rr", {"rr"})
    document["table"] = {"max_connections": table}
    return Switch(configmod.from_dict(document, {"rr"}), seed=seed)


def _template() -> bytearray:
    """Ethernet + IPv4 + TCP (20 bytes) to the VIP; header checksums are not the datapath's business."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, socket.inet_aton("172.16.0.1"), socket.inet_aton(VIP))
    tcp = struct.pack("!HHIIBBHHH", 1024, VPORT, 1, 0, 5 << 4, SYN, 65535, 0, 0)
    return bytearray(b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00" + ip + tcp)


TEMPLATE = _template()


def client_frame(addr: int, port: int, flags: int) -> bytes:
    frame = TEMPLATE[:]
    frame[26:30] = addr.to_bytes(4, "big")
    frame[34:36] = port.to_bytes(2, "big")
    frame[47] = flags
    return bytes(frame)


def real_frame(real: int, addr: int, port: int, flags: int) -> bytes:
    ip, rport = REALS[real]
    frame = TEMPLATE[:]
    frame[26:30] = socket.inet_aton(ip)
    frame[30:34] = addr.to_bytes(4, "big")
    frame[34:38] = struct.pack("!HH", rport, port)
    frame[47] = flags
    return bytes(frame)


def run(switch: Switch, frames, t_ns: int, step_ns: int = 0):
    """Process frames in one batch; (seconds in the datapath, batch)."""
    batch = Batch.from_frames(frames, 1, [t_ns + k * step_ns for k in range(len(frames))])
    started = time.perf_counter()
    switch.process(batch)
    return time.perf_counter() - started, batch


def syn_flood(syns: int, table: int, established: int, seed: int) -> None:
    rng = random.Random(seed)
    switch = make_switch(table, seed)
    clients = [(0x0A640000 + k, 10000 + k % 50000) for k in range(established)]
    _, batch = run(switch, [client_frame(a, p, SYN) for a, p in clients], NS)
    reals = [batch.result(k)[1] for k in range(established)]
    run(switch, [real_frame(r, a, p, SYN_ACK) for r, (a, p) in zip(reals, clients)], NS)
    run(switch, [client_frame(a, p, ACK) for a, p in clients], NS)
    assert switch.stats()["connections"] == established
    table_bytes, resident = switch.table_info()["memory_bytes"], []
    step = NS // 100_000                          # 100k SYNs per second of packet time
    t, sent, seconds, est_total, est_ok, total = 2 * NS, 0, 0.0, 0, 0, 0
    turn = 0
    while sent < syns:
        frames, est_at = [], []
        while len(frames) < BATCH and sent < syns:
            if len(frames) % 64 == 63:          # an established flow's packet, client and real in turn
                k = turn % established
                a, p = clients[k]
                est_at.append(len(frames))
                frames.append(client_frame(a, p, PSH_ACK) if turn // established % 2 == 0
                              else real_frame(reals[k], a, p, PSH_ACK))
                turn += 1
            else:
                frames.append(client_frame(rng.getrandbits(32), rng.randrange(1024, 65536), SYN))
                sent += 1
        took, batch = run(switch, frames, t, step)
        t += len(frames) * step
        seconds += took
        total += len(frames)
        est_total += len(est_at)
        est_ok += sum(batch.result(i)[0] in ("forward", "reply") for i in est_at)
        del frames, batch
        resident.append(resident_bytes())
    stats = switch.stats()
    print(f"SYN flood: {syns:,} SYNs from random sources, table of {table:,}, {established:,} established flows talking")
    print(f"  established packets translated: {est_ok:,} of {est_total:,} ({100 * est_ok / est_total:.2f}%)")
    print(f"  flood throughput:  {total / seconds:,.0f} packets/s in the datapath ({total:,} packets, {seconds:.2f} s)")
    print(f"  verdicts: new {stats['new']:,}, forward {stats['forward']:,}, reply {stats['reply']:,}, "
          f"dropped {stats['dropped_total']:,} {stats['dropped'] or ''}")
    print(f"  evictions (half-open, oldest first): {stats['evicted']:,}; expired {stats['expired']:,}; "
          f"table {stats['connections']:,} of {table:,} (peak {stats['peak_connections']:,})")
    print(f"  memory: the table allocates {table_bytes / 1e6:.2f} MB ({table_bytes / table:.0f} bytes per entry) "
          f"at start and never more;\n          process resident between batches: {min(resident) / 1e6:.1f} to "
          f"{max(resident) / 1e6:.1f} MB over {len(resident)} batches (first {resident[0] / 1e6:.1f}, "
          f"last {resident[-1] / 1e6:.1f})")


def crafted_clients(switch: Switch, count: int, window: int, first_slot: int):
    """Clients whose forward key's home slot is in [first_slot, first_slot + window): brute force."""
    vip = socket.inet_aton(VIP)
    mask, found, k = switch.table_info()["slots"] - 1, [], 0
    while len(found) < count:
        addr, port = 0xC6120000 + k // 60000, 1024 + k % 60000
        if (switch.hash_key(addr.to_bytes(4, "big"), vip, port, VPORT, 6) - first_slot) & mask < window:
            found.append((addr, port))
        k += 1
    return found, k


def probe_summary(switch: Switch) -> str:
    hist = switch.probe_lengths()
    n = sum(hist.values())
    mean = sum(k * v for k, v in hist.items()) / n
    return f"max {max(hist)}, mean {mean:.2f}"


def lookup_rate(switch: Switch, clients, flags: int, t_ns: int, rounds: int = 5):
    """Packets per second for BATCH packets cycling over the clients (best of `rounds`); verdicts."""
    frames = [client_frame(*clients[k % len(clients)], flags) for k in range(BATCH)]
    best, verdicts = None, Counter()
    for r in range(rounds):
        took, batch = run(switch, frames, t_ns + r)
        best = took if best is None else min(best, took)
        if r == 0:
            verdicts = Counter(v for v, _ in batch.results())
    return BATCH / best, verdicts


def hash_flood(keys: int, table: int, seed: int, window: int) -> None:
    print(f"hash flooding: {keys:,} keys against a table of {table:,} "
          f"({make_switch(table, seed).table_info()["slots"]:,} index slots, probe bound {PROBE_LIMIT})")
    started = time.perf_counter()
    aimed, tries = crafted_clients(make_switch(table, seed), 2 * keys, window, first_slot=4096)
    print(f"  crafting: {2 * keys:,} keys with home slots in one window of {window}, found in {tries:,} tries "
          f"({time.perf_counter() - started:.1f} s), knowing the secret of --seed {seed}")
    rng = random.Random(seed)
    randoms = [(rng.getrandbits(32), rng.randrange(1024, 65536)) for _ in range(2 * keys)]
    print(f"  {'':30} {'accepted':>8} {'refused':>8} {'index probes':>18} {'hits/s':>12} {'misses/s':>12}")
    # Each set: the first half is offered as SYNs; the ACKs of its accepted flows are the hits; ACKs
    # of the second half (flows that do not exist, aimed like the first) are the misses.
    for label, clients, s in (("random keys", randoms, seed), ("crafted keys", aimed, seed),
                              ("crafted keys, another secret", aimed, seed + 1)):
        switch = make_switch(table, s)
        _, batch = run(switch, [client_frame(a, p, SYN) for a, p in clients[:keys]], NS)
        accepted = [c for c, (v, _) in zip(clients, batch.results()) if v == "new"]
        stats = switch.stats()
        refused = stats["dropped"].get("probe_limit", 0)
        assert refused == stats["insert_failed"] == keys - len(accepted), stats
        hits, verdicts = lookup_rate(switch, accepted, ACK, 2 * NS)
        assert set(verdicts) == {"forward"}, verdicts
        misses, verdicts = lookup_rate(switch, clients[keys:], ACK, 3 * NS)
        assert set(verdicts) == {"drop"}, verdicts
        print(f"  {label:30} {len(accepted):>8,} {refused:>8,} {probe_summary(switch):>18} {hits:>12,.0f} "
              f"{misses:>12,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--syns", type=int, default=1_000_000)
    parser.add_argument("--table", type=int, default=10_000)
    parser.add_argument("--established", type=int, default=1_000)
    parser.add_argument("--keys", type=int, default=1_000, help="keys per set in the hash-flooding figure")
    parser.add_argument("--window", type=int, default=32, help="home slots the crafted keys aim at")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"l4emu overload figures, Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    syn_flood(args.syns, args.table, args.established, args.seed)
    syn_flood(min(args.syns, 100_000), args.table, args.table, args.seed)    # nothing half-open to evict
    hash_flood(args.keys, args.table, args.seed, args.window)


if __name__ == "__main__":
    main()
