# IP fragments for a VIP: the service's policy (config `fragments`). A fragment carries no ports past
# the first one, so the 5-tuple table cannot place it: Katran and DPVS drop it; Maglev (NSDI 2016,
# section 4.3) schedules every fragment by (source, destination, protocol) alone, so all fragments
# of a datagram reach one real.
from libc.stdint cimport int32_t, uint32_t, uint64_t
from libc.string cimport memcpy
from l4emu.datapath._types cimport *
from l4emu.datapath._siphash cimport siphash13
from l4emu.datapath._wire cimport *

cdef enum:
    # The 3-tuple hash is keyed with fixed numbers, never the switch's secret: every instance of a
    # cluster must send a datagram's fragments to the same real (Maglev's consistency), as for the
    # backend selection hashes.
    FRAG_HASH_K0 = 0x4d61676c          # "Magl"
    FRAG_HASH_K1 = 0x657634            # "ev4"


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
