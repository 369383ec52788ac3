# Python's random.Random in C for one use: getrandbits(32), the emulated hosts' initial sequence
# numbers. MT19937 (Matsumoto and Nishimura) as CPython's _randommodule.c runs it, started from a
# Random's getstate(), so every draw is the one the Python object would have made, with no Python
# object per connection.
from libc.stdint cimport uint32_t

cdef enum:
    MT_N = 624
    MT_M = 397

ctypedef struct MT:
    uint32_t state[MT_N]
    uint32_t index


cdef inline int mt_from_random(MT* mt, rng) except -1:
    """The generator state of a random.Random (version 3, as getstate() gives it)."""
    cdef int k
    version, internal, _ = rng.getstate()
    if version != 3 or len(internal) != MT_N + 1:
        raise ValueError("a random.Random of state version 3 (Mersenne Twister) is needed")
    for k in range(MT_N):
        mt.state[k] = internal[k]
    mt.index = internal[MT_N]
    return 0


cdef inline uint32_t mt_next32(MT* mt) noexcept nogil:
    """getrandbits(32): CPython's genrand_uint32."""
    cdef uint32_t y, k
    cdef uint32_t* s = mt.state
    if mt.index >= MT_N:
        for k in range(MT_N):
            y = (s[k] & 0x80000000u) | (s[(k + 1) % MT_N] & 0x7FFFFFFFu)
            s[k] = s[(k + MT_M) % MT_N] ^ (y >> 1) ^ (0x9908B0DFu if y & 1 else 0)
        mt.index = 0
    y = s[mt.index]
    mt.index += 1
    y ^= y >> 11
    y ^= (y << 7) & 0x9D2C5680u
    y ^= (y << 15) & 0xEFC60000u
    y ^= y >> 18
    return y
