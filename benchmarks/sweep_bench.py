"""How much faster a sweep runs in parallel: whole `l4emu sweep` commands, serial against a local cluster.

    python benchmarks/sweep_bench.py [--flows 20000,60000,200000] [--jobs 2] [--runs 3]

The grid is 16 points (2 captures x 4 schedulers x 2 seeds) on benchmarks/peers.py's capture, at three
capture sizes. Each size times `l4emu sweep SPEC --jobs 1` (serial, in one process) and
`l4emu sweep SPEC --jobs N` (Dask's local cluster of N processes when installed, local processes
otherwise), whole commands as a user runs them, in turn A B A B ..., and prints the medians and the
speed-up pair by pair. The cluster's start (about a second) is part of its time, so small grids gain
less: the sizes show where parallelism pays.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import BENCH_REALS, BENCH_VIP, BENCH_VPORT, make_bench_capture  # noqa: E402

import l4emu  # noqa: E402

SCHEDULERS = ("rr", "wlc", "mh", "sh")
SEEDS = (1, 2)


def write_grid(workdir: Path, flows: int) -> tuple[Path, int]:
    """Two captures of `flows` flows (different seeds), a config for their VIP, and the 16-point spec."""
    packets = 0
    for k in (1, 2):
        packets = make_bench_capture(workdir / f"cap{k}.pcap", flows, seed=k)
    reals = "".join(f'[[service.real]]\naddress = "{ip}:{port}"\n' for ip, port in BENCH_REALS)
    (workdir / "lb.toml").write_text(f'[table]\nmax_connections = {1 << 20}\n\n[[service]]\n'
                                     f'vip = "{BENCH_VIP}:{BENCH_VPORT}"\nprotocol = "tcp"\nscheduler = "rr"\n{reals}')
    spec = workdir / "spec.toml"
    spec.write_text(f'captures = ["cap1.pcap", "cap2.pcap"]\nconfigs = ["lb.toml"]\n'
                    f'schedulers = {list(SCHEDULERS)!r}\nseeds = {list(SEEDS)!r}\n'.replace("'", '"'))
    return spec, packets


def whole(argv: list[str], env: dict, cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=env, cwd=cwd)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", default="20000,60000,200000", help="capture sizes (flows of 6 packets)")
    parser.add_argument("--jobs", type=int, default=2, help="processes of the parallel run")
    parser.add_argument("--runs", type=int, default=3, help="pairs of whole commands per size")
    args = parser.parse_args()
    env = dict(os.environ)
    root = str(Path(l4emu.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else root
    points = 2 * len(SCHEDULERS) * len(SEEDS)
    print(f"l4emu sweep: {points} points (2 captures x {len(SCHEDULERS)} schedulers x {len(SEEDS)} seeds), whole "
          f"commands, {args.runs} pairs in turn per size; --jobs 1 against --jobs {args.jobs} on {os.cpu_count()} cores")
    print(f"  {'flows/capture':>13} {'packets/run':>12} {'serial s':>9} {'parallel s':>11} {'speed-up':>9}")
    for flows in (int(f) for f in args.flows.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            spec, packets = write_grid(workdir, flows)
            serial = [sys.executable, "-m", "l4emu.cli", "sweep", str(spec), "--jobs", "1"]
            parallel = [sys.executable, "-m", "l4emu.cli", "sweep", str(spec), "--jobs", str(args.jobs)]
            whole(parallel, env, workdir)  # warm-up: page cache, bytecode
            pairs = [(whole(serial, env, workdir), whole(parallel, env, workdir)) for _ in range(args.runs)]
            one = statistics.median(s for s, _ in pairs)
            many = statistics.median(p for _, p in pairs)
            ratio = statistics.median(s / p for s, p in pairs)
            print(f"  {flows:>13,} {packets:>12,} {one:>9.2f} {many:>11.2f} {ratio:>8.2f}x")


if __name__ == "__main__":
    main()
