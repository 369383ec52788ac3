"""TUN reads into a Batch and writes from it in C, GIL released, so live mode costs no Python object per packet."""
from libc.errno cimport errno, EAGAIN, EINTR, ENOMEM
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

from l4emu.datapath._batch cimport Batch, V_DROP, V_ICMP, V_MORE, V_UNSEEN
from l4emu.datapath._checksum cimport fold, load16, store16, sum_bytes
from l4emu.datapath._types cimport NS
from l4emu.datapath cimport _wire
from l4emu.datapath._wire cimport (IP4_CSUM, IP4_FRAG, IP4_HEADER_LEN, IP4_SRC, IP4_TOTAL_LEN, IP6_HEADER_LEN, IP6_NEXT,
                                   IP6_PAYLOAD_LEN, IP6_SRC, IPPROTO_UDP, TCP_CSUM, UDP_CSUM, UDP_HEADER_LEN, UDP_LEN)

cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void* buf, size_t count)

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void* iov_base
        size_t iov_len
    ssize_t readv(int fd, const iovec* iov, int iovcnt)
    ssize_t writev(int fd, const iovec* iov, int iovcnt)

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    int CLOCK_MONOTONIC

cdef enum:
    MAX_SEGMENTS = 64           # the kernel's UDP_MAX_SEGMENTS on older kernels; newer take 128
    MAX_L4_OFFSET = 60          # an IPv4 header with options; IPv6 runs have no extension headers
    MAX_IP_PACKET = 65536       # a GSO super-packet is at most 64 KiB of IP (GRO and TSO limits)
    MAX_FRAME = MAX_IP_PACKET + sizeof(virtio_net_hdr)  # with its header

# For the Python side (live/loop.py, the fuzzers, the tests): one definition each.
VNET_HDR_LEN = sizeof(virtio_net_hdr)
GSO_UDP_L4 = VIRTIO_NET_HDR_GSO_UDP_L4
LINKTYPE_RAW = _wire.LINKTYPE_RAW


cdef inline uint64_t monotonic_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * NS + <uint64_t>ts.tv_nsec


cdef class TunIO:
    """One TUN fd: read() packets into a Batch (with their virtio headers kept aside), writev() them back.

    With offloads the kernel hands over packets whose TCP/UDP checksum field holds only the
    pseudo-header sum P (VIRTIO_NET_HDR_F_NEEDS_CSUM). The datapath updates a *complete* checksum
    by RFC 1624, which would get P wrong, so the field is given to it as ~P (what a complete
    checksum over a zero payload would hold), and turned back on write: the datapath's update then
    added the address and port changes to P, and the ports, which the pseudo-header does not cover,
    are taken out again. O(1) per packet: the payload of a 64 KiB super-packet is never summed.
    """
    def __cinit__(self, int fd, bint vnet, Py_ssize_t capacity, uint64_t epoch_ns=0):
        self.fd = fd
        self.epoch_ns = epoch_ns
        self.vnet = vnet
        self.capacity = capacity
        self.hdrs = <virtio_net_hdr*>calloc(capacity, sizeof(virtio_net_hdr))
        self.partial = <uint8_t*>calloc(capacity, 1)
        self.ports = <uint8_t*>calloc(capacity, 4)
        if not (self.hdrs and self.partial and self.ports):
            raise MemoryError()

    def __dealloc__(self):
        free(self.hdrs)
        free(self.partial)
        free(self.ports)

    def read_into(self, Batch batch):
        """Read until the fd is empty or the batch is full; returns packets added, or -errno on an error.
        Each packet is read straight into the batch's buffer (its virtio header aside): no copy."""
        cdef ssize_t got
        cdef Py_ssize_t i
        cdef int added = 0, err = 0
        cdef bint vnet = self.vnet
        cdef uint32_t skip = sizeof(virtio_net_hdr) if vnet else 0
        cdef iovec iov[2]
        cdef uint8_t* pkt
        if batch.capacity > self.capacity:
            raise ValueError("batch larger than the TunIO was made for")
        self.read_batch = batch
        with nogil:
            while batch.n < batch.capacity and batch.data_len + MAX_FRAME <= batch.data_cap:
                i = batch.n
                pkt = batch.data + batch.data_len
                iov[0].iov_base, iov[0].iov_len = &self.hdrs[i], sizeof(virtio_net_hdr)
                iov[1].iov_base, iov[1].iov_len = pkt, MAX_IP_PACKET
                got = readv(self.fd, &iov[1 - vnet], 1 + vnet)
                if got < 0:
                    if errno == EINTR:
                        continue
                    if errno != EAGAIN:              # EWOULDBLOCK is EAGAIN on Linux
                        err = errno
                    break
                if got <= <ssize_t>skip:
                    continue
                if vnet:
                    self.partial[i] = self.to_complete_form(pkt, <uint32_t>(got - skip), i)
                    if self.hdrs[i].gso_type != VIRTIO_NET_HDR_GSO_NONE:
                        self.gso_in += 1
                if batch.push(pkt, <uint32_t>(got - skip), <uint32_t>(got - skip),
                              monotonic_ns() + self.epoch_ns, 0, _wire.LINKTYPE_RAW) != 0:
                    err = ENOMEM    # push only fails here when memory runs out
                    break
                if vnet and self.hdrs[i].gso_type != VIRTIO_NET_HDR_GSO_NONE:
                    batch.gso_size[i] = self.hdrs[i].gso_size   # the datapath holds each segment to the MTU
                self.packets_in += 1
                self.bytes_in += got - skip
                added += 1
        return -err if err else added

    cdef bint to_complete_form(self, uint8_t* pkt, uint32_t length, Py_ssize_t i) noexcept nogil:
        cdef const virtio_net_hdr* h = &self.hdrs[i]
        cdef uint32_t start = h.csum_start, field = start + h.csum_offset
        cdef uint32_t flipped
        # Only TCP and UDP checksum fields are rewritten by the datapath.
        if (not (h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) or field + 2 > length
                or (h.csum_offset != TCP_CSUM and h.csum_offset != UDP_CSUM)):
            return False
        memcpy(self.ports + i * 4, pkt + start, 4)
        flipped = ~load16(pkt + field) & 0xFFFF
        # P = 0xFFFF is one's-complement zero like 0: give ~0 = 0xFFFF, since a UDP 0 means "no checksum".
        store16(pkt + field, flipped if flipped else 0xFFFF)
        return True

    cdef void to_partial_form(self, uint8_t* pkt, uint32_t length, Py_ssize_t i) noexcept nogil:
        cdef const virtio_net_hdr* h = &self.hdrs[i]
        cdef uint32_t start = h.csum_start, field = start + h.csum_offset, k
        cdef const uint8_t* old = self.ports + i * 4
        cdef uint32_t acc = ~load16(pkt + field) & 0xFFFF
        for k in range(0, 4, 2):      # take out the port change: + old - new
            acc += load16(old + k) + (~load16(pkt + start + k) & 0xFFFF)
        store16(pkt + field, fold(acc))

    cdef Py_ssize_t header_of(self, Batch batch, Py_ssize_t i) noexcept nogil:
        """The slot of the virtio header read with batch packet i, or -1 when it has none of its own: a
        packet of another batch (emulated hosts' and the GSLB's answers), an ICMP error written in its
        place or a fragment inserted after it (each one plain packet, fully checksummed), or no header
        kept. Indexed by the slot the packet was read into: the switch's inserted slots move the
        packets after them."""
        cdef Py_ssize_t k = batch.source[i]
        if (not self.vnet or batch is not self.read_batch or k >= self.capacity
                or batch.verdict[i] == V_ICMP or batch.verdict[i] == V_MORE):
            return -1
        return k

    cdef uint32_t udp_payload(self, Batch batch, Py_ssize_t i) noexcept nogil:
        """The UDP payload length of packet i if it may join a GSO run, else 0: a plain datagram
        (no GSO, not a fragment, no IPv6 extension headers) whose checksum the kernel left to us
        (VIRTIO_NET_HDR_F_NEEDS_CSUM), so that the kernel computing it per segment loses nothing."""
        cdef Py_ssize_t k = self.header_of(batch, i)
        cdef const virtio_net_hdr* h = &self.hdrs[k if k >= 0 else 0]
        cdef const uint8_t* pkt = batch.data + batch.offset[i]
        cdef uint32_t start = h.csum_start, length = batch.caplen[i]
        if k < 0 or not self.partial[k] or h.gso_type != VIRTIO_NET_HDR_GSO_NONE or h.csum_offset != UDP_CSUM:
            return 0
        if (start + UDP_HEADER_LEN >= length or start > MAX_L4_OFFSET
                or load16(pkt + start + UDP_LEN) != length - start):
            return 0
        if pkt[0] >> 4 == 4:
            if (start < IP4_HEADER_LEN or start != (pkt[0] & 15) * 4u or load16(pkt + IP4_TOTAL_LEN) != length
                    or load16(pkt + IP4_FRAG) & 0x3FFF):
                return 0
        elif (pkt[0] >> 4 != 6 or start != IP6_HEADER_LEN or pkt[IP6_NEXT] != IPPROTO_UDP
                or load16(pkt + IP6_PAYLOAD_LEN) != length - IP6_HEADER_LEN):
            return 0
        return length - start - UDP_HEADER_LEN

    cdef bint same_flow(self, const uint8_t* a, const uint8_t* b, uint32_t start) noexcept nogil:
        """b's headers equal a's except lengths, IPv4 id and checksums: one flow, one GSO run."""
        cdef uint32_t k
        if a[0] >> 4 == 4:
            if a[0] != b[0] or a[1] != b[1] or a[6] != b[6] or a[8] != b[8] or a[9] != b[9]:
                return False
            k = IP4_SRC
        else:
            if a[0] != b[0] or a[1] != b[1] or a[2] != b[2] or a[3] != b[3] or a[6] != b[6] or a[7] != b[7]:
                return False
            k = IP6_SRC
        while k < start + 4:            # addresses, IPv4 options, ports
            if a[k] != b[k]:
                return False
            k += 1
        return True

    cdef Py_ssize_t udp_run(self, Batch batch, Py_ssize_t i) noexcept nogil:
        """How many packets from i on one GSO UDP write can carry: consecutive datagrams of one flow
        with equal payloads (the last may be shorter), as GRO would merge them."""
        cdef uint32_t size = self.udp_payload(batch, i), more
        cdef uint32_t start = self.hdrs[batch.source[i]].csum_start if size else 0, total
        cdef const uint8_t* first = batch.data + batch.offset[i]
        cdef Py_ssize_t j = i + 1
        if size == 0:
            return 1
        total = start + UDP_HEADER_LEN + size
        while j < batch.n and j - i < MAX_SEGMENTS:
            if batch.verdict[j] == V_DROP or batch.verdict[j] == V_UNSEEN:
                break
            more = self.udp_payload(batch, j)
            if (more == 0 or more > size or total + more > 65535 or self.hdrs[batch.source[j]].csum_start != start
                    or not self.same_flow(first, batch.data + batch.offset[j], start)):
                break
            total += more
            j += 1
            if more < size:
                break
        return j - i

    cdef ssize_t write_udp_run(self, Batch batch, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
        """One write for n datagrams: their shared headers with the run's lengths, then each payload.
        The checksum field holds the pseudo-header sum (NEEDS_CSUM); the kernel sums each segment."""
        cdef virtio_net_hdr hdr
        cdef uint8_t head[MAX_L4_OFFSET + UDP_HEADER_LEN]
        cdef iovec iov[MAX_SEGMENTS + 2]
        cdef const uint8_t* first = batch.data + batch.offset[i]
        cdef uint32_t start = self.hdrs[batch.source[i]].csum_start, total = start + UDP_HEADER_LEN
        cdef uint32_t size = batch.caplen[i] - start - UDP_HEADER_LEN, pseudo
        cdef Py_ssize_t j
        cdef ssize_t put
        for j in range(n):
            iov[2 + j].iov_base = batch.data + batch.offset[i + j] + start + UDP_HEADER_LEN
            iov[2 + j].iov_len = batch.caplen[i + j] - start - UDP_HEADER_LEN
            total += <uint32_t>iov[2 + j].iov_len
        memcpy(head, first, start + UDP_HEADER_LEN)
        if head[0] >> 4 == 4:
            store16(head + IP4_TOTAL_LEN, total)
            store16(head + IP4_CSUM, 0)
            store16(head + IP4_CSUM, ~fold(sum_bytes(0, head, start)) & 0xFFFF)
            pseudo = sum_bytes(0, head + IP4_SRC, 8)            # both addresses
        else:
            store16(head + IP6_PAYLOAD_LEN, total - IP6_HEADER_LEN)
            pseudo = sum_bytes(0, head + IP6_SRC, 32)
        store16(head + start + UDP_LEN, total - start)
        pseudo += IPPROTO_UDP + total - start
        store16(head + start + UDP_CSUM, fold(pseudo))
        hdr.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM
        hdr.gso_type = VIRTIO_NET_HDR_GSO_UDP_L4
        hdr.hdr_len = <uint8_t>(start + UDP_HEADER_LEN)
        hdr.gso_size = <uint16_t>size
        hdr.csum_start = <uint8_t>start
        hdr.csum_offset = UDP_CSUM
        iov[0].iov_base, iov[0].iov_len = &hdr, sizeof(virtio_net_hdr)
        iov[1].iov_base, iov[1].iov_len = head, start + UDP_HEADER_LEN
        while True:
            put = writev(self.fd, iov, <int>n + 2)
            if not (put < 0 and errno == EINTR):
                return put

    def write_from(self, Batch batch):
        """Write every packet the switch did not drop, in order, and empty the batch; returns how many were written.

        With offloads, consecutive datagrams of one UDP flow go in one GSO write (as GRO would merge
        them), so a burst of small datagrams costs one system call, not one each.
        """
        cdef Py_ssize_t i = 0, run, k, h
        cdef int done = 0
        cdef uint8_t* pkt
        cdef iovec iov[2]
        cdef ssize_t put
        cdef bint vnet = self.vnet
        cdef virtio_net_hdr plain
        memset(&plain, 0, sizeof(plain))
        with nogil:
            while i < batch.n:
                if batch.verdict[i] == V_DROP or batch.verdict[i] == V_UNSEEN:
                    i += 1
                    continue
                run = self.udp_run(batch, i) if vnet else 1
                if run > 1:
                    if self.write_udp_run(batch, i, run) < 0:
                        self.write_errors += run
                    else:
                        self.gso_out += 1
                        self.packets_out += run
                        for k in range(i, i + run):
                            self.bytes_out += batch.caplen[k]
                        done += run
                    i += run
                    continue
                pkt = batch.data + batch.offset[i]
                h = self.header_of(batch, i)
                if h >= 0 and self.partial[h]:
                    self.to_partial_form(pkt, batch.caplen[i], h)
                iov[0].iov_base = &self.hdrs[h] if h >= 0 else &plain
                iov[0].iov_len = sizeof(virtio_net_hdr)
                iov[1].iov_base = pkt
                iov[1].iov_len = batch.caplen[i]
                i += 1
                while True:
                    put = writev(self.fd, &iov[1 - vnet], 1 + vnet)
                    if not (put < 0 and errno == EINTR):
                        break
                if put < 0:
                    self.write_errors += 1
                    continue
                self.packets_out += 1
                self.bytes_out += batch.caplen[i - 1]
                done += 1
            batch.clear()
        return done
