# Inline helpers shared by the built-in schedulers: loads compared as IPVS does, a seeded PRNG,
# and fixed-seed hashes (public constants on purpose: every instance must map a key the same way,
# unlike the connection table's keyed secret).
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from l4emu.datapath._types cimport Real
from l4emu.datapath._siphash cimport siphash13
from l4emu.schedulers._core cimport SchedulerHook, available, changed_fn, pick_fn


cdef inline SchedulerHook make_hook(pick_fn pick, changed_fn changed, void* state) noexcept:
    cdef SchedulerHook h
    h.pick = pick
    h.ended = NULL
    h.changed = changed
    h.state = state
    return h


cdef inline uint64_t conn_overhead(const Real* r) noexcept nogil:
    """IPVS's ip_vs_dest_conn_overhead: an active connection costs 256 inactive ones."""
    return (<uint64_t>r.active << 8) + r.inactive


cdef inline bint lighter(uint64_t load_a, int32_t weight_a, uint64_t load_b, int32_t weight_b) noexcept nogil:
    """load_a/weight_a < load_b/weight_b, by cross-multiplication as IPVS does (no division)."""
    return load_a * <uint64_t>weight_b < load_b * <uint64_t>weight_a


cdef inline int32_t least_weighted(const Real* reals, uint32_t n, uint64_t active_cost) noexcept nogil:
    """The available real with the least (active*cost + inactive)/weight; the first on a tie."""
    cdef int32_t best = -1
    cdef uint64_t best_load = 0, load
    cdef uint32_t i
    for i in range(n):
        if not available(&reals[i]):
            continue
        load = <uint64_t>reals[i].active * active_cost + reals[i].inactive
        if best < 0 or lighter(load, reals[i].weight, best_load, reals[best].weight):
            best, best_load = i, load
    return best


cdef inline uint64_t mix64(uint64_t z) noexcept nogil:
    """SplitMix64's finalizer: spreads every input bit over the whole word."""
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline uint64_t splitmix64(uint64_t* s) noexcept nogil:
    """The next number of a seeded SplitMix64 stream (Steele et al.): small state, good mixing."""
    s[0] += 0x9E3779B97F4A7C15ULL
    return mix64(s[0])


cdef inline uint64_t below(uint64_t* s, uint64_t bound) noexcept nogil:
    """A draw in [0, bound) (bound < 2**32), by Lemire's multiply-shift."""
    return ((splitmix64(s) >> 32) * bound) >> 32


cdef inline uint64_t load64le(const uint8_t* p) noexcept nogil:
    """Eight bytes as a little-endian word, whatever the host: hashes agree across machines."""
    cdef uint64_t w = 0
    cdef int k
    for k in range(7, -1, -1):
        w = (w << 8) | p[k]
    return w


cdef inline uint64_t selection_hash(const uint8_t* addr, uint16_t port, uint32_t salt) noexcept nogil:
    """Fixed-seed SipHash of a 16-byte address, a port and a salt: the same on every instance."""
    cdef uint64_t words[3]
    words[0] = load64le(addr)
    words[1] = load64le(addr + 8)
    words[2] = (<uint64_t>salt << 16) | port
    return siphash13(0x9E3779B97F4A7C15ULL, 0xC2B2AE3D27D4EB4FULL, words, 3)   # fixed key, as IPVS mh


cdef inline uint32_t fold32(const uint8_t* addr, uint8_t family) noexcept nogil:
    """IPVS's address fold: the IPv4 address, or the XOR of an IPv6 address's four words, host order."""
    cdef uint32_t f = 0
    cdef int k, words = 1 if family == 4 else 4
    for k in range(words):
        f ^= (<uint32_t>addr[4 * k] << 24) | (<uint32_t>addr[4 * k + 1] << 16) | \
             (<uint32_t>addr[4 * k + 2] << 8) | addr[4 * k + 3]
    return f


cdef inline uint32_t gcd32(uint32_t a, uint32_t b) noexcept nogil:
    while b:
        a, b = b, a % b
    return a
