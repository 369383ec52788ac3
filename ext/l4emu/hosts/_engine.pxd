# The emulated hosts' C types: hosts, listening and UDP sockets, connections as fixed-size records
# in a keyed table, the timer heap, and the answers a step leaves for the emulate loop.
cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from l4emu.datapath._types cimport PacketInfo
from l4emu.hosts._table cimport Slab
from l4emu.clients._random cimport Dist, Rng
from l4emu.hosts._mt cimport MT

# Connection states, named as `ss` names them (STATE_NAMES in _engine.pyx).
cdef enum TcpState:
    T_CLOSED = 0            # also: a free record
    T_SYN_RECV = 1
    T_ESTAB = 2
    T_FIN_WAIT_1 = 3
    T_FIN_WAIT_2 = 4
    T_CLOSING = 5
    T_TIME_WAIT = 6
    T_CLOSE_WAIT = 7
    T_LAST_ACK = 8
    N_TCP_STATES = 9

cdef enum AppKind:
    APP_HTTP = 0
    APP_ECHO = 1
    APP_DISCARD = 2
    APP_DNS = 3             # DNS over TCP (RFC 7766): messages behind a 2-byte length, answered by Engine.dns
    N_APPS = 4

# An HTTP listener's answers: each a template rendered once per listener (_engine.pyx RESPONSES).
cdef enum Response:
    R_NONE = 0
    R_OK = 1                # 200, connection kept
    R_OK_CLOSE = 2          # 200, Connection: close
    R_BAD = 3               # 400
    R_TOO_LARGE = 4         # 431
    N_RESPONSES = 5

# A host's counters (COUNTER_NAMES in _engine.pyx); a snapshot shows the ones ever touched.
cdef enum Counter:
    C_SEGMENTS_IN = 0
    C_SEGMENTS_OUT = 1
    C_RESETS_SENT = 2
    C_RESETS_RECEIVED = 3
    C_CLOSED_PORT = 4
    C_SYNS = 5
    C_LISTEN_DROPS = 6
    C_LISTEN_OVERFLOWS = 7
    C_ACCEPTED = 8
    C_OUT_OF_ORDER = 9
    C_SYN_RECV_EXPIRED = 10
    C_TIME_WAIT_ENDED = 11
    C_NOT_FOR_US = 12
    C_UDP_CLOSED_PORT = 13
    C_DATAGRAMS_OUT = 14
    C_UNREADABLE = 15
    C_UDP_RCVBUF_ERRORS = 16    # request datagrams a full wait queue dropped (Linux Udp RcvbufErrors)
    C_DNS_QUERIES = 17          # dns: messages read whole and handed to the authority
    C_DNS_BAD_LENGTH = 18       # dns: a length prefix shorter than a DNS header: the connection closed
    C_DNS_UNANSWERED = 19       # dns: a message the authority would not answer: the connection closed
    C_DNS_QUERY_LIMIT = 20      # dns: connections closed after DNS_MAX_QUERIES answers
    C_DNS_IDLE_CLOSED = 21      # dns: connections closed after DNS_IDLE_NS without a message
    C_DNS_CONN_LIMIT = 22       # dns: SYNs dropped while DNS_MAX_CONNS connections were open
    C_DNS_ORPHANS_ENDED = 23    # dns: closed by us, the client silent DNS_ORPHAN_NS after: forgotten
    N_COUNTERS = 24

# The deadlines that are always the same delay after the packet clock (SYN-RECV's, TIME-WAIT's) wait
# in a queue each, in order of (deadline, record) like the heap, so that setting and clearing one is
# O(1) and touches only its neighbours; every other deadline is in the heap.
cdef enum:  # TimerQueue
    Q_SYN_RECV = 0
    Q_TIME_WAIT = 1
    N_QUEUES = 2

# Conn.flags
cdef enum ConnFlag:
    CF_SCALING = 1          # both sides agreed on window scaling
    CF_FIN_PENDING = 2      # the application closed: FIN after the send buffer
    CF_FIN_SENT = 4
    CF_PEER_FIN = 8
    CF_SYN_QUEUE = 16       # half-open, counted in its listener's SYN queue
    CF_ACCEPT_QUEUE = 32    # complete, waiting for accept()
    CF_APP = 64             # accepted and not closed: the application runs on it

cdef enum WorkState:
    W_NONE = 0              # no request of the connection's is waiting or in service
    W_WAITING = 1           # its next request waits in its listener's worker queue
    W_SERVING = 2           # a worker serves it; its deadline is the service's end

ctypedef struct Buf:
    uint8_t* data           # bytes data[off:end]; NULL when empty
    uint32_t off, end, cap

# A connection's byte buffers, allocated only while one of them holds something.
ctypedef struct ConnBufs:
    Buf recv                # arrived, not read by the application (Recv-Q before accept)
    Buf send                # echo: written by the application, not sent yet
    Buf req                 # http: a request's header block, not complete yet

# The client's half first: the connection table hashes only it (CONN_HASHED), so the emulate loop can
# prefetch a connection from a client's packet before the switch has picked the host.
ctypedef struct ConnKey:
    uint8_t peer[16]
    uint16_t peer_port
    uint8_t family
    uint8_t pad
    uint16_t host
    uint16_t port           # ours

# One TCP connection from the host's side (RFC 793 names); a record of the connection Slab.
ctypedef struct Conn:
    ConnKey key
    uint32_t hash           # the Slab's
    uint32_t listener
    uint64_t born_ns        # created, then: complete (when it entered the accept queue)
    uint64_t deadline_ns    # SYN-RECV or TIME-WAIT ends then (0: none)
    uint64_t order          # creation number: ss rows that sort equal keep creation order
    ConnBufs* bufs
    uint32_t iss, irs, snd_una, snd_nxt, rcv_nxt
    uint32_t snd_wnd        # the peer's window in bytes
    uint32_t body_left      # http: request body bytes still to skip
    uint32_t http_keep      # http: R_OK answers queued and not wholly sent (dns: messages answered)
    uint32_t http_off       # http: bytes of the first queued answer already sent
    int32_t handle          # -1: none
    uint32_t aprev, anext   # accept queue (record + 1)
    uint32_t timer          # position in the timer heap + 1 (0: not in the heap)
    uint32_t tprev, tnext   # in a deadline queue (tqueue): its neighbours (record + 1)
    uint32_t peer           # the client's Peer record (its link, its count of connections)
    uint16_t mss            # the peer's MSS
    uint8_t state           # TcpState
    uint8_t flags           # ConnFlag
    uint8_t snd_shift       # the peer's window scale, once both sides agreed on scaling
    uint8_t rcv_shift       # ours, sent in the SYN-ACK when the peer offered scaling
    uint8_t http_final      # http: the closing answer queued after the R_OK ones (R_NONE: none)
    uint8_t app             # AppKind
    # A listener with workers (capacity): requests received and not yet answered, where the one at
    # the head stands (WorkState), and the answers owed after them. The worker queue links the
    # connections waiting for a worker through aprev/anext: a connection waits for accept() or,
    # accepted, for a worker, never both.
    uint16_t pending
    uint8_t work
    uint8_t owed            # Response to queue once nothing is pending (R_NONE: none)
    uint8_t tqueue          # the deadline queue (TimerQueue) holding its deadline + 1 (0: none)

ctypedef struct Listener:
    uint32_t host
    uint16_t port
    uint8_t app
    uint8_t abort_on_overflow   # Linux tcp_abort_on_overflow
    int32_t handle
    uint32_t backlog
    uint64_t interval_ns    # the application's accept pace (0: as soon as queued)
    uint64_t ready_ns       # its next accept() may happen from here
    uint64_t accepted
    uint32_t syn_count      # half-open requests
    uint32_t accept_count   # complete, not accepted
    uint32_t aq_head, aq_tail   # the accept queue, oldest first (record + 1)
    uint8_t* responses[N_RESPONSES]
    uint32_t response_len[N_RESPONSES]
    # Capacity (workers > 0): requests served at once, each for a service time drawn from `service`,
    # its answer's body `response` bytes long (sized: every answer is written out per connection).
    uint32_t workers, busy
    uint32_t wq_head, wq_tail, wq_len   # connections waiting for a worker, oldest first (record + 1)
    uint8_t sized
    Rng rng
    Dist service
    Dist response
    uint8_t* body_text      # "served by <backend>\n": a sized answer's body starts with it
    uint32_t body_text_len
    # What the listener's application did, on the packet clock: requests served, those that found
    # every worker busy, the longest wait queue, and the time integrals of queue length and busy workers.
    uint64_t served, waited, queue_max, last_ns
    double queue_area, busy_area
    uint32_t dns_open       # dns: connections open (SYN-RECV to closed), at most DNS_MAX_CONNS

ctypedef struct UdpSock:
    uint32_t host
    uint16_t port
    uint8_t app
    int32_t handle
    uint64_t received, answered
    uint8_t* text           # app "http": the fixed answer
    uint32_t text_len
    # Request-reply (capacity: workers or response_bytes set, _udp.pxi): each datagram is a request
    # served by a worker for a drawn service time, waiting in a queue of at most `backlog` datagrams
    # (the socket's receive buffer) when all are busy, answered with `response` bytes in datagrams.
    uint8_t sized
    uint8_t sized_response  # response bytes drawn per answer (else the answer is `text`)
    uint32_t workers, busy, backlog
    uint32_t wq_head, wq_tail, wq_len   # jobs waiting for a worker, oldest first (job + 1)
    Rng rng
    Dist service
    Dist response
    uint64_t served, waited, queue_max, dropped, last_ns
    double queue_area, busy_area

# A request datagram of a request-reply UDP socket, waiting for a worker or in service.
ctypedef struct UdpJob:
    uint8_t peer[16]
    uint32_t sock
    uint32_t next           # the socket's wait queue, or the free list (job + 1)
    uint32_t peer_rec       # the client's Peer record + 1: its link is kept until the answer is out
    uint8_t id[4]           # the request's first four bytes, echoed in every answer datagram
    uint16_t peer_port
    uint8_t family

ctypedef struct Host:
    uint8_t addr[16]
    uint8_t family
    uint16_t ip_id
    int32_t next_handle
    uint32_t* free_handles  # a min-heap of released numbers, all below next_handle
    uint32_t n_free, free_cap
    uint64_t counters[N_COUNTERS]
    uint32_t touched        # bit k: counter k was ever counted (a snapshot shows those)

# What the datapath parsed, as a host reads it.
ctypedef struct Seg:
    const uint8_t* src
    const uint8_t* dst
    const uint8_t* payload
    const uint8_t* options
    const uint8_t* ip       # the IP packet (an ICMP error quotes it)
    uint32_t plen, olen, ip_len
    uint32_t seq, ack
    uint16_t sport, dport, window
    uint8_t family, proto, flags

cdef enum:
    PROTO_KEY_TCP = 1       # a socket's protocol in socket_of()
    PROTO_KEY_UDP = 2

cdef enum:
    MAX_LINK_HEADER = 40    # Ethernet with four VLAN tags is 30 bytes; SLL2 20

# A client's link: how answers go back to it (link type, interface, link header of its last packet).
ctypedef struct Peer:
    uint8_t addr[16]
    uint8_t family
    uint8_t pad[7]
    uint32_t hash
    uint32_t refs           # its TCP connections on every host
    uint16_t linktype
    uint16_t iface
    uint8_t has_link
    uint8_t live            # in the table (a freed record keeps its place in a prune list)
    uint8_t hdr_len
    uint8_t hdr[MAX_LINK_HEADER]


# Final (no subclass): the emulate loop calls its methods directly, where the compiler can inline them.
@cython.final
cdef class Engine:
    cdef Host* hosts
    cdef uint32_t n_hosts
    cdef Listener* listeners
    cdef uint32_t n_listeners
    cdef UdpSock* udps
    cdef uint32_t n_udps
    cdef int32_t* real_host         # per real of the switch: its host, or -1
    cdef uint32_t n_reals
    cdef Slab by_address            # host address -> host
    cdef Slab sockets               # (host, port, protocol) -> listener or UDP socket
    cdef Slab conns                 # ConnKey -> Conn
    cdef Slab peers                 # client address -> Peer
    cdef uint32_t* prune            # peers whose last connection went (dropped at the step's end)
    cdef uint32_t n_prune, prune_cap
    cdef uint64_t* t_when           # the timer heap: (deadline, connection), earliest first
    cdef uint32_t* t_conn
    cdef uint32_t n_timers, timer_cap
    cdef uint32_t q_head[N_QUEUES]  # the deadline queues: oldest and newest (record + 1; 0: empty), the
    cdef uint32_t q_tail[N_QUEUES]  # oldest's deadline, and how many
    cdef uint64_t q_when[N_QUEUES]
    cdef uint32_t q_len[N_QUEUES]
    cdef uint32_t waiting           # listeners with a non-empty accept queue
    cdef uint64_t created
    cdef MT* isn                    # per host: its random.Random in C (one ISN per new connection)
    # The answers of the current step: packets in out_data, each at out_off, out_len, and the
    # moment it was made (advance: an accept's time).
    cdef uint8_t* out_data
    cdef uint64_t out_used, out_cap
    cdef uint64_t* out_off
    cdef uint32_t* out_len
    cdef uint64_t* out_at
    cdef uint32_t n_out, out_slots
    cdef uint64_t step_at
    cdef int32_t cur_peer           # the Peer of the packet being received (-1: none)
    cdef uint32_t cur_hash          # ... and the connection table's hash of its client half (client_hash)
    cdef uint8_t addr_filter[32]    # bit b: some host's address ends in byte b (most lookups end here)
    # Request-reply UDP sockets (_udp.pxi): their requests, and a heap of the services in progress
    # (end time, job), earliest first.
    cdef UdpJob* jobs
    cdef uint32_t n_jobs, jobs_cap, free_job
    cdef uint64_t* uj_when
    cdef uint32_t* uj_job
    cdef uint32_t n_uj, uj_cap
    cdef object dns                 # app "dns": answer(query, client, host address, port) -> bytes | None

    cdef int host_of(self, const uint8_t* addr, uint8_t family) noexcept
    cdef int receive(self, uint32_t h, Seg* seg, uint64_t now, uint16_t linktype, uint16_t iface,
                     const uint8_t* frame, uint32_t l3, uint32_t conn_hash) noexcept
    cdef void advance(self, uint64_t now) noexcept
    cdef uint64_t next_due(self) noexcept    # UINT64_MAX: no clock has anything to do
    cdef Peer* peer_of(self, const uint8_t* addr, uint8_t family) noexcept
    cdef int note_link(self, const uint8_t* addr, uint8_t family) noexcept
    cdef void prune_peers(self) noexcept
    cdef void truncate(self, uint32_t n) noexcept
    cdef void count(self, uint32_t h, int which, uint64_t by) noexcept
    cdef int socket_of(self, uint32_t host, uint16_t port, uint16_t proto) noexcept
    cdef int conn_of(self, uint32_t host, const uint8_t* peer, uint8_t family, uint16_t peer_port,
                     uint16_t port, uint32_t conn_hash) noexcept
    cdef Conn* conn(self, uint32_t k) noexcept
    cdef void _prune_later(self, uint32_t r) noexcept
    cdef void peer_ref(self, Conn* c, int by) noexcept
    cdef uint8_t* reserve(self, uint32_t n) noexcept
    cdef int _socket(self, uint32_t host, uint16_t port, uint16_t proto, uint32_t index) except -1
    cdef uint32_t client_hash(self, const uint8_t* peer, uint8_t family, uint16_t peer_port) noexcept


cdef bint read_segment(const uint8_t* frame, uint32_t n, uint16_t linktype, PacketInfo* info,
                       Seg* seg) noexcept nogil
cdef bint segment_after(const uint8_t* frame, uint32_t n, uint32_t origlen, int parsed, PacketInfo* info,
                        Seg* seg) noexcept nogil
