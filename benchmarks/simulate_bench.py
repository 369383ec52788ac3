"""How big a simulation is per second of CPU, beside emulated replay of the same workload, in one run.

    python benchmarks/simulate_bench.py [--rates 1000,10000,50000] [--duration 10] [--runs 3] [--protocol udp]

At each rate (sessions a second, Poisson, one request a connection, reals with 4 workers and 1 ms
exponential service times), `simulate` runs the closed loop: clients, switch and reals. The baseline is
the same workload as an open loop: `l4emu gen` writes the clients' packets, and emulated replay of that
capture has the same reals answer them. Both are timed in CPU seconds inside this interpreter (best of
--runs) and counted in packets both ways; the ratio is closed loop against replay, per packet.
With --protocol udp the same over UDP: request datagrams to request-reply reals (docs/simulate.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from l4emu import config as configmod
from l4emu import schedulers
from l4emu.clients.gen import generate
from l4emu.replay import replay
from l4emu.simulate import simulate
from l4emu.switch import Switch
from l4emu.workload import from_config

CONFIG = """
[table]
max_connections = 4194304

[[service]]
vip = "10.0.0.100:{port}"
protocol = "{protocol}"
scheduler = "wlc"
{reals}
[workload]
protocol = "{protocol}"
keep_alive = false
rtt = 0.0005
clients = 65536
"""
REAL = """  [[service.real]]
  address = "10.1.0.{k}:{port}"
  emulated = true
  workers = 4
  backlog = 65535
  service_time = {{ dist = "exponential", mean = 0.001 }}
"""
REALS = 8
PORTS = {"tcp": 8080, "udp": 9000}


def best_cpu(fn, runs: int):
    best, result = float("inf"), None
    for _ in range(runs):
        started = time.process_time()
        result = fn()
        best = min(best, time.process_time() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="1000,10000,50000", help="sessions per second, one size each")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of arrivals")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--protocol", choices=sorted(PORTS), default="tcp", help="the clients' protocol")
    args = parser.parse_args()
    print(f"simulate{' (UDP)' if args.protocol == 'udp' else ''}: {REALS} reals x 4 workers (1 ms exponential "
          f"service), Poisson sessions of one request for {args.duration:g} s; CPU seconds, best of {args.runs}")
    print(f"  {'rate/s':>8} {'requests':>10} {'packets':>10} {'simulate s':>11} {'requests/s':>11} "
          f"{'packets/s':>11} {'replay s':>9} {'packets/s':>11} {'per packet':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lb.toml"
        port = PORTS[args.protocol]
        reals = "".join(REAL.format(k=k, port=port) for k in range(1, REALS + 1))
        path.write_text(CONFIG.format(reals=reals, port=80 if args.protocol == "tcp" else port, protocol=args.protocol))
        config = configmod.load(path, schedulers.catalog())
        for rate in (float(r) for r in args.rates.split(",")):
            workload = from_config(config, str(path), {"rate": rate, "duration": args.duration, "seed": 1})
            sim_s, result = best_cpu(lambda w=workload: simulate(config, w, 1), args.runs)
            packets = result["packets"]["clients"] + result["packets"]["answers"]
            capture = Path(tmp) / "clients.pcap"
            generate(workload, capture)

            def emulated_replay(capture=capture):
                switch = Switch(config, 1)
                return replay(capture, switch, Path(tmp) / "out.pcap"), switch

            replay_s, (_, switch) = best_cpu(emulated_replay, args.runs)
            replayed = sum(r["in_pkts"] + r["out_pkts"] for r in switch.real_counters())
            print(f"  {rate:>8,.0f} {result['answered']:>10,} {packets:>10,} {sim_s:>11.3f} "
                  f"{result['answered'] / sim_s:>11,.0f} {packets / sim_s:>11,.0f} {replay_s:>9.3f} "
                  f"{replayed / replay_s:>11,.0f} {(sim_s / packets) / (replay_s / replayed):>10.2f}x")


if __name__ == "__main__":
    main()
