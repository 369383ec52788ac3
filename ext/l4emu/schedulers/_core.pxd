# The narrow C interface between the datapath and a scheduler.
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from l4emu.datapath._types cimport PacketKey, Real, RF_DOWN, RF_OVERLOADED

# Pick a real for a new flow: an index into `reals` (the service's reals), or -1 for none.
ctypedef int32_t (*pick_fn)(void* state, const Real* reals, uint32_t n, const PacketKey* key,
                            uint64_t now_ns) noexcept nogil
# Hear that a flow of reals[index] ended (NULL when a scheduler does not care).
ctypedef void (*ended_fn)(void* state, const Real* reals, uint32_t n, uint32_t index) noexcept nogil

# Hear that reals changed (weight, down, overloaded), to rebuild lookup tables (NULL: not needed).
ctypedef void (*changed_fn)(void* state, const Real* reals, uint32_t n) noexcept nogil

ctypedef struct SchedulerHook:
    pick_fn pick
    ended_fn ended
    changed_fn changed
    void* state             # owned by the Scheduler object, which the datapath keeps alive


cdef class Scheduler:
    cdef SchedulerHook hook(self)


cdef inline bint available(const Real* r) noexcept nogil:
    """May take new flows: a positive weight, not down, not over its threshold."""
    return r.weight > 0 and not (r.flags & (RF_DOWN | RF_OVERLOADED))
