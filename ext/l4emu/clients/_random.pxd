# A seeded generator and the workload's distributions in C: xoshiro256** (Blackman and Vigna), seeded
# by splitmix64 from one 64-bit number the control plane draws from random.Random(seed), so a seed
# fixes every draw. The Python twin of the distributions is l4emu.workload.Distribution.
from libc.math cimport cos, exp, log, sqrt, M_PI
from libc.stdint cimport uint64_t

cdef enum DistKind:
    DIST_FIXED = 0
    DIST_EXPONENTIAL = 1
    DIST_LOGNORMAL = 2
    DIST_EMPIRICAL = 3

ctypedef struct Rng:
    uint64_t s[4]

ctypedef struct Dist:
    int kind
    double mean
    double mu           # lognormal: mean of the logarithm, log(mean) - sigma^2 / 2
    double sigma        # lognormal: standard deviation of the logarithm
    const double* values    # empirical: drawn uniformly (owned by the caller)
    Py_ssize_t n_values


cdef inline uint64_t splitmix64(uint64_t* x) noexcept nogil:
    x[0] += 0x9E3779B97F4A7C15ULL
    cdef uint64_t z = x[0]
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline void rng_seed(Rng* r, uint64_t seed) noexcept nogil:
    cdef int k
    for k in range(4):
        r.s[k] = splitmix64(&seed)


cdef inline uint64_t rotl(uint64_t x, int k) noexcept nogil:
    return (x << k) | (x >> (64 - k))


cdef inline uint64_t rng_next(Rng* r) noexcept nogil:
    cdef uint64_t result = rotl(r.s[1] * 5, 7) * 9
    cdef uint64_t t = r.s[1] << 17
    r.s[2] ^= r.s[0]
    r.s[3] ^= r.s[1]
    r.s[1] ^= r.s[2]
    r.s[0] ^= r.s[3]
    r.s[2] ^= t
    r.s[3] = rotl(r.s[3], 45)
    return result


cdef inline double rng_uniform(Rng* r) noexcept nogil:
    """In [0, 1): the top 53 bits as a double."""
    return <double>(rng_next(r) >> 11) * (1.0 / 9007199254740992.0)


cdef inline double rng_below(Rng* r, double n) noexcept nogil:
    """A whole number in [0, n) as a double (n well below 2^53)."""
    cdef double k = <double>(<uint64_t>(rng_uniform(r) * n))
    return k if k < n else n - 1


cdef inline double rng_exponential(Rng* r, double mean) noexcept nogil:
    return -mean * log(1.0 - rng_uniform(r))


cdef inline double rng_normal(Rng* r) noexcept nogil:
    """Box-Muller, one of the pair: two uniforms a draw keeps the stream simple to reason about."""
    cdef double u = 1.0 - rng_uniform(r)
    return sqrt(-2.0 * log(u)) * cos(2.0 * M_PI * rng_uniform(r))


cdef inline double dist_sample(const Dist* d, Rng* r) noexcept nogil:
    if d.kind == DIST_EXPONENTIAL:
        return rng_exponential(r, d.mean)
    if d.kind == DIST_LOGNORMAL:
        return exp(d.mu + d.sigma * rng_normal(r))
    if d.kind == DIST_EMPIRICAL and d.n_values > 0:
        return d.values[<Py_ssize_t>rng_below(r, <double>d.n_values)]
    return d.mean
