"""Print how fast `l4emu gen` makes client packets, beside the pcap writer alone on the same packets.

    python benchmarks/gen_bench.py [--sizes 2000,20000,200000] [--runs 3]

At each size (conversations: fixed arrivals, one HTTP request each, so six client packets each):
- generate only: the Cython generator filling batches, nothing written;
- generate + write: what `generate()` does (the generator, then the pcap writer per batch);
- writer alone: the same packets, prepared beforehand in batches, through the same writer: the
  baseline (the ratio says what the generator adds on top of writing);
- the whole `l4emu gen` command, as a user runs it (start-up included), in a scratch directory.
Best of --runs (the machine is shared: the best run is the least disturbed).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from l4emu import config as configmod
from l4emu import schedulers
from l4emu.clients.gen import BATCH_PACKETS, LINKTYPE, SNAPLEN, generate, generator
from l4emu.datapath._batch import Batch
from l4emu.io import Interface, open_writer
from l4emu.workload import from_config

DURATION_S = 10.0  # arrivals spread over this much packet time; the rate gives the size


def flags(conversations: int) -> dict:
    return {"arrival": "fixed", "rate": conversations / DURATION_S, "duration": DURATION_S, "seed": 1}


def best(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def sizes_figures(sizes: list[int], runs: int, workdir: Path) -> None:
    config = configmod.load(None, schedulers.catalog())
    print(f"{'conversations':>13} {'packets':>10} {'generate only':>15} {'gen + write':>15} {'writer alone':>15} "
          f"{'gen+write/writer':>17} {'l4emu gen (cmd)':>16}")
    for size in sizes:
        workload = from_config(config, "default config", flags(size))
        out = workdir / f"gen{size}.pcap"

        def only() -> int:
            gen, batch = generator(workload), Batch(BATCH_PACKETS)
            while not gen.done:
                gen.fill(batch)
                batch.reset()
            return gen.packets

        packets = only()
        prepared = []
        gen = generator(workload)
        while not gen.done:
            batch = Batch(BATCH_PACKETS)
            gen.fill(batch)
            prepared.append(batch)

        def writer_alone() -> None:
            interfaces = [Interface(LINKTYPE[workload.linktype], SNAPLEN, True)]
            with open_writer(workdir / "alone.pcap", interfaces, nanosecond=True) as writer:
                for b in prepared:
                    writer.write(b)

        t_only = best(only, runs)
        t_gen = best(lambda: generate(workload, out), runs)
        t_write = best(writer_alone, runs)
        assert (workdir / "alone.pcap").read_bytes() == out.read_bytes()   # the same packets, byte for byte
        argv = [sys.executable, "-m", "l4emu.cli", "gen", "--arrival", "fixed", "--rate", str(size / DURATION_S),
                "--duration", str(DURATION_S), "--seed", "1", "-o", str(workdir / "cmd.pcap")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        t_cmd = best(lambda: subprocess.run(argv, cwd=workdir, env=env, check=True, capture_output=True), runs)
        rate = lambda seconds: f"{packets / seconds:>11,.0f} p/s"  # noqa: E731
        print(f"{size:>13,} {packets:>10,} {rate(t_only):>15} {rate(t_gen):>15} {rate(t_write):>15} "
              f"{t_gen / t_write:>16.2f}x {rate(t_cmd):>16}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,20000,200000", help="conversations per run, comma-separated")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="l4emu-gen-bench-") as tmp:
        sizes_figures([int(s) for s in args.sizes.split(",")], args.runs, Path(tmp))


if __name__ == "__main__":
    main()
