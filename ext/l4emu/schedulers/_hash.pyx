"""Hash- and locality-based built-in schedulers (IPVS's sh dh mh lblc lblcr, and rendezvous hrw), in C."""
from libc.math cimport log
from libc.stdint cimport int32_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from l4emu.datapath._types cimport PacketKey, Real, RF_DOWN
from l4emu.schedulers._core cimport Scheduler, SchedulerHook, available
from l4emu.schedulers._util cimport fold32, gcd32, make_hook, mix64, selection_hash

cdef enum:
    BUCKETS = 256               # IPVS's sh and dh table size (CONFIG_IP_VS_SH_TAB_BITS = 8)

DEFAULT_MH_SIZE = 65537         # Katran's default Maglev table size


def flags_of(cls, flags):
    """The flags a scheduler accepts, checked: one bad flag is a ValueError naming the good ones."""
    for flag in flags:
        if flag not in cls.flags:
            known = ", ".join(cls.flags) or "none"
            raise ValueError(f"scheduler {cls.name!r} has no flag {flag!r} (its flags: {known})")
    return set(flags)


ctypedef struct BucketState:
    int32_t buckets[BUCKETS]
    uint32_t n                  # reals the table was built for (0: not yet)
    bint port                   # sh-port: hash the client's port too
    bint fallback               # sh-fallback: an unavailable real's clients go round the table


cdef void sh_build(void* state, const Real* reals, uint32_t n) noexcept nogil:
    """IPVS ip_vs_sh_reassign: the reals that are not down, in order, each taking `weight`
    consecutive buckets (at least one; weights divided by their gcd first)."""
    cdef BucketState* s = <BucketState*>state
    cdef uint32_t i, b, g = 0, taken = 0
    cdef int32_t cur = -1
    for i in range(n):
        if not (reals[i].flags & RF_DOWN) and reals[i].weight > 0:
            g = gcd32(g, reals[i].weight)
    for b in range(BUCKETS):
        if cur < 0 or taken >= max(1, reals[cur].weight // g if g else 1):
            cur = next_up(reals, n, cur)
            taken = 0
            if cur < 0:                         # every real is down
                s.buckets[b] = -1
                continue
        s.buckets[b] = cur
        taken += 1
    s.n = n


cdef void dh_build(void* state, const Real* reals, uint32_t n) noexcept nogil:
    """IPVS ip_vs_dh_reassign: one bucket per real that is not down, round and round (no weights)."""
    cdef BucketState* s = <BucketState*>state
    cdef int32_t cur = -1
    cdef uint32_t b
    for b in range(BUCKETS):
        cur = next_up(reals, n, cur)
        s.buckets[b] = cur
    s.n = n


cdef inline int32_t next_up(const Real* reals, uint32_t n, int32_t after) noexcept nogil:
    """The next real after `after` (wrapping) that is not down, or -1 if all are."""
    cdef uint32_t k
    cdef int32_t i
    for k in range(1, n + 1):
        i = (after + <int32_t>k) % <int32_t>n if after >= 0 else <int32_t>k - 1
        if not (reals[i].flags & RF_DOWN):
            return i
    return -1


cdef inline uint32_t sh_bucket(uint32_t fold, uint16_t port, uint32_t offset) noexcept nogil:
    """IPVS ip_vs_sh_hashkey: offset + hash_32(port + address, 8)."""
    return (offset + (((port + fold) * <uint32_t>0x61C88647) >> 24)) & (BUCKETS - 1)


cdef int32_t sh_pick(void* state, const Real* reals, uint32_t n, const PacketKey* key,
                     uint64_t now_ns) noexcept nogil:
    cdef BucketState* s = <BucketState*>state
    cdef uint32_t fold = fold32(key.src, key.family), first, k
    cdef uint16_t port = key.sport if s.port else 0
    cdef int32_t i
    if s.n != n:
        sh_build(state, reals, n)
    first = sh_bucket(fold, port, 0)
    i = s.buckets[first]
    if i < 0 or available(&reals[i]):
        return i
    if s.fallback:                              # IPVS ip_vs_sh_get_fallback: round the table
        for k in range(BUCKETS):
            i = s.buckets[sh_bucket(fold, port, (k + first) & (BUCKETS - 1))]
            if available(&reals[i]):
                return i
    return -1


cdef int32_t dh_pick(void* state, const Real* reals, uint32_t n, const PacketKey* key,
                     uint64_t now_ns) noexcept nogil:
    """IPVS ip_vs_dh_hashkey: the destination address times 2654435761, low 8 bits."""
    cdef BucketState* s = <BucketState*>state
    cdef int32_t i
    if s.n != n:
        dh_build(state, reals, n)
    i = s.buckets[(fold32(key.dst, key.family) * <uint32_t>2654435761) & (BUCKETS - 1)]
    return i if i >= 0 and available(&reals[i]) else -1


cdef class SourceHash(Scheduler):
    """sh: a client address always gets the same real (IPVS's bucket table and hash)."""
    name = "sh"
    flags = ("sh-fallback", "sh-port")
    options = ("flags",)
    cdef BucketState state

    def __init__(self, flags=()):
        chosen = flags_of(type(self), flags)
        self.state.port, self.state.fallback = "sh-port" in chosen, "sh-fallback" in chosen

    cdef SchedulerHook hook(self):
        return make_hook(sh_pick, sh_build, &self.state)


cdef class DestinationHash(Scheduler):
    """dh: a destination address always gets the same real (for caches; one VIP means one real)."""
    name = "dh"
    cdef BucketState state

    cdef SchedulerHook hook(self):
        return make_hook(dh_pick, dh_build, &self.state)


ctypedef struct MaglevState:
    int32_t* table              # real index per slot, -1 when no real can take flows
    uint32_t size               # a prime
    uint32_t n
    bint port                   # mh-port
    bint fallback               # mh-fallback


cdef void mh_build(void* state, const Real* reals, uint32_t n) noexcept nogil:
    """Katran's weighted Maglev (MaglevHashV2): every real walks its own permutation of the slots,
    and takes a turn each time its running weight passes the largest weight, so slots follow weight."""
    cdef MaglevState* s = <MaglevState*>state
    cdef uint64_t* perm = <uint64_t*>malloc(4 * max(n, 1) * sizeof(uint64_t))
    cdef uint64_t cur, filled = 0
    cdef uint32_t i, m = s.size
    cdef int32_t max_weight = 0
    s.n = n
    for i in range(m):
        s.table[i] = -1
    if perm == NULL:
        return
    for i in range(n):
        if not (reals[i].flags & RF_DOWN) and reals[i].weight > max_weight:
            max_weight = reals[i].weight
        perm[4 * i] = selection_hash(reals[i].addr, reals[i].port, 1) % m            # offset
        perm[4 * i + 1] = selection_hash(reals[i].addr, reals[i].port, 2) % (m - 1) + 1  # skip
        perm[4 * i + 2] = 0                                                          # next
        perm[4 * i + 3] = 0                                                          # running weight
    while max_weight and filled < m:
        for i in range(n):
            if reals[i].flags & RF_DOWN or reals[i].weight <= 0:
                continue
            perm[4 * i + 3] += reals[i].weight
            if perm[4 * i + 3] < <uint64_t>max_weight:
                continue
            perm[4 * i + 3] -= max_weight
            cur = (perm[4 * i] + perm[4 * i + 2] * perm[4 * i + 1]) % m
            while s.table[cur] >= 0:
                perm[4 * i + 2] += 1
                cur = (perm[4 * i] + perm[4 * i + 2] * perm[4 * i + 1]) % m
            s.table[cur] = i
            perm[4 * i + 2] += 1
            filled += 1
            if filled == m:
                break
    free(perm)


cdef int32_t mh_pick(void* state, const Real* reals, uint32_t n, const PacketKey* key,
                     uint64_t now_ns) noexcept nogil:
    cdef MaglevState* s = <MaglevState*>state
    cdef uint16_t port = key.sport if s.port else 0
    cdef uint32_t salt
    cdef int32_t i
    if s.n != n:
        mh_build(state, reals, n)
    i = s.table[selection_hash(key.src, port, 0) % s.size]
    if i < 0 or available(&reals[i]):
        return i
    if s.fallback:                              # IPVS mh-fallback: rehash until a real can take it
        for i in range(n):
            if available(&reals[i]):
                break
        else:
            return -1
        for salt in range(1, s.size):
            i = s.table[selection_hash(key.src, port, salt) % s.size]
            if available(&reals[i]):
                return i
    return -1


cdef class Maglev(Scheduler):
    """mh: Maglev hashing of the client address; losing one of N reals moves about 1/N of the clients."""
    name = "mh"
    flags = ("mh-fallback", "mh-port")
    options = ("flags", "table_size")
    cdef MaglevState state

    def __init__(self, flags=(), table_size=DEFAULT_MH_SIZE):
        chosen = flags_of(type(self), flags)
        if table_size < 3 or any(table_size % d == 0 for d in range(2, int(table_size ** 0.5) + 1)):
            raise ValueError(f"Maglev table size {table_size} is not a prime")
        free(self.state.table)
        self.state.table = <int32_t*>malloc(table_size * sizeof(int32_t))
        if self.state.table == NULL:
            raise MemoryError()
        self.state.size, self.state.n = table_size, 0
        self.state.port, self.state.fallback = "mh-port" in chosen, "mh-fallback" in chosen

    def __dealloc__(self):
        free(self.state.table)

    def slots(self):
        """The lookup table as a list of real indexes (-1: none), as built for the last reals seen."""
        return [self.state.table[i] for i in range(self.state.size)] if self.state.n else []

    cdef SchedulerHook hook(self):
        return make_hook(mh_pick, mh_build, &self.state)


ctypedef struct HrwState:
    uint64_t* ids               # a fixed hash of each real's address and port
    uint32_t n
    bint port                   # hrw-port


cdef void hrw_changed(void* state, const Real* reals, uint32_t n) noexcept nogil:
    cdef HrwState* s = <HrwState*>state
    cdef uint32_t i
    free(s.ids)
    s.ids = <uint64_t*>malloc(max(n, 1) * sizeof(uint64_t))
    s.n = n if s.ids != NULL else 0
    for i in range(s.n):
        s.ids[i] = selection_hash(reals[i].addr, reals[i].port, 3)


cdef int32_t hrw_pick(void* state, const Real* reals, uint32_t n, const PacketKey* key,
                      uint64_t now_ns) noexcept nogil:
    """Weighted rendezvous: the real with the highest weight / -ln(u), u a hash of (client, real)."""
    cdef HrwState* s = <HrwState*>state
    cdef uint64_t kh
    cdef double score, best_score = 0
    cdef int32_t best = -1
    cdef uint32_t i
    if s.n != n:
        hrw_changed(state, reals, n)
        if s.n != n:
            return -1
    kh = selection_hash(key.src, key.sport if s.port else 0, 0)
    for i in range(n):
        if available(&reals[i]):
            score = reals[i].weight / -log(((mix64(kh ^ s.ids[i]) >> 11) + 0.5) * (1.0 / 9007199254740992.0))
            if best < 0 or score > best_score:
                best, best_score = i, score
    return best


cdef class Rendezvous(Scheduler):
    """hrw: highest random weight (as GLB director); losing a real moves only that real's clients."""
    name = "hrw"
    flags = ("hrw-port",)
    options = ("flags",)
    cdef HrwState state

    def __init__(self, flags=()):
        self.state.port = "hrw-port" in flags_of(type(self), flags)

    def __dealloc__(self):
        free(self.state.ids)

    cdef SchedulerHook hook(self):
        return make_hook(hrw_pick, hrw_changed, &self.state)
