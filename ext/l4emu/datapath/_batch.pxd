# A batch of packets: the one structure that sources, the datapath and sinks share.
# Packets are copied in, so a source's buffer (a read-only file map) is never written.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t

# What the datapath did with a packet (Batch.verdict); Batch.detail says more.
cdef enum Verdict:
    V_UNSEEN = 0    # not processed yet
    V_PASS = 1      # untouched, written byte for byte; detail: a pass reason
    V_NEW = 2       # first packet of a new flow, DNAT to a real; detail: real index
    V_FORWARD = 3   # client -> real on a known flow (DNAT); detail: real index
    V_REPLY = 4     # real -> client on a known flow (SNAT back to the VIP); detail: real index
    V_DROP = 5      # dropped by the switch; detail: a drop reason
    # V_ANSWER: the flow's answer as the capture recorded it, from the VIP or a capture server: the
    # real's reply in the switch's model (written from the VIP); detail: real index
    V_ANSWER = 6
    # V_ICMP: the switch answered the client with an ICMP error (time exceeded, fragmentation needed /
    # packet too big), written in the packet's place; detail: the drop reason of the packet it quotes
    V_ICMP = 7
    # V_MORE: one more packet the switch wrote after the one before it (a fragment of it, when it no
    # longer fit the MTU and had no DF); detail: the real's index
    V_MORE = 8
    V_LAST = 9


cdef class Batch:
    cdef readonly Py_ssize_t n            # packets in the batch
    cdef readonly Py_ssize_t capacity
    cdef uint8_t* data                    # the batch's own copy of its packets' bytes (NAT rewrites in place)
    cdef Py_ssize_t data_len              # bytes in use
    cdef Py_ssize_t data_cap
    cdef uint64_t* offset                 # packet i starts at data + offset[i]
    cdef uint32_t* caplen                 # bytes captured
    cdef uint32_t* origlen                # bytes on the wire
    cdef uint64_t* ts_ns                  # timestamp, nanoseconds since the epoch
    cdef uint16_t* iface                  # capture interface index
    cdef uint16_t* linktype               # DLT_* of the packet's interface
    cdef uint8_t* verdict                 # Verdict, set by the datapath
    cdef int32_t* detail
    cdef uint16_t* headroom               # free bytes right before packet i: a tunnel's headers go there
    # a GSO super-packet's segment payload size (a TUN's virtio gso_size; 0: one packet): it stands for
    # segments of its headers plus that many bytes, and the route MTU applies to each segment
    cdef uint16_t* gso_size
    # which pushed packet slot i came from (push numbers them 0, 1, ...; insert copies its neighbour's):
    # sharded replay writes each capture packet's output in its place by it
    cdef uint32_t* source
    cdef uint16_t reserve                 # the headroom push leaves before each packet it copies
    # insert() appends a slot at the end and links it after its packet (after[i]: the slot written right
    # after slot i, 0 none: slot 0 is never inserted); settle() puts every slot in that order, once
    cdef uint32_t* after
    cdef Py_ssize_t first_inserted        # the first appended slot since the last settle(); -1: none
    cdef Py_ssize_t first_linked          # the lowest slot with one after it since then
    cdef uint32_t* order                  # settle()'s scratch: capacity slot numbers ...
    cdef uint64_t* scratch                # ... and capacity words

    cdef void clear(self) noexcept nogil
    # frame may be data + data_len itself (read into place, not copied)
    cdef int push(self, const uint8_t* frame, uint32_t caplen, uint32_t origlen, uint64_t ts_ns,
                  uint16_t iface, uint16_t linktype) noexcept nogil
    # A packet that grows or is replaced gets fresh room at the end of the buffer (see room())
    cdef uint8_t* room(self, Py_ssize_t i, uint32_t size) noexcept nogil
    # ... and a packet that becomes several gets new slots right after it (see insert(), settle())
    cdef Py_ssize_t insert(self, Py_ssize_t i, uint32_t size) noexcept nogil
    cdef void settle(self) noexcept nogil
    cdef int grow_arrays(self, Py_ssize_t capacity) noexcept nogil
