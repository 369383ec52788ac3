# TunIO's state, declared here so that the test drivers (l4emu.testing._drivers) can reach it.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from l4emu.datapath._batch cimport Batch

# What IFF_VNET_HDR puts before each packet: struct virtio_net_hdr (host byte order, as TUN uses it
# unless told TUNSETVNETLE/BE).
cdef extern from *:
    """
    #include <linux/virtio_net.h>
    #ifndef VIRTIO_NET_HDR_GSO_UDP_L4
    #define VIRTIO_NET_HDR_GSO_UDP_L4 5     /* Linux 4.18; older uapi headers lack it */
    #endif
    """
    ctypedef struct virtio_net_hdr "struct virtio_net_hdr":
        uint8_t flags
        uint8_t gso_type
        uint16_t hdr_len
        uint16_t gso_size
        uint16_t csum_start
        uint16_t csum_offset
    enum:
        VIRTIO_NET_HDR_F_NEEDS_CSUM
        VIRTIO_NET_HDR_GSO_NONE
        VIRTIO_NET_HDR_GSO_UDP_L4       # the kernel cuts it into datagrams of gso_size


cdef class TunIO:
    cdef int fd
    cdef readonly bint vnet
    cdef virtio_net_hdr* hdrs       # per batch index: the packet's virtio header
    cdef uint8_t* partial           # per batch index: 1 if its checksum field was turned to ~P
    cdef uint8_t* ports             # per batch index: source and destination port as read
    cdef Py_ssize_t capacity
    cdef Batch read_batch           # the batch hdrs belong to (the last read into); others' packets have none
    cdef uint64_t epoch_ns          # added to the monotonic clock so capture files show wall-clock time
    cdef readonly uint64_t packets_in, packets_out, bytes_in, bytes_out, write_errors, gso_in, gso_out

    cdef bint to_complete_form(self, uint8_t* pkt, uint32_t length, Py_ssize_t i) noexcept nogil
    cdef void to_partial_form(self, uint8_t* pkt, uint32_t length, Py_ssize_t i) noexcept nogil
    cdef Py_ssize_t header_of(self, Batch batch, Py_ssize_t i) noexcept nogil
    cdef uint32_t udp_payload(self, Batch batch, Py_ssize_t i) noexcept nogil
    cdef bint same_flow(self, const uint8_t* a, const uint8_t* b, uint32_t start) noexcept nogil
    cdef Py_ssize_t udp_run(self, Batch batch, Py_ssize_t i) noexcept nogil
    cdef ssize_t write_udp_run(self, Batch batch, Py_ssize_t i, Py_ssize_t n) noexcept nogil
