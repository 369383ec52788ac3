# ICMP errors about translated flows (destination unreachable, packet too big, time exceeded,
# parameter problem) quote the packet that caused them; a NAT must translate the quote too, or
# the client gets an error about a tuple it never sent (IPVS: ip_vs_nat_icmp).
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy
from l4emu.datapath._types cimport PacketInfo
from l4emu.datapath._checksum cimport apply_diff, diff_words, load16


cdef inline bint is_error_type(uint8_t family, uint8_t icmp_type) noexcept nogil:
    if family == 4:
        return icmp_type == 3 or icmp_type == 4 or icmp_type == 11 or icmp_type == 12
    return 1 <= icmp_type <= 4


cdef inline bint parse_icmp_error(const uint8_t* p, uint32_t caplen, uint32_t end, PacketInfo* info) noexcept nogil:
    """An ICMP error quoting a TCP/UDP packet: key = the quoted tuple reversed. False: anything else."""
    cdef uint32_t l4 = info.l4, il3 = l4 + 8, il4
    cdef uint8_t proto
    cdef uint32_t limit = end if end < caplen else caplen
    if (info.key.family == 4 and info.key.proto != 1) or (info.key.family == 6 and info.key.proto != 58):
        return False
    if il3 > limit or not is_error_type(info.key.family, p[l4]):
        return False
    if info.key.family == 4:
        if il3 + 20 > limit or (p[il3] >> 4) != 4 or (p[il3] & 0x0F) < 5 or (load16(p + il3 + 6) & 0x1FFF):
            return False
        il4 = il3 + (p[il3] & 0x0F) * 4
        proto = p[il3 + 9]
        memcpy(info.key.src, p + il3 + 16, 4)       # reversed: the quoted destination first
        memcpy(info.key.dst, p + il3 + 12, 4)
    else:
        if il3 + 40 > limit or (p[il3] >> 4) != 6:
            return False
        il4 = il3 + 40
        proto = p[il3 + 6]
        memcpy(info.key.src, p + il3 + 24, 16)
        memcpy(info.key.dst, p + il3 + 8, 16)
    if (proto != 6 and proto != 17) or il4 + 8 > limit:
        return False
    info.key.proto = proto
    info.key.sport = load16(p + il4 + 2)
    info.key.dport = load16(p + il4)
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
    cdef uint32_t outer = info.l3 + ((12 if toward_client else 16) if v4 else (8 if toward_client else 24))
    cdef uint32_t inner = info.inner_l3 + ((16 if toward_client else 12) if v4 else (24 if toward_client else 8))
    cdef uint32_t inner_port = info.inner_l4 + (2 if toward_client else 0)
    cdef uint32_t l4_csum = info.inner_l4 + (16 if info.key.proto == 6 else 6)
    cdef uint8_t newport[2]
    cdef uint8_t saved[16]
    cdef uint32_t icmp_diff, inner_diff, d
    newport[0] = <uint8_t>(port >> 8)
    newport[1] = <uint8_t>port
    # The outer address: IPv4 header checksum; for ICMPv6 also the pseudo-header under its checksum.
    d = diff_words(0, p + outer, addr, alen)
    icmp_diff = 0 if v4 or (info.dst_in_rthdr and not toward_client) else d   # RFC 8200 8.1: final address
    if v4:
        apply_diff(p + info.l3 + 10, d)
    memcpy(p + outer, addr, alen)
    # The quote: its address and port, its own IP checksum, and its L4 checksum when it is quoted.
    inner_diff = diff_words(0, p + inner, addr, alen)
    icmp_diff = diff_words(icmp_diff, p + inner, addr, alen)
    icmp_diff = diff_words(icmp_diff, p + inner_port, newport, 2)
    if v4:
        memcpy(saved, p + info.inner_l3 + 10, 2)
        apply_diff(p + info.inner_l3 + 10, inner_diff)
        icmp_diff = diff_words(icmp_diff, saved, p + info.inner_l3 + 10, 2)
    if l4_csum + 2 <= caplen and (info.key.proto == 6 or load16(p + l4_csum) != 0):
        memcpy(saved, p + l4_csum, 2)
        apply_diff(p + l4_csum, diff_words(inner_diff, p + inner_port, newport, 2))
        icmp_diff = diff_words(icmp_diff, saved, p + l4_csum, 2)
    memcpy(p + inner, addr, alen)
    memcpy(p + inner_port, newport, 2)
    apply_diff(p + info.l4 + 2, icmp_diff)
