"""Digest every output of emulated replay on the bundled samples and on generated captures, to compare two builds.

    python tools/emulated_ref.py --checkout /tmp/before --work /tmp/ref-a > a.txt
    python tools/emulated_ref.py --checkout . --work /tmp/ref-b > b.txt && diff a.txt b.txt

Each line is `case file sha256`. The generated captures come from a fixed seed: `chaos` is a few
hundred client conversations that take every rule of the emulated hosts (handshakes with assorted
options, pipelined, split, bad and closing HTTP requests, echo and discard, resets, out-of-order and
repeated segments, ports reused after TIME-WAIT, stale half-open requests, UDP, packets straight to a
real's address), `http` a few thousand plain HTTP conversations. The JSON summary is digested without
its timing fields.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NS = 1_000_000_000
CHAOS_CONFIG = """
[[service]]
vip = "10.0.0.100:80"
scheduler = "rr"
  [[service.real]]
  address = "10.1.0.1:8080"
  emulated = true
  [[service.real]]
  address = "10.1.0.2:8080"
  emulated = true
  backlog = 2
  accept_rate = 5
  syn_overflow = "reset"
  [[service.real]]
  address = "10.1.0.3:8080"
  emulated = true
  app = "echo"
  backlog = 3
  accept_rate = 2
  [[service.real]]
  address = "10.1.0.4:8080"
  emulated = true
  app = "discard"
[[service]]
vip = "10.0.0.100:53"
protocol = "udp"
  [[service.real]]
  address = "10.1.0.11:53"
  emulated = true
  app = "echo"
  [[service.real]]
  address = "10.1.0.12:53"
  emulated = true
  app = "http"
  [[service.real]]
  address = "10.1.0.13:53"
  emulated = true
  app = "discard"
[[service]]
vip = "[2001:db8::100]:80"
  [[service.real]]
  address = "[2001:db8:1::1]:8080"
  emulated = true
  [[service.real]]
  address = "[2001:db8:1::2]:8080"
  emulated = true
  app = "echo"
"""
HTTP_CONFIG = """
[[service]]
vip = "10.0.0.100:80"
scheduler = "wlc"
""" + "".join(f'  [[service.real]]\n  address = "10.1.0.{k}:8080"\n  emulated = true\n' for k in range(1, 5))
REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"hello\r\n\r\n",
    b"GET / HTTP/1.1\r\nbroken header\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345",
    b"POST / HTTP/1.1\r\nContent-Length: x1\r\n\r\n",
    b"GET / HTTP/2.0\r\n\r\n",
]


def _tcp_options(rng: random.Random, syn: bool) -> list:
    if syn:
        opts = []
        if rng.random() < 0.8:
            opts.append(("MSS", rng.choice([536, 1000, 1400, 1460, 9000])))
        if rng.random() < 0.5:
            opts.append(("WScale", rng.choice([0, 2, 7, 14, 15])))
        if rng.random() < 0.4:
            opts.append(("SAckOK", b""))
        if rng.random() < 0.3:
            opts.append(("Timestamp", (rng.getrandbits(32), 0)))
        return opts
    if rng.random() < 0.2:
        return [("NOP", None), ("NOP", None), ("Timestamp", (rng.getrandbits(32), rng.getrandbits(32)))]
    if rng.random() < 0.1:
        return [("NOP", None), ("NOP", None), ("SAck", (rng.getrandbits(32), rng.getrandbits(32)))]
    return []


def chaos_packets(seed: int = 13, conversations: int = 400) -> list:
    """(time ns, scapy packet) of many client conversations, time-ordered."""
    from scapy.all import IP, TCP, UDP, Dot1Q, Ether, IPv6

    rng = random.Random(seed)
    out = []
    t0 = 1_700_000_000 * NS
    ports: dict[str, list[int]] = {}
    for n in range(conversations):
        v6 = rng.random() < 0.2
        src = f"2001:db8:ff::{rng.randrange(1, 40):x}" if v6 else f"172.16.0.{rng.randrange(1, 60)}"
        kind = rng.choices(["http", "junk", "direct", "udp", "halfopen", "reuse"], [50, 15, 8, 10, 7, 10])[0]
        dst = "2001:db8::100" if v6 else "10.0.0.100"
        dport = 80
        if kind == "direct":
            dst = "2001:db8:1::1" if v6 else rng.choice(["10.1.0.1", "10.1.0.3", "10.1.0.11"])
            dport = rng.choice([8080, 22, 53, 9999])
        used = ports.setdefault(src, [])
        sport = rng.choice(used) if kind == "reuse" and used else rng.randrange(1024, 65535)
        used.append(sport)
        t = t0 + rng.randrange(0, 240 * NS)

        def ip():
            return IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst, id=rng.getrandbits(16))

        seq = rng.getrandbits(32)
        ack = rng.getrandbits(32)
        win = rng.choice([65535, 65535, 2000, 300])
        script = []
        if kind == "udp" or (kind == "direct" and dport in (53, 9999)):
            for _ in range(rng.randrange(1, 4)):
                script.append(
                    ip() / UDP(sport=sport, dport=53 if kind == "udp" else dport) / rng.randbytes(rng.randrange(0, 40))
                )
        else:
            script.append(
                ip() / TCP(sport=sport, dport=dport, flags="S", seq=seq, window=win, options=_tcp_options(rng, True))
            )
            seq += 1
            if kind == "halfopen":
                if rng.random() < 0.5:
                    script.append(script[-1].copy())  # the SYN again
            elif kind == "junk":
                for _ in range(rng.randrange(1, 8)):
                    flags = rng.choice(["A", "PA", "FA", "R", "RA", "S", "SA", "F", ""])
                    data = rng.randbytes(rng.randrange(1, 30)) if "P" in flags or rng.random() < 0.2 else b""
                    off = rng.choice([0, 0, 0, 1, -1, 100, -5000])
                    script.append(
                        ip()
                        / TCP(
                            sport=sport,
                            dport=dport,
                            flags=flags,
                            seq=(seq + off) & 0xFFFFFFFF,
                            ack=ack,
                            window=win,
                            options=_tcp_options(rng, False),
                        )
                        / data
                    )
                    if off == 0:
                        seq += len(data) + ("F" in flags) + ("S" in flags)
            else:
                script.append(ip() / TCP(sport=sport, dport=dport, flags="A", seq=seq, ack=ack, window=win))
                for _ in range(rng.randrange(0, 4)):
                    req = rng.choice(REQUESTS) if rng.random() < 0.8 else rng.randbytes(rng.randrange(1, 3000))
                    pieces = [req] if rng.random() < 0.7 else [req[: len(req) // 2], req[len(req) // 2 :]]
                    for piece in pieces:
                        if not piece:
                            continue
                        off = 0 if rng.random() < 0.9 else rng.choice([50, -3])
                        script.append(
                            ip()
                            / TCP(
                                sport=sport,
                                dport=dport,
                                flags="PA",
                                seq=(seq + off) & 0xFFFFFFFF,
                                ack=ack,
                                window=win,
                                options=_tcp_options(rng, False),
                            )
                            / piece
                        )
                        if off == 0:
                            seq += len(piece)
                    if rng.random() < 0.5:
                        script.append(ip() / TCP(sport=sport, dport=dport, flags="A", seq=seq, ack=ack, window=win))
                end = rng.random()
                if end < 0.7:
                    script.append(ip() / TCP(sport=sport, dport=dport, flags="FA", seq=seq, ack=ack, window=win))
                    seq += 1
                    script.append(ip() / TCP(sport=sport, dport=dport, flags="A", seq=seq, ack=ack, window=win))
                elif end < 0.85:
                    script.append(ip() / TCP(sport=sport, dport=dport, flags="R", seq=seq, window=0))
        for pkt in script:
            frame = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:fe")
            if rng.random() < 0.1:
                frame = frame / Dot1Q(vlan=7)
            out.append((t, frame / pkt))
            t += (
                rng.choice([1000, 50_000, 2_000_000, 30 * NS, 61 * NS, 64 * NS])
                if rng.random() < 0.05
                else rng.randrange(1000, 20_000_000)
            )
    out.sort(key=lambda item: item[0])
    return out


def write_chaos(path: Path) -> None:
    from scapy.all import PcapWriter

    with PcapWriter(str(path), nano=True, sync=False) as w:
        for t, pkt in chaos_packets():
            pkt.time = t / NS
            w.write(pkt)
    # scapy's float time loses nanoseconds: rewrite the records' times exactly.
    data = bytearray(path.read_bytes())
    pos = 24
    for t, _ in chaos_packets():
        import struct

        struct.pack_into("<II", data, pos, t // NS, t % NS)
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
    path.write_bytes(bytes(data))


def write_http(path: Path, flows: int = 3000) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from peers import make_bench_capture

    make_bench_capture(path, flows, packets_per_flow=5)


def cases(work: Path) -> list[tuple[str, Path, Path, list[str]]]:
    """(name, capture, config, extra arguments) of each replay."""
    emulated = ROOT / "pcaps" / "emulated.toml"
    chaos_toml, http_toml = work / "chaos.toml", work / "http.toml"
    chaos_toml.write_text(CHAOS_CONFIG)
    http_toml.write_text(HTTP_CONFIG)
    write_chaos(work / "chaos.pcap")
    write_http(work / "http.pcap")
    out = [(p.stem, p, emulated, ["--at", "2.5", "--at", "100"]) for p in sorted((ROOT / "pcaps").glob("*.pcap*"))]
    out.append(("chaos", work / "chaos.pcap", chaos_toml, ["--at", "30", "--at", "61", "--at", "130", "--at", "400"]))
    out.append(("http", work / "http.pcap", http_toml, ["--at", "0.002"]))
    return out


def run(checkout: Path, work: Path) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    lines = []

    def cli(*args):
        proc = subprocess.run(
            [sys.executable, "-m", "l4emu.cli", *map(str, args)], env=env, capture_output=True, text=True, cwd=work
        )
        if proc.returncode:
            raise SystemExit(f"l4emu {' '.join(map(str, args))}: exit {proc.returncode}\n{proc.stderr}")
        return proc.stdout

    def digest(name, what, data: bytes):
        lines.append(f"{name} {what} {hashlib.sha256(data).hexdigest()}")

    for name, capture, config, extra in cases(work):
        d = work / name
        d.mkdir(exist_ok=True)
        ext = capture.suffix
        for seed in (1, 7):
            tag = f"{name}/seed{seed}"
            out, inside = d / f"out{ext}", d / f"in{ext}"
            summary = json.loads(
                cli(
                    "replay",
                    capture,
                    "-c",
                    config,
                    "-o",
                    out,
                    "--inside",
                    inside,
                    "--seed",
                    seed,
                    "--json",
                    "--state-out",
                    d / "state.json",
                    *extra,
                )
            )
            summary.pop("elapsed_s")
            summary.pop("packets_per_s")
            summary["capture"] = summary["output"] = None
            summary["warnings"] = [w.replace(str(capture), "CAPTURE") for w in summary["warnings"]]
            digest(tag, "summary", json.dumps(summary, sort_keys=True).encode())
            digest(tag, out.name, out.read_bytes())
            digest(tag, inside.name, inside.read_bytes())
            for state in sorted(d.glob("state*.json")):
                digest(tag, state.name, state.read_bytes())
                digest(tag, state.name + ":sockets", cli("sockets", state).encode())
                digest(tag, state.name + ":sockets-json", cli("sockets", state, "--json").encode())
                digest(tag, state.name + ":conntrack", cli("conntrack", state).encode())
                state.unlink()
        cli("replay", capture, "-c", config, "-o", d / "out.pcapng", "--annotate", "--seed", 3)
        digest(f"{name}/annotate", "out.pcapng", (d / "out.pcapng").read_bytes())
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the source tree (built in place) to run")
    parser.add_argument("--work", type=Path, required=True, help="a scratch directory")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print("\n".join(run(args.checkout.resolve(), args.work.resolve())))


if __name__ == "__main__":
    main()
