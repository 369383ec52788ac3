# What another module may plug into the reader: a sink told where each packet lies in the mapped file
# (sharded replay's dealer notes each packet's place and worker, in C, while the file is scanned once).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef class PacketSink:
    cdef void put(self, const uint8_t* frame, uint64_t offset, uint32_t caplen, uint32_t origlen, uint64_t ts_ns,
                  uint16_t iface, uint16_t linktype) noexcept nogil
