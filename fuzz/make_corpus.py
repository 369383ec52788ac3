"""Write the fuzzers' seed corpora: fuzz/corpus/{datapath,pcap,tun,hosts,methods,fragments,forward,shard,gslb}/
(git-ignored; fuzz/run.sh calls this).

datapath seeds: every frame of pcaps/*.pcap* alone, runs of consecutive frames (handshakes, data,
replies and closes of interleaved flows, so that a seed walks the state machine), and every frame
of tests/malformed.py's catalogue on its own link type. pcap seeds: the sample captures, each cut
short in a few places, and small files in the format variants the reader handles (both byte
orders, nanoseconds, IDB options, EPB, PB, SPB, a second section). tun seeds: what live mode reads
from a TUN with offloads (tun_records).
"""
from __future__ import annotations

import hashlib
import shutil
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests")]

from common import MAX_FRAMES, encode, encode_records, fullnat_conversation  # noqa: E402
from malformed import CATALOGUE, well_formed_variants  # noqa: E402
from pcapio_build import epb, idb, pb, pcap, shb, spb  # noqa: E402
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror, fragment  # noqa: E402
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPerror6, IPv6, IPv6ExtHdrFragment, fragment6  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.utils import checksum  # noqa: E402

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


def forward_seeds():
    """The datapath's seeds, and full-NAT conversations whose ACK takes TOA (or has no room for it)."""
    mss = bytes([2, 4, 5, 0xB4])
    full = bytes([1, 1, 8, 10]) + bytes(8) + bytes([1, 1, 8, 10]) + bytes(8) + bytes([1, 1, 8, 10]) + bytes(8)
    return datapath_seeds() + [encode(1, fullnat_conversation(family, options, b"GET"), [1, 1, 1])
                               for family in (4, 6) for options in (b"", mss, full)]


def hosts_seeds():
    """Conversations with emulated hosts: runs of the clients' capture, whole and in pieces."""
    seeds = []
    for path in (ROOT / "pcaps" / "clients.pcap", ROOT / "pcaps" / "sample-ns.pcapng"):
        frames = frames_of(path)
        for start in range(0, len(frames), RUN // 2):
            chunk = frames[start:start + RUN]
            seeds.append(encode(chunk[0][0], [f for lt, f in chunk if lt == chunk[0][0]], [1] * len(chunk)))
    return seeds


def fragment_seeds():
    """Datagrams in fragments for common.FRAGMENTS_CONFIG's VIPs (UDP and TCP, IPv4 and IPv6), in order,
    reversed, overlapping and missing one, so the fuzzer starts inside both reassemblies."""
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    seeds = []
    ends = [(IP, "10.0.0.100", "172.16.0.1"), (IPv6, "2001:db8::100", "2001:db8:ff::10")]
    for k, (layer, vip, client) in enumerate(ends):
        for proto in (UDP(sport=40000 + k, dport=53), TCP(sport=40100 + k, dport=80, flags="S")):
            if layer is IP:
                pieces = fragment(IP(src=client, dst=vip, id=0x4400 + k) / proto / bytes(1800), fragsize=600)
            else:
                pieces = fragment6(IPv6(src=client, dst=vip) / IPv6ExtHdrFragment(id=0x4400 + k) / proto
                                   / bytes(1800), 648)
            frames = [eth / piece for piece in pieces]
            seeds += [encode(1, frames, [0] * len(frames)), encode(1, frames[::-1], [1] * len(frames)),
                      encode(1, frames[:1] + frames[:-1] + frames[1:2], [0] * (len(frames) + 1)),
                      encode(1, frames[1:], [100] * (len(frames) - 1))]
    return seeds


def gslb_seeds():
    """A GSLB's traffic (pcaps/gslb.pcap: UDP queries, HTTP to the sites, a DNS conversation over TCP),
    in runs, and the TCP conversation alone, so the fuzzer starts inside the "dns" app's reassembly."""
    frames = frames_of(ROOT / "pcaps" / "gslb.pcap")
    seeds = [encode(1, [f for _, f in frames[start:start + RUN]], [1] * RUN) for start in range(0, len(frames), RUN)]
    tcp = [f for _, f in frames if f[23] == 6 and b"\x00\x35" in (f[34:36], f[36:38])]
    return seeds + [encode(1, tcp, [0] * len(tcp))]


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


def vnet(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0) -> bytes:
    """struct virtio_net_hdr, little-endian as on x86."""
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def partial(packet) -> bytes:
    """packet (scapy, IPv4 or IPv6 with TCP or UDP right after the fixed header) as a TUN with
    offloads hands it over: NEEDS_CSUM, the checksum field holding the pseudo-header sum only."""
    raw = bytearray(bytes(packet))
    start = 20 if raw[0] >> 4 == 4 else 40
    udp = (raw[9] if start == 20 else raw[6]) == 17
    field = start + (6 if udp else 16)
    addresses = raw[12:20] if start == 20 else raw[8:40]
    pseudo = bytes(addresses) + struct.pack(">HH", 17 if udp else 6, len(raw) - start)
    raw[field:field + 2] = struct.pack(">H", 0xFFFF - checksum(pseudo))
    return vnet(1, 0, 0, 0, start, 6 if udp else 16) + bytes(raw)


def tun_records():
    """What a TUN with offloads reads in live mode (fuzz/common.py's config): UDP runs to the VIP
    (IPv4 and IPv6, one shorter last datagram, another flow in between) that write_from coalesces,
    TCP handshakes, a TSO super-packet, a reply from a real, traffic for no service, and records
    cut short."""
    c4, c6 = "172.16.0.2", "2001:db8:ff::2"
    udp4 = [IP(src=c4, dst="10.0.0.100") / UDP(sport=4000, dport=53) / (b"q" * 64) for _ in range(5)]
    udp4.append(IP(src=c4, dst="10.0.0.100") / UDP(sport=4000, dport=53) / b"short")
    other = IP(src=c4, dst="10.0.0.100") / UDP(sport=4001, dport=53) / (b"q" * 64)
    syn4 = IP(src=c4, dst="10.0.0.100") / TCP(sport=5000, dport=80, flags="S", seq=1)
    ack4 = IP(src=c4, dst="10.0.0.100") / TCP(sport=5000, dport=80, flags="A", seq=2, ack=1)
    tso = IP(src=c4, dst="10.0.0.100") / TCP(sport=5000, dport=80, flags="PA", seq=2, ack=1) / (b"d" * 4000)
    syn6 = IPv6(src=c6, dst="2001:db8::100") / TCP(sport=5000, dport=80, flags="S")
    udp6 = [IPv6(src=c6, dst="2001:db8::100") / UDP(sport=4000, dport=8053) / (b"q" * 40) for _ in range(3)]
    reply = IP(src="10.1.0.11", dst=c4) / UDP(sport=53, dport=4000) / b"answer"
    stray = IP(src=c4, dst="192.0.2.9") / UDP(sport=4000, dport=9) / b"nobody"
    records = [partial(p) for p in udp4[:3] + [other] + udp4[3:] + [syn4, ack4]]
    records.append(vnet(1, 1, 40, 1448, 20, 16) + partial(tso)[10:])
    records += [partial(syn6)] + [partial(p) for p in udp6] + [partial(reply), vnet() + bytes(stray)]
    records += [vnet(1), vnet(1, 5, 28, 64, 20, 6) + bytes(udp4[0])[:27], b"\x01\x02"]
    return records


def tun_seeds():
    records = tun_records()
    return [encode_records(records), encode_records(records[:6])] + [encode_records([r]) for r in records]


if __name__ == "__main__":
    base = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "corpus"
    print(f"make_corpus: {write(base / 'datapath', datapath_seeds())} datapath seeds, "
          f"{write(base / 'pcap', pcap_seeds())} pcap seeds, {write(base / 'tun', tun_seeds())} tun seeds, "
          f"{write(base / 'hosts', hosts_seeds())} hosts seeds, "
          f"{write(base / 'methods', hosts_seeds())} methods seeds, "
          f"{write(base / 'fragments', fragment_seeds())} fragments seeds, "
          f"{write(base / 'forward', forward_seeds())} forward seeds, "
          f"{write(base / 'shard', pcap_seeds())} shard seeds, "
          f"{write(base / 'gslb', gslb_seeds())} gslb seeds in {base}")
