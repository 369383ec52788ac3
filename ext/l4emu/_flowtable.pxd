cimport cython

cdef extern from *:
    void __builtin_prefetch(const void* addr) noexcept nogil
# The connection table's storage: flow records, the two-key hash index, timers and eviction order.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from l4emu._types cimport *

cdef enum:
    WHEEL_SLOTS = 1024      # one-second buckets; longer timeouts wrap and are re-checked
    MAX_PROBE = 64          # linear-probe bound: a key that finds no room within it is refused

cdef enum RemoveWhy:
    R_EXPIRED = 0
    R_EVICTED = 1
    R_REUSED = 2

ctypedef struct Slot:
    uint32_t hash32         # low half of the key's hash: home slot and a cheap pre-compare
    uint32_t ref            # (flow index + 1) << 1 | direction (0 forward, 1 reply); 0 = empty

ctypedef void (*removed_fn)(void* ctx, Flow* flow, int why) noexcept nogil


@cython.final
cdef class FlowTable:
    cdef Flow* flows
    cdef Slot* slots
    cdef uint64_t mask
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
    cdef removed_fn on_removed
    cdef void* removed_ctx
    cdef readonly uint64_t expired, evicted, reused, insert_failed

    cdef void bind(self, const Real* reals, const Service* services, removed_fn cb, void* ctx) noexcept nogil
    cdef uint64_t hash(self, const PacketKey* key) noexcept nogil
    cdef void prefetch_slot(self, uint64_t h) noexcept nogil
    cdef void prefetch_flow(self, uint64_t h) noexcept nogil
    cdef uint32_t lookup(self, const PacketKey* key, uint64_t h) noexcept nogil
    cdef int64_t alloc(self, uint64_t now) noexcept nogil
    cdef int insert(self, uint32_t idx) noexcept nogil
    cdef void remove(self, uint32_t idx, int why) noexcept nogil
    cdef void reschedule(self, uint32_t idx) noexcept nogil
    cdef void assure(self, uint32_t idx) noexcept nogil
    cdef void advance(self, uint64_t now) noexcept nogil
    cdef void expire_due(self, uint64_t now) noexcept nogil
    cdef void keys_of(self, const Flow* f, PacketKey* fwd, PacketKey* rep) noexcept nogil
    cdef bint matches(self, uint32_t ref, const PacketKey* key) noexcept nogil
    cdef int slot_put(self, uint64_t h, uint32_t ref) noexcept nogil
    cdef void slot_delete(self, uint64_t h, uint32_t ref) noexcept nogil
    cdef void timer_link(self, uint32_t idx) noexcept nogil
    cdef void timer_unlink(self, uint32_t idx) noexcept nogil
    cdef void embryo_unlink(self, uint32_t idx) noexcept nogil
    cdef void release(self, uint32_t idx) noexcept nogil
    cdef void reap_bucket(self, uint32_t b, uint64_t now) noexcept nogil
