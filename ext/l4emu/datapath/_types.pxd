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
    # Forwarding (dr, tun): the first two leave an ICMP error in the packet's place (V_ICMP).
    D_TTL_EXCEEDED = 14     # TTL / hop limit ran out where the switch forwards: ICMP time exceeded sent
    D_TOO_BIG = 15          # over the MTU with DF (IPv4) or IPv6: ICMP fragmentation needed / packet too big sent
    D_TOO_BIG_DROPPED = 16  # over the MTU, dropped without an ICMP error (encap = katran, or no DF: no fragmenter)
    D_TUNNEL_LINK = 17      # the capture's link type cannot say the tunnel's outer family (BSD null, IPv4/IPv6 types)
    D_NO_MEMORY = 18        # the batch could not grow to hold a longer packet
    D_FRAG_OVERFLOW = 19    # track: a fragment ahead of its first found the waiting room full
    D_FRAG_HELD = 20        # track: waiting for its first fragment (not counted as a drop: it leaves later or expires)
    D_NO_LOCAL_PORT = 21    # fullnat: every local address of the real's pool has all its ports in use
    N_DROP_REASONS = 22

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
    F_NOOUTPUT = 16     # IPVS IP_VS_CONN_F_NOOUTPUT: dr/tun, no packet of the real's side seen yet
    F_FDATA = 32        # fullnat: the real's SYN-ACK was seen, fdata_seq holds its sequence number + 1

cdef enum:
    TEMPLATE_PROTO = 0x80   # or-ed into a template's protocol: no packet's key can ever match it

# Real.forward: the forwarding method (IPVS's Masq, Route, Tunnel; DPVS's full-NAT).
cdef enum FwdMethod:
    FWD_MASQ = 0
    FWD_DR = 1
    FWD_TUN = 2
    FWD_FULLNAT = 3         # DPVS full-NAT: both addresses rewritten, the client's one from a local address pool
    N_FWD = 4

# Service.fragments: what a fragment for the service's VIP gets.
cdef enum FragPolicy:
    FRAG_DROP = 0           # counted drop (Katran, DPVS)
    FRAG_3TUPLE = 1         # the real by a fixed hash of (source, destination, protocol) (Maglev 4.3)
    FRAG_TRACK = 2          # the first fragment's flow, remembered by (source, destination, protocol, IP ID) (Cilium)
    FRAG_REASSEMBLE = 3     # Linux's defragmentation before IPVS: the whole datagram goes through (_reasm.pyx)
    N_FRAG_POLICIES = 4

# Real.tun_type (ipvsadm --tun-type).
cdef enum TunType:
    TUN_IPIP = 0
    TUN_GUE = 1
    TUN_GRE = 2

# Real.tun_flags (ipvsadm --tun-nocsum / --tun-csum / --tun-remcsum; nocsum is none of them).
cdef enum TunFlag:
    TUNF_CSUM = 1
    TUNF_REMCSUM = 2

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
    uint8_t fragment          # an IP fragment (the parser said PARSE_FRAGMENT)
    uint8_t more_frags        # a fragment: MF set
    uint32_t frag_offset      # ... its payload's offset in the datagram, bytes
    uint32_t frag_id          # ... the datagram's IP ID (IPv4: 16 bits; IPv6: the fragment header's 32)
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
    uint32_t fdata_seq      # fullnat: the real's first data byte (its SYN-ACK's seq + 1): TOA goes where it is acked
    uint16_t lport          # fullnat: the local port the real sees as the client's
    uint16_t laddr          # fullnat: the local address, an index into the datapath's LocalAddr array

ctypedef struct Service:
    uint8_t vip[16]
    uint16_t vport
    uint8_t proto
    uint8_t family
    uint32_t first_real     # its reals are reals[first_real : first_real + n_reals]
    uint32_t n_reals
    uint64_t persist_ns     # IPVS -p: 0 = no persistence
    uint8_t persist_mask[16]    # IPVS -M: the client address bits a template keeps
    uint32_t mtu            # the route MTU towards the reals (dr, tun)
    uint8_t source4[16]     # the switch's own addresses: tunnel outer source, ICMP errors' source
    uint8_t fragments       # FragPolicy: what a fragment for the VIP gets
    uint8_t source6[16]

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
    uint8_t forward         # FwdMethod
    uint8_t tun_type        # TunType
    uint8_t tun_flags       # TunFlag bits
    uint8_t katran          # encap = "katran": Katran's outer source, TTL 64, no DF, no ICMP
    uint16_t tun_port       # GUE destination port
    uint8_t has_mac
    uint8_t mac[6]          # dr, tun: the Ethernet destination (the real's, or the next hop's)
    uint8_t toa             # fullnat: write the client's address in a TOA TCP option (kind 254)
    uint16_t pool           # fullnat: its local address pool, an index into the datapath's LocalPool array


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
