"""Emulated replay beside the batch path, in one run: packets/s counting answers, the cost per packet,
its scaling with open conversations, and the memory of an established emulated connection.

    python benchmarks/emulated_bench.py [--flows 200000] [--scaling 2000,20000,200000] [--memory 1000000]

The captures are client-only HTTP conversations (SYN, ACK, GET, ACK, FIN, ACK; the emulated real
answers SYN-ACK, the response and its FIN: 9 packets a conversation), written here in the style of
peers.make_bench_capture, so that about `open` conversations are open at once (each one's packets
are open/5 steps apart, 1 us a step). The batch path is replay() of the same capture with the same
four reals not emulated; both write -o to a file; each is timed in CPU seconds, best of --runs. The memory figure opens conversations (SYN, ACK,
no FIN) and reads the engine's own allocation and the process's resident growth.
"""

from __future__ import annotations

import argparse
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import (  # noqa: E402
    ACK,
    BENCH_REALS,
    BENCH_VIP,
    BENCH_VPORT,
    CLIENT_BASE,
    CLIENTS,
    EPOCH_S,
    FIN,
    PSH,
    REQUEST,
    SYN,
    _Shape,
)

from l4emu import config as configmod  # noqa: E402
from l4emu.emulate import Emulator  # noqa: E402
from l4emu.io import open_capture  # noqa: E402
from l4emu.replay import replay  # noqa: E402
from l4emu.switch import Switch  # noqa: E402

ANSWERS_PER_CONVERSATION = 3  # SYN-ACK, the response, the FIN
TABLE = 1 << 21  # the switch's connection table: room for a million open conversations and their ends


def conversation_script(established_only: bool = False) -> list[tuple[_Shape, int, int]]:
    """(shape, seq offset, ack offset) per client packet; the acks are re-stamped by the replay anyway."""
    syn, ack = _Shape(SYN, options=struct.pack("!BBH", 2, 4, 1460)), _Shape(ACK)
    if established_only:
        return [(syn, 0, 0), (ack, 1, 1)]
    get, fin = _Shape(PSH | ACK, REQUEST), _Shape(FIN | ACK)
    sent = 1 + len(REQUEST)
    return [(syn, 0, 0), (ack, 1, 1), (get, 1, 1), (ack, sent, 200), (fin, sent, 200), (ack, sent + 1, 201)]


def make_http_capture(path: Path, flows: int, open_at_once: int, established_only: bool = False) -> int:
    """Write the conversations (Ethernet, microsecond pcap, 1 us a packet); returns packets written."""
    script = conversation_script(established_only)
    spread = max(1, open_at_once // max(1, len(script) - 1))
    record = struct.Struct("<IIII").pack
    steps = [(sh.pack, sh.length, sh.ip_sum, sh.tcp_sum, *sh.fixed, dseq, dack) for sh, dseq, dack in script]
    written = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        out = []
        for step in range(flows + (len(steps) - 1) * spread):
            for j in range(min(len(steps), step // spread + 1)):
                flow = step - j * spread
                if flow >= flows:
                    continue
                src = CLIENT_BASE + flow % CLIENTS
                sport = 1024 + flow // CLIENTS
                c_isn = (flow * 2654435761) & 0xFFFFFFFF
                pack, length, ip_sum, tcp_sum, head, vip, vport, mid, tail, dseq, dack = steps[j]
                seq, ack = (c_isn + dseq) & 0xFFFFFFFF, dack
                out.append(record(EPOCH_S + written // 1_000_000, written % 1_000_000, length, length))
                out.append(
                    pack(head, -(ip_sum + src) % 0xFFFF, src, vip, sport, vport, seq, ack, mid,
                         -(tcp_sum + src + sport + seq + ack) % 0xFFFF, tail)
                )
                written += 1
            if len(out) > 65536:
                f.write(b"".join(out))
                out.clear()
        f.write(b"".join(out))
    return written


def config_file(workdir: Path, emulated: bool) -> Path:
    emulation = "  emulated = true\n  backlog = 65535\n" if emulated else ""  # room for every half-open request
    reals = "".join(f'  [[service.real]]\n  address = "{ip}:{port}"\n{emulation}' for ip, port in BENCH_REALS)
    path = workdir / ("emulated.toml" if emulated else "plain.toml")
    path.write_text(
        f'[table]\nmax_connections = {TABLE}\n[[service]]\nvip = "{BENCH_VIP}:{BENCH_VPORT}"\nscheduler = "rr"\n'
        + reals
    )
    return path


def timed_replay(capture: Path, config: Path, output: Path) -> tuple[float, dict]:
    """CPU seconds of one replay (the machine is shared: time spent waiting for a core is not the code's)."""
    switch = Switch(configmod.load(config, {"rr"}), seed=1)
    started = time.process_time()
    summary = replay(capture, switch, output)
    return time.process_time() - started, summary


def side_by_side(workdir: Path, flows: int, open_at_once: int, runs: int) -> tuple[float, float]:
    """(emulated ns per packet, batch ns per packet), best of `runs` each, on one capture."""
    capture = workdir / f"http-{flows}.pcap"
    packets = make_http_capture(capture, flows, open_at_once)
    emulated, plain = config_file(workdir, True), config_file(workdir, False)
    best_e = best_b = float("inf")
    for _ in range(runs):
        seconds, summary = timed_replay(capture, emulated, workdir / "out-emulated.pcap")
        through = summary["packets"]  # the clients' packets and the hosts' answers, all through the switch
        best_e = min(best_e, seconds / through)
        seconds, _ = timed_replay(capture, plain, workdir / "out-plain.pcap")
        best_b = min(best_b, seconds / packets)
    expected = packets + flows * ANSWERS_PER_CONVERSATION
    note = "" if through == expected else f"  (expected {expected:,} through the switch!)"
    print(
        f"  {flows:>9,} conversations, ~{open_at_once:,} open: emulated {1 / best_e:>12,.0f} packets/s "
        f"({through:,} with answers), batch path {1 / best_b:>12,.0f} packets/s ({packets:,}); "
        f"per packet {best_e / best_b:.2f}x the batch path{note}"
    )
    return best_e, best_b


def anonymous_bytes() -> int:
    """Resident anonymous memory (the heap; not the capture's file pages, which a map makes resident)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("RssAnon:"))
    return int(line.split()[1]) * 1024


def memory_figure(workdir: Path, conversations: int) -> None:
    """Bytes per established emulated connection with `conversations` open at once."""
    capture = workdir / "established.pcap"
    make_http_capture(capture, conversations, 64, established_only=True)
    switch = Switch(configmod.load(config_file(workdir, True), {"rr"}), seed=1)
    emulator = Emulator(switch)  # no views: the hosts' and the loop's state only
    switch_table = switch.table_info()["memory_bytes"]  # allocated whole, at its maximum, before any packet
    before = anonymous_bytes()
    with open_capture(capture) as reader:
        for batch in reader.batches():
            emulator.run(batch)
    grown = anonymous_bytes() - before
    engine = switch.hosts.engine.memory()
    open_now = engine["connections"]
    hosts = engine["table_bytes"] + engine["timer_bytes"] + emulator.loop.memory()
    flows = switch.table_info()["used"]
    print(
        f"memory: {open_now:,} established emulated connections ({emulator.restamp_entries():,} re-stamped, "
        f"{engine['peers']:,} clients' links); the hosts' tables and the re-stamping allocate "
        f"{hosts / open_now:.1f} bytes per connection; resident anonymous growth of the whole process "
        f"{grown / open_now:.1f} bytes per connection, which includes the switch's own flow entries "
        f"({flows:,} in a table of {switch_table / (1 << 20):,.0f} MiB allocated up front, touched as they fill)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", type=int, default=200_000, help="conversations of the headline figure")
    parser.add_argument("--scaling", default="2000,20000,200000", help="open conversations of the scaling check")
    parser.add_argument("--memory", type=int, default=1_000_000, help="open conversations of the memory figure")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="l4emu-emulated-") as tmp:
        workdir = Path(tmp)
        print("emulated replay beside the batch path (in-process replay(), -o to a file, CPU time, best of "
              f"{args.runs}); capture generated here (SYN, ACK, GET, ACK, FIN, ACK per conversation)")
        side_by_side(workdir, args.flows, 5_000, args.runs)
        print("scaling: the same number of conversations, more of them open at once")
        costs = {}
        scaling = [int(n) for n in args.scaling.split(",")]
        for open_at_once in scaling:
            costs[open_at_once] = side_by_side(workdir, max(scaling), open_at_once, args.runs)[0]
        spread = max(costs.values()) / min(costs.values())
        print(f"  per-packet cost, most over least open: {spread:.2f}x")
        if args.memory:
            memory_figure(workdir, args.memory)


if __name__ == "__main__":
    main()
