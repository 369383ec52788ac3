"""The emulated hosts in C: sockets, handles, listen queues, TCP, apps, timers; no Python object per connection.

A host is one real server's address and every socket on it. Handles are numbered as POSIX file
descriptors are: the lowest free number on the host (a min-heap), reused after close; 0, 1 and 2
stand for stdin, stdout and stderr, so the first socket is 3. Connections are fixed-size records in
one keyed table (_table.pxd); their deadlines (TIME-WAIT, a stale half-open request) sit in one
timer heap, so no step ever scans the connections. Answers are IP packets left in the step's output
(out_*), which the emulate loop sends back through the datapath. The TCP rules are in _tcp.pxi, the
applications in _apps.pxi, reading and building packets in _wire.pxi.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t, UINT64_MAX
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memchr, memcmp, memcpy, memmove, memset
from l4emu.datapath._types cimport PacketInfo, NS
from l4emu.datapath._wire cimport *
from l4emu.datapath._headers cimport parse_packet, PARSED
from l4emu.datapath._checksum cimport load16, store16, sum_bytes, fold
from libc.math cimport llround, log
from libc.stdio cimport snprintf
from l4emu.clients._random cimport (DIST_EMPIRICAL, DIST_EXPONENTIAL, DIST_FIXED, DIST_LOGNORMAL, Dist,
                                    dist_sample, rng_seed)
from l4emu.datapath._types cimport name_table
from l4emu.datapath._siphash cimport siphash13
from l4emu.hosts._mt cimport MT, mt_from_random, mt_next32
from l4emu.hosts._table cimport (slab_init, slab_free, slab_find, slab_find_hashed, slab_add, slab_add_hashed,
                                 slab_remove, slab_bytes, rec, key_hash32, MIN_RECORDS)

include "_wire.pxi"
include "_apps.pxi"
include "_tcp.pxi"
include "_udp.pxi"
include "_dns.pxi"

FIRST_HANDLE = FIRST_FD
STATE_NAMES = name_table({
    T_CLOSED: "CLOSED", T_SYN_RECV: "SYN-RECV", T_ESTAB: "ESTAB", T_FIN_WAIT_1: "FIN-WAIT-1",
    T_FIN_WAIT_2: "FIN-WAIT-2", T_CLOSING: "CLOSING", T_TIME_WAIT: "TIME-WAIT", T_CLOSE_WAIT: "CLOSE-WAIT",
    T_LAST_ACK: "LAST-ACK",
}, N_TCP_STATES, "TcpState")
COUNTER_NAMES = name_table({
    C_SEGMENTS_IN: "segments_in", C_SEGMENTS_OUT: "segments_out", C_RESETS_SENT: "resets_sent",
    C_RESETS_RECEIVED: "resets_received", C_CLOSED_PORT: "closed_port", C_SYNS: "syns",
    C_LISTEN_DROPS: "listen_drops", C_LISTEN_OVERFLOWS: "listen_overflows", C_ACCEPTED: "accepted",
    C_OUT_OF_ORDER: "out_of_order", C_SYN_RECV_EXPIRED: "syn_recv_expired", C_TIME_WAIT_ENDED: "time_wait_ended",
    C_NOT_FOR_US: "not_for_us", C_UDP_CLOSED_PORT: "udp_closed_port", C_DATAGRAMS_OUT: "datagrams_out",
    C_UNREADABLE: "unreadable", C_UDP_RCVBUF_ERRORS: "udp_rcvbuf_errors", C_DNS_QUERIES: "dns_queries",
    C_DNS_BAD_LENGTH: "dns_bad_length", C_DNS_UNANSWERED: "dns_unanswered", C_DNS_QUERY_LIMIT: "dns_query_limit",
    C_DNS_IDLE_CLOSED: "dns_idle_closed", C_DNS_CONN_LIMIT: "dns_conn_limit", C_DNS_ORPHANS_ENDED: "dns_orphans_ended",
}, N_COUNTERS, "Counter")
APPS = name_table({APP_HTTP: "http", APP_ECHO: "echo", APP_DISCARD: "discard", APP_DNS: "dns"}, N_APPS, "AppKind")
# An HTTP listener's answers, each rendered once (status, reason, Connection: close).
RESPONSES = {R_OK: (200, "OK", False), R_OK_CLOSE: (200, "OK", True), R_BAD: (400, "Bad Request", True),
             R_TOO_LARGE: (431, "Request Header Fields Too Large", True)}

cdef enum:
    FIRST_FD = 3
    OUT_SLOTS = 64
    OUT_BYTES = 1 << 16
    ETHER_ADDR_LEN = 6
    ETHER_HEADER_LEN = 14
    CONN_KEY_WORDS = 3      # sizeof(ConnKey) // 8 (checked in Engine.__cinit__)

# The hashed bits of ConnKey's last word (little-endian): the peer's port and family, not the host's
# side (host, port), so that a connection's hash is known from the client's packet alone.
cdef uint64_t CONN_HASHED = 0xFFFFFFFF


cdef struct SockKey:
    uint32_t host
    uint16_t port
    uint16_t proto          # PROTO_KEY_*


cdef struct SockRec:
    SockKey key
    uint32_t hash
    uint32_t index          # into listeners or udps


cdef struct AddrKey:
    uint8_t addr[16]
    uint8_t family
    uint8_t pad[7]


cdef inline void addr_key(AddrKey* key, const uint8_t* addr, uint8_t family) noexcept:
    """The key of a host's or a client's address (IPv4 in the first four bytes, the rest zero)."""
    memset(key, 0, sizeof(AddrKey))
    memcpy(key.addr, addr, 4 if family == 4 else 16)
    key.family = family


cdef struct AddrRec:
    AddrKey key
    uint32_t hash
    uint32_t host


def http_response(int code, str reason, bint close, str name):
    """The bytes of one HTTP answer naming the backend (what a listener's template holds)."""
    body = f"served by {name}\n".encode()
    return (f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            + ("Connection: close\r\n" if close else "") + "\r\n").encode() + body


DIST_KINDS = {"fixed": DIST_FIXED, "exponential": DIST_EXPONENTIAL, "lognormal": DIST_LOGNORMAL,
              "empirical": DIST_EMPIRICAL}


cdef int set_dist(Dist* d, spec) except -1:
    """A distribution from (kind, mean, sigma, values); an empirical one's values are the listener's own."""
    cdef Py_ssize_t i
    cdef double* values
    kind, mean, sigma, given = spec
    d.kind = DIST_KINDS[kind]
    d.mean, d.sigma = mean, sigma
    d.mu = log(mean) - sigma * sigma / 2 if mean > 0 else 0
    d.n_values = len(given)
    d.values = NULL
    if d.n_values:
        values = <double*>malloc(d.n_values * sizeof(double))
        if values == NULL:
            raise MemoryError()
        for i in range(d.n_values):
            values[i] = given[i]
        d.values = values
    return 0


cdef inline uint8_t* copy_bytes(bytes data) except? NULL:
    cdef uint8_t* p = <uint8_t*>malloc(max(len(data), 1))
    if p == NULL:
        raise MemoryError()
    memcpy(p, <const char*>data, len(data))
    return p


cdef class Engine:
    """Every emulated host of a config; the emulate loop drives it, Python sets it up and reads snapshots."""

    def __cinit__(self, bytes secret):
        cdef uint64_t k0, k1
        if len(secret) != 16:
            raise ValueError("the secret is 16 bytes")
        if sizeof(ConnKey) != CONN_KEY_WORDS * 8:
            raise SystemError("ConnKey is not CONN_KEY_WORDS words long")
        k0 = int.from_bytes(secret[:8], "little")
        k1 = int.from_bytes(secret[8:], "little")
        if (slab_init(&self.by_address, sizeof(AddrRec), sizeof(AddrKey) // 8, k0, k1) < 0
                or slab_init(&self.sockets, sizeof(SockRec), sizeof(SockKey) // 8, k0, k1) < 0
                or slab_init(&self.conns, sizeof(Conn), CONN_KEY_WORDS, k0, k1) < 0
                or slab_init(&self.peers, sizeof(Peer), 3, k0, k1) < 0):
            raise MemoryError()
        self.conns.last_mask = CONN_HASHED
        self.cur_peer = -1
        self.out_cap = OUT_BYTES
        self.out_slots = OUT_SLOTS
        self.out_data = <uint8_t*>malloc(self.out_cap)
        self.out_off = <uint64_t*>malloc(self.out_slots * sizeof(uint64_t))
        self.out_len = <uint32_t*>malloc(self.out_slots * sizeof(uint32_t))
        self.out_at = <uint64_t*>malloc(self.out_slots * sizeof(uint64_t))
        if not (self.out_data and self.out_off and self.out_len and self.out_at):
            raise MemoryError()

    def __dealloc__(self):
        cdef uint32_t k, r
        cdef Conn* c
        for k in range(self.conns.top):
            c = <Conn*>rec(&self.conns, k)
            if c.state != T_CLOSED:
                free_bufs(c)
        for k in range(self.n_hosts):
            free(self.hosts[k].free_handles)
        for k in range(self.n_listeners):
            for r in range(N_RESPONSES):
                free(self.listeners[k].responses[r])
            free(self.listeners[k].body_text)
            free(<void*>self.listeners[k].service.values)
            free(<void*>self.listeners[k].response.values)
        for k in range(self.n_udps):
            free(self.udps[k].text)
            free(<void*>self.udps[k].service.values)
            free(<void*>self.udps[k].response.values)
        free(self.jobs)
        free(self.uj_when)
        free(self.uj_job)
        free(self.hosts)
        free(self.isn)
        free(self.listeners)
        free(self.udps)
        free(self.real_host)
        free(self.prune)
        free(self.t_when)
        free(self.t_conn)
        free(self.out_data)
        free(self.out_off)
        free(self.out_len)
        free(self.out_at)
        slab_free(&self.by_address)
        slab_free(&self.sockets)
        slab_free(&self.conns)
        slab_free(&self.peers)

    # ---- set-up (Python, once per config) ------------------------------------------------------
    def add_host(self, bytes address, rng):
        """A host with this address (4 or 16 bytes) and its generator of initial sequence numbers (a
        random.Random: the host draws from a copy of its state in C, getrandbits(32) each)."""
        cdef AddrKey key
        cdef int r
        cdef Host* h
        memset(&key, 0, sizeof(key))
        memcpy(key.addr, <const char*>address, len(address))
        key.family = 4 if len(address) == 4 else 6
        if slab_find(&self.by_address, &key) >= 0:
            raise ValueError("one host per address")
        grown = <Host*>realloc(self.hosts, (self.n_hosts + 1) * sizeof(Host))
        if grown == NULL:
            raise MemoryError()
        self.hosts = grown
        isn = <MT*>realloc(self.isn, (self.n_hosts + 1) * sizeof(MT))
        if isn == NULL:
            raise MemoryError()
        self.isn = isn
        mt_from_random(&self.isn[self.n_hosts], rng)
        h = &self.hosts[self.n_hosts]
        memset(h, 0, sizeof(Host))
        memcpy(h.addr, key.addr, 16)
        h.family = key.family
        h.next_handle = FIRST_FD
        r = slab_add(&self.by_address, &key)
        if r < 0:
            raise MemoryError()
        (<AddrRec*>rec(&self.by_address, r)).host = self.n_hosts
        last = key.addr[3 if key.family == 4 else 15]
        self.addr_filter[last >> 3] |= 1 << (last & 7)
        self.n_hosts += 1
        return self.n_hosts - 1

    def set_dns(self, answer):
        """The "dns" listeners' answers: answer(query, client, host address, port) -> bytes, or None to
        close the connection (packed addresses; _dns.pxi). Not set: every DNS message closes its connection."""
        self.dns = answer

    def set_reals(self, hosts):
        """Per real of the switch (config order): its host's number, or None when it is not emulated."""
        self.real_host = <int32_t*>realloc(self.real_host, max(len(hosts), 1) * sizeof(int32_t))
        if self.real_host == NULL:
            raise MemoryError()
        for k, h in enumerate(hosts):
            self.real_host[k] = -1 if h is None else h
        self.n_reals = len(hosts)

    cdef int _socket(self, uint32_t host, uint16_t port, uint16_t proto, uint32_t index) except -1:
        cdef SockKey key
        cdef int r
        memset(&key, 0, sizeof(key))
        key.host, key.port, key.proto = host, port, proto
        if slab_find(&self.sockets, &key) >= 0:
            return 0
        r = slab_add(&self.sockets, &key)
        if r < 0:
            raise MemoryError()
        (<SockRec*>rec(&self.sockets, r)).index = index
        return 1

    def listen(self, uint32_t host, uint16_t port, str app, uint32_t backlog, uint64_t interval_ns,
               bint abort_on_overflow, str name, uint32_t workers=0, service=None, response=None,
               uint64_t seed64=0):
        """listen(2) on a port of a host (the first setting of a port stays), taking the lowest free handle.
        Capacity: `workers` (0: every request answered at once), `service` and `response` as
        (kind, mean, sigma, values) distributions (seconds; body bytes), drawn from `seed64`."""
        cdef Listener* lst
        if self._socket(host, port, PROTO_KEY_TCP, self.n_listeners) == 0:
            return
        grown = <Listener*>realloc(self.listeners, (self.n_listeners + 1) * sizeof(Listener))
        if grown == NULL:
            raise MemoryError()
        self.listeners = grown
        lst = &self.listeners[self.n_listeners]
        memset(lst, 0, sizeof(Listener))
        lst.host, lst.port, lst.app, lst.backlog = host, port, APPS.index(app), backlog
        lst.interval_ns, lst.abort_on_overflow = interval_ns, abort_on_overflow
        for kind, (code, reason, close) in RESPONSES.items():
            text = http_response(code, reason, close, name)
            lst.responses[kind] = copy_bytes(text)
            lst.response_len[kind] = len(text)
        lst.handle = take_handle(&self.hosts[host])
        lst.workers = workers
        lst.sized = response is not None
        rng_seed(&lst.rng, seed64)
        set_dist(&lst.service, service or ("fixed", 0.0, 0.0, ()))
        set_dist(&lst.response, response or ("fixed", 0.0, 0.0, ()))
        body = f"served by {name}\n".encode()
        lst.body_text = copy_bytes(body)
        lst.body_text_len = len(body)
        self.n_listeners += 1

    def capacity(self):
        """Per listener with workers, in config order: (host, port, workers, served, waited, longest wait
        queue, queue length now, busy now, time integrals of queue length and of busy workers in ns)."""
        cdef uint32_t k
        cdef Listener* lst
        rows = []
        for k in range(self.n_listeners):
            lst = &self.listeners[k]
            if lst.workers:
                rows.append((lst.host, lst.port, lst.workers, lst.served, lst.waited, lst.queue_max, lst.wq_len,
                             lst.busy, lst.queue_area, lst.busy_area))
        return rows

    def check_view(self, uint32_t real, uint16_t port):
        """What a health check of a real's host meets on `port` now (l4emu/emulated_checks.py), or None
        when nothing listens there: (app, SYN would be dropped, accept queue length, accept pace in ns,
        next accept from (ns), workers, busy workers, requests waiting for one, mean service time in s)."""
        cdef int h, k
        cdef Listener* lst
        if real >= self.n_reals or self.real_host[real] < 0:
            return None
        h = self.real_host[real]
        k = self.socket_of(h, port, PROTO_KEY_TCP)
        if k < 0:
            return None
        lst = &self.listeners[k]
        return (APPS[lst.app], accept_queue_full(lst) or syn_queue_full(lst), lst.accept_count, lst.interval_ns,
                lst.ready_ns, lst.workers, lst.busy, lst.wq_len, lst.service.mean)

    def bind_udp(self, uint32_t host, uint16_t port, str app, str name, uint32_t workers=0, service=None,
                 response=None, uint64_t seed64=0, uint32_t backlog=0):
        """bind(2) a UDP socket (the first setting of a port stays). Capacity (`workers` or `response`
        given) makes it request-reply (_udp.pxi): `service` and `response` as in listen(), `backlog`
        datagrams waiting for a worker at most."""
        cdef UdpSock* u
        if self._socket(host, port, PROTO_KEY_UDP, self.n_udps) == 0:
            return
        grown = <UdpSock*>realloc(self.udps, (self.n_udps + 1) * sizeof(UdpSock))
        if grown == NULL:
            raise MemoryError()
        self.udps = grown
        u = &self.udps[self.n_udps]
        memset(u, 0, sizeof(UdpSock))
        u.host, u.port, u.app = host, port, APPS.index(app)
        text = f"served by {name}\n".encode()
        u.text = copy_bytes(text)
        u.text_len = len(text)
        u.handle = take_handle(&self.hosts[host])
        if workers or response is not None:
            udp_capacity(u, workers, backlog, service, response, seed64)
        self.n_udps += 1

    def udp_capacity(self):
        """Per request-reply UDP socket with workers, in config order: (host, port, workers, served, waited,
        longest wait queue, queue length now, busy now, time integrals of queue length and of busy workers
        in ns, datagrams dropped by a full queue)."""
        cdef uint32_t k
        cdef UdpSock* u
        rows = []
        for k in range(self.n_udps):
            u = &self.udps[k]
            if u.sized and u.workers:
                rows.append((u.host, u.port, u.workers, u.served, u.waited, u.queue_max, u.wq_len, u.busy,
                             u.queue_area, u.busy_area, u.dropped))
        return rows

    # ---- lookups ----------------------------------------------------------------------------------
    cdef int host_of(self, const uint8_t* addr, uint8_t family) noexcept:
        cdef AddrKey key
        cdef int r
        cdef uint8_t last = addr[3 if family == 4 else 15]
        if not self.addr_filter[last >> 3] & (1 << (last & 7)):
            return -1
        addr_key(&key, addr, family)
        r = slab_find(&self.by_address, &key)
        return -1 if r < 0 else <int>(<AddrRec*>rec(&self.by_address, r)).host

    cdef int socket_of(self, uint32_t host, uint16_t port, uint16_t proto) noexcept:
        cdef SockKey key
        cdef int r
        memset(&key, 0, sizeof(key))
        key.host, key.port, key.proto = host, port, proto
        r = slab_find(&self.sockets, &key)
        return -1 if r < 0 else <int>(<SockRec*>rec(&self.sockets, r)).index

    cdef int conn_of(self, uint32_t host, const uint8_t* peer, uint8_t family, uint16_t peer_port,
                     uint16_t port, uint32_t conn_hash) noexcept:
        """The connection's record, or -1; `conn_hash`: client_hash of the same client half (0: not known)."""
        cdef ConnKey key
        memset(&key, 0, sizeof(key))
        key.host, key.port, key.peer_port, key.family = host, port, peer_port, family
        memcpy(key.peer, peer, 4 if family == 4 else 16)
        return slab_find_hashed(&self.conns, &key, conn_hash if conn_hash else key_hash32(&self.conns, &key))

    cdef uint32_t client_hash(self, const uint8_t* peer, uint8_t family, uint16_t peer_port) noexcept:
        """The connection table's hash of every connection of this client address and port: key_hash32
        of a ConnKey with no host side (its last word's hashed half is the client's, CONN_HASHED)."""
        cdef ConnKey key
        cdef uint64_t words[CONN_KEY_WORDS]
        memset(&key, 0, sizeof(key))
        memcpy(key.peer, peer, 4 if family == 4 else 16)
        key.peer_port, key.family = peer_port, family
        memcpy(words, &key, sizeof(key))        # as key_hash32 reads it (no aliasing of the struct)
        return <uint32_t>siphash13(self.conns.k0, self.conns.k1, words, CONN_KEY_WORDS)

    cdef Conn* conn(self, uint32_t k) noexcept:
        return <Conn*>rec(&self.conns, k)

    cdef void count(self, uint32_t h, int which, uint64_t by) noexcept:
        """Counter[name] += by, as Python's Counter: the name shows from then on, even for += 0."""
        self.hosts[h].counters[which] += by
        self.hosts[h].touched |= 1u << which

    # ---- clients' links (how answers go back), kept while the client has a connection ------------
    cdef Peer* peer_of(self, const uint8_t* addr, uint8_t family) noexcept:
        cdef AddrKey key
        cdef int r
        addr_key(&key, addr, family)
        r = slab_find(&self.peers, &key)
        return NULL if r < 0 else <Peer*>rec(&self.peers, r)

    cdef int note_link(self, const uint8_t* addr, uint8_t family) noexcept:
        """The client's Peer record, made when missing (-1: out of memory); the caller fills its link."""
        cdef AddrKey key
        cdef int r
        addr_key(&key, addr, family)
        r = slab_find(&self.peers, &key)
        if r >= 0:
            return r
        r = slab_add(&self.peers, &key)
        if r < 0:
            return -1
        (<Peer*>rec(&self.peers, r)).live = 1
        self._prune_later(<uint32_t>r)          # kept only if a connection holds it by the step's end
        return r

    cdef void _prune_later(self, uint32_t r) noexcept:
        cdef uint32_t* grown
        if self.n_prune == self.prune_cap:
            grown = <uint32_t*>realloc(self.prune, (self.prune_cap * 2 + 16) * sizeof(uint32_t))
            if grown == NULL:
                return                          # kept: the table is bounded by the clients then
            self.prune = grown
            self.prune_cap = self.prune_cap * 2 + 16
        self.prune[self.n_prune] = r
        self.n_prune += 1

    cdef void peer_ref(self, Conn* c, int by) noexcept:
        """A connection of the client's begins (+1: it keeps the client's link) or ends (-1)."""
        cdef int r
        cdef Peer* p
        if by > 0:
            r = self.cur_peer
            if (r < 0 or (<Peer*>rec(&self.peers, r)).family != c.key.family
                    or memcmp((<Peer*>rec(&self.peers, r)).addr, c.key.peer, 16) != 0):
                r = self.note_link(c.key.peer, c.key.family)
            c.peer = <uint32_t>(r + 1)
            if r >= 0:
                (<Peer*>rec(&self.peers, r)).refs += 1
            return
        if c.peer == 0:
            return
        p = <Peer*>rec(&self.peers, c.peer - 1)
        p.refs -= 1
        if p.refs == 0:
            self._prune_later(c.peer - 1)
        c.peer = 0

    cdef void prune_peers(self) noexcept:
        """At the end of a step: forget the links of clients left without a connection."""
        cdef uint32_t k
        cdef Peer* p
        for k in range(self.n_prune):
            p = <Peer*>rec(&self.peers, self.prune[k])
            if p.live and p.refs == 0:
                p.live = 0
                slab_remove(&self.peers, self.prune[k])
        self.n_prune = 0

    # ---- the step's output --------------------------------------------------------------------
    cdef uint8_t* reserve(self, uint32_t n) noexcept:
        """Room for one more answer of n bytes at the end of the output (NULL: out of memory)."""
        cdef uint64_t cap
        cdef uint32_t slots
        if self.n_out == self.out_slots:
            slots = self.out_slots * 2
            p1 = <uint64_t*>realloc(self.out_off, slots * sizeof(uint64_t))
            if p1 != NULL:
                self.out_off = p1
            p2 = <uint32_t*>realloc(self.out_len, slots * sizeof(uint32_t))
            if p2 != NULL:
                self.out_len = p2
            p3 = <uint64_t*>realloc(self.out_at, slots * sizeof(uint64_t))
            if p3 != NULL:
                self.out_at = p3
            if p1 == NULL or p2 == NULL or p3 == NULL:
                return NULL
            self.out_slots = slots
        if self.out_used + n > self.out_cap:
            cap = max(self.out_cap * 2, self.out_used + n)
            grown = <uint8_t*>realloc(self.out_data, cap)
            if grown == NULL:
                return NULL
            self.out_data = grown
            self.out_cap = cap
        self.out_off[self.n_out] = self.out_used
        self.out_len[self.n_out] = n
        self.out_at[self.n_out] = self.step_at
        self.out_used += n
        self.n_out += 1
        return self.out_data + self.out_off[self.n_out - 1]

    cdef void truncate(self, uint32_t n) noexcept:
        """Drop the answers from the n-th on (the loop has sent them)."""
        if n < self.n_out:
            self.n_out = n
            self.out_used = self.out_off[n] if n else 0

    # ---- one packet for a host ------------------------------------------------------------------
    cdef int receive(self, uint32_t h, Seg* seg, uint64_t now, uint16_t linktype, uint16_t iface,
                     const uint8_t* frame, uint32_t l3, uint32_t conn_hash) noexcept:
        """Everything host h sends in answer to one segment or datagram, left in the output; the sender's
        link (link type, interface, the header `frame[:l3]`) is kept for the answers. `conn_hash`: the
        segment's client_hash when the caller has it (0: not known). Returns the sender's Peer record
        (-1: none)."""
        cdef Host* host = &self.hosts[h]
        cdef uint32_t alen = 4 if host.family == 4 else 16
        cdef int s, c = -1, r = -1
        cdef UdpSock* u
        self.step_at = now
        if seg.proto == IPPROTO_TCP:
            if not conn_hash:
                conn_hash = self.client_hash(seg.src, seg.family, seg.sport)
            self.cur_hash = conn_hash
            c = self.conn_of(h, seg.src, seg.family, seg.sport, seg.dport, conn_hash)
            if c >= 0 and self.conn(c).peer:
                r = <int>self.conn(c).peer - 1     # the connection's client: no lookup by address
        if r < 0:
            r = self.note_link(seg.src, seg.family)
        if r >= 0:
            keep_link(<Peer*>rec(&self.peers, r), linktype, iface, frame, l3)
        self.cur_peer = r
        if seg.family != host.family or memcmp(seg.dst, host.addr, alen) != 0:
            self.count(h, C_NOT_FOR_US, 1)
        elif seg.proto == IPPROTO_TCP:
            tcp_segment(self, h, seg, now, c)
        else:
            s = self.socket_of(h, seg.dport, PROTO_KEY_UDP)
            host.ip_id += 1
            if s < 0:
                self.count(h, C_UDP_CLOSED_PORT, 1)
                port_unreachable(self, h, seg)
            else:
                u = &self.udps[s]
                u.received += 1
                if u.sized:
                    udp_request(self, h, <uint32_t>s, seg, now)
                elif u.app == APP_ECHO or u.app == APP_HTTP:
                    udp_answer(self, h, seg, seg.payload if u.app == APP_ECHO else u.text,
                               seg.plen if u.app == APP_ECHO else u.text_len)
                    u.answered += 1
                    self.count(h, C_DATAGRAMS_OUT, 1)
        self.cur_peer = -1
        return r

    # ---- the clocks -------------------------------------------------------------------------------
    cdef void advance(self, uint64_t now) noexcept:
        """Run the clocks to `now`, one event at a time in time order: accepts now due (each answer
        stamped with its accept's time; listeners in config order on ties, accepts before timers),
        services ending, TIME-WAIT and stale half-open requests ending (the timer heap)."""
        cdef uint32_t k, first = self.n_out, c = 0
        cdef int acc
        cdef uint64_t t_acc, when = 0
        cdef bint timed
        cdef Conn* conn
        while True:
            timed = timer_first(self, &when, &c)
            acc = -1
            t_acc = 0
            if self.waiting:
                for k in range(self.n_listeners):
                    if self.listeners[k].accept_count and (acc < 0 or self.listeners[k].ready_ns < t_acc):
                        acc, t_acc = k, self.listeners[k].ready_ns
            if acc >= 0 and t_acc <= now and (not timed or t_acc <= when):
                accept_due(self, acc, t_acc, True)
                continue
            if not timed or when > now:
                break
            conn = self.conn(c)
            if conn.work == W_SERVING:
                served(self, c, when)
                continue
            if conn.app == APP_DNS and conn.flags & CF_APP:
                dns_idle(self, c, when)
                continue
            if conn.app == APP_DNS and conn.state != T_SYN_RECV and conn.state != T_TIME_WAIT:
                dns_orphan_ended(self, c, when)
                continue
            self.step_at = when
            self.count(conn.key.host, C_SYN_RECV_EXPIRED if conn.state == T_SYN_RECV else C_TIME_WAIT_ENDED, 1)
            remove_conn(self, c)
        if self.n_uj:
            udp_advance(self, now)              # request-reply UDP services ending (_udp.pxi)
        if self.n_out > first + 1:
            sort_by_time(self, first)           # accepts' and services' answers, by their moments

    cdef uint64_t next_due(self) noexcept:
        """The earliest moment a clock of some host has something to do (UINT64_MAX: none)."""
        cdef uint64_t best = UINT64_MAX, when = 0
        cdef uint32_t k, c
        if self.waiting:
            for k in range(self.n_listeners):
                if self.listeners[k].accept_count and self.listeners[k].ready_ns < best:
                    best = self.listeners[k].ready_ns
        if timer_first(self, &when, &c) and when < best:
            best = when
        if self.n_uj and self.uj_when[0] < best:
            best = self.uj_when[0]
        return best

    def next_deadline(self):
        """The earliest moment a clock of some host has something to do, or None."""
        cdef uint64_t best = 0, when = 0
        cdef bint any_ = False
        cdef uint32_t k, c
        for k in range(self.n_listeners):
            if self.listeners[k].accept_count and (not any_ or self.listeners[k].ready_ns < best):
                best, any_ = self.listeners[k].ready_ns, True
        if timer_first(self, &when, &c) and (not any_ or when < best):
            best, any_ = when, True
        if self.n_uj and (not any_ or self.uj_when[0] < best):
            best, any_ = self.uj_when[0], True
        return best if any_ else None

    # ---- snapshots (plain data) -------------------------------------------------------------------
    def host_count(self):
        return self.n_hosts

    def host_state(self, uint32_t h):
        """(address bytes, handles in use, {counter: value}, listeners, udp sockets, connections): listeners
        (port, app, backlog, accept queue, SYN queue, handle), udp (port, app, handle), connections in
        creation order (state, recv_q, send_q, local port, peer bytes, peer port, handle or None)."""
        cdef Host* host = &self.hosts[h]
        cdef uint32_t k, alen = 4 if host.family == 4 else 16
        cdef Conn* c
        cdef Listener* lst
        counters = {COUNTER_NAMES[k]: host.counters[k] for k in range(N_COUNTERS) if host.touched & (1u << k)}
        listeners = []
        for k in range(self.n_listeners):
            lst = &self.listeners[k]
            if lst.host == h:
                listeners.append((lst.port, APPS[lst.app], lst.backlog, lst.accept_count, lst.syn_count, lst.handle))
        udps = [(self.udps[k].port, APPS[self.udps[k].app], self.udps[k].handle)
                for k in range(self.n_udps) if self.udps[k].host == h]
        conns = []
        for k in range(self.conns.top):
            c = self.conn(k)
            if c.state != T_CLOSED and c.key.host == h:
                conns.append((c.order, STATE_NAMES[c.state], recv_len(c), send_q(self, c), c.key.port,
                              bytes(c.key.peer[:alen]), c.key.peer_port, c.handle if c.handle >= 0 else None))
        conns.sort()
        in_use = host.next_handle - FIRST_FD - host.n_free
        return (bytes(host.addr[:alen]), in_use, dict(sorted(counters.items())), listeners, udps,
                [row[1:] for row in conns])

    def handle_of(self, uint32_t real, bint tcp, uint16_t port, bytes peer, uint16_t peer_port):
        """The handle of the socket carrying this peer's traffic to `port` of a real's host, or None."""
        cdef int h, k
        if real >= self.n_reals or self.real_host[real] < 0:
            return None
        h = self.real_host[real]
        if not tcp:
            k = self.socket_of(h, port, PROTO_KEY_UDP)
            return self.udps[k].handle if k >= 0 else None
        k = self.conn_of(h, peer, 4 if len(peer) == 4 else 6, peer_port, port, 0)
        return self.conn(k).handle if k >= 0 and self.conn(k).handle >= 0 else None

    def memory(self):
        """Bytes the engine holds for its tables (connections, index, timers, links), buffers aside."""
        return {
            "connections": self.conns.used,
            "table_bytes": slab_bytes(&self.conns) + slab_bytes(&self.peers) + slab_bytes(&self.by_address),
            "timer_bytes": <uint64_t>self.timer_cap * (sizeof(uint64_t) + sizeof(uint32_t)),
            "peers": self.peers.used,
            "timers": self.n_timers + self.q_len[Q_SYN_RECV] + self.q_len[Q_TIME_WAIT],
        }


cdef void keep_link(Peer* peer, uint16_t linktype, uint16_t iface, const uint8_t* frame, uint32_t l3) noexcept:
    """How answers go back to a client: the link type, interface and link header of its last packet."""
    peer.linktype, peer.iface = linktype, iface
    peer.has_link = l3 <= MAX_LINK_HEADER
    peer.hdr_len = l3 if peer.has_link else 0
    memcpy(peer.hdr, frame, peer.hdr_len)
    if linktype == LINKTYPE_ETHERNET and peer.hdr_len >= ETHER_HEADER_LEN:
        # the answer's link header: Ethernet swaps its MAC addresses (VLAN tags stay)
        memcpy(peer.hdr, frame + ETHER_ADDR_LEN, ETHER_ADDR_LEN)
        memcpy(peer.hdr + ETHER_ADDR_LEN, frame, ETHER_ADDR_LEN)


# ---- handles: lowest free number first, like open(2) and accept(2) ------------------------------
cdef int32_t take_handle(Host* h) noexcept:
    cdef uint32_t top, k, child, last
    if h.n_free == 0:
        h.next_handle += 1
        return h.next_handle - 1
    top = h.free_handles[0]
    h.n_free -= 1
    last = h.free_handles[h.n_free]
    k = 0
    while True:                                 # sift the last one down from the root
        child = 2 * k + 1
        if child >= h.n_free:
            break
        if child + 1 < h.n_free and h.free_handles[child + 1] < h.free_handles[child]:
            child += 1
        if h.free_handles[child] >= last:
            break
        h.free_handles[k] = h.free_handles[child]
        k = child
    if h.n_free:
        h.free_handles[k] = last
    return <int32_t>top


cdef void release_handle(Host* h, int32_t handle) noexcept:
    """close(2): the number is free at once."""
    cdef uint32_t k, parent
    cdef uint32_t* grown
    if h.n_free == h.free_cap:
        grown = <uint32_t*>realloc(h.free_handles, (h.free_cap * 2 + 16) * sizeof(uint32_t))
        if grown == NULL:
            return                              # the number is lost, never given twice
        h.free_handles = grown
        h.free_cap = h.free_cap * 2 + 16
    k = h.n_free
    h.n_free += 1
    while k:
        parent = (k - 1) // 2
        if h.free_handles[parent] <= <uint32_t>handle:
            break
        h.free_handles[k] = h.free_handles[parent]
        k = parent
    h.free_handles[k] = handle


# ---- the timer heap: (deadline, connection record), earliest first --------------------------------
cdef inline bint t_less(Engine e, uint32_t a, uint32_t b) noexcept:
    return e.t_when[a] < e.t_when[b] or (e.t_when[a] == e.t_when[b] and e.t_conn[a] < e.t_conn[b])


cdef void t_swap(Engine e, uint32_t a, uint32_t b) noexcept:
    cdef uint64_t w = e.t_when[a]
    cdef uint32_t c = e.t_conn[a]
    e.t_when[a] = e.t_when[b]
    e.t_conn[a] = e.t_conn[b]
    e.t_when[b] = w
    e.t_conn[b] = c
    e.conn(e.t_conn[a]).timer = a + 1
    e.conn(e.t_conn[b]).timer = b + 1


cdef void t_fix(Engine e, uint32_t k) noexcept:
    """Restore heap order around position k (moved up or down)."""
    cdef uint32_t parent, child
    while k and t_less(e, k, (k - 1) // 2):
        parent = (k - 1) // 2
        t_swap(e, k, parent)
        k = parent
    while True:
        child = 2 * k + 1
        if child >= e.n_timers:
            return
        if child + 1 < e.n_timers and t_less(e, child + 1, child):
            child += 1
        if not t_less(e, child, k):
            return
        t_swap(e, k, child)
        k = child


cdef void set_deadline(Engine e, uint32_t c, uint64_t when) noexcept:
    """The connection's deadline (0: none), in the heap."""
    cdef Conn* conn = e.conn(c)
    cdef uint32_t k
    if conn.tqueue:
        q_unlink(e, c)
    conn.deadline_ns = when
    if conn.timer:
        k = conn.timer - 1
        if when == 0:
            e.n_timers -= 1
            conn.timer = 0
            if k != e.n_timers:
                e.t_when[k] = e.t_when[e.n_timers]
                e.t_conn[k] = e.t_conn[e.n_timers]
                e.conn(e.t_conn[k]).timer = k + 1
                t_fix(e, k)
            return
        e.t_when[k] = when
        t_fix(e, k)
        return
    if when == 0:
        return
    if e.n_timers == e.timer_cap:
        w = <uint64_t*>realloc(e.t_when, (e.timer_cap * 2 + MIN_RECORDS) * sizeof(uint64_t))
        if w != NULL:
            e.t_when = w
        t = <uint32_t*>realloc(e.t_conn, (e.timer_cap * 2 + MIN_RECORDS) * sizeof(uint32_t))
        if t != NULL:
            e.t_conn = t
        if w == NULL or t == NULL:
            return                              # no room: the deadline never fires (counted nowhere)
        e.timer_cap = e.timer_cap * 2 + MIN_RECORDS
    k = e.n_timers
    e.n_timers += 1
    e.t_when[k] = when
    e.t_conn[k] = c
    conn.timer = k + 1
    t_fix(e, k)


# ---- the deadline queues (TimerQueue): doubly linked through the connections, in heap order --------
cdef inline bint t_before(uint64_t wa, uint32_t ca, uint64_t wb, uint32_t cb) noexcept:
    return wa < wb or (wa == wb and ca < cb)


cdef bint timer_first(Engine e, uint64_t* when, uint32_t* c) noexcept:
    """The earliest deadline of all (heap and queues, by deadline then record) and its connection;
    False when there is none."""
    cdef bint found = False
    cdef uint32_t q
    if e.n_timers:
        when[0], c[0], found = e.t_when[0], e.t_conn[0], True
    for q in range(N_QUEUES):
        if e.q_head[q] and (not found or t_before(e.q_when[q], e.q_head[q] - 1, when[0], c[0])):
            when[0], c[0], found = e.q_when[q], e.q_head[q] - 1, True
    return found


cdef void set_queued_deadline(Engine e, uint32_t c, uint64_t when, uint32_t q) noexcept:
    """The connection's deadline (not 0) in queue q: after the last one not later, found from the tail
    (at once, as the clock only moves forward)."""
    cdef Conn* conn
    cdef uint32_t after
    set_deadline(e, c, 0)
    conn = e.conn(c)
    conn.deadline_ns = when
    conn.tqueue = q + 1
    after = e.q_tail[q]
    while after and t_before(when, c, e.conn(after - 1).deadline_ns, after - 1):
        after = e.conn(after - 1).tprev
    conn.tprev = after
    if after:
        conn.tnext = e.conn(after - 1).tnext
        e.conn(after - 1).tnext = c + 1
    else:
        conn.tnext = e.q_head[q]
        e.q_head[q] = c + 1
        e.q_when[q] = when
    if conn.tnext:
        e.conn(conn.tnext - 1).tprev = c + 1
    else:
        e.q_tail[q] = c + 1
    e.q_len[q] += 1


cdef void q_unlink(Engine e, uint32_t c) noexcept:
    """Take the connection out of its deadline queue."""
    cdef Conn* conn = e.conn(c)
    cdef uint32_t q = conn.tqueue - 1
    if conn.tprev:
        e.conn(conn.tprev - 1).tnext = conn.tnext
    else:
        e.q_head[q] = conn.tnext
        if conn.tnext:
            e.q_when[q] = e.conn(conn.tnext - 1).deadline_ns
    if conn.tnext:
        e.conn(conn.tnext - 1).tprev = conn.tprev
    else:
        e.q_tail[q] = conn.tprev
    conn.tprev = conn.tnext = 0
    conn.tqueue = 0
    e.q_len[q] -= 1


cdef void sort_by_time(Engine e, uint32_t first) noexcept:
    """Order answers first.. by their moment, keeping their order on ties (insertion sort: few)."""
    cdef uint32_t i, j, n = e.n_out
    cdef uint64_t at, off
    cdef uint32_t ln
    for i in range(first + 1, n):
        at, off, ln = e.out_at[i], e.out_off[i], e.out_len[i]
        j = i
        while j > first and e.out_at[j - 1] > at:
            e.out_at[j], e.out_off[j], e.out_len[j] = e.out_at[j - 1], e.out_off[j - 1], e.out_len[j - 1]
            j -= 1
        e.out_at[j], e.out_off[j], e.out_len[j] = at, off, ln


# ---- test and fuzz entry points (the same readers and builders the engine runs) ---------------------
def isn_draws(rng, uint32_t n):
    """n initial sequence numbers as a host draws them from a copy of `rng` (a random.Random)."""
    cdef MT mt
    mt_from_random(&mt, rng)
    return [mt_next32(&mt) for _ in range(n)]


def read_frame(frame, uint16_t linktype):
    """A host's reading of one frame: (family, src, dst, proto, sport, dport, seq, ack, flags, window,
    options, payload, ip packet) or None when it cannot be read whole."""
    cdef const uint8_t[::1] view = frame
    cdef PacketInfo info
    cdef Seg seg
    cdef uint32_t alen
    if view.shape[0] == 0 or not read_segment(&view[0], <uint32_t>view.shape[0], linktype, &info, &seg):
        return None
    alen = 4 if seg.family == 4 else 16
    return (seg.family, bytes(seg.src[:alen]), bytes(seg.dst[:alen]), seg.proto, seg.sport, seg.dport, seg.seq,
            seg.ack, seg.flags, seg.window, bytes(seg.options[:seg.olen]) if seg.olen else b"",
            bytes(seg.payload[:seg.plen]) if seg.plen else b"", bytes(seg.ip[:seg.ip_len]))
