"""The client side of TCP conversations, written straight into Batches: no Python object per packet.

Conversations overlap in time, so each has one pending packet in a binary heap ordered by (time,
order of scheduling): packets leave in time order, and the same seed gives the same bytes.
"""
from libc.math cimport llround, log
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t, UINT64_MAX
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memset

from l4emu.clients._random cimport (DIST_EMPIRICAL, DIST_EXPONENTIAL, DIST_FIXED, DIST_LOGNORMAL, Dist,
                                    dist_sample, rng_below, rng_exponential, rng_next, rng_seed)
from l4emu.datapath._batch cimport Batch
from l4emu.datapath._checksum cimport fold, store16, sum_bytes
from l4emu.datapath._headers cimport PARSED, parse_packet
from l4emu.datapath._types cimport NS, PacketInfo
from l4emu.datapath._wire cimport (ETHERTYPE_IPV4, ETHERTYPE_IPV6, IP4_CSUM, IP4_DST, IP4_FRAG, IP4_HEADER_LEN,
                                   IP4_PROTO, IP4_SRC, IP4_TOTAL_LEN, IP6_DST, IP6_HEADER_LEN, IP6_NEXT,
                                   IP6_PAYLOAD_LEN, IP6_SRC, IPPROTO_TCP, IPPROTO_UDP, L4_DPORT, L4_SPORT,
                                   LINKTYPE_ETHERNET, LINKTYPE_RAW, TCP_ACK, TCP_CSUM, TCP_DATA_OFFSET, TCP_FIN,
                                   TCP_FLAGS, TCP_HEADER_LEN, TCP_PSH, TCP_SYN, UDP_CSUM, UDP_HEADER_LEN, UDP_LEN)

DIST_KINDS = {"fixed": DIST_FIXED, "exponential": DIST_EXPONENTIAL, "lognormal": DIST_LOGNORMAL,
              "empirical": DIST_EMPIRICAL}

ARRIVALS = {"poisson": A_POISSON, "fixed": A_FIXED, "capture": A_CAPTURE}

# The balancer's MAC (locally administered, "L4"), and the clients' prefix: 02:00 + client number.
cdef uint8_t LB_MAC[6]
LB_MAC[:] = [0x02, 0x4C, 0x34, 0x00, 0x00, 0x01]

cdef const char* REQUEST_MAGIC = b"L4RQ"


cdef inline bint earlier(const Event* a, const Event* b) noexcept nogil:
    return a.ts < b.ts or (a.ts == b.ts and a.order < b.order)


cdef inline void put32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>(v >> 16)
    p[2] = <uint8_t>(v >> 8)
    p[3] = <uint8_t>v


cdef class _Sampler:
    """A Dist with the empirical values it points at, owned here."""

    def __cinit__(self, str kind, double mean, double sigma, values):
        cdef Py_ssize_t i
        if kind not in DIST_KINDS:
            raise ValueError(f"unknown distribution {kind!r}")
        self.d.kind = DIST_KINDS[kind]
        self.d.mean = mean
        self.d.sigma = sigma
        self.d.mu = log(mean) - sigma * sigma / 2 if mean > 0 else 0
        self.d.n_values = len(values)
        self.values = <double*>malloc(max(1, len(values)) * sizeof(double))
        if self.values == NULL:
            raise MemoryError()
        for i in range(len(values)):
            self.values[i] = values[i]
        self.d.values = self.values

    def __dealloc__(self):
        free(self.values)


cdef class Generator:
    """Fills Batches with the packets clients send, in time order, until every conversation has ended."""

    def __init__(self, *, uint64_t seed64, int arrival, double rate, double duration_s, uint64_t start_ns,
                 arrivals, uint32_t clients, uint32_t ipv6_clients, bytes base4, bytes base6, target4, target6,
                 uint32_t requests, uint32_t connections, think, request, response, uint64_t rtt_ns,
                 bint raw_ip, bytes head, bytes tail4, bytes tail6, bint udp=False, arrival_clients=None):
        """targetN: (packed address, port) or None; think/request/response: (kind, mean, sigma, values);
        arrivals: sorted capture times in ns (A_CAPTURE); tailN: the request's bytes after the padding;
        udp: each request is a datagram (its id, then padding) to a request-reply service instead;
        arrival_clients: with arrivals, the client (0 .. clients-1) that starts each session (a GSLB's
        simulate: the client that resolved to this site), instead of one drawn at random."""
        cdef Py_ssize_t i
        if not 1 <= clients or ipv6_clients > clients or requests < 1 or connections < 1 or rate <= 0:
            raise ValueError("clients, requests and connections must be at least 1, rate above 0")
        if len(base4) != 4 or len(base6) != 16 or len(head) > sizeof(self.head):
            raise ValueError("client ranges are 4- and 16-byte addresses; the request head at most 8 bytes")
        if (ipv6_clients < clients and target4 is None) or (ipv6_clients > 0 and target6 is None):
            raise ValueError("each family with clients needs a target")
        rng_seed(&self.rng, seed64)
        self.arrival, self.rate, self.duration_s, self.start_ns = arrival, rate, duration_s, start_ns
        self.rtt_ns = rtt_ns
        self.linktype = LINKTYPE_RAW if raw_ip else LINKTYPE_ETHERNET
        self.udp = udp
        self.clients, self.n6, self.requests, self.conns = clients, ipv6_clients, requests, connections
        memcpy(self.base4, <const uint8_t*>base4, 4)
        memcpy(self.base6, <const uint8_t*>base6, 16)
        self.head_len = len(head)
        memcpy(self.head, <const uint8_t*>head, self.head_len)
        for i, target, tail in ((0, target4, tail4), (1, target6, tail6)):
            if target is None:
                continue
            self._target(i, target[0], target[1], tail)
        self.think = _Sampler(*think)
        self.request = _Sampler(*request)
        self.response = _Sampler(*response)
        self.next_port = <uint16_t*>malloc(clients * sizeof(uint16_t))
        if self.next_port == NULL:
            raise MemoryError()
        for i in range(clients):        # each client starts somewhere in its ephemeral range
            self.next_port[i] = EPHEMERAL_LOW + <uint16_t>rng_below(&self.rng, EPHEMERAL_HIGH - EPHEMERAL_LOW + 1)
        if arrival == A_CAPTURE:
            self.n_arrivals = len(arrivals)
            self.arrivals = <uint64_t*>malloc(max(1, self.n_arrivals) * sizeof(uint64_t))
            if self.arrivals == NULL:
                raise MemoryError()
            for i in range(self.n_arrivals):
                self.arrivals[i] = arrivals[i]
                if i and self.arrivals[i] < self.arrivals[i - 1]:
                    raise ValueError("capture arrivals must be sorted")
            if arrival_clients is not None:
                if len(arrival_clients) != self.n_arrivals:
                    raise ValueError("arrival_clients needs one client per arrival")
                self.arrival_clients = <uint32_t*>malloc(max(1, self.n_arrivals) * sizeof(uint32_t))
                if self.arrival_clients == NULL:
                    raise MemoryError()
                for i in range(self.n_arrivals):
                    if not 0 <= arrival_clients[i] < clients:
                        raise ValueError("an arrival's client is outside 0 .. clients-1")
                    self.arrival_clients[i] = arrival_clients[i]
        elif arrival_clients is not None:
            raise ValueError("arrival_clients goes with arrivals (A_CAPTURE)")
        self._grow()
        self._draw_arrival()

    cdef _target(self, int f, bytes packed, uint16_t port, bytes tail):
        """Family f's (0: IPv4, 1: IPv6) VIP, port and the request's bytes after the padding."""
        if len(packed) != (4 if f == 0 else 16) or len(tail) > sizeof(self.tail[0]):
            raise ValueError("a target is a packed address of its family; a request tail at most 256 bytes")
        if f == 0:
            memcpy(self.target4, <const uint8_t*>packed, 4)
            self.port4 = port
        else:
            memcpy(self.target6, <const uint8_t*>packed, 16)
            self.port6 = port
        self.tail_len[f] = len(tail)
        memcpy(self.tail[f], <const uint8_t*>tail, len(tail))
        self.min_request[f] = self.head_len + self.tail_len[f]
        if self.min_request[f] > MAX_PAYLOAD:
            raise ValueError(f"a request of at least {self.min_request[f]} bytes is over one segment")

    def __dealloc__(self):
        free(self.next_port)
        free(self.arrivals)
        free(self.arrival_clients)
        free(self.convs)
        free(self.free_slots)
        free(self.heap)

    cdef int _grow(self) except -1 nogil:
        """Room for twice the conversations (slots, free list and heap grow together)."""
        cdef uint32_t cap = self.cap_convs * 2 if self.cap_convs else FIRST_CAPACITY
        cdef Conv* convs = <Conv*>realloc(self.convs, cap * sizeof(Conv))
        if convs == NULL:
            with gil:
                raise MemoryError()
        self.convs = convs
        cdef uint32_t* slots = <uint32_t*>realloc(self.free_slots, cap * sizeof(uint32_t))
        if slots == NULL:
            with gil:
                raise MemoryError()
        self.free_slots = slots
        if self.heap_cap < cap:
            self._grow_heap(cap)
        self.cap_convs = cap
        return 0

    cdef int _grow_heap(self, uint32_t cap) except -1 nogil:
        """The event heap's own room: the closed loop leaves replaced events in it until they surface."""
        cdef Event* heap = <Event*>realloc(self.heap, cap * sizeof(Event))
        if heap == NULL:
            with gil:
                raise MemoryError()
        self.heap = heap
        self.heap_cap = cap
        return 0

    cdef void _draw_arrival(self) noexcept nogil:
        """The next session's start, or have_arrival = False when the arrival process is over."""
        cdef double t
        self.have_arrival = False
        if self.arrival == A_CAPTURE:
            if self.arrival_i < self.n_arrivals:
                self.next_arrival = self.arrivals[self.arrival_i]
                if self.arrival_clients != NULL:
                    self.next_client = self.arrival_clients[self.arrival_i]
                self.arrival_i += 1
                self.have_arrival = True
            return
        if self.arrival == A_FIXED:
            t = <double>self.k / self.rate      # k/rate, not a running sum: no drift over long runs
            self.k += 1
        else:
            self.t_s += rng_exponential(&self.rng, 1.0 / self.rate)
            t = self.t_s
        if t < self.duration_s:
            self.next_arrival = self.start_ns + <uint64_t>llround(t * NS)
            self.have_arrival = True

    cdef uint64_t _seconds(self, const Dist* d) noexcept nogil:
        cdef double v = dist_sample(d, &self.rng)
        return <uint64_t>llround(v * NS) if v > 0 else 0

    cdef void _open(self, Conv* c, uint64_t ts) noexcept nogil:
        """A new connection of c's client at ts: a fresh port, ISNs and IP ID."""
        c.sport = self.next_port[c.client]
        self.next_port[c.client] = EPHEMERAL_LOW if c.sport >= EPHEMERAL_HIGH else c.sport + 1
        c.seq = <uint32_t>rng_next(&self.rng)
        c.ack = <uint32_t>rng_next(&self.rng)   # the server's ISN: the SYN-ACK acknowledges seq + 1
        c.ip_id = <uint16_t>rng_next(&self.rng)
        c.flow_label = <uint32_t>rng_next(&self.rng) & 0xFFFFF
        c.requests_left = self.requests
        c.resp_left = 0
        c.phase = P_REQUEST if self.udp else P_SYN    # UDP: no handshake, the request goes first
        c.ts = ts
        self.conversations += 1
        if c.family == 6:
            self.conversations6 += 1

    cdef int64_t _admit(self, uint64_t ts) except -1 nogil:
        """A new session at ts (its first connection's SYN due then); returns its conversation's slot."""
        cdef uint32_t slot
        if self.n_free:
            self.n_free -= 1
            slot = self.free_slots[self.n_free]
        else:
            if self.n_convs == self.cap_convs:
                self._grow()
            slot = self.n_convs
            self.n_convs += 1
        cdef Conv* c = &self.convs[slot]
        if self.arrival_clients != NULL:
            c.client = self.next_client
        else:
            c.client = <uint32_t>rng_below(&self.rng, self.clients)
        c.family = 6 if c.client < self.n6 else 4
        c.conns_left = self.conns
        self._open(c, ts)
        self.sessions += 1
        self._push(slot, ts)
        return slot

    cdef int _push(self, uint32_t slot, uint64_t ts) except -1 nogil:
        cdef uint32_t i, parent
        cdef Event e
        if self.heap_n == self.heap_cap:
            self._grow_heap(self.heap_cap * 2)
        i = self.heap_n
        e.ts, e.order, e.slot, e.gen = ts, self.order, slot, self.convs[slot].gen
        self.order += 1
        self.heap_n += 1
        while i > 0:
            parent = (i - 1) // 2
            if not earlier(&e, &self.heap[parent]):
                break
            self.heap[i] = self.heap[parent]
            i = parent
        self.heap[i] = e
        return 0

    cdef void _sift_down(self) noexcept nogil:
        """Put heap[0] where it belongs after its time moved on (or after the last event replaced it)."""
        cdef uint32_t i = 0, child
        cdef Event e = self.heap[0]
        while True:
            child = 2 * i + 1
            if child >= self.heap_n:
                break
            if child + 1 < self.heap_n and earlier(&self.heap[child + 1], &self.heap[child]):
                child += 1
            if not earlier(&self.heap[child], &e):
                break
            self.heap[i] = self.heap[child]
            i = child
        self.heap[i] = e

    cdef uint32_t _l4_at(self, const Conv* c) noexcept nogil:
        """Where a packet's TCP or UDP header starts: after the link header and the IP header."""
        return (0 if self.linktype == LINKTYPE_RAW else ETH_HEADER_LEN) + \
            (IP4_HEADER_LEN if c.family == 4 else IP6_HEADER_LEN)

    cdef uint32_t _ip(self, const Conv* c, uint8_t* out, uint8_t proto, uint32_t seg_len) noexcept nogil:
        """The link and IP headers of a packet carrying seg_len bytes of `proto`; returns the sum of its
        pseudo-header (addresses, protocol, length) for the transport checksum."""
        cdef uint32_t l3 = 0 if self.linktype == LINKTYPE_RAW else ETH_HEADER_LEN
        cdef uint32_t ip_len = IP4_HEADER_LEN if c.family == 4 else IP6_HEADER_LEN
        cdef uint8_t* ip = out + l3
        cdef uint8_t* src
        cdef uint8_t* dst
        cdef uint32_t alen = 4 if c.family == 4 else 16
        cdef uint32_t acc
        if l3:
            memcpy(out, LB_MAC, MAC_LEN)
            out[6], out[7] = 0x02, 0x00
            put32(out + 8, c.client)
            store16(out + ETH_TYPE, ETHERTYPE_IPV4 if c.family == 4 else ETHERTYPE_IPV6)
        if c.family == 4:
            memset(ip, 0, IP4_HEADER_LEN)
            ip[0] = 0x45
            store16(ip + IP4_TOTAL_LEN, ip_len + seg_len)
            store16(ip + IP4_ID, c.ip_id)
            store16(ip + IP4_FRAG, IP4_DONT_FRAGMENT)
            ip[IP4_TTL] = TTL
            ip[IP4_PROTO] = proto
            src, dst = ip + IP4_SRC, ip + IP4_DST
            memcpy(src, self.base4, 4)
            add_be(src, 4, c.client - self.n6 + 1)
            memcpy(dst, self.target4, 4)
            store16(ip + IP4_CSUM, ~fold(sum_bytes(0, ip, IP4_HEADER_LEN)) & 0xFFFF)
        else:
            ip[0] = 0x60
            ip[1] = <uint8_t>((c.flow_label >> 16) & 0x0F)
            ip[2] = <uint8_t>(c.flow_label >> 8)
            ip[3] = <uint8_t>c.flow_label
            store16(ip + IP6_PAYLOAD_LEN, seg_len)
            ip[IP6_NEXT] = proto
            ip[IP6_HOP_LIMIT] = TTL
            src, dst = ip + IP6_SRC, ip + IP6_DST
            memcpy(src, self.base6, 16)
            add_be(src, 16, c.client + 1)
            memcpy(dst, self.target6, 16)
        acc = sum_bytes(0, src, alen)
        acc = sum_bytes(acc, dst, alen)
        return acc + proto + seg_len

    cdef uint32_t _frame(self, const Conv* c, uint8_t* out, uint8_t flags, uint32_t payload) noexcept nogil:
        """Headers around `payload` bytes already at their place; checksums filled. Returns the frame's length."""
        cdef uint32_t l4 = self._l4_at(c)
        cdef uint32_t tcp_len = TCP_HEADER_LEN + (SYN_OPTIONS_LEN if flags & TCP_SYN else 0)
        cdef uint32_t seg_len = tcp_len + payload
        cdef uint8_t* tcp = out + l4
        cdef uint32_t acc = self._ip(c, out, IPPROTO_TCP, seg_len)
        store16(tcp + L4_SPORT, c.sport)
        store16(tcp + L4_DPORT, self.port4 if c.family == 4 else self.port6)
        put32(tcp + TCP_SEQ, c.seq)
        put32(tcp + TCP_ACK_NUM, c.ack if flags & TCP_ACK else 0)
        tcp[TCP_DATA_OFFSET] = <uint8_t>((tcp_len // 4) << 4)
        tcp[TCP_FLAGS] = flags
        store16(tcp + TCP_CSUM, 0)
        store16(tcp + TCP_CSUM + 2, 0)      # urgent pointer
        if flags & TCP_SYN:
            store16(tcp + TCP_WINDOW, SYN_WINDOW4 if c.family == 4 else SYN_WINDOW6)
            tcp[20], tcp[21] = TCP_OPT_MSS, 4
            store16(tcp + 22, MSS4 if c.family == 4 else MSS6)
            tcp[24], tcp[25], tcp[26], tcp[27] = TCP_OPT_NOP, TCP_OPT_NOP, TCP_OPT_SACK_PERM, 2
            tcp[28], tcp[29], tcp[30], tcp[31] = TCP_OPT_NOP, TCP_OPT_WSCALE, 3, WINDOW_SCALE
        else:
            store16(tcp + TCP_WINDOW, WINDOW)
        acc = sum_bytes(acc, tcp, seg_len)
        store16(tcp + TCP_CSUM, ~fold(acc) & 0xFFFF)
        return l4 + seg_len

    cdef uint32_t _datagram(self, const Conv* c, uint8_t* out, uint32_t payload) noexcept nogil:
        """A UDP datagram around `payload` bytes already at their place; checksums filled."""
        cdef uint32_t l4 = self._l4_at(c)
        cdef uint32_t seg_len = UDP_HEADER_LEN + payload
        cdef uint8_t* udp = out + l4
        cdef uint32_t acc = self._ip(c, out, IPPROTO_UDP, seg_len)
        cdef uint16_t csum
        store16(udp + L4_SPORT, c.sport)
        store16(udp + L4_DPORT, self.port4 if c.family == 4 else self.port6)
        store16(udp + UDP_LEN, seg_len)
        store16(udp + UDP_CSUM, 0)
        csum = ~fold(sum_bytes(acc, udp, seg_len)) & 0xFFFF
        store16(udp + UDP_CSUM, csum if csum else 0xFFFF)   # RFC 768: zero would mean "no checksum"
        return l4 + seg_len

    cdef uint32_t _udp_request(self, const Conv* c, uint8_t* payload) noexcept nogil:
        """A UDP request: "L4RQ", its id (the conversation's request number), padded to the drawn size."""
        cdef double want = dist_sample(&self.request.d, &self.rng)
        cdef uint32_t size = UDP_REQUEST_HEADER
        if want > size:
            size = <uint32_t>llround(want) if want < MAX_PAYLOAD else MAX_PAYLOAD
        memcpy(payload, REQUEST_MAGIC, UDP_MAGIC_LEN)
        put32(payload + UDP_MAGIC_LEN, c.seq)
        memset(payload + UDP_REQUEST_HEADER, PAD_BYTE, size - UDP_REQUEST_HEADER)
        return size

    cdef uint32_t _udp_packet(self, Conv* c, uint8_t* out) noexcept nogil:
        """gen: c's next request datagram; the one after leaves once its answer is in (an RTT and the
        answer's datagrams later) and the think time has passed."""
        cdef uint32_t n, size, per = UDP_DATA_V4 if c.family == 4 else UDP_DATA_V6
        cdef double answer = dist_sample(&self.response.d, &self.rng)
        cdef uint64_t bytes_ = <uint64_t>llround(answer) if answer >= 1 else 0
        cdef uint64_t after
        c.ip_id += 1
        size = self._udp_request(c, out + self._l4_at(c) + UDP_HEADER_LEN)
        n = self._datagram(c, out, size)
        c.seq += 1
        self.requests_sent += 1
        after = self.rtt_ns + (1 + (bytes_ - 1) // per if bytes_ else 1) * SEGMENT_NS + APP_DELAY_NS
        c.requests_left -= 1
        if c.requests_left:
            c.ts += after + self._seconds(&self.think.d)
        else:
            c.conns_left -= 1
            if c.conns_left:
                self._open(c, c.ts + after + self._seconds(&self.think.d))
            else:
                c.phase = P_DONE
        return n

    cdef uint32_t _request(self, const Conv* c, uint8_t* payload) noexcept nogil:
        """The HTTP request, its path padded to the drawn size (within one segment)."""
        cdef int f = 0 if c.family == 4 else 1
        cdef double want = dist_sample(&self.request.d, &self.rng)
        cdef uint32_t size = self.min_request[f]
        if want > size:
            size = <uint32_t>llround(want) if want < MAX_PAYLOAD else MAX_PAYLOAD
        cdef uint32_t pad = size - self.min_request[f]
        memcpy(payload, self.head, self.head_len)
        memset(payload + self.head_len, PAD_BYTE, pad)
        memcpy(payload + self.head_len + pad, self.tail[f], self.tail_len[f])
        return size

    cdef uint32_t _packet(self, Conv* c, uint8_t* out) noexcept nogil:
        """c's next packet into out; then c moves on to the one after (time and phase)."""
        cdef uint32_t n, size, mss = MSS4 if c.family == 4 else MSS6
        cdef uint32_t offset = (0 if self.linktype == LINKTYPE_RAW else ETH_HEADER_LEN) + \
            (IP4_HEADER_LEN if c.family == 4 else IP6_HEADER_LEN) + TCP_HEADER_LEN
        cdef uint64_t take
        cdef double answer
        c.ip_id += 1
        if c.phase == P_SYN:
            n = self._frame(c, out, TCP_SYN, 0)
            c.seq += 1
            c.ack += 1                          # the SYN-ACK, an RTT later, takes the server's SYN
            c.phase = P_HANDSHAKE_ACK
            c.ts += self.rtt_ns
        elif c.phase == P_HANDSHAKE_ACK:
            n = self._frame(c, out, TCP_ACK, 0)
            c.phase = P_REQUEST
            c.ts += APP_DELAY_NS
        elif c.phase == P_REQUEST:
            size = self._request(c, out + offset)
            n = self._frame(c, out, TCP_PSH | TCP_ACK, size)
            c.seq += size
            self.requests_sent += 1
            answer = dist_sample(&self.response.d, &self.rng)
            c.resp_left = <uint64_t>llround(answer) if answer >= 1 else 1
            c.phase = P_RESPONSE_ACK
            c.ts += self.rtt_ns + ACK_EVERY * SEGMENT_NS
        elif c.phase == P_RESPONSE_ACK:
            take = ACK_EVERY * mss if c.resp_left > ACK_EVERY * mss else c.resp_left
            c.ack += <uint32_t>take
            c.resp_left -= take
            n = self._frame(c, out, TCP_ACK, 0)
            if c.resp_left:
                c.ts += ACK_EVERY * SEGMENT_NS
            else:
                c.requests_left -= 1
                if c.requests_left:
                    c.phase = P_REQUEST
                    c.ts += APP_DELAY_NS + self._seconds(&self.think.d)
                else:
                    c.phase = P_FIN
                    c.ts += APP_DELAY_NS
        elif c.phase == P_FIN:
            n = self._frame(c, out, TCP_FIN | TCP_ACK, 0)
            c.seq += 1
            c.phase = P_LAST_ACK
            c.ts += self.rtt_ns                 # the server's FIN-ACK
        else:
            c.ack += 1
            n = self._frame(c, out, TCP_ACK, 0)
            c.conns_left -= 1
            if c.conns_left:
                self._open(c, c.ts + APP_DELAY_NS + self._seconds(&self.think.d))
            else:
                c.phase = P_DONE
        return n

    cdef int _fill(self, Batch batch, uint64_t until_ns) except -1 nogil:
        """Packets into the batch until it is full, every conversation has ended, or the next packet is
        due after until_ns (the same draws in the same order wherever a fill stops)."""
        cdef uint32_t slot, n
        cdef uint64_t ts
        cdef Conv* c
        cdef uint8_t* out
        while True:
            while self.have_arrival and (self.heap_n == 0 or self.next_arrival <= self.heap[0].ts):
                self._admit(self.next_arrival)
                self._draw_arrival()
            if self.heap_n == 0:
                return 0
            if batch.n >= batch.capacity or batch.data_cap - batch.data_len < MAX_FRAME:
                return 0
            if self.heap[0].ts > until_ns:
                return 0
            slot = self.heap[0].slot
            c = &self.convs[slot]
            ts = c.ts
            out = batch.data + batch.data_len
            n = self._udp_packet(c, out) if self.udp else self._packet(c, out)
            batch.push(out, n, n, ts, 0, <uint16_t>self.linktype)     # built in place: no copy
            if self.packets == 0:
                self.first_ns = ts
            self.last_ns = ts
            self.packets += 1
            if c.phase == P_DONE:
                self.free_slots[self.n_free] = slot
                self.n_free += 1
                self.heap_n -= 1
                if self.heap_n:
                    self.heap[0] = self.heap[self.heap_n]
                    self._sift_down()
            else:
                self.heap[0].ts = c.ts
                self.heap[0].order = self.order
                self.order += 1
                self._sift_down()

    def fill(self, Batch batch):
        """Append packets until the batch is full or every conversation has ended; how many were added."""
        cdef Py_ssize_t before = batch.n
        if batch.data_cap < MAX_FRAME:
            raise ValueError(f"a batch for the generator needs at least {MAX_FRAME} bytes of data")
        with nogil:
            self._fill(batch, UINT64_MAX)
        return batch.n - before

    cdef uint64_t _next_ns(self) noexcept nogil:
        """When the next packet is due (UINT64_MAX: none): the earlier of the heap's top and the next arrival."""
        cdef uint64_t t = self.heap[0].ts if self.heap_n else UINT64_MAX
        return min(t, self.next_arrival) if self.have_arrival else t

    def fill_with(self, Generator other, Batch batch):
        """Append the packets of self and `other` (a mixed workload's two protocols) in time order (ties:
        self's first) until the batch is full or both have ended; how many were added."""
        cdef Py_ssize_t before = batch.n
        cdef uint64_t mine, theirs
        if batch.data_cap < MAX_FRAME:
            raise ValueError(f"a batch for the generator needs at least {MAX_FRAME} bytes of data")
        with nogil:
            while batch.n < batch.capacity and batch.data_cap - batch.data_len >= MAX_FRAME:
                mine, theirs = self._next_ns(), other._next_ns()
                if mine == UINT64_MAX and theirs == UINT64_MAX:
                    break
                if mine <= theirs:
                    self._fill(batch, theirs)
                else:
                    other._fill(batch, mine - 1)
        return batch.n - before

    @property
    def done(self):
        return self.heap_n == 0 and not self.have_arrival


def syn_times(Batch batch):
    """The timestamps (ns) of the batch's TCP SYNs without ACK: a capture's connection arrivals."""
    cdef Py_ssize_t i
    cdef PacketInfo info
    times = []
    for i in range(batch.n):
        if (parse_packet(batch.data + batch.offset[i], batch.caplen[i], batch.origlen[i], batch.linktype[i],
                         &info) == PARSED and not info.icmp_error and info.key.proto == IPPROTO_TCP
                and info.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN):
            times.append(batch.ts_ns[i])
    return times
