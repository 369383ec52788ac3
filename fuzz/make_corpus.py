"""Write the fuzzers' seed corpora: fuzz/corpus/{datapath,pcap}/ (git-ignored; fuzz/run.sh calls this).

datapath seeds: every frame of pcaps/*.pcap* alone, runs of consecutive frames (handshakes, data,
replies and closes of interleaved flows, so that a seed walks the state machine), and every frame
of tests/malformed.py's catalogue on its own link type. pcap seeds: the sample captures, each cut
short in a few places, and small files in the format variants the reader handles (both byte
orders, nanoseconds, IDB options, EPB, PB, SPB, a second section).
"""
from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests")]

from common import MAX_FRAMES, encode  # noqa: E402
from malformed import CATALOGUE, well_formed_variants  # noqa: E402
from pcapio_build import epb, idb, pb, pcap, shb, spb  # noqa: E402

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror  # noqa: E402
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPerror6, IPv6  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402

from l4emu.io import open_capture  # noqa: E402

RUN = MAX_FRAMES // 2


def frames_of(path: Path):
    """[(linktype, frame)] of a capture, read with l4emu's own reader."""
    out = []
    with open_capture(path) as reader:
        for batch in reader.batches():
            for i in range(len(batch)):
                out.append((reader.interfaces[0].linktype, batch.packet(i)))
    return out


def datapath_seeds():
    seeds = []
    for path in sorted((ROOT / "pcaps").glob("*.pcap*")):
        frames = frames_of(path)
        seeds += [encode(lt, [f]) for lt, f in frames]
        for start in range(0, len(frames), RUN // 2):
            chunk = frames[start:start + RUN]
            seeds.append(encode(chunk[0][0], [f for lt, f in chunk if lt == chunk[0][0]], [3] * len(chunk)))
    seeds += [encode(case.linktype, [case.frame]) for case in CATALOGUE + well_formed_variants()]
    good = [case.frame for case in well_formed_variants() if case.linktype == 1]
    seeds += [encode(1, good + [case.frame], [0] * (len(good) + 1)) for case in CATALOGUE if case.linktype == 1]
    return seeds + icmp_seeds()


def icmp_seeds():
    """A flow opened, then ICMP errors quoting it from both sides (fuzz/common.py's config), so the
    fuzzer starts inside the ICMP translation, which rewrites the quoted packet in place."""
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    client, vip, client6, vip6 = "172.16.0.1", "10.0.0.100", "2001:db8:ff::10", "2001:db8::100"
    seeds = []
    for real in ("10.1.0.1", "10.1.0.2"):
        seeds.append(encode(1, [
            eth / IP(src=client, dst=vip) / TCP(sport=40000, dport=80, flags="S"),
            eth / IP(src="10.1.0.254", dst=client) / ICMP(type=3, code=4, nexthopmtu=1400)
            / IPerror(src=client, dst=real) / TCPerror(sport=40000, dport=8080, flags="S"),
            eth / IP(src=client, dst=vip) / ICMP(type=3, code=3) / IPerror(src=vip, dst=client)
            / TCPerror(sport=80, dport=40000, flags="SA"),
            eth / IP(src=client, dst=vip) / UDP(sport=40001, dport=53) / b"q",
            eth / IP(src=client, dst=vip) / ICMP(type=11) / IPerror(src=vip, dst=client)
            / UDPerror(sport=53, dport=40001) / b"r"]))
    for real in ("2001:db8:1::1", "2001:db8:1::2"):
        seeds.append(encode(1, [
            eth / IPv6(src=client6, dst=vip6) / TCP(sport=40002, dport=80, flags="S"),
            eth / IPv6(src="2001:db8:1::fe", dst=client6) / ICMPv6PacketTooBig(mtu=1280)
            / IPerror6(src=client6, dst=real) / TCP(sport=40002, dport=8080, flags="S")]))
    return seeds


def pcap_seeds():
    seeds = []
    for path in sorted((ROOT / "pcaps").glob("*.pcap*")):
        data = path.read_bytes()
        seeds.append(data[:4096])
        seeds += [data[:cut] for cut in (24, 28, 40, 100, 333, 1000)]
    frames = [case.frame for case in well_formed_variants() if case.linktype == 1][:3]
    seeds += [pcap([(1, f) for f in frames]), pcap([(7, f) for f in frames], ">", True, snaplen=60),
              pcap([(1, f) for f in frames], linktype=101 | (4 << 28))]
    for e in "<>":
        seeds.append(shb(e) + idb(e, 1, 0, tsresol=0x89, tsoffset=3) + b"".join(epb(e, 0, 5, f) for f in frames)
                     + pb(e, 0, 9, frames[0]) + spb(e, len(frames[1]), frames[1]) + shb(e) + idb(e, 101, 64)
                     + epb(e, 0, 1, frames[2][14:]))
    return seeds


def write(directory: Path, seeds) -> int:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    for seed in seeds:
        (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    return len(list(directory.iterdir()))


if __name__ == "__main__":
    base = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "corpus"
    print(f"make_corpus: {write(base / 'datapath', datapath_seeds())} datapath seeds, "
          f"{write(base / 'pcap', pcap_seeds())} pcap seeds in {base}")
