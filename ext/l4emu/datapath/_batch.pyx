"""Batch: packets as flat C arrays over one owned buffer, so no Python object exists per packet."""
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcpy, memset
from l4emu.datapath cimport _types
from l4emu.datapath._types cimport name_table

# Verdict's names, each bound to its enum (checked complete at import).
VERDICT_NAMES = name_table({V_UNSEEN: "unseen", V_PASS: "pass", V_NEW: "new", V_FORWARD: "forward", V_REPLY: "reply",
                            V_DROP: "drop", V_ANSWER: "answer", V_ICMP: "icmp", V_MORE: "more"}, V_LAST,
                           "Verdict")
NS = _types.NS          # nanoseconds per second, for the Python side (timestamps are in nanoseconds)
# Room for a full batch of typical packets; one packet larger than what is left waits for the next
# batch, and a packet larger than the whole buffer grows it (records are at most 256 KiB).
DEFAULT_DATA_BYTES = 1 << 20
# Room left before each packet copied in, so that a tunnel prepends its headers in place (moving only
# the link header) instead of copying the packet: the largest outer headers the switch writes are
# IPv6 + UDP + GUE, 52 bytes; 64 keeps packets 8-byte aligned as they were.
DEFAULT_HEADROOM = 64


cdef inline void permute(void* array, size_t item, Py_ssize_t lo, Py_ssize_t count, const uint32_t* order,
                         uint64_t* scratch) noexcept nogil:
    """array[lo + t] = the old array[order[t]] for t < count: one gather into scratch, one copy back."""
    cdef Py_ssize_t t
    if item == 8:
        for t in range(count):
            scratch[t] = (<uint64_t*>array)[order[t]]
    elif item == 4:
        for t in range(count):
            (<uint32_t*>scratch)[t] = (<uint32_t*>array)[order[t]]
    elif item == 2:
        for t in range(count):
            (<uint16_t*>scratch)[t] = (<uint16_t*>array)[order[t]]
    else:
        for t in range(count):
            (<uint8_t*>scratch)[t] = (<uint8_t*>array)[order[t]]
    memcpy(<uint8_t*>array + lo * item, scratch, count * item)


cdef class Batch:
    def __cinit__(self, Py_ssize_t capacity=4096, Py_ssize_t data_bytes=DEFAULT_DATA_BYTES,
                  int headroom=DEFAULT_HEADROOM):
        if capacity < 1 or data_bytes < 1 or not 0 <= headroom <= 0xFFFF:
            raise ValueError("batch capacity and data bytes must be at least 1, headroom 0 to 65535")
        self.reserve = headroom
        self.capacity = capacity
        self.n = 0
        self.offset = <uint64_t*>calloc(capacity, sizeof(uint64_t))
        self.caplen = <uint32_t*>calloc(capacity, sizeof(uint32_t))
        self.origlen = <uint32_t*>calloc(capacity, sizeof(uint32_t))
        self.ts_ns = <uint64_t*>calloc(capacity, sizeof(uint64_t))
        self.iface = <uint16_t*>calloc(capacity, sizeof(uint16_t))
        self.linktype = <uint16_t*>calloc(capacity, sizeof(uint16_t))
        self.verdict = <uint8_t*>calloc(capacity, sizeof(uint8_t))
        self.detail = <int32_t*>calloc(capacity, sizeof(int32_t))
        self.headroom = <uint16_t*>calloc(capacity, sizeof(uint16_t))
        self.gso_size = <uint16_t*>calloc(capacity, sizeof(uint16_t))
        self.source = <uint32_t*>calloc(capacity, sizeof(uint32_t))
        self.after = <uint32_t*>calloc(capacity, sizeof(uint32_t))
        self.order = <uint32_t*>calloc(capacity, sizeof(uint32_t))
        self.scratch = <uint64_t*>calloc(capacity, sizeof(uint64_t))
        self.first_inserted = -1
        self.data_cap = data_bytes
        self.data = <uint8_t*>calloc(self.data_cap, 1)
        if not (self.offset and self.caplen and self.origlen and self.ts_ns and self.iface
                and self.linktype and self.verdict and self.detail and self.headroom and self.gso_size and self.source
                and self.after and self.order and self.scratch and self.data):
            raise MemoryError()

    def __dealloc__(self):
        free(self.offset)
        free(self.caplen)
        free(self.origlen)
        free(self.ts_ns)
        free(self.iface)
        free(self.linktype)
        free(self.verdict)
        free(self.detail)
        free(self.headroom)
        free(self.gso_size)
        free(self.source)
        free(self.after)
        free(self.order)
        free(self.scratch)
        free(self.data)

    cdef void clear(self) noexcept nogil:
        cdef Py_ssize_t k
        if self.first_inserted >= 0:
            for k in range(self.n):
                self.after[k] = 0
            self.first_inserted = -1
        self.n = 0
        self.data_len = 0

    cdef int push(self, const uint8_t* frame, uint32_t caplen, uint32_t origlen, uint64_t ts_ns,
                  uint16_t iface, uint16_t linktype) noexcept nogil:
        """Copy one packet in: 0 done, 1 the batch is full (try again after clear), -1 out of memory."""
        cdef Py_ssize_t i = self.n
        cdef uint8_t* grown
        cdef bint in_place = frame == self.data + self.data_len     # a source read it there (TUN): no headroom
        cdef uint32_t before = 0 if in_place else self.reserve
        if i == self.capacity:
            return 1
        if self.data_len + before + caplen > self.data_cap:
            if i > 0:
                return 1
            grown = <uint8_t*>realloc(self.data, before + caplen)
            if grown == NULL:
                return -1
            self.data = grown
            self.data_cap = before + caplen
        self.data_len += before
        if not in_place:
            memcpy(self.data + self.data_len, frame, caplen)
        self.headroom[i] = before
        self.gso_size[i] = 0
        self.offset[i] = self.data_len
        self.caplen[i] = caplen
        self.origlen[i] = origlen
        self.ts_ns[i] = ts_ns
        self.iface[i] = iface
        self.linktype[i] = linktype
        self.verdict[i] = V_UNSEEN
        self.detail[i] = 0
        self.source[i] = <uint32_t>i
        self.data_len += caplen
        self.n = i + 1
        return 0

    cdef uint8_t* room(self, Py_ssize_t i, uint32_t size) noexcept nogil:
        """Give packet i `size` fresh bytes at the end of the buffer and point it there (caplen = size);
        returns them, or NULL when memory runs out. The old bytes stay where they were, dead, until
        the batch is cleared. The buffer may move: every pointer into it is stale afterwards.

        This is how a packet grows (encapsulation) or is replaced (an ICMP error) without the
        in-place rewrite of every other packet paying for it: sinks follow offset[i] anyway."""
        cdef Py_ssize_t want = self.data_len + size, cap
        cdef uint8_t* grown
        if want > self.data_cap:
            cap = max(want, 2 * self.data_cap)
            grown = <uint8_t*>realloc(self.data, cap)
            if grown == NULL:
                return NULL
            self.data = grown
            self.data_cap = cap
        self.offset[i] = self.data_len
        self.caplen[i] = size
        self.headroom[i] = 0
        self.data_len = want
        return self.data + self.offset[i]

    cdef Py_ssize_t insert(self, Py_ssize_t i, uint32_t size) noexcept nogil:
        """A new packet slot to be written right after packet i (before any inserted after it earlier),
        holding `size` fresh bytes at the end of the buffer, with packet i's time, interface and link
        type, verdict unseen. Returns its index, or -1 when memory runs out. Every array and the
        buffer may move: pointers into them are stale afterwards.

        The slot is appended past the last packet and linked after i, so an insert costs the same
        however many packets follow i; settle() then moves every slot into its place in one pass
        (until then, slots below the first insert's keep their indices). Inserting after an
        inserted slot chains: a packet's pieces are its chain."""
        cdef Py_ssize_t k = self.n
        if self.n == self.capacity and self.grow_arrays(2 * self.capacity) < 0:
            return -1
        if self.room(k, size) == NULL:
            return -1
        if self.first_inserted < 0:
            self.first_inserted = k
            self.first_linked = i
        elif i < self.first_linked:
            self.first_linked = i
        self.after[k] = self.after[i]
        self.after[i] = <uint32_t>k
        self.origlen[k] = size
        self.ts_ns[k] = self.ts_ns[i]
        self.iface[k] = self.iface[i]
        self.linktype[k] = self.linktype[i]
        self.verdict[k] = V_UNSEEN
        self.detail[k] = 0
        self.gso_size[k] = 0                    # a fragment or an ICMP error: one packet
        self.source[k] = self.source[i]
        self.n = k + 1
        return k

    cdef void settle(self) noexcept nogil:
        """Put the slots insert() appended in their places (each after the packet it was inserted
        after), in one pass over the slots from the lowest that gained one: O(packets) per settle,
        not per insert. Indices change: call it when processing is done."""
        cdef Py_ssize_t lo = self.first_linked, s, count = 0
        cdef uint32_t k, here
        if self.first_inserted < 0:
            return
        for s in range(lo, self.first_inserted):
            k = <uint32_t>s
            while True:                             # the slot, then its chain
                self.order[count] = k
                count += 1
                here = k
                k = self.after[here]
                self.after[here] = 0
                if k == 0:
                    break
        permute(self.offset, sizeof(uint64_t), lo, count, self.order, self.scratch)
        permute(self.caplen, sizeof(uint32_t), lo, count, self.order, self.scratch)
        permute(self.origlen, sizeof(uint32_t), lo, count, self.order, self.scratch)
        permute(self.ts_ns, sizeof(uint64_t), lo, count, self.order, self.scratch)
        permute(self.iface, sizeof(uint16_t), lo, count, self.order, self.scratch)
        permute(self.linktype, sizeof(uint16_t), lo, count, self.order, self.scratch)
        permute(self.verdict, sizeof(uint8_t), lo, count, self.order, self.scratch)
        permute(self.detail, sizeof(int32_t), lo, count, self.order, self.scratch)
        permute(self.headroom, sizeof(uint16_t), lo, count, self.order, self.scratch)
        permute(self.gso_size, sizeof(uint16_t), lo, count, self.order, self.scratch)
        permute(self.source, sizeof(uint32_t), lo, count, self.order, self.scratch)
        self.first_inserted = -1

    cdef int grow_arrays(self, Py_ssize_t capacity) noexcept nogil:
        """Room for `capacity` packets in every array; 0, or -1 when memory runs out (nothing lost)."""
        cdef void* q
        q = realloc(self.offset, capacity * sizeof(uint64_t))
        if q == NULL:
            return -1
        self.offset = <uint64_t*>q
        q = realloc(self.caplen, capacity * sizeof(uint32_t))
        if q == NULL:
            return -1
        self.caplen = <uint32_t*>q
        q = realloc(self.origlen, capacity * sizeof(uint32_t))
        if q == NULL:
            return -1
        self.origlen = <uint32_t*>q
        q = realloc(self.ts_ns, capacity * sizeof(uint64_t))
        if q == NULL:
            return -1
        self.ts_ns = <uint64_t*>q
        q = realloc(self.iface, capacity * sizeof(uint16_t))
        if q == NULL:
            return -1
        self.iface = <uint16_t*>q
        q = realloc(self.linktype, capacity * sizeof(uint16_t))
        if q == NULL:
            return -1
        self.linktype = <uint16_t*>q
        q = realloc(self.verdict, capacity * sizeof(uint8_t))
        if q == NULL:
            return -1
        self.verdict = <uint8_t*>q
        q = realloc(self.detail, capacity * sizeof(int32_t))
        if q == NULL:
            return -1
        self.detail = <int32_t*>q
        q = realloc(self.headroom, capacity * sizeof(uint16_t))
        if q == NULL:
            return -1
        self.headroom = <uint16_t*>q
        q = realloc(self.gso_size, capacity * sizeof(uint16_t))
        if q == NULL:
            return -1
        self.gso_size = <uint16_t*>q
        q = realloc(self.source, capacity * sizeof(uint32_t))
        if q == NULL:
            return -1
        self.source = <uint32_t*>q
        q = realloc(self.after, capacity * sizeof(uint32_t))
        if q == NULL:
            return -1
        self.after = <uint32_t*>q
        memset(self.after + self.capacity, 0, (capacity - self.capacity) * sizeof(uint32_t))
        q = realloc(self.order, capacity * sizeof(uint32_t))
        if q == NULL:
            return -1
        self.order = <uint32_t*>q
        q = realloc(self.scratch, capacity * sizeof(uint64_t))
        if q == NULL:
            return -1
        self.scratch = <uint64_t*>q
        self.capacity = capacity
        return 0

    @staticmethod
    def from_frames(frames, int linktype, timestamps_ns=None, wire_lengths=None, gso_sizes=None):
        """Build a batch from Python bytes (tests, live mode).

        wire_lengths gives each frame's length on the wire when the capture snapped it shorter;
        gso_sizes each one's GSO segment payload size (0: not a super-packet), as a TUN read gives it.
        The buffer is sized exactly, so the last frame ends where the allocation ends: a sanitizer
        build then sees any read past it (the fuzzers and hostile-input tests rely on that).
        """
        cdef Py_ssize_t i, count = len(frames)
        cdef const uint8_t[::1] view
        cdef uint8_t* grown
        frames = [bytes(f) for f in frames]
        cdef Batch batch = Batch(max(count, 1), max(sum(len(f) for f in frames), 1), 0)
        for i in range(count):
            frame = frames[i]
            if len(frame) > batch.data_cap - batch.data_len:
                grown = <uint8_t*>realloc(batch.data, batch.data_len + len(frame) + DEFAULT_DATA_BYTES)
                if grown == NULL:
                    raise MemoryError()
                batch.data = grown
                batch.data_cap = batch.data_len + len(frame) + DEFAULT_DATA_BYTES
            view = frame if frame else b"\0"
            batch.push(&view[0], len(frame), wire_lengths[i] if wire_lengths is not None else len(frame),
                       timestamps_ns[i] if timestamps_ns is not None else i * 1000, 0, linktype)
            if gso_sizes is not None:
                batch.gso_size[i] = gso_sizes[i]
        return batch

    def __len__(self):
        return self.n

    def _check(self, Py_ssize_t i):
        if i < 0 or i >= self.n:
            raise IndexError(i)

    def packet(self, Py_ssize_t i):
        """The bytes of packet i as they are now (after any rewrite)."""
        self._check(i)
        return (<char*>self.data)[self.offset[i]:self.offset[i] + self.caplen[i]]

    def timestamp_ns(self, Py_ssize_t i):
        self._check(i)
        return self.ts_ns[i]

    def result(self, Py_ssize_t i):
        """(verdict name, detail) of packet i."""
        self._check(i)
        return VERDICT_NAMES[self.verdict[i]], self.detail[i]

    def set_result(self, Py_ssize_t i, int verdict, int detail):
        """Set packet i's verdict and detail (tests, Python-side filters)."""
        self._check(i)
        if not 0 <= verdict < V_LAST:
            raise ValueError(f"verdict {verdict} out of range")
        self.verdict[i] = verdict
        self.detail[i] = detail

    def results(self):
        return [self.result(i) for i in range(self.n)]

    def meta(self, Py_ssize_t i):
        """(timestamp ns, bytes on the wire, interface, link type) of packet i."""
        self._check(i)
        return self.ts_ns[i], self.origlen[i], self.iface[i], self.linktype[i]

    def append(self, frame, uint64_t ts_ns, uint16_t iface=0, uint16_t linktype=1, origlen=None):
        """Copy one packet in from Python (packet-at-a-time callers: emulated hosts); False if the
        batch is full (write it out, reset, append again)."""
        cdef const uint8_t[::1] view
        cdef bytes data = bytes(frame)
        cdef uint32_t wire = len(data) if origlen is None else max(<uint32_t>origlen, <uint32_t>len(data))
        view = data if data else b"\0"
        r = self.push(&view[0], len(data), wire, ts_ns, iface, linktype)
        if r < 0:
            raise MemoryError()
        return r == 0

    def reset(self):
        """Empty the batch, keeping its buffers."""
        self.clear()

    def copy_from(self, Batch source):
        """Become a copy of `source` (packets, metadata, verdicts): the bytes before the datapath
        rewrites them in place, for a view that needs them (--inside)."""
        cdef Py_ssize_t n
        source.settle()
        n = source.n
        if source.capacity > self.capacity:
            self._grow(source.capacity)
        if source.data_len > self.data_cap:
            free(self.data)
            self.data = <uint8_t*>calloc(source.data_len, 1)
            if self.data == NULL:
                self.data_cap = 0
                self.clear()
                raise MemoryError()
            self.data_cap = source.data_len
        memcpy(self.data, source.data, source.data_len)
        memcpy(self.offset, source.offset, n * sizeof(uint64_t))
        memcpy(self.caplen, source.caplen, n * sizeof(uint32_t))
        memcpy(self.origlen, source.origlen, n * sizeof(uint32_t))
        memcpy(self.ts_ns, source.ts_ns, n * sizeof(uint64_t))
        memcpy(self.iface, source.iface, n * sizeof(uint16_t))
        memcpy(self.linktype, source.linktype, n * sizeof(uint16_t))
        memcpy(self.verdict, source.verdict, n * sizeof(uint8_t))
        memcpy(self.detail, source.detail, n * sizeof(int32_t))
        memcpy(self.headroom, source.headroom, n * sizeof(uint16_t))
        memcpy(self.gso_size, source.gso_size, n * sizeof(uint16_t))
        memcpy(self.source, source.source, n * sizeof(uint32_t))
        self.first_inserted = -1
        self.n = n
        self.data_len = source.data_len

    def _grow(self, Py_ssize_t capacity):
        """Room for `capacity` packets (the arrays only; the data buffer is sized apart)."""
        cdef Batch bigger = Batch(capacity, 1)
        self.clear()
        self.offset, bigger.offset = bigger.offset, self.offset
        self.caplen, bigger.caplen = bigger.caplen, self.caplen
        self.origlen, bigger.origlen = bigger.origlen, self.origlen
        self.ts_ns, bigger.ts_ns = bigger.ts_ns, self.ts_ns
        self.iface, bigger.iface = bigger.iface, self.iface
        self.linktype, bigger.linktype = bigger.linktype, self.linktype
        self.verdict, bigger.verdict = bigger.verdict, self.verdict
        self.detail, bigger.detail = bigger.detail, self.detail
        self.headroom, bigger.headroom = bigger.headroom, self.headroom
        self.gso_size, bigger.gso_size = bigger.gso_size, self.gso_size
        self.source, bigger.source = bigger.source, self.source
        self.after, bigger.after = bigger.after, self.after
        self.order, bigger.order = bigger.order, self.order
        self.scratch, bigger.scratch = bigger.scratch, self.scratch
        self.capacity = capacity
