"""The emulate loop: clients' packets and the hosts' answers through one datapath, in C, in their exact order.

Each client packet is re-stamped (its ACK number moved into the emulated server's sequence space),
goes through the datapath's per-packet path; one the switch sent to an emulated real (or one that
passed straight to a host's address) is handed to that host, and each answer goes back through the
datapath (reply path, SNAT) at the triggering packet's time plus 1 us per answer, never the wall
clock. Two views are appended to output Batches handed to sinks a batch at a time: `outside` is what
the clients see (their packets as they arrive, re-stamped; answers after SNAT), `inside` what the
real servers see (after DNAT; answers before SNAT). Verdict and detail stay with each packet.

Each packet goes through the switch in a batch of its own (`step`), where the forwarding methods that
build (tunnels, TOA, ICMP errors, fragments) have room. A real under `dr` or `tun` owns its service's
VIP: it takes the packet (out of the tunnel) as addressed to itself, and its answers leave from the
VIP straight to the client, past the switch (verdict `pass`: the switch never saw them).

The hosts reassemble IP fragments as Linux's ip_defrag does before their TCP/UDP stacks see a datagram
(the datapath's Reassembler: ipfrag_time 30 s, ipfrag_high_thresh 4 MiB, one pool for all hosts, keyed
per host): fragments the switch made (over the MTU, or a reassembled datagram written out as it came)
and fragments a policy sent on (track, 3tuple) wait for their datagram; a tunnel's outer packet is
reassembled before it is taken apart, its inner packet after.
"""
cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, UINT64_MAX
from libc.stdlib cimport free, realloc
from libc.string cimport memcmp, memcpy, memset
from l4emu.datapath._batch cimport Batch, V_PASS, V_NEW, V_FORWARD, V_REPLY, V_DROP, V_ANSWER, V_ICMP, V_MORE
from l4emu.datapath._datapath cimport Datapath
from l4emu.datapath._types cimport PacketInfo, PacketKey, Real, FWD_DR, FWD_TUN
from l4emu.datapath._flowtable cimport key_hash
from l4emu.datapath._wire cimport (IPPROTO_TCP, IPPROTO_UDP, LINKTYPE_RAW, TCP_SYN, TCP_ACK, TCP_FIN,
                                   TCP_RST, TCP_CSUM, IP4_SRC, IP6_SRC)
from l4emu.datapath._checksum cimport store16, sum_bytes, fold, load16, diff_words, apply_diff
from l4emu.datapath._reasm cimport Reassembler, RQ_QUEUED, RQ_COMPLETE
from l4emu.hosts._engine cimport (Engine, Seg, Peer, Host, read_segment, segment_after, C_UNREADABLE, PROTO_KEY_TCP,
                                  PROTO_KEY_UDP)
from l4emu.hosts._decap cimport inner_offset, answer_from
from l4emu.clients._clients cimport Clients
from l4emu.clients._gen cimport MAX_FRAME
from l4emu.hosts._table cimport (Slab, slab_init, slab_free, slab_add_hashed, slab_remove, rec,
                                 slab_bytes, prefetch_slot, prefetch_record, slab_find_hashed)
from l4emu.datapath._headers cimport PARSED, PARSE_FRAGMENT, parse_packet


cdef enum:
    REPLY_GAP_NS = 1000         # between the answers to one packet (and after the accept that made them)
    SCRATCH_BYTES = 1 << 16
    STEP_SLOTS = 4              # the step batch: a packet and the fragments the switch may cut it into
    TCPOPT_EOL = 0
    TCPOPT_NOP = 1
    TCPOPT_SACK = 5
    TCPOPT_TIMESTAMP = 8
    SERVER_FIN = 1
    CLIENT_FIN = 2
    MAX_DEPTH = 8               # an answer that reaches a host again (it never should) goes no deeper
    AHEAD = 8                   # run(): a packet's index slot is prefetched this many packets ahead,
    #                             its flow record half as many
    TCP_MAX_HEADER = 60
    IP4_FRAG_AT = 6             # flags and fragment offset
    IP4_FRAG_BITS = 0x3FFF      # MF or an offset: a fragment
    IP6_NEXT_AT = 6

# The hosts' reassembly: Linux's defaults (net.ipv4.ipfrag_high_thresh, ipfrag_time), not the switch's [defrag]
HOST_IPFRAG_HIGH_THRESH = 4 << 20
HOST_IPFRAG_TIME_S = 30.0

REPLY_GAP = REPLY_GAP_NS


# What the emulated server sent a client so far, keyed as the client sees the connection. The table
# hashes a key as the switch's connection table hashes the client's packets (stamp_hash): the hash
# the datapath made of a client packet read ahead is the re-stamping's too, with no second SipHash.
cdef struct StampKey:
    uint8_t client[16]
    uint8_t server[16]
    uint16_t cport
    uint16_t sport
    uint8_t family
    uint8_t pad[3]

cdef struct Stamp:
    StampKey key
    uint32_t hash
    uint32_t sent           # the sequence number after the last byte (or SYN/FIN) the server sent
    uint8_t has_sent
    uint8_t fins            # SERVER_FIN | CLIENT_FIN: which sides sent a FIN

# A client packet read ahead by run().
cdef struct Ahead:
    PacketInfo info
    int parsed
    uint64_t h
    StampKey stamp_key
    uint32_t stamp_hash
    uint32_t conn_hash


# A service whose reals all answer for themselves: what a capture recorded from its VIP or capture
# servers is superseded (answering twice would fork the stream).
cdef struct Front:
    uint8_t addr[16]
    uint16_t port
    uint8_t proto
    uint8_t family


cdef inline void stamp_key(StampKey* k, const Seg* seg, bint from_client) noexcept:
    cdef uint32_t alen = 4 if seg.family == 4 else 16
    memset(k, 0, sizeof(StampKey))
    memcpy(k.client, seg.src if from_client else seg.dst, alen)
    memcpy(k.server, seg.dst if from_client else seg.src, alen)
    k.cport = seg.sport if from_client else seg.dport
    k.sport = seg.dport if from_client else seg.sport
    k.family = seg.family


@cython.final
cdef class Loop:
    """The switch's datapath and its hosts, driven one packet at a time in C."""
    cdef Datapath dp
    cdef Engine hosts
    cdef Batch outside              # the clients' view (None: not kept) ...
    cdef Batch inside               # ... and the reals'
    cdef object outside_sink, inside_sink
    cdef bint restamp
    cdef Slab stamps
    cdef uint8_t* cur               # the packet going through now, as it came
    cdef Batch step                 # ... and what the switch sent for it (packet 0, fragments after it)
    cdef Batch answer_step          # the same for an answer going through while a step is being delivered
    cdef list deeper                # ... and deeper (an answer that reaches a host again)
    cdef Reassembler defrag         # the hosts' IP reassembly (Linux's ip_defrag before TCP/UDP)
    cdef uint8_t* whole             # a datagram it completed, as the host takes it
    cdef uint32_t whole_cap
    cdef readonly uint64_t fragments_dropped    # fragments the hosts' reassembly refused (overlap, over memory, ...)
    cdef uint8_t* after             # a tunnel packet's inner packet, as the real takes it out
    cdef int32_t* direct_tcp        # per listener / UDP socket: the dr or tun real whose VIP it answers
    cdef int32_t* direct_udp        # from, past the switch (-1: none)
    cdef bint any_direct
    cdef uint32_t scratch
    cdef Front* fronts
    cdef uint32_t n_fronts
    cdef int depth
    cdef readonly uint64_t last_ts
    cdef readonly uint64_t answers
    cdef readonly uint64_t direct           # ... of them sent by dr and tun reals straight to the client
    cdef readonly uint64_t superseded
    cdef Clients clients            # simulate: the emulated clients the answers go to (None: replay)
    cdef uint32_t client_slot       # ... and the connection of the client packet going through now
    cdef StampKey hashed_key        # the re-stamping key hashed last, and its hash (0: none yet): a host's
    cdef uint32_t hashed            # answers share the key of the client packet they answer

    def __cinit__(self, Datapath datapath, Engine hosts, fronts, outside, inside, bint restamp, bytes secret,
                  Py_ssize_t capacity=4096):
        """`outside`/`inside`: None, or a callable that takes a full Batch (then the loop empties it)."""
        cdef uint32_t k
        self.dp = datapath
        self.hosts = hosts
        self.restamp = restamp
        self.outside_sink, self.inside_sink = outside, inside
        self.outside = Batch(capacity) if outside is not None else None
        self.inside = Batch(capacity) if inside is not None else None
        if slab_init(&self.stamps, sizeof(Stamp), sizeof(StampKey) // 8, int.from_bytes(secret[:8], "little"),
                     int.from_bytes(secret[8:16], "little")) < 0:
            raise MemoryError()
        self.fronts = <Front*>realloc(NULL, max(len(fronts), 1) * sizeof(Front))
        if self.fronts == NULL or self._room(SCRATCH_BYTES) < 0:
            raise MemoryError()
        for k, (address, port, proto) in enumerate(fronts):
            memset(&self.fronts[k], 0, sizeof(Front))
            memcpy(self.fronts[k].addr, <const char*>address, len(address))
            self.fronts[k].port, self.fronts[k].proto = port, proto
            self.fronts[k].family = 4 if len(address) == 4 else 6
        self.n_fronts = len(fronts)
        self.step = Batch(STEP_SLOTS, SCRATCH_BYTES)
        self.answer_step = Batch(STEP_SLOTS, SCRATCH_BYTES)
        self.deeper = []
        self.defrag = Reassembler(bytes(secret[:16]).ljust(16, b"\0"), HOST_IPFRAG_HIGH_THRESH, 0, HOST_IPFRAG_TIME_S)
        self._direct_sockets()

    cdef int _direct_sockets(self) except -1:
        """Which sockets belong to reals under dr or tun: theirs answer from the VIP, past the switch."""
        cdef uint32_t r
        cdef int h, k
        cdef Real* real
        self.direct_tcp = <int32_t*>realloc(NULL, max(self.hosts.n_listeners, 1) * sizeof(int32_t))
        self.direct_udp = <int32_t*>realloc(NULL, max(self.hosts.n_udps, 1) * sizeof(int32_t))
        if self.direct_tcp == NULL or self.direct_udp == NULL:
            raise MemoryError()
        memset(self.direct_tcp, 0xFF, max(self.hosts.n_listeners, 1) * sizeof(int32_t))
        memset(self.direct_udp, 0xFF, max(self.hosts.n_udps, 1) * sizeof(int32_t))
        for r in range(self.hosts.n_reals):
            h = self.real_host(r)
            real = &self.dp.t.reals[r]
            if h < 0 or not (real.forward == FWD_DR or real.forward == FWD_TUN):
                continue
            if self.dp.t.services[real.service].proto == IPPROTO_TCP:
                k = self.hosts.socket_of(h, real.port, PROTO_KEY_TCP)
                if k >= 0:
                    self.direct_tcp[k] = r
            else:
                k = self.hosts.socket_of(h, real.port, PROTO_KEY_UDP)
                if k >= 0:
                    self.direct_udp[k] = r
            self.any_direct = True
        return 0

    def __dealloc__(self):
        free(self.cur)
        free(self.after)
        free(self.whole)
        free(self.fronts)
        free(self.direct_tcp)
        free(self.direct_udp)
        slab_free(&self.stamps)

    cdef int _room(self, uint32_t n) noexcept:
        """Scratch for an n-byte frame."""
        cdef uint8_t* a
        cdef uint8_t* b
        if n <= self.scratch:
            return 0
        a = <uint8_t*>realloc(self.cur, n)
        if a == NULL:
            return -1
        self.cur = a
        b = <uint8_t*>realloc(self.after, n)
        if b == NULL:
            return -1
        self.after = b
        self.scratch = n
        return 0

    # ---- Python's doors ---------------------------------------------------------------------------
    def run(self, Batch batch, Py_ssize_t start=0, uint64_t until_ns=0):
        """The clients' packets start.. of a batch (replay: the capture's, in order); stops before the
        first one at or past `until_ns` (0: none) so the caller can reach that moment; returns where."""
        cdef Py_ssize_t i = start, a
        cdef Ahead ahead[AHEAD]
        for a in range(start, min(start + AHEAD, batch.n)):
            self.read_ahead(batch, a, &ahead[a % AHEAD])
        while i < batch.n:
            if until_ns and batch.ts_ns[i] >= until_ns:
                return i
            a = i + AHEAD // 2
            if a < batch.n and ahead[a % AHEAD].parsed == PARSED:
                self.dp.prefetch_record(ahead[a % AHEAD].h)
                if ahead[a % AHEAD].stamp_hash:
                    prefetch_record(&self.stamps, ahead[a % AHEAD].stamp_hash)
                if ahead[a % AHEAD].conn_hash:
                    prefetch_record(&self.hosts.conns, ahead[a % AHEAD].conn_hash)
            self.client(batch.data + batch.offset[i], batch.caplen[i], batch.origlen[i], batch.ts_ns[i],
                        batch.iface[i], batch.linktype[i], &ahead[i % AHEAD])
            a = i + AHEAD
            if a < batch.n:
                self.read_ahead(batch, a, &ahead[i % AHEAD])
            i += 1
        return i

    cdef void read_ahead(self, Batch batch, Py_ssize_t a, Ahead* ahead) noexcept:
        """Parse and hash a client packet AHEAD packets early; prefetch its flow's and its re-stamping's slots."""
        cdef StampKey* key = &ahead.stamp_key
        ahead.parsed = self.dp.hash_ahead(batch.data + batch.offset[a], batch.caplen[a], batch.origlen[a],
                                          batch.linktype[a], &ahead.info, &ahead.h)
        if self.restamp and ahead.parsed == PARSED and ahead.info.key.proto == IPPROTO_TCP:
            memset(key, 0, sizeof(StampKey))
            memcpy(key.client, ahead.info.key.src, 16)
            memcpy(key.server, ahead.info.key.dst, 16)
            key.cport, key.sport, key.family = ahead.info.key.sport, ahead.info.key.dport, ahead.info.key.family
            ahead.stamp_hash = <uint32_t>ahead.h       # the flow's hash is the key's (stamp_hash)
            prefetch_slot(&self.stamps, ahead.stamp_hash)
        else:
            ahead.stamp_hash = 0
        if ahead.parsed == PARSED and ahead.info.key.proto == IPPROTO_TCP:
            ahead.conn_hash = self.hosts.client_hash(ahead.info.key.src, ahead.info.key.family, ahead.info.key.sport)
            prefetch_slot(&self.hosts.conns, ahead.conn_hash)
        else:
            ahead.conn_hash = 0

    def client_frame(self, frame, uint64_t ts, uint32_t origlen, uint16_t iface, uint16_t linktype):
        """One client packet from Python bytes (tests)."""
        cdef const uint8_t[::1] view = frame
        if view.shape[0]:
            self.client(&view[0], <uint32_t>view.shape[0], origlen, ts, iface, linktype, NULL)

    def advance(self, uint64_t now):
        """Let the hosts' clocks reach `now` (accepts at the application's pace, TIME-WAIT ending)."""
        self.advance_to(now)

    def intercept(self, Batch batch):
        """Live mode: after the datapath processed `batch`, take out what it sent to emulated hosts (those
        packets are marked dropped, so they are not sent on) and let the hosts answer; returns how many."""
        cdef Py_ssize_t i
        cdef int h
        cdef int32_t d
        cdef uint8_t v
        cdef uint8_t* p
        cdef PacketInfo info
        cdef Seg seg
        cdef int taken = 0
        cdef int taking = -1                    # the host the slot before went to: its `more` fragments go too
        cdef int32_t taking_real = -1
        for i in range(batch.n):
            v, d = batch.verdict[i], batch.detail[i]
            p = batch.data + batch.offset[i]
            if v == V_MORE:
                if taking >= 0:
                    batch.verdict[i] = V_DROP
                    batch.detail[i] = 0
                    if taking_real >= 0 and self._room(batch.caplen[i]) == 0:
                        parse_packet(p, batch.caplen[i], batch.caplen[i], batch.linktype[i], &info)
                        self.to_real(taking, taking_real, p, batch.caplen[i], batch.caplen[i], 0, -1, &info,
                                     batch.ts_ns[i], batch.iface[i], batch.linktype[i], NULL)
                continue
            taking = -1
            if v == V_NEW or v == V_FORWARD:
                h = self.real_host(d)
            elif v == V_PASS and read_segment(p, batch.caplen[i], batch.linktype[i], &info, &seg):
                h = self.hosts.host_of(seg.dst, seg.family)
            else:
                continue
            if h < 0:
                continue
            batch.verdict[i] = V_DROP
            batch.detail[i] = 0
            taking, taking_real = h, (d if v == V_NEW or v == V_FORWARD else -1)
            if batch.ts_ns[i] > self.last_ts:
                self.last_ts = batch.ts_ns[i]
            if v == V_NEW or v == V_FORWARD:        # as the method sent it (a tunnel, the VIP as its own)
                parse_packet(p, batch.caplen[i], batch.caplen[i], batch.linktype[i], &info)    # its link header
                if self._room(batch.caplen[i]) < 0:
                    continue
                self.to_real(h, d, p, batch.caplen[i], batch.caplen[i], batch.caplen[i], -1, &info, batch.ts_ns[i],
                             batch.iface[i], batch.linktype[i], NULL)
            else:
                self.deliver(h, p, batch.caplen[i], batch.ts_ns[i], batch.iface[i], batch.linktype[i], NULL, NULL, 0)
            self.hosts.prune_peers()
            taken += 1
        return taken

    def flush(self):
        """Hand what the views hold to their sinks."""
        if self.outside is not None and self.outside.n:
            self.outside_sink(self.outside)
            self.outside.clear()
        if self.inside is not None and self.inside.n:
            self.inside_sink(self.inside)
            self.inside.clear()

    def memory(self):
        """Bytes of the re-stamping table (records and index)."""
        return slab_bytes(&self.stamps)

    def simulate(self, Clients clients, uint64_t sample_every_ns=0, on_sample=None, on_timer=None,
                 Clients more=None):
        """The closed loop: the clients' packets and the hosts' clocks, whichever is due first, until
        both have nothing left; each answer reaches the clients as the switch sends it. `more`: a mixed
        workload's clients of the other protocol (paired with `clients`), whose packets interleave by
        time (ties: `clients` first). `on_sample(t)` is called every `sample_every_ns` of packet time
        (0: never). `on_timer(t)` (health checks) is called first at the first moment, then whenever
        the moment it returned (UINT64_MAX: never) is reached, before a packet or clock step at that
        moment. Returns the last moment."""
        cdef uint64_t t_client, t_more, t_host, ts, next_sample = 0, last = 0, t_next
        cdef uint64_t timer_at = 0 if on_timer is not None else UINT64_MAX
        cdef uint32_t n, slot
        cdef uint8_t frame[MAX_FRAME]
        cdef Clients sender
        if more is not None:
            clients.pair(more)
        self.clients = clients
        try:
            while True:
                t_client = clients.next_time()
                t_more = more.next_time() if more is not None else UINT64_MAX
                sender = clients if t_client <= t_more else more
                t_client = min(t_client, t_more)
                t_host = self.hosts.next_due()
                if t_client == UINT64_MAX and t_host == UINT64_MAX:
                    break
                if sample_every_ns:
                    if next_sample == 0:
                        next_sample = min(t_client, t_host)
                    while next_sample <= min(t_client, t_host):
                        on_sample(next_sample)
                        next_sample += sample_every_ns
                t_next = min(t_client, t_host)
                if timer_at <= t_next:
                    timer_at = on_timer(timer_at if timer_at else t_next)
                    continue
                if t_host <= t_client:
                    self.advance_to(t_host)
                    last = t_host
                    continue
                n = sender.emit(frame, &ts, &slot)
                if n:
                    self.clients = sender       # the datapath's verdict names this sender's connection
                    self.client_slot = slot
                    self.client(frame, n, n, ts, 0, sender.linktype, NULL)
                    last = ts
        finally:
            self.clients = None
        return last

    def restamp_entries(self):
        """Connections the re-stamping remembers (each forgotten once both sides closed)."""
        return self.stamps.used

    # ---- the loop ---------------------------------------------------------------------------------
    cdef inline int real_host(self, int32_t real) noexcept:
        return self.hosts.real_host[real] if 0 <= real < <int32_t>self.hosts.n_reals else -1

    cdef int client(self, const uint8_t* p, uint32_t caplen, uint32_t origlen, uint64_t ts, uint16_t iface,
                    uint16_t linktype, Ahead* ahead) except -1:
        """One packet as it arrives at the switch (replay: the next one of the capture; `ahead`: its
        parse, when run() read it ahead)."""
        cdef PacketInfo info
        cdef Seg seg
        cdef bint ok
        cdef int r
        self.advance_to(ts)
        if ahead != NULL and segment_after(p, caplen, origlen, ahead.parsed, &ahead.info, &seg):
            ok = True
            info = ahead.info                   # the parse read ahead: no second one
        else:
            ok = read_segment(p, caplen, linktype, &info, &seg)
        if ok and info.fragment:                # track's first fragment, parsed as a packet: its header whole?
            ok = first_fragment_segment(p, caplen, &info, &seg)
        if ok and (self.hosts.host_of(seg.src, seg.family) >= 0 or self.is_front(&seg)):
            self.superseded += 1    # e.g. a recorded server's replies: answering twice would fork the stream
            return 0
        if self._room(caplen) < 0:
            return 0
        memcpy(self.cur, p, caplen)
        if self.restamp and not ok:             # a first fragment a fragment policy takes: its TCP header
            r = self.dp.classify(p, caplen, origlen, linktype, &info)
            ok = (r == PARSE_FRAGMENT or r == PARSED) and first_fragment_segment(p, caplen, &info, &seg)
        if self.restamp and ok and seg.proto == IPPROTO_TCP:
            self.stamp_client(&info, &seg, ahead)
        self.through(caplen, origlen, iface, linktype, ts, False, ahead)
        self.hosts.prune_peers()
        return 0

    cdef bint is_front(self, Seg* seg) noexcept:
        cdef uint32_t k
        cdef Front* f
        for k in range(self.n_fronts):
            f = &self.fronts[k]
            if (f.port == seg.sport and f.proto == seg.proto and f.family == seg.family
                    and memcmp(f.addr, seg.src, 4 if seg.family == 4 else 16) == 0):
                return True
        return False

    cdef int advance_to(self, uint64_t now) except -1:
        """The hosts' clocks to `now` and their answers through the switch (nothing to do, most packets)."""
        cdef uint32_t first = self.hosts.n_out
        self.defrag.expire(now)
        if self.hosts.next_due() > now:
            self.hosts.prune_peers()
            return 0
        self.hosts.advance(now)
        self.send_answers(first, 0, True, -1)
        self.hosts.truncate(first)
        self.hosts.prune_peers()
        return 0

    cdef int through(self, uint32_t n, uint32_t origlen, uint16_t iface, uint16_t linktype, uint64_t ts,
                     bint from_host, Ahead* ahead=NULL) except -1:
        """The packet in `cur` through the datapath, into the views, and to a host when it is for one
        (`ahead`: its parse, read ahead)."""
        cdef uint8_t v = 0
        cdef int32_t d = 0
        cdef int h, parsed = -1
        cdef uint64_t hash = 0
        cdef PacketInfo info
        cdef Seg seg
        cdef bint readable
        cdef Batch b = self.step if self.depth == 0 else self.answer_step if self.depth == 1 else self.deeper_step()
        cdef uint8_t* after
        cdef uint32_t m, morig
        cdef Py_ssize_t k
        cdef uint64_t rebuilt
        b.clear()
        if b.push(self.cur, n, origlen, ts, iface, linktype) != 0:
            return 0
        if ahead != NULL:
            info, parsed, hash = ahead.info, ahead.parsed, ahead.h
        rebuilt = self.dp.reasm.oks + self.dp.fragments_released
        parsed = self.dp.process_slot(b, &info, parsed, hash)
        rebuilt = rebuilt != self.dp.reasm.oks + self.dp.fragments_released
        v, d = b.verdict[0], b.detail[0]
        after, m, morig = b.data + b.offset[0], b.caplen[0], b.origlen[0]
        if ts < self.last_ts:
            ts = self.last_ts                   # what is written never goes back in time
        self.last_ts = ts
        if v == V_DROP:
            self.emit(0, self.cur, n, origlen, ts, iface, linktype, v, d)
        elif v == V_ICMP:                       # dropped, and the switch answered the sender with an ICMP error
            self.emit(1 if from_host else 0, self.cur, n, origlen, ts, iface, linktype, V_DROP, d)
            self.emit(1 if from_host else 0, after, m, morig, ts, iface, linktype, v, d)
            if not from_host and self.clients is not None:
                self.clients.receive(after, m, linktype, ts)
        elif v == V_NEW or v == V_FORWARD:      # client -> real: DNAT, a new MAC or a tunnel
            if v == V_NEW and self.clients is not None and not from_host:
                self.clients.note_real(self.client_slot, d)
            self.emit_outside(b, rebuilt, n, origlen, ts, iface, linktype, v, d)
            for k in range(b.n):
                self.emit(1, b.data + b.offset[k], b.caplen[k], b.origlen[k], ts, iface, linktype, b.verdict[k], d)
            h = self.real_host(d)
            if h >= 0:
                self.to_real(h, d, after, m, morig, n, parsed, &info, ts, iface, linktype, ahead)
                for k in range(1, b.n):             # the pieces the switch cut it into, or fragments released
                    if b.verdict[k] == V_MORE:      # after it: the host reassembles them (b is this depth's own)
                        parse_packet(b.data + b.offset[k], b.caplen[k], b.caplen[k], linktype, &info)
                        self.to_real(h, d, b.data + b.offset[k], b.caplen[k], b.caplen[k], 0, -1, &info, ts, iface,
                                     linktype, NULL)
        elif v == V_REPLY or v == V_ANSWER:     # real -> client, SNAT
            for k in range(b.n):
                if self.clients is not None:
                    self.clients.receive(b.data + b.offset[k], b.caplen[k], linktype, ts)
                self.emit(0, b.data + b.offset[k], b.caplen[k], b.origlen[k], ts, iface, linktype, b.verdict[k], d)
            self.emit(1, self.cur, n, origlen, ts, iface, linktype, v, d)
            if from_host and self.restamp:
                if m != n or not segment_after(after, m, morig, parsed, &info, &seg):
                    readable = read_segment(after, m, linktype, &info, &seg)
                else:
                    readable = True
                if readable:
                    self.stamp_server(&seg)
        else:                                   # passed untouched: maybe straight to or from a host
            readable = (segment_after(self.cur, n, origlen, parsed, &info, &seg)
                        or read_segment(self.cur, n, linktype, &info, &seg))
            h = self.hosts.host_of(seg.dst, seg.family) if readable else -1
            if not readable and not from_host and n and info.fragment:     # a fragment straight to a host
                h = self.hosts.host_of(info.key.dst, info.key.family)
            if from_host and self.clients is not None:
                self.clients.receive(self.cur, n, linktype, ts)     # e.g. a RST no flow owns
            self.emit_outside(b, rebuilt, n, origlen, ts, iface, linktype, v, d)
            if h >= 0 or from_host:
                self.emit(1, self.cur, n, origlen, ts, iface, linktype, v, d)
            if from_host and self.restamp and readable:
                self.stamp_server(&seg)
            if h >= 0 and not from_host and readable:
                self.deliver(h, self.cur, n, ts, iface, linktype, &seg, &info, same_client(ahead, &seg))
            elif h >= 0 and not from_host:      # it waits for its datagram, which the host then reads
                m = n
                after = self.reassembled(h, self.cur, &m, info.l3, linktype, ts)
                if after != NULL:
                    self.deliver(h, after, m, ts, iface, linktype, NULL, NULL, 0)
        return 0

    cdef Batch deeper_step(self):
        """The step batch of this depth (an answer through the switch while a shallower step is delivered)."""
        while len(self.deeper) < self.depth - 1:
            self.deeper.append(Batch(STEP_SLOTS, SCRATCH_BYTES))
        return <Batch>self.deeper[self.depth - 2]

    cdef int to_real(self, int h, int32_t d, uint8_t* frame, uint32_t m, uint32_t morig, uint32_t n, int parsed,
                     PacketInfo* info, uint64_t ts, uint16_t iface, uint16_t linktype, Ahead* ahead) except -1:
        """What the switch sent real d (m bytes; n as it came) to its host h: a fragment waits for its
        datagram; under tun the real takes the inner packet out of the tunnel; under dr and tun it owns
        the VIP, so it takes the packet as addressed to itself. `parsed`: the datapath's parse of it
        before the rewrite (-1: none to go by)."""
        cdef Real* real = &self.dp.t.reals[d]
        cdef Seg seg
        cdef bint readable
        cdef uint32_t l3 = info.l3, at
        cdef uint8_t* got = self.reassembled(h, frame, &m, l3, linktype, ts)
        if got == NULL:
            return 0                            # its datagram is not whole yet (or was given up, counted)
        if got != frame:
            frame, parsed, n = got, -1, 0       # the whole datagram: parsed afresh
        if real.forward == FWD_TUN:
            at = inner_offset(frame + l3, m - l3) if l3 < m else 0
            if at == 0:                         # not a tunnel packet it can take apart
                self.hosts.count(h, C_UNREADABLE, 1)
                return 0
            memcpy(self.after, frame, l3)       # the link header (same family inside and out: config)
            memcpy(self.after + l3, frame + l3 + at, m - l3 - at)
            frame, m = self.after, m - at
            frame = self.reassembled(h, frame, &m, l3, linktype, ts)     # a fragment inside the tunnel
            if frame == NULL:
                return 0
            readable = read_segment(frame, m, linktype, info, &seg)
        elif m == n:
            readable = (segment_after(frame, m, morig, parsed, info, &seg)
                        or read_segment(frame, m, linktype, info, &seg))
        else:                                   # it grew (TOA) or was cut: parsed afresh
            readable = read_segment(frame, m, linktype, info, &seg)
        if (readable and (real.forward == FWD_DR or real.forward == FWD_TUN)
                and seg.family == self.hosts.hosts[h].family):
            seg.dst = self.hosts.hosts[h].addr  # the VIP is the real's own (a loopback alias, arp hidden)
        self.deliver(h, frame, m, ts, iface, linktype, &seg if readable else NULL, info if readable else NULL,
                     same_client(ahead, &seg) if readable else 0)
        return 0

    cdef uint8_t* reassembled(self, int h, uint8_t* frame, uint32_t* m, uint32_t l3, uint16_t linktype,
                              uint64_t ts) except? NULL:
        """What host h's TCP/UDP stack gets of a packet (m[0] bytes, its IP header at l3): the packet
        itself; NULL for a fragment whose datagram is not whole yet, or was given up (counted); the whole
        datagram (in `whole`, m[0] set) when this fragment completes it (Linux's ip_defrag)."""
        cdef PacketInfo info
        cdef int r
        cdef uint32_t size
        cdef uint8_t* grown
        cdef Host* host = &self.hosts.hosts[h]
        if m[0] < l3 + 20 or not (frame[l3] >> 4 == 4 and load16(frame + l3 + IP4_FRAG_AT) & IP4_FRAG_BITS
                                  or frame[l3] >> 4 == 6 and frame[l3 + IP6_NEXT_AT] != IPPROTO_TCP
                                  and frame[l3 + IP6_NEXT_AT] != IPPROTO_UDP):
            return frame                        # the common case, decided without a parse
        if parse_packet(frame, m[0], m[0], linktype, &info) != PARSE_FRAGMENT:
            return frame
        if info.key.family == host.family:      # the host's own datagrams: a dr or tun real takes the VIP's
            memcpy(info.key.dst, host.addr, 16)
        r = self.defrag.add(frame, &info, m[0], linktype, ts)
        if r != RQ_COMPLETE:
            if r != RQ_QUEUED:
                self.fragments_dropped += 1
            return NULL
        size = self.defrag.size()
        if size > self.whole_cap:
            grown = <uint8_t*>realloc(self.whole, size)
            if grown == NULL or self._room(size) < 0:     # `after` takes a tunnel's inner packet out of it
                if grown != NULL:
                    self.whole = grown
                self.defrag.build(NULL)
                raise MemoryError()
            self.whole, self.whole_cap = grown, size
        self.defrag.build(self.whole)
        self.defrag.release()
        m[0] = size
        return self.whole

    def host_reassembly(self):
        """The hosts' reassembly: Linux's Reasm* counters and the memory held, and fragments refused."""
        return {**self.defrag.counters(), "fragments_dropped": self.fragments_dropped}

    cdef int deliver(self, int h, const uint8_t* frame, uint32_t n, uint64_t ts, uint16_t iface, uint16_t linktype,
                     Seg* read, PacketInfo* read_info, uint32_t conn_hash) except -1:
        """A packet to host h (`read`: the segment in it, when the caller has it; `conn_hash`: its client
        half's hash in the connection table, 0: not known); its answers back through the datapath."""
        cdef PacketInfo info
        cdef Seg seg
        cdef uint32_t first
        cdef int r
        if read == NULL:
            if not read_segment(frame, n, linktype, &info, &seg):
                self.hosts.count(h, C_UNREADABLE, 1)    # snapped, fragmented or not TCP/UDP: nothing to read
                return 0
            read, read_info = &seg, &info
        if self.depth >= MAX_DEPTH:
            return 0
        first = self.hosts.n_out
        r = self.hosts.receive(h, read, ts, linktype, iface, frame, read_info.l3, conn_hash)
        self.depth += 1
        try:
            self.send_answers(first, ts, False, r)
        finally:
            self.depth -= 1
        self.hosts.truncate(first)
        return 0

    cdef int send_answers(self, uint32_t first, uint64_t ts, bint stamped, int to_peer) except -1:
        """The hosts' answers first.. (to the step's end) back through the datapath: the k-th at ts + k us,
        or (`stamped`, the clocks' answers) each 1 us after its own moment. Answers to one received
        packet all go to its sender, whose Peer record is `to_peer` (-1: look each one up)."""
        cdef uint32_t j, last = self.hosts.n_out, plen, hlen
        cdef const uint8_t* pkt
        cdef Peer* peer
        cdef uint16_t linktype, iface
        cdef uint64_t at
        for j in range(first, last):
            pkt = self.hosts.out_data + self.hosts.out_off[j]
            plen = self.hosts.out_len[j]
            if to_peer >= 0:
                peer = <Peer*>rec(&self.hosts.peers, to_peer)
            elif pkt[0] >> 4 == 4:
                peer = self.hosts.peer_of(pkt + IP4_SRC + 4, 4)
            else:
                peer = self.hosts.peer_of(pkt + IP6_SRC + 16, 6)
            if peer != NULL and peer.has_link:
                linktype, iface, hlen = peer.linktype, peer.iface, peer.hdr_len
            else:
                linktype, iface, hlen = LINKTYPE_RAW, 0, 0
            if self._room(hlen + plen) < 0:
                continue
            if hlen:
                memcpy(self.cur, peer.hdr, hlen)
            memcpy(self.cur + hlen, pkt, plen)
            self.answers += 1
            if stamped:
                at = self.hosts.out_at[j] + REPLY_GAP_NS
            else:
                at = ts + (j - first + 1) * REPLY_GAP_NS
            if self.any_direct and self.answer_direct(self.cur + hlen, plen, hlen, iface, linktype, at):
                continue
            self.through(hlen + plen, hlen + plen, iface, linktype, at, True)
        return 0

    cdef bint answer_direct(self, uint8_t* ip, uint32_t plen, uint32_t hlen, uint16_t iface, uint16_t linktype,
                            uint64_t at) except -1:
        """A dr or tun real's answer (in `cur` after its hlen-byte link header): from the VIP, straight to
        the client, past the switch; False when it is not one (the switch's reply path takes it)."""
        cdef int h, k
        cdef int32_t r
        cdef uint32_t l4
        cdef uint8_t proto
        cdef PacketInfo info
        cdef Seg seg
        if plen < 20 or ip[0] >> 4 != 4 and (ip[0] >> 4 != 6 or plen < 48):
            return False
        l4, proto = (20, ip[9]) if ip[0] >> 4 == 4 else (40, ip[6])
        if not (proto == IPPROTO_TCP or proto == 17) or plen < l4 + 8:
            return False
        h = self.hosts.host_of(ip + IP4_SRC if l4 == 20 else ip + IP6_SRC, 4 if l4 == 20 else 6)
        if h < 0:
            return False
        k = self.hosts.socket_of(h, (ip[l4] << 8) | ip[l4 + 1],
                                 PROTO_KEY_TCP if proto == IPPROTO_TCP else PROTO_KEY_UDP)
        if k < 0:
            return False
        r = self.direct_tcp[k] if proto == IPPROTO_TCP else self.direct_udp[k]
        if r < 0:
            return False
        answer_from(ip, self.dp.t.services[self.dp.t.reals[r].service].vip)
        self.direct += 1
        if at < self.last_ts:
            at = self.last_ts
        self.last_ts = at
        if self.clients is not None:
            self.clients.receive(self.cur, hlen + plen, linktype, at)
        self.emit(0, self.cur, hlen + plen, hlen + plen, at, iface, linktype, V_PASS, 0)
        self.emit(1, self.cur, hlen + plen, hlen + plen, at, iface, linktype, V_PASS, 0)
        if self.restamp and read_segment(self.cur, hlen + plen, linktype, &info, &seg):
            self.stamp_server(&seg)
        return True

    cdef int emit_outside(self, Batch b, bint rebuilt, uint32_t n, uint32_t origlen, uint64_t ts, uint16_t iface,
                          uint16_t linktype, uint8_t v, int32_t d) except -1:
        """The whole conversation's view of a step: the packet in `cur` as it came or, when the switch
        rebuilt a datagram or released fragments that waited for their first (`rebuilt`), every slot of
        `b` as the switch writes them, as a replay without hosts does (the earlier fragments were held)."""
        cdef Py_ssize_t k
        if not rebuilt:
            return self.emit(0, self.cur, n, origlen, ts, iface, linktype, v, d)
        for k in range(b.n):
            self.emit(0, b.data + b.offset[k], b.caplen[k], b.origlen[k], ts, iface, linktype, b.verdict[k], d)
        return 0

    cdef inline int emit(self, int k, const uint8_t* frame, uint32_t n, uint32_t origlen, uint64_t ts,
                         uint16_t iface, uint16_t linktype, uint8_t verdict, int32_t detail) except -1:
        """A packet into view k (0: outside, 1: inside), when that view is kept."""
        if k == 0:
            if self.outside is not None:
                return self.emit_to(self.outside, self.outside_sink, frame, n, origlen, ts, iface, linktype,
                                    verdict, detail)
        elif self.inside is not None:
            return self.emit_to(self.inside, self.inside_sink, frame, n, origlen, ts, iface, linktype,
                                verdict, detail)
        return 0

    cdef int emit_to(self, Batch b, sink, const uint8_t* frame, uint32_t n, uint32_t origlen, uint64_t ts,
                     uint16_t iface, uint16_t linktype, uint8_t verdict, int32_t detail) except -1:
        cdef int r = b.push(frame, n, origlen, ts, iface, linktype)
        if r == 1:
            sink(b)                             # full: handed over whole, then emptied
            b.clear()
            r = b.push(frame, n, origlen, ts, iface, linktype)
        if r == 0:
            b.verdict[b.n - 1] = verdict
            b.detail[b.n - 1] = detail
        return 0

    # ---- re-stamping: the clients' ACKs in the emulated server's sequence space -------------------
    cdef void stamp_client(self, PacketInfo* info, Seg* seg, Ahead* ahead) noexcept:
        """The client's packet (in `cur`) with its ACK number in the emulated server's space (`ahead`:
        its key hashed ahead, taken when the key is the same)."""
        cdef StampKey key
        cdef int r
        cdef Stamp* s
        cdef uint32_t nxt = 0
        cdef bint known = False
        cdef uint8_t fins = 0
        cdef uint32_t h
        stamp_key(&key, seg, True)
        if ahead != NULL and ahead.stamp_hash and memcmp(&ahead.stamp_key, &key, sizeof(StampKey)) == 0:
            self.hashed_key, self.hashed = key, ahead.stamp_hash     # hashed ahead: the answers' key too
            h = ahead.stamp_hash
        else:
            h = self.stamp_hash(&key)
        r = slab_find_hashed(&self.stamps, &key, h)
        if seg.flags & TCP_SYN and not seg.flags & TCP_ACK:
            if r >= 0:
                slab_remove(&self.stamps, r)    # a new connection on this pair: forget the old one
            return
        if r >= 0:
            s = <Stamp*>rec(&self.stamps, r)
            nxt, known, fins = s.sent, s.has_sent, s.fins
        if seg.flags & TCP_RST or (fins & SERVER_FIN and (fins | (CLIENT_FIN if seg.flags & TCP_FIN else 0))
                                   == SERVER_FIN | CLIENT_FIN):
            if r >= 0:
                slab_remove(&self.stamps, r)    # the connection's last client packet
        elif seg.flags & TCP_FIN:
            if r < 0:
                r = slab_add_hashed(&self.stamps, &key, h)
            if r >= 0:
                (<Stamp*>rec(&self.stamps, r)).fins = fins | CLIENT_FIN
        if known and seg.flags & TCP_ACK:
            rewrite_ack(self.cur, info, seg, nxt)

    cdef uint32_t stamp_hash(self, StampKey* key) noexcept:
        """The key's hash in the re-stamping table, computed once for a run of packets of one connection:
        the switch's hash of the client's packets of that connection (read_ahead takes theirs)."""
        cdef PacketKey flow
        if not self.hashed or memcmp(key, &self.hashed_key, sizeof(StampKey)) != 0:
            self.hashed_key = key[0]
            memcpy(flow.src, key.client, 16)
            memcpy(flow.dst, key.server, 16)
            flow.sport, flow.dport, flow.proto, flow.family = key.cport, key.sport, IPPROTO_TCP, key.family
            self.hashed = <uint32_t>key_hash(self.dp.table, &flow)
        return self.hashed

    cdef void stamp_server(self, Seg* seg) noexcept:
        """Learn from an emulated server's packet, taken as the client receives it (after SNAT)."""
        cdef StampKey key
        cdef int r
        cdef Stamp* s
        cdef uint32_t end, h
        if seg.proto != IPPROTO_TCP or seg.flags & TCP_RST:
            return
        end = (seg.seq + seg.plen + (1 if seg.flags & TCP_SYN else 0) + (1 if seg.flags & TCP_FIN else 0))
        stamp_key(&key, seg, False)
        h = self.stamp_hash(&key)
        r = slab_find_hashed(&self.stamps, &key, h)
        s = <Stamp*>rec(&self.stamps, r) if r >= 0 else NULL
        if (s == NULL or not s.has_sent) and not seg.flags & TCP_SYN:
            return                              # a connection already forgotten (or never re-stamped)
        if s == NULL:
            r = slab_add_hashed(&self.stamps, &key, h)
            if r < 0:
                return
            s = <Stamp*>rec(&self.stamps, r)
        if not s.has_sent or seg.flags & TCP_SYN or <uint32_t>(end - s.sent) <= 0x7FFFFFFF:
            s.sent = end
            s.has_sent = 1
        if seg.flags & TCP_FIN:
            s.fins |= SERVER_FIN


cdef inline uint32_t same_client(Ahead* ahead, Seg* seg) noexcept:
    """The connection table's hash read_ahead() made of the client's packet, if `seg` still has its
    client address and port (0: not known)."""
    if (ahead == NULL or not ahead.conn_hash or seg.family != ahead.info.key.family
            or seg.sport != ahead.info.key.sport
            or memcmp(seg.src, ahead.info.key.src, 4 if seg.family == 4 else 16) != 0):
        return 0
    return ahead.conn_hash


cdef bint first_fragment_segment(const uint8_t* p, uint32_t caplen, PacketInfo* info, Seg* seg) noexcept:
    """The TCP header of a first fragment a fragment policy takes (classify: PARSE_FRAGMENT, or PARSED for
    track's), whole within the fragment; False for anything else."""
    cdef uint32_t l4 = info.l4, stop = min(info.end, caplen), doff
    if not info.fragment or info.frag_offset or info.key.proto != IPPROTO_TCP or l4 + 20 > stop:
        return False
    doff = (p[l4 + 12] >> 4) * 4
    if doff < 20 or l4 + doff > stop:
        return False
    seg.src, seg.dst = info.key.src, info.key.dst
    seg.sport, seg.dport = load16(p + l4), load16(p + l4 + 2)
    seg.family, seg.proto, seg.ip = info.key.family, IPPROTO_TCP, p + info.l3
    seg.flags = p[l4 + 13]
    seg.seq = (<uint32_t>p[l4 + 4] << 24) | (<uint32_t>p[l4 + 5] << 16) | (<uint32_t>p[l4 + 6] << 8) | p[l4 + 7]
    seg.ack = (<uint32_t>p[l4 + 8] << 24) | (<uint32_t>p[l4 + 9] << 16) | (<uint32_t>p[l4 + 10] << 8) | p[l4 + 11]
    seg.window = load16(p + l4 + 14)
    seg.options, seg.olen = p + l4 + 20, doff - 20
    seg.payload, seg.plen = p + l4 + doff, stop - l4 - doff
    seg.ip_len = info.end - info.l3
    return True


cdef void rewrite_ack(uint8_t* p, PacketInfo* info, Seg* seg, uint32_t ack) noexcept:
    """A new acknowledgement number, SACK blocks and timestamps turned into NOPs (they count in the
    other side's sequence space, which is not mapped), and the TCP checksum computed afresh; in a
    first fragment (the rest of the segment elsewhere), updated by RFC 1624 instead."""
    cdef uint32_t l4 = info.l4, i = 0, length, alen = 4 if seg.family == 4 else 16
    cdef uint32_t olen = seg.olen, tlen = info.end - info.l4, acc
    cdef uint8_t* opts = p + l4 + 20
    cdef uint8_t kind
    cdef uint8_t old[TCP_MAX_HEADER]
    if info.fragment:
        memcpy(old, p + l4, 20 + olen)
    p[l4 + 8] = <uint8_t>(ack >> 24)
    p[l4 + 9] = <uint8_t>(ack >> 16)
    p[l4 + 10] = <uint8_t>(ack >> 8)
    p[l4 + 11] = <uint8_t>ack
    while i < olen:
        kind = opts[i]
        if kind == TCPOPT_EOL:
            break
        if kind == TCPOPT_NOP:
            i += 1
            continue
        if i + 1 >= olen or opts[i + 1] < 2 or i + opts[i + 1] > olen:
            break
        length = opts[i + 1]
        if kind == TCPOPT_SACK or kind == TCPOPT_TIMESTAMP:
            memset(opts + i, TCPOPT_NOP, length)
        i += length
    if info.fragment:
        apply_diff(p + l4 + TCP_CSUM, diff_words(0, old, p + l4, 20 + olen))
        return
    store16(p + l4 + TCP_CSUM, 0)
    acc = sum_bytes(sum_bytes(0, seg.src, alen), seg.dst, alen) + IPPROTO_TCP + (tlen >> 16) + (tlen & 0xFFFF)
    store16(p + l4 + TCP_CSUM, ~fold(sum_bytes(acc, p + l4, tlen)) & 0xFFFF)
