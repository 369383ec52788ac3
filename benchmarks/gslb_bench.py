"""A capture through the GSLB's replay (one site holding the service) beside a plain replay of the same
capture through one switch, in the same run: packets per second and their ratio; and the authority's
DNS answers per second beside dnspython's own parse-and-render of the same query (its floor).

    python benchmarks/gslb_bench.py [--runs 3]

For 2k, 20k and 200k flows (benchmarks/peers.py's capture, 6 packets a flow). The GSLB's replay takes
packets one at a time (each DNS answer must follow its query in the output), so it runs a Python step
per packet where the plain replay hands the datapath whole batches: the ratio is that step's price.
The same GSLB with policy least_conn, whose answers read the sites' load, also searches each packet
for a listen address (to cut the span after a query): its column is that search's price.
Best of --runs: the machine is shared, the best run the least disturbed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import BENCH_REALS, BENCH_VIP, BENCH_VPORT, make_bench_capture  # noqa: E402

import dns.message  # noqa: E402

from l4emu import schedulers  # noqa: E402
from l4emu.config import parse_address  # noqa: E402
from l4emu.gslb import config as gslbconfig  # noqa: E402
from l4emu.gslb.compare import with_policy  # noqa: E402
from l4emu.gslb.replay import replay as gslb_replay  # noqa: E402
from l4emu.gslb.server import Authority  # noqa: E402
from l4emu.replay import replay  # noqa: E402
from l4emu.switch import Switch  # noqa: E402

SIZES = (2_000, 20_000, 200_000)
QUERIES = (2_000, 20_000, 200_000)


def bench_gslb() -> gslbconfig.GslbConfig:
    reals = "".join(f'    [[site.service.real]]\n    address = "{ip}:{port}"\n' for ip, port in BENCH_REALS)
    text = (f'[[site]]\nname = "one"\n  [[site.service]]\n  vip = "{BENCH_VIP}:{BENCH_VPORT}"\n  scheduler = "rr"\n'
            f'{reals}\n[[gslb]]\nlisten = "10.53.0.1:53"\ndomain = "www.example.com"\n'
            f'vips = {{ one = "{BENCH_VIP}:{BENCH_VPORT}" }}\n')
    return gslbconfig.from_dict(tomllib.loads(text), schedulers.catalog())


def best(run, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    config = bench_gslb()
    least_conn = with_policy(config, "least_conn")  # answers read the load: spans cut at each DNS query
    print(f"packets/s, plain replay (one switch) vs GSLB replay (its site's switch), best of {args.runs}")
    with tempfile.TemporaryDirectory() as workdir:
        for flows in SIZES:
            capture = Path(workdir) / f"flows{flows}.pcap"
            packets = make_bench_capture(capture, flows)
            plain = best(lambda: replay(capture, Switch(config.sites[0].config, seed=1)), args.runs)
            gslb = best(lambda: gslb_replay(capture, config, seed=1), args.runs)
            least = best(lambda: gslb_replay(capture, least_conn, seed=1), args.runs)
            print(f"  {flows:>7,} flows ({packets:>9,} packets): plain {packets / plain:>11,.0f}  "
                  f"gslb {packets / gslb:>11,.0f}  {plain / gslb:5.2f}x  "
                  f"least_conn {packets / least:>11,.0f}  {plain / least:5.2f}x")
    print(f"DNS answers/s: the authority vs dnspython parsing the query and rendering a response, best of {args.runs}")
    wire = dns.message.make_query("www.example.com", "A").to_wire()
    client, listen = parse_address("172.16.0.1"), (parse_address("10.53.0.1"), 53)
    for count in QUERIES:
        authority = Authority(config, lambda a: True, lambda a: 0)
        ours = best(lambda: [authority.respond(wire, client, listen) for _ in range(count)], args.runs)
        floor = best(lambda: [dns.message.make_response(dns.message.from_wire(wire)).to_wire() for _ in range(count)],
                     args.runs)
        print(f"  {count:>7,} queries: authority {count / ours:>9,.0f}  dnspython floor {count / floor:>9,.0f}  "
              f"{floor / ours:5.2f}x")


if __name__ == "__main__":
    main()
