# Reading what the datapath parsed, and building the hosts' answers into the step's output:
# IPv4/IPv6 with TCP, UDP or ICMP port unreachable, every checksum RFC 1071 over the pseudo-header.
# Included by _engine.pyx.

cdef enum:
    TTL = 64
    IP4_DONT_FRAGMENT = 0x4000
    ICMP_QUOTE_V4 = 548         # RFC 1812 4.3.2.3: at most 576 bytes in all
    ICMP_QUOTE_V6 = 1232        # RFC 4443 2.4: at most the minimum MTU (1280) in all
    ICMP_UNREACH = 3            # type 3 code 3: port unreachable
    ICMP_PORT_UNREACH = 3
    ICMP6_UNREACH = 1           # type 1 code 4: port unreachable
    ICMP6_PORT_UNREACH = 4


cdef bint read_segment(const uint8_t* frame, uint32_t n, uint16_t linktype, PacketInfo* info,
                       Seg* seg) noexcept nogil:
    """The TCP segment or UDP datagram in a frame as the datapath parses it (its parser is the only
    one), or False: not one that can be read whole (snapped, fragmented, an ICMP error, malformed)."""
    if n == 0 or parse_packet(frame, n, n, linktype, info) != PARSED or info.icmp_error or info.end > n:
        return False
    seg.src = info.key.src
    seg.dst = info.key.dst
    seg.sport = info.key.sport
    seg.dport = info.key.dport
    fill_segment(frame, info, seg)
    return True


cdef bint segment_after(const uint8_t* frame, uint32_t n, uint32_t origlen, int parsed, PacketInfo* info,
                        Seg* seg) noexcept nogil:
    """What read_segment would find in a frame the datapath just parsed (`parsed`, `info`) and rewrote,
    without parsing it again; False where the two parses could differ (then the caller reads it)."""
    if (parsed != PARSED or info.icmp_error or origlen != n or info.end > n or info.len_from_capture
            or info.dst_in_rthdr):
        return False
    # Addresses and ports as they are now (after DNAT or SNAT), from the headers the parse found.
    seg.src = frame + info.l3 + addr_offset(info.key.family, False)
    seg.dst = frame + info.l3 + addr_offset(info.key.family, True)
    seg.sport = <uint16_t>load16(frame + info.l4 + L4_SPORT)
    seg.dport = <uint16_t>load16(frame + info.l4 + L4_DPORT)
    fill_segment(frame, info, seg)
    return True


cdef inline void fill_segment(const uint8_t* frame, PacketInfo* info, Seg* seg) noexcept nogil:
    cdef uint32_t l4 = info.l4, doff, length
    seg.family = info.key.family
    seg.proto = info.key.proto
    seg.ip = frame + info.l3
    if info.key.proto == IPPROTO_TCP:
        # parse_l4 checked: 20 header bytes captured, a data offset of 20 or more within the packet
        doff = (frame[l4 + TCP_DATA_OFFSET] >> 4) * 4
        seg.seq = load32(frame + l4 + 4)
        seg.ack = load32(frame + l4 + 8)
        seg.flags = frame[l4 + TCP_FLAGS]
        seg.window = <uint16_t>load16(frame + l4 + 14)
        seg.options = frame + l4 + TCP_HEADER_LEN
        seg.olen = doff - TCP_HEADER_LEN
        seg.payload = frame + l4 + doff
        seg.plen = info.end - l4 - doff
        seg.ip_len = info.end - info.l3
    else:
        length = load16(frame + l4 + UDP_LEN) or info.end - l4     # 0: a jumbo datagram (RFC 2675)
        seg.seq = seg.ack = 0
        seg.flags = 0
        seg.window = 0
        seg.options = NULL
        seg.olen = 0
        seg.payload = frame + l4 + UDP_HEADER_LEN
        seg.plen = length - UDP_HEADER_LEN                          # parse_l4 checked 8 <= length <= end - l4
        seg.ip_len = l4 + length - info.l3


cdef inline uint32_t load32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void store32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>(v >> 16)
    p[2] = <uint8_t>(v >> 8)
    p[3] = <uint8_t>v


cdef inline uint16_t internet_checksum(uint32_t acc) noexcept nogil:
    """RFC 1071: the one's complement of the folded sum."""
    return ~fold(acc) & 0xFFFF


cdef inline uint32_t pseudo_sum(uint8_t family, const uint8_t* src, const uint8_t* dst, uint8_t proto,
                                uint32_t length) noexcept nogil:
    cdef uint32_t alen = 4 if family == 4 else 16
    return sum_bytes(sum_bytes(0, src, alen), dst, alen) + proto + (length >> 16) + (length & 0xFFFF)


cdef inline uint32_t ip_header(uint8_t* p, uint8_t family, const uint8_t* src, const uint8_t* dst, uint8_t proto,
                               uint32_t body, uint16_t ip_id) noexcept nogil:
    """Write an IPv4 (checksummed) or IPv6 header for `body` bytes of `proto`; returns its length."""
    if family == 4:
        memset(p, 0, IP4_HEADER_LEN)
        p[0] = 0x45
        store16(p + IP4_TOTAL_LEN, IP4_HEADER_LEN + body)
        store16(p + 4, ip_id)
        store16(p + IP4_FRAG, IP4_DONT_FRAGMENT)
        p[8] = TTL
        p[IP4_PROTO] = proto
        memcpy(p + IP4_SRC, src, 4)
        memcpy(p + IP4_DST, dst, 4)
        store16(p + IP4_CSUM, internet_checksum(sum_bytes(0, p, IP4_HEADER_LEN)))
        return IP4_HEADER_LEN
    memset(p, 0, IP6_HEADER_LEN)
    p[0] = 0x60
    store16(p + IP6_PAYLOAD_LEN, body)
    p[IP6_NEXT] = proto
    p[7] = TTL
    memcpy(p + IP6_SRC, src, 16)
    memcpy(p + IP6_DST, dst, 16)
    return IP6_HEADER_LEN


cdef inline uint32_t ip_len(uint8_t family) noexcept nogil:
    return IP4_HEADER_LEN if family == 4 else IP6_HEADER_LEN
