# The narrow C interface between the datapath and a scheduler.
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from l4emu._types cimport PacketKey, Real

# Pick a real for a new flow: an index into `reals` (the service's reals), or -1 for none.
ctypedef int32_t (*pick_fn)(void* state, const Real* reals, uint32_t n, const PacketKey* key,
                            uint64_t now_ns) noexcept nogil
# Hear that a flow of reals[index] ended (NULL when a scheduler does not care).
ctypedef void (*ended_fn)(void* state, const Real* reals, uint32_t n, uint32_t index) noexcept nogil

ctypedef struct SchedulerHook:
    pick_fn pick
    ended_fn ended
    void* state             # owned by the Scheduler object, which the datapath keeps alive


cdef class Scheduler:
    cdef SchedulerHook hook(self)
