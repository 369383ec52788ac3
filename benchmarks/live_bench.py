"""iperf3 through `l4emu live` and through the kernel's own NAT (nftables numgen) in the same lab, side by side."""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from l4emu.live.lab import Lab

VIP, REAL, PORT = "10.0.0.100", "10.1.0.1", 5201
# One real: iperf3's control connection and its data stream must reach the same server.
CONFIG = f"""
[[service]]
vip = "{VIP}:{PORT}"
protocol = "tcp"
  [[service.real]]
  address = "{REAL}:{PORT}"
[[service]]
vip = "{VIP}:{PORT}"
protocol = "udp"
  [[service.real]]
  address = "{REAL}:{PORT}"
"""
NFT = f"""
table ip l4bench {{
  chain pre {{
    type nat hook prerouting priority dstnat;
    ip daddr {VIP} tcp dport {PORT} dnat to numgen inc mod 1 map {{ 0 : {REAL} }}
    ip daddr {VIP} udp dport {PORT} dnat to numgen inc mod 1 map {{ 0 : {REAL} }}
  }}
}}
"""


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def iperf(lab: Lab, seconds: int, udp: bool) -> dict:
    """TCP: Gbit/s received. UDP with 64-byte datagrams at an unlimited rate: datagrams/s sent by the
    client, forwarded by the load balancer toward the real, and received by the server; and the
    losses on the way (the TUN's queue, the server's socket buffer)."""
    args = ["-u", "-l", "64", "-b", "0"] if udp else []
    before = udp_counters(lab) if udp else None
    out = run("ip", "netns", "exec", lab.client, "iperf3", "-c", VIP, "-p", str(PORT), "-t", str(seconds),
              "-J", *args, timeout=seconds + 30).stdout
    end = json.loads(out)["end"]
    if udp:
        s = end["sum"]
        after = udp_counters(lab)
        return {"received": (s["packets"] - s["lost_packets"]) / s["seconds"], "sent": s["packets"] / s["seconds"],
                **{name: (after[name] - before[name]) / s["seconds"] for name in before}}
    return {"gbps": end["sum_received"]["bits_per_second"] / 1e9}


def udp_counters(lab: Lab) -> dict:
    """From the servers' UDP counters: datagrams that reached them (read by iperf3, or dropped because
    its socket buffer was full), and those dropped; and the datagrams the TUN's queue dropped
    (l4emu too slow to read). Counted after GSO segmentation, so one per datagram."""
    snmp = run("ip", "netns", "exec", lab.servers, "cat", "/proc/net/snmp").stdout.splitlines()
    names, values = [line.split()[1:] for line in snmp if line.startswith("Udp:")][:2]
    udp = dict(zip(names, map(int, values)))
    tun = run("ip", "netns", "exec", lab.lb, "cat", f"/sys/class/net/{lab.tun}/statistics/tx_dropped").stdout
    return {"forwarded": udp["InDatagrams"] + udp["InErrors"], "tun_drops": int(tun),
            "socket_drops": udp["RcvbufErrors"]}


def measure(lab: Lab, seconds: int) -> dict:
    return {"tcp": iperf(lab, seconds, False)["gbps"], "udp": iperf(lab, seconds, True)}


def use_kernel_nat(lab: Lab, on: bool) -> None:
    """Switch the lab between the two contenders: nftables NAT in the lb namespace (replies routed
    normally), or l4emu (VIP routed into the TUN, replies back into it by the policy rule)."""
    if on:
        run("ip", "-n", lab.lb, "rule", "del", "iif", "s1", "lookup", "100")
        run("ip", "netns", "exec", lab.lb, "nft", "-f", "-", input=NFT)
    else:
        run("ip", "netns", "exec", lab.lb, "nft", "delete", "table", "ip", "l4bench")
        run("ip", "-n", lab.lb, "rule", "add", "iif", "s1", "lookup", "100", "pref", "100")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="Length of each iperf3 run.")
    parser.add_argument("--rounds", type=int, default=3,
                        help="Rounds of l4emu then kernel NAT, back to back: on a shared machine the load "
                             "drifts, so each round's ratio compares neighbours and the median is reported.")
    parser.add_argument("--no-offload", action="store_true", help="Run l4emu live without TUN offloads.")
    parser.add_argument("--queues", default="", metavar="N,N,...",
                        help="Also measure l4emu's UDP with the TUN's txqueuelen (the queue between the kernel "
                             "and l4emu's reads) set to each N in turn, in every round (the main table keeps "
                             "the lab's own setting).")
    opts = parser.parse_args()
    queues = [int(q) for q in opts.queues.split(",") if q.strip()]
    if os.geteuid() != 0:
        sys.exit("live_bench: needs root (network namespaces, TUN, nftables)")
    workdir = Path(tempfile.mkdtemp(prefix="l4emu-bench-"))
    config = workdir / "bench.toml"
    config.write_text(CONFIG)
    lab = Lab.from_config(config, prefix=f"l4b{os.getpid() % 100000}", tun="l4b0")
    server = live = None
    rounds = []
    try:
        lab.up()
        server = subprocess.Popen(["ip", "netns", "exec", lab.servers, "iperf3", "-s", "-B", REAL, "-p", str(PORT)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        live = subprocess.Popen([sys.executable, "-m", "l4emu.cli", "live", "--netns", lab.lb, "--tun", lab.tun,
                                 "-c", str(config)] + (["--no-offload"] if opts.no_offload else []),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        lab_queue = txqueuelen(lab)
        for k in range(opts.rounds):
            ours = measure(lab, opts.seconds)
            for q in queues:
                set_txqueuelen(lab, q)
                ours.setdefault("queues", {})[q] = iperf(lab, opts.seconds, True)
            set_txqueuelen(lab, lab_queue)
            use_kernel_nat(lab, True)
            kernel = measure(lab, opts.seconds)
            if k + 1 < opts.rounds:
                use_kernel_nat(lab, False)
            rounds.append((ours, kernel))
        live.send_signal(signal.SIGINT)
        summary, _ = live.communicate(timeout=10)
    finally:
        for proc in (live, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        lab.down()
    print(summary.rstrip().splitlines()[-1])
    print(f"{'':<56}{'l4emu live':>14}{'kernel NAT':>14}{'ratio':>8}{'target':>8}")
    for label, value, unit, target in (
            ("TCP, Gbit/s received", lambda m: m["tcp"], "{:>14.2f}", 0.5),
            ("UDP 64 B, datagrams/s reaching the real", lambda m: m["udp"]["forwarded"], "{:>14,.0f}", 0.8),
            ("UDP 64 B, datagrams/s received by iperf3", lambda m: m["udp"]["received"], "{:>14,.0f}", 0.8)):
        ratios = []
        for k, (ours, kernel) in enumerate(rounds, 1):
            ratios.append(value(ours) / value(kernel))
            print(f"{label + f', round {k}':<56}" + unit.format(value(ours)) + unit.format(value(kernel))
                  + f"{ratios[-1]:>8.2f}")
        print(f"{label + ', median':<56}{'':>28}{statistics.median(ratios):>8.2f}{target:>8.2f}")
    print(f"UDP datagrams/s sent by the iperf3 client; lost in the TUN queue (txqueuelen {lab_queue}) / at the "
          f"server's socket:")
    for k, (ours, kernel) in enumerate(rounds, 1):
        print(f"  round {k}:" + "".join(f"  {name} {m['udp']['sent']:,.0f} sent, {m['udp']['tun_drops']:,.0f} / "
                                         f"{m['udp']['socket_drops']:,.0f} lost"
                                         for name, m in (("l4emu", ours), ("kernel", kernel))))
    if queues:
        print("l4emu UDP by the TUN's txqueuelen: datagrams/s sent, reaching the real, lost in the TUN queue "
              "(share of sent):")
        for k, (ours, _) in enumerate(rounds, 1):
            print(f"  round {k}:" + "".join(
                f"  {q}: {m['sent']:,.0f} sent, {m['forwarded']:,.0f} reach, {m['tun_drops']:,.0f} lost "
                f"({m['tun_drops'] / max(m['sent'], 1):.0%})"
                for q, m in [(lab_queue, ours["udp"])] + list(ours["queues"].items())))


def txqueuelen(lab: Lab) -> int:
    return int(run("ip", "netns", "exec", lab.lb, "cat", f"/sys/class/net/{lab.tun}/tx_queue_len").stdout)


def set_txqueuelen(lab: Lab, length: int) -> None:
    run("ip", "-n", lab.lb, "link", "set", lab.tun, "txqueuelen", str(length))


if __name__ == "__main__":
    main()
