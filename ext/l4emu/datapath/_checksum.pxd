# Internet checksum helpers: RFC 1071 full sums and RFC 1624 incremental updates.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy


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


cdef inline uint64_t diff_native(uint64_t acc, const uint8_t* old, const uint8_t* new, int nbytes) noexcept nogil:
    """diff_words four bytes at a time, read in the machine's byte order (RFC 1071 2(B)): ~old + new
    summed as 32-bit words, for apply_diff_native to fold into a checksum field read the same way.
    No byte is turned round: a sum taken in either order, folded and stored in that order, gives the
    same bytes. nbytes: a multiple of 4; give a constant and the loop unrolls into plain loads."""
    cdef uint32_t o, n
    cdef int k
    for k in range(0, nbytes, 4):
        memcpy(&o, old + k, 4)
        memcpy(&n, new + k, 4)
        acc += <uint32_t>~o + <uint64_t>n
    return acc


cdef inline void apply_diff_native(uint8_t* field, uint64_t diff) noexcept nogil:
    """apply_diff for a diff_native sum: the field is read and written in the machine's order too. The
    bytes written are apply_diff's: the sums agree modulo 0xFFFF, and both are zero only when every
    old word was 0xFFFF, every new one 0 and the checksum 0xFFFF, so the fold picks the same of 0 and
    0xFFFF. diff: below 2**63."""
    cdef uint16_t hc
    cdef uint64_t s
    memcpy(&hc, field, 2)
    s = <uint64_t>(~hc & 0xFFFF) + diff
    s = (s & 0xFFFFFFFFULL) + (s >> 32)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    hc = <uint16_t>~s
    memcpy(field, &hc, 2)


cdef extern from *:
    """
    #define L4EMU_LITTLE_ENDIAN (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
    """
    bint L4EMU_LITTLE_ENDIAN


cdef inline uint32_t sum_bytes(uint32_t acc, const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """RFC 1071 sum of n bytes (odd tail padded with zero) added to acc. Four bytes at a time in the
    machine's order, byte-swapped once at the end (RFC 1071 2(B)): the same one's complement sum
    as two bytes at a time, so equal modulo 0xFFFF and zero only when that is, and fold() of it,
    hence every checksum, is the same."""
    cdef uint64_t t = 0, s
    cdef uint32_t w
    cdef Py_ssize_t k = 0
    while k + 4 <= n:
        memcpy(&w, p + k, 4)
        t += w
        k += 4
    t = (t & 0xFFFFFFFFULL) + (t >> 32)
    t = (t & 0xFFFFFFFFULL) + (t >> 32)
    t = (t & 0xFFFF) + (t >> 16)
    t = (t & 0xFFFF) + (t >> 16)
    t = (t & 0xFFFF) + (t >> 16)
    if L4EMU_LITTLE_ENDIAN:
        t = ((t & 0xFF) << 8) | (t >> 8)
    if k + 1 < n:
        t += load16(p + k)
        k += 2
    if k < n:
        t += <uint32_t>p[k] << 8
    s = <uint64_t>acc + t                   # below 2**33: folded to 16 bits, so callers may add to it
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return <uint32_t>s
