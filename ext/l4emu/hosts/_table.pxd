# A keyed open-addressing index over a slab of fixed-size records, for the hosts' tables
# (connections, clients' link headers, re-stamped sequence numbers): a record starts with its key
# (a multiple of 8 bytes) followed by the key's 32-bit hash; the index holds record numbers + 1.
# Lookups are one probe run (load at most one half); deletion shifts the run back (no tombstones),
# so a table that churns forever never fills with dead slots. SipHash under a secret, as conntrack.
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcmp, memcpy, memset
from l4emu.datapath._siphash cimport siphash13

cdef extern from *:
    void __builtin_prefetch(const void* addr) noexcept nogil

cdef enum:
    MIN_SLOTS = 64
    MIN_RECORDS = 64
    MAX_KEY_WORDS = 8

ctypedef struct Slab:
    uint8_t* records        # stride bytes each; a free record's first 4 bytes link the free list
    uint32_t stride
    uint32_t key_words      # the key is the record's first key_words * 8 bytes; its hash follows
    uint32_t capacity
    uint32_t top            # records ever handed out (the rest of the slab is untouched)
    uint32_t free_head      # record + 1; 0: none free
    uint32_t used
    uint32_t* slots
    uint32_t mask           # slots - 1
    uint64_t last_mask      # the bits of the key's last word that are hashed (a caller may then hash
    #                         a key ahead of time from the part it knows)
    uint64_t k0, k1


cdef inline int slab_init(Slab* s, uint32_t stride, uint32_t key_words, uint64_t k0, uint64_t k1) noexcept nogil:
    memset(s, 0, sizeof(Slab))
    s.stride = stride
    s.key_words = key_words
    s.k0 = k0
    s.k1 = k1
    s.last_mask = ~(<uint64_t>0)
    s.slots = <uint32_t*>calloc(MIN_SLOTS, sizeof(uint32_t))
    s.mask = MIN_SLOTS - 1
    return 0 if s.slots != NULL else -1


cdef inline void slab_free(Slab* s) noexcept nogil:
    free(s.records)
    free(s.slots)
    s.records = NULL
    s.slots = NULL


cdef inline uint8_t* rec(Slab* s, uint32_t i) noexcept nogil:
    return s.records + <size_t>i * s.stride


cdef inline uint32_t* rec_hash(Slab* s, uint32_t i) noexcept nogil:
    return <uint32_t*>(s.records + <size_t>i * s.stride + s.key_words * 8)


cdef inline uint32_t key_hash32(Slab* s, const void* key) noexcept nogil:
    cdef uint64_t w[MAX_KEY_WORDS]
    if s.last_mask == ~(<uint64_t>0):
        return <uint32_t>siphash13(s.k0, s.k1, <const uint64_t*>key, s.key_words)
    memcpy(w, key, s.key_words * 8)
    w[s.key_words - 1] &= s.last_mask
    return <uint32_t>siphash13(s.k0, s.k1, w, s.key_words)


cdef inline void prefetch_slot(Slab* s, uint32_t h) noexcept nogil:
    __builtin_prefetch(&s.slots[h & s.mask])


cdef inline void prefetch_record(Slab* s, uint32_t h) noexcept nogil:
    """The record the key's home slot names (a guess: it may sit further on), after prefetch_slot."""
    cdef uint32_t r = s.slots[h & s.mask]
    if r:
        __builtin_prefetch(rec(s, r - 1))


cdef inline int slab_find_hashed(Slab* s, const void* key, uint32_t h) noexcept nogil:
    """The record holding `key` (whose hash is h), or -1."""
    cdef uint32_t i = h & s.mask, r
    while True:
        r = s.slots[i]
        if r == 0:
            return -1
        if rec_hash(s, r - 1)[0] == h and memcmp(rec(s, r - 1), key, s.key_words * 8) == 0:
            return <int>(r - 1)
        i = (i + 1) & s.mask


cdef inline int slab_find(Slab* s, const void* key) noexcept nogil:
    return slab_find_hashed(s, key, key_hash32(s, key))


cdef inline void _place(Slab* s, uint32_t r, uint32_t h) noexcept nogil:
    cdef uint32_t i = h & s.mask
    while s.slots[i]:
        i = (i + 1) & s.mask
    s.slots[i] = r + 1


cdef inline int _grow_slots(Slab* s) noexcept nogil:
    cdef uint32_t n = (s.mask + 1) * 2, k, r
    cdef uint32_t* old = s.slots
    cdef uint32_t old_n = s.mask + 1
    s.slots = <uint32_t*>calloc(n, sizeof(uint32_t))
    if s.slots == NULL:
        s.slots = old
        return -1
    s.mask = n - 1
    for k in range(old_n):
        r = old[k]
        if r:
            _place(s, r - 1, rec_hash(s, r - 1)[0])
    free(old)
    return 0


cdef inline int slab_add(Slab* s, const void* key) noexcept nogil:
    """A new record for `key` (not present), zeroed after the key and hash; -1 out of memory."""
    return slab_add_hashed(s, key, key_hash32(s, key))


cdef inline int slab_add_hashed(Slab* s, const void* key, uint32_t h) noexcept nogil:
    """slab_add for a key whose hash (key_hash32) the caller has already."""
    cdef uint32_t r, n
    cdef uint8_t* grown
    if (s.used + 1) * 2 > s.mask + 1 and _grow_slots(s) < 0:
        return -1
    if s.free_head:
        r = s.free_head - 1
        memcpy(&s.free_head, rec(s, r), sizeof(uint32_t))
    else:
        if s.top == s.capacity:
            n = s.capacity * 2 if s.capacity else MIN_RECORDS
            grown = <uint8_t*>realloc(s.records, <size_t>n * s.stride)
            if grown == NULL:
                return -1
            s.records = grown
            s.capacity = n
        r = s.top
        s.top += 1
    memset(rec(s, r), 0, s.stride)
    memcpy(rec(s, r), key, s.key_words * 8)
    rec_hash(s, r)[0] = h
    _place(s, r, h)
    s.used += 1
    return <int>r


cdef inline void slab_remove(Slab* s, uint32_t r) noexcept nogil:
    """Forget record r: its slot, with the run behind it shifted back, and the record to the free list."""
    cdef uint32_t i = rec_hash(s, r)[0] & s.mask, j, home, q
    while s.slots[i] != r + 1:
        i = (i + 1) & s.mask
    j = i
    while True:
        s.slots[i] = 0
        while True:
            j = (j + 1) & s.mask
            q = s.slots[j]
            if q == 0:
                memcpy(rec(s, r), &s.free_head, sizeof(uint32_t))
                s.free_head = r + 1
                s.used -= 1
                return
            home = rec_hash(s, q - 1)[0] & s.mask
            # q may fill the hole at i unless its home lies cyclically in (i, j]
            if (j > i and (home <= i or home > j)) or (j < i and home <= i and home > j):
                break
        s.slots[i] = q
        i = j


cdef inline size_t slab_bytes(Slab* s) noexcept nogil:
    return <size_t>s.capacity * s.stride + (<size_t>s.mask + 1) * sizeof(uint32_t)
