# Internet checksum helpers: RFC 1071 full sums and RFC 1624 incremental updates.
from libc.stdint cimport uint8_t, uint16_t, uint32_t


cdef inline uint32_t load16(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 8) | p[1]


cdef inline void store16(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 8)
    p[1] = <uint8_t>v


cdef inline uint16_t fold(uint32_t s) noexcept nogil:
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return <uint16_t>s


cdef inline uint32_t diff_words(uint32_t acc, const uint8_t* old, const uint8_t* new, int nbytes) noexcept nogil:
    """Add (~old + new) word by word: the change that RFC 1624 eqn. 3 folds into a checksum."""
    cdef int k
    for k in range(0, nbytes, 2):
        acc += (~load16(old + k) & 0xFFFF) + load16(new + k)
    return acc


cdef inline void apply_diff(uint8_t* field, uint32_t diff) noexcept nogil:
    """HC' = ~(~HC + ~m + m') (RFC 1624 eqn. 3): a good checksum stays good, a bad one stays bad."""
    store16(field, ~fold((~load16(field) & 0xFFFF) + diff) & 0xFFFF)


cdef inline uint32_t sum_bytes(uint32_t acc, const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """RFC 1071 sum of n bytes (odd tail padded with zero)."""
    cdef Py_ssize_t k = 0
    while k + 1 < n:
        acc += load16(p + k)
        if acc > 0x7FFFFFFF:
            acc = fold(acc)
        k += 2
    if k < n:
        acc += <uint32_t>p[k] << 8
    return acc
