# What an emulated real under `forward = "dr" | "tun"` does that a NAT real does not: take the inner
# packet out of the switch's tunnel (ipip, gue, gre, as Linux's tunnel devices do), and answer the
# client from the VIP it owns (the source rewritten by RFC 1624, as the reply then leaves the host).
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcpy
from l4emu.datapath._checksum cimport apply_diff, diff_words, load16
from l4emu.datapath._wire cimport (IPPROTO_TCP, IPPROTO_UDP, IP4_SRC, IP6_SRC, IP4_CSUM, IP4_HEADER_LEN,
                                   IP6_HEADER_LEN, UDP_HEADER_LEN)

cdef enum:
    IP4_PROTO_AT = 9
    IP6_NEXT_AT = 6
    IPPROTO_IPIP_INNER = 4      # IPv4 in IP
    IPPROTO_IPV6_INNER = 41     # IPv6 in IP
    IPPROTO_GRE_OUTER = 47
    GRE_BASE = 4                # flags/version and protocol type (RFC 2784)
    GRE_C = 0x8000              # checksum and reserved1 present
    GRE_K = 0x2000              # key present (RFC 2890)
    GRE_S = 0x1000              # sequence number present
    GUE_BASE = 4                # variant 0: version/C/hlen, proto, flags (draft-ietf-intarea-gue)
    TCP_CSUM_AT = 16
    UDP_CSUM_AT = 6


cdef inline uint32_t inner_offset(const uint8_t* ip, uint32_t n) noexcept nogil:
    """Where the inner IP packet starts in the tunnel packet `ip` (n bytes from its outer IP header),
    or 0 when it is not one this real can take apart (or is cut short)."""
    cdef uint32_t hdr, proto, at, flags
    if n < IP4_HEADER_LEN:
        return 0
    if ip[0] >> 4 == 4:
        hdr = (ip[0] & 0x0F) * 4
        proto = ip[IP4_PROTO_AT]
        if hdr < IP4_HEADER_LEN or load16(ip + 6) & 0x3FFF:    # a fragment: reassembly is not emulated
            return 0
    elif ip[0] >> 4 == 6 and n >= IP6_HEADER_LEN:
        hdr = IP6_HEADER_LEN
        proto = ip[IP6_NEXT_AT]
    else:
        return 0
    if proto == IPPROTO_IPIP_INNER or proto == IPPROTO_IPV6_INNER:
        at = hdr
    elif proto == IPPROTO_GRE_OUTER:
        if n < hdr + GRE_BASE:
            return 0
        flags = load16(ip + hdr)
        at = hdr + GRE_BASE + (4 if flags & GRE_C else 0) + (4 if flags & GRE_K else 0) + (4 if flags & GRE_S else 0)
    elif proto == IPPROTO_UDP:
        at = hdr + UDP_HEADER_LEN
        if n <= at:
            return 0
        if ip[at] >> 6 == 0:                    # GUE variant 0: its header and hlen words of options
            at += GUE_BASE + (ip[at] & 0x1F) * 4
        # variant 1 (Katran): the inner IP header right after UDP
    else:
        return 0
    if n < at + IP4_HEADER_LEN or not (ip[at] >> 4 == 4 or (ip[at] >> 4 == 6 and n >= at + IP6_HEADER_LEN)):
        return 0
    return at


cdef inline void answer_from(uint8_t* ip, const uint8_t* source) noexcept nogil:
    """A host's answer (IP header without options or extension headers, then TCP or UDP) leaves from
    `source` instead: the IPv4 header checksum and the L4 one (pseudo-header) follow the change."""
    cdef bint v4 = ip[0] >> 4 == 4
    cdef uint32_t alen = 4 if v4 else 16, at = IP4_SRC if v4 else IP6_SRC
    cdef uint32_t l4 = IP4_HEADER_LEN if v4 else IP6_HEADER_LEN
    cdef uint8_t proto = ip[IP4_PROTO_AT] if v4 else ip[IP6_NEXT_AT]
    cdef uint32_t d = diff_words(0, ip + at, source, alen)
    if v4:
        apply_diff(ip + IP4_CSUM, d)
    if proto == IPPROTO_TCP:
        apply_diff(ip + l4 + TCP_CSUM_AT, d)
    elif proto == IPPROTO_UDP and load16(ip + l4 + UDP_CSUM_AT):
        apply_diff(ip + l4 + UDP_CSUM_AT, d)
        if load16(ip + l4 + UDP_CSUM_AT) == 0:
            ip[l4 + UDP_CSUM_AT] = ip[l4 + UDP_CSUM_AT + 1] = 0xFF     # RFC 768: zero means none
    memcpy(ip + at, source, alen)
