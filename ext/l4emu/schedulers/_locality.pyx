"""Locality-based least-connection schedulers (IPVS lblc, lblcr): a bounded per-destination cache in C."""
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy
from l4emu.datapath._types cimport NS, PacketKey, Real
from l4emu.schedulers._core cimport Scheduler, SchedulerHook, available
from l4emu.schedulers._util cimport least_weighted, lighter, make_hook, selection_hash

cdef enum:
    WAYS = 4                    # entries per set: a destination lives in one set, LRU within it
    SETS = 4096                 # 16,384 entries in all, IPVS lblc's max_size
    SET_MAX = 8                 # reals an lblcr entry may hold
    ACTIVE_COST = 50            # lblc/lblcr weigh an active connection as 50 inactive ones (IPVS)

EXPIRATION_NS = 24 * 3600 * <uint64_t>NS    # IPVS lblc_expiration / lblcr_expiration default


ctypedef struct Entry:
    uint8_t dst[16]
    uint64_t lastuse_ns
    uint64_t lastmod_ns         # lblcr: when the set last grew or shrank
    int32_t members[SET_MAX]    # reals for this destination; lblc uses one
    uint8_t size                # 0: a free entry
    uint8_t family


ctypedef struct Cache:
    Entry* entries              # SETS x WAYS
    uint64_t expiration_ns
    uint32_t n                  # reals the entries index (a change of count empties the cache)


cdef Entry* cache_entry(Cache* c, const PacketKey* key, uint64_t now_ns, const Real* reals,
                        uint32_t n) noexcept nogil:
    """The destination's live entry, or a cleared one to fill in (a free, expired or least recent way)."""
    cdef Entry* ways = &c.entries[(selection_hash(key.dst, 0, 4) % SETS) * WAYS]
    cdef Entry* victim = &ways[0]
    cdef int k
    if c.n != n:
        for k in range(SETS * WAYS):
            c.entries[k].size = 0
        c.n = n
    for k in range(WAYS):
        if ways[k].size and now_ns - ways[k].lastuse_ns > c.expiration_ns and now_ns > ways[k].lastuse_ns:
            ways[k].size = 0                    # unused for longer than the expiration
        if ways[k].size and ways[k].family == key.family and memcmp(ways[k].dst, key.dst, 16) == 0:
            ways[k].lastuse_ns = now_ns
            return &ways[k]
        if victim.size and (not ways[k].size or ways[k].lastuse_ns < victim.lastuse_ns):
            victim = &ways[k]
    memcpy(victim.dst, key.dst, 16)
    victim.family = key.family
    victim.lastuse_ns = victim.lastmod_ns = now_ns
    victim.size = 0
    return victim


cdef bint overloaded(const Real* reals, uint32_t n, int32_t i) noexcept nogil:
    """IPVS lblc/lblcr is_overloaded: more active connections than weight while some real is at
    under half of its own."""
    cdef uint32_t k
    if reals[i].active <= <uint32_t>reals[i].weight:
        return False
    for k in range(n):
        if available(&reals[k]) and reals[k].active * 2 < <uint32_t>reals[k].weight:
            return True
    return False


cdef int32_t lblc_pick(void* state, const Real* reals, uint32_t n, const PacketKey* key,
                       uint64_t now_ns) noexcept nogil:
    """IPVS lblc: the real this destination went to, unless it cannot take flows or is overloaded;
    then the least-connection real, remembered for the destination."""
    cdef Entry* e = cache_entry(<Cache*>state, key, now_ns, reals, n)
    cdef int32_t i
    if e.size:
        i = e.members[0]
        if available(&reals[i]) and not overloaded(reals, n, i):
            return i
    i = least_weighted(reals, n, ACTIVE_COST)
    e.members[0] = i
    e.size = 1 if i >= 0 else 0
    return i


cdef inline uint64_t load_of(const Real* r) noexcept nogil:
    return <uint64_t>r.active * ACTIVE_COST + r.inactive


cdef int32_t set_extreme(Entry* e, const Real* reals, bint most) noexcept nogil:
    """Position in the set of the least loaded available member (most: the most loaded, an
    unavailable one first), or -1."""
    cdef int32_t best = -1, i, b
    cdef int k
    for k in range(e.size):
        i = e.members[k]
        if not available(&reals[i]):
            if most:
                return k
            continue
        b = e.members[best] if best >= 0 else 0
        if best < 0 or (lighter(load_of(&reals[b]), reals[b].weight, load_of(&reals[i]), reals[i].weight)
                        if most else
                        lighter(load_of(&reals[i]), reals[i].weight, load_of(&reals[b]), reals[b].weight)):
            best = k
    return best


cdef int32_t lblcr_pick(void* state, const Real* reals, uint32_t n, const PacketKey* key,
                        uint64_t now_ns) noexcept nogil:
    """IPVS lblcr: the least loaded real of the destination's set; the set grows by the
    least-connection real when that one is overloaded, and sheds its most loaded member once
    it has not changed for the expiration time."""
    cdef Cache* c = <Cache*>state
    cdef Entry* e = cache_entry(c, key, now_ns, reals, n)
    cdef int32_t k, i
    if e.size > 1 and now_ns - e.lastmod_ns > c.expiration_ns and now_ns > e.lastmod_ns:
        k = set_extreme(e, reals, True)
        if k >= 0:
            e.size -= 1
            e.members[k] = e.members[e.size]
            e.lastmod_ns = now_ns
    k = set_extreme(e, reals, False)
    if k >= 0 and not overloaded(reals, n, e.members[k]):
        return e.members[k]
    i = least_weighted(reals, n, ACTIVE_COST)
    if i < 0:
        return -1
    for k in range(e.size):
        if e.members[k] == i:
            return i
    if e.size == SET_MAX:                       # bounded: the newcomer replaces the most loaded
        e.members[set_extreme(e, reals, True)] = i
    else:
        e.members[e.size] = i
        e.size += 1
    e.lastmod_ns = now_ns
    return i


cdef class _Locality(Scheduler):
    """Owns the bounded destination cache both schedulers keep."""
    cdef Cache cache

    def __cinit__(self):
        self.cache.entries = <Entry*>calloc(SETS * WAYS, sizeof(Entry))
        if self.cache.entries == NULL:
            raise MemoryError()
        self.cache.expiration_ns = EXPIRATION_NS

    def __dealloc__(self):
        free(self.cache.entries)


cdef class LocalityLeastConnection(_Locality):
    """lblc: a destination sticks to one real while it copes (for cache clusters; one VIP, one real)."""
    name = "lblc"

    cdef SchedulerHook hook(self):
        return make_hook(lblc_pick, NULL, &self.cache)


cdef class LocalityLeastConnectionReplicated(_Locality):
    """lblcr: like lblc, but a busy destination spreads over a small set of reals."""
    name = "lblcr"

    cdef SchedulerHook hook(self):
        return make_hook(lblcr_pick, NULL, &self.cache)
