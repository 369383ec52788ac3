# Header parsing: link layer, IPv4/IPv6 (options, extension chain), TCP/UDP. Every length is
# checked against what was captured before it is read (bounds checks are off in this build).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset, memcpy
from l4emu.datapath._types cimport *
from l4emu.datapath._checksum cimport load16
from l4emu.datapath._icmp cimport parse_icmp_error
from l4emu.datapath._wire cimport *

cdef enum:
    PARSED = 0            # a TCP or UDP packet, not a fragment: key and offsets are valid
    PARSE_PASS = 1        # nothing for an L4 switch (pass reason in info.reason)
    PARSE_DROP = 2        # malformed (drop reason in info.reason)
    PARSE_FRAGMENT = 3    # an IP fragment: addresses valid, ports never read
    MAX_VLAN_TAGS = 4
    MAX_IPV6_EXT = 16

cdef inline int _drop(PacketInfo* info, int reason) noexcept nogil:
    info.reason = reason
    return PARSE_DROP


cdef inline int _pass(PacketInfo* info, int reason) noexcept nogil:
    info.reason = reason
    return PARSE_PASS


cdef inline int link_layer(const uint8_t* p, uint32_t caplen, uint16_t linktype, uint32_t* l3,
                           uint32_t* ethertype) noexcept nogil:
    """Find the network header; 0 ok, -1 truncated, 1 unknown link type or not IP."""
    cdef uint32_t off, fam, tags = 0
    if linktype == LINKTYPE_ETHERNET:                                   # Ethernet, 802.1Q / QinQ tags kept
        if caplen < 14:
            return -1
        off = 12
        ethertype[0] = load16(p + 12)
        while ethertype[0] == 0x8100 or ethertype[0] == 0x88A8 or ethertype[0] == 0x9100:
            tags += 1
            if tags > MAX_VLAN_TAGS:
                return 1
            off += 4
            if caplen < off + 2:
                return -1
            ethertype[0] = load16(p + off)
        l3[0] = off + 2
        return 0
    if linktype == LINKTYPE_RAW or linktype == DLT_RAW_BSD or linktype == DLT_RAW_OPENBSD:
        if caplen < 1:
            return -1
        ethertype[0] = ETHERTYPE_IPV6 if (p[0] >> 4) == 6 else ETHERTYPE_IPV4   # any other version: bad IPv4 header
        l3[0] = 0
        return 0
    if linktype == LINKTYPE_IPV4 or linktype == LINKTYPE_IPV6:     # the type says the version
        ethertype[0] = ETHERTYPE_IPV4 if linktype == LINKTYPE_IPV4 else ETHERTYPE_IPV6
        l3[0] = 0
        return 0
    if linktype == LINKTYPE_LINUX_SLL:
        if caplen < 16:
            return -1
        ethertype[0] = load16(p + 14)
        l3[0] = 16
        return 0
    if linktype == LINKTYPE_LINUX_SLL2:
        if caplen < 20:
            return -1
        ethertype[0] = load16(p)
        l3[0] = 20
        return 0
    if linktype == LINKTYPE_NULL or linktype == LINKTYPE_LOOP:    # family in host / network order
        if caplen < 4:
            return -1
        fam = (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]
        if fam == 2 or fam == 0x02000000:
            ethertype[0] = ETHERTYPE_IPV4
        elif fam in (24, 28, 30, 0x18000000, 0x1C000000, 0x1E000000):
            ethertype[0] = ETHERTYPE_IPV6
        else:
            ethertype[0] = 0
        l3[0] = 4
        return 0
    return 1


cdef inline int parse_ipv4(const uint8_t* p, uint32_t caplen, uint32_t wire_end, PacketInfo* info,
                           uint32_t* end) noexcept nogil:
    cdef uint32_t l3 = info.l3, ihl, total
    if caplen < l3 + IP4_HEADER_LEN:
        return _drop(info, D_TRUNCATED_IP)
    if (p[l3] >> 4) != 4:
        return _drop(info, D_BAD_IP_HEADER)
    ihl = (p[l3] & 0x0F) * 4
    total = load16(p + l3 + IP4_TOTAL_LEN)
    if total == 0 and (p[l3 + IP4_PROTO] == IPPROTO_TCP or p[l3 + IP4_PROTO] == IPPROTO_UDP):
        # Linux TSO/BIG TCP, captured at the host before segmentation: the capture knows the length (as tcpdump)
        total = wire_end - l3
        info.len_from_capture = 1
    if ihl < IP4_HEADER_LEN or caplen < l3 + ihl or total < ihl:
        return _drop(info, D_BAD_IP_HEADER)
    if l3 + total > wire_end:
        return _drop(info, D_TRUNCATED_IP)
    info.key.family = 4
    info.key.proto = p[l3 + IP4_PROTO]
    memcpy(info.key.src, p + l3 + IP4_SRC, 4)
    memcpy(info.key.dst, p + l3 + IP4_DST, 4)
    info.l4 = l3 + ihl
    end[0] = l3 + total
    if load16(p + l3 + IP4_FRAG) & 0x3FFF:                     # MF set or a fragment offset
        info.fragment = 1
        info.more_frags = (load16(p + l3 + IP4_FRAG) & 0x2000) != 0
        info.frag_offset = (load16(p + l3 + IP4_FRAG) & 0x1FFF) * 8
        info.frag_id = load16(p + l3 + IP4_ID)
        return PARSE_FRAGMENT
    return PARSED


cdef inline uint32_t jumbo_length(const uint8_t* p, uint32_t caplen, uint32_t l3) noexcept nogil:
    """RFC 2675: the Jumbo Payload option of a hop-by-hop header right after the IPv6 header; 0 if none."""
    cdef uint32_t off = l3 + IP6_HEADER_LEN, stop, olen
    if p[l3 + IP6_NEXT] != IPPROTO_HOPOPTS or off + 2 > caplen:
        return 0
    stop = off + (p[off + 1] + 1) * 8
    if stop > caplen:
        return 0
    off += 2
    while off < stop:
        if p[off] == 0:                                     # Pad1
            off += 1
            continue
        if off + 2 > stop:
            return 0
        olen = p[off + 1]
        if off + 2 + olen > stop:
            return 0
        if p[off] == 0xC2 and olen == 4:
            olen = (<uint32_t>load16(p + off + 2) << 16) | load16(p + off + 4)
            return olen if olen > 65535 else 0
        off += 2 + olen
    return 0


cdef inline void note_routing_header(const uint8_t* p, uint32_t off, PacketInfo* info) noexcept nogil:
    """A routing header (checked to lie within the capture) with segments left carries the final
    destination, and the L4 pseudo-header uses that, not the destination field (RFC 8200 8.1).
    Types 0 and 2 list it last, an SRH (type 4) first; other types: as tcpdump, the field."""
    if p[off + 3] != 0 and p[off + 1] >= 2 and (p[off + 2] == 0 or p[off + 2] == 2 or p[off + 2] == 4):
        info.dst_in_rthdr = 1


cdef inline int parse_ipv6(const uint8_t* p, uint32_t caplen, uint32_t wire_end, PacketInfo* info,
                           uint32_t* end) noexcept nogil:
    cdef uint32_t l3 = info.l3, off, hlen, jumbo = 0
    cdef uint64_t stop
    cdef uint8_t nh
    cdef int _k
    if caplen < l3 + IP6_HEADER_LEN:
        return _drop(info, D_TRUNCATED_IP)
    if (p[l3] >> 4) != 6:
        return _drop(info, D_BAD_IP_HEADER)
    stop = l3 + IP6_HEADER_LEN + load16(p + l3 + IP6_PAYLOAD_LEN)
    if stop == l3 + IP6_HEADER_LEN:
        # Payload length 0: a jumbogram, or BIG TCP without one (then, as tcpdump: no extension
        # header, TCP or UDP, and more than 64 KiB on the wire): the length comes from the capture.
        jumbo = jumbo_length(p, caplen, l3)
        if jumbo:
            stop = <uint64_t>l3 + IP6_HEADER_LEN + jumbo
            info.len_from_capture = 1
        elif (p[l3 + IP6_NEXT] == IPPROTO_TCP or p[l3 + IP6_NEXT] == IPPROTO_UDP) and wire_end - l3 > 65535:
            stop = wire_end
            info.len_from_capture = 1
    if stop > wire_end:
        return _drop(info, D_TRUNCATED_IP)
    end[0] = <uint32_t>stop
    info.key.family = 6
    memcpy(info.key.src, p + l3 + IP6_SRC, 16)
    memcpy(info.key.dst, p + l3 + IP6_DST, 16)
    nh = p[l3 + IP6_NEXT]
    off = l3 + IP6_HEADER_LEN
    for _k in range(MAX_IPV6_EXT):
        if nh == IPPROTO_HOPOPTS or nh == IPPROTO_ROUTING or nh == IPPROTO_DSTOPTS or nh == IPPROTO_AH:
            if off + 2 > end[0] or off + 2 > caplen:
                return _drop(info, D_TRUNCATED_IPV6_EXT)
            hlen = (p[off + 1] + 2) * 4 if nh == IPPROTO_AH else (p[off + 1] + 1) * 8
            if off + hlen > end[0] or off + hlen > caplen:
                return _drop(info, D_TRUNCATED_IPV6_EXT)
            if nh == IPPROTO_ROUTING:
                note_routing_header(p, off, info)
            nh = p[off]
            off += hlen
        elif nh == IPPROTO_FRAGMENT:                                      # fragment header
            if off + 8 > end[0] or off + 8 > caplen:
                return _drop(info, D_TRUNCATED_IPV6_EXT)
            info.key.proto = p[off]
            info.l4 = off + 8
            info.fragment = 1
            info.more_frags = load16(p + off + 2) & 1
            info.frag_offset = load16(p + off + 2) & 0xFFF8
            info.frag_id = (load16(p + off + 4) << 16) | load16(p + off + 6)
            return PARSE_FRAGMENT
        else:
            break
    info.key.proto = nh
    info.l4 = off
    return PARSED


cdef inline int parse_l4(const uint8_t* p, uint32_t caplen, uint32_t end, PacketInfo* info) noexcept nogil:
    cdef uint32_t l4 = info.l4, length
    if info.key.proto == IPPROTO_TCP:
        if l4 + TCP_HEADER_LEN > end or l4 + TCP_HEADER_LEN > caplen:
            return _drop(info, D_TRUNCATED_TCP)
        length = (p[l4 + TCP_DATA_OFFSET] >> 4) * 4
        if length < TCP_HEADER_LEN or l4 + length > end:
            return _drop(info, D_BAD_TCP_OFFSET)
        info.tcp_flags = p[l4 + TCP_FLAGS]
    elif info.key.proto == IPPROTO_UDP:
        if l4 + UDP_HEADER_LEN > end or l4 + UDP_HEADER_LEN > caplen:
            return _drop(info, D_TRUNCATED_UDP)
        length = load16(p + l4 + UDP_LEN)
        if length == 0 and info.len_from_capture:       # RFC 2675 jumbo UDP / UDP in a GSO packet
            length = end - l4
        if length < UDP_HEADER_LEN or l4 + length > end:
            return _drop(info, D_BAD_UDP_LENGTH)
    elif parse_icmp_error(p, caplen, end, info):
        return PARSED
    else:
        return _pass(info, P_OTHER_PROTOCOL)
    info.key.sport = load16(p + l4 + L4_SPORT)
    info.key.dport = load16(p + l4 + L4_DPORT)
    return PARSED


cdef inline int parse_packet(const uint8_t* p, uint32_t caplen, uint32_t origlen, uint16_t linktype,
                             PacketInfo* info) noexcept nogil:
    """Fill info from one captured frame; origlen tells a snapped frame from a lying length."""
    cdef uint32_t ethertype = 0, end = 0, wire_end
    cdef int r
    memset(&info.key, 0, sizeof(PacketKey))
    info.tcp_flags = 0
    info.reason = 0
    info.icmp_error = 0
    info.len_from_capture = 0
    info.dst_in_rthdr = 0
    info.fragment = 0
    info.more_frags = 0
    info.frag_offset = 0
    info.frag_id = 0
    info.caplen = caplen
    r = link_layer(p, caplen, linktype, &info.l3, &ethertype)
    if r < 0:
        return _drop(info, D_TRUNCATED_L2)
    if r > 0:
        return _pass(info, P_NOT_IP)
    wire_end = origlen if origlen > caplen else caplen
    if ethertype == ETHERTYPE_IPV4:
        r = parse_ipv4(p, caplen, wire_end, info, &end)
    elif ethertype == ETHERTYPE_IPV6:
        r = parse_ipv6(p, caplen, wire_end, info, &end)
    else:
        return _pass(info, P_NOT_IP)
    if r == PARSE_FRAGMENT:
        info.end = end                  # a fragment is forwarded whole, by the service's fragment policy
    if r != PARSED:
        return r
    info.end = end
    return parse_l4(p, caplen, end, info)
