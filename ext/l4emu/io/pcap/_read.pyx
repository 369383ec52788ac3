"""The pcap/pcapng reader: C loops that index a mapped capture's records into a Batch, without the GIL."""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport realloc, free
from libc.string cimport memcpy, memset

from l4emu.datapath._batch cimport Batch
from l4emu.datapath._types cimport NS
from l4emu.io.pcap._format cimport NG_SHB, NG_BOM, NG_IDB, NG_PB, NG_SPB, NG_EPB, PCAP_US, PCAP_NS

cdef extern from *:
    uint16_t bswap16 "__builtin_bswap16"(uint16_t) noexcept nogil
    uint32_t bswap32 "__builtin_bswap32"(uint32_t) noexcept nogil
    uint64_t bswap64 "__builtin_bswap64"(uint64_t) noexcept nogil

cdef enum:
    MAX_RECORD = 262144      # largest record accepted, as in libpcap
    MAX_IFACES = 65536       # Batch.iface is 16 bits

# Faults are codes plus two numbers in the loop (no GIL, no objects); text is made only once, at the edge.
cdef enum Fault:
    F_NONE, F_TOO_SHORT, F_MAGIC, F_GLOBAL_CUT, F_RECORD_HEADER_CUT, F_TOO_BIG, F_RECORD_CUT,
    F_BLOCK_CUT, F_BOM, F_BLOCK_SHORT, F_BLOCK_ALIGN, F_BLOCK_PAST_END, F_TRAILER, F_BLOCK_MIN,
    F_VERSION, F_NO_IFACE, F_PACKET_PAST_BLOCK, F_TOO_MANY_IFACES, F_NO_MEMORY

# What the reader took in its stride but a user should hear about (libpcap refuses or changes these):
# counted, with the first occurrence kept; text is made at the edge, as for faults.
cdef enum NoteKind:
    N_OVER_SNAPLEN, N_BAD_FRACTION, N_PCAP_VERSION, N_LINKTYPE_RESERVED, N_NG_VERSION, N_LAST

cdef struct Note:
    uint64_t count, offset, a, b

cdef enum:
    LT_RESERVED = 0x03FF0000     # pcap link-type field bits 16-25: reserved, must be zero (libpcap checks)

cdef struct Iface:
    uint16_t linktype
    uint32_t snaplen
    bint binary          # if_tsresol 2^-exp instead of 10^-exp
    uint8_t exp
    uint64_t mul         # decimal resolution: ns = units * mul / div
    uint64_t div
    int64_t offset_s     # if_tsoffset, seconds
    bint nanosecond      # finer than a microsecond
    uint64_t offset      # where the file declares it: the pcap global header (0) or the IDB

cdef uint64_t POW10[20]
POW10[0] = 1
for _k in range(1, 20):
    POW10[_k] = POW10[_k - 1] * 10


cdef inline uint16_t rd16(const uint8_t* p, bint swap) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return bswap16(v) if swap else v

cdef inline uint32_t rd32(const uint8_t* p, bint swap) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return bswap32(v) if swap else v

cdef inline uint64_t rd64(const uint8_t* p, bint swap) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return bswap64(v) if swap else v


cdef void set_resolution(Iface* f, uint8_t tsresol) noexcept nogil:
    f.binary = tsresol >> 7
    f.exp = tsresol & 0x7f
    f.mul, f.div = 1, 1
    if f.binary:
        f.nanosecond = f.exp >= 20          # 2^-20 s is just under a microsecond
    else:
        f.nanosecond = f.exp > 6
        if f.exp <= 9:
            f.mul = POW10[9 - f.exp]
        elif f.exp - 9 < 20:
            f.div = POW10[f.exp - 9]
        else:
            f.mul = 0                        # finer than 10^-28 s: below a nanosecond for 2^64 units

cdef uint64_t units_to_ns(const Iface* f, uint64_t t) noexcept nogil:
    cdef uint64_t sec, frac, ns
    cdef unsigned k = f.exp
    if f.binary:
        sec = t >> k if k < 64 else 0
        frac = t & ((<uint64_t>1 << k) - 1) if k < 64 else t
        if k > 34:                           # keep frac * 10^9 inside 64 bits; loses only sub-ns bits
            frac = frac >> (k - 34) if k - 34 < 64 else 0
            k = 34
        ns = sec * NS + ((frac * NS) >> k)
    else:
        ns = t * f.mul // f.div
    return ns + <uint64_t>f.offset_s * NS


cdef void parse_idb_options(Iface* f, const uint8_t* p, uint64_t left, bint swap) noexcept nogil:
    # A malformed option list ends the options, not the capture: tshark reads such files too.
    cdef uint16_t code, olen
    cdef uint64_t room
    while left >= 4:
        code = rd16(p, swap)
        olen = rd16(p + 2, swap)
        room = (<uint64_t>olen + 3) & ~(<uint64_t>3)
        if code == 0 or room > left - 4:
            return
        if code == 9 and olen >= 1:
            set_resolution(f, p[4])
        elif code == 14 and olen >= 8:
            f.offset_s = <int64_t>rd64(p + 4, swap)
        p += 4 + room
        left -= 4 + room


cdef class PacketSink:
    """Told of each packet Scanner.feed reads, where it lies in the file; this one ignores them (a subclass,
    l4emu.dist._shard.Dealer, deals them to workers)."""
    cdef void put(self, const uint8_t* frame, uint64_t offset, uint32_t caplen, uint32_t origlen, uint64_t ts_ns,
                  uint16_t iface, uint16_t linktype) noexcept nogil:
        pass


cdef class Scanner:
    """Walks a mapped capture one record or block at a time; state lives in C fields so `fill` runs without the GIL."""
    cdef object _view
    cdef const uint8_t* base
    cdef readonly uint64_t size
    cdef readonly uint64_t pos
    cdef readonly bint pcapng
    cdef readonly bint done
    cdef bint swap
    cdef Iface* ifaces
    cdef Py_ssize_t n_ifaces
    cdef Py_ssize_t cap_ifaces
    cdef Py_ssize_t section_base
    cdef Py_ssize_t section_count
    cdef uint64_t last_ts
    cdef int fault
    cdef readonly uint64_t fault_offset
    cdef uint64_t fa, fb
    # the packet found by the last _next() == 1
    cdef uint64_t cur_off, cur_ts
    cdef uint32_t cur_incl, cur_orig
    cdef uint16_t cur_iface
    cdef bint pending                # cur_* holds a packet the last batch had no room for
    cdef readonly uint64_t seen      # packets feed has read (the next one's capture index)
    cdef readonly uint64_t seen_ns   # the latest timestamp of the packets feed read
    cdef Note note[N_LAST]

    def __init__(self, buffer):
        cdef const uint8_t[::1] view = buffer
        cdef uint32_t magic
        self._view = view
        self.size = view.shape[0]
        if self.size < 4:                    # an empty buffer has no view[0] to point at
            self._fail(F_TOO_SHORT, 0, self.size, 0)
            return
        self.base = &view[0]
        memcpy(&magic, self.base, 4)
        if magic == NG_SHB:
            self.pcapng = True
            self._next()                     # the first SHB: a fault here makes the file unreadable
        elif magic in (PCAP_US, PCAP_NS, bswap32(PCAP_US), bswap32(PCAP_NS)):
            self._pcap_header(magic)
        else:
            self._fail(F_MAGIC, 0, magic, 0)

    def __dealloc__(self):
        free(self.ifaces)

    cdef void _fail(self, int fault, uint64_t offset, uint64_t a, uint64_t b) noexcept nogil:
        self.fault, self.fault_offset, self.fa, self.fb = fault, offset, a, b
        self.done = True

    cdef void _note(self, int kind, uint64_t offset, uint64_t a, uint64_t b) noexcept nogil:
        if self.note[kind].count == 0:
            self.note[kind].offset, self.note[kind].a, self.note[kind].b = offset, a, b
        self.note[kind].count += 1

    cdef Iface* _add_iface(self) noexcept nogil:
        cdef Iface* grown
        if self.n_ifaces == self.cap_ifaces:
            grown = <Iface*>realloc(self.ifaces, (self.cap_ifaces * 2 + 4) * sizeof(Iface))
            if grown == NULL:
                return NULL
            self.ifaces = grown
            self.cap_ifaces = self.cap_ifaces * 2 + 4
        memset(&self.ifaces[self.n_ifaces], 0, sizeof(Iface))
        set_resolution(&self.ifaces[self.n_ifaces], 6)
        self.n_ifaces += 1
        return &self.ifaces[self.n_ifaces - 1]

    cdef void _pcap_header(self, uint32_t magic):
        cdef Iface* f
        cdef uint16_t major, minor
        cdef uint32_t link
        self.swap = magic == bswap32(PCAP_US) or magic == bswap32(PCAP_NS)
        if self.size < 24:
            self._fail(F_GLOBAL_CUT, 0, self.size, 0)
            return
        major, minor = rd16(self.base + 4, self.swap), rd16(self.base + 6, self.swap)
        if not ((major == 2 and minor <= 4) or (major == 543 and minor == 0)):   # what libpcap accepts
            self._note(N_PCAP_VERSION, 0, major, minor)
        link = rd32(self.base + 20, self.swap)
        if link & LT_RESERVED:
            self._note(N_LINKTYPE_RESERVED, 0, link, 0)
        f = self._add_iface()
        if f == NULL:
            raise MemoryError()
        set_resolution(f, 9 if magic in (PCAP_NS, bswap32(PCAP_NS)) else 6)
        f.offset = 0
        f.snaplen = rd32(self.base + 16, self.swap)
        f.linktype = rd32(self.base + 20, self.swap) & 0xFFFF   # upper bits carry FCS length, not the type
        self.section_count = 1
        self.pos = 24

    cdef int _next(self) noexcept nogil:
        """Step over one record/block: 1 = a packet is in cur_*, 0 = no packet, -1 = end or fault."""
        if self.done:
            return -1
        if self.pos == self.size:
            self.done = True
            return -1
        return self._next_block() if self.pcapng else self._next_record()

    cdef int _check_length(self, uint64_t at, uint32_t incl, const Iface* f, uint64_t room) noexcept nogil:
        if incl > MAX_RECORD:
            self._fail(F_TOO_BIG, at, incl, MAX_RECORD)
        elif incl > room:
            self._fail(F_RECORD_CUT if not self.pcapng else F_PACKET_PAST_BLOCK, at, incl, room)
        else:
            if f.snaplen and incl > f.snaplen:      # Wireshark reads it whole, libpcap cuts it to the snaplen
                self._note(N_OVER_SNAPLEN, at, incl, f.snaplen)
            return 0
        return -1

    cdef int _next_record(self) noexcept nogil:
        cdef uint64_t left = self.size - self.pos
        cdef const uint8_t* p = self.base + self.pos
        cdef const Iface* f = &self.ifaces[0]
        cdef uint32_t incl, frac
        if left < 16:
            self._fail(F_RECORD_HEADER_CUT, self.pos, left, 0)
            return -1
        incl = rd32(p + 8, self.swap)
        if self._check_length(self.pos, incl, f, left - 16):
            return -1
        self.cur_off = self.pos + 16
        self.cur_incl = incl
        self.cur_orig = rd32(p + 12, self.swap)
        frac = rd32(p + 4, self.swap)
        if frac >= NS // f.mul:                  # not a fraction of a second: an error in this record only,
            self._note(N_BAD_FRACTION, self.pos, frac, NS // f.mul)   # it must not move the packet clock
            frac = 0
        self.cur_ts = <uint64_t>rd32(p, self.swap) * NS + <uint64_t>frac * f.mul
        self.cur_iface = 0
        self.pos += 16 + <uint64_t>incl
        return 1

    cdef int _next_block(self) noexcept nogil:
        cdef uint64_t at = self.pos, left = self.size - self.pos, room
        cdef const uint8_t* p = self.base + at
        cdef uint32_t btype, blen, bom, local, incl, orig
        cdef Iface* f
        if left < 12:
            self._fail(F_BLOCK_CUT, at, left, 0)
            return -1
        btype = rd32(p, self.swap)               # the SHB type reads the same in either byte order
        if btype == NG_SHB:
            memcpy(&bom, p + 8, 4)
            if bom != NG_BOM and bom != bswap32(NG_BOM):
                self._fail(F_BOM, at, bom, 0)
                return -1
            self.swap = bom != NG_BOM
        blen = rd32(p + 4, self.swap)
        if blen < 12:
            self._fail(F_BLOCK_SHORT, at, blen, 0)
            return -1
        if blen % 4:
            self._fail(F_BLOCK_ALIGN, at, blen, 0)
            return -1
        if blen > left:
            self._fail(F_BLOCK_PAST_END, at, blen, left)
            return -1
        if rd32(p + blen - 4, self.swap) != blen:
            self._fail(F_TRAILER, at, rd32(p + blen - 4, self.swap), blen)
            return -1
        self.pos += blen
        room = blen - 12                          # body bytes between the length fields
        p += 8
        if btype == NG_SHB:
            if room < 16:
                self._fail(F_BLOCK_MIN, at, blen, 28)
                return -1
            if rd16(p + 4, self.swap) != 1:
                self._fail(F_VERSION, at, rd16(p + 4, self.swap), rd16(p + 6, self.swap))
                return -1
            if rd16(p + 6, self.swap) != 0 and rd16(p + 6, self.swap) != 2:    # libpcap reads 1.0 and 1.2
                self._note(N_NG_VERSION, at, 1, rd16(p + 6, self.swap))
            self.section_base = self.n_ifaces     # interface ids restart at 0 in each section
            self.section_count = 0
            return 0
        if btype == NG_IDB:
            if room < 8:
                self._fail(F_BLOCK_MIN, at, blen, 20)
                return -1
            if self.n_ifaces >= MAX_IFACES:        # Batch.iface is 16 bits
                self._fail(F_TOO_MANY_IFACES, at, MAX_IFACES, 0)
                return -1
            f = self._add_iface()
            if f == NULL:
                self._fail(F_NO_MEMORY, at, self.n_ifaces, 0)
                return -1
            f.linktype = rd16(p, self.swap)
            f.snaplen = rd32(p + 4, self.swap)
            f.offset = at
            parse_idb_options(f, p + 8, room - 8, self.swap)
            self.section_count += 1
            return 0
        if btype == NG_EPB or btype == NG_PB:
            if room < 20:
                self._fail(F_BLOCK_MIN, at, blen, 32)
                return -1
            local = rd32(p, self.swap) if btype == NG_EPB else rd16(p, self.swap)
            if local >= self.section_count:
                self._fail(F_NO_IFACE, at, local, self.section_count)
                return -1
            f = &self.ifaces[self.section_base + local]
            incl = rd32(p + 12, self.swap)
            if self._check_length(at, incl, f, room - 20):
                return -1
            self.cur_ts = units_to_ns(f, (<uint64_t>rd32(p + 4, self.swap) << 32) | rd32(p + 8, self.swap))
            self.cur_orig = rd32(p + 16, self.swap)
            self.cur_off = at + 28
        elif btype == NG_SPB:
            if room < 4:
                self._fail(F_BLOCK_MIN, at, blen, 16)
                return -1
            if self.section_count == 0:
                self._fail(F_NO_IFACE, at, 0, 0)
                return -1
            local = 0
            f = &self.ifaces[self.section_base]
            orig = rd32(p, self.swap)
            incl = <uint32_t>min(<uint64_t>orig, room - 4)
            if f.snaplen and incl > f.snaplen:
                incl = f.snaplen
            if self._check_length(at, incl, f, room - 4):
                return -1
            self.cur_ts = self.last_ts               # an SPB carries no timestamp
            self.cur_orig = orig
            self.cur_off = at + 12
        else:
            return 0
        self.cur_incl = incl
        self.cur_iface = <uint16_t>(self.section_base + local)
        self.last_ts = self.cur_ts
        return 1

    def fill(self, Batch batch):
        """Copy the next packets into `batch`; returns how many (0 at the end or after a fault)."""
        cdef int r
        batch.clear()
        with nogil:
            while True:
                if not self.pending:
                    r = self._next()
                    if r < 0:
                        break
                    if r == 0:
                        continue
                r = batch.push(self.base + self.cur_off, self.cur_incl, self.cur_orig, self.cur_ts,
                               self.cur_iface, self.ifaces[self.cur_iface].linktype)
                self.pending = r != 0
                if r:
                    break
        if r < 0 and self.pending:
            raise MemoryError("no memory for a packet of the capture")
        return batch.n

    def feed(self, PacketSink sink, uint64_t stop):
        """Tell `sink` of the next packets (where each lies in the buffer, its lengths, time, interface and
        link type), up to the packet numbered `stop` (from 0, in capture order); returns how many were
        read (fewer than asked at the end or after a fault). The packets are not copied."""
        cdef uint64_t first = self.seen
        cdef int r
        with nogil:
            while self.seen < stop:
                r = self._next()
                if r < 0:
                    break
                if r == 0:
                    continue
                self.seen += 1
                if self.cur_ts > self.seen_ns:
                    self.seen_ns = self.cur_ts
                sink.put(self.base + self.cur_off, self.cur_off, self.cur_incl, self.cur_orig, self.cur_ts,
                         self.cur_iface, self.ifaces[self.cur_iface].linktype)
        return self.seen - first

    def skim(self):
        """Read to the end without keeping a packet: every interface the file declares (and its fault)."""
        with nogil:
            while self._next() >= 0:
                pass

    def release(self):
        """Drop the view of the mapping, so the mapping can be closed."""
        self._view = None
        self.base = NULL
        self.size = self.pos = 0
        self.done = True
        self.pending = False

    @property
    def interface_count(self):
        return self.n_ifaces

    def interface(self, Py_ssize_t i):
        """(linktype, snaplen, nanosecond, offset of its declaration) of interface i."""
        if not 0 <= i < self.n_ifaces:
            raise IndexError(i)
        return (self.ifaces[i].linktype, self.ifaces[i].snaplen, bool(self.ifaces[i].nanosecond),
                self.ifaces[i].offset)

    @property
    def failed(self):
        return self.fault != F_NONE

    @property
    def notes(self):
        """(offset, text) of each kind of oddity read past, at its first occurrence."""
        cdef int kind
        cdef Note n
        out = []
        for kind in range(<int>N_LAST):
            n = self.note[kind]
            if n.count == 0:
                continue
            a, b = n.a, n.b
            more = f" ({n.count} records)" if n.count > 1 else ""
            text = {
                N_OVER_SNAPLEN: f"record length {a} exceeds snaplen {b}{more}: read whole, as Wireshark does"
                                f" (libpcap cuts such records to the snaplen)",
                N_BAD_FRACTION: f"timestamp fraction {a} is not below {b}{more}: an error in the record; its packet"
                                f" is kept at the whole second, the clock does not move by it",
                N_PCAP_VERSION: f"pcap version {a}.{b}: libpcap refuses it"
                                f" ({'archaic pcap savefile format' if a < 2 else 'it reads 2.0 to 2.4'});"
                                f" read as 2.4",
                N_LINKTYPE_RESERVED: f"link-type field 0x{a:08x} has reserved bits 0x{a & LT_RESERVED:08x} set:"
                                     f" libpcap refuses the file; read as link type {a & 0xFFFF}",
                N_NG_VERSION: f"pcapng version {a}.{b}: libpcap refuses it (it reads 1.0 and 1.2); read as 1.0"
                              + (f" ({n.count} sections)" if n.count > 1 else ""),
            }[kind]
            out.append((n.offset, text))
        return out

    @property
    def problem(self):
        a, b = self.fa, self.fb
        return {
            F_NONE: None,
            F_TOO_SHORT: f"{a} bytes are too few for a capture file",
            F_MAGIC: f"unknown magic number 0x{a:08x}: not a pcap or pcapng file",
            F_GLOBAL_CUT: f"global header cut short: {a} of 24 bytes",
            F_RECORD_HEADER_CUT: f"record header cut short: {a} of 16 bytes",
            F_TOO_BIG: f"record length {a} exceeds {b} bytes",
            F_RECORD_CUT: f"record cut short: length {a} but {b} bytes left",
            F_BLOCK_CUT: f"block cut short: {a} bytes left, a block needs 12",
            F_BOM: f"bad byte-order magic 0x{a:08x}",
            F_BLOCK_SHORT: f"block length {a} is less than 12",
            F_BLOCK_ALIGN: f"block length {a} is not a multiple of 4",
            F_BLOCK_PAST_END: f"block length {a} runs past the end of file ({b} bytes left)",
            F_TRAILER: f"trailing block length {a} differs from leading {b}",
            F_BLOCK_MIN: f"block length {a} is below the {b} its type needs",
            F_VERSION: f"unsupported pcapng version {a}.{b}",
            F_NO_IFACE: f"packet references interface {a} but its section declares {b}",
            F_PACKET_PAST_BLOCK: f"record length {a} exceeds the {b} bytes of its block",
            F_TOO_MANY_IFACES: f"more than {a} interfaces",
            F_NO_MEMORY: f"out of memory for interface {a}",
        }[self.fault]
