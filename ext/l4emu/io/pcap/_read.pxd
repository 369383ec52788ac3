# What another module may plug into the reader: a filter that says which packets a caller keeps
# (sharded replay deals packets to workers by it, in C, while the file is scanned).
from libc.stdint cimport uint8_t, uint16_t, uint32_t


cdef class PacketFilter:
    cdef bint keep(self, const uint8_t* frame, uint32_t caplen, uint32_t origlen, uint16_t linktype) noexcept nogil
