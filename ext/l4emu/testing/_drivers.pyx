"""Test drivers: C entry points of the packet path that only tests, fuzzers and benchmarks call.

They stay out of the production modules: a scheduler's pick without a datapath, TunIO's
checksum transforms without a TUN, and the RFC 1071 sum every checksum is made of.
"""
import ipaddress

from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

from l4emu.datapath._checksum cimport fold, sum_bytes
from l4emu.hosts._decap cimport inner_offset
from l4emu.datapath._types cimport PacketKey, Real, RF_DOWN, RF_OVERLOADED
from l4emu.datapath._wire cimport IPPROTO_TCP
from l4emu.io.tun._io cimport TunIO, virtio_net_hdr
from l4emu.schedulers._core cimport Scheduler, SchedulerHook


def pick_many(Scheduler scheduler, list reals, keys, bint connect=False, uint64_t now_ns=0):
    """Drive a scheduler's own C pick without a datapath: returns the picks.

    reals: dicts with address ("10.1.0.1"), port, weight, down, overloaded, active, inactive;
    keys: (client, client_port, vip, vip_port) tuples; connect: each pick adds an active
    connection to its real, as a new flow would. The scheduler hears `changed` first.
    """
    cdef uint32_t i, n = len(reals)
    cdef Real* table = <Real*>calloc(max(n, 1), sizeof(Real))
    cdef PacketKey key
    cdef SchedulerHook h = scheduler.hook()
    cdef int32_t pick
    cdef bytes packed
    if table == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            spec = reals[i]
            packed = ipaddress.ip_address(spec.get("address", f"10.1.{i >> 8}.{i & 255}")).packed
            memcpy(table[i].addr, <const uint8_t*>packed, len(packed))
            table[i].family = 4 if len(packed) == 4 else 6
            table[i].port = spec.get("port", 8080)
            table[i].weight = spec.get("weight", 1)
            table[i].flags = (RF_DOWN if spec.get("down") else 0) | (RF_OVERLOADED if spec.get("overloaded") else 0)
            table[i].active = spec.get("active", 0)
            table[i].inactive = spec.get("inactive", 0)
        if h.changed != NULL:
            h.changed(h.state, table, n)
        picks = []
        for client, cport, vip, vport in keys:
            key = _key(client, cport, vip, vport)
            pick = h.pick(h.state, table, n, &key, now_ns)
            if connect and pick >= 0:
                table[pick].active += 1
            picks.append(pick)
        return picks
    finally:
        free(table)


cdef PacketKey _key(client, int cport, vip, int vport) except *:
    cdef PacketKey key
    cdef bytes src = ipaddress.ip_address(client).packed if isinstance(client, str) else client
    cdef bytes dst = ipaddress.ip_address(vip).packed if isinstance(vip, str) else vip
    memset(&key, 0, sizeof(key))
    key.sport, key.dport, key.proto, key.family = cport, vport, IPPROTO_TCP, (4 if len(src) == 4 else 6)
    memcpy(key.src, <const uint8_t*>src, len(src))
    memcpy(key.dst, <const uint8_t*>dst, len(dst))
    return key


def complete_form(bytes header, bytes packet, Py_ssize_t capacity=1):
    """The packet as the datapath sees it after TunIO.read_into (the checksum field as ~P)."""
    cdef TunIO io = TunIO(-1, True, capacity)
    cdef bytearray buf = bytearray(packet)
    cdef uint8_t[::1] view = buf
    cdef const uint8_t* h = header
    if len(header) != sizeof(virtio_net_hdr) or not len(buf):
        raise ValueError(f"a {sizeof(virtio_net_hdr)}-byte virtio header and a packet, please")
    memcpy(io.hdrs, h, sizeof(virtio_net_hdr))
    io.partial[0] = io.to_complete_form(&view[0], len(buf), 0)
    return io, bytes(buf)


def partial_form(TunIO io, bytes packet):
    """What TunIO.write_from sends for a packet read by complete_form and rewritten since."""
    cdef bytearray buf = bytearray(packet)
    cdef uint8_t[::1] view = buf
    if io.partial[0] and len(buf):
        io.to_partial_form(&view[0], len(buf), 0)
    return bytes(buf)


def ones_sum(bytes data, uint32_t acc=0):
    """fold(sum_bytes(acc, data)): the folded RFC 1071 sum of data (odd tail padded) added to acc."""
    return fold(sum_bytes(acc, <const uint8_t*><const char*>data, len(data)))


def tunnel_inner(bytes packet):
    """inner_offset: where an emulated tun real finds the inner IP packet in `packet` (from its outer IP
    header), 0 when it cannot take it apart."""
    return inner_offset(<const uint8_t*><const char*>packet, len(packet))
