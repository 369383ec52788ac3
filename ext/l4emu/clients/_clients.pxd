# The closed loop's emulated clients (_clients.pyx): what a driver (the emulate loop of `simulate`)
# calls per packet without Python in between.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from l4emu.clients._gen cimport Generator, Conv, MAX_FRAME
from l4emu.datapath._types cimport PacketInfo

cdef enum:
    N_FAILURES = 5

cdef class Clients(Generator):
    cdef uint64_t rtt
    cdef uint64_t* keys             # open addressing: (client, port) -> conversation slot
    cdef uint32_t* slots
    cdef uint32_t table_mask, table_used
    cdef uint64_t* rec_ns           # per complete answer: its response time, and the real that gave it
    cdef int32_t* rec_real
    cdef uint64_t n_records, cap_records
    cdef uint64_t fails[N_FAILURES]
    cdef uint8_t scratch[MAX_FRAME]
    cdef readonly uint64_t syn_retransmits, failed_requests, stray, late
    cdef uint64_t timeout_ns
    cdef Clients other              # a mixed workload: the clients of the other protocol (None: none)

    cdef int _table(self, uint32_t size) except -1
    cdef void _insert(self, uint64_t key, uint32_t slot) noexcept nogil
    cdef uint32_t _find(self, uint64_t key) noexcept nogil
    cdef void _erase(self, uint64_t key) noexcept nogil
    cdef int _connect(self, uint32_t slot) except -1
    cdef int _end(self, uint32_t slot, uint64_t now) except -1
    cdef int _fail(self, uint32_t slot, int why, uint64_t now) except -1
    cdef bint _answered(self, const Conv* c) noexcept nogil
    cdef int _schedule(self, uint32_t slot, uint64_t ts, uint8_t phase) except -1 nogil
    cdef void _wait(self, Conv* c, uint8_t phase) noexcept nogil
    cdef void _pop(self) noexcept nogil
    cdef int _settle(self) except -1
    cpdef uint64_t next_time(self) except? 0
    cdef uint32_t emit(self, uint8_t* out, uint64_t* ts, uint32_t* slot) except? 0
    cdef uint32_t _send(self, uint32_t slot, uint64_t now, uint8_t* out) except? 0
    cdef uint32_t _payload_at(self, const Conv* c) noexcept nogil
    cdef uint32_t _udp_send(self, uint32_t slot, uint64_t now, uint8_t* out) except? 0
    cdef int _udp_next(self, uint32_t slot, uint64_t now) except -1
    cdef int _udp_receive(self, const uint8_t* frame, const PacketInfo* info, uint64_t now) except -1
    cdef int receive(self, const uint8_t* frame, uint32_t caplen, uint16_t linktype, uint64_t now) except -1
    cdef uint32_t _slot_of(self, const PacketInfo* info) noexcept nogil
    cdef int _read(self, Conv* c, const uint8_t* p, uint32_t n, uint64_t now) except -1
    cdef int _answer_done(self, Conv* c, uint64_t now) except -1
    cdef void note_real(self, uint32_t slot, int32_t real) noexcept nogil
