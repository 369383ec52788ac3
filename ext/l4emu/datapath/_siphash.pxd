# SipHash-1-3 over 64-bit words: the connection table's keyed hash (a per-process secret, so
# nobody can aim collisions at it, as Linux conntrack does).
from libc.stdint cimport uint64_t


cdef inline uint64_t rotl(uint64_t x, int b) noexcept nogil:
    return (x << b) | (x >> (64 - b))


cdef inline void sipround(uint64_t* v) noexcept nogil:
    # The reference implementation's layout, one half-round a line (hence the semicolons).
    v[0] += v[1]; v[1] = rotl(v[1], 13); v[1] ^= v[0]; v[0] = rotl(v[0], 32)  # no-cython-lint: E702
    v[2] += v[3]; v[3] = rotl(v[3], 16); v[3] ^= v[2]  # no-cython-lint: E702
    v[0] += v[3]; v[3] = rotl(v[3], 21); v[3] ^= v[0]  # no-cython-lint: E702
    v[2] += v[1]; v[1] = rotl(v[1], 17); v[1] ^= v[2]; v[2] = rotl(v[2], 32)  # no-cython-lint: E702


cdef inline uint64_t siphash13(uint64_t k0, uint64_t k1, const uint64_t* words, int n) noexcept nogil:
    cdef uint64_t v[4]
    cdef int i
    v[0] = k0 ^ 0x736f6d6570736575ULL
    v[1] = k1 ^ 0x646f72616e646f6dULL
    v[2] = k0 ^ 0x6c7967656e657261ULL
    v[3] = k1 ^ 0x7465646279746573ULL
    for i in range(n):
        v[3] ^= words[i]
        sipround(v)
        v[0] ^= words[i]
    cdef uint64_t last = (<uint64_t>(n * 8)) << 56
    v[3] ^= last
    sipround(v)
    v[0] ^= last
    v[2] ^= 0xff
    sipround(v)
    sipround(v)
    sipround(v)
    return v[0] ^ v[1] ^ v[2] ^ v[3]
