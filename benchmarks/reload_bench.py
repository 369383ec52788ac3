"""Print what a reload (l4emu apply, SIGHUP) costs beside a restart, with 2k, 20k and 200k flows in the table.

    python benchmarks/reload_bench.py [--repeat 5]

A reload is Switch.apply: a fresh datapath from the new config adopts the running table (one walk over
it). A restart is a new Switch from the same config: what the switch would do instead, losing every
flow. Both keep the same table size (max_connections), so the restart's figure is the allocation of
that table, and the reload's grows with the flows it renumbers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import flow_frames, timed  # noqa: E402
from peers import BENCH_REALS, BENCH_VIP, BENCH_VPORT  # noqa: E402

from l4emu import config as configmod  # noqa: E402
from l4emu.datapath._batch import NS, Batch  # noqa: E402
from l4emu.switch import Switch  # noqa: E402

SIZES = (2_000, 20_000, 200_000)
TABLE = 1 << 18  # room for the largest size, the same for every run


def config(weight: int) -> configmod.Config:
    """The benchmark's service; the weight of its first real is what each reload changes."""
    document = configmod.from_flags([f"{BENCH_VIP}:{BENCH_VPORT}/tcp"], [f"{ip}:{port}" for ip, port in BENCH_REALS],
                                    "rr", {"rr"})
    document["table"] = {"max_connections": TABLE}
    document["service"][0]["real"][0]["weight"] = weight
    return configmod.from_dict(document, {"rr"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="best of this many runs of each")
    args = parser.parse_args()
    print(f"reload (Switch.apply, flows kept) beside restart (a new Switch, flows lost); table of {TABLE:,}, "
          f"best of {args.repeat}")
    configs = [config(1), config(2)]
    for flows in SIZES:
        switch = Switch(configs[0], seed=1)
        switch.process(Batch.from_frames(flow_frames(flows, 0x02), 1, [NS] * flows))
        turn = iter(range(1 << 30))
        reload_s = timed(lambda s=switch, t=turn: s.apply(configs[next(t) % 2]), args.repeat)[0]
        assert switch.connection_count() == flows, "a reload lost flows"
        restart_s = timed(lambda: Switch(configs[0], seed=1), args.repeat)[0]
        print(f"  {flows:>7,} flows: reload {reload_s * 1e3:8.2f} ms   restart {restart_s * 1e3:8.2f} ms"
              f"   reload/restart {reload_s / restart_s:5.2f}")


if __name__ == "__main__":
    main()
