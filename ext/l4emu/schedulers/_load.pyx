"""Load- and weight-based built-in schedulers (IPVS's wrr lc wlc sed nq fo ovf twos, and random), in C."""
from libc.stdint cimport int32_t, uint32_t, uint64_t
from l4emu.datapath._types cimport PacketKey, Real, RF_DOWN
from l4emu.schedulers._core cimport Scheduler, SchedulerHook, available, pick_fn
from l4emu.schedulers._util cimport conn_overhead, gcd32, least_weighted, lighter, make_hook, below


ctypedef struct WrrState:
    int32_t cl              # the real last looked at
    int32_t cw              # the current weight: reals weighing at least this much are picked
    int32_t mw              # the largest weight of a real that is not down
    int32_t di              # the gcd of those weights: the step cw goes down by
    uint32_t n              # reals the figures above were computed for (0: not yet)


cdef void wrr_changed(void* state, const Real* reals, uint32_t n) noexcept nogil:
    """Recompute the max and gcd weight (IPVS ip_vs_wrr_dest_changed); the position is kept."""
    cdef WrrState* s = <WrrState*>state
    cdef uint32_t i
    s.mw = s.di = 0
    for i in range(n):
        if reals[i].weight > 0 and not (reals[i].flags & RF_DOWN):
            s.mw = max(s.mw, reals[i].weight)
            s.di = gcd32(s.di, reals[i].weight)
    if s.cw > s.mw:
        s.cw = s.mw
    if s.cl >= <int32_t>n:
        s.cl = -1
    s.n = n


cdef int32_t wrr_pick(void* state, const Real* reals, uint32_t n, const PacketKey* key,
                      uint64_t now_ns) noexcept nogil:
    """IPVS's interleaved order: each pass over the reals takes those weighing at least cw,
    and cw steps down by the gcd from the max weight, so weights 4,3,2 give A AB ABC ABC."""
    cdef WrrState* s = <WrrState*>state
    cdef uint32_t i
    cdef uint64_t _step, bound
    if s.n != n:
        wrr_changed(state, reals, n)
    for i in range(n):
        if available(&reals[i]):
            break
    else:
        return -1
    bound = <uint64_t>n * (<uint64_t>(s.mw // s.di) + 1)    # one whole cycle reaches every weight
    for _step in range(bound):
        s.cl += 1
        if s.cl >= <int32_t>n:
            s.cl = 0
        if s.cl == 0:
            s.cw -= s.di
            if s.cw <= 0:
                s.cw = s.mw
        if available(&reals[s.cl]) and reals[s.cl].weight >= s.cw:
            return s.cl
    return -1


cdef class WeightedRoundRobin(Scheduler):
    """wrr: round robin in proportion to weight, interleaved as IPVS does it (not in bursts)."""
    name = "wrr"
    cdef WrrState state

    def __cinit__(self):
        self.state.cl = -1

    cdef SchedulerHook hook(self):
        return make_hook(wrr_pick, wrr_changed, &self.state)


cdef int32_t lc_pick(void* state, const Real* reals, uint32_t n, const PacketKey* key,
                     uint64_t now_ns) noexcept nogil:
    """IPVS lc: the least active*256 + inactive, weight ignored (except 0 = no new flows)."""
    cdef int32_t best = -1
    cdef uint32_t i
    for i in range(n):
        if available(&reals[i]) and (best < 0 or conn_overhead(&reals[i]) < conn_overhead(&reals[best])):
            best = i
    return best


cdef int32_t wlc_pick(void* state, const Real* reals, uint32_t n, const PacketKey* key,
                      uint64_t now_ns) noexcept nogil:
    """IPVS wlc: the least (active*256 + inactive) / weight."""
    return least_weighted(reals, n, 256)


cdef int32_t sed_pick(void* state, const Real* reals, uint32_t n, const PacketKey* key,
                      uint64_t now_ns) noexcept nogil:
    """IPVS sed: the least (active + 1) / weight, the delay a new flow would expect."""
    cdef int32_t best = -1
    cdef uint32_t i
    for i in range(n):
        if available(&reals[i]) and (best < 0 or lighter(reals[i].active + 1, reals[i].weight,
                                                         reals[best].active + 1, reals[best].weight)):
            best = i
    return best


cdef int32_t nq_pick(void* state, const Real* reals, uint32_t n, const PacketKey* key,
                     uint64_t now_ns) noexcept nogil:
    """IPVS nq: the first idle real (no active connection), else as sed."""
    cdef uint32_t i
    for i in range(n):
        if available(&reals[i]) and reals[i].active == 0:
            return i
    return sed_pick(state, reals, n, key, now_ns)


cdef int32_t fo_pick(void* state, const Real* reals, uint32_t n, const PacketKey* key,
                     uint64_t now_ns) noexcept nogil:
    """IPVS fo: the available real with the highest weight, the first on a tie."""
    cdef int32_t best = -1
    cdef uint32_t i
    for i in range(n):
        if available(&reals[i]) and (best < 0 or reals[i].weight > reals[best].weight):
            best = i
    return best


cdef int32_t ovf_pick(void* state, const Real* reals, uint32_t n, const PacketKey* key,
                      uint64_t now_ns) noexcept nogil:
    """IPVS ovf: the highest weight among reals whose active connections do not exceed their weight."""
    cdef int32_t best = -1
    cdef uint32_t i
    for i in range(n):
        if available(&reals[i]) and reals[i].active <= <uint32_t>reals[i].weight and \
                (best < 0 or reals[i].weight > reals[best].weight):
            best = i
    return best


# The stateless load schedulers: they differ only in name and pick function, so one class serves
# them all and this table tells them apart (class name, scheduler name, docstring, pick).
cdef struct Policy:
    const char* cls
    const char* name
    const char* doc
    pick_fn pick

cdef enum:
    N_POLICIES = 6

cdef Policy POLICIES[N_POLICIES]
POLICIES[0] = Policy(b"LeastConnection", b"lc",
                     b"lc: fewest connections, an active one counting as 256 inactive ones (IPVS).", lc_pick)
POLICIES[1] = Policy(b"WeightedLeastConnection", b"wlc",
                     b"wlc: fewest connections per unit of weight (IPVS's default scheduler).", wlc_pick)
POLICIES[2] = Policy(b"ShortestExpectedDelay", b"sed",
                     b"sed: least (active + 1) / weight, so a heavy real takes a flow before a light idle one.",
                     sed_pick)
POLICIES[3] = Policy(b"NeverQueue", b"nq", b"nq: an idle real at once, otherwise shortest expected delay.", nq_pick)
POLICIES[4] = Policy(b"WeightedFailover", b"fo",
                     b"fo: everything to the heaviest available real; the next heaviest takes over when it fails.",
                     fo_pick)
POLICIES[5] = Policy(b"WeightedOverflow", b"ovf",
                     b"ovf: the heaviest real until its active connections exceed its weight, then the next.",
                     ovf_pick)


cdef class LoadScheduler(Scheduler):
    """A stateless load-based scheduler; each subclass below is one row of POLICIES, by its name.
    No state of its own (so it pickles, as the six classes did): the row is found when the datapath
    asks for the hook, once per service."""

    cdef SchedulerHook hook(self):
        cdef int k
        for k in range(N_POLICIES):
            if POLICIES[k].name.decode() == type(self).name:
                return make_hook(POLICIES[k].pick, NULL, NULL)
        raise TypeError(f"{type(self).__name__}: no stateless policy named {type(self).name!r}")


def _policy_class(int k):
    cls = POLICIES[k].cls.decode()
    return type(cls, (LoadScheduler,), {"name": POLICIES[k].name.decode(), "__doc__": POLICIES[k].doc.decode(),
                                        "__module__": __name__, "__qualname__": cls})


(LeastConnection, WeightedLeastConnection, ShortestExpectedDelay, NeverQueue, WeightedFailover,
 WeightedOverflow) = [_policy_class(k) for k in range(N_POLICIES)]


cdef int32_t weighted_draw(uint64_t* rng, const Real* reals, uint32_t n, uint64_t total) noexcept nogil:
    """An available real drawn with probability weight / total (total: the available weights)."""
    cdef uint64_t r = below(rng, total)
    cdef uint32_t i
    for i in range(n):
        if available(&reals[i]):
            if r < <uint64_t>reals[i].weight:
                return i
            r -= reals[i].weight
    return -1


cdef inline uint64_t available_weight(const Real* reals, uint32_t n) noexcept nogil:
    cdef uint64_t total = 0
    cdef uint32_t i
    for i in range(n):
        if available(&reals[i]):
            total += reals[i].weight
    return total


cdef int32_t random_pick(void* state, const Real* reals, uint32_t n, const PacketKey* key,
                         uint64_t now_ns) noexcept nogil:
    cdef uint64_t total = available_weight(reals, n)
    return weighted_draw(<uint64_t*>state, reals, n, total) if total else -1


cdef int32_t twos_pick(void* state, const Real* reals, uint32_t n, const PacketKey* key,
                       uint64_t now_ns) noexcept nogil:
    """IPVS twos: two weighted random draws, the one with less load per weight wins (the first on a tie)."""
    cdef uint64_t total = available_weight(reals, n)
    cdef int32_t a, b
    if total == 0:
        return -1
    a = weighted_draw(<uint64_t*>state, reals, n, total)
    b = weighted_draw(<uint64_t*>state, reals, n, total)
    if lighter(conn_overhead(&reals[b]), reals[b].weight, conn_overhead(&reals[a]), reals[a].weight):
        return b
    return a


cdef class SeededScheduler(Scheduler):
    """A scheduler that draws from a stream of its own, seeded by the Switch (so --seed repeats it)."""
    options = ("seed",)
    cdef uint64_t rng

    def __init__(self, seed=0):
        self.rng = seed & 0xFFFFFFFFFFFFFFFF


cdef class Random(SeededScheduler):
    """random: a real drawn in proportion to weight from a per-scheduler stream seeded by the Switch."""
    name = "random"

    cdef SchedulerHook hook(self):
        return make_hook(random_pick, NULL, &self.rng)


cdef class TwoChoices(SeededScheduler):
    """twos (p2c): the less loaded of two weighted random draws; near least-connection balance, no herding."""
    name = "twos"

    cdef SchedulerHook hook(self):
        return make_hook(twos_pick, NULL, &self.rng)
