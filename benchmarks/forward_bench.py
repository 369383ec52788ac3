"""Each forwarding method's cost per packet beside masq (NAT), in one run, at three packet sizes.

    python benchmarks/forward_bench.py [--flows 10000] [--rounds 101] [--only methods|fragments]

The in-memory datapath (one core, no file I/O) on a warm table of established flows: for each
method, a switch whose one service reaches its reals by that method takes the clients' ACKs of
`--flows` flows in batches of 4,096 packets filled as the capture reader fills them (with headroom:
a tunnel prepends its headers in place), spread over the whole table. Each round starts from a
fresh copy of the batch (the copy is not timed), methods in turn round by round. The service's MTU
is 9000 (a jumbo-frame network between switch and reals, as Katran assumes), so that every size
is forwarded, never answered with an ICMP error. It prints the median ns per packet of the rounds
and the ratio to masq at the same size. Full-NAT takes its local ports from four local addresses;
"fullnat" times the ACKs of flows whose SYN-ACK the switch has not seen (no TOA to write, as for
every packet past the first exchange), "fullnat + TOA" those of flows whose SYN-ACK it has seen, so
that every ACK gets the option (DPVS writes it into each packet that acknowledges the SYN-ACK).

Then fragments (docs/forwarding.md#fragments-for-a-vip): ns per datagram of 3,000 bytes in three
IPv4 fragments to a UDP service of dr reals, for `3tuple` and for `track` (fragments in order, and
reversed so that two wait for their first) and for `reassemble` (Linux's defragmentation: the
datagram rebuilt, scheduled whole and fragmented again as it came), beside the same datagram
unfragmented; then the same at 256, 1,024 and 4,096 datagrams a batch, which must cost the same per
datagram (a datagram written as several packets takes new batch slots in O(1): Batch.insert).

Last, a fragment flood against `reassemble`: `--flood` fragments (default 1,000,000) of datagrams
that never complete, ten each, 64 bytes, in batches of 100,000 with one established flow's packet
at the end of each: the reassembly memory held (never past ipfrag_high_thresh, 4 MiB), the
fragments dropped over it, the flow's packets forwarded, and ns per flood fragment.
"""
from __future__ import annotations

import argparse
import statistics
import struct
import time

from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from l4emu import config as configmod
from l4emu.datapath._batch import DEFAULT_HEADROOM, NS, Batch
from l4emu.datapath._datapath import DROP_REASONS
from l4emu.switch import Switch

VIP, PORT = "10.0.0.100", 80
REALS = [f"10.1.0.{k}:{PORT}" for k in range(1, 5)]
SIZES = (64, 576, 1500)         # IP packet bytes
BATCH = 4096                    # the capture reader's batch
JUMBO_MTU = 9000
LOCALS = [f"10.0.0.{k}" for k in range(11, 15)]     # fullnat: 4 x 64,511 ports, for 200k flows
METHODS = {
    "masq": {},
    "dr": {"forward": "dr", "mac": "02:00:00:00:00:01"},
    "tun ipip": {"forward": "tun"},
    "tun gue": {"forward": "tun", "tun_type": "gue", "tun_port": 6080},
    "tun gue csum": {"forward": "tun", "tun_type": "gue", "tun_port": 6080, "tun_flags": "csum"},
    "tun gre": {"forward": "tun", "tun_type": "gre"},
    "tun katran": {"forward": "tun", "encap": "katran"},
    "fullnat": {"forward": "fullnat", "local_addresses": LOCALS},
    "fullnat + TOA": {"forward": "fullnat", "local_addresses": LOCALS, "answered": True},
}


def method_switch(method: dict, flows: int) -> Switch:
    document = {"table": {"max_connections": max(flows, 1 << 16)},
                "service": [{"vip": f"{VIP}:{PORT}", "mtu": JUMBO_MTU, "source_address": "10.0.0.2",
                             "real": [{"address": real, **method} for real in REALS]}]}
    return Switch(configmod.from_dict(document, {"rr"}), seed=1)


def flow_frames(n: int, flags: str, size: int) -> list[bytes]:
    """n client -> VIP frames of `size` IP bytes, one per flow (client 172.16.x.y, distinct ports); an ACK
    acknowledges sequence number 1 (the SYN-ACKs below send 0)."""
    template = bytearray(bytes(Ether() / IP(src="172.16.0.1", dst=VIP, flags="DF")
                               / TCP(sport=1024, dport=PORT, flags=flags, ack=1 if "A" in flags else 0)
                               / Raw(bytes(max(0, size - 40)))))
    frames = []
    for k in range(n):
        frame = bytearray(template)
        frame[26:30] = struct.pack("!I", 0xAC100000 + (k >> 14))
        frame[34:36] = struct.pack("!H", 1024 + (k & 0x3FFF))
        frame[24:26] = b"\0\0"                      # IPv4 checksum again, for the new source
        frame[24:26] = struct.pack("!H", ~_sum(frame[14:34]) & 0xFFFF)
        frames.append(bytes(frame))
    return frames


def synacks(syns: Batch) -> list[bytes]:
    """Each real's SYN-ACK (sequence number 0) to the SYN the switch sent it: addresses and ports swapped."""
    frames = []
    for i in range(len(syns)):
        frame = bytearray(syns.packet(i))
        frame[26:34] = frame[30:34] + frame[26:30]
        frame[34:38] = frame[36:38] + frame[34:36]
        frame[38:42] = bytes(4)
        frame[47] = 0x12
        frame[50:52] = b"\0\0"
        pseudo = frame[26:34] + struct.pack("!HH", 6, len(frame) - 34)
        frame[50:52] = struct.pack("!H", ~_sum(pseudo + frame[34:]) & 0xFFFF)
        frames.append(bytes(frame))
    return frames


def _sum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


class Case:
    """One method at one size: a switch with a warm table and the batch of ACKs it is timed on."""

    def __init__(self, method: dict, flows: int, size: int):
        method = dict(method)
        answered = method.pop("answered", False)
        self.switch = method_switch(method, flows)
        syns = Batch.from_frames(flow_frames(flows, "S", 40), 1, [NS] * flows)
        self.switch.process(syns)
        if answered:
            self.switch.process(Batch.from_frames(synacks(syns), 1, [NS] * flows))
        acks = flow_frames(flows, "A", size)
        self.template = Batch(BATCH, BATCH * (len(acks[0]) + DEFAULT_HEADROOM))    # as the capture reader fills it
        for k in range(BATCH):
            self.template.append(acks[(k * 7919) % flows], 2 * NS)
        self.work = Batch(BATCH)
        self.times: list[float] = []

    def run(self) -> None:
        self.work.copy_from(self.template)
        started = time.perf_counter()
        self.switch.process(self.work)
        self.times.append(time.perf_counter() - started)
        verdicts = {self.work.result(i)[0] for i in range(0, BATCH, 997)}
        assert verdicts == {"forward"}, verdicts

    def ns(self) -> float:
        return statistics.median(self.times) / BATCH * 1e9


FRAG_DATAGRAMS = 1024           # datagrams per batch (each from its own client)


def fragment_frames(policy: str, reverse: bool, datagrams: int = FRAG_DATAGRAMS) -> list[bytes]:
    """One 3,000-byte datagram per client, whole (policy "none") or in three fragments."""
    frames = []
    for k in range(datagrams):
        datagram = (IP(src=f"172.16.{k >> 8}.{k & 0xFF}", dst=VIP, id=k) / UDP(sport=1024 + k, dport=53)
                    / bytes(3000 - 28))
        pieces = [datagram] if policy == "none" else fragment(datagram, fragsize=1400)
        frames += [bytes(Ether() / piece) for piece in (pieces[::-1] if reverse else pieces)]
    return frames


def fragment_setup(policy: str, reverse: bool, datagrams: int = FRAG_DATAGRAMS):
    """The config, the filled template batch and a work batch for one fragment case."""
    document = {"table": {"max_connections": 4 * max(datagrams, FRAG_DATAGRAMS)},   # small: not page faults
                "service": [{"vip": f"{VIP}:53", "protocol": "udp", "mtu": JUMBO_MTU,
                             "fragments": "drop" if policy == "none" else policy,
                             "real": [{"address": f"10.1.0.{k}:53", "forward": "dr", "mac": "02:00:00:00:00:01"}
                                      for k in range(1, 5)]}]}
    config = configmod.from_dict(document, {"rr"})
    frames = fragment_frames(policy, reverse, datagrams)
    template = Batch(len(frames), sum(len(frame) + DEFAULT_HEADROOM for frame in frames))   # room for every one
    for frame in frames:
        if not template.append(frame, 2 * NS):
            raise RuntimeError("the template batch is full")
    return config, template, Batch(len(frames))


def fragment_round(config, template: Batch, work: Batch, clock=time.perf_counter) -> float:
    """One timed batch on a fresh switch (track remembers datagrams); its verdicts checked."""
    switch = Switch(config, seed=1)
    work.copy_from(template)
    started = clock()
    switch.process(work)
    elapsed = clock() - started
    held = ("drop", DROP_REASONS.index("fragment_held"))      # reversed: waited, then written after the first
    verdicts = {work.result(i) if work.result(i) == held else work.result(i)[0] for i in range(len(work))}
    assert verdicts <= {"new", "forward", "more", held}, (verdicts, switch.stats()["dropped"])
    return elapsed


def fragment_case(policy: str, reverse: bool, rounds: int, datagrams: int = FRAG_DATAGRAMS) -> float:
    """ns per datagram, median of `rounds` batches."""
    config, template, work = fragment_setup(policy, reverse, datagrams)
    times = [fragment_round(config, template, work) for _ in range(rounds)]
    return statistics.median(times) / datagrams * 1e9


BATCH_SIZES = (256, 1024, 4096)     # datagrams per batch: the cost per datagram must not grow with it


def fragment_scaling(rounds: int) -> None:
    """ns per datagram at three batch sizes, all cases in turn round by round (the machine's drift hits
    them alike), each beside the unfragmented datagram at the same size. Timed in the thread's CPU
    time: a shared machine's preemption would otherwise outweigh what is measured."""
    cases = {(policy, reverse, n): fragment_setup(policy, reverse, n)
             for policy, reverse in (("none", False), ("track", True), ("reassemble", False)) for n in BATCH_SIZES}
    times: dict = {key: [] for key in cases}
    for _ in range(rounds):
        for key, case in cases.items():
            times[key].append(fragment_round(*case, clock=time.thread_time))
    ns = {key: statistics.median(row) / key[2] * 1e9 for key, row in times.items()}
    print(f"  the same by datagrams per batch (median of {rounds} batches, thread CPU time), ratio to unfragmented at that size")
    for policy, reverse in (("none", False), ("track", True), ("reassemble", False)):
        label = {"none": "unfragmented"}.get(policy, policy) + (", reversed" if reverse else "")
        print(f"  {label:<22}" + "".join(f"{n:>6} {ns[policy, reverse, n]:>8.1f} ns "
                                         f"{ns[policy, reverse, n] / ns['none', False, n]:>5.2f}x"
                                         for n in BATCH_SIZES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=101)
    parser.add_argument("--flood", type=int, default=1_000_000, help="fragments in the flood (default 1,000,000)")
    parser.add_argument("--only", choices=("methods", "fragments"), help="run one part (and no flood)")
    args = parser.parse_args()
    if args.only == "fragments":
        fragment_scaling(args.rounds)
        return
    print(f"forwarding methods, ns per packet (median of {args.rounds} batches of {BATCH:,}, "
          f"warm table of {args.flows:,} flows), ratio to masq")
    print(f"  {'method':<14}" + "".join(f"{f'{size} B':>20}" for size in SIZES))
    results: dict[str, list[float]] = {name: [] for name in METHODS}
    for size in SIZES:          # methods in turn, round by round: the machine's drift hits them alike
        cases = {name: Case(method, args.flows, size) for name, method in METHODS.items()}
        for _ in range(args.rounds):
            for case in cases.values():
                case.run()
        for name, case in cases.items():
            results[name].append(case.ns())
    for name, row in results.items():
        cells = [f"{ns:>10.1f} ns {ns / masq:>5.2f}x" for ns, masq in zip(row, results["masq"], strict=True)]
        print(f"  {name:<14}" + "".join(f"{cell:>20}" for cell in cells))
    if args.only == "methods":
        return
    print(f"fragments, ns per 3,000-byte datagram (three IPv4 fragments; median of {args.rounds} batches of "
          f"{FRAG_DATAGRAMS:,} datagrams), ratio to the datagram unfragmented")
    whole = fragment_case("none", False, args.rounds)
    print(f"  {'unfragmented':<22}{whole:>10.1f} ns  1.00x")
    for policy, reverse in (("3tuple", False), ("track", False), ("track", True), ("reassemble", False),
                            ("reassemble", True)):
        ns = fragment_case(policy, reverse, args.rounds)
        label = f"{policy}" + (", reversed" if reverse else "")
        print(f"  {label:<22}{ns:>10.1f} ns {ns / whole:>5.2f}x")
    fragment_scaling(args.rounds)
    flood(args.flood)


FLOOD_BATCH = 100_000


def flood(fragments: int) -> None:
    """`fragments` fragments of never-completed datagrams against a reassemble service."""
    document = {"service": [{"vip": f"{VIP}:53", "protocol": "udp", "fragments": "reassemble",
                             "real": [{"address": "10.1.0.1:53"}]}]}
    switch = Switch(configmod.from_dict(document, {"rr"}), seed=1)
    flow = bytes(Ether() / IP(src="172.16.9.9", dst=VIP) / UDP(sport=7, dport=53) / b"q")
    templates = [bytearray(bytes(Ether() / IP(src="172.16.0.1", dst=VIP, proto=17, flags="MF", frag=8 * k)
                                 / Raw(bytes(64)))) for k in range(10)]
    elapsed, sent, forwarded = 0.0, 0, 0
    while sent < fragments:
        batch = Batch(FLOOD_BATCH + 1, (FLOOD_BATCH + 1) * (len(templates[0]) + DEFAULT_HEADROOM))
        for k in range(min(FLOOD_BATCH, fragments - sent)):
            frame, datagram = templates[k % 10], (sent + k) // 10
            struct.pack_into("!H", frame, 18, datagram & 0xFFFF)
            frame[26:30] = bytes([172, 17, datagram >> 16 & 0xFF, 1])     # past 65,536 datagrams IDs repeat
            frame[24:26] = b"\0\0"
            struct.pack_into("!H", frame, 24, ~_sum(bytes(frame[14:34])) & 0xFFFF)
            batch.append(bytes(frame), NS + sent + k)
        batch.append(flow, NS + sent + FLOOD_BATCH)
        started = time.perf_counter()
        switch.process(batch)
        elapsed += time.perf_counter() - started
        forwarded += batch.result(len(batch) - 1)[0] in ("new", "forward")
        sent += len(batch) - 1
    stats = switch.stats()
    print(f"fragment flood against reassemble: {sent:,} fragments of {sent // 10:,} never-completed datagrams")
    print(f"  reassembly memory: peak {stats['reasm_peak_memory']:,} B, at the end {stats['reasm_memory']:,} B "
          f"(ipfrag_high_thresh {switch.config.defrag.ipfrag_high_thresh:,} B) in {stats['reasm_queues']:,} queues")
    print(f"  fragments dropped over the limit: {stats['reasm_over_memory']:,}; established flow: {forwarded} of "
          f"{-(-sent // FLOOD_BATCH)} packets forwarded, {stats['connections']} connection(s)")
    print(f"  {elapsed / sent * 1e9:.1f} ns per flood fragment")

if __name__ == "__main__":
    main()
