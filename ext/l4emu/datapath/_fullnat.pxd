# Full-NAT (DPVS, Alibaba's LVS): the switch's local addresses and the ports that stand for clients,
# and the TOA TCP option that tells the real who the client was. Every helper takes the bytes it may
# touch as a pointer whose length its caller checked.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy
from l4emu.datapath._types cimport PacketInfo
from l4emu.datapath._checksum cimport apply_diff, diff_words, load16, store16
from l4emu.datapath._wire cimport *

cdef enum:
    TCPOPT_EOL = 0
    TCPOPT_NOP = 1
    TCPOPT_MSS = 2
    TCPOLEN_MSS = 4
    TCPOPT_TOA = 254            # Alibaba's TOA, DPVS's TCP_OPT_ADDR
    TOA_LEN4 = 8                # kind, length, the client's port, its IPv4 address
    TOA_LEN6 = 20               # kind, length, port, IPv6 address (DPVS's TCP_OLEN_IP6_ADDR)
    TCP_MAX_HEADER_LEN = 60     # a 4-bit data offset: 40 bytes of options at most
    LADDR_MAX_TRIALS = 16       # DPVS dp_vs_laddr_max_trails: local addresses tried for a free port

# One local address and its free ports: a FIFO ring as DPVS's sa_pool keeps them (a port is taken from
# the head and given back at the tail, so the one just released is reused last). O(1) both ways.
ctypedef struct LocalAddr:
    uint8_t addr[16]
    uint8_t family
    uint16_t* ring              # `size` slots; the free ports are ring[head], ring[head + 1], ... (mod size)
    uint32_t size
    uint32_t head
    uint32_t n_free
    uint64_t flows              # flows it was given (DPVS's conn_counts counts those alive: in use = size - free)

# A pool: the local addresses a fullnat real (or its service) takes, tried round robin (DPVS __get_laddr).
ctypedef struct LocalPool:
    uint32_t first              # into the datapath's pool_members
    uint32_t n
    uint32_t cursor


cdef inline bint port_take(LocalAddr* a, uint16_t* port) noexcept nogil:
    if a.n_free == 0:
        return False
    port[0] = a.ring[a.head]
    a.head = a.head + 1 if a.head + 1 < a.size else 0
    a.n_free -= 1
    a.flows += 1
    return True


cdef inline void port_give_back(LocalAddr* a, uint16_t port) noexcept nogil:
    cdef uint32_t tail = a.head + a.n_free
    if tail >= a.size:
        tail -= a.size
    a.ring[tail] = port
    a.n_free += 1


cdef inline uint32_t toa_length(int family) noexcept nogil:
    return TOA_LEN4 if family == 4 else TOA_LEN6


cdef inline bint acks_first_data(const uint8_t* p, const PacketInfo* info, uint32_t fdata_seq) noexcept nogil:
    """DPVS tcp_fnat_in_handler: TOA goes in the client's packets that acknowledge the real's SYN-ACK
    and nothing more (the handshake's ACK and the data before the real sends any); not in a SYN or RST."""
    cdef const uint8_t* a = p + info.l4 + 8
    cdef uint32_t ack = (<uint32_t>a[0] << 24) | (<uint32_t>a[1] << 16) | (<uint32_t>a[2] << 8) | a[3]
    return ack == fdata_seq and not (info.tcp_flags & (TCP_SYN | TCP_RST))


cdef inline uint32_t tcp_seq(const uint8_t* p, const PacketInfo* info) noexcept nogil:
    cdef const uint8_t* s = p + info.l4 + 4
    return (<uint32_t>s[0] << 24) | (<uint32_t>s[1] << 16) | (<uint32_t>s[2] << 8) | s[3]


cdef inline void write_toa(uint8_t* q, uint32_t l3, uint32_t l4, int family, const uint8_t* client,
                           uint16_t cport) noexcept nogil:
    """The TCP header at q + l4 has just been given `toa_length` bytes of room right after its 20 fixed
    bytes (DPVS inserts TOA there, before the options already present): write the option and make every
    length and checksum agree. RFC 1624's ~m + m' is m' - m modulo 0xFFFF, so each change is added as
    what grew: the TCP sum by the option's words (where there was nothing), the data offset's n / 4
    words and the pseudo-header's length's n; the IPv4 header's by its total length's n. Neither sum
    can be zero, so apply_diff folds it to the bytes ~m + m' would give (no old value is read for it)."""
    cdef uint32_t n = toa_length(family)
    cdef uint8_t* tcp = q + l4
    cdef uint8_t* opt = tcp + TCP_HEADER_LEN
    cdef uint32_t d = ((<uint32_t>TCPOPT_TOA << 8) | n) + cport + ((n >> 2) << 12) + n
    cdef uint32_t k
    opt[0] = TCPOPT_TOA
    opt[1] = <uint8_t>n
    store16(opt + 2, cport)
    memcpy(opt + 4, client, n - 4)                          # constant sizes: copied inline
    for k in range(0, n - 4, 2):
        d += load16(client + k)
    tcp[TCP_DATA_OFFSET] += <uint8_t>((n >> 2) << 4)      # checked by the caller: stays within 60 bytes
    if family == 4:
        store16(q + l3 + IP4_TOTAL_LEN, load16(q + l3 + IP4_TOTAL_LEN) + n)
        apply_diff(q + l3 + IP4_CSUM, n)
    else:
        store16(q + l3 + IP6_PAYLOAD_LEN, load16(q + l3 + IP6_PAYLOAD_LEN) + n)
    apply_diff(tcp + TCP_CSUM, d)


cdef inline void lower_mss(uint8_t* p, uint32_t l4, uint32_t limit, uint32_t by) noexcept nogil:
    """DPVS tcp_out_adjust_mss: the real's SYN-ACK offers the client an MSS `by` bytes smaller, so that
    a full segment still has room for TOA on its way in (checksum by RFC 1624). limit: the end of what
    may be read (the TCP header's end, within the capture)."""
    cdef uint32_t k = l4 + TCP_HEADER_LEN, size
    cdef uint8_t old[2]
    while k < limit:
        if p[k] == TCPOPT_EOL:
            return
        if p[k] == TCPOPT_NOP:
            k += 1
            continue
        if k + 1 >= limit:
            return
        size = p[k + 1]
        if size < 2 or k + size > limit:
            return                              # silly or partial options: left alone, as DPVS does
        if p[k] == TCPOPT_MSS and size == TCPOLEN_MSS:
            if load16(p + k + 2) <= by:
                return
            memcpy(old, p + k + 2, 2)
            store16(p + k + 2, load16(p + k + 2) - by)
            apply_diff(p + l4 + TCP_CSUM, diff_words(0, old, p + k + 2, 2))
            return
        k += size
