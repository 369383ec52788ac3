"""Linux's IP defragmentation, through which IPVS sees whole datagrams (nf_defrag_ipv4, nf_defrag_ipv6).

As net/ipv4/ip_fragment.c (ip_frag_queue, ip_frag_reasm), net/ipv6/reassembly.c (ip6_frag_queue,
ip6_frag_reasm) and net/ipv4/inet_fragment.c (inet_frag_find, inet_frag_queue_insert) do it:

- one queue per datagram (source, destination, protocol, IP ID), made by the first of its fragments
  to come and forgotten ipfrag_time after that (30 s on the packet clock; its timer is never pushed
  back). All queues share one timeout, so a list in creation order is the timer queue: expiry pops
  its head, never scans. No ICMP "reassembly time exceeded" is sent: conntrack's defrag, which IPVS
  rides on, skips it (frag_expire_skip_icmp).
- memory: each fragment counts its captured bytes plus an sk_buff's overhead (SKB_TRUESIZE), each
  queue its own size, against ipfrag_high_thresh; past it every fragment is dropped (inet_frag_find
  returns NULL) until queues time out: a flood of fragments holds at most that much and touches no
  connection. With ipfrag_low_thresh set, the oldest queues are evicted down to it instead, as
  kernels before 4.17 did (inet_frag_evictor).
- overlaps (inet_frag_queue_insert): fragments appended end to end at the tail form a "run"; a
  fragment wholly inside one run is a duplicate (dropped, the queue kept), one that overlaps partly
  drops the whole datagram, IPv4 and IPv6 alike (RFC 5722 with erratum 3089).
- a last fragment that disagrees with the length already known, or a non-last one past a known end,
  or an empty one, drops the datagram; a non-last IPv4 fragment is cut to a multiple of 8 bytes, a
  non-last IPv6 one that is not is dropped alone, as is an IPv6 one ending past 65535.
- the datagram takes the first fragment's headers (IPv6: without the fragment header); IPv4 keeps DF
  only if the largest fragment had it; ECN is combined by ip_frag_ecn_table (RFC 3168 5.3: Not-ECT
  with ECT or CE drops the datagram); longer than 65535 bytes fails (out_oversize).
- an IPv6 "atomic" fragment (offset 0, no more) is a datagram of its own, whatever queue its ID
  names (RFC 6946).
- what Linux does not do but l4emu's fragment policies all do: a first fragment that splits the
  TCP/UDP header is dropped (RFC 1858; IPv6: RFC 8200 4.5).

build() keeps each fragment's size: a datagram leaves fragmented as it came (ip_do_fragment's fast
path over the frag_list) unless the way out needs smaller pieces.
"""
from libc.stdlib cimport calloc, malloc, realloc, free
from libc.string cimport memcpy, memmove, memcmp
from l4emu.datapath._types cimport *
from l4emu.datapath._wire cimport *
from l4emu.datapath._checksum cimport load16, store16, fold, sum_bytes
from l4emu.datapath._siphash cimport siphash13
from l4emu.datapath._fragments cimport first_fragment_has_ports

cdef enum:
    FIRST_IN = 1            # INET_FRAG_FIRST_IN
    LAST_IN = 2             # INET_FRAG_LAST_IN
    SKB_OVERHEAD = 576      # SKB_TRUESIZE(0) on x86-64 (struct sk_buff + skb_shared_info), per fragment
    QUEUE_SIZE = 256        # a queue's own bookkeeping (Linux: inet_frags.qsize, struct ipq)
    MAX_DATAGRAM = 65535    # IP_MAX_MTU, IPV6_MAXPLEN
    FRAG_HEADER_LEN = 8     # IPv6 fragment header
    IP4_MF_BIT = 0x2000
    IP4_DF_BIT = 0x4000
    # ip_frag_ecn(): one bit per ECN codepoint seen
    ECN_NOT_ECT = 1
    ECN_ECT_1 = 2
    ECN_ECT_0 = 4
    ECN_CE = 8
    INET_ECN_CE = 3
    ECN_DROP = 0xFF

cdef uint8_t ECN_TABLE[16]      # inet_fragment.c's ip_frag_ecn_table
for _k in range(16):
    ECN_TABLE[_k] = (ECN_DROP if _k & ECN_NOT_ECT and _k & (ECN_CE | ECN_ECT_0 | ECN_ECT_1) else
                     INET_ECN_CE if _k & ECN_CE and _k & (ECN_ECT_0 | ECN_ECT_1) else 0)


cdef inline uint8_t ecn_bit(const uint8_t* p, uint32_t l3, uint8_t family) noexcept nogil:
    return <uint8_t>(1 << ((p[l3 + 1] & 3) if family == 4 else ((p[l3 + 1] >> 4) & 3)))


cdef inline int grow(void** arr, uint32_t* cap, uint32_t need, size_t item) noexcept nogil:
    cdef uint32_t n = cap[0] * 2 if cap[0] else 4
    cdef void* a
    if need <= cap[0]:
        return 0
    while n < need:
        n *= 2
    a = realloc(arr[0], n * item)
    if a == NULL:
        return -1
    arr[0] = a
    cap[0] = n
    return 0


cdef class Reassembler:
    def __cinit__(self, bytes secret, uint64_t high_thresh=4194304, uint64_t low_thresh=0,
                  double timeout_s=30.0):
        """ipfrag_high_thresh, ipfrag_low_thresh (0: as kernels since 4.17, which no longer evict) and
        ipfrag_time; the hash is keyed with the switch's secret, as the connection table's."""
        cdef uint32_t n = 1024
        if len(secret) != 16:
            raise ValueError("the hash secret is 16 bytes")
        while n < high_thresh // (QUEUE_SIZE + SKB_OVERHEAD) and n < (1 << 20):
            n *= 2
        self.buckets = <ReasmQueue**>calloc(n, sizeof(ReasmQueue*))
        if self.buckets == NULL:
            raise MemoryError()
        self.mask = n - 1
        self.k0 = int.from_bytes(secret[:8], "little") ^ 0x7265617373656d62     # "reassemb": not the table's
        self.k1 = int.from_bytes(secret[8:], "little")
        self.high_thresh = high_thresh
        self.low_thresh = low_thresh
        self.timeout_ns = <uint64_t>(timeout_s * NS)

    def __dealloc__(self):
        if self.done != NULL:
            self.build(NULL)
        self.release()
        free(self.arrival)
        while self.oldest != NULL:
            self.kill(self.oldest)
        free(self.buckets)

    cdef ReasmQueue* find(self, const PacketInfo* info, uint64_t h) noexcept nogil:
        cdef ReasmQueue* q = self.buckets[h & self.mask]
        cdef size_t alen = 4 if info.key.family == 4 else 16
        while q != NULL:
            if (q.id == info.frag_id and q.proto == info.key.proto and q.family == info.key.family
                    and memcmp(q.src, info.key.src, alen) == 0 and memcmp(q.dst, info.key.dst, alen) == 0):
                return q
            q = q.hnext
        return NULL

    cdef ReasmQueue* create(self, const PacketInfo* info, uint64_t h, uint64_t now) noexcept nogil:
        cdef ReasmQueue* q = <ReasmQueue*>calloc(1, sizeof(ReasmQueue))
        if q == NULL:
            return NULL
        memcpy(q.src, info.key.src, 16)
        memcpy(q.dst, info.key.dst, 16)
        q.id = info.frag_id
        q.proto = info.key.proto
        q.family = info.key.family
        q.expires_ns = now + self.timeout_ns
        q.hnext = self.buckets[h & self.mask]
        self.buckets[h & self.mask] = q
        q.older = self.newest
        if self.newest != NULL:
            self.newest.newer = q
        else:
            self.oldest = q
        self.newest = q
        self.mem += QUEUE_SIZE
        self.queues += 1
        return q

    cdef void detach(self, ReasmQueue* q) noexcept nogil:
        """Out of the hash and the timer list (inet_frag_kill)."""
        cdef uint64_t h = self.hash(q.src, q.dst, q.id, q.proto, q.family)
        cdef ReasmQueue** at = &self.buckets[h & self.mask]
        while at[0] != NULL and at[0] != q:
            at = &at[0].hnext
        if at[0] == q:
            at[0] = q.hnext
        if q.older != NULL:
            q.older.newer = q.newer
        else:
            self.oldest = q.newer
        if q.newer != NULL:
            q.newer.older = q.older
        else:
            self.newest = q.older

    cdef void destroy(self, ReasmQueue* q) noexcept nogil:
        """Free a detached queue and give its memory back (inet_frag_destroy)."""
        cdef uint32_t k
        for k in range(q.n_frags):
            free(q.frags[k].frame)
        free(q.frags)
        free(q.runs)
        free(q.head)
        self.mem -= q.mem + QUEUE_SIZE
        self.queues -= 1
        free(q)

    cdef void kill(self, ReasmQueue* q) noexcept nogil:
        self.detach(q)
        self.destroy(q)

    cdef uint64_t hash(self, const uint8_t* src, const uint8_t* dst, uint32_t id, uint8_t proto,
                       uint8_t family) noexcept nogil:
        cdef uint64_t w[5]
        memcpy(w, src, 16)
        memcpy(&w[2], dst, 16)
        w[4] = (<uint64_t>id << 16) | (<uint64_t>proto << 8) | family
        return siphash13(self.k0, self.k1, w, 5)

    cdef void expire(self, uint64_t now) noexcept nogil:
        """Forget the datagrams older than ipfrag_time (ip_expire): the oldest first, no scan."""
        while self.oldest != NULL and self.oldest.expires_ns <= now:
            self.timeouts += 1
            self.fails += 1
            self.kill(self.oldest)

    cdef int insert(self, ReasmQueue* q, const uint8_t* p, const PacketInfo* info, uint32_t origlen,
                    uint32_t offset, uint32_t end) noexcept nogil:
        """inet_frag_queue_insert, on runs kept sorted in an array; then the fragment's frame, sorted by
        offset, its payload from info.l4 (the whole frame is kept: a datagram no service takes leaves
        as the fragments it came in)."""
        cdef uint32_t n = q.n_runs, lo = 0, hi, mid, at
        cdef ReasmRun* r
        cdef uint8_t* data
        if n and q.runs[n - 1].end < end:                   # the common case: at the tail
            if offset < q.runs[n - 1].end:
                return RQ_OVERLAP
            at = n if offset > q.runs[n - 1].end else n - 1
        elif n:                                             # in the middle: it may not touch any run
            hi = n
            while lo < hi:
                mid = (lo + hi) // 2
                r = &q.runs[mid]
                if end <= r.offset:
                    hi = mid
                elif offset >= r.end:
                    lo = mid + 1
                elif offset >= r.offset and end <= r.end:
                    return RQ_DUPLICATE
                else:
                    return RQ_OVERLAP
            at = lo
        else:
            at = 0
        data = <uint8_t*>malloc(info.caplen)
        if data == NULL or grow(<void**>&q.runs, &q.cap_runs, n + 1, sizeof(ReasmRun)) < 0 or grow(
                <void**>&q.frags, &q.cap_frags, q.n_frags + 1, sizeof(ReasmFrag)) < 0:
            free(data)
            return RQ_NO_ROOM
        memcpy(data, p, info.caplen)
        if at == n - 1 and n and q.runs[n - 1].end == offset:
            q.runs[n - 1].end = end                         # appended to the tail's run
        else:
            memmove(&q.runs[at + 1], &q.runs[at], (n - at) * sizeof(ReasmRun))
            q.runs[at].offset = offset
            q.runs[at].end = end
            q.n_runs += 1
        lo = 0                                              # fragments never overlap: sorted by offset
        hi = q.n_frags
        while lo < hi:
            mid = (lo + hi) // 2
            if q.frags[mid].offset < offset:
                lo = mid + 1
            else:
                hi = mid
        memmove(&q.frags[lo + 1], &q.frags[lo], (q.n_frags - lo) * sizeof(ReasmFrag))
        q.frags[lo].offset = offset
        q.frags[lo].length = end - offset
        q.frags[lo].frame = data
        q.frags[lo].data = data + info.l4
        q.frags[lo].caplen = info.caplen
        q.frags[lo].origlen = origlen
        q.frags[lo].seq = q.n_frags
        q.n_frags += 1
        return RQ_QUEUED

    cdef int add(self, const uint8_t* p, const PacketInfo* info, uint32_t origlen, uint16_t linktype,
                 uint64_t now) noexcept nogil:
        """One fragment (the parser said PARSE_FRAGMENT): ip_defrag / ip6_frag_queue. RQ_COMPLETE leaves
        the datagram for size() and build(), which the caller calls next."""
        cdef uint32_t offset = info.frag_offset, end, flen = info.end - info.l3, charge, headers
        cdef uint64_t h
        cdef ReasmQueue* q
        cdef int r
        self.reqds += 1
        self.expire(now)
        if info.end > info.caplen:
            return RQ_TRUNCATED
        end = offset + (info.end - info.l4)
        if info.key.family == 6 and (end > MAX_DATAGRAM or (info.more_frags and end & 7)):
            return RQ_BAD
        if offset == 0 and not first_fragment_has_ports(info):
            return RQ_TINY
        if self.low_thresh and self.mem > self.high_thresh:     # kernels before 4.17: evict the oldest
            while self.oldest != NULL and self.mem > self.low_thresh:
                self.evicted += 1
                self.fails += 1
                self.kill(self.oldest)
        if self.mem > self.high_thresh:
            self.no_room += 1
            self.fails += 1
            return RQ_NO_ROOM
        h = self.hash(info.key.src, info.key.dst, info.frag_id, info.key.proto, info.key.family)
        q = NULL if offset == 0 and not info.more_frags else self.find(info, h)   # RFC 6946: alone
        if q == NULL:
            q = self.create(info, h, now)
            if q == NULL:
                self.no_room += 1
                self.fails += 1
                return RQ_NO_ROOM
        if not info.more_frags:
            if end < q.len or (q.flags & LAST_IN and end != q.len):
                return self.discard(q, RQ_INVALID)
            q.flags |= LAST_IN
            q.len = end
        else:
            end &= ~(<uint32_t>7)                           # IPv4 (IPv6 was refused above)
            if end > q.len:
                if q.flags & LAST_IN:
                    return self.discard(q, RQ_INVALID)
                q.len = end
        if end <= offset:
            return self.discard(q, RQ_INVALID)
        r = self.insert(q, p, info, origlen, offset, end)
        if r == RQ_DUPLICATE:
            self.duplicates += 1
            return r
        if r == RQ_OVERLAP:
            self.overlaps += 1
            return self.discard(q, r)
        if r != RQ_QUEUED:
            return self.discard(q, r)
        if offset == 0:
            q.head = <uint8_t*>malloc(info.l4)
            if q.head == NULL:
                return self.discard(q, RQ_NO_ROOM)
            memcpy(q.head, p, info.l4)
            q.head_len = info.l4
            q.l3 = info.l3
            q.linktype = linktype
            q.flags |= FIRST_IN
        charge = info.caplen + SKB_OVERHEAD
        q.mem += charge
        self.mem += charge
        if self.mem > self.peak_mem:
            self.peak_mem = self.mem
        q.meat += end - offset
        q.ecn |= ecn_bit(p, info.l3, info.key.family)
        if flen > q.max_size:
            q.max_size = flen
        if info.key.family == 4 and load16(p + info.l3 + IP4_FRAG) & IP4_DF_BIT and flen > q.max_df_size:
            q.max_df_size = flen
        if q.flags != FIRST_IN | LAST_IN or q.meat != q.len:
            self.queued += 1
            return RQ_QUEUED
        headers = q.head_len - q.l3 - (0 if q.family == 4 else IP6_HEADER_LEN + FRAG_HEADER_LEN)
        if ECN_TABLE[q.ecn] == ECN_DROP or headers + q.len > MAX_DATAGRAM:        # out_oversize
            return self.discard(q, RQ_FAILED)
        self.detach(q)
        self.done = q
        self.oks += 1
        return RQ_COMPLETE

    cdef int discard(self, ReasmQueue* q, int status) noexcept nogil:
        """The whole datagram goes (ip_frag_queue's discard_qp)."""
        self.fails += 1
        self.kill(q)
        return status

    cdef uint32_t size(self) noexcept nogil:
        """The whole datagram's bytes, link header included (after RQ_COMPLETE)."""
        cdef ReasmQueue* q = self.done
        return q.head_len - (FRAG_HEADER_LEN if q.family == 6 else 0) + q.len

    cdef void build(self, uint8_t* out) noexcept nogil:
        """Write the datagram add() completed to out (size() bytes; NULL: just let it go), and keep how
        it came in for the way out, and its fragments as they came (original()) until release()."""
        cdef ReasmQueue* q = self.done
        cdef uint32_t l3 = q.l3, unfrag = q.head_len - (FRAG_HEADER_LEN if q.family == 6 else 0)
        cdef uint32_t k, off, prev, hlen
        cdef uint8_t nh
        self.done = NULL
        if out != NULL:
            memcpy(out, q.head, unfrag)
            for k in range(q.n_frags):
                memcpy(out + unfrag + q.frags[k].offset, q.frags[k].data, q.frags[k].length)
            self.n_sizes = min(q.n_frags, <uint32_t>REASM_MAX_PIECES)
            for k in range(self.n_sizes):
                self.sizes[k] = q.frags[k].length
            self.max_size = q.max_size
            self.unfrag = unfrag - l3
            self.id = q.id
            if q.family == 4:
                store16(out + l3 + IP4_TOTAL_LEN, unfrag - l3 + q.len)
                store16(out + l3 + IP4_FRAG, IP4_DF_BIT if q.max_df_size == q.max_size else 0)
                out[l3 + 1] |= ECN_TABLE[q.ecn]
                store16(out + l3 + IP4_CSUM, 0)
                store16(out + l3 + IP4_CSUM, ~fold(sum_bytes(0, out + l3, unfrag - l3)) & 0xFFFF)
            else:
                prev = l3 + IP6_NEXT                        # the next-header byte that named the fragment header
                nh = out[prev]
                off = l3 + IP6_HEADER_LEN
                while nh != IPPROTO_FRAGMENT and off < unfrag:     # the parser checked these headers
                    hlen = (out[off + 1] + 2) * 4 if nh == IPPROTO_AH else (out[off + 1] + 1) * 8
                    prev = off
                    nh = out[off]
                    off += hlen
                self.prevhdr = prev - l3
                self.upper = q.head[unfrag]                 # the fragment header's next header
                out[prev] = self.upper
                store16(out + l3 + IP6_PAYLOAD_LEN, unfrag - l3 - IP6_HEADER_LEN + q.len)
                out[l3 + 1] |= ECN_TABLE[q.ecn] << 4
            if grow(<void**>&self.arrival, &self.cap_arrival, q.n_frags, sizeof(uint32_t)) == 0:
                for k in range(q.n_frags):
                    self.arrival[q.frags[k].seq] = k
                self.release()
                self.built = q
                return
        self.destroy(q)

    cdef uint32_t originals(self) noexcept nogil:
        """How many fragments the datagram build() wrote came in (0: none kept, memory ran out)."""
        return self.built.n_frags if self.built != NULL else 0

    cdef const uint8_t* original(self, uint32_t k, uint32_t* caplen, uint32_t* origlen) noexcept nogil:
        """The k-th fragment of the built datagram in the order they came, as it came (k < originals())."""
        cdef ReasmFrag* f = &self.built.frags[self.arrival[k]]
        caplen[0] = f.caplen
        origlen[0] = f.origlen
        return f.frame

    cdef void release(self) noexcept nogil:
        """Let the built datagram's fragments go."""
        if self.built != NULL:
            self.destroy(self.built)
            self.built = NULL

    # ---- for tests and the control plane ----------------------------------------------------------
    def advance(self, uint64_t now_ns):
        self.expire(now_ns)

    def counters(self):
        """Linux's Reasm* SNMP counters and the memory held."""
        return {"reasm_reqds": self.reqds, "reasm_oks": self.oks, "reasm_fails": self.fails,
                "reasm_timeout": self.timeouts, "reasm_overlaps": self.overlaps,
                "reasm_duplicates": self.duplicates, "reasm_over_memory": self.no_room,
                "reasm_evicted": self.evicted, "reasm_fragments_queued": self.queued,
                "reasm_queues": self.queues, "reasm_memory": self.mem, "reasm_peak_memory": self.peak_mem}
