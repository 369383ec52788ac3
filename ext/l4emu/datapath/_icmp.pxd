# ICMP errors about translated flows (destination unreachable, packet too big, time exceeded,
# parameter problem) quote the packet that caused them; a NAT must translate the quote too, or
# the client gets an error about a tuple it never sent (IPVS: ip_vs_nat_icmp).
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy
from l4emu.datapath._types cimport PacketInfo
from l4emu.datapath._checksum cimport apply_diff, diff_words, load16
from l4emu.datapath._wire cimport *

cdef enum:
    QUOTED_L4_LEN = 8           # RFC 792 / 4443: an error quotes at least the first 8 bytes past the IP header


cdef inline bint is_error_type(uint8_t family, uint8_t icmp_type) noexcept nogil:
    if family == 4:
        return icmp_type == 3 or icmp_type == 4 or icmp_type == 11 or icmp_type == 12
    return 1 <= icmp_type <= 4


cdef inline bint parse_icmp_error(const uint8_t* p, uint32_t caplen, uint32_t end, PacketInfo* info) noexcept nogil:
    """An ICMP error quoting a TCP/UDP packet: key = the quoted tuple reversed. False: anything else."""
    cdef uint32_t l4 = info.l4, il3 = l4 + ICMP_HEADER_LEN, il4
    cdef uint8_t proto
    cdef uint32_t limit = end if end < caplen else caplen
    if ((info.key.family == 4 and info.key.proto != IPPROTO_ICMP)
            or (info.key.family == 6 and info.key.proto != IPPROTO_ICMPV6)):
        return False
    if il3 > limit or not is_error_type(info.key.family, p[l4]):
        return False
    if info.key.family == 4:
        if (il3 + IP4_HEADER_LEN > limit or (p[il3] >> 4) != 4 or (p[il3] & 0x0F) < 5
                or (load16(p + il3 + IP4_FRAG) & 0x1FFF)):
            return False
        il4 = il3 + (p[il3] & 0x0F) * 4
        proto = p[il3 + IP4_PROTO]
        memcpy(info.key.src, p + il3 + IP4_DST, 4)       # reversed: the quoted destination first
        memcpy(info.key.dst, p + il3 + IP4_SRC, 4)
    else:
        if il3 + IP6_HEADER_LEN > limit or (p[il3] >> 4) != 6:
            return False
        il4 = il3 + IP6_HEADER_LEN
        proto = p[il3 + IP6_NEXT]
        memcpy(info.key.src, p + il3 + IP6_DST, 16)
        memcpy(info.key.dst, p + il3 + IP6_SRC, 16)
    if (proto != IPPROTO_TCP and proto != IPPROTO_UDP) or il4 + QUOTED_L4_LEN > limit:
        return False
    info.key.proto = proto
    info.key.sport = load16(p + il4 + L4_DPORT)
    info.key.dport = load16(p + il4 + L4_SPORT)
    info.inner_l3 = il3
    info.inner_l4 = il4
    info.icmp_error = 1
    return True


cdef inline void rewrite_icmp_error(uint8_t* p, uint32_t caplen, const PacketInfo* info, bint toward_client,
                                    const uint8_t* addr, uint16_t port) noexcept nogil:
    """Translate an ICMP error and its quote. toward_client: it came from the real's side, so the
    outer source and the quoted destination become the VIP; otherwise the outer destination and
    the quoted source become the real. Every checksum is updated incrementally (RFC 1624)."""
    cdef bint v4 = info.key.family == 4
    cdef uint32_t alen = 4 if v4 else 16
    cdef uint32_t outer = info.l3 + addr_offset(info.key.family, not toward_client)
    cdef uint32_t inner = info.inner_l3 + addr_offset(info.key.family, toward_client)
    cdef uint32_t inner_port = info.inner_l4 + (L4_DPORT if toward_client else L4_SPORT)
    cdef uint32_t l4_csum = info.inner_l4 + l4_csum_offset(info.key.proto)
    cdef uint8_t newport[2]
    cdef uint8_t saved[16]
    cdef uint32_t icmp_diff, inner_diff, d
    newport[0] = <uint8_t>(port >> 8)
    newport[1] = <uint8_t>port
    # The outer address: IPv4 header checksum; for ICMPv6 also the pseudo-header under its checksum.
    d = diff_words(0, p + outer, addr, alen)
    icmp_diff = 0 if v4 or (info.dst_in_rthdr and not toward_client) else d   # RFC 8200 8.1: final address
    if v4:
        apply_diff(p + info.l3 + IP4_CSUM, d)
    memcpy(p + outer, addr, alen)
    # The quote: its address and port, its own IP checksum, and its L4 checksum when it is quoted.
    inner_diff = diff_words(0, p + inner, addr, alen)
    icmp_diff = diff_words(icmp_diff, p + inner, addr, alen)
    icmp_diff = diff_words(icmp_diff, p + inner_port, newport, 2)
    if v4:
        memcpy(saved, p + info.inner_l3 + IP4_CSUM, 2)
        apply_diff(p + info.inner_l3 + IP4_CSUM, inner_diff)
        icmp_diff = diff_words(icmp_diff, saved, p + info.inner_l3 + IP4_CSUM, 2)
    if l4_csum + 2 <= caplen and (info.key.proto == IPPROTO_TCP or load16(p + l4_csum) != 0):
        memcpy(saved, p + l4_csum, 2)
        apply_diff(p + l4_csum, diff_words(inner_diff, p + inner_port, newport, 2))
        icmp_diff = diff_words(icmp_diff, saved, p + l4_csum, 2)
    memcpy(p + inner, addr, alen)
    memcpy(p + inner_port, newport, 2)
    apply_diff(p + info.l4 + ICMP_CSUM, icmp_diff)
