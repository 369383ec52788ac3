"""Sharded replay in C: which worker owns a packet (by its client's address), and where each worker's
output records go in the one output file (the capture order, as one worker would have written it)."""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memcmp, memset

from l4emu.datapath._batch cimport Batch, V_DROP
from l4emu.datapath._headers cimport parse_packet, PARSED, PARSE_FRAGMENT
from l4emu.datapath._types cimport PacketInfo
from l4emu.io.pcap._read cimport PacketFilter

cdef struct Side:
    # An address (and port and protocol, for an endpoint) of the service side: VIPs, capture servers, reals.
    uint8_t addr[16]
    uint16_t port
    uint8_t proto
    uint8_t family
    uint8_t used


cdef inline uint64_t mix(uint64_t x) noexcept nogil:
    """splitmix64's finalizer: a fixed hash, so every worker deals every packet the same way."""
    x ^= x >> 30
    x *= 0xBF58476D1CE4E5B9ULL
    x ^= x >> 27
    x *= 0x94D049BB133111EBULL
    return x ^ (x >> 31)


cdef inline uint64_t address_hash(const uint8_t* addr, uint16_t port, uint8_t proto, uint8_t family) noexcept nogil:
    cdef uint64_t a, b
    memcpy(&a, addr, 8)
    memcpy(&b, addr + 8, 8)
    return mix(a ^ (b * 0x9E3779B97F4A7C15ULL) ^ ((<uint64_t>port << 48) | (<uint64_t>proto << 40)
                                                   | (<uint64_t>family << 32)))


cdef class Dealer(PacketFilter):
    """Keeps the packets of one worker's share: those whose client address hashes to it.

    The client is the side that is not the service's: a packet from a VIP, a capture server or a real
    (by address, port and protocol; a fragment has no port, so by address) is for its destination,
    any other packet is from its client. Every packet of a flow carries its client's address, both
    ways, before and after NAT, and so do its fragments and the ICMP errors about it (the parser keys
    those by the packet they quote): a flow, its replies, fragments and errors meet in one worker.
    With persistence, the address is cut to the coarsest persistence netmask first, so that a client
    network's connections share their template."""
    cdef readonly int workers
    cdef readonly int me
    cdef Side* endpoints
    cdef Side* addresses
    cdef uint32_t slots                 # of each table: a power of two, at least twice the entries
    cdef uint8_t mask4[16]
    cdef uint8_t mask6[16]
    cdef bint masked                    # some persistence netmask is shorter than the address

    def __init__(self, int workers, int me, endpoints, addresses, bytes mask4=b"\xff" * 16, bytes mask6=b"\xff" * 16):
        """`endpoints`: (family, address bytes, port, protocol) of the service side; `addresses`:
        (family, address bytes) of the same, for fragments."""
        if not 0 <= me < workers:
            raise ValueError(f"worker {me} of {workers}")
        self.workers, self.me = workers, me
        self.slots = 16
        while self.slots < 2 * (len(endpoints) + len(addresses)):
            self.slots *= 2
        self.endpoints = <Side*>calloc(self.slots, sizeof(Side))
        self.addresses = <Side*>calloc(self.slots, sizeof(Side))
        if self.endpoints == NULL or self.addresses == NULL:
            raise MemoryError()
        for family, address, port, proto in endpoints:
            self._add(self.endpoints, family, address, port, proto)
        for family, address in addresses:
            self._add(self.addresses, family, address, 0, 0)
        memcpy(self.mask4, <const char*>mask4, 16)
        memcpy(self.mask6, <const char*>mask6, 16)
        self.masked = mask4 != b"\xff" * 16 or mask6 != b"\xff" * 16

    def __dealloc__(self):
        free(self.endpoints)
        free(self.addresses)

    cdef _add(self, Side* table, int family, bytes address, int port, int proto):
        cdef Side probe
        cdef uint32_t k
        memset(&probe, 0, sizeof(Side))
        memcpy(probe.addr, <const char*>address, min(len(address), 16))
        probe.port, probe.proto, probe.family, probe.used = port, proto, family, 1
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

    cdef int owner(self, const uint8_t* frame, uint32_t caplen, uint32_t origlen, uint16_t linktype) noexcept nogil:
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

    cdef bint keep(self, const uint8_t* frame, uint32_t caplen, uint32_t origlen, uint16_t linktype) noexcept nogil:
        return self.workers == 1 or self.owner(frame, caplen, origlen, linktype) == self.me

    def owner_of(self, frame, int linktype=1):
        """The worker of one frame (tests)."""
        cdef const uint8_t[::1] view = bytes(frame) + b"\0"
        return self.owner(&view[0], len(frame), len(frame), linktype)


def account(Batch batch, const uint64_t[::1] index, uint64_t first, const uint8_t[::1] records, bint pcapng,
            uint32_t[::1] lengths):
    """After a batch was processed and encoded (`records`: its written packets, in order): the bytes
    each of its capture packets puts into the file, at lengths[capture index - first]. A packet the
    switch made more of (a fragment, a held fragment it released) counts them; a dropped one, 0."""
    cdef Py_ssize_t j
    cdef uint64_t pos = 0, size
    cdef uint32_t word
    cdef uint64_t total = records.shape[0]
    cdef const uint8_t* data = &records[0] if total else NULL
    for j in range(batch.n):
        lengths[index[batch.source[j]] - first] = 0
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
        lengths[index[batch.source[j]] - first] += <uint32_t>size
        pos += size
    if pos != total:
        raise ValueError("the records do not match the written packets")


def window_bytes(const uint32_t[::1] lengths, Py_ssize_t count):
    """Bytes all workers write for a window's first `count` capture packets."""
    cdef Py_ssize_t i
    cdef uint64_t total = 0
    with nogil:
        for i in range(count):
            total += lengths[i]
    return total


def place(const uint32_t[::1] lengths, Py_ssize_t count, const uint64_t[::1] mine, uint64_t first,
          const uint8_t[::1] records, uint8_t[::1] out, uint64_t at):
    """Copy this worker's records of a window into `out` (the file mapped from the window's start less
    `at`): each capture packet's bytes go after every earlier packet's, whoever wrote those."""
    cdef Py_ssize_t i, m = 0, n = mine.shape[0]
    cdef uint64_t offset = at, taken = 0, want = records.shape[0]
    cdef uint64_t room = out.shape[0]
    cdef uint32_t size
    cdef uint8_t* dst = &out[0] if room else NULL
    cdef const uint8_t* src = &records[0] if want else NULL
    with nogil:
        for i in range(count):
            size = lengths[i]
            if m < n and mine[m] - first == <uint64_t>i:
                m += 1
                if size:
                    if offset + size > room or taken + size > want:
                        with gil:
                            raise ValueError("a record falls outside the window")
                    memcpy(dst + offset, src + taken, size)
                    taken += size
            offset += size
    if m != n or taken != want:
        raise ValueError("the window's records and capture indices disagree")
    return offset - at


def first_written(Batch batch, const uint64_t[::1] index):
    """(capture index, link type, interface) of the batch's first packet that is written, or None:
    a .pcap file's header names the link type of the first packet of all workers."""
    cdef Py_ssize_t j
    for j in range(batch.n):
        if batch.verdict[j] != V_DROP:
            return index[batch.source[j]], batch.linktype[j], batch.iface[j]
    return None
