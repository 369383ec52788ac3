"""The fuzz harnesses' bodies (plain Python, so tests replay crash inputs without atheris): a small
switch, the input format of the datapath harness, and the invariants checked after every input.

The datapath harness's input: byte 0 picks the link type (LINKTYPES[b % len]); then frames, each as
[gap][len_hi][len_lo][bytes...]: `gap` is tenths of a second since the previous frame (so timers,
expiry and eviction run), the length is cut to what is left. make_corpus.py writes seeds this way.
The hosts harness takes the same input and sends it to emulated hosts through the emulate loop; the
gslb harness through a GSLB replay of pcaps/gslb.toml (DNS over UDP and TCP answered, sites' switches).
"""
from __future__ import annotations

import socket
import tomllib
from pathlib import Path

from l4emu import config as configmod
from l4emu import schedulers
from l4emu.datapath._batch import NS, Batch
from l4emu.datapath._datapath import DROP_REASONS
from l4emu.emulate import BatchSink, Emulator
from l4emu.io.pcap._read import Scanner
from l4emu.io.pcap._write import Encoder
from l4emu.io.tun._io import GSO_UDP_L4, VNET_HDR_LEN, TunIO
from l4emu.switch import Switch

# Every link type the parser knows (Ethernet, raw IP x3, SLL, SLL2, NULL, LOOP) and one it does not.
LINKTYPES = (1, 101, 12, 14, 113, 276, 0, 108, 147, 228, 229)      # new ones go last: seeds keep their index
MAX_FRAMES = 32
# The pcap encoder's refusals of what the classic format cannot hold (the writer reports them as
# WriteError): records of several link types in one file, and seconds past 32 bits.
PCAP_REFUSALS = ("several link types", "the last second a .pcap record can hold")

# A tiny table (4 entries) so that eviction and table_full happen within a few frames; short
# timeouts so that expiry does too; persistence (templates), a hashing scheduler, IPv6, UDP.
CONFIG = """
[table]
max_connections = 4
[timeouts]
established = 3
syn_recv = 1
fin_wait = 1
time_wait = 1
udp = 2
[[service]]
vip = "10.0.0.100:80"
scheduler = "wlc"
persistence = 2
persistence_netmask = 24
  [[service.real]]
  address = "10.1.0.1:8080"
  [[service.real]]
  address = "10.1.0.2:8080"
  weight = 3
[[service]]
vip = "10.0.0.100:53"
protocol = "udp"
scheduler = "sh"
  [[service.real]]
  address = "10.1.0.11:53"
  [[service.real]]
  address = "10.1.0.12:53"
[[service]]
vip = "[2001:db8::100]:80"
scheduler = "mh"
  [[service.real]]
  address = "[2001:db8:1::1]:8080"
  [[service.real]]
  address = "[2001:db8:1::2]:8080"
"""
_CONFIG = configmod.from_dict(tomllib.loads(CONFIG), schedulers.catalog())


def small_switch(seed: int = 1) -> Switch:
    """A fresh switch per input, so that every crash reproduces from its input alone."""
    return Switch(_CONFIG, seed=seed)


def encode(linktype: int, frames, gaps=None) -> bytes:
    """A datapath harness input from frames (the seed corpus and regression tests use it)."""
    out = bytearray([LINKTYPES.index(linktype)])
    for k, frame in enumerate(frames[:MAX_FRAMES]):
        frame = bytes(frame)[:0xFFFF]
        out += bytes([gaps[k] if gaps else 1]) + len(frame).to_bytes(2, "big") + frame
    return bytes(out)


def decode(data: bytes):
    """(linktype, [frames], [timestamps_ns]) from a datapath harness input; never fails."""
    if not data:
        return LINKTYPES[0], [], []
    linktype = LINKTYPES[data[0] % len(LINKTYPES)]
    frames, stamps, pos, now = [], [], 1, NS
    while pos < len(data) and len(frames) < MAX_FRAMES:
        gap = data[pos]
        size = int.from_bytes(data[pos + 1:pos + 3], "big")
        pos += 3
        frames.append(data[pos:pos + size])
        pos += size
        now += gap * NS // 10
        stamps.append(now)
    return linktype, frames, stamps


def check_invariants(switch: Switch) -> None:
    """What must hold after any input: every packet has one verdict, the table stays in its bounds."""
    s = switch.stats()
    verdicts = s["new"] + s["forward"] + s["reply"] + s["answer"] + s["passed"] + s["dropped_total"] + s["icmp"]
    verdicts += s["fragments_held"] + s["fragments_expired"]     # track: waiting, or never sent
    verdicts += s.get("reasm_fragments_queued", 0)                # reassemble: inside their datagram's verdict
    if s["packets"] != verdicts:
        raise AssertionError(f"{s['packets']} packets but {verdicts} verdicts: {s}")
    # An ICMP error the switch sends stands for a dropped packet: its reason is counted with the drops.
    if (s["dropped_total"] + s["icmp"] != sum(s["dropped"].values())
            or s["passed"] != sum(s["passed_by_reason"].values())):
        raise AssertionError(f"reasons do not add up: {s}")
    table = switch.table_info()
    if not table["used"] <= table["peak"] <= table["capacity"]:
        raise AssertionError(f"table {table}: used, peak and capacity out of order")
    real_conns = sum(r["active"] + r["inactive"] for r in switch.real_counters())
    if real_conns > table["used"]:
        raise AssertionError(f"reals count {real_conns} connections, the table holds {table['used']}")


# The same services reached by dr and every tunnel (docs/forwarding.md), with a small MTU so that
# the ICMP errors and drops of the forwarding path happen on short inputs too; and full-NAT ones, with
# so few local ports that they run out.
FORWARD_CONFIG = """
[table]
max_connections = 4
local_port_range = [1025, 1026]
[[service]]
vip = "10.0.0.100:80"
mtu = 1280
fragments = "track"
source_address = ["10.0.0.2", "2001:db8::2"]
  [[service.real]]
  address = "10.1.0.1:80"
  forward = "dr"
  mac = "02:00:00:00:00:01"
  [[service.real]]
  address = "[2001:db8:1::2]:80"
  forward = "tun"
  tun_type = "gue"
  tun_port = 6080
  tun_flags = "csum"
  [[service.real]]
  address = "10.1.0.3:80"
  forward = "tun"
  encap = "katran"
[[service]]
vip = "[2001:db8::100]:80"
protocol = "udp"
fragments = "3tuple"
source_address = ["10.0.0.2", "2001:db8::2"]
  [[service.real]]
  address = "10.1.0.4:80"
  forward = "tun"
  tun_type = "gre"
  tun_flags = "csum"
  [[service.real]]
  address = "[2001:db8:1::5]:80"
  forward = "tun"
[[service]]
vip = "10.0.0.101:80"
local_addresses = ["10.0.0.21", "10.0.0.22"]
  [[service.real]]
  address = "10.1.0.6:8080"
  forward = "fullnat"
[[service]]
vip = "[2001:db8::101]:80"
  [[service.real]]
  address = "[2001:db8:1::6]:8080"
  forward = "fullnat"
  local_addresses = ["2001:db8::21"]
[[service]]
vip = "10.0.0.100:53"
protocol = "udp"
fragments = "reassemble"
mtu = 1280
  [[service.real]]
  address = "10.1.0.6:53"
  [[service.real]]
  address = "10.1.0.7:53"
  forward = "dr"
  mac = "02:00:00:00:00:07"
[[service]]
vip = "[2001:db8::101]:53"
protocol = "udp"
fragments = "reassemble"
source_address = ["10.0.0.2", "2001:db8::2"]
  [[service.real]]
  address = "[2001:db8:1::6]:53"
  forward = "dr"
  mac = "02:00:00:00:00:06"
  [[service.real]]
  address = "10.1.0.8:53"
  forward = "tun"
[defrag]
ipfrag_high_thresh = 16384
ipfrag_time = 2
"""
_FORWARD_CONFIG = configmod.from_dict(tomllib.loads(FORWARD_CONFIG), schedulers.catalog())


def run_forward(data: bytes) -> Switch:
    """The forward harness's body: run_frames on reals reached by dr and tunnels, where a forwarded
    frame may grow (encapsulation) and an answered one is replaced (icmp)."""
    return run_frames(data, Switch(_FORWARD_CONFIG, seed=1), resized=("new", "forward", "icmp", "more"))


def fullnat_conversation(family: int, options: bytes, payload: bytes = b"") -> list[bytes]:
    """Frames for FORWARD_CONFIG's full-NAT services: a SYN, the real's SYN-ACK (its options as given) to the
    first local address and port the switch lends, and the client's ACK of it (its options as given), which
    takes TOA if it has room: the option writing and the MSS parsing on arbitrary option bytes."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    vip, real, local, client = (
        ("10.0.0.101", "10.1.0.6", "10.0.0.21", "192.0.2.9")
        if family == 4
        else ("2001:db8::101", "2001:db8:1::6", "2001:db8::21", "2001:db8:9::9")
    )
    net = IP if family == 4 else IPv6
    link = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")     # no address resolution by scapy
    options = options[: len(options) - len(options) % 4]
    doff = 5 + len(options) // 4
    syn = link / net(src=client, dst=vip) / TCP(sport=4000, dport=80, flags="S", seq=1)
    synack = link / net(src=real, dst=local) / TCP(sport=8080, dport=1025, flags="SA", seq=77, ack=2,
                                                       dataofs=doff) / (options + payload)
    ack = link / net(src=client, dst=vip) / TCP(sport=4000, dport=80, flags="A", seq=2, ack=78,
                                                   dataofs=doff) / (options + payload)
    return [bytes(syn), bytes(synack), bytes(ack)]


def run_frames(data: bytes, switch: Switch | None = None, resized=("icmp",)) -> Switch:
    """The datapath harness's body: each frame in its own exactly-sized Batch, so that a read past a frame's
    end leaves the allocation and AddressSanitizer reports it. Dropped and passed frames must come
    out byte for byte; no frame may change length (but for the verdicts in `resized`: by default an ICMP
    error the switch answers with, such as time exceeded, as masq decrements the TTL); then
    check_invariants."""
    linktype, frames, stamps = decode(data)
    switch = switch or small_switch()
    held: list[bytes] = []          # fragments queued for reassembly, in the order they came
    for frame, stamp in zip(frames, stamps):
        batch = Batch.from_frames([frame], linktype, [stamp])
        completed = switch._datapath.reasm.oks
        switch.process(batch)
        verdict, detail = batch.result(0)
        out = batch.packet(0)
        # A fragment that completes a datagram (fragments = reassemble) becomes it, and a drop after that
        # (its UDP length, ...) is the datagram's: the slot holds the datagram. A pass (no service on its
        # port) is untouched traffic: the fragments as they came, byte for byte, in their order.
        reassembled = switch._datapath.reasm.oks != completed
        if reassembled and verdict == "pass":
            check_passed_fragments(batch, held + [frame])
            continue
        if (verdict, detail) == ("drop", DROP_REASONS.index("fragment_held")):
            held.append(frame)
        if verdict in ("pass", "drop") and out != frame and not reassembled:
            raise AssertionError(f"{verdict} ({detail}) but the frame changed: {frame.hex()} -> {out.hex()}")
        if len(out) != len(frame) and verdict not in resized and not reassembled:
            raise AssertionError(f"{verdict} changed the frame's length")
    check_invariants(switch)
    return switch


def check_passed_fragments(batch: Batch, came: list[bytes]) -> None:
    """A reassembled datagram that passed: every packet written is a pass, and they are the fragments that
    came (a subsequence of `came`, in its order) ending with the one that completed it."""
    outs = [batch.packet(i) for i in range(len(batch))]
    if {batch.result(i)[0] for i in range(len(batch))} != {"pass"} or outs[-1] != came[-1]:
        raise AssertionError(f"a passed datagram's fragments: {batch.results()}")
    at = 0
    for out in outs:
        while at < len(came) and came[at] != out:
            at += 1
        if at == len(came):
            raise AssertionError(f"a passed datagram's fragment that did not come so: {out.hex()}")
        at += 1


COMMENTS = small_switch().comment_table()


def run_capture(data: bytes) -> Switch:
    """The pcap harness's body: the reader's Scanner over the bytes in place (a malloc'd bytes object under
    PYTHONMALLOC=malloc, so ASan sees a read past the end), every batch through a small switch, then
    encoded as pcapng (with --annotate's comments, drops kept) and as pcap, in memory. A fault must
    stop reading with a message and an offset inside the file."""
    scanner = Scanner(data)
    switch = small_switch()
    batch = Batch(4)
    pcapng, pcap = Encoder(True), Encoder(False)
    idbs = delivered = 0
    while scanner.fill(batch):
        delivered += batch.n
        while idbs < scanner.interface_count:       # as CaptureWriter: an IDB per interface seen
            pcapng.add_interface(scanner.interface(idbs)[2])
            idbs += 1
        switch.process(batch)
        pcapng.encode(batch, True, COMMENTS, 0)
        first = pcap.first_written(batch, False)
        if first is not None:
            try:
                pcap.encode(batch, False, None, first[0])
            except ValueError as e:                 # what classic pcap cannot hold is refused, not written wrong
                if not any(refusal in str(e) for refusal in PCAP_REFUSALS):
                    raise
        if scanner.pos > len(data):
            raise AssertionError(f"reader position {scanner.pos} is past the end ({len(data)})")
    if scanner.failed and (not scanner.problem or scanner.fault_offset > len(data)):
        raise AssertionError(f"fault at {scanner.fault_offset} of {len(data)}: {scanner.problem!r}")
    check_invariants(switch)
    if switch.stats()["packets"] != delivered:
        raise AssertionError("not every delivered packet was processed")
    return switch


SHARD_WINDOW = 5  # run_shard deals in windows this small, so a file crosses several


def run_shard(data: bytes) -> None:
    """The shard harness's body: the pcap harness's input dealt to 3 workers by sharded replay's Dealer,
    fed by one Scanner window by window, as the parent deals: every packet the reader reads is dealt
    once, and the workers' copies (fill_dealt, from where the deal says each lies) are together the
    packets fill reads, each once, bytes and metadata alike, whatever the bytes; the cheap IPv4 dealing
    gives each frame (as Ethernet) the owner the whole parse gives it."""
    from array import array

    from l4emu.dist._shard import DEALT_BYTES, Dealer, fill_dealt
    from l4emu.dist.shard import dealing

    tables = dealing(small_switch().config)
    plain = Scanner(data)
    batch = Batch(4)
    read = []
    judge = Dealer(64, *tables)
    while plain.fill(batch):
        for j in range(batch.n):  # the IPv4 fast path deals as the whole parse does
            frame = batch.packet(j)
            read.append((frame, batch.meta(j)))
            if judge.owner_of(frame) != judge.owner_of(frame, parsed=True):
                raise AssertionError(f"packet {len(read) - 1}: the fast path and the parse deal it apart")
    scanner, dealer = Scanner(data), Dealer(3, *tables)
    dealt, owners = bytearray(SHARD_WINDOW * DEALT_BYTES), bytearray(SHARD_WINDOW)
    index = memoryview(array("I", bytes(4 * 4))).cast("B").cast("I")
    copied: list = []
    while True:
        low = scanner.seen
        dealer.begin(dealt, owners)
        count = scanner.feed(dealer, low + SHARD_WINDOW)
        dealer.end()
        if dealer.filled != count or sum(dealer.counts) != count or max(owners[:count], default=0) >= 3:
            raise AssertionError(f"window at {low}: {count} read, {dealer.filled} dealt, {dealer.counts}")
        for k in range(3):
            at = 0
            while (at := fill_dealt(batch, data, dealt, owners, k, at, count, index)) and batch.n:
                for j in range(batch.n):
                    if owners[index[j]] != k:
                        raise AssertionError(f"packet {low + index[j]}: owner {owners[index[j]]} copied by {k}")
                    copied.append((low + index[j], batch.packet(j), batch.meta(j)))
        if count < SHARD_WINDOW:
            break
    if scanner.seen != len(read) or sorted(copied) != [(i, *packet) for i, packet in enumerate(read)]:
        raise AssertionError(f"{len(copied)} packets copied by the workers, {len(read)} read")


# The tun harness's input: records [len_hi][len_lo][bytes...], each a virtio-net header (10 bytes) and the
# packet after it, as a TUN with IFF_VNET_HDR hands them over; the length is cut to what is left.
MAX_RECORDS = 48


def encode_records(records) -> bytes:
    out = bytearray()
    for record in records[:MAX_RECORDS]:
        record = bytes(record)[:0xFFFF]
        out += len(record).to_bytes(2, "big") + record
    return bytes(out)


def decode_records(data: bytes) -> list[bytes]:
    records, pos = [], 0
    while pos < len(data) and len(records) < MAX_RECORDS:
        size = int.from_bytes(data[pos:pos + 2], "big")
        records.append(data[pos + 2:pos + 2 + size])
        pos += 2 + size
    return records


def run_tun(data: bytes, tun_counters: dict | None = None) -> Switch:
    """The tun harness's body: the records through live mode's own TUN I/O (TunIO.read_into, the switch,
    TunIO.write_from) over a SOCK_SEQPACKET pair, which keeps record boundaries as a TUN does.
    Every record longer than its header is read, each packet is written or dropped, and every
    GSO UDP write is a well-formed datagram whose lengths add up. tun_counters, if given, gets the
    TunIO's counters (tests check that runs were coalesced)."""
    records = decode_records(data)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        for sock in (ours, theirs):
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sent = []
        for record in records:
            try:
                theirs.send(record)
            except BlockingIOError:         # the socket buffer is full: the rest is not read either
                break
            sent.append(record)
        switch = small_switch()
        io = TunIO(ours.fileno(), True, 8)
        batch = Batch(8)
        read = 0
        while True:
            got = io.read_into(batch)
            if got < 0:
                raise AssertionError(f"read_into failed: errno {-got}")
            if got == 0:
                break
            read += got
            switch.process(batch)
            kept = sum(batch.result(i)[0] != "drop" for i in range(len(batch)))
            written = io.write_from(batch)
            if io.write_errors or written != kept:
                raise AssertionError(f"{kept} packets kept, {written} written, {io.write_errors} write errors")
        expected = sum(len(r) > VNET_HDR_LEN for r in sent)
        if read != expected or io.packets_in != expected:
            raise AssertionError(f"{expected} packets sent, {read} read")
        # A GSO packet read is written back under its own header: those are not our runs.
        read_gso = {(r[:VNET_HDR_LEN], len(r)) for r in sent if len(r) > VNET_HDR_LEN and r[1] == GSO_UDP_L4}
        datagrams = 0
        while True:
            try:
                out = theirs.recv(1 << 17)
            except BlockingIOError:
                break
            datagrams += check_written(out, read_gso)
        if datagrams != io.packets_out:
            raise AssertionError(f"{io.packets_out} packets written, {datagrams} came out")
        if tun_counters is not None:
            tun_counters.update(packets_in=io.packets_in, packets_out=io.packets_out, gso_out=io.gso_out)
    check_invariants(switch)
    return switch


def check_written(out: bytes, read_gso: set) -> int:
    """How many packets one write carried; a GSO UDP write of ours (not one read as such) must be
    a consistent IPv4/IPv6 datagram."""
    if len(out) <= VNET_HDR_LEN:
        raise AssertionError(f"a write of {len(out)} bytes")
    header, pkt = out[:VNET_HDR_LEN], out[VNET_HDR_LEN:]
    if header[1] != GSO_UDP_L4 or (header, len(out)) in read_gso:
        return 1
    start = int.from_bytes(header[6:8], "little")
    size = int.from_bytes(header[4:6], "little")
    ip_len = int.from_bytes(pkt[2:4] if pkt[0] >> 4 == 4 else pkt[4:6], "big") + (0 if pkt[0] >> 4 == 4 else 40)
    udp_len = int.from_bytes(pkt[start + 4:start + 6], "big")
    if ip_len != len(pkt) or udp_len != len(pkt) - start or size == 0:
        raise AssertionError(f"GSO write: IP length {ip_len}, UDP length {udp_len}, {len(pkt)} bytes")
    return -(-(len(pkt) - start - 8) // size)


# Emulated hosts behind every service: the engine reads what the datapath let through (TCP options,
# HTTP requests, echo payloads, UDP); small backlogs and a slow accept pace fill both queues.
HOSTS_CONFIG = configmod.from_dict(tomllib.loads("""
[[service]]
vip = "10.0.0.100:80"
  [[service.real]]
  address = "10.1.0.1:8080"
  emulated = true
  backlog = 2
  accept_rate = 5
  syn_overflow = "reset"
  [[service.real]]
  address = "10.1.0.2:8080"
  emulated = true
  app = "echo"
  [[service.real]]
  address = "10.1.0.3:8080"
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
[[service]]
vip = "[2001:db8::100]:80"
  [[service.real]]
  address = "[2001:db8:1::1]:8080"
  emulated = true
[[service]]
vip = "10.0.0.100:9000"
protocol = "udp"
  [[service.real]]
  address = "10.1.0.13:9000"
  emulated = true
  workers = 1
  backlog = 2
  service_time = 0.5
  response_bytes = { dist = "empirical", values = [0, 1460, 1461, 5000] }
"""), schedulers.catalog())


# The same hosts' kinds behind every forwarding method: dr and tun reals own the VIP (and take the
# packet out of its tunnel) and answer past the switch, full-NAT ones answer the local address.
METHODS_CONFIG = configmod.from_dict(tomllib.loads("""
[[service]]
vip = "10.0.0.100:80"
source_address = "10.0.0.1"
local_addresses = ["10.0.0.200"]
  [[service.real]]
  address = "10.1.0.1:80"
  emulated = true
  forward = "dr"
  mac = "02:00:00:00:01:01"
  [[service.real]]
  address = "10.1.0.2:80"
  emulated = true
  app = "echo"
  forward = "tun"
  tun_type = "gue"
  tun_port = 6080
  [[service.real]]
  address = "10.1.0.3:80"
  emulated = true
  forward = "tun"
  tun_type = "gre"
  tun_flags = "csum"
  [[service.real]]
  address = "10.1.0.4:8080"
  emulated = true
  backlog = 2
  forward = "fullnat"
[[service]]
vip = "10.0.0.100:53"
protocol = "udp"
source_address = "10.0.0.1"
  [[service.real]]
  address = "10.1.0.11:53"
  emulated = true
  app = "echo"
  forward = "tun"
  encap = "katran"
[[service]]
vip = "[2001:db8::100]:80"
source_address = "2001:db8::1"
  [[service.real]]
  address = "[2001:db8:1::1]:80"
  emulated = true
  forward = "tun"
"""), schedulers.catalog())


# Fragments for VIPs of emulated reals, one policy per service: the switch reassembles (masq), tracks
# (masq, dr) or hashes them (tun) on to the hosts, which reassemble them themselves before TCP/UDP.
FRAGMENTS_CONFIG = configmod.from_dict(tomllib.loads("""
[[service]]
vip = "10.0.0.100:53"
protocol = "udp"
fragments = "reassemble"
  [[service.real]]
  address = "10.1.0.11:53"
  emulated = true
  app = "echo"
[[service]]
vip = "10.0.0.100:80"
fragments = "track"
  [[service.real]]
  address = "10.1.0.1:80"
  emulated = true
  forward = "dr"
  mac = "02:00:00:00:01:01"
  [[service.real]]
  address = "10.1.0.2:80"
  emulated = true
  app = "echo"
[[service]]
vip = "[2001:db8::100]:53"
protocol = "udp"
fragments = "3tuple"
source_address = "2001:db8::1"
  [[service.real]]
  address = "[2001:db8:1::11]:53"
  emulated = true
  app = "echo"
  forward = "tun"
[[service]]
vip = "[2001:db8::100]:80"
fragments = "track"
  [[service.real]]
  address = "[2001:db8:1::1]:80"
  emulated = true
"""), schedulers.catalog())
HOST_REASSEMBLY_LIMIT = 4 << 20         # the hosts' ipfrag_high_thresh (hosts/_emulate.pyx)
MAX_FRAGMENT_CHARGE = 65535 + 40 + 576 + 256    # a fragment's bytes, its sk_buff and its queue, past the limit


def check_host_reassembly(emulator: Emulator) -> None:
    """The hosts' reassembly holds at most its limit (plus the fragment that crossed it), and nothing once
    every datagram's ipfrag_time is over."""
    counts = emulator.host_reassembly()
    if counts["reasm_peak_memory"] > HOST_REASSEMBLY_LIMIT + MAX_FRAGMENT_CHARGE:
        raise AssertionError(f"the hosts' reassembly held {counts['reasm_peak_memory']} bytes")
    if counts["reasm_memory"] or counts["reasm_queues"]:
        raise AssertionError(f"datagrams left after ipfrag_time: {counts}")


def run_hosts(data: bytes, config=HOSTS_CONFIG, check=None) -> Switch:
    """The hosts harness's body: the datapath harness's frames, each from its own exactly-sized Batch,
    through the emulate loop (re-stamping on) to emulated hosts, both views kept; the clocks then run
    past every timer. Then check_invariants, and the hosts' own: every numbered socket holds one
    distinct handle, and a host counts exactly those in use; then `check(emulator)`, if given."""
    linktype, frames, stamps = decode(data)
    switch = Switch(config, seed=1)
    written = []
    emulator = Emulator(switch, BatchSink(lambda b: written.append(len(b))), BatchSink(lambda b: None))
    for frame, stamp in zip(frames, stamps):
        emulator.run(Batch.from_frames([frame], linktype, [stamp]))
    if stamps:
        emulator.advance(stamps[-1] + 120 * NS)
    emulator.flush()
    check_invariants(switch)
    if check is not None:
        check(emulator)
    for host in switch.sockets():
        numbered = [row["handle"] for row in host["sockets"] if row["handle"] is not None]
        if len(set(numbered)) != len(numbered) or host["handles_in_use"] != len(numbered):
            raise AssertionError(f"{host['host']}: handles {numbered}, {host['handles_in_use']} in use")
    return switch


def run_gslb(data: bytes) -> Switch:
    """The gslb harness's body: the datapath harness's frames, one Batch each, through a GSLB replay's
    span (pcaps/gslb.toml: UDP queries answered, TCP conversations to 10.53.0.1:53 answered by the
    emulated hosts' "dns" app, the rest through the sites' switches). Every frame the GSLB writes from
    a listen address must parse and carry right IP, TCP and UDP checksums (a client's own packet is
    written as it came, but for a re-stamped ACK)."""
    from l4emu.gslb import config as gslbconfig
    from l4emu.gslb import wire
    from l4emu.gslb.replay import GslbReplay

    global _GSLB_CONFIG
    if _GSLB_CONFIG is None:
        _GSLB_CONFIG = gslbconfig.load(ROOT / "pcaps" / "gslb.toml", schedulers.catalog())
    linktype, frames, stamps = decode(data)
    run = GslbReplay(_GSLB_CONFIG, seed=1)
    for frame, stamp in zip(frames, stamps):
        batch = Batch.from_frames([frame], linktype, [stamp])
        out: list = []
        run.span(batch, 0, 1, out)
        run.replaced = set()
        for _after, written, _ts, _iface, link in out:
            dgram = wire.parse(written, link)
            if dgram is not None and dgram.src not in run.listen_addresses:
                continue
            if dgram is None:
                raise AssertionError(f"the GSLB wrote a frame the parse refuses: {written.hex()}")
            if dgram.family == 4 and wire.checksum(written[dgram.l3 : dgram.l4]) != 0:
                raise AssertionError(f"bad IPv4 header checksum: {written.hex()}")
            if dgram.family == 4:
                pseudo = dgram.src + dgram.dst + bytes([0, dgram.proto]) + (dgram.end - dgram.l4).to_bytes(2, "big")
            else:
                length = (dgram.end - dgram.l4).to_bytes(4, "big")
                pseudo = dgram.src + dgram.dst + length + bytes([0, 0, 0, dgram.proto])
            if wire.checksum(pseudo + written[dgram.l4 : dgram.end]) != 0:
                raise AssertionError(f"bad L4 checksum: {written.hex()}")
    return run.sites.switches[0]


_GSLB_CONFIG = None
ROOT = Path(__file__).resolve().parent.parent


HARNESSES = {
    "datapath": run_frames,
    "pcap": run_capture,
    "tun": run_tun,
    "hosts": run_hosts,
    "methods": lambda data: run_hosts(data, METHODS_CONFIG),
    "fragments": lambda data: run_hosts(data, FRAGMENTS_CONFIG, check_host_reassembly),
    "forward": run_forward,
    "shard": run_shard,
    "gslb": run_gslb,
}
