"""Batch: packets as flat C arrays over one writable buffer, so no Python object exists per packet."""
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

VERDICT_NAMES = ("unseen", "pass", "new", "forward", "reply", "drop")


cdef class Batch:
    def __cinit__(self, Py_ssize_t capacity=4096):
        if capacity < 1:
            raise ValueError("batch capacity must be at least 1")
        self.capacity = capacity
        self.n = 0
        self.offset = <uint64_t*>calloc(capacity, sizeof(uint64_t))
        self.caplen = <uint32_t*>calloc(capacity, sizeof(uint32_t))
        self.origlen = <uint32_t*>calloc(capacity, sizeof(uint32_t))
        self.ts_ns = <uint64_t*>calloc(capacity, sizeof(uint64_t))
        self.iface = <uint16_t*>calloc(capacity, sizeof(uint16_t))
        self.linktype = <uint16_t*>calloc(capacity, sizeof(uint16_t))
        self.verdict = <uint8_t*>calloc(capacity, sizeof(uint8_t))
        self.detail = <int32_t*>calloc(capacity, sizeof(int32_t))
        if not (self.offset and self.caplen and self.origlen and self.ts_ns and self.iface
                and self.linktype and self.verdict and self.detail):
            raise MemoryError()

    def __dealloc__(self):
        free(self.offset); free(self.caplen); free(self.origlen); free(self.ts_ns)
        free(self.iface); free(self.linktype); free(self.verdict); free(self.detail)

    cdef int attach(self, object buffer) except -1:
        """Point `data` at a writable buffer (bytearray, mmap ACCESS_COPY, ...)."""
        cdef uint8_t[::1] view
        if len(buffer) == 0:
            self.data = NULL
            self.data_len = 0
            self._owner = buffer
            return 0
        view = buffer
        self.data = &view[0]
        self.data_len = view.shape[0]
        self._owner = view
        return 0

    cdef void clear(self) noexcept nogil:
        self.n = 0

    @staticmethod
    def from_frames(frames, int linktype, timestamps_ns=None, Py_ssize_t capacity=0):
        """Build a batch from Python bytes (tests, live mode): the frames are copied into one buffer."""
        cdef Py_ssize_t i, pos = 0, count = len(frames)
        cdef bytes frame
        cdef Batch batch = Batch(max(capacity, count, 1))
        buf = bytearray(b"".join(frames))
        batch.attach(buf)
        for i in range(count):
            frame = bytes(frames[i])
            batch.offset[i] = pos
            batch.caplen[i] = len(frame)
            batch.origlen[i] = len(frame)
            batch.ts_ns[i] = timestamps_ns[i] if timestamps_ns is not None else i * 1000
            batch.iface[i] = 0
            batch.linktype[i] = linktype
            batch.verdict[i] = V_UNSEEN
            batch.detail[i] = 0
            pos += len(frame)
        batch.n = count
        return batch

    def __len__(self):
        return self.n

    def _check(self, Py_ssize_t i):
        if i < 0 or i >= self.n:
            raise IndexError(i)

    def packet(self, Py_ssize_t i):
        """The bytes of packet i as they are now (after any rewrite)."""
        self._check(i)
        return (<char*>self.data)[self.offset[i]:self.offset[i] + self.caplen[i]]

    def timestamp_ns(self, Py_ssize_t i):
        self._check(i)
        return self.ts_ns[i]

    def result(self, Py_ssize_t i):
        """(verdict name, detail) of packet i."""
        self._check(i)
        return VERDICT_NAMES[self.verdict[i]], self.detail[i]

    def set_result(self, Py_ssize_t i, int verdict, int detail):
        """Set packet i's verdict and detail (tests, Python-side filters)."""
        self._check(i)
        if not 0 <= verdict < V_LAST:
            raise ValueError(f"verdict {verdict} out of range")
        self.verdict[i] = verdict
        self.detail[i] = detail

    def results(self):
        return [self.result(i) for i in range(self.n)]
