# Linux's IP defragmentation (IPVS sees whole datagrams): per-datagram queues, bounded by memory and
# by time. See _reasm.pyx.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset
from l4emu.datapath._types cimport PacketInfo

cdef enum ReasmStatus:
    RQ_QUEUED = 0       # kept, the datagram is not whole yet
    RQ_COMPLETE = 1     # the datagram is whole: build() writes it
    RQ_DUPLICATE = 2    # wholly inside what the queue holds: dropped, the queue kept (IPFRAG_DUP)
    RQ_OVERLAP = 3      # overlaps what the queue holds: the whole datagram dropped (RFC 5722, IPFRAG_OVERLAP)
    RQ_INVALID = 4      # inconsistent with the queue (end, length): the whole datagram dropped
    RQ_BAD = 5          # a malformed fragment alone is dropped (IPv6: not a multiple of 8, past 65535)
    RQ_NO_ROOM = 6      # memory over ipfrag_high_thresh: dropped (inet_frag_find returns NULL)
    RQ_TINY = 7         # a first fragment that splits the TCP/UDP header (RFC 1858, RFC 8200 4.5)
    RQ_TRUNCATED = 8    # the capture cut the fragment short: its bytes are not all there
    RQ_FAILED = 9       # whole, but longer than 65535 bytes or with ECN codepoints that may not mix

cdef enum:
    REASM_MAX_PIECES = 8192     # a datagram of 65535 bytes in 8-byte pieces (and the sizes on the way out)

ctypedef struct ReasmFrag:      # one fragment, sorted by offset in its queue
    uint32_t offset
    uint32_t length
    uint8_t* data               # its payload, in frame
    uint8_t* frame              # the whole frame as it came (owned): passed on as it was if no service takes it
    uint32_t caplen
    uint32_t origlen
    uint32_t seq                # its place in arrival order among the queue's fragments

ctypedef struct ReasmRun:       # inet_fragment.c's "runs": fragments appended end to end at the tail
    uint32_t offset
    uint32_t end

ctypedef struct ReasmQueue:
    ReasmQueue* hnext           # hash chain
    ReasmQueue* older           # the timer list: creation order, which is expiry order (one timeout)
    ReasmQueue* newer
    uint64_t expires_ns
    uint8_t src[16]
    uint8_t dst[16]
    uint32_t id
    uint8_t proto
    uint8_t family
    uint8_t flags               # FIRST_IN, LAST_IN
    uint8_t ecn                 # the IPFRAG_ECN_* bits of every fragment so far
    uint32_t len                # the datagram's payload length, as far as known
    uint32_t meat               # payload bytes held
    uint32_t max_size           # the largest fragment (IP header and payload): IPCB frag_max_size
    uint32_t max_df_size        # ... of those with DF (IPv4)
    uint64_t mem                # what this queue counts against ipfrag_high_thresh
    uint8_t* head               # the first fragment's bytes up to its payload (link, IP, IPv6 extensions)
    uint32_t head_len
    uint32_t l3                 # where the IP header starts in head
    uint16_t linktype
    ReasmFrag* frags
    uint32_t n_frags, cap_frags
    ReasmRun* runs
    uint32_t n_runs, cap_runs


cdef class Reassembler:
    cdef ReasmQueue** buckets
    cdef uint32_t mask
    cdef ReasmQueue* oldest
    cdef ReasmQueue* newest
    cdef uint64_t k0, k1
    cdef readonly uint64_t mem, high_thresh, low_thresh, timeout_ns
    cdef readonly uint64_t queues, peak_mem
    # Linux's SNMP counters (ReasmReqds, ReasmOKs, ReasmFails, ReasmTimeout, ReasmOverlaps), and ours
    cdef readonly uint64_t reqds, oks, fails, timeouts, overlaps, duplicates, no_room, evicted
    cdef readonly uint64_t queued           # fragments that waited: written within their datagram, or not at all
    # the datagram build() wrote last: how it came, for the way out (ip_do_fragment / ip6_fragment)
    cdef uint32_t sizes[REASM_MAX_PIECES]   # each fragment's payload, in order
    cdef uint32_t n_sizes
    cdef readonly uint32_t max_size         # the largest fragment, IP header included
    cdef uint32_t unfrag                    # l3-relative end of the unfragmentable part (IPv4: the header)
    cdef uint32_t prevhdr                   # IPv6: l3-relative offset of the next-header byte before it
    cdef uint8_t upper                      # IPv6: the protocol after the fragment header
    cdef uint32_t id
    cdef ReasmQueue* done                   # the queue add() completed, for size() and build()
    cdef ReasmQueue* built                  # the queue build() wrote, until release(): its original fragments
    cdef uint32_t* arrival                  # built's fragments in arrival order (indices into its frags)
    cdef uint32_t cap_arrival

    cdef int add(self, const uint8_t* p, const PacketInfo* info, uint32_t origlen, uint16_t linktype,
                 uint64_t now) noexcept nogil
    cdef uint32_t size(self) noexcept nogil
    cdef void build(self, uint8_t* out) noexcept nogil
    cdef uint32_t originals(self) noexcept nogil
    cdef const uint8_t* original(self, uint32_t k, uint32_t* caplen, uint32_t* origlen) noexcept nogil
    cdef void release(self) noexcept nogil
    cdef void expire(self, uint64_t now) noexcept nogil
    cdef ReasmQueue* find(self, const PacketInfo* info, uint64_t h) noexcept nogil
    cdef ReasmQueue* create(self, const PacketInfo* info, uint64_t h, uint64_t now) noexcept nogil
    cdef void kill(self, ReasmQueue* q) noexcept nogil
    cdef void detach(self, ReasmQueue* q) noexcept nogil
    cdef void destroy(self, ReasmQueue* q) noexcept nogil
    cdef int discard(self, ReasmQueue* q, int status) noexcept nogil
    cdef uint64_t hash(self, const uint8_t* src, const uint8_t* dst, uint32_t id, uint8_t proto,
                       uint8_t family) noexcept nogil
    cdef int insert(self, ReasmQueue* q, const uint8_t* p, const PacketInfo* info, uint32_t origlen,
                    uint32_t offset, uint32_t end) noexcept nogil


cdef enum:
    REASM_FRAG_HEADER_LEN = 8   # the IPv6 fragment header


cdef inline void ip_options_fragment(uint8_t* ip, uint32_t hlen) noexcept nogil:
    """Linux ip_options_fragment: past the first fragment, the IPv4 options not marked "copied" become NOPs."""
    cdef uint32_t off = 20, olen
    while off < hlen:
        if ip[off] == 0:                            # end of options
            return
        if ip[off] == 1:                            # NOP
            off += 1
            continue
        if off + 1 >= hlen:
            return
        olen = ip[off + 1]
        if olen < 2 or off + olen > hlen:
            return
        if not (ip[off] & 0x80):
            memset(ip + off, 1, olen)
        off += olen


cdef inline void write_ipv6_fragment(uint8_t* q, uint32_t l3, uint32_t unfrag, uint32_t prevhdr, uint8_t upper,
                                     uint32_t ident, uint32_t offset, uint32_t length, bint more) noexcept nogil:
    """Make the IPv6 packet at q + l3 (its unfragmentable part `unfrag` bytes long) one fragment: the
    fragment header after the unfragmentable part, `length` payload bytes at `offset` after it."""
    cdef uint8_t* f = q + l3 + unfrag
    q[l3 + prevhdr] = 44                            # IPPROTO_FRAGMENT
    f[0] = upper
    f[1] = 0
    f[2] = <uint8_t>(offset >> 8)
    f[3] = <uint8_t>((offset & 0xF8) | (1 if more else 0))
    f[4] = <uint8_t>(ident >> 24)
    f[5] = <uint8_t>(ident >> 16)
    f[6] = <uint8_t>(ident >> 8)
    f[7] = <uint8_t>ident
    length += unfrag - 40 + REASM_FRAG_HEADER_LEN
    q[l3 + 4] = <uint8_t>(length >> 8)
    q[l3 + 5] = <uint8_t>length
