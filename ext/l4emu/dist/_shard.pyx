"""Sharded replay in C: which worker owns a packet (by its client's address), dealt by the parent in one
walk of the capture; each worker's packets copied from where the deal says they lie; and the workers'
output records gathered in capture order into the one output file (as one worker would have written it)."""
cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memcmp, memset

from l4emu.datapath._batch cimport Batch, V_DROP
from l4emu.datapath._checksum cimport load16
from l4emu.datapath._headers cimport parse_packet, PARSED, PARSE_FRAGMENT
from l4emu.datapath._types cimport PacketInfo
from l4emu.datapath._wire cimport (ETHERTYPE_IPV4, IP4_DST, IP4_FRAG, IP4_HEADER_LEN, IP4_PROTO, IP4_SRC,
                                   IP4_TOTAL_LEN, IPPROTO_TCP, IPPROTO_UDP, L4_SPORT, LINKTYPE_ETHERNET,
                                   TCP_DATA_OFFSET, TCP_HEADER_LEN, UDP_HEADER_LEN, UDP_LEN)
from l4emu.io.pcap._read cimport PacketSink

cdef struct Side:
    # An address (and port and protocol, for an endpoint) of the service side: VIPs, capture servers, reals.
    uint8_t addr[16]
    uint16_t port
    uint8_t proto
    uint8_t family
    uint8_t used


cdef struct Dealt:
    # Where a packet of the window lies in the capture, and what its record says: all a worker needs to
    # copy it into a batch without reading the capture's other records (the parent's one walk did).
    uint64_t offset                     # of the packet's bytes in the capture file
    uint64_t ts_ns
    uint32_t caplen
    uint32_t origlen
    uint16_t iface
    uint16_t linktype

DEALT_BYTES = sizeof(Dealt)             # a window's table of Dealt, one per capture packet, is a shared map


cdef inline uint64_t mix(uint64_t x) noexcept nogil:
    """splitmix64's finalizer: a fixed hash, so every worker deals every packet the same way."""
    x ^= x >> 30
    x *= 0xBF58476D1CE4E5B9ULL
    x ^= x >> 27
    x *= 0x94D049BB133111EBULL
    return x ^ (x >> 31)


cdef enum:
    ETH_HEADER_LEN = 14                 # an untagged Ethernet frame's header: the fast path's IPv4 starts here
    NOT_PLAIN = -1                      # plain_ipv4: the frame needs the whole parse to say who its client is
    MAX_OWNERS = 256                    # gather: an owner is a byte


cdef inline uint64_t v4_hash(uint32_t raw, uint16_t port, uint8_t proto) noexcept nogil:
    """address_hash of an IPv4 address (its 4 bytes as loaded, zero-padded to 16), without the padding."""
    return mix(<uint64_t>raw ^ ((<uint64_t>port << 48) | (<uint64_t>proto << 40) | (<uint64_t>4 << 32)))


cdef inline uint64_t address_hash(const uint8_t* addr, uint16_t port, uint8_t proto, uint8_t family) noexcept nogil:
    cdef uint64_t a, b
    memcpy(&a, addr, 8)
    memcpy(&b, addr + 8, 8)
    return mix(a ^ (b * 0x9E3779B97F4A7C15ULL) ^ ((<uint64_t>port << 48) | (<uint64_t>proto << 40)
                                                   | (<uint64_t>family << 32)))


@cython.final                           # its own calls (owner, the lookups) are direct, inlined in put
cdef class Dealer(PacketSink):
    """Deals the packets of a capture to workers by their client's address, as Scanner.feed reads them:
    a window's packets each get a Dealt (where it lies) and an owner byte, in capture order.

    The client is the side that is not the service's: a packet from a VIP, a capture server or a real
    (by address, port and protocol; a fragment has no port, so by address) is for its destination,
    any other packet is from its client. Every packet of a flow carries its client's address, both
    ways, before and after NAT, and so do its fragments and the ICMP errors about it (the parser keys
    those by the packet they quote): a flow, its replies, fragments and errors meet in one worker.
    With persistence, the address is cut to the coarsest persistence netmask first, so that a client
    network's connections share their template."""
    cdef readonly int workers
    cdef Side* endpoints
    cdef Side* addresses
    cdef uint32_t slots                 # of each table: a power of two, at least twice the entries
    cdef uint8_t mask4[16]
    cdef uint8_t mask6[16]
    cdef uint32_t mask4_raw             # mask4's IPv4 part, as its 4 bytes load
    cdef bint masked                    # some persistence netmask is shorter than the address
    # the window being dealt (begin): its tables, their room in packets, and how many were put
    cdef object _tables
    cdef Dealt* dealt
    cdef uint8_t* owners
    cdef uint64_t room
    cdef readonly uint64_t filled
    cdef uint64_t* dealt_to            # per worker, its packets of the window so far

    def __init__(self, int workers, endpoints, addresses, bytes mask4=b"\xff" * 16, bytes mask6=b"\xff" * 16):
        """`endpoints`: (family, address bytes, port, protocol) of the service side; `addresses`:
        (family, address bytes) of the same, for fragments."""
        if not 1 <= workers <= MAX_OWNERS:
            raise ValueError(f"{workers} workers: an owner is a byte")
        self.workers = workers
        self.slots = 16
        while self.slots < 2 * (len(endpoints) + len(addresses)):
            self.slots *= 2
        self.endpoints = <Side*>calloc(self.slots, sizeof(Side))
        self.addresses = <Side*>calloc(self.slots, sizeof(Side))
        self.dealt_to = <uint64_t*>calloc(workers, sizeof(uint64_t))
        if self.endpoints == NULL or self.addresses == NULL or self.dealt_to == NULL:
            raise MemoryError()
        for family, address, port, proto in endpoints:
            self._add(self.endpoints, family, address, port, proto)
        for family, address in addresses:
            self._add(self.addresses, family, address, 0, 0)
        memcpy(self.mask4, <const char*>mask4, 16)
        memcpy(self.mask6, <const char*>mask6, 16)
        memcpy(&self.mask4_raw, self.mask4, 4)
        self.masked = mask4 != b"\xff" * 16 or mask6 != b"\xff" * 16

    def __dealloc__(self):
        free(self.endpoints)
        free(self.addresses)
        free(self.dealt_to)

    cdef _add(self, Side* table, int family, bytes address, int port, int proto):
        cdef Side probe
        cdef uint32_t k
        memset(&probe, 0, sizeof(Side))
        memcpy(probe.addr, <const char*>address, min(len(address), 16))
        probe.port, probe.proto, probe.family, probe.used = port, proto, family, 1
        if family == 4 and any(address[4:16]):
            raise ValueError("an IPv4 address is 4 bytes, padded with zeros")
        k = address_hash(probe.addr, probe.port, probe.proto, probe.family) & (self.slots - 1)
        while table[k].used:
            if self._same(&table[k], probe.addr, probe.port, probe.proto, probe.family):
                return
            k = (k + 1) & (self.slots - 1)
        table[k] = probe

    cdef inline bint _same(self, const Side* s, const uint8_t* addr, uint16_t port, uint8_t proto,
                           uint8_t family) noexcept nogil:
        return s.port == port and s.proto == proto and s.family == family and memcmp(s.addr, addr, 16) == 0

    cdef inline bint _has(self, const Side* table, const uint8_t* addr, uint16_t port, uint8_t proto,
                          uint8_t family) noexcept nogil:
        cdef uint32_t k = address_hash(addr, port, proto, family) & (self.slots - 1)
        while table[k].used:
            if self._same(&table[k], addr, port, proto, family):
                return True
            k = (k + 1) & (self.slots - 1)
        return False

    cdef inline bint _has_v4(self, uint32_t raw, uint16_t port, uint8_t proto) noexcept nogil:
        """_has(endpoints, ...) for an IPv4 endpoint (the table pads IPv4 addresses with zeros)."""
        cdef uint32_t k = v4_hash(raw, port, proto) & (self.slots - 1), have
        cdef const Side* s
        while self.endpoints[k].used:
            s = &self.endpoints[k]
            memcpy(&have, s.addr, 4)
            if have == raw and s.port == port and s.proto == proto and s.family == 4:
                return True
            k = (k + 1) & (self.slots - 1)
        return False

    cdef inline int plain_ipv4(self, const uint8_t* p, uint32_t caplen, uint32_t origlen,
                               uint16_t linktype) noexcept nogil:
        """The owner of an untagged Ethernet IPv4 TCP or UDP packet, not a fragment, whose headers the
        whole parse accepts (the checks are parse_packet's, in its order): read from the few bytes
        that say who its client is, with no PacketInfo filled. NOT_PLAIN for any other frame."""
        cdef uint32_t ihl, total, l4, end, wire_end, src, dst, client
        cdef uint16_t sport
        cdef uint8_t proto
        if linktype != LINKTYPE_ETHERNET or caplen < ETH_HEADER_LEN + IP4_HEADER_LEN:
            return NOT_PLAIN
        if load16(p + 12) != ETHERTYPE_IPV4 or (p[ETH_HEADER_LEN] >> 4) != 4:
            return NOT_PLAIN
        ihl = (p[ETH_HEADER_LEN] & 0x0F) * 4
        total = load16(p + ETH_HEADER_LEN + IP4_TOTAL_LEN)
        wire_end = origlen if origlen > caplen else caplen
        if (total == 0 or ihl < IP4_HEADER_LEN or caplen < ETH_HEADER_LEN + ihl or total < ihl
                or ETH_HEADER_LEN + total > wire_end or load16(p + ETH_HEADER_LEN + IP4_FRAG) & 0x3FFF):
            return NOT_PLAIN
        l4, end = ETH_HEADER_LEN + ihl, ETH_HEADER_LEN + total
        proto = p[ETH_HEADER_LEN + IP4_PROTO]
        if proto == IPPROTO_TCP:
            if (l4 + TCP_HEADER_LEN > end or l4 + TCP_HEADER_LEN > caplen
                    or (p[l4 + TCP_DATA_OFFSET] >> 4) * 4 < TCP_HEADER_LEN or l4 + (p[l4 + TCP_DATA_OFFSET] >> 4) * 4 > end):
                return NOT_PLAIN
        elif proto == IPPROTO_UDP:
            if (l4 + UDP_HEADER_LEN > end or l4 + UDP_HEADER_LEN > caplen or load16(p + l4 + UDP_LEN) < UDP_HEADER_LEN
                    or l4 + load16(p + l4 + UDP_LEN) > end):
                return NOT_PLAIN
        else:
            return NOT_PLAIN
        memcpy(&src, p + ETH_HEADER_LEN + IP4_SRC, 4)
        memcpy(&dst, p + ETH_HEADER_LEN + IP4_DST, 4)
        sport = <uint16_t>load16(p + l4 + L4_SPORT)
        client = dst if self._has_v4(src, sport, proto) else src
        if self.masked:
            client &= self.mask4_raw
        return <int>(((v4_hash(client, 0, 0) >> 32) * <uint64_t>self.workers) >> 32)

    cdef int owner(self, const uint8_t* frame, uint32_t caplen, uint32_t origlen, uint16_t linktype) noexcept nogil:
        cdef int plain = self.plain_ipv4(frame, caplen, origlen, linktype)
        if plain != NOT_PLAIN:
            return plain
        return self.parsed_owner(frame, caplen, origlen, linktype)

    cdef int parsed_owner(self, const uint8_t* frame, uint32_t caplen, uint32_t origlen, uint16_t linktype) noexcept nogil:
        """The owner by the whole parse: any link type, VLAN tags, IPv6, fragments, ICMP errors (keyed by
        the packet they quote), packets the switch passes or drops."""
        cdef PacketInfo info
        cdef int r = parse_packet(frame, caplen, origlen, linktype, &info)
        cdef const uint8_t* client
        cdef uint8_t masked[16]
        cdef const uint8_t* mask
        cdef int k
        cdef bint from_service
        if info.key.family != 4 and info.key.family != 6:
            return 0                            # not IP (or cut before its addresses): no flow, any worker
        if r == PARSED:
            from_service = self._has(self.endpoints, info.key.src, info.key.sport, info.key.proto, info.key.family)
        else:                                   # a fragment, or a packet the switch passes or drops
            from_service = self._has(self.addresses, info.key.src, 0, 0, info.key.family)
        client = &info.key.dst[0] if from_service else &info.key.src[0]
        if self.masked:
            mask = &self.mask4[0] if info.key.family == 4 else &self.mask6[0]
            for k in range(16):
                masked[k] = client[k] & mask[k]
            client = &masked[0]
        # the hash's top 32 bits scaled to [0, workers): no division per packet
        return <int>(((address_hash(client, 0, 0, info.key.family) >> 32) * <uint64_t>self.workers) >> 32)

    def begin(self, uint8_t[::1] dealt, uint8_t[::1] owners):
        """Deal the next packets fed into these tables: packet i of the window gets dealt[i] (a Dealt, in
        bytes) and owners[i]; `filled` counts them (past the tables' room, feed asked too much)."""
        self._tables = (dealt, owners)
        self.room = min(<uint64_t>dealt.shape[0] // sizeof(Dealt), <uint64_t>owners.shape[0])
        self.dealt = <Dealt*>&dealt[0] if self.room else NULL
        self.owners = &owners[0] if self.room else NULL
        self.filled = 0
        memset(self.dealt_to, 0, self.workers * sizeof(uint64_t))

    def end(self):
        """Let go of the window's tables (their maps can close)."""
        self._tables = None
        self.dealt, self.owners, self.room = NULL, NULL, 0

    @property
    def counts(self):
        """Each worker's packets of the window."""
        return [self.dealt_to[k] for k in range(self.workers)]

    cdef void put(self, const uint8_t* frame, uint64_t offset, uint32_t caplen, uint32_t origlen, uint64_t ts_ns,
                  uint16_t iface, uint16_t linktype) noexcept nogil:
        cdef Dealt* d
        cdef int k
        if self.filled < self.room:
            d = &self.dealt[self.filled]
            d.offset, d.ts_ns, d.caplen, d.origlen, d.iface, d.linktype = offset, ts_ns, caplen, origlen, iface, linktype
            k = 0 if self.workers == 1 else self.owner(frame, caplen, origlen, linktype)
            self.owners[self.filled] = <uint8_t>k
            self.dealt_to[k] += 1
        self.filled += 1

    def owner_of(self, frame, int linktype=1, bint parsed=False):
        """The worker of one frame (tests); `parsed`: by the whole parse, never the IPv4 fast path."""
        cdef const uint8_t[::1] view = bytes(frame) + b"\0"
        if parsed:
            return self.parsed_owner(&view[0], len(frame), len(frame), linktype)
        return self.owner(&view[0], len(frame), len(frame), linktype)


def fill_dealt(Batch batch, const uint8_t[::1] capture, const uint8_t[::1] dealt, const uint8_t[::1] owners,
               uint8_t me, Py_ssize_t start, Py_ssize_t count, uint32_t[::1] index):
    """Clear `batch` and copy into it worker `me`'s next packets of the window (owners[i] == me), from
    window position `start` on, up to `count`, from the mapped `capture` where dealt[i] says each lies;
    index[k] gets packet k's window position. Returns the position to go on from (`count`: done)."""
    cdef Py_ssize_t i = start
    cdef uint64_t size = capture.shape[0]
    cdef const Dealt* table = <const Dealt*>&dealt[0] if dealt.shape[0] else NULL
    cdef const uint8_t* base = &capture[0] if size else NULL
    cdef const Dealt* d
    cdef int r = 0
    cdef bint outside = False
    if (start < 0 or count > owners.shape[0] or <uint64_t>count > <uint64_t>dealt.shape[0] // sizeof(Dealt)
            or index.shape[0] < batch.capacity):
        raise ValueError("fill_dealt: a window past its tables, or an index with less room than the batch")
    batch.clear()
    with nogil:
        while i < count:
            if owners[i] != me:
                i += 1
                continue
            d = &table[i]
            if d.offset > size or d.caplen > size - d.offset:
                outside = True
                break
            r = batch.push(base + d.offset, d.caplen, d.origlen, d.ts_ns, d.iface, d.linktype)
            if r:
                break
            index[batch.n - 1] = <uint32_t>i
            i += 1
    if outside:
        raise ValueError(f"packet {i} of the window lies past the capture's end ({size} bytes)")
    if r < 0:
        raise MemoryError("no memory for a packet of the capture")
    return i


def account(Batch batch, Py_ssize_t first, const uint8_t[::1] records, bint pcapng, uint32_t[::1] lengths):
    """After a batch of a worker's packets was processed and encoded (`records`: its written packets,
    in order): the bytes each of its packets puts into the file, at lengths[first + k] for the batch's
    packet k (the worker's first + k-th packet of the window, in capture order). A packet the switch
    made more of (a fragment, a held fragment it released) counts them; a dropped one, 0."""
    cdef Py_ssize_t j
    cdef uint64_t pos = 0, size, at
    cdef uint32_t word
    cdef uint64_t total = records.shape[0]
    cdef const uint8_t* data = &records[0] if total else NULL
    for j in range(batch.n):
        at = first + batch.source[j]
        if first < 0 or at >= <uint64_t>lengths.shape[0]:
            raise ValueError("a packet outside the window")
        lengths[at] = 0
    for j in range(batch.n):
        if batch.verdict[j] == V_DROP:
            continue
        if pos + 16 > total:
            raise ValueError("fewer records than written packets")
        if pcapng:
            memcpy(&word, data + pos + 4, 4)    # the block's length
            size = word
        else:
            memcpy(&word, data + pos + 8, 4)    # the bytes captured, after the 16-byte record header
            size = 16 + <uint64_t>word
        lengths[first + batch.source[j]] += <uint32_t>size
        pos += size
    if pos != total:
        raise ValueError("the records do not match the written packets")


def gather(const uint8_t[::1] owners, Py_ssize_t start, Py_ssize_t count, list lengths, uint64_t[::1] told,
           list sources, uint64_t[::1] taken, uint8_t[::1] out):
    """Copy the records of a window's capture packets start, start+1, ... into `out`, in capture order,
    each from its owner's records (sources[owner], read from taken[owner] on, which advances) by its
    size (lengths[owner], the owner's packets in capture order, read from told[owner] on, which
    advances), until `out` is full or `count` is reached. Returns (the next packet, bytes filled); a
    record that does not fit an empty `out` stops at once: (start, 0), for a bigger `out`."""
    cdef Py_ssize_t n = len(sources), i = start, k
    cdef const uint8_t* base[MAX_OWNERS]
    cdef uint64_t limit[MAX_OWNERS]
    cdef const uint32_t* sizes[MAX_OWNERS]
    cdef uint64_t told_limit[MAX_OWNERS]
    cdef const uint8_t[::1] view
    cdef const uint32_t[::1] words
    cdef uint64_t filled = 0, room = out.shape[0]
    cdef uint32_t size
    cdef uint8_t owner
    cdef uint8_t* dst = &out[0] if room else NULL
    cdef bint bad = False
    if (n > MAX_OWNERS or len(lengths) != n or taken.shape[0] < n or told.shape[0] < n or count > owners.shape[0]
            or start < 0):
        raise ValueError("gather: more sources than owners can name, or a window past its tables")
    for k in range(n):
        view = sources[k]
        base[k] = &view[0] if view.shape[0] else NULL
        limit[k] = view.shape[0]
        words = lengths[k]
        sizes[k] = &words[0] if words.shape[0] else NULL
        told_limit[k] = words.shape[0]
    with nogil:
        while i < count:
            owner = owners[i]
            if owner >= n or told[owner] >= told_limit[owner]:
                bad = True
                break
            size = sizes[owner][told[owner]]
            if size:
                if taken[owner] + size > limit[owner]:
                    bad = True
                    break
                if filled + size > room:
                    break
                memcpy(dst + filled, base[owner] + taken[owner], size)
                taken[owner] += size
                filled += size
            told[owner] += 1
            i += 1
    if bad:
        raise ValueError("a record past the end of its worker's records")
    return i, filled


def first_written(Batch batch, const uint32_t[::1] index):
    """(window position, link type, interface) of the batch's first packet that is written, or None:
    a .pcap file's header names the link type of the first packet of all workers."""
    cdef Py_ssize_t j
    for j in range(batch.n):
        if batch.verdict[j] != V_DROP:
            if batch.source[j] >= <uint32_t>index.shape[0]:
                raise ValueError("a packet outside the batch's index")
            return index[batch.source[j]], batch.linktype[j], batch.iface[j]
    return None
