"""The cluster's packet path: ECMP over N switch instances, each design's per-packet work, and PCC accounting.

A router spreads the clients' packets over the instances (5-tuple hash mod N, or resilient hashing);
each instance is a whole Datapath with its own connection table, called packet by packet through its
own handle(). Around that call, a consistency design does what its paper says a mux or a real does
(a global table, bucket history, second chance, a cookie, a delayed insert). Every packet toward a
VIP is then checked against the connection it belongs to: a connection whose packets reach two reals
is broken (a per-connection-consistency violation). The return path is direct (DSR, as in Maglev,
Katran, Beamer, GLB and Cheetah): packets from the service side do not cross the cluster.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int8_t, int32_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset
from posix.mman cimport munmap
from l4emu.datapath._batch cimport Batch, V_PASS, V_NEW, V_FORWARD, V_DROP
from l4emu.datapath._datapath cimport Datapath
from l4emu.datapath._flowtable cimport key_hash, key_lookup, prefetch_flow, prefetch_slot, ref_is_reply, table_alloc
from l4emu.datapath._headers cimport PARSED, PARSE_DROP
from l4emu.datapath._types cimport *
from l4emu.datapath._wire cimport (IPPROTO_TCP, TCP_ACK, TCP_DATA_OFFSET, TCP_FIN, TCP_HEADER_LEN, TCP_RST,
                                   TCP_SYN)
from l4emu.schedulers._core cimport Scheduler, SchedulerHook
from l4emu.schedulers._util cimport make_hook, mix64, selection_hash

cdef extern from *:
    void prefetch "__builtin_prefetch"(const void* addr) noexcept nogil

# The designs, by the name the `consistency` setting gives them (DESIGN_NAMES, checked complete at import).
cdef enum Design:
    DS_MAGLEV = 0           # Maglev hashing + per-instance table (Maglev NSDI'16, Katran)
    DS_MAGLEV_GLOBAL = 1    # ... + a cluster-wide table read on a local miss (Katran's global LRU, #155)
    DS_SECOND_CHANCE = 2    # GLB director: (primary, secondary) rows by rendezvous; the real hands on
    DS_BEAMER = 3           # stateless mux, bucket history; the real daisy-chains (NSDI'18)
    DS_CHEETAH = 4          # the real's id in a cookie in the TCP timestamp (NSDI'20)
    DS_JET = 5              # track only connections that horizon servers would take (CoNEXT'21)
    DS_SILKROAD = 6         # a connection table whose inserts land after a delay (SIGCOMM'17)
    DS_HASH = 7             # stateless 5-tuple hash mod the available reals (Cheetah's baseline)
    DS_CONSISTENT = 8       # stateless Maglev hashing, no table (Cheetah's baseline)
    N_DESIGNS = 9

DESIGN_NAMES = name_table({
    DS_MAGLEV: "maglev", DS_MAGLEV_GLOBAL: "maglev-global", DS_SECOND_CHANCE: "rendezvous-second-chance",
    DS_BEAMER: "beamer", DS_CHEETAH: "cheetah", DS_JET: "jet", DS_SILKROAD: "silkroad-delay",
    DS_HASH: "hash", DS_CONSISTENT: "consistent",
}, N_DESIGNS, "Design")

cdef enum:
    ECMP_HASH = 0
    ECMP_RESILIENT = 1
    MAX_INSTANCES = 64
    ECMP_BUCKETS = 4096         # resilient hashing's next-hop table (Broadcom/Cumulus use 64-4096 entries)
    GLB_ROWS = 65536            # GLB director's forwarding table: 2^16 rows
    GLB_ROW_SALT = 7            # the row hash's salt (selection_hash salts 0-3 are the schedulers')
    TCPOPT_EOL = 0
    TCPOPT_NOP = 1
    TCPOPT_TIMESTAMP = 8        # RFC 7323
    TCPOPT_TIMESTAMP_LEN = 10
    MIN_CONN_SLOTS = 1024
    WINDOW = 16                 # packets parsed and prefetched ahead of their handling (as the datapath)

# Conn.flags
cdef enum:
    C_USED = 1
    C_CLOSED = 2            # a FIN or RST from the client: the next bare SYN starts a new connection
    C_BROKEN = 4            # counted once: its packets reached two reals
    C_BLACKHOLED = 8        # counted once: a packet went to a real that is down, or was dropped
    C_MOVED = 16            # counted once: ECMP sent it to another instance
    C_REDIRECTED = 32       # counted once: a real handed a packet of it on (second chance, daisy chain)
    C_MIDFLOW = 64          # first seen without a SYN (began before the capture)
    C_JET_STAYS = 128       # jet: its cached hash says the horizon would leave it where it is

# One connection as the cluster's oracle sees it (32 bytes: in a table of them, mapped page-aligned, a
# record never straddles two cache lines, and the oracle reads one record a packet). It is found by the
# tuple's 64-bit keyed hash alone, also its fingerprint: two tuples share one with odds of 2^-64 a pair.
# The stamp that only jet and silkroad-delay read lives beside the table (ClusterPath.stamps, same slot).
ctypedef struct Conn:
    uint64_t fp             # the tuple's keyed hash (the instances' table hash)
    uint64_t last_ns
    int32_t real            # the real that holds the connection (its first real), -1 none yet
    # The design's own memory of the connection, -1 none: cheetah, the real its timestamp cookie
    # names; maglev-global, the global table's entry; silkroad-delay, the real the pending insert holds;
    # jet, its cached hash (a service-local real).
    int32_t aux
    uint8_t flags           # 0: a free slot
    int8_t instance         # the instance of its last packet, -1 none (MAX_INSTANCES fits)
    int8_t stamp_instance   # silkroad-delay: where the insert is pending; jet: whose reals; -1 none
    uint8_t proto


# What a steered scheduler needs: the instance's own scheduler, and a pick the cluster may impose.
ctypedef struct Steer:
    SchedulerHook inner
    int32_t forced          # the service-local real the next miss must take, -1: ask the inner scheduler


cdef int32_t steer_pick(void* state, const Real* reals, uint32_t n, const PacketKey* key,
                        uint64_t now_ns) noexcept nogil:
    cdef Steer* s = <Steer*>state
    if s.forced >= 0:
        return s.forced if <uint32_t>s.forced < n else -1
    return s.inner.pick(s.inner.state, reals, n, key, now_ns)


cdef void steer_changed(void* state, const Real* reals, uint32_t n) noexcept nogil:
    cdef Steer* s = <Steer*>state
    if s.inner.changed != NULL:
        s.inner.changed(s.inner.state, reals, n)


cdef void steer_ended(void* state, const Real* reals, uint32_t n, uint32_t index) noexcept nogil:
    cdef Steer* s = <Steer*>state
    if s.inner.ended != NULL:
        s.inner.ended(s.inner.state, reals, n, index)


cdef class Steered(Scheduler):
    """An instance's scheduler with a door for the cluster: a design that knows where a connection
    belongs (a global table, a pending insert) makes the instance's next miss take that real."""
    name = "steered"
    cdef Steer state
    cdef readonly Scheduler inner

    def __init__(self, Scheduler inner):
        self.inner = inner
        self.state.inner = inner.hook()
        self.state.forced = -1

    cdef SchedulerHook hook(self):
        cdef SchedulerHook h = make_hook(steer_pick, steer_changed, &self.state)
        h.ended = steer_ended
        return h


cdef inline int32_t service_of(const Service* services, uint32_t n, const PacketKey* key) noexcept nogil:
    """The service a client's packet is for, or -1: Datapath.find_service's answer with the cheap
    fields compared first and an IPv4 address as one 32-bit word (it runs for every packet here)."""
    cdef uint32_t k
    for k in range(n):
        if (services[k].vport == key.dport and services[k].proto == key.proto and services[k].family == key.family
                and (memcmp(services[k].vip, key.dst, 16) == 0 if key.family != 4
                     else (<const uint32_t*>services[k].vip)[0] == (<const uint32_t*>key.dst)[0])):
            return k
    return -1


cdef inline bint glb_active(const Real* r) noexcept nogil:
    """GLB's `active`: in the table as itself (not failed, not draining)."""
    return r.weight > 0 and not (r.flags & RF_DOWN)


cdef inline bint syn_has_timestamp(const uint8_t* p, const PacketInfo* info) noexcept nogil:
    """Does this TCP segment carry the timestamp option (RFC 7323)? Every read is checked against
    the captured length and the header's own length."""
    cdef uint32_t at, end, length
    cdef uint8_t kind
    if info.l4 + TCP_HEADER_LEN > info.caplen:
        return False
    end = info.l4 + (p[info.l4 + TCP_DATA_OFFSET] >> 4) * 4
    if end > info.caplen:
        end = info.caplen
    at = info.l4 + TCP_HEADER_LEN
    while at < end:
        kind = p[at]
        if kind == TCPOPT_EOL:
            return False
        if kind == TCPOPT_NOP:
            at += 1
            continue
        if at + 1 >= end:
            return False
        length = p[at + 1]
        if length < 2 or at + length > end:
            return False
        if kind == TCPOPT_TIMESTAMP and length == TCPOPT_TIMESTAMP_LEN:
            return True
        at += length
    return False


cdef class ClusterPath:
    """N Datapaths behind one router, one consistency design, and the oracle that counts PCC."""
    cdef void* dps[MAX_INSTANCES]           # borrowed; `instances` keeps them alive
    cdef Steer** steers[MAX_INSTANCES]      # per instance: its services' steers (n_services each)
    cdef readonly list instances
    cdef list steered
    cdef readonly int design
    cdef int ecmp
    cdef bint up[MAX_INSTANCES]
    cdef int32_t up_list[MAX_INSTANCES]
    cdef int n_up
    cdef readonly int n_instances
    cdef uint16_t ecmp_table[ECMP_BUCKETS]
    cdef uint32_t n_services, n_reals
    # The oracle: open addressing on the tuple's hash, records in the slots.
    cdef Conn* conns
    # Per slot of conns, NULL unless the design reads it (jet, silkroad-delay): silkroad-delay, when the
    # pending insert was started; jet, the generation of its instance's reals its cached hash is of
    # (ClusterPath.reals_same). Out of the record, so that the designs that never read it keep 32 bytes.
    cdef uint64_t* stamps
    cdef readonly uint64_t conn_used
    cdef uint64_t omask
    # Design tables, per service (service s's rows start at s * size), global real indexes.
    cdef int32_t* bucket_owner             # beamer: the bucket's server now
    cdef int32_t* bucket_prev              # beamer: its server before the last change (-1 none)
    cdef readonly uint32_t bucket_size
    cdef int32_t* glb_primary
    cdef int32_t* glb_secondary
    cdef int32_t* avail                    # hash: the available reals, n_avail[s] of them
    cdef uint32_t* n_avail
    cdef Real* scratch                     # jet: a service's reals with the horizon taken in
    # jet: per instance, its reals' weights and marks as last seen (n_reals each), and their generation
    cdef int32_t* seen_weight
    cdef uint8_t* seen_flags
    cdef uint64_t reals_gen[MAX_INSTANCES]
    cdef readonly uint64_t insert_delay_ns
    cdef uint64_t idle_ns[2]               # when a connection with no packet ends: TCP, UDP
    # Counters
    cdef readonly uint64_t packets, forward_packets, return_packets, other_packets, dropped_packets
    cdef readonly uint64_t connections, midflow, broken, broken_real_down, blackholed, moved
    cdef readonly uint64_t redirected_packets, redirected_connections, blackholed_packets
    cdef readonly uint64_t syns, syns_with_timestamp, cookie_connections
    cdef readonly uint64_t jet_tracked, global_entries
    cdef uint64_t inst_packets[MAX_INSTANCES]
    cdef uint64_t inst_conns[MAX_INSTANCES]
    cdef uint64_t* real_conns
    cdef readonly uint64_t clock_ns

    def __cinit__(self):
        self.instances = []
        self.steered = []

    def __init__(self, int design, int ecmp, list instances, list steered, uint32_t n_services,
                 uint32_t n_reals, double idle_tcp_s, double idle_udp_s, double insert_delay_s=0,
                 uint32_t bucket_size=0, uint64_t expected_connections=0):
        """`instances`: the Datapaths; `steered`: per instance, its services' Steered schedulers."""
        if not 0 <= design < N_DESIGNS:
            raise ValueError(f"no design {design}")
        if ecmp not in (ECMP_HASH, ECMP_RESILIENT):
            raise ValueError(f"no ECMP mode {ecmp}")
        if (design == DS_BEAMER or design == DS_CONSISTENT) and bucket_size == 0:
            raise ValueError("beamer and consistent need their bucket table's size")
        self.design = design
        self.ecmp = ecmp
        self.n_services = n_services
        self.n_reals = n_reals
        self.idle_ns[0] = <uint64_t>(idle_tcp_s * NS)
        self.idle_ns[1] = <uint64_t>(idle_udp_s * NS)
        self.insert_delay_ns = <uint64_t>(insert_delay_s * NS)
        self.bucket_size = bucket_size
        self.omask = MIN_CONN_SLOTS - 1
        self.conns = <Conn*>table_alloc(MIN_CONN_SLOTS * sizeof(Conn))
        if design == DS_JET or design == DS_SILKROAD:
            self.stamps = <uint64_t*>table_alloc(MIN_CONN_SLOTS * sizeof(uint64_t))
        self.real_conns = <uint64_t*>calloc(max(n_reals, 1), sizeof(uint64_t))
        self.scratch = <Real*>calloc(max(n_reals, 1), sizeof(Real))
        self.seen_weight = <int32_t*>calloc(max(n_reals, 1) * MAX_INSTANCES, sizeof(int32_t))
        self.seen_flags = <uint8_t*>calloc(max(n_reals, 1) * MAX_INSTANCES, sizeof(uint8_t))
        self.avail = <int32_t*>calloc(max(n_reals * n_services, 1), sizeof(int32_t))
        self.n_avail = <uint32_t*>calloc(max(n_services, 1), sizeof(uint32_t))
        if bucket_size:
            self.bucket_owner = <int32_t*>malloc(n_services * bucket_size * sizeof(int32_t))
            self.bucket_prev = <int32_t*>malloc(n_services * bucket_size * sizeof(int32_t))
        if design == DS_SECOND_CHANCE:
            self.glb_primary = <int32_t*>malloc(n_services * GLB_ROWS * sizeof(int32_t))
            self.glb_secondary = <int32_t*>malloc(n_services * GLB_ROWS * sizeof(int32_t))
        if (self.conns == NULL or self.real_conns == NULL
                or ((design == DS_JET or design == DS_SILKROAD) and self.stamps == NULL) or self.scratch == NULL
                or self.seen_weight == NULL or self.seen_flags == NULL
                or self.avail == NULL
                or self.n_avail == NULL or (bucket_size and (self.bucket_owner == NULL or self.bucket_prev == NULL))
                or (design == DS_SECOND_CHANCE and (self.glb_primary == NULL or self.glb_secondary == NULL))):
            raise MemoryError()
        for k in range(n_services * bucket_size):
            self.bucket_owner[k] = self.bucket_prev[k] = -1
        for dp, steers in zip(instances, steered, strict=True):
            self.add_instance(dp, steers)

    def __dealloc__(self):
        cdef int k
        for k in range(MAX_INSTANCES):
            free(self.steers[k])
        if self.conns != NULL:
            munmap(self.conns, (self.omask + 1) * sizeof(Conn))
        if self.stamps != NULL:
            munmap(self.stamps, (self.omask + 1) * sizeof(uint64_t))
        free(self.real_conns)
        free(self.scratch)
        free(self.seen_weight)
        free(self.seen_flags)
        free(self.avail)
        free(self.n_avail)
        free(self.bucket_owner)
        free(self.bucket_prev)
        free(self.glb_primary)
        free(self.glb_secondary)

    def add_instance(self, Datapath dp, list steers):
        """A new instance (lb-add), up at once; returns its number."""
        if self.n_instances >= MAX_INSTANCES:
            raise ValueError(f"a cluster has at most {MAX_INSTANCES} instances")
        self.instances.append(dp)
        self.steered.append(steers)
        self.n_instances += 1
        self.replace_instance(self.n_instances - 1, dp, steers)
        self.set_up(self.n_instances - 1, True)
        return self.n_instances - 1

    def replace_instance(self, int k, Datapath dp, list steers):
        """Instance k restarted (lb-up after lb-down): a fresh Datapath, an empty table."""
        cdef Datapath first = <Datapath>self.instances[0]
        cdef uint32_t s
        cdef Steered st
        if not 0 <= k < self.n_instances:
            raise IndexError(f"no instance {k}")
        if dp.table.k0 != first.table.k0 or dp.table.k1 != first.table.k1:
            raise ValueError("the instances must share their table secret (one hash a packet)")
        if len(steers) != self.n_services:
            raise ValueError(f"{self.n_services} steered schedulers expected")
        self.instances[k] = dp
        self.steered[k] = steers
        self.dps[k] = <void*>dp
        self.reals_gen[k] += 1                  # a new instance: what jet's records keep of the old one is stale
        free(self.steers[k])
        self.steers[k] = <Steer**>malloc(max(self.n_services, 1) * sizeof(Steer*))
        if self.steers[k] == NULL:
            raise MemoryError()
        for s in range(self.n_services):
            st = <Steered>steers[s]
            self.steers[k][s] = &st.state

    def set_up(self, int k, bint up):
        """Take instance k into ECMP or out of it (lb-up, lb-down); rebuilds the next-hop table."""
        cdef int i, j, old_n = self.n_up
        cdef uint32_t b
        cdef int32_t load[MAX_INSTANCES]
        cdef int32_t target, victim
        if not 0 <= k < self.n_instances:
            raise IndexError(f"no instance {k}")
        self.up[k] = up
        self.n_up = 0
        for i in range(self.n_instances):
            if self.up[i]:
                self.up_list[self.n_up] = i
                self.n_up += 1
        if self.ecmp != ECMP_RESILIENT or self.n_up == 0:
            return
        if old_n == 0:                          # the first next hops: round and round
            for b in range(ECMP_BUCKETS):
                self.ecmp_table[b] = self.up_list[b % self.n_up]
            return
        memset(load, 0, sizeof(load))
        for b in range(ECMP_BUCKETS):
            if self.up[self.ecmp_table[b]]:
                load[self.ecmp_table[b]] += 1
        # Resilient hashing: a removed next hop's buckets go to the least loaded survivors; an added
        # one takes buckets from the most loaded until it has its share. No other bucket moves.
        for b in range(ECMP_BUCKETS):
            if not self.up[self.ecmp_table[b]]:
                target = self.up_list[0]
                for j in range(self.n_up):
                    if load[self.up_list[j]] < load[target]:
                        target = self.up_list[j]
                self.ecmp_table[b] = target
                load[target] += 1
        if up:
            for b in range(ECMP_BUCKETS):
                if load[k] >= ECMP_BUCKETS // self.n_up:
                    break
                victim = self.ecmp_table[b]
                if victim != k and load[victim] > ECMP_BUCKETS // self.n_up:
                    self.ecmp_table[b] = k
                    load[victim] -= 1
                    load[k] += 1

    def instance_up(self):
        return [bool(self.up[i]) for i in range(self.n_instances)]

    def set_buckets(self, uint32_t service, owners):
        """beamer and consistent: the bucket -> real table of a service now (global real indexes, -1
        none); a bucket whose owner changes keeps the old one as its previous owner (Beamer's history)."""
        cdef uint32_t b, base = service * self.bucket_size
        cdef int32_t new
        if service >= self.n_services or len(owners) != self.bucket_size:
            raise ValueError(f"{self.bucket_size} buckets of a service below {self.n_services} expected")
        for b in range(self.bucket_size):
            new = owners[b]
            if new != self.bucket_owner[base + b]:
                if self.bucket_owner[base + b] >= 0:
                    self.bucket_prev[base + b] = self.bucket_owner[base + b]
                self.bucket_owner[base + b] = new

    def permute_buckets(self, uint32_t service, list buckets):
        """Cheetah's experiment: the listed buckets pass their owners round (the first takes the
        second's, ..., the last the first's); each keeps its old owner as its previous one."""
        cdef uint32_t base = service * self.bucket_size
        cdef Py_ssize_t i, n = len(buckets)
        if service >= self.n_services or any(not 0 <= b < self.bucket_size for b in buckets):
            raise ValueError(f"buckets 0-{self.bucket_size - 1} of a service below {self.n_services} expected")
        owners = [self.bucket_owner[base + <uint32_t>b] for b in buckets]
        for i in range(n):
            if owners[(i + 1) % n] != owners[i]:
                self.bucket_prev[base + <uint32_t>buckets[i]] = owners[i]
                self.bucket_owner[base + <uint32_t>buckets[i]] = owners[(i + 1) % n]

    def bucket_owners(self, uint32_t service):
        cdef uint32_t base = service * self.bucket_size
        if service >= self.n_services:
            raise IndexError(f"no service {service}")
        return [self.bucket_owner[base + b] for b in range(self.bucket_size)]

    def set_available(self, uint32_t service, list reals):
        """hash: the service's available reals (global indexes), in order."""
        cdef uint32_t i
        if service >= self.n_services or len(reals) > self.n_reals:
            raise ValueError("reals out of range")
        for i in range(len(reals)):
            self.avail[service * self.n_reals + i] = reals[i]
        self.n_avail[service] = len(reals)

    def available(self, uint32_t service):
        if service >= self.n_services:
            raise IndexError(f"no service {service}")
        return [self.avail[service * self.n_reals + i] for i in range(self.n_avail[service])]

    def build_rows(self, uint32_t service, Scheduler rendezvous):
        """rendezvous-second-chance, as GLB's table: each of 2^16 rows orders the service's reals by a
        rendezvous hash of (row, real), unweighted, and takes the first two as primary and secondary.
        A real that is not active (down: GLB's health check; weight 0: draining) is swapped to
        secondary where it would be primary; the next active one takes its place."""
        cdef Datapath dp = <Datapath>self.instances[0]
        cdef SchedulerHook hook = rendezvous.hook()
        cdef Service* svc
        cdef PacketKey key
        cdef uint32_t row, first, n, i, base = service * GLB_ROWS
        cdef int32_t a, b
        if service >= dp.n_services:
            raise IndexError(f"no service {service}")
        svc = &dp.t.services[service]
        first, n = svc.first_real, svc.n_reals
        memset(&key, 0, sizeof(key))
        key.family = 4
        with nogil:
            for row in range(GLB_ROWS):
                key.src[0] = <uint8_t>(row >> 8)
                key.src[1] = <uint8_t>row
                for i in range(n):              # every real, as if active and of weight 1: the order alone
                    self.scratch[i] = dp.t.reals[first + i]
                    self.scratch[i].flags = 0
                    self.scratch[i].weight = 1
                a = hook.pick(hook.state, self.scratch, n, &key, 0)
                if a < 0:
                    self.glb_primary[base + row] = self.glb_secondary[base + row] = -1
                    continue
                self.scratch[a].flags = RF_DOWN
                b = hook.pick(hook.state, self.scratch, n, &key, 0)
                if not glb_active(&dp.t.reals[first + a]):
                    # swapped to secondary; the primary is the best active real after it
                    while b >= 0 and not glb_active(&dp.t.reals[first + b]):
                        self.scratch[b].flags = RF_DOWN
                        b = hook.pick(hook.state, self.scratch, n, &key, 0)
                    a, b = b, a
                self.glb_primary[base + row] = <int32_t>first + a if a >= 0 else -1
                self.glb_secondary[base + row] = <int32_t>first + b if b >= 0 else -1

    def rows(self, uint32_t service):
        cdef uint32_t base = service * GLB_ROWS
        if self.glb_primary == NULL or service >= self.n_services:
            return []
        return [(self.glb_primary[base + r], self.glb_secondary[base + r]) for r in range(GLB_ROWS)]

    # ---- the packet loop --------------------------------------------------------------------
    def process(self, Batch batch, Py_ssize_t start=0, uint64_t until_ns=0, Py_ssize_t end=-1):
        """Run packets start..end through the cluster; returns where it stopped (before the first
        packet at or past until_ns, as Datapath.process). As the datapath does, packets go in windows:
        parse, hash, route by ECMP and prefetch the instance's index slot and the oracle's record for
        a window, then prefetch the flow records, then handle each packet in order."""
        cdef Py_ssize_t base = start, i, stop = batch.n if end < 0 else end
        cdef Datapath first
        cdef PacketInfo info[WINDOW]
        cdef int parsed[WINDOW]
        cdef int32_t svc[WINDOW]
        cdef int inst[WINDOW]
        cdef uint64_t h[WINDOW]
        cdef int j, m
        if start < 0 or start > stop or stop > batch.n:
            raise IndexError(f"packets {start}..{stop} are outside the batch of {batch.n}")
        if self.n_instances == 0:
            raise RuntimeError("a cluster with no instance")
        first = <Datapath>self.instances[0]
        with nogil:
            while base < stop:
                m = <int>min(<Py_ssize_t>WINDOW, stop - base)
                for j in range(m):
                    i = base + j
                    parsed[j] = first.classify(batch.data + batch.offset[i], batch.caplen[i], batch.origlen[i],
                                               batch.linktype[i], &info[j])
                    svc[j] = -1
                    if parsed[j] == PARSED and not info[j].icmp_error:
                        svc[j] = service_of(first.t.services, first.n_services, &info[j].key)
                    if svc[j] >= 0 and self.n_up:
                        # One keyed hash serves the router, the instance's table and the oracle: the
                        # instances share their secret, and each use takes other bits of it.
                        h[j] = key_hash(first.table, &info[j].key)
                        inst[j] = self.next_hop(h[j])
                        prefetch_slot((<Datapath>self.dps[inst[j]]).table, h[j])
                        self.prefetch_conn(h[j])
                for j in range(m):
                    if svc[j] >= 0 and self.n_up:
                        prefetch_flow((<Datapath>self.dps[inst[j]]).table, h[j])
                for j in range(m):
                    i = base + j
                    if until_ns and max(self.clock_ns, batch.ts_ns[i]) >= until_ns:
                        stop = i
                        break
                    if batch.ts_ns[i] > self.clock_ns:
                        self.clock_ns = batch.ts_ns[i]
                    self.packets += 1
                    self.one(batch.data + batch.offset[i], &info[j], parsed[j], svc[j], inst[j], h[j],
                             batch.ts_ns[i], batch.origlen[i], &batch.verdict[i], &batch.detail[i])
                base += m
        return stop

    cdef inline int next_hop(self, uint64_t h) noexcept nogil:
        """The router's choice of instance for a tuple's hash (n_up > 0): its top bits, which neither
        the instances' index (low bits) nor the oracle's (from bit 16) start from. The top 24 bits
        divide as 32-bit numbers (the same remainder, a fraction of a 64-bit division's latency)."""
        if self.ecmp == ECMP_RESILIENT:
            return self.ecmp_table[<uint32_t>(h >> 40) % ECMP_BUCKETS]
        return self.up_list[<uint32_t>(h >> 40) % <uint32_t>self.n_up]

    cdef inline void prefetch_conn(self, uint64_t fp) noexcept nogil:
        """Read ahead the oracle's record at the hash's home slot (one cache line: 32-byte records)."""
        prefetch(&self.conns[fp & self.omask])

    cdef inline void one(self, uint8_t* p, PacketInfo* info, int parsed, int32_t svc, int k, uint64_t h,
                         uint64_t ts, uint32_t origlen, uint8_t* verdict, int32_t* detail) noexcept nogil:
        """One packet, its window's work done (svc, instance k, and the tuple's hash h)."""
        cdef int32_t final
        cdef Conn* c
        cdef bint is_syn, starts
        if parsed != PARSED or info.icmp_error:
            self.other_packets += 1
            verdict[0] = V_DROP if parsed == PARSE_DROP else V_PASS
            detail[0] = info.reason
            return
        if svc < 0:
            if self.service_side(<Datapath>self.dps[0], &info.key):
                self.return_packets += 1        # the return path is direct (DSR)
            else:
                self.other_packets += 1
            verdict[0] = V_PASS
            detail[0] = P_NO_SERVICE
            return
        self.forward_packets += 1
        if self.n_up == 0:                      # no instance left: the router has nowhere to send it
            self.dropped_packets += 1
            verdict[0] = V_DROP
            detail[0] = D_NO_REAL
            return
        self.inst_packets[k] += 1
        c = self.find_conn(h)
        if c == NULL:                           # out of memory for the oracle: still forwarded
            (<Datapath>self.dps[k]).handle(p, info, parsed, h, ts, origlen, verdict, detail)
            return
        is_syn = info.key.proto == IPPROTO_TCP and (info.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST)) == TCP_SYN
        starts = False
        if not (c.flags & C_USED):
            starts = True
        elif ((is_syn and c.flags & C_CLOSED) or c.last_ns + self.idle_ns[info.key.proto != IPPROTO_TCP] < ts):
            starts = True                       # a new connection on a used tuple
        if starts:
            self.start_conn(c, info.key.proto, ts, is_syn or info.key.proto != IPPROTO_TCP)
        if is_syn:
            self.syns += 1
        if self.table_only(c, is_syn, starts):
            (<Datapath>self.dps[k]).handle(p, info, parsed, h, ts, origlen, verdict, detail)
            final = self.took(verdict, detail)
        else:
            final = self.route(<Datapath>self.dps[k], k, svc, c, p, info, parsed, h, ts, origlen, is_syn, starts,
                               verdict, detail)
        self.account(<Datapath>self.dps[0], c, k, final, ts, info.tcp_flags if info.key.proto == IPPROTO_TCP else 0)

    cdef inline bint table_only(self, const Conn* c, bint is_syn, bint starts) noexcept nogil:
        """Does the packet go to its instance's handle() with no design work around it (one() then calls
        handle() itself, not route(): the common case of the table designs, at the cost of a compare)?
        maglev's always do; cheetah's without a cookie, but for a connection's SYN (it may get one)."""
        return self.design == DS_MAGLEV or (self.design == DS_CHEETAH and c.aux < 0 and not (starts and is_syn))

    cdef bint service_side(self, Datapath dp, const PacketKey* key) noexcept nogil:
        return dp.front_of_source(key) >= 0 or dp.real_of_source(key) >= 0

    cdef inline void start_conn(self, Conn* c, uint8_t proto, uint64_t ts, bint opened) noexcept nogil:
        """A new connection on the record's tuple: everything but its hash starts again."""
        c.proto = proto
        c.real = c.aux = -1
        c.instance = c.stamp_instance = -1
        c.last_ns = ts
        if self.stamps != NULL:
            self.stamps[c - self.conns] = 0
        c.flags = C_USED if opened else C_USED | C_MIDFLOW
        self.connections += 1
        if not opened:
            self.midflow += 1

    cdef inline int32_t route(self, Datapath dp, int k, int32_t svc, Conn* c, uint8_t* p, PacketInfo* info,
                              int parsed, uint64_t h, uint64_t ts, uint32_t origlen, bint is_syn, bint starts,
                              uint8_t* verdict, int32_t* detail) noexcept nogil:
        """The design's way for one packet toward a VIP (but those table_only() sends straight to the
        instance): returns the real it finally reaches (-1: none)."""
        cdef Service* s = &dp.t.services[svc]
        cdef Steer* st = self.steers[k][svc]
        cdef int32_t pick, owner, prev
        cdef uint32_t row, ref
        if self.design == DS_MAGLEV_GLOBAL and not is_syn and c.aux >= 0:
            st.forced = c.aux - <int32_t>s.first_real     # read only on a local miss
            dp.handle(p, info, parsed, h, ts, origlen, verdict, detail)
            st.forced = -1
            return self.took(verdict, detail)
        if self.design == DS_MAGLEV_GLOBAL:
            dp.handle(p, info, parsed, h, ts, origlen, verdict, detail)
            if verdict[0] == V_NEW:
                if c.aux < 0:
                    self.global_entries += 1
                c.aux = detail[0]       # every new entry is written to the global table too
            return self.took(verdict, detail)
        if self.design == DS_CHEETAH:
            if c.aux >= 0:                      # the client echoes the cookie: no table, no hash
                return self.stateless(c.aux, starts, verdict, detail)
            if starts and is_syn:
                if syn_has_timestamp(p, info):
                    self.syns_with_timestamp += 1
                    pick = st.inner.pick(st.inner.state, &dp.t.reals[s.first_real], s.n_reals, &info.key, ts)
                    if pick >= 0:
                        c.aux = <int32_t>s.first_real + pick
                        self.cookie_connections += 1
                        return self.stateless(c.aux, starts, verdict, detail)
            dp.handle(p, info, parsed, h, ts, origlen, verdict, detail)     # no cookie: as maglev
            return self.took(verdict, detail)
        if self.design == DS_JET or self.design == DS_SILKROAD:
            ref = key_lookup(dp.table, &info.key, h)
            if ref and not ref_is_reply(ref):
                dp.handle(p, info, parsed, h, ts, origlen, verdict, detail)
                return self.took(verdict, detail)
            if self.design == DS_JET:
                pick = self.jet_hash(dp, k, s, st, c, &info.key, ts)
            else:
                pick = st.inner.pick(st.inner.state, &dp.t.reals[s.first_real], s.n_reals, &info.key, ts)
            if pick < 0:
                return self.stateless(-1, starts, verdict, detail)
            if self.design == DS_JET:
                if c.flags & C_JET_STAYS:
                    return self.stateless(<int32_t>s.first_real + pick, starts, verdict, detail)
                self.jet_tracked += 1           # horizon servers would take it: track it
            else:
                if c.stamp_instance != k:       # SilkRoad: the switch CPU starts the insert
                    c.stamp_instance = k
                    self.stamps[c - self.conns] = ts
                    c.aux = <int32_t>s.first_real + pick
                if ts < self.stamps[c - self.conns] + self.insert_delay_ns:
                    return self.stateless(<int32_t>s.first_real + pick, starts, verdict, detail)
                pick = c.aux - <int32_t>s.first_real      # the insert lands with its first choice
                c.stamp_instance = -1
            st.forced = pick
            dp.handle(p, info, parsed, h, ts, origlen, verdict, detail)
            st.forced = -1
            return self.took(verdict, detail)
        if self.design == DS_HASH:
            if self.n_avail[svc] == 0:
                return self.stateless(-1, starts, verdict, detail)
            return self.stateless(self.avail[svc * self.n_reals + mix64(h) % self.n_avail[svc]], starts,
                                  verdict, detail)
        if self.design == DS_CONSISTENT:        # the Maglev table as buckets, no history
            row = selection_hash(info.key.src, info.key.sport, 0) % self.bucket_size
            return self.stateless(self.bucket_owner[svc * self.bucket_size + row], starts, verdict, detail)
        if self.design == DS_BEAMER:
            row = selection_hash(info.key.src, info.key.sport, 0) % self.bucket_size
            owner = self.bucket_owner[svc * self.bucket_size + row]
            prev = self.bucket_prev[svc * self.bucket_size + row]
            if starts or c.real < 0 or c.real == owner or prev < 0 or prev == owner:
                return self.stateless(owner, starts, verdict, detail)
            self.redirect(c)                    # the owner does not know it: daisy-chain to the previous one
            return self.stateless(prev, starts, verdict, detail)
        # DS_SECOND_CHANCE: GLB hashes the source address only
        row = selection_hash(info.key.src, 0, GLB_ROW_SALT) % GLB_ROWS
        owner = self.glb_primary[svc * GLB_ROWS + row]
        prev = self.glb_secondary[svc * GLB_ROWS + row]
        if starts or c.real < 0 or c.real == owner or prev < 0:
            return self.stateless(owner, starts, verdict, detail)
        self.redirect(c)                        # not a SYN, not local: the second chance
        return self.stateless(prev, starts, verdict, detail)

    cdef int32_t jet_hash(self, Datapath dp, int k, Service* s, Steer* st, Conn* c, const PacketKey* key,
                          uint64_t ts) noexcept nogil:
        """JET's hash of a connection its instance does not track: the real it takes now (service-local,
        -1 none), with C_JET_STAYS set when the horizon would leave it there. Both are functions of the
        tuple and of the instance's reals (weights, down and overload marks) alone, so the record keeps
        them while those stay as they were: the answers of hashing every packet, as JET does, for the
        cost of comparing the reals."""
        cdef int32_t pick
        if self.reals_same(dp, k, s) and c.stamp_instance == k and self.stamps[c - self.conns] == self.reals_gen[k]:
            return c.aux
        pick = st.inner.pick(st.inner.state, &dp.t.reals[s.first_real], s.n_reals, key, ts)
        c.flags &= ~C_JET_STAYS
        if pick >= 0 and self.horizon_pick(dp, s, st, key, ts) == pick:
            c.flags |= C_JET_STAYS
        c.aux = pick
        self.stamps[c - self.conns] = self.reals_gen[k]
        c.stamp_instance = k
        return pick

    cdef bint reals_same(self, Datapath dp, int k, const Service* s) noexcept nogil:
        """Are instance k's reals of the service as when last looked at? If not, they are remembered
        and a new generation starts: every hash instance k's connections keep goes stale."""
        cdef uint32_t i, at
        cdef const Real* r
        cdef bint same = True
        for i in range(s.n_reals):
            r = &dp.t.reals[s.first_real + i]
            at = <uint32_t>k * self.n_reals + s.first_real + i
            if self.seen_weight[at] != r.weight or self.seen_flags[at] != r.flags:
                self.seen_weight[at] = r.weight
                self.seen_flags[at] = r.flags
                same = False
        if not same:
            self.reals_gen[k] += 1
        return same

    cdef int32_t horizon_pick(self, Datapath dp, Service* s, Steer* st, const PacketKey* key,
                              uint64_t ts) noexcept nogil:
        """JET: where the connection would go if the horizon (the reals now down or at weight 0) were added."""
        cdef uint32_t i
        memcpy(self.scratch, &dp.t.reals[s.first_real], s.n_reals * sizeof(Real))
        for i in range(s.n_reals):
            if self.scratch[i].flags & RF_DOWN or self.scratch[i].weight <= 0:
                self.scratch[i].flags &= ~(RF_DOWN | RF_OVERLOADED)
                if self.scratch[i].weight <= 0:
                    self.scratch[i].weight = 1
        return st.inner.pick(st.inner.state, self.scratch, s.n_reals, key, ts)

    cdef inline void redirect(self, Conn* c) noexcept nogil:
        self.redirected_packets += 1
        if not (c.flags & C_REDIRECTED):
            c.flags |= C_REDIRECTED
            self.redirected_connections += 1

    cdef inline int32_t took(self, uint8_t* verdict, int32_t* detail) noexcept nogil:
        """The real an instance's handle() sent the packet to, or -1."""
        if verdict[0] == V_NEW or verdict[0] == V_FORWARD:
            return detail[0]
        return -1

    cdef inline int32_t stateless(self, int32_t real, bint starts, uint8_t* verdict, int32_t* detail) noexcept nogil:
        """A packet a design sent without an instance table (the real's index, -1: no real)."""
        if real < 0:
            verdict[0] = V_DROP
            detail[0] = D_NO_REAL
            return -1
        verdict[0] = V_NEW if starts else V_FORWARD
        detail[0] = real
        return real

    cdef inline void account(self, Datapath dp, Conn* c, int k, int32_t final, uint64_t ts,
                             uint8_t tcp_flags) noexcept nogil:
        """The oracle: which real and which instance each packet of a connection reached (dp: any
        instance, for the reals' down marks, which every instance shares)."""
        if c.instance != k:
            if c.instance >= 0 and not (c.flags & C_MOVED):
                c.flags |= C_MOVED
                self.moved += 1
            self.inst_conns[k] += 1
            c.instance = k
        c.last_ns = ts
        if tcp_flags & (TCP_FIN | TCP_RST):
            c.flags |= C_CLOSED
        if final < 0 or <uint32_t>final >= self.n_reals:
            self.dropped_packets += 1
            if c.real >= 0 and not (c.flags & C_BLACKHOLED):
                c.flags |= C_BLACKHOLED
                self.blackholed += 1
            return
        if c.real < 0:
            c.real = final
            self.real_conns[final] += 1
        elif final != c.real and not (c.flags & C_BROKEN):
            c.flags |= C_BROKEN
            self.broken += 1
            if dp.t.reals[c.real].flags & RF_DOWN:
                self.broken_real_down += 1
        if dp.t.reals[final].flags & RF_DOWN:
            self.blackholed_packets += 1
            if not (c.flags & C_BLACKHOLED):
                c.flags |= C_BLACKHOLED
                self.blackholed += 1

    cdef inline Conn* find_conn(self, uint64_t fp) noexcept nogil:
        """The oracle's record of the tuple whose hash is fp, or a free slot holding fp (flags 0);
        NULL when memory runs out. The pointer holds until the next call (the table may grow)."""
        cdef uint64_t i
        if (self.conn_used + 1) * 2 > self.omask + 1 and self.grow() < 0:
            return NULL
        i = fp & self.omask
        while self.conns[i].flags:
            if self.conns[i].fp == fp:
                return &self.conns[i]
            i = (i + 1) & self.omask
        self.conns[i].fp = fp
        self.conn_used += 1
        return &self.conns[i]

    cdef int grow(self) noexcept nogil:
        """Twice the slots, every record (and its stamp) placed again by its hash (load stays under a half)."""
        cdef uint64_t i, j, new_mask = (self.omask + 1) * 2 - 1
        cdef Conn* bigger = <Conn*>table_alloc((new_mask + 1) * sizeof(Conn), 0, True)    # filled at once
        cdef uint64_t* stamps = NULL
        if bigger == NULL:
            return -1
        if self.stamps != NULL:
            stamps = <uint64_t*>table_alloc((new_mask + 1) * sizeof(uint64_t), 0, True)
            if stamps == NULL:
                munmap(bigger, (new_mask + 1) * sizeof(Conn))
                return -1
        for i in range(self.omask + 1):
            if self.conns[i].flags:
                j = self.conns[i].fp & new_mask
                while bigger[j].flags:
                    j = (j + 1) & new_mask
                bigger[j] = self.conns[i]
                if stamps != NULL:
                    stamps[j] = self.stamps[i]
        munmap(self.conns, (self.omask + 1) * sizeof(Conn))
        self.conns = bigger
        if stamps != NULL:
            munmap(self.stamps, (self.omask + 1) * sizeof(uint64_t))
            self.stamps = stamps
        self.omask = new_mask
        return 0

    # ---- snapshots ----------------------------------------------------------------------------
    def alive(self, uint64_t now_ns):
        """Connections alive at now_ns (not closed, a packet within the idle timeout), per real
        (the real that holds each), and per instance (the instance of its last packet)."""
        cdef uint64_t i
        cdef Conn* c
        per_real = [0] * self.n_reals
        per_instance = [0] * self.n_instances
        for i in range(self.omask + 1):
            c = &self.conns[i]
            if (c.flags & C_USED and not (c.flags & C_CLOSED) and c.real >= 0
                    and c.last_ns + self.idle_ns[c.proto != IPPROTO_TCP] >= now_ns):
                per_real[c.real] += 1
                if c.instance >= 0:
                    per_instance[c.instance] += 1
        return per_real, per_instance

    def counters(self):
        return {
            "packets": self.packets, "forward_packets": self.forward_packets,
            "return_packets": self.return_packets, "other_packets": self.other_packets,
            "dropped_packets": self.dropped_packets, "connections": self.connections,
            "midflow": self.midflow, "broken": self.broken, "broken_real_down": self.broken_real_down,
            "blackholed": self.blackholed, "blackholed_packets": self.blackholed_packets, "moved": self.moved,
            "redirected_packets": self.redirected_packets, "redirected_connections": self.redirected_connections,
            "syns": self.syns, "syns_with_timestamp": self.syns_with_timestamp,
            "cookie_connections": self.cookie_connections, "jet_tracked": self.jet_tracked,
            "global_entries": self.global_entries, "oracle_records": self.conn_used,
        }

    def per_instance(self):
        """Per instance: packets it handled, connections whose packets it handled."""
        return [{"packets": self.inst_packets[k], "connections": self.inst_conns[k]} for k in range(self.n_instances)]

    def per_real(self):
        """Per real (global index): connections it held (their first real)."""
        return [self.real_conns[r] for r in range(self.n_reals)]


ECMP_MODES = ("hash", "resilient")
