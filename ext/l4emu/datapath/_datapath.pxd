cimport cython
# The batch loop: parse -> classify -> conntrack -> schedule -> NAT rewrite.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from l4emu.datapath._types cimport *
from l4emu.datapath._flowtable cimport FlowTable
from l4emu.schedulers._core cimport SchedulerHook
from l4emu.datapath._batch cimport Batch, V_LAST
from l4emu.datapath._fragments cimport FragEntry, HeldFragment, FRAG_HOLD_SLOTS
from l4emu.datapath._fullnat cimport LocalAddr, LocalPool
from l4emu.datapath._reasm cimport Reassembler

# What the flow-removal callback needs, reachable without the GIL.
ctypedef struct Tables:
    Service* services
    SchedulerHook* hooks                  # one per service
    Real* reals
    LocalAddr* laddrs                     # fullnat: a removed flow gives its local port back
    # connections (not templates) in each ConnState, kept as they move: a sample reads them, no table scan
    uint32_t states[N_STATES]


@cython.final
cdef class Datapath:
    cdef readonly FlowTable table
    cdef Tables t
    cdef uint32_t n_services
    cdef uint32_t n_reals
    cdef Front* fronts                    # every service's VIP, then its capture servers
    cdef uint32_t n_fronts
    cdef uint32_t n_aliases               # capture servers among the fronts (0: no destination to alias)
    cdef uint64_t* unattributed_front     # packets from a front to a client with no flow, per front
    cdef uint64_t* unattributed_real      # ... from a real, per real
    cdef readonly list schedulers         # one per service; also keeps the hooks alive
    cdef uint64_t timeout_ns[N_STATES]
    cdef readonly bint conn_reuse_mode
    cdef readonly bint sloppy_tcp
    cdef readonly bint expire_nodest_conn
    cdef readonly uint64_t rescheduled    # flows of a down real whose next packet got a new real
    cdef readonly uint64_t broken         # flows of a down real whose next packet could not be rescheduled
    cdef readonly uint64_t blackholed     # flows that kept going to a down real
    cdef readonly uint64_t clock_ns       # the packet clock: the newest timestamp seen
    cdef bint started
    cdef readonly uint64_t packets, bytes
    cdef uint64_t verdicts[V_LAST]
    cdef uint64_t drops[N_DROP_REASONS]
    cdef uint64_t passes[N_PASS_REASONS]

    cdef int hash_ahead(self, const uint8_t* p, uint32_t caplen, uint32_t origlen, uint16_t linktype,
                        PacketInfo* info, uint64_t* h) noexcept nogil
    cdef int process_slot(self, Batch b, PacketInfo* info, int parsed, uint64_t h) noexcept
    cdef void prefetch_record(self, uint64_t h) noexcept nogil
    cdef int classify(self, const uint8_t* p, uint32_t caplen, uint32_t origlen, uint16_t linktype,
                      PacketInfo* info) noexcept nogil
    cdef void handle(self, uint8_t* p, PacketInfo* info, int parsed, uint64_t h, uint64_t ts,
                     uint32_t origlen, uint8_t* verdict, int32_t* detail) noexcept nogil
    cdef void new_flow(self, uint8_t* p, PacketInfo* info, int32_t svc, int ev, uint64_t h, uint32_t origlen,
                       uint8_t* verdict, int32_t* detail) noexcept nogil
    cdef void icmp_error(self, uint8_t* p, PacketInfo* info, uint32_t ref, uint32_t origlen, uint8_t* verdict,
                         int32_t* detail) noexcept nogil
    cdef int32_t find_service(self, const PacketKey* key, bint any_port) noexcept nogil
    cdef void alias_destination(self, PacketInfo* info) noexcept nogil
    cdef int32_t front_of_source(self, const PacketKey* key) noexcept nogil
    cdef int32_t real_of_source(self, const PacketKey* key) noexcept nogil
    cdef uint32_t answer_ref(self, PacketInfo* info, int32_t* front, uint8_t* verdict, int32_t* detail) noexcept nogil
    cdef void set_state(self, Flow* f, uint8_t state) noexcept nogil
    cdef void _take_local_addresses(self, Datapath old)
    cdef void _take_counters(self, Datapath old, real_map)
    cdef void finish(self, uint8_t* verdict, int32_t* detail, uint8_t v, int32_t d) noexcept nogil
    # Forwarding methods other than NAT (_forward.pxd). A packet that grows or is answered moves to fresh
    # room in the batch being processed: `cur` and `cur_i` name it (process() sets them per packet).
    cdef Batch cur
    cdef Py_ssize_t cur_i
    cdef uint16_t ip_id                   # the IP ID of the next header the switch writes itself
    cdef uint32_t ip6_id                  # ... and of the next IPv6 Fragment header (tunnels' outer packets)
    cdef Py_ssize_t inserted              # packets the switch added to the batch in this process() call
    cdef readonly uint64_t fragments_made  # fragments written for packets that no longer fit (verdict more)
    cdef int fragment_out(self, uint32_t l3, uint32_t mtu, int32_t real, uint32_t base_offset,
                          bint last_more) noexcept nogil
    cdef void forward(self, uint8_t* p, PacketInfo* info, Real* real, uint64_t h, uint32_t origlen, uint8_t v,
                      uint8_t* verdict, int32_t* detail) noexcept nogil
    cdef void encapsulate(self, uint8_t* p, PacketInfo* info, Real* real, Service* s, uint64_t h,
                          uint8_t v, uint8_t* verdict, int32_t* detail, bint split) noexcept nogil
    # track: datagrams by their first fragment, and the fragments waiting for theirs (_fragments.pxd)
    cdef FragEntry* frag_table
    cdef HeldFragment held[FRAG_HOLD_SLOTS]
    cdef uint32_t held_bytes
    cdef readonly uint64_t fragments_held, fragments_released, fragments_expired, frag_track_forgotten
    cdef FragEntry* frag_lookup(self, const PacketInfo* info) noexcept nogil
    cdef void first_fragment_done(self, PacketInfo* info) noexcept nogil
    cdef void send_fragment(self, uint8_t* p, PacketInfo* info, Real* real, bint reply, uint32_t origlen,
                            uint8_t* verdict, int32_t* detail) noexcept nogil
    cdef int32_t masq_real_of_address(self, const PacketKey* key) noexcept nogil
    cdef void hold(self, uint8_t* p, PacketInfo* info, uint32_t origlen, uint8_t* verdict,
                   int32_t* detail) noexcept nogil
    cdef void expire_held(self) noexcept nogil
    cdef int32_t fragment_service(self, const PacketKey* key) noexcept nogil
    cdef void fragment(self, uint8_t* p, PacketInfo* info, uint32_t origlen, uint8_t* verdict,
                       int32_t* detail) noexcept nogil
    cdef void icmp_back(self, uint8_t* p, PacketInfo* info, Service* s, int reason, uint32_t mtu,
                        uint8_t* verdict, int32_t* detail) noexcept nogil
    cdef bint routed(self, uint8_t* p, PacketInfo* info, Service* s, uint8_t* verdict, int32_t* detail) noexcept nogil
    # fullnat (_fullnat.pxd): local addresses with their ports, the pools reals take them from, TOA
    cdef uint32_t n_laddrs
    cdef LocalPool* pools
    cdef uint32_t n_pools
    cdef uint32_t* pool_members           # each pool's local addresses (indexes into t.laddrs), pool after pool
    cdef uint32_t n_members
    cdef readonly uint64_t toa_added      # TOA options written
    cdef readonly uint64_t toa_no_room    # ... not written: the TCP header's 40 bytes of options were too full
    cdef readonly uint64_t toa_too_big    # ... not written: the packet would no longer fit the route MTU
    cdef bint take_local_port(self, Real* real, uint16_t* laddr, uint16_t* port) noexcept nogil
    cdef void fullnat_in(self, uint8_t* p, PacketInfo* info, Flow* f, Real* real, uint32_t origlen, uint8_t v,
                         uint8_t* verdict, int32_t* detail) noexcept nogil
    cdef void fullnat_out(self, uint8_t* p, PacketInfo* info, Flow* f, Real* real, Service* s) noexcept nogil
    cdef bint insert_toa(self, uint8_t* p, PacketInfo* info, Flow* f, Service* s) noexcept nogil
    cdef Flow* fullnat_flow_of_answer(self, const PacketInfo* info, const Real* real) noexcept nogil
    # reassemble: Linux's defragmentation (_reasm.pyx); reasm_max: the largest fragment of the datagram
    # being handled (0: not a reassembled one), which the MTU check and the way out go by
    cdef readonly Reassembler reasm
    cdef bytes secret                     # the connection table's, which keys the reassembly hash too
    cdef uint32_t reasm_max
    cdef void reassemble(self, uint8_t* p, PacketInfo* info, uint8_t* verdict, int32_t* detail) noexcept nogil
    cdef void drop_pieces(self, Py_ssize_t i) noexcept nogil
    cdef int fragment_out6(self, uint32_t l3, uint32_t mtu, int32_t real) noexcept nogil
    cdef void pass_originals(self, Py_ssize_t i) noexcept nogil
    cdef int refragment(self, uint32_t l3, int family, uint32_t mtu, int32_t real) noexcept nogil
