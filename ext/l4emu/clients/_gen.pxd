# The emulated clients' conversations and the generator that writes their packets (l4emu gen); the
# closed loop of `simulate` (_clients.pyx) extends the same Generator, so both draw the same model.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from l4emu.clients._random cimport Dist, Rng
from l4emu.datapath._batch cimport Batch
from l4emu.datapath._wire cimport IP6_HEADER_LEN, TCP_HEADER_LEN

cdef enum Arrival:
    A_POISSON = 0
    A_FIXED = 1
    A_CAPTURE = 2

cdef enum:
    ETH_HEADER_LEN = 14
    ETH_TYPE = 12
    MAC_LEN = 6
    SYN_OPTIONS_LEN = 12        # mss 4, nop nop, sackOK 2, nop, wscale 3: Linux without timestamps
    MSS4 = 1460                 # 1500-byte link, IPv4
    MSS6 = 1440                 # 1500-byte link, IPv6
    SYN_WINDOW4 = 64240         # Linux: 65535 rounded down to a multiple of the MSS
    SYN_WINDOW6 = 64800
    WINDOW_SCALE = 7
    WINDOW = 502                # 64256 >> WINDOW_SCALE, as Linux advertises after the handshake
    TTL = 64
    IP4_DONT_FRAGMENT = 0x4000
    IP4_ID = 4
    IP4_TTL = 8
    IP6_HOP_LIMIT = 7
    TCP_SEQ = 4
    TCP_ACK_NUM = 8
    TCP_WINDOW = 14
    TCP_OPT_NOP = 1
    TCP_OPT_MSS = 2
    TCP_OPT_WSCALE = 3
    TCP_OPT_SACK_PERM = 4
    EPHEMERAL_LOW = 32768       # net.ipv4.ip_local_port_range
    EPHEMERAL_HIGH = 60999
    MAX_PAYLOAD = 1440          # a request is one segment in either family (l4emu.workload.MAX_REQUEST_BYTES)
    MAX_FRAME = ETH_HEADER_LEN + IP6_HEADER_LEN + TCP_HEADER_LEN + SYN_OPTIONS_LEN + MAX_PAYLOAD
    ACK_EVERY = 2               # segments per ACK (RFC 9293 3.8.6.3: at least every second full segment)
    APP_DELAY_NS = 20000        # from connect() or the last answer to the client's next write
    SEGMENT_NS = 12000          # one full segment at 1 Gb/s: the gap between the response's segments
    FIRST_CAPACITY = 1024
    PAD_BYTE = 0x78             # 'x': the request path's padding
    UDP_MAGIC_LEN = 4           # a UDP request: "L4RQ", its id (u32), padding (hosts/_udp.pxi)
    UDP_ID_LEN = 4
    UDP_REQUEST_HEADER = 8
    UDP_ANSWER_HEADER = 12      # an answer datagram: "L4RA", the id, the answer's bytes still to come (u32)
    UDP_DATA_V4 = 1460          # an answer datagram's data at most: 1500 - 20 - 8 - 12 (no fragments)
    UDP_DATA_V6 = 1440

cdef enum Phase:
    P_SYN = 0
    P_HANDSHAKE_ACK = 1
    P_REQUEST = 2
    P_RESPONSE_ACK = 3
    P_FIN = 4
    P_LAST_ACK = 5
    P_DONE = 6

ctypedef struct Conv:
    uint64_t ts             # when its next packet leaves
    uint32_t client
    uint32_t seq            # next sequence number the client sends
    uint32_t ack            # what the client acknowledges
    uint32_t requests_left  # in this connection
    uint32_t conns_left     # in this session (keep-alive off: one request per connection)
    uint64_t resp_left      # answer bytes not yet acknowledged
    uint32_t flow_label
    uint16_t sport
    uint16_t ip_id
    uint8_t family
    uint8_t phase
    # The closed loop's (l4emu.clients._clients.Clients) own; the generator leaves them zero.
    uint64_t request_ns     # when the request in flight reached the switch (its response time starts)
    uint64_t body_left      # response body bytes still to come, once the header block is read
    uint32_t gen            # bumped when the pending event is replaced: older heap entries are stale
    uint32_t content_length  # of the response being read
    int32_t real            # the real the switch gave this connection (-1: not known yet)
    uint8_t header_state    # bytes of "\r\n\r\n" matched at the end of what was read
    uint8_t length_state    # bytes of "\ncontent-length:" matched, then LENGTH_DIGITS while reading digits
    uint8_t unacked         # data segments received and not acknowledged
    uint8_t retries         # SYN retransmissions so far
    uint8_t server_fin      # the server closed first

ctypedef struct Event:
    uint64_t ts
    uint64_t order          # ties in time leave in the order they were scheduled
    uint32_t slot
    uint32_t gen            # the conversation's gen when scheduled (Clients: stale when it differs)


cdef class _Sampler:
    """A Dist with the empirical values it points at, owned here."""
    cdef Dist d
    cdef double* values


cdef class Generator:
    """Fills Batches with the packets clients send, in time order, until every conversation has ended."""
    cdef Rng rng
    cdef _Sampler think, request, response
    cdef int arrival, linktype
    cdef bint udp                   # the clients send UDP requests (request-reply), not TCP connections
    cdef double rate, duration_s, t_s
    cdef uint64_t start_ns, rtt_ns, k, next_arrival, order
    cdef bint have_arrival
    cdef uint64_t* arrivals
    cdef uint32_t* arrival_clients  # A_CAPTURE: which client starts each session (NULL: a drawn one)
    cdef uint32_t next_client
    cdef Py_ssize_t n_arrivals, arrival_i
    cdef uint32_t clients, n6, requests, conns
    cdef uint8_t base4[4]
    cdef uint8_t base6[16]
    cdef uint8_t target4[4]
    cdef uint8_t target6[16]
    cdef uint16_t port4, port6
    cdef uint8_t head[8]
    cdef uint32_t head_len, tail_len[2], min_request[2]
    cdef uint8_t tail[2][256]
    cdef uint16_t* next_port
    cdef Conv* convs
    cdef uint32_t* free_slots
    cdef uint32_t n_convs, cap_convs, n_free
    cdef Event* heap
    cdef uint32_t heap_n, heap_cap
    cdef readonly uint64_t sessions, conversations, conversations6, requests_sent, packets, first_ns, last_ns

    cdef _target(self, int f, bytes packed, uint16_t port, bytes tail)
    cdef int _grow(self) except -1 nogil
    cdef void _draw_arrival(self) noexcept nogil
    cdef uint64_t _seconds(self, const Dist* d) noexcept nogil
    cdef void _open(self, Conv* c, uint64_t ts) noexcept nogil
    cdef int64_t _admit(self, uint64_t ts) except -1 nogil
    cdef int _push(self, uint32_t slot, uint64_t ts) except -1 nogil
    cdef int _grow_heap(self, uint32_t cap) except -1 nogil
    cdef void _sift_down(self) noexcept nogil
    cdef uint32_t _frame(self, const Conv* c, uint8_t* out, uint8_t flags, uint32_t payload) noexcept nogil
    cdef uint32_t _l4_at(self, const Conv* c) noexcept nogil
    cdef uint32_t _ip(self, const Conv* c, uint8_t* out, uint8_t proto, uint32_t seg_len) noexcept nogil
    cdef uint32_t _datagram(self, const Conv* c, uint8_t* out, uint32_t payload) noexcept nogil
    cdef uint32_t _udp_request(self, const Conv* c, uint8_t* payload) noexcept nogil
    cdef uint32_t _udp_packet(self, Conv* c, uint8_t* out) noexcept nogil
    cdef uint32_t _request(self, const Conv* c, uint8_t* payload) noexcept nogil
    cdef uint32_t _packet(self, Conv* c, uint8_t* out) noexcept nogil
    cdef int _fill(self, Batch batch, uint64_t until_ns) except -1 nogil
    cdef uint64_t _next_ns(self) noexcept nogil


cdef inline void add_be(uint8_t* p, int n, uint64_t v) noexcept nogil:
    """p (n bytes, big-endian) += v, carrying: client k's address is its range's base + k."""
    cdef int k = n - 1
    cdef uint64_t s
    while k >= 0 and v:
        s = <uint64_t>p[k] + (v & 0xFF)
        p[k] = <uint8_t>s
        v = (v >> 8) + (s >> 8)
        k -= 1
