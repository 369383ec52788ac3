"""Connection-table storage: flow records, a two-key open-addressing index, timers, eviction order.

Each flow is findable by its forward key (client -> VIP) and its reply key (real -> client): two
index slots point at one record, so a reply is translated with one lookup (Click's IPRewriter).
The index uses linear probing at load <= 0.5 with backward-shift deletion (no tombstones) and a
bounded probe length; the hash is SipHash-1-3 keyed with a per-process secret. Timers are a wheel of
one-second buckets on the packet clock; a refreshed flow stays in its old bucket and is moved when
that bucket comes due (lookups compare the exact expiry, so only reaping is lazy). Flows that never
became assured sit on a FIFO, oldest first: the first to go when the table is full.
"""
from libc.stdint cimport uint64_t
from libc.string cimport memcpy, memset

cdef extern from "<sys/mman.h>" nogil:
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void* addr, size_t length)
    int madvise(void* addr, size_t length, int advice)
    void* MAP_FAILED
    int PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MADV_HUGEPAGE

PROBE_LIMIT = MAX_PROBE     # index slots a lookup or insert looks at, at most

cdef enum:
    POPULATE_WRITE = 23     # madvise's MADV_POPULATE_WRITE (Linux 5.14), named here for older headers


cdef void* table_alloc(size_t size, size_t small_pages=0, bint populate=False) noexcept nogil:
    """Zeroed memory on huge pages where the kernel allows: lookups land anywhere in tables of
    tens of MB, and 4 KiB pages would cost a TLB miss on nearly every packet. Pages are mapped on
    first touch, so an oversized max_connections costs address space, not memory. The first
    `small_pages` bytes stay on 4 KiB pages: a table that fills from its start and may stay small
    (a cluster instance's records) would otherwise clear 2 MiB at its first record. `populate`: map
    every page now, in one call (a table about to be filled whole, as a grown index is by its
    rehash: a fault per 4 KiB page costs more than the clearing; kernels before 5.14 fault as usual)."""
    cdef char* p
    cdef char* start
    if size < small_pages + HUGE_PAGE:
        p = <char*>mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if <void*>p == MAP_FAILED:
            return NULL
        if populate:
            madvise(p, size, POPULATE_WRITE)
        return p
    # Start on a huge-page boundary (map one more huge page, give back the ends): a mapping the kernel
    # placed off the boundary gets no huge page at all in its first and last partial 2 MiB.
    size = (size + SMALL_PAGE - 1) & ~(<size_t>SMALL_PAGE - 1)     # munmap takes whole pages
    p = <char*>mmap(NULL, size + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if <void*>p == MAP_FAILED:
        return NULL
    start = <char*>((<size_t>p + HUGE_PAGE - 1) & ~(<size_t>HUGE_PAGE - 1))
    if start > p:
        munmap(p, start - p)
    if p + HUGE_PAGE > start:
        munmap(start + size, p + HUGE_PAGE - start)
    madvise(start + small_pages, size - small_pages, MADV_HUGEPAGE)
    if populate:
        madvise(start, size, POPULATE_WRITE)
    return start


cdef class FlowTable:
    def __cinit__(self, uint32_t capacity, bytes secret, bint grow_index=False):
        """grow_index: the index starts small and doubles as flows come (load stays at most 0.5), for
        tables that will likely hold a share of max_connections (a cluster's instances); otherwise
        it is allocated whole, and a hash flood meets the index at its final size from the start."""
        cdef uint64_t slots = MIN_INDEX_SLOTS
        if capacity < 1 or capacity > 0x3FFFFFFF:
            raise ValueError(f"max_connections must be between 1 and {0x3FFFFFFF}, not {capacity}")
        if len(secret) != 16:
            raise ValueError("the hash secret is 16 bytes")
        while slots < <uint64_t>capacity * 4:      # two keys per flow, load factor at most 0.5
            slots <<= 1
        self.full_mask = slots - 1
        self.mask = MIN_INDEX_SLOTS - 1 if grow_index else self.full_mask
        self.capacity = capacity
        self.flows = <Flow*>table_alloc(capacity * sizeof(Flow), HUGE_PAGE if grow_index else 0)
        self.slots = <Slot*>table_alloc((self.mask + 1) * sizeof(Slot))
        if self.flows == NULL or self.slots == NULL:
            size = capacity * sizeof(Flow) + (self.mask + 1) * sizeof(Slot)
            raise MemoryError(f"cannot allocate a table for {capacity} connections ({size / 2**30:.1f} GiB)")
        self.k0 = int.from_bytes(secret[:8], "little")
        self.k1 = int.from_bytes(secret[8:], "little")
        memset(self.wheel, 0, sizeof(self.wheel))

    def __dealloc__(self):
        if self.flows != NULL:
            munmap(self.flows, self.capacity * sizeof(Flow))
        if self.slots != NULL:
            munmap(self.slots, (self.mask + 1) * sizeof(Slot))

    def removed_by_reason(self):
        return {"expired": self.removed[<int>R_EXPIRED], "evicted": self.removed[<int>R_EVICTED],
                "reused": self.removed[<int>R_REUSED], "nodest": self.removed[<int>R_NODEST]}

    @property
    def slot_count(self):
        """Index slots now (a power of two, at least four per flow: two keys each, load at most 0.5)."""
        return self.mask + 1

    def hash_key(self, bytes src, bytes dst, uint16_t sport, uint16_t dport, uint8_t proto):
        """The keyed hash of a tuple (addresses: 4 or 16 bytes), as a lookup computes it; home slot = hash % slot_count.
        For tests and the hash-flooding benchmark, which plays an attacker who knows the secret."""
        cdef PacketKey key
        if len(src) not in (4, 16) or len(dst) != len(src):
            raise ValueError("addresses are 4 or 16 bytes, both of one family")
        memset(&key, 0, sizeof(key))
        memcpy(key.src, <const char*>src, len(src))
        memcpy(key.dst, <const char*>dst, len(dst))
        key.sport, key.dport, key.proto = sport, dport, proto
        key.family = 4 if len(src) == 4 else 6
        return key_hash(self, &key)

    def probe_lengths(self):
        """{probes a lookup of the key needs: index entries}, over every entry (its distance from home + 1)."""
        cdef uint64_t i
        cdef dict counts = {}
        for i in range(self.mask + 1):
            if self.slots[i].ref:
                n = <int>((i - (self.slots[i].hash32 & self.mask)) & self.mask) + 1
                counts[n] = counts.get(n, 0) + 1
        return dict(sorted(counts.items()))

    def memory_bytes(self):
        """Bytes the table takes at capacity: flow records plus the index at its full size (a growing
        index reaches it as the table fills; the wheel is a fixed 4 KiB)."""
        return self.capacity * sizeof(Flow) + (self.full_mask + 1) * sizeof(Slot) + sizeof(self.wheel)

    cdef void bind(self, const Real* reals, const Service* services, const LocalAddr* laddrs, removed_fn cb,
                   void* ctx) noexcept nogil:
        self.reals = reals
        self.services = services
        self.laddrs = laddrs
        self.on_removed = cb
        self.removed_ctx = ctx

    # ---- keys and the index ------------------------------------------------------------------
    cdef void keys_of(self, const Flow* f, PacketKey* fwd, PacketKey* rep) noexcept nogil:
        cdef const Real* r = &self.reals[f.real]
        cdef const Service* s = &self.services[r.service]
        memcpy(fwd.src, f.client, 16)
        memcpy(fwd.dst, s.vip, 16)
        fwd.sport = f.cport
        fwd.dport = s.vport
        memcpy(rep.src, r.addr, 16)
        if r.forward == FWD_FULLNAT and not (f.flags & F_TEMPLATE):    # the real answers its local address
            memcpy(rep.dst, self.laddrs[f.laddr].addr, 16)
            rep.dport = f.lport
        else:
            memcpy(rep.dst, f.client, 16)
            rep.dport = f.cport
        rep.sport = r.port
        fwd.proto = rep.proto = f.proto
        fwd.family = rep.family = f.family

    cdef int grow_index(self) noexcept nogil:
        """Twice the index slots (more if a key finds no room within MAX_PROBE of its new home), every
        key placed again by its hash's low half (slots are at most 2^32); -1 with the index as it was."""
        cdef uint64_t size = self.mask + 1, i, j
        cdef Slot* bigger
        cdef int _probe
        while size <= self.full_mask:
            size *= 2
            bigger = <Slot*>table_alloc(size * sizeof(Slot), 0, True)
            if bigger == NULL:
                return -1
            for i in range(self.mask + 1):
                if self.slots[i].ref == 0:
                    continue
                j = self.slots[i].hash32 & (size - 1)
                for _probe in range(MAX_PROBE):
                    if bigger[j].ref == 0:
                        bigger[j] = self.slots[i]
                        break
                    j = (j + 1) & (size - 1)
                else:
                    break
            else:
                munmap(self.slots, (self.mask + 1) * sizeof(Slot))
                self.slots = bigger
                self.mask = size - 1
                return 0
            munmap(bigger, size * sizeof(Slot))
        return -1

    cdef int slot_put(self, uint64_t h, uint32_t ref) noexcept nogil:
        cdef uint64_t i = h & self.mask
        cdef int _probe
        for _probe in range(MAX_PROBE):
            if self.slots[i].ref == 0:
                self.slots[i].hash32 = <uint32_t>h
                self.slots[i].ref = ref
                return 0
            i = (i + 1) & self.mask
        return -1

    cdef void slot_delete(self, uint64_t h, uint32_t ref) noexcept nogil:
        """Remove ref, then shift later entries of the probe run back (no tombstones)."""
        cdef uint64_t i = h & self.mask, j, home
        cdef int _probe
        for _probe in range(MAX_PROBE):
            if self.slots[i].ref == ref:
                break
            i = (i + 1) & self.mask
        else:
            return
        j = i
        while True:
            j = (j + 1) & self.mask
            if self.slots[j].ref == 0:
                break
            home = self.slots[j].hash32 & self.mask
            if ((j - home) & self.mask) >= ((j - i) & self.mask):    # j may move back to i
                self.slots[i] = self.slots[j]
                i = j
        self.slots[i].ref = 0

    # ---- lists: timer buckets and the embryonic FIFO ----------------------------------------
    cdef void timer_link(self, uint32_t idx) noexcept nogil:
        cdef Flow* f = &self.flows[idx]
        cdef uint16_t b = <uint16_t>((f.expires_ns // NS) & (WHEEL_SLOTS - 1))
        f.bucket = b
        f.tprev = 0
        f.tnext = self.wheel[b]
        if f.tnext:
            self.flows[f.tnext - 1].tprev = idx + 1
        self.wheel[b] = idx + 1

    cdef void timer_unlink(self, uint32_t idx) noexcept nogil:
        cdef Flow* f = &self.flows[idx]
        if f.tprev:
            self.flows[f.tprev - 1].tnext = f.tnext
        else:
            self.wheel[f.bucket] = f.tnext
        if f.tnext:
            self.flows[f.tnext - 1].tprev = f.tprev

    cdef void embryo_unlink(self, uint32_t idx) noexcept nogil:
        cdef Flow* f = &self.flows[idx]
        if f.eprev:
            self.flows[f.eprev - 1].enext = f.enext
        else:
            self.ehead = f.enext
        if f.enext:
            self.flows[f.enext - 1].eprev = f.eprev
        else:
            self.etail = f.eprev
        f.eprev = f.enext = 0

    # ---- flow life cycle ----------------------------------------------------------------------
    cdef int64_t alloc(self, uint64_t now) noexcept nogil:
        """A zeroed record marked in use, making room if needed; -1 when the table is full."""
        cdef uint32_t idx
        if (<uint64_t>self.used + 1) * 4 > self.mask + 1 and self.mask < self.full_mask and self.grow_index() < 0:
            self.full_mask = self.mask      # it stays at this size (inserts may find no room: counted drops)
        if self.free_head == 0 and self.next_unused == self.capacity:
            self.reap_bucket(<uint32_t>((now // NS) & (WHEEL_SLOTS - 1)), now)
            if self.free_head == 0 and self.ehead:
                self.remove(self.ehead - 1, R_EVICTED)
        if self.free_head:
            idx = self.free_head - 1
            self.free_head = self.flows[idx].tnext
        elif self.next_unused < self.capacity:
            idx = self.next_unused
            self.next_unused += 1
        else:
            return -1
        memset(&self.flows[idx], 0, sizeof(Flow))
        self.flows[idx].flags = F_IN_USE
        self.used += 1
        if self.used > self.peak:
            self.peak = self.used
        return idx

    cdef void release(self, uint32_t idx) noexcept nogil:
        self.flows[idx].flags = 0
        self.flows[idx].tnext = self.free_head
        self.free_head = idx + 1
        self.used -= 1

    cdef int insert(self, uint32_t idx) noexcept nogil:
        """Index a filled-in record under both keys and start its timer; on failure free it, -1."""
        cdef PacketKey fwd, rep
        cdef uint64_t hf, hr
        cdef uint32_t ref = make_ref(idx, False)
        cdef Flow* f = &self.flows[idx]
        memset(&fwd, 0, sizeof(fwd))
        memset(&rep, 0, sizeof(rep))
        self.keys_of(f, &fwd, &rep)
        hf = key_hash(self, &fwd)
        hr = key_hash(self, &rep)
        if self.slot_put(hf, ref) < 0:
            self.insert_failed += 1
            self.release(idx)
            return -1
        if self.slot_put(hr, make_ref(idx, True)) < 0:
            self.slot_delete(hf, ref)
            self.insert_failed += 1
            self.release(idx)
            return -1
        self.timer_link(idx)
        if not (f.flags & F_ASSURED):
            f.eprev = self.etail
            f.enext = 0
            if self.etail:
                self.flows[self.etail - 1].enext = idx + 1
            else:
                self.ehead = idx + 1
            self.etail = idx + 1
        return 0

    cdef void remove(self, uint32_t idx, int why) noexcept nogil:
        cdef PacketKey fwd, rep
        cdef Flow* f = &self.flows[idx]
        memset(&fwd, 0, sizeof(fwd))
        memset(&rep, 0, sizeof(rep))
        self.keys_of(f, &fwd, &rep)
        self.slot_delete(key_hash(self, &fwd), make_ref(idx, False))
        self.slot_delete(key_hash(self, &rep), make_ref(idx, True))
        self.timer_unlink(idx)
        if not (f.flags & F_ASSURED):
            self.embryo_unlink(idx)
        if f.flags & F_TEMPLATE:
            (<Real*>&self.reals[f.real]).persistent -= 1
        elif self.services[self.reals[f.real].service].persist_ns:
            self.release_template(f)
        if self.on_removed != NULL:
            self.on_removed(self.removed_ctx, f, why)
        self.removed[why] += 1
        self.release(idx)

    cdef void release_template(self, const Flow* conn) noexcept nogil:
        """A connection of a persistent service left: its template controls one fewer."""
        cdef PacketKey key, tk
        cdef uint32_t ref
        memset(&key, 0, sizeof(PacketKey))
        memcpy(key.src, conn.client, 16)
        template_key(&self.services[self.reals[conn.real].service], &key, &tk)
        ref = key_lookup(self, &tk, key_hash(self, &tk))
        if ref and self.flows[ref_index(ref)].controlled:
            self.flows[ref_index(ref)].controlled -= 1

    cdef void reschedule(self, uint32_t idx) noexcept nogil:
        """Move the flow to the bucket of its current expiry (after a timeout got shorter)."""
        self.timer_unlink(idx)
        self.timer_link(idx)

    cdef void assure(self, uint32_t idx) noexcept nogil:
        if not (self.flows[idx].flags & F_ASSURED):
            self.embryo_unlink(idx)
            self.flows[idx].flags |= F_ASSURED

    # ---- time ---------------------------------------------------------------------------------
    cdef void reap_bucket(self, uint32_t b, uint64_t now) noexcept nogil:
        """Expire what is due in bucket b; move the rest to the bucket of their expiry."""
        cdef uint32_t ref = self.wheel[b], idx
        cdef bint expired
        self.wheel[b] = 0
        while ref:
            idx = ref - 1
            ref = self.flows[idx].tnext
            expired = self.due(&self.flows[idx], now)   # first: it may re-arm a template
            self.timer_link(idx)
            if expired:
                self.remove(idx, R_EXPIRED)

    cdef void advance(self, uint64_t now) noexcept nogil:
        """Reap every bucket whose second has fully passed (at most one turn of the wheel)."""
        cdef uint64_t now_sec = now // NS
        cdef int steps = 0
        if not self.wheel_started:
            self.wheel_sec = now_sec
            self.wheel_started = True
            return
        while self.wheel_sec < now_sec and steps < WHEEL_SLOTS:
            self.reap_bucket(<uint32_t>(self.wheel_sec & (WHEEL_SLOTS - 1)), now)
            self.wheel_sec += 1
            steps += 1
        if self.wheel_sec < now_sec:
            self.wheel_sec = now_sec

    cdef void expire_due(self, uint64_t now) noexcept nogil:
        """Expire every flow due at `now` (a full scan: for snapshots, not the hot path)."""
        cdef uint32_t idx
        for idx in range(self.next_unused):
            if (self.flows[idx].flags & F_IN_USE) and self.due(&self.flows[idx], now):
                self.remove(idx, R_EXPIRED)

    cdef bint due(self, Flow* f, uint64_t now) noexcept nogil:
        """Expired at `now`? A template that still controls connections is not: it is re-armed."""
        if f.expires_ns > now:
            return False
        if (f.flags & F_TEMPLATE) and f.controlled:
            f.expires_ns = now + self.services[self.reals[f.real].service].persist_ns
            return False
        return True
