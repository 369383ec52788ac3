"""Print l4emu's speed beside its peers, measured in one run on the same capture (ratios, not absolutes).

    python benchmarks/bench.py [--flows 200000] [--runs 5] [--scapy-packets 20000] [--table-flows 1000000]

Replay pcap -> pcap, like with like: the whole `l4emu replay` command against the whole tcprewrite
command (stateless, C; when installed), each a process as a user runs it, in turn, medians; then
l4emu's replay() in-process against a dpkt and a scapy implementation of the same stateful NAT
(benchmarks/peers.py), all three inside one interpreter. Then the in-memory datapath on a warm
table of established flows, new connections per second, and the table's bytes per connection.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import BENCH_REALS, BENCH_VIP, BENCH_VPORT, dpkt_nat, make_bench_capture, scapy_nat, tcprewrite_cmd  # noqa: E402

import l4emu  # noqa: E402
from l4emu import config as configmod  # noqa: E402
from l4emu import schedulers  # noqa: E402
from l4emu.datapath._batch import NS, Batch  # noqa: E402
from l4emu.replay import replay  # noqa: E402
from l4emu.switch import Switch  # noqa: E402



def bench_switch(max_connections: int) -> Switch:
    document = configmod.from_flags([f"{BENCH_VIP}:{BENCH_VPORT}/tcp"], [f"{ip}:{port}" for ip, port in BENCH_REALS],
                                    "rr", {"rr"})
    document["table"] = {"max_connections": max_connections}
    return Switch(configmod.from_dict(document, {"rr"}), seed=1)


def timed(fn, repeat: int = 1, pick=min):
    """Best of `repeat` runs (the machine is shared: the best run is the least disturbed one), or another
    `pick` of their times (statistics.median)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return pick(times), result


def l4emu_cmd(capture: Path, output: Path) -> list[str]:
    """`l4emu replay` as a user runs it, on the switch bench_switch() builds (the --vip default table
    is its 1 << 20 connections), through the l4emu this script imported."""
    reals = [arg for ip, port in BENCH_REALS for arg in ("--real", f"{ip}:{port}")]
    return [sys.executable, "-m", "l4emu.cli", "replay", str(capture), "-o", str(output),
            "--vip", f"{BENCH_VIP}:{BENCH_VPORT}/tcp", *reals, "--scheduler", "rr", "--seed", "1"]


def run_timed(argv: list[str], env: dict, cwd: Path) -> tuple[float, float]:
    """One whole process: (wall seconds, CPU seconds: user + sys of the process and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=env, cwd=cwd)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def whole_command_figures(workdir: Path, capture: Path, packets: int, runs: int) -> None:
    """l4emu against tcprewrite as a user runs both: whole commands (process start, imports, the replay,
    the output file), in turn A B A B ..., medians, and the ratio pair by pair (robust to drift)."""
    env = dict(os.environ)
    root = str(Path(l4emu.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else root
    commands = {"l4emu replay (stateful)": l4emu_cmd(capture, workdir / "l4emu.pcap")}
    tcprewrite = tcprewrite_cmd(capture, workdir / "tcprewrite.pcap", BENCH_VIP, BENCH_REALS)
    if tcprewrite:
        commands["tcprewrite (stateless, C)"] = tcprewrite
    commands["python -c pass (for scale)"] = [sys.executable, "-c", "pass"]
    # A warm-up of each (not counted); l4emu's, with --json, also checks that every packet was translated.
    # In workdir: `python -m` puts the working directory first on the path, and a source checkout there
    # (its l4emu/ without the built extension) would stand in for the l4emu this script imported.
    done = subprocess.run(commands["l4emu replay (stateful)"] + ["--json"], check=True, capture_output=True, env=env,
                          cwd=workdir)
    assert json.loads(done.stdout)["translated"] == packets, done.stdout[:500]
    for argv in list(commands.values())[1:]:
        subprocess.run(argv, check=True, capture_output=True, env=env, cwd=workdir)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, argv in commands.items():
            times[name].append(run_timed(argv, env, workdir))
    print(f"  whole commands, as a user runs them (process start, imports, replay, output file): "
          f"{runs} runs each, in turn; medians")
    print(f"  {'':32} {'packets':>10} {'wall s':>8} {'cpu s':>8} {'packets/s':>12} {'l4emu is':>10}")
    ours = statistics.median(wall for wall, _ in times["l4emu replay (stateful)"])
    for name, runs_of in times.items():
        wall = statistics.median(w for w, _ in runs_of)
        cpu = statistics.median(c for _, c in runs_of)
        if name.startswith("python"):
            print(f"  {name:32} {'':>10} {wall:>8.3f} {cpu:>8.3f}")
            continue
        print(f"  {name:32} {packets:>10,} {wall:>8.3f} {cpu:>8.3f} {packets / wall:>12,.0f} {wall / ours:>9.1f}x")
    if tcprewrite:
        pairs = sorted(t / o for (t, _), (o, _) in zip(times["tcprewrite (stateless, C)"],
                                                       times["l4emu replay (stateful)"]))
        print(f"  l4emu's whole command is {statistics.median(pairs):.1f}x tcprewrite's speed (median of "
              f"{len(pairs)} pairs run in turn; min {pairs[0]:.1f}x, max {pairs[-1]:.1f}x)")


def in_process_figures(workdir: Path, capture: Path, packets: int, scapy_packets: int) -> None:
    """The Python peers inside one interpreter, after its imports: l4emu's replay() against dpkt and scapy
    doing the same stateful NAT (benchmarks/peers.py); no process start in any of them."""
    print("  in-process, one Python interpreter after its imports (no process start), against the Python peers")
    print("  (l4emu: median of 3 runs; dpkt and scapy: one run each, they are slow)")
    rows = []
    seconds, summary = timed(lambda: replay(capture, bench_switch(1 << 20), workdir / "l4emu.pcap"), repeat=3,
                             pick=statistics.median)
    assert summary["translated"] == packets, summary
    rows.append(("l4emu replay() (stateful)", packets, seconds))
    seconds, count = timed(lambda: dpkt_nat(capture, workdir / "dpkt.pcap", BENCH_VIP, BENCH_VPORT, BENCH_REALS))
    rows.append(("dpkt (stateful)", count, seconds))
    seconds, count = timed(lambda: scapy_nat(capture, workdir / "scapy.pcap", BENCH_VIP, BENCH_VPORT, BENCH_REALS,
                                             scapy_packets))
    rows.append((f"scapy (stateful, first {count:,})", count, seconds))
    ours = rows[0][1] / rows[0][2]
    print(f"  {'':32} {'packets':>10} {'seconds':>8} {'packets/s':>12} {'l4emu is':>10}")
    for name, count, seconds in rows:
        rate = count / seconds
        print(f"  {name:32} {count:>10,} {seconds:>8.3f} {rate:>12,.0f} {ours / rate:>9.1f}x")


def replay_figures(workdir: Path, flows: int, scapy_packets: int, runs: int) -> None:
    capture = workdir / "bench.pcap"
    packets = make_bench_capture(capture, flows)
    print(f"replay pcap -> pcap: {packets:,} packets ({flows:,} flows x 6) to one VIP, 4 reals, same file for all;")
    print("  like with like: commands against commands, in-process code against in-process code")
    whole_command_figures(workdir, capture, packets, runs)
    in_process_figures(workdir, capture, packets, scapy_packets)


def flow_frames(n: int, flags: int) -> list[bytes]:
    """n TCP frames client -> VIP, one per flow (client 172.16.x.y, distinct ports), IP checksum valid."""
    from scapy.all import IP, TCP, Ether, raw
    template = bytearray(raw(Ether() / IP(src="172.16.0.1", dst=BENCH_VIP) / TCP(sport=1024, dport=BENCH_VPORT,
                                                                                 flags=flags)))
    frames = []
    for k in range(n):
        frame = bytearray(template)
        frame[26:30] = struct.pack("!I", 0xAC100000 + (k >> 14))
        frame[34:36] = struct.pack("!H", 1024 + (k & 0x3FFF))
        frames.append(bytes(frame))
    return frames


def datapath_figures(table_flows: int) -> None:
    print("in-memory datapath (one core, batches of 65,536, no file I/O)")
    for flows in (10_000, table_flows):
        switch = bench_switch(max(flows, 1 << 16))
        syns = flow_frames(flows, 0x02)
        batch = Batch.from_frames(syns, 1, [NS] * flows)
        seconds, _ = timed(lambda: switch.process(batch))
        print(f"  new connections/s, {flows:>9,} flows into an empty table: {flows / seconds:>12,.0f}")
        acks = flow_frames(flows, 0x10)
        order = [acks[(k * 7919) % flows] for k in range(65_536)]           # spread over the whole table
        rounds = []
        for r in range(30):
            batch = Batch.from_frames(order, 1, [2 * NS + r] * len(order))
            rounds.append(timed(lambda: switch.process(batch))[0])
        median = sorted(rounds)[len(rounds) // 2]
        print(f"  packets/s, established flows, warm table of {flows:>9,}:  {len(order) / median:>12,.0f}"
              f"  (median of {len(rounds)} batches; best {len(order) / min(rounds):,.0f})")


def scheduler_figures(flows: int) -> None:
    """New connections per second with each built-in scheduler and the plain-Python plugin example."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    from least_recent import LeastRecent
    schedulers.BUILTINS.setdefault(LeastRecent.name, LeastRecent)    # as its entry point would register it
    print(f"new connections/s by scheduler ({flows:,} SYNs into an empty table, {len(BENCH_REALS)} reals "
          f"of weight {configmod.MAX_WEIGHT}, so that ovf's capacity is not the limit; best of 3)")
    syns = flow_frames(flows, 0x02)
    known = schedulers.catalog()
    document = configmod.from_flags([f"{BENCH_VIP}:{BENCH_VPORT}/tcp"], [f"{ip}:{port}" for ip, port in BENCH_REALS],
                                    "rr", known)
    for real in document["service"][0]["real"]:
        real["weight"] = configmod.MAX_WEIGHT

    def run(name):
        document["service"][0]["scheduler"] = name
        switch = Switch(configmod.from_dict(document, known), seed=1)
        batch = Batch.from_frames(syns, 1, [NS] * flows)
        started = time.perf_counter()
        switch.process(batch)
        return time.perf_counter() - started, switch.stats()["connections"]

    rates = {}
    for name in ["rr"] + sorted(set(schedulers.BUILTINS) - {"rr", "p2c"}):
        seconds, made = min(run(name) for _ in range(3))
        rates[name] = flows / seconds
        note = "" if made == flows else f"  (only {made:,} found a real: {name} refused the rest)"
        label = f"{name} (Python plugin)" if name == LeastRecent.name else name
        print(f"  {label:28} {rates[name]:>12,.0f}  {rates[name] / rates['rr']:5.2f}x rr{note}")


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_figure(table_flows: int) -> None:
    """Bytes per connection with the table full: what it allocates, and what became resident."""
    frames = flow_frames(table_flows, 0x02)
    before = resident_bytes()
    switch = bench_switch(table_flows)
    for start in range(0, table_flows, 65_536):
        chunk = frames[start:start + 65_536]
        switch.process(Batch.from_frames(chunk, 1, [NS] * len(chunk)))
    grown = resident_bytes() - before
    connections = switch.stats()["connections"]
    allocated = switch.table_info()["memory_bytes"]
    print(f"memory: {connections:,} connections tracked; the table allocates {allocated / connections:.1f} bytes "
          f"per connection, resident growth {grown / connections:.1f} bytes per connection")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", type=int, default=200_000)
    parser.add_argument("--scapy-packets", type=int, default=20_000)
    parser.add_argument("--table-flows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5, help="runs of each whole command (default: 5)")
    args = parser.parse_args()
    print(f"l4emu benchmark on {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="l4emu-bench-") as tmp:
        replay_figures(Path(tmp), args.flows, args.scapy_packets, args.runs)
    datapath_figures(args.table_flows)
    scheduler_figures(args.flows)
    memory_figure(args.table_flows)


if __name__ == "__main__":
    main()
