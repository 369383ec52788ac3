"""The pcap/pcapng writer: C loops that encode a Batch into file bytes, one file write per batch."""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

from l4emu.datapath._batch cimport Batch, V_DROP, V_LAST
from l4emu.datapath._types cimport NS
from l4emu.datapath._wire cimport LINKTYPE_ETHERNET as _LINKTYPE_ETHERNET
from l4emu.io.pcap cimport _format
from l4emu.io.pcap._format cimport NG_EPB

# For writer.py, which writes the file and section headers: the one definition is _format.pxd.
PCAP_MAGIC_US = _format.PCAP_US
PCAP_MAGIC_NS = _format.PCAP_NS
PCAPNG_SHB = _format.NG_SHB
PCAPNG_BOM = _format.NG_BOM
PCAPNG_IDB = _format.NG_IDB
LINKTYPE_ETHERNET = _LINKTYPE_ETHERNET


# A .pcap record's seconds are 32 bits. A C constant (the bare literal made Cython compare every
# packet's seconds as Python ints), typed: an enum's value must fit a C int, and 0xFFFFFFFF does not.
cdef extern from *:
    """
    #define L4EMU_PCAP_SECONDS_MAX 0xFFFFFFFFULL
    """
    const uint64_t PCAP_SECONDS_MAX "L4EMU_PCAP_SECONDS_MAX"


cdef inline uint64_t pad4(uint64_t n) noexcept nogil:
    return (n + 3) & ~(<uint64_t>3)


cdef class Encoder:
    """Turns a Batch into pcap records or pcapng EPBs in one reusable buffer: one file write per batch."""
    cdef bint pcapng
    cdef public bint nanosecond          # pcap: the resolution of the whole file
    cdef public uint32_t snaplen         # bytes kept per packet (0: all); the record keeps the real length
    cdef bytearray _ns_ifaces            # pcapng: per written IDB, 1 if it declares if_tsresol=9
    cdef bytearray _buf
    cdef object _comments_key
    cdef bytes _blob
    cdef Py_ssize_t row_start[V_LAST]
    cdef Py_ssize_t row_len[V_LAST]
    cdef uint64_t* ent_off
    cdef uint32_t* ent_len

    def __init__(self, bint pcapng):
        self.pcapng = pcapng
        self._ns_ifaces = bytearray()
        self._buf = bytearray()

    def __dealloc__(self):
        free(self.ent_off)
        free(self.ent_len)

    def add_interface(self, bint nanosecond):
        """Note an IDB just written, in order: its index is the EPB interface id."""
        self._ns_ifaces.append(nanosecond)

    cdef _build_comments(self, comments):
        # Flattened once per `comments` object: the packet loop then looks up (verdict, detail) in C.
        cdef Py_ssize_t v, count = 0
        texts = []
        for v in range(V_LAST):
            row = comments[v] if comments is not None and v < len(comments) and comments[v] is not None else ()
            self.row_start[v] = count
            self.row_len[v] = len(row)
            count += len(row)
            for d, text in enumerate(row):
                text = bytes(text) if text is not None else b""
                if len(text) > 65535:
                    raise ValueError(f"comment for verdict {v} detail {d} is longer than 65535 bytes")
                texts.append(text)
        free(self.ent_off)
        free(self.ent_len)
        self.ent_off = <uint64_t*>malloc(max(count, 1) * sizeof(uint64_t))
        self.ent_len = <uint32_t*>malloc(max(count, 1) * sizeof(uint32_t))
        if not (self.ent_off and self.ent_len):
            raise MemoryError()
        pos = 0
        for v, text in enumerate(texts):
            self.ent_off[v] = pos
            self.ent_len[v] = len(text)
            pos += len(text)
        self._blob = b"".join(texts)
        self._comments_key = comments

    cdef inline uint32_t _kept(self, Batch batch, Py_ssize_t i) noexcept nogil:
        """Bytes of packet i that go into the file: all of them, or the first `snaplen` (as tcpdump -s)."""
        if self.snaplen and batch.caplen[i] > self.snaplen:
            return self.snaplen
        return batch.caplen[i]

    cdef inline uint32_t _wire(self, Batch batch, Py_ssize_t i) noexcept nogil:
        """The length recorded as on the wire: as read, and never less than the bytes a cut packet had."""
        if self.snaplen and batch.caplen[i] > self.snaplen and batch.origlen[i] < batch.caplen[i]:
            return batch.caplen[i]
        return batch.origlen[i]

    cdef inline uint32_t _comment(self, uint8_t verdict, int32_t detail) noexcept nogil:
        """Index+1 of the comment entry for (verdict, detail), 0 when there is none."""
        cdef Py_ssize_t e
        if verdict >= V_LAST or detail < 0 or detail >= self.row_len[verdict]:
            return 0
        e = self.row_start[verdict] + detail
        return e + 1 if self.ent_len[e] else 0

    def first_written(self, Batch batch, bint include_dropped):
        """(linktype, iface) of the first packet `encode` would write, or None."""
        cdef Py_ssize_t i
        for i in range(batch.n):
            if include_dropped or batch.verdict[i] != V_DROP:
                return batch.linktype[i], batch.iface[i]
        return None

    cdef tuple _measure(self, Batch batch, bint include_dropped, comments, uint32_t linktype):
        """(bytes, packets) that encoding the batch writes; ValueError if one cannot go into this file."""
        cdef Py_ssize_t i, count = 0
        cdef uint64_t size = 0
        cdef uint32_t incl, e
        cdef Py_ssize_t n_ifaces = len(self._ns_ifaces)
        cdef bint comment_on = self.pcapng and comments is not None
        if comment_on and comments is not self._comments_key:
            self._build_comments(comments)
        for i in range(batch.n):
            if not include_dropped and batch.verdict[i] == V_DROP:
                continue
            incl = batch.caplen[i]
            if batch.offset[i] > <uint64_t>batch.data_len or incl > <uint64_t>batch.data_len - batch.offset[i]:
                raise ValueError(f"packet {i} lies outside its batch buffer")
            incl = self._kept(batch, i)
            if self.pcapng:
                if batch.iface[i] >= n_ifaces:
                    raise ValueError(f"packet {i} uses interface {batch.iface[i]} but only {n_ifaces} are known")
                size += 32 + pad4(incl)
                e = self._comment(batch.verdict[i], batch.detail[i]) if comment_on else 0
                if e:
                    size += 8 + pad4(self.ent_len[e - 1])
            else:
                if batch.linktype[i] != linktype:
                    raise ValueError(f"packet {i} has link type {batch.linktype[i]}, the file has {linktype}:"
                                     " several link types: write .pcapng")
                if batch.ts_ns[i] // NS > PCAP_SECONDS_MAX:     # they would wrap to 1970
                    raise ValueError(f"a packet at {batch.ts_ns[i] // NS} s after 1970 is past 2106-02-07 06:28:15 UTC,"
                                     " the last second a .pcap record can hold: write .pcapng")
                size += 16 + incl
            count += 1
        return size, count

    cdef void _write(self, Batch batch, bint include_dropped, const uint8_t* blob, const uint8_t* ns_ifaces,
                     uint8_t* out) noexcept nogil:
        """The records _measure sized (it checked every packet), from `out` on; `blob`: the comments' text
        (NULL: none), `ns_ifaces`: per interface, whether its timestamps are in nanoseconds."""
        cdef Py_ssize_t i
        cdef uint64_t units
        cdef uint32_t incl
        cdef uint32_t head[4]
        for i in range(batch.n):
            if not include_dropped and batch.verdict[i] == V_DROP:
                continue
            incl = self._kept(batch, i)
            if self.pcapng:
                out = self._epb(out, batch, i, ns_ifaces[batch.iface[i]], blob)
            else:
                units = batch.ts_ns[i] % NS
                head[0] = <uint32_t>(batch.ts_ns[i] // NS)
                head[1] = <uint32_t>(units if self.nanosecond else units // 1000)
                head[2], head[3] = incl, self._wire(batch, i)
                memcpy(out, head, 16)               # records are not 4-aligned: no typed stores
                if incl:                            # an empty batch buffer has data == NULL
                    memcpy(out + 16, batch.data + batch.offset[i], incl)
                out += 16 + incl

    def encode(self, Batch batch, bint include_dropped, comments, uint32_t linktype):
        """Bytes of the packets to write and their count; ValueError if one cannot go into this file."""
        cdef uint64_t size
        cdef uint8_t[::1] view
        size, count = self._measure(batch, include_dropped, comments, linktype)
        if size == 0:
            return b"", 0
        if <uint64_t>len(self._buf) < size:
            self._buf = bytearray(size + size // 4)
        view = self._buf
        self._write_from(batch, include_dropped, comments, &view[0])
        return memoryview(self._buf)[:size], count

    def measure(self, Batch batch, bint include_dropped, comments, uint32_t linktype):
        """(bytes, packets) that encode writes for the batch; ValueError as encode."""
        return self._measure(batch, include_dropped, comments, linktype)

    def encode_into(self, Batch batch, bint include_dropped, comments, uint32_t linktype, uint8_t[::1] out):
        """As encode, but into `out` (sized by measure: a sink's own buffer, no copy after); returns
        (bytes, packets) written."""
        cdef uint64_t size
        size, count = self._measure(batch, include_dropped, comments, linktype)
        if size > <uint64_t>out.shape[0]:
            raise ValueError(f"{size} bytes of records, room for {out.shape[0]}")
        if size:
            self._write_from(batch, include_dropped, comments, &out[0])
        return size, count

    cdef _write_from(self, Batch batch, bint include_dropped, comments, uint8_t* out):
        cdef const uint8_t* ns_ifaces = <const uint8_t*>(<char*>self._ns_ifaces)
        cdef const uint8_t* blob = <const uint8_t*>(<char*>self._blob) if self.pcapng and comments is not None else NULL
        with nogil:
            self._write(batch, include_dropped, blob, ns_ifaces, out)

    cdef uint8_t* _epb(self, uint8_t* out, Batch batch, Py_ssize_t i, bint ns, const uint8_t* blob) noexcept nogil:
        cdef uint32_t incl = self._kept(batch, i), e = 0, clen = 0, blen
        cdef uint64_t units = batch.ts_ns[i] if ns else batch.ts_ns[i] // 1000
        cdef uint32_t head[7]
        if blob != NULL:
            e = self._comment(batch.verdict[i], batch.detail[i])
        blen = 32 + <uint32_t>pad4(incl)
        if e:
            clen = self.ent_len[e - 1]
            blen += 8 + <uint32_t>pad4(clen)
        head[0], head[1], head[2] = NG_EPB, blen, batch.iface[i]
        head[3], head[4] = <uint32_t>(units >> 32), <uint32_t>units
        head[5], head[6] = incl, self._wire(batch, i)
        memcpy(out, head, 28)
        if incl:
            memcpy(out + 28, batch.data + batch.offset[i], incl)
        out += 28 + incl
        memset(out, 0, pad4(incl) - incl)
        out += pad4(incl) - incl
        if e:
            (<uint16_t*>out)[0] = 1                  # opt_comment
            (<uint16_t*>out)[1] = <uint16_t>clen
            memcpy(out + 4, blob + self.ent_off[e - 1], clen)
            memset(out + 4 + clen, 0, pad4(clen) - clen + 4)   # padding, then opt_endofopt
            out += 8 + pad4(clen)
        memcpy(out, &blen, 4)
        return out + 4
