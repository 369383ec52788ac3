"""The benchmark's input capture and the peers l4emu is measured against, each doing the same NAT.

The capture is client-side traffic only: many clients open short TCP flows to one VIP (SYN, ACK,
n-4 data segments, FIN, ACK; six packets give two data segments). A stateful peer keeps a 5-tuple
table, picks reals round-robin on a flow's SYN, rewrites the destination to the real, recomputes
checksums, and drops a non-SYN packet of an unknown flow (as IPVS and l4emu do); replies from a
real (none in this capture) are SNATed back to the VIP. Reals are (address, port) pairs, e.g.
BENCH_REALS.
"""
import random
import shutil
import socket
import struct

BENCH_VIP, BENCH_VPORT = "10.0.0.100", 80
BENCH_REALS = [(f"10.1.0.{k}", 8080) for k in range(1, 5)]
SWITCH_MAC = bytes.fromhex("0200000000fe")
ROUTER_MAC = bytes.fromhex("020000000001")
CLIENT_BASE = 0xAC100001          # 172.16.0.1: clients are 172.16.0.1 upwards
CLIENTS = 65536                   # "many clients": a flow's client is its index modulo this
SPREAD = 1024                     # steps between two packets of a flow: about (n-1)*SPREAD flows open at once
EPOCH_S = 1_700_000_000           # a fixed start, so two runs write the same bytes
REQUEST = f"GET /index.html HTTP/1.1\r\nHost: {BENCH_VIP}\r\nAccept: */*\r\n\r\n".encode()
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01


def _sum16(data):
    """The 16-bit word sum the Internet checksum folds (RFC 1071), unfolded so parts can be added."""
    if len(data) % 2:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


class _Shape:
    """A packet with its per-flow fields zero and its checksum sums precomputed, patched per flow for speed."""

    def __init__(self, flags, payload=b"", options=b""):
        vip = socket.inet_aton(BENCH_VIP)
        tcp = struct.pack("!HHIIBBHHH", 0, BENCH_VPORT, 0, 0, (5 + len(options) // 4) << 4, flags,
                          64240, 0, 0) + options + payload
        total = 20 + len(tcp)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 6, 0, bytes(4), vip)
        self.ip_sum = _sum16(ip)
        self.tcp_sum = _sum16(vip) + 6 + len(tcp) + _sum16(tcp)
        self.length = 14 + total
        # Fixed bytes between the patched fields: Ethernet and IP up to its checksum, the VIP,
        # the destination port, then TCP from the data offset on (its checksum excluded).
        head, tail = SWITCH_MAC + ROUTER_MAC + b"\x08\x00" + ip[:10], tcp[18:]
        self.pack = struct.Struct(f"!{len(head)}sHI4sHHII4sH{len(tail)}s").pack
        self.fixed = (head, vip, BENCH_VPORT, tcp[12:16], tail)


def _flow_script(packets_per_flow):
    """(shape, seq offset, ack offset) per packet: SYN, ACK, data..., FIN, ACK (cut short if n < 4)."""
    syn = _Shape(SYN, options=struct.pack("!BBH", 2, 4, 1460))
    ack, data, fin = _Shape(ACK), _Shape(PSH | ACK, REQUEST), _Shape(FIN | ACK)
    n_data = max(0, packets_per_flow - 4)
    script = [(syn, 0, 0), (ack, 1, 1)] + [(data, 1 + k * len(REQUEST), 1) for k in range(n_data)]
    sent = 1 + n_data * len(REQUEST)
    script += [(fin, sent, 1), (ack, sent + 1, 2)]
    return script[:packets_per_flow]


def make_bench_capture(path, flows, packets_per_flow=6, seed=1):
    """Write the benchmark capture (Ethernet, microsecond pcap, 1 us apart); returns packets written."""
    per_client = -(-flows // CLIENTS)
    if per_client > 64512:
        raise ValueError(f"at most {CLIENTS * 64512} flows: each client has ports 1024-65535")
    rng = random.Random(seed)
    script = _flow_script(packets_per_flow)
    # Consecutive ports from a random base per client: unique 5-tuples without a set to check them.
    base_port = [rng.randrange(1024, 65537 - per_client) for _ in range(min(flows, CLIENTS))]
    # Per flow: source address, source port, ISNs. A one's-complement sum is the plain sum modulo
    # 0xFFFF (2**16 = 1 mod 0xFFFF), so a checksum is (-sum) % 0xFFFF of the words and 32-bit values.
    per_flow = []
    for flow in range(flows):
        src = CLIENT_BASE + flow % CLIENTS
        sport = base_port[flow % CLIENTS] + flow // CLIENTS
        per_flow.append((src, sport, rng.getrandbits(32), rng.getrandbits(32), src + sport))
    record = struct.Struct("<IIII").pack
    steps = [(sh.pack, sh.length, sh.ip_sum, sh.tcp_sum, *sh.fixed, dseq, dack) for sh, dseq, dack in script]
    written = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        out = []
        for step in range(flows + (len(steps) - 1) * SPREAD):
            # Packet j of flow `step - j*SPREAD`: each flow keeps its order while many interleave.
            for j in range(min(len(steps), step // SPREAD + 1)):
                flow = step - j * SPREAD
                if flow >= flows:
                    continue
                src, sport, c_isn, s_isn, words = per_flow[flow]
                pack, length, ip_sum, tcp_sum, head, vip, vport, mid, tail, dseq, dack = steps[j]
                seq, ack = (c_isn + dseq) & 0xFFFFFFFF, (s_isn + dack) & 0xFFFFFFFF
                out.append(record(EPOCH_S + written // 1_000_000, written % 1_000_000, length, length))
                out.append(pack(head, -(ip_sum + src) % 0xFFFF, src, vip, sport, vport, seq, ack, mid,
                                -(tcp_sum + words + seq + ack) % 0xFFFF, tail))
                written += 1
            if len(out) > 65536:
                f.write(b"".join(out))
                out.clear()
        f.write(b"".join(out))
    return written


class _Nat:
    """The stateful NAT both Python peers share, so they differ only in how they parse and write."""

    def __init__(self, vip, vport, reals):
        self.vip, self.vport = socket.inet_aton(vip), vport
        self.reals = [(socket.inet_aton(ip), port) for ip, port in reals]
        # Keyed on the client's address and port: the rest of the 5-tuple is the one service's.
        self.forward, self.replies, self.next_real = {}, set(), 0

    def translate(self, src, sport, dst, dport, flags):
        """New (src, sport, dst, dport), the same if not ours, or None to drop."""
        if dst == self.vip and dport == self.vport:
            real = self.forward.get((src, sport))
            if real is None:
                if flags & (SYN | ACK) != SYN:
                    return None
                real = self.reals[self.next_real % len(self.reals)]
                self.next_real += 1
                self.forward[(src, sport)] = real
                self.replies.add((real, src, sport))
            return src, sport, real[0], real[1]
        if ((src, sport), dst, dport) in self.replies:
            return self.vip, self.vport, dst, dport
        return src, sport, dst, dport


def dpkt_nat(in_path, out_path, vip, vport, reals):
    """The NAT in plain dpkt: parse, rewrite, zero the sums so dpkt recomputes them; returns packets read."""
    import dpkt
    nat, count = _Nat(vip, vport, reals), 0
    with open(in_path, "rb") as fin, open(out_path, "wb") as fout:
        reader = dpkt.pcap.Reader(fin)
        writer = dpkt.pcap.Writer(fout, snaplen=65535, linktype=reader.datalink())
        for ts, buf in reader:
            count += 1
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP):
                writer.writepkt(buf, ts)
                continue
            tcp = ip.data
            new = nat.translate(ip.src, tcp.sport, ip.dst, tcp.dport, tcp.flags)
            if new is None:
                continue
            ip.src, tcp.sport, ip.dst, tcp.dport = new
            ip.sum = tcp.sum = 0        # dpkt fills in both when the IP header's sum is zero
            writer.writepkt(bytes(eth), ts)
    return count


def scapy_nat(in_path, out_path, vip, vport, reals, limit):
    """The NAT in scapy on the first `limit` packets (scapy is too slow for all); returns packets read."""
    from scapy.layers.inet import IP, TCP
    from scapy.utils import PcapReader, PcapWriter
    nat, count = _Nat(vip, vport, reals), 0
    with PcapReader(str(in_path)) as reader, PcapWriter(str(out_path), linktype=reader.linktype) as writer:
        for pkt in reader:
            if count == limit:
                break
            count += 1
            if IP in pkt and TCP in pkt:
                ip, tcp = pkt[IP], pkt[TCP]
                new = nat.translate(socket.inet_aton(ip.src), tcp.sport, socket.inet_aton(ip.dst),
                                    tcp.dport, int(tcp.flags))
                if new is None:
                    continue
                src, tcp.sport, dst, tcp.dport = new
                ip.src, ip.dst = socket.inet_ntoa(src), socket.inet_ntoa(dst)
                del ip.chksum, tcp.chksum       # scapy recomputes deleted checksums when it builds
            writer.write(pkt)
    return count


def tcprewrite_cmd(in_path, out_path, vip, reals, vport=BENCH_VPORT):
    """argv for tcprewrite, or None if it is not installed.

    tcprewrite is stateless: every packet to the VIP goes to the first real. --portmap rewrites
    source and destination ports alike, which is harmless here since no client uses port vport.
    A whole process (start-up included): bench.py times it against the whole `l4emu replay` command,
    never against l4emu's in-process replay(); dpkt_nat and scapy_nat are the in-process peers.
    """
    exe = shutil.which("tcprewrite")
    if exe is None:
        return None
    real_ip, real_port = reals[0]
    return [exe, f"--infile={in_path}", f"--outfile={out_path}", f"--dstipmap={vip}/32:{real_ip}/32",
            f"--portmap={vport}:{real_port}", "--fixcsum"]
