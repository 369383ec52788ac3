"""What resolving first costs: `gslb simulate` beside plain `simulate` of the same sessions, in one run.

    python benchmarks/gslb_simulate_bench.py [--sessions 2000,20000,200000] [--rate 1000] [--runs 1]

Both run the same Poisson sessions (one request a connection) to the same reals (8 emulated reals x 4
workers, 1 ms exponential service). Plain simulate sends every session to one VIP; gslb simulate has
each client resolve www.example.com first (its cache, its resolver's, a DNS query to the authority on
a miss; TTL 20 s, the default caching model), then connect to the answered site's VIP (two sites by
topology, each with those reals). CPU seconds inside this interpreter, best of --runs; the ratio is
gslb simulate's CPU per session over plain simulate's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from l4emu import config as configmod
from l4emu import schedulers
from l4emu.gslb import config as gslbconfig
from l4emu.gslb.simulate import simulate as gslb_simulate
from l4emu.simulate import simulate
from l4emu.workload import from_config

CLIENTS = 10000
REALS = 8
REAL = """    [[{table}real]]
    address = "10.{site}.0.{k}:8080"
    emulated = true
    workers = 4
    backlog = 65535
    service_time = {{ dist = "exponential", mean = 0.001 }}
"""
PLAIN = """[table]
max_connections = 4194304
[[service]]
vip = "10.0.0.100:80"
scheduler = "wlc"
{reals}
[workload]
keep_alive = false
"""
SITE = """[[site]]
name = "{name}"
prefixes = ["{prefix}"]
  [[site.service]]
  vip = "10.{vip}.0.100:80"
  scheduler = "wlc"
{reals}
"""
GSLB = """[table]
max_connections = 4194304
{sites}
[[gslb]]
listen = "10.53.0.1:53"
domain = "www.example.com"
ttl = 20
policy = "topology"
vips = {{ east = "10.10.0.100:80", west = "10.20.0.100:80" }}
"""


def best_cpu(fn, runs: int):
    best, result = float("inf"), None
    for _ in range(runs):
        started = time.process_time()
        result = fn()
        best = min(best, time.process_time() - started)
    return best, result


def configs(tmp: Path):
    plain = tmp / "plain.toml"
    plain.write_text(PLAIN.format(reals="".join(REAL.format(table="service.", site=1, k=k) for k in range(1, 9))))
    sites = "".join(
        SITE.format(
            name=name,
            prefix=prefix,
            vip=vip,
            reals="".join(REAL.format(table="site.service.", site=vip + 1, k=k) for k in range(1, REALS + 1)),
        )
        for name, prefix, vip in (("east", "172.16.0.0/18", 10), ("west", "172.16.64.0/18", 20))
    )
    gslb = tmp / "gslb.toml"
    gslb.write_text(GSLB.format(sites=sites))
    return configmod.load(plain, schedulers.catalog()), gslbconfig.load(gslb, schedulers.catalog(), emulated=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="2000,20000,200000", help="sessions per size (at --rate)")
    parser.add_argument("--rate", type=float, default=1000.0, help="sessions per second")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    print(f"gslb simulate beside simulate: {CLIENTS:,} clients, {args.rate:g} sessions/s, {REALS} reals x 4 "
          f"workers per site; CPU seconds, best of {args.runs}")
    print(f"  {'sessions':>9} {'simulate s':>11} {'sessions/s':>11} {'gslb s':>8} {'sessions/s':>11} "
          f"{'dns queries':>12} {'per session':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        plain, gslb = configs(Path(tmp))
        for sessions in (int(n) for n in args.sessions.split(",")):
            flags = {"clients": CLIENTS, "rate": args.rate, "duration": sessions / args.rate, "seed": 1}
            workload = from_config(plain, "plain", flags)
            plain_s, result = best_cpu(lambda w=workload: simulate(plain, w, 1), args.runs)
            gw = from_config(gslb.sites[0].config, "gslb", flags)
            gslb_s, summary = best_cpu(lambda w=gw: gslb_simulate(gslb, w), args.runs)
            n_plain, n_gslb = result["sessions"], summary["sessions"]
            print(f"  {n_gslb:>9,} {plain_s:>11.3f} {n_plain / plain_s:>11,.0f} {gslb_s:>8.3f} "
                  f"{n_gslb / gslb_s:>11,.0f} {summary['dns']['queries']:>12,} "
                  f"{(gslb_s / n_gslb) / (plain_s / n_plain):>11.2f}x")


if __name__ == "__main__":
    main()
