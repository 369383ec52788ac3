# Persistence (IPVS -p/-M): a template entry maps a client network to a real, so that a client's
# new connections to a service keep going to the same real until the template times out. A template
# lives in the connection table like a flow, under a key no packet can match, and never expires
# while connections it placed are still in the table (as IPVS's n_control).
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memcpy
from l4emu.datapath._types cimport *
from l4emu.datapath._flowtable cimport FlowTable, R_EXPIRED, key_hash, key_lookup, ref_index, template_key
from l4emu.schedulers._core cimport available


cdef inline int64_t find_template(FlowTable t, const Service* s, const PacketKey* key, uint64_t now) noexcept nogil:
    """The live template of this client's network whose real can still take flows, or -1."""
    cdef PacketKey tk
    cdef uint32_t ref, idx
    template_key(s, key, &tk)
    ref = key_lookup(t, &tk, key_hash(t, &tk))
    if ref == 0:
        return -1
    idx = ref_index(ref)
    if t.due(&t.flows[idx], now) or not available(&t.reals[t.flows[idx].real]):
        t.remove(idx, R_EXPIRED)
        return -1
    return idx


cdef inline void note_template(FlowTable t, const Service* s, const PacketKey* key, uint32_t real,
                               int64_t idx, uint64_t now) noexcept nogil:
    """A connection was placed on `real`: refresh the template idx, or make one (-1)."""
    cdef PacketKey tk
    cdef Flow* f
    if idx < 0:
        idx = t.alloc(now)
        if idx < 0:
            return                              # no room: this connection just is not sticky
        template_key(s, key, &tk)
        f = &t.flows[idx]
        memcpy(f.client, tk.src, 16)
        f.proto = tk.proto
        f.family = tk.family
        f.real = real
        f.state = S_NONE
        f.flags |= F_TEMPLATE
        f.expires_ns = now + s.persist_ns
        if t.insert(<uint32_t>idx) < 0:
            return
        (<Real*>&t.reals[real]).persistent += 1
    f = &t.flows[idx]
    f.controlled += 1
    if f.expires_ns < now + s.persist_ns:
        f.expires_ns = now + s.persist_ns
