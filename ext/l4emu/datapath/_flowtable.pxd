cimport cython

cdef extern from *:
    void __builtin_prefetch(const void* addr) noexcept nogil
# The connection table's storage: flow records, the two-key hash index, timers and eviction order.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcmp, memcpy, memset
from l4emu.datapath._siphash cimport siphash13
from l4emu.datapath._types cimport *
from l4emu.datapath._fullnat cimport LocalAddr

cdef enum:
    WHEEL_SLOTS = 1024      # one-second buckets; longer timeouts wrap and are re-checked
    MAX_PROBE = 64          # linear-probe bound: a key that finds no room within it is refused
    MIN_INDEX_SLOTS = 1024  # the smallest index, and where a growing one starts

cdef enum:
    SMALL_PAGE = 4096
    HUGE_PAGE = 2097152     # x86-64's transparent huge page


cdef void* table_alloc(size_t size, size_t small_pages=*, bint populate=*) noexcept nogil

cdef enum RemoveWhy:
    R_EXPIRED = 0
    R_EVICTED = 1
    R_REUSED = 2
    R_NODEST = 3            # its real went down and expire_nodest_conn is on
    N_REMOVE_WHY = 4

ctypedef struct Slot:
    uint32_t hash32         # low half of the key's hash: home slot and a cheap pre-compare
    uint32_t ref            # a flow ref (make_ref below); 0 = empty

# A flow ref names one of a flow's two keys: (flow index + 1) << 1 | direction (0 forward, 1 reply),
# so that 0 is no flow. Only these three helpers know the encoding.
cdef inline uint32_t make_ref(uint32_t idx, bint reply) noexcept nogil:
    return ((idx + 1) << 1) | reply


cdef inline uint32_t ref_index(uint32_t ref) noexcept nogil:
    """The flow a (non-zero) ref names."""
    return (ref >> 1) - 1


cdef inline bint ref_is_reply(uint32_t ref) noexcept nogil:
    """Does the ref name the flow's reply key (real -> client)?"""
    return ref & 1


ctypedef void (*removed_fn)(void* ctx, Flow* flow, int why) noexcept nogil


@cython.final
cdef class FlowTable:
    cdef Flow* flows
    cdef Slot* slots
    cdef uint64_t mask
    cdef uint64_t full_mask             # the index's mask at capacity (mask grows to it, or starts there)
    cdef readonly uint32_t capacity     # maximum flows
    cdef readonly uint32_t used
    cdef readonly uint32_t peak
    cdef uint32_t next_unused
    cdef uint32_t free_head
    cdef uint64_t k0, k1
    cdef uint32_t wheel[WHEEL_SLOTS]
    cdef uint64_t wheel_sec
    cdef bint wheel_started
    cdef uint32_t ehead, etail
    cdef const Real* reals
    cdef const Service* services
    cdef const LocalAddr* laddrs          # fullnat: a flow's reply key is addressed to one of these
    cdef removed_fn on_removed
    cdef void* removed_ctx
    cdef uint64_t removed[N_REMOVE_WHY]   # flows removed, by RemoveWhy
    cdef readonly uint64_t insert_failed

    cdef void bind(self, const Real* reals, const Service* services, const LocalAddr* laddrs, removed_fn cb,
                   void* ctx) noexcept nogil
    cdef int64_t alloc(self, uint64_t now) noexcept nogil
    cdef int insert(self, uint32_t idx) noexcept nogil
    cdef void remove(self, uint32_t idx, int why) noexcept nogil
    cdef void reschedule(self, uint32_t idx) noexcept nogil
    cdef void assure(self, uint32_t idx) noexcept nogil
    cdef void advance(self, uint64_t now) noexcept nogil
    cdef void expire_due(self, uint64_t now) noexcept nogil
    cdef bint due(self, Flow* f, uint64_t now) noexcept nogil
    cdef void release_template(self, const Flow* conn) noexcept nogil
    cdef void keys_of(self, const Flow* f, PacketKey* fwd, PacketKey* rep) noexcept nogil
    cdef int grow_index(self) noexcept nogil
    cdef int slot_put(self, uint64_t h, uint32_t ref) noexcept nogil
    cdef void slot_delete(self, uint64_t h, uint32_t ref) noexcept nogil
    cdef void timer_link(self, uint32_t idx) noexcept nogil
    cdef void timer_unlink(self, uint32_t idx) noexcept nogil
    cdef void embryo_unlink(self, uint32_t idx) noexcept nogil
    cdef void release(self, uint32_t idx) noexcept nogil
    cdef void reap_bucket(self, uint32_t b, uint64_t now) noexcept nogil


# The read-only hot path, inline so the datapath compiles it into its own loop (a call across
# extension modules cannot be inlined, and these run for every packet).

cdef inline uint64_t load_be32(const uint8_t* p) noexcept nogil:
    return (<uint64_t>p[0] << 24) | (<uint64_t>p[1] << 16) | (<uint64_t>p[2] << 8) | p[3]


cdef inline uint64_t key_hash(FlowTable t, const PacketKey* key) noexcept nogil:
    cdef uint64_t w[5]
    cdef uint64_t ports = ((<uint64_t>key.sport << 48) | (<uint64_t>key.dport << 32)
                           | (<uint64_t>key.proto << 8) | key.family)
    if key.family == 4:
        w[0] = (load_be32(key.src) << 32) | load_be32(key.dst)
        w[1] = ports
        return siphash13(t.k0, t.k1, w, 2)
    memcpy(w, key.src, 16)
    memcpy(&w[2], key.dst, 16)
    w[4] = ports
    return siphash13(t.k0, t.k1, w, 5)


cdef inline void prefetch_slot(FlowTable t, uint64_t h) noexcept nogil:
    __builtin_prefetch(&t.slots[h & t.mask])


cdef inline void prefetch_flow(FlowTable t, uint64_t h) noexcept nogil:
    """Read ahead the record the key's home slot names (a guess: the key may sit further on)."""
    cdef uint32_t ref = t.slots[h & t.mask].ref
    if ref:
        __builtin_prefetch(&t.flows[ref_index(ref)])


cdef inline bint key_matches(FlowTable t, uint32_t ref, const PacketKey* key) noexcept nogil:
    cdef const Flow* f = &t.flows[ref_index(ref)]
    cdef const Real* r = &t.reals[f.real]
    cdef const Service* s
    cdef size_t alen = 4 if key.family == 4 else 16
    if f.proto != key.proto or f.family != key.family:
        return False
    if ref_is_reply(ref):
        if r.forward == FWD_FULLNAT and not (f.flags & F_TEMPLATE):    # the real answers its local address
            return (r.port == key.sport and f.lport == key.dport and memcmp(r.addr, key.src, alen) == 0
                    and memcmp(t.laddrs[f.laddr].addr, key.dst, alen) == 0)
        return (r.port == key.sport and f.cport == key.dport
                and memcmp(r.addr, key.src, alen) == 0 and memcmp(f.client, key.dst, alen) == 0)
    s = &t.services[r.service]
    return (f.cport == key.sport and s.vport == key.dport
            and memcmp(f.client, key.src, alen) == 0 and memcmp(s.vip, key.dst, alen) == 0)


cdef inline uint32_t key_lookup(FlowTable t, const PacketKey* key, uint64_t h) noexcept nogil:
    """The ref (make_ref) whose key equals the packet's tuple, or 0."""
    cdef uint64_t i = h & t.mask
    cdef uint32_t h32 = <uint32_t>h
    cdef int _probe
    for _probe in range(MAX_PROBE):
        if t.slots[i].ref == 0:
            return 0
        if t.slots[i].hash32 == h32 and key_matches(t, t.slots[i].ref, key):
            return t.slots[i].ref
        i = (i + 1) & t.mask
    return 0


cdef inline bint slot_room(FlowTable t, uint64_t h) noexcept nogil:
    """Is there a free index slot within MAX_PROBE of the hash's home (so an insert can succeed)?"""
    cdef uint64_t i = h & t.mask
    cdef int _probe
    for _probe in range(MAX_PROBE):
        if t.slots[i].ref == 0:
            return True
        i = (i + 1) & t.mask
    return False


cdef inline void template_key(const Service* s, const PacketKey* key, PacketKey* out) noexcept nogil:
    """The key of the persistence template for this client's network (see _persist.pxd)."""
    cdef int k
    memset(out, 0, sizeof(PacketKey))
    for k in range(16):
        out.src[k] = key.src[k] & s.persist_mask[k]
    memcpy(out.dst, s.vip, 16)
    out.dport = s.vport
    out.proto = s.proto | TEMPLATE_PROTO
    out.family = s.family
