# Forwarding methods other than NAT: what IPVS's ip_vs_dr_xmit and ip_vs_tunnel_xmit (and Katran's
# pckt_encap.h) write, and the ICMP errors a forwarding hop owes the sender (RFC 792, RFC 4443).
# Every helper takes the bytes it may touch as a pointer and a length checked by its caller.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from l4emu.datapath._types cimport *
from l4emu.datapath._checksum cimport apply_diff, diff_words, fold, load16, store16, sum_bytes
from l4emu.datapath._wire cimport *

cdef enum:
    ETH_ADDR_LEN = 6
    ETH_DST = 0
    ETH_SRC = 6
    SLL_PROTOCOL = 14           # Linux cooked header: protocol field
    SLL2_PROTOCOL = 0
    IP4_TOS = 1
    IP4_TTL = 8
    IP6_HOP_LIMIT = 7
    IP4_DF = 0x4000
    IP4_MF = 0x2000
    IPPROTO_IPIP = 4            # IPv4 in IP
    IPPROTO_IPV6_ENCAP = 41     # IPv6 in IP
    IPPROTO_GRE = 47
    GUE_HEADER_LEN = 4          # draft-ietf-intarea-gue variant 0, no options (IPVS)
    GRE_HEADER_LEN = 4
    GRE_CSUM_LEN = 4            # checksum and reserved1, present with the C bit (RFC 2784)
    GRE_FLAG_CSUM = 0x8000
    ECN_MASK = 0x03
    ECN_CE = 0x03
    ECN_ECT0 = 0x02
    TOS_MASK = 0x1E             # IPTOS_TOS_MASK: what an ICMP error keeps of the offender's TOS
    TOS_INTERNETCONTROL = 0xC0  # IPTOS_PREC_INTERNETCONTROL: Linux's precedence for ICMP errors
    ICMP_TTL = 64               # Linux's default TTL / hop limit for what the host itself sends
    KATRAN_TTL = 64             # Katran's DEFAULT_TTL for the outer header
    KATRAN_GUE_PORT = 6080      # Katran's GUE_DPORT
    ICMP4_QUOTE_MAX = 548       # 576 - 20 - 8: Linux icmp_send quotes at most this much (RFC 1812 4.3.2.3)
    ICMP6_QUOTE_MAX = 1232      # 1280 - 40 - 8 (RFC 4443 2.4 c)
    ICMP4_UNREACH = 3
    ICMP4_FRAG_NEEDED = 4
    ICMP4_TIME_EXCEEDED = 11
    ICMP6_PACKET_TOO_BIG = 2
    ICMP6_TIME_EXCEEDED = 3
    IPV6_MIN_MTU = 1280
    IPV4_MIN_MTU = 68
    EPHEMERAL_LOW = 32768       # Linux ip_local_port_range: udp_flow_src_port maps a flow hash into it
    EPHEMERAL_HIGH = 61000


cdef inline uint32_t tunnel_overhead(const Real* r) noexcept nogil:
    """Bytes the tunnel adds in front of the inner IP packet (IPVS's MTU arithmetic)."""
    cdef uint32_t n = IP4_HEADER_LEN if r.family == 4 else IP6_HEADER_LEN
    if r.tun_type == TUN_GUE:
        n += UDP_HEADER_LEN + (0 if r.katran else GUE_HEADER_LEN)
    elif r.tun_type == TUN_GRE:
        n += GRE_HEADER_LEN + (GRE_CSUM_LEN if r.tun_flags & TUNF_CSUM else 0)
    return n


cdef inline bint set_link_family(uint8_t* q, uint32_t l3, uint16_t linktype, int family) noexcept nogil:
    """Write the outer family into the link header (Ethernet's type after any VLAN tags, SLL's protocol);
    False when the link type fixes the family and it is the other one."""
    cdef uint32_t ethertype = ETHERTYPE_IPV4 if family == 4 else ETHERTYPE_IPV6
    if linktype == LINKTYPE_ETHERNET:
        store16(q + l3 - 2, ethertype)
    elif linktype == LINKTYPE_LINUX_SLL:
        store16(q + SLL_PROTOCOL, ethertype)
    elif linktype == LINKTYPE_LINUX_SLL2:
        store16(q + SLL2_PROTOCOL, ethertype)
    elif not (linktype == LINKTYPE_RAW or linktype == DLT_RAW_BSD or linktype == DLT_RAW_OPENBSD):
        return False
    return True


cdef inline void next_hop_mac(uint8_t* q, uint16_t linktype, const Real* r) noexcept nogil:
    """Ethernet: the frame leaves from the switch (source = the MAC it was sent to) to the real's MAC
    (IPVS DR changes only this; Katran writes the same two fields)."""
    if linktype != LINKTYPE_ETHERNET:
        return
    memcpy(q + ETH_SRC, q + ETH_DST, ETH_ADDR_LEN)
    if r.has_mac:
        memcpy(q + ETH_DST, r.mac, ETH_ADDR_LEN)


cdef inline bint ttl_left(const uint8_t* p, uint32_t l3, int family) noexcept nogil:
    """IPVS decrement_ttl: a packet arriving with TTL / hop limit 1 or 0 cannot be forwarded."""
    return p[l3 + (IP4_TTL if family == 4 else IP6_HOP_LIMIT)] > 1


cdef inline void decrement_ttl(uint8_t* p, uint32_t l3, int family) noexcept nogil:
    """TTL - 1 (IPv4 header checksum by RFC 1624) or hop limit - 1."""
    cdef uint8_t new[2]
    if family == 6:
        p[l3 + IP6_HOP_LIMIT] -= 1
        return
    new[0] = p[l3 + IP4_TTL] - 1
    new[1] = p[l3 + IP4_TTL + 1]
    apply_diff(p + l3 + IP4_CSUM, diff_words(0, p + l3 + IP4_TTL, new, 2))
    p[l3 + IP4_TTL] = new[0]


cdef inline uint8_t dsfield(const uint8_t* p, uint32_t l3, int family) noexcept nogil:
    if family == 4:
        return p[l3 + IP4_TOS]
    return <uint8_t>(((p[l3] & 0x0F) << 4) | (p[l3 + 1] >> 4))


cdef inline uint8_t ecn_encapsulate(uint8_t inner) noexcept nogil:
    """INET_ECN_encapsulate(inner, inner): DSCP and ECN copied, but CE becomes ECT(0) (RFC 6040)."""
    if (inner & ECN_MASK) == ECN_CE:
        return <uint8_t>((inner & ~ECN_MASK) | ECN_ECT0)
    return inner


cdef inline void katran_ipip_source(uint8_t* out, const PacketKey* key, int outer_family) noexcept nogil:
    """Katran's IPIP outer source, derived from the client so that the reals' RSS spreads flows:
    IPv4 172.16.x.y, IPv6 100::/64 with the client's last word XOR its port (pckt_encap.h, read
    byte by byte as the little-endian XDP program lays them out)."""
    cdef const uint8_t* src = &key.src[0] if key.family == 4 else &key.src[12]
    memset(out, 0, 16)
    if outer_family == 4:
        out[0] = 172
        out[1] = 16
        out[2] = src[2] ^ <uint8_t>(key.sport & 0xFF)
        out[3] = src[3] ^ <uint8_t>(key.sport >> 8)
    else:
        out[0] = 0x01
        out[12] = src[0] ^ <uint8_t>(key.sport >> 8)
        out[13] = src[1] ^ <uint8_t>(key.sport & 0xFF)
        out[14] = src[2]
        out[15] = src[3]


cdef inline uint16_t katran_gue_sport(const PacketKey* key, int outer_family) noexcept nogil:
    """Katran's GUE source port: the client's port mixed with two bytes of its address, as the
    XDP program's little-endian arithmetic puts them on the wire."""
    cdef const uint8_t* src = &key.src[0] if key.family == 4 else &key.src[12]
    if outer_family == 4:
        return <uint16_t>((((key.sport & 0xFF) ^ src[2]) << 8) | ((key.sport >> 8) ^ src[3]))
    if key.family == 6:
        return <uint16_t>((((key.sport >> 8) ^ src[0]) << 8) | ((key.sport & 0xFF) ^ src[1]))
    return <uint16_t>((((key.sport >> 8) ^ src[2]) << 8) | ((key.sport & 0xFF) ^ src[3]))


cdef inline uint16_t flow_src_port(uint64_t h) noexcept nogil:
    """udp_flow_src_port: the flow's hash scaled into the ephemeral range (IPVS GUE's source port)."""
    cdef uint64_t low = <uint32_t>h
    return <uint16_t>(EPHEMERAL_LOW + ((low * (EPHEMERAL_HIGH - EPHEMERAL_LOW)) >> 32))


cdef inline uint32_t pseudo_sum(const uint8_t* q, uint32_t l3, int family, uint32_t length,
                                uint8_t proto) noexcept nogil:
    """RFC 768 / RFC 8200 8.1 pseudo-header sum of the IP header at q + l3."""
    cdef uint32_t acc
    if family == 4:
        acc = sum_bytes(0, q + l3 + IP4_SRC, 8)
    else:
        acc = sum_bytes(0, q + l3 + IP6_SRC, 32)
        acc += length >> 16
    return acc + (length & 0xFFFF) + proto


cdef inline void write_outer_ip(uint8_t* q, uint32_t o, int family, uint8_t tos, uint32_t payload,
                                uint16_t ip_id, bint df, uint8_t ttl, uint8_t proto, const uint8_t* src,
                                const uint8_t* dst) noexcept nogil:
    """An outer IPv4 (checksummed) or IPv6 header at q + o carrying `payload` bytes."""
    if family == 4:
        q[o] = 0x45
        q[o + IP4_TOS] = tos
        store16(q + o + IP4_TOTAL_LEN, IP4_HEADER_LEN + payload)
        store16(q + o + IP4_ID, ip_id)
        store16(q + o + IP4_FRAG, IP4_DF if df else 0)
        q[o + IP4_TTL] = ttl
        q[o + IP4_PROTO] = proto
        store16(q + o + IP4_CSUM, 0)
        memcpy(q + o + IP4_SRC, src, 4)
        memcpy(q + o + IP4_DST, dst, 4)
        store16(q + o + IP4_CSUM, ~fold(sum_bytes(0, q + o, IP4_HEADER_LEN)) & 0xFFFF)
    else:
        q[o] = <uint8_t>(0x60 | (tos >> 4))
        q[o + 1] = <uint8_t>((tos & 0x0F) << 4)
        q[o + 2] = q[o + 3] = 0
        store16(q + o + IP6_PAYLOAD_LEN, payload)
        q[o + IP6_NEXT] = proto
        q[o + IP6_HOP_LIMIT] = ttl
        memcpy(q + o + IP6_SRC, src, 16)
        memcpy(q + o + IP6_DST, dst, 16)


cdef inline void finish_l4_checksum(uint8_t* q, uint32_t l3, uint32_t l4, int family, uint32_t length,
                                    uint8_t proto, uint32_t csum_at) noexcept nogil:
    """A full checksum over the pseudo-header and `length` bytes at l4, written at l4 + csum_at
    (UDP: 0 goes out as 0xFFFF, RFC 768)."""
    cdef uint16_t c
    store16(q + l4 + csum_at, 0)
    c = ~fold(sum_bytes(pseudo_sum(q, l3, family, length, proto), q + l4, length)) & 0xFFFF
    if c == 0 and proto == IPPROTO_UDP:
        c = 0xFFFF
    store16(q + l4 + csum_at, c)


cdef inline void write_fragment_header(uint8_t* ip, uint32_t hlen, uint32_t length, uint32_t offset,
                                       bint more) noexcept nogil:
    """Make the IPv4 header at ip that of a fragment: `length` payload bytes at `offset`, MF as told,
    DF kept as it was, the header checksum computed whole."""
    store16(ip + IP4_TOTAL_LEN, hlen + length)
    store16(ip + IP4_FRAG, (load16(ip + IP4_FRAG) & IP4_DF) | (IP4_MF if more else 0) | (offset >> 3))
    store16(ip + IP4_CSUM, 0)
    store16(ip + IP4_CSUM, ~fold(sum_bytes(0, ip, hlen)) & 0xFFFF)


cdef inline uint32_t write_icmp_error(uint8_t* q, const uint8_t* p, uint32_t l3, uint32_t quote,
                                      uint16_t linktype, int family, uint8_t icmp_type, uint8_t code,
                                      uint32_t info_word, const uint8_t* src, uint16_t ip_id) noexcept nogil:
    """An ICMP (RFC 792) or ICMPv6 (RFC 4443) error from `src` back to the sender of the packet at p,
    quoting its first `quote` bytes from the IP header (the caller caps it at ICMP4/6_QUOTE_MAX and
    at what was captured); the link header is p's, Ethernet addresses swapped. Returns its length.
    q must not overlap p's first l3 + quote bytes."""
    cdef uint32_t ip_len = IP4_HEADER_LEN if family == 4 else IP6_HEADER_LEN
    cdef uint32_t l4 = l3 + ip_len
    cdef uint8_t tos = 0
    memcpy(q, p, l3)
    if linktype == LINKTYPE_ETHERNET:
        memcpy(q + ETH_DST, p + ETH_SRC, ETH_ADDR_LEN)
        memcpy(q + ETH_SRC, p + ETH_DST, ETH_ADDR_LEN)
    if family == 4:
        tos = TOS_INTERNETCONTROL | (p[l3 + IP4_TOS] & TOS_MASK)
        write_outer_ip(q, l3, 4, tos, ICMP_HEADER_LEN + quote, ip_id, False, ICMP_TTL, IPPROTO_ICMP, src,
                       p + l3 + IP4_SRC)
    else:
        write_outer_ip(q, l3, 6, 0, ICMP_HEADER_LEN + quote, 0, False, ICMP_TTL, IPPROTO_ICMPV6, src,
                       p + l3 + IP6_SRC)
    q[l4] = icmp_type
    q[l4 + 1] = code
    store16(q + l4 + 4, info_word >> 16)
    store16(q + l4 + 6, info_word & 0xFFFF)
    memcpy(q + l4 + ICMP_HEADER_LEN, p + l3, quote)
    if family == 4:
        store16(q + l4 + ICMP_CSUM, 0)
        store16(q + l4 + ICMP_CSUM, ~fold(sum_bytes(0, q + l4, ICMP_HEADER_LEN + quote)) & 0xFFFF)
    else:
        finish_l4_checksum(q, l3, l4, 6, ICMP_HEADER_LEN + quote, IPPROTO_ICMPV6, ICMP_CSUM)
    return l4 + ICMP_HEADER_LEN + quote
