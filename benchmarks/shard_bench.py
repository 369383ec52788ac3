"""How much faster `l4emu replay --workers N` replays one capture: whole commands, 1, 2, 4 and 8 workers.

    python benchmarks/shard_bench.py [--flows 20000,200000,1000000] [--workers 1,2,4,8] [--runs 3]

The capture is benchmarks/peers.py's (6 packets a flow: 1,000,000 flows are 6M packets), the config
its VIP with 4 reals on `sh` (a hash scheduler: every worker count writes the same bytes, checked
here with cmp-like digests). Each size times the whole command at every worker count, in turn
(1 2 4 8 1 2 4 8 ...), and prints the medians of wall and CPU seconds (user + system of every process
of the command), packets per second, the speed-up over one worker (the ratio's median, pair by pair,
robust to a machine's drift) and the CPU seconds over one worker's. On a machine shared with other
work the wall clock says little; the CPU ratio says what the speed-up can be on idle cores: N workers
on N cores can be at most N / (CPU ratio) times as fast (2 workers reach 1.7x only at a CPU ratio of
1.18 or less). On a 2-core machine 4 and 8 workers share the two cores: the curve shows the cost of
more processes than cores; on a bigger machine it keeps climbing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import BENCH_REALS, BENCH_VIP, BENCH_VPORT, make_bench_capture  # noqa: E402

import l4emu  # noqa: E402


def write_config(path: Path) -> None:
    reals = "".join(f'[[service.real]]\naddress = "{ip}:{port}"\n' for ip, port in BENCH_REALS)
    path.write_text(
        f'[table]\nmax_connections = {1 << 21}\n\n[[service]]\nvip = "{BENCH_VIP}:{BENCH_VPORT}"\n'
        f'protocol = "tcp"\nscheduler = "sh"\n{reals}'
    )


def command(capture: Path, config: Path, output: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "l4emu.cli", "replay", str(capture), "-c", str(config), "-o", str(output),
            "--seed", "1", "--workers", str(workers)]


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def one_size(workdir: Path, flows: int, counts: list[int], runs: int, env: dict) -> None:
    capture, config = workdir / f"cap{flows}.pcap", workdir / "lb.toml"
    packets = make_bench_capture(capture, flows)
    write_config(config)
    times: dict[int, list[float]] = {n: [] for n in counts}
    cpu: dict[int, list[float]] = {n: [] for n in counts}
    digests = {}
    for _ in range(runs):
        for n in counts:
            output = workdir / f"out{n}.pcap"
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            subprocess.run(command(capture, config, output, n), check=True, capture_output=True, env=env, cwd=workdir)
            times[n].append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[n].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            digests[n] = digest(output)
            output.unlink()
    capture.unlink()
    same = "identical" if len(set(digests.values())) == 1 else "DIFFERENT"
    print(f"{packets:,} packets ({flows:,} flows), sh, whole commands, median of {runs}; outputs {same}")
    print(f"  {'workers':>8} {'seconds':>9} {'cpu s':>8} {'packets/s':>12} {'vs 1 worker':>12} {'cpu vs 1':>9}")
    base, base_cpu = times[counts[0]], statistics.median(cpu[counts[0]])
    for n in counts:
        ratio = statistics.median(b / t for b, t in zip(base, times[n], strict=True))
        median, median_cpu = statistics.median(times[n]), statistics.median(cpu[n])
        print(
            f"  {n:>8} {median:>9.3f} {median_cpu:>8.3f} {packets / median:>12,.0f} {ratio:>11.2f}x"
            f" {median_cpu / base_cpu:>8.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", default="20000,200000,1000000", help="capture sizes in flows (6 packets each)")
    parser.add_argument("--workers", default="1,2,4,8", help="worker counts; the first is the baseline")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    env = dict(os.environ)
    root = str(Path(l4emu.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else root
    counts = [int(n) for n in args.workers.split(",")]
    print(f"sharded replay on {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
    print("  (cpu s: every process of the command, user + system; the speed-up needs idle cores to show,")
    print("   the CPU ratio does not: N workers on N idle cores can reach N / (cpu vs 1) times one worker)")
    with tempfile.TemporaryDirectory(prefix="l4emu-shard-bench-") as tmp:
        for flows in (int(f) for f in args.flows.split(",")):
            one_size(Path(tmp), flows, counts, args.runs, env)


if __name__ == "__main__":
    main()
