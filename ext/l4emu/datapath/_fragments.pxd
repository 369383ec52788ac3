# IP fragments for a VIP: the service's policy (config `fragments`). A fragment carries no ports past
# the first one, so the 5-tuple table cannot place it: Katran and DPVS drop it; Maglev (NSDI 2016,
# section 4.3) schedules every fragment by (source, destination, protocol) alone, so all fragments
# of a datagram reach one real.
from libc.stdint cimport int32_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy
from l4emu.datapath._checksum cimport apply_diff, diff_words
from l4emu.datapath._types cimport *
from l4emu.datapath._siphash cimport siphash13
from l4emu.datapath._wire cimport *

cdef enum:
    # The 3-tuple hash is keyed with fixed numbers, never the switch's secret: every instance of a
    # cluster must send a datagram's fragments to the same real (Maglev's consistency), as for the
    # backend selection hashes.
    FRAG_HASH_K0 = 0x4d61676c          # "Magl"
    FRAG_HASH_K1 = 0x657634            # "ev4"
    # track (Cilium's IPV4_FRAG_DATAGRAMS_MAP, and its waiting room that Cilium does not have): bounded.
    FRAG_TRACK_SLOTS = 4096     # datagrams remembered; a full probe window forgets its oldest
    FRAG_TRACK_PROBE = 4
    FRAG_HOLD_SLOTS = 64        # fragments waiting for their first one ...
    FRAG_HOLD_BYTES = 1 << 20   # ... in at most this many bytes
    FRAG_TIMEOUT_S = 30         # Linux ipfrag_time: a datagram and its waiting fragments are forgotten after it


ctypedef struct FragEntry:      # a datagram whose first fragment opened or found a flow
    uint8_t src[16]
    uint8_t dst[16]
    uint32_t id
    uint32_t real               # the flow's real
    uint64_t expires_ns         # 0: unused
    uint8_t proto
    uint8_t family
    uint8_t reply               # the real's datagram to the client (NAT: SNAT back to the VIP)


ctypedef struct HeldFragment:   # a fragment that came before its first: a copy, waiting
    uint8_t* data               # NULL: unused
    uint32_t size
    uint32_t origlen
    uint32_t id
    uint64_t expires_ns
    uint8_t src[16]
    uint8_t dst[16]
    uint8_t proto
    uint8_t family


cdef inline bint same_datagram(const uint8_t* src, const uint8_t* dst, uint32_t id, uint8_t proto,
                               uint8_t family, const PacketInfo* info) noexcept nogil:
    cdef size_t alen = 4 if family == 4 else 16
    return (family == info.key.family and proto == info.key.proto and id == info.frag_id
            and memcmp(src, info.key.src, alen) == 0 and memcmp(dst, info.key.dst, alen) == 0)


cdef inline void rewrite_fragment_address(uint8_t* p, const PacketInfo* info, bint dst_side,
                                          const uint8_t* addr) noexcept nogil:
    """DNAT (dst_side) or SNAT of a fragment past the first: the address only (IPv4: and the header
    checksum); the L4 checksum, in the first fragment, took the whole change there."""
    cdef uint32_t alen = 4 if info.key.family == 4 else 16
    cdef uint8_t* a = p + info.l3 + addr_offset(info.key.family, dst_side)
    if info.key.family == 4:
        apply_diff(p + info.l3 + IP4_CSUM, diff_words(0, a, addr, alen))
    memcpy(a, addr, alen)


cdef inline uint64_t three_tuple_hash(const PacketKey* key) noexcept nogil:
    """A fixed-key SipHash of (source, destination, protocol, family)."""
    cdef uint64_t w[5]
    cdef int n = 5
    memcpy(w, key.src, 16)
    memcpy(&w[2], key.dst, 16)
    w[4] = (<uint64_t>key.proto << 8) | key.family
    return siphash13(FRAG_HASH_K0, FRAG_HASH_K1, w, n)


cdef inline int32_t pick_by_hash(const Real* reals, uint32_t n, uint64_t h) noexcept nogil:
    """The (h mod k)-th of the service's k reals that take new flows (weight > 0, not down, not
    overloaded); -1 when there is none."""
    cdef uint32_t k, count = 0, want
    for k in range(n):
        if reals[k].weight > 0 and not (reals[k].flags & (RF_DOWN | RF_OVERLOADED)):
            count += 1
    if count == 0:
        return -1
    want = <uint32_t>(h % count)
    for k in range(n):
        if reals[k].weight > 0 and not (reals[k].flags & (RF_DOWN | RF_OVERLOADED)):
            if want == 0:
                return <int32_t>k
            want -= 1
    return -1


cdef inline bint first_fragment_has_ports(const PacketInfo* info) noexcept nogil:
    """A first fragment holds the whole TCP/UDP header up to its checksum (Linux drops a tiny first
    fragment that splits it: ip_frag tiny-fragment rule, RFC 1858)."""
    cdef uint32_t need = info.l4 + (TCP_CSUM + 2 if info.key.proto == IPPROTO_TCP else UDP_HEADER_LEN)
    return need <= info.end and need <= info.caplen
