# C types shared by the datapath rooms: packet keys, flows, services, reals, reasons.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t

cdef enum:
    NS = 1000000000         # nanoseconds per second: every clock in the project counts nanoseconds

# IPVS TCP state numbers (ip_vs_proto_tcp.c order) plus UDP; _datapath.pyx names each (STATE_NAMES).
cdef enum ConnState:
    S_NONE = 0
    S_ESTABLISHED = 1
    S_SYN_SENT = 2
    S_SYN_RECV = 3
    S_FIN_WAIT = 4
    S_TIME_WAIT = 5
    S_CLOSE = 6
    S_CLOSE_WAIT = 7
    S_LAST_ACK = 8
    S_LISTEN = 9
    S_SYNACK = 10
    S_UDP = 11
    N_STATES = 12

# Why a packet was dropped (Batch.detail when verdict is V_DROP); _datapath.pyx names each (DROP_REASONS).
cdef enum DropReason:
    D_TRUNCATED_L2 = 0
    D_TRUNCATED_IP = 1
    D_BAD_IP_HEADER = 2
    D_TRUNCATED_IPV6_EXT = 3
    D_TRUNCATED_TCP = 4
    D_BAD_TCP_OFFSET = 5
    D_TRUNCATED_UDP = 6
    D_BAD_UDP_LENGTH = 7
    D_FRAGMENT = 8
    D_TCP_NOT_SYN = 9
    D_NO_REAL = 10
    D_TABLE_FULL = 11
    D_REPLY_CLASH = 12
    D_PROBE_LIMIT = 13      # no free index slot within MAX_PROBE of the key's home (colliding keys)
    N_DROP_REASONS = 14

# Why a packet passed untouched (Batch.detail when verdict is V_PASS); _datapath.pyx names each (PASS_REASONS).
cdef enum PassReason:
    P_NOT_IP = 0
    P_OTHER_PROTOCOL = 1
    P_NO_SERVICE = 2
    P_FRAGMENT = 3
    P_UNATTRIBUTED = 4      # from the service side (a VIP, a capture server, a real) to a client with no flow
    N_PASS_REASONS = 5

# Flow.flags
cdef enum FlowFlag:
    F_IN_USE = 1
    F_ASSURED = 2       # saw a completed handshake (TCP) or a reply (UDP): never evicted for room
    F_BLACKHOLED = 4    # sent to its real after the real went down (counted once)
    F_TEMPLATE = 8      # a persistence template (client net -> real), not a connection

cdef enum:
    TEMPLATE_PROTO = 0x80   # or-ed into a template's protocol: no packet's key can ever match it

# Real.flags
cdef enum RealFlag:
    RF_DOWN = 1             # marked down by an admin or a health check: no new flows
    RF_OVERLOADED = 2       # over its upper connection threshold until it falls under the lower one

ctypedef struct PacketKey:
    uint8_t src[16]         # IPv4 addresses use the first 4 bytes, the rest stay zero
    uint8_t dst[16]
    uint16_t sport
    uint16_t dport
    uint8_t proto
    uint8_t family          # 4 or 6

# What parsing found in one packet.
ctypedef struct PacketInfo:
    PacketKey key           # the tuple to look up (for an ICMP error: its quoted packet's, reversed)
    uint32_t l3             # offset of the IP header
    uint32_t l4             # offset of the TCP/UDP (or ICMP) header
    uint32_t inner_l3       # ICMP errors: offsets of the quoted packet's IP and TCP/UDP headers
    uint32_t inner_l4
    uint32_t caplen         # bytes captured: a rewrite never writes past them
    uint32_t end            # where the IP packet ends (its length on the wire, from l3)
    uint8_t icmp_error      # 1: an ICMP error about a TCP/UDP packet (translated with its flow)
    uint8_t tcp_flags
    uint8_t len_from_capture  # BIG TCP/GSO: IP length 0 (or an IPv6 jumbo option): the capture gave the length
    uint8_t dst_in_rthdr      # IPv6: a routing header with segments left holds the L4 pseudo-header's destination
    int reason

ctypedef struct Flow:
    uint8_t client[16]
    uint64_t expires_ns
    uint32_t real           # index into the datapath's reals
    uint32_t tprev, tnext   # timer-wheel bucket list (flow index + 1; 0 ends); tnext links the free list too
    uint32_t eprev, enext   # embryonic (not yet assured) FIFO, oldest first
    uint16_t cport
    uint16_t bucket         # timer-wheel bucket the flow is linked in
    uint8_t proto
    uint8_t family
    uint8_t state           # ConnState
    uint8_t flags           # FlowFlag
    uint32_t controlled     # templates: connections it placed that are still in the table

ctypedef struct Service:
    uint8_t vip[16]
    uint16_t vport
    uint8_t proto
    uint8_t family
    uint32_t first_real     # its reals are reals[first_real : first_real + n_reals]
    uint32_t n_reals
    uint64_t persist_ns     # IPVS -p: 0 = no persistence
    uint8_t persist_mask[16]    # IPVS -M: the client address bits a template keeps

# Where a service meets its clients: its VIP, and the capture's original servers (`capture_servers`),
# which stand for the VIP: clients' packets to them are the service's, their packets are answers.
ctypedef struct Front:
    uint8_t addr[16]
    uint16_t port
    uint8_t proto
    uint8_t family
    uint8_t is_vip
    uint32_t service

ctypedef struct Real:
    uint8_t addr[16]
    uint16_t port
    uint8_t family
    uint32_t service
    int32_t weight          # 0 = quiescent: no new flows, existing ones go on
    uint8_t flags           # RealFlag
    uint32_t upper_threshold    # IPVS -x: 0 = none
    uint32_t lower_threshold    # IPVS -y: 0 = three quarters of the upper one
    uint32_t active         # connections in ESTABLISHED, SYN_SENT, SYN_RECV, SYNACK (IPVS's ActiveConn)
    uint32_t inactive       # every other state, and every UDP entry (IPVS's InActConn)
    uint64_t conns          # new connections scheduled to it
    uint32_t persistent     # persistence templates pointing at it (IPVS's PersistConn)
    uint64_t in_pkts, out_pkts, in_bytes, out_bytes


cdef inline tuple name_table(dict names, Py_ssize_t count, str vocabulary):
    """Names in enum order from {enum value: name}, as IPVS binds each name to its constant
    (`[IP_VS_TCP_S_NONE] = "NONE"`): every value from 0 to count - 1 named once, or the module
    does not import."""
    cdef list ordered = []
    cdef Py_ssize_t k
    for k in range(count):
        if k not in names or names[k] in ordered:
            break
        ordered.append(names[k])
    if len(ordered) != count or len(names) != count:
        raise ImportError(f"{vocabulary}: {count} distinct names expected for 0..{count - 1}, got {names!r}")
    return tuple(ordered)
