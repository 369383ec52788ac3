"""Closed-loop emulated clients: TCP endpoints that connect to the VIP, send requests and wait for answers.

The generator (_gen.pyx) writes what clients would send whatever the servers do; these clients react:
a connection waits for its SYN-ACK before it acknowledges and sends its request, the next request
waits for the whole answer and the think time, and a SYN nobody answers is sent again after Linux's
retransmission timeout. Response time is an outcome of the servers and the switch: from the request's
arrival at the switch to the arrival of the answer's last byte, plus one round trip (the request left
the client half a round trip earlier, the answer reaches it half a round trip later). Times are the
switch's: a client's reaction to a packet the switch sent at t reaches the switch at t + rtt.

The same Generator draws arrivals, clients, ports, sequence numbers, requests and think times, so a
seed fixes everything. A conversation has at most one live event in the heap; an event replaced
before it is due stays there and is skipped (its gen no longer matches the conversation's).
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t, UINT64_MAX
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy

from l4emu.clients._gen cimport (ACK_EVERY, APP_DELAY_NS, ETH_HEADER_LEN, P_FIN, P_HANDSHAKE_ACK,
                                 P_LAST_ACK, P_REQUEST, P_RESPONSE_ACK, P_SYN, UDP_ANSWER_HEADER, UDP_ID_LEN,
                                 UDP_MAGIC_LEN, Conv, Event, Generator, add_be)
from l4emu.datapath._headers cimport PARSED, parse_packet
from l4emu.datapath._types cimport NS, PacketInfo
from l4emu.datapath._wire cimport (IP4_HEADER_LEN, IP6_HEADER_LEN, IPPROTO_TCP, IPPROTO_UDP, LINKTYPE_RAW,
                                   TCP_ACK, TCP_DATA_OFFSET, TCP_FIN, TCP_FLAGS, TCP_HEADER_LEN, TCP_PSH, TCP_RST,
                                   TCP_SYN, UDP_HEADER_LEN)

cdef enum:
    # The closed loop's waiting phases, beside the generator's (P_SYN ... P_DONE, whose packet is due).
    C_SYN_SENT = 16         # the SYN is out; the pending event is its retransmission
    C_AWAIT_RESPONSE = 17   # the request is out, its answer not complete; no event
    C_FIN_WAIT = 18         # we closed first: our FIN is out, the server's not yet in
    C_CLOSING = 19          # the server closed first: our FIN is out, its ACK not yet in
    C_UDP_WAIT = 20         # UDP: the request is out; the pending event is the client giving up on it
    TCP_SEQ = 4
    TCP_ACK_NUM = 8
    INITIAL_RTO_NS = NS     # RFC 6298 2.1, Linux TCP_TIMEOUT_INIT (1 s), doubled per retransmission
    SYN_RETRIES = 6         # Linux net.ipv4.tcp_syn_retries: connect() gives up after 127 s
    HEADER_END_LEN = 4      # "\r\n\r\n"
    LENGTH_NAME_LEN = 16    # "\ncontent-length:"
    LENGTH_DIGITS = 255     # length_state while reading Content-Length's value
    NOT_FOUND = 0xFFFFFFFF
    FIRST_TABLE = 1 << 12   # connection table slots, doubled at half full
    FIRST_RECORDS = 1 << 12
    MAX_CONTENT_LENGTH = 1 << 30   # the longest answer the servers write (config.MAX_RESPONSE_BYTES); fits the enum

cdef uint64_t NO_KEY = UINT64_MAX
cdef const char* HEADER_END = b"\r\n\r\n"
cdef const char* ANSWER_MAGIC = b"L4RA"     # a UDP answer datagram's first bytes (hosts/_udp.pxi)
# Where an answer's length is read from, in lower case, with the end of the line before it.
cdef const char* LENGTH_NAME = b"\ncontent-length:"

# Why a connection ended without all its answers (Clients.failures()); UDP clients' one cause is the last.
FAILURES = ("refused", "reset", "timed_out", "cut_short")
UDP_FAILURES = ("unanswered",)
cdef enum Failure:
    F_REFUSED = 0           # a RST answered the SYN (no listener, or a full queue with syn_overflow = reset)
    F_RESET = 1             # a RST on an established connection
    F_TIMED_OUT = 2         # no SYN-ACK after every retransmission (a full backlog drops SYNs)
    F_CUT_SHORT = 3         # the server closed before its answer was whole
    F_UNANSWERED = 4        # UDP: no whole answer within the timeout (N_FAILURES: _clients.pxd)


cdef inline uint32_t get32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint64_t conn_key(uint32_t client, uint16_t port) noexcept nogil:
    return (<uint64_t>client << 16) | port


cdef inline uint32_t home_of(uint64_t key, uint32_t mask) noexcept nogil:
    """Fibonacci hashing: one client's consecutive ports land far apart."""
    return <uint32_t>((key * 0x9E3779B97F4A7C15ULL) >> 32) & mask


cdef inline bint seq_before(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) < 0


cdef class Clients(Generator):
    """The workload's clients as TCP endpoints. `next_packet` is the next packet they send (with its
    time and connection), `answer` takes a packet the switch sends them, `note_real` tells a connection
    which real the switch chose for it; `response_times` and `failures` are the outcome."""

    def __init__(self, *, uint64_t timeout_ns=0, **model):
        """The Generator's model (keywords of l4emu.clients._gen.Generator); rtt_ns is the round trip
        between a client and the switch; timeout_ns how long a UDP client waits for a whole answer."""
        super().__init__(**model)
        self.rtt = model["rtt_ns"]
        self.timeout_ns = timeout_ns
        self._table(FIRST_TABLE)
        self.rec_ns = <uint64_t*>malloc(FIRST_RECORDS * sizeof(uint64_t))
        self.rec_real = <int32_t*>malloc(FIRST_RECORDS * sizeof(int32_t))
        if self.rec_ns == NULL or self.rec_real == NULL:
            raise MemoryError()
        self.cap_records = FIRST_RECORDS

    def __dealloc__(self):
        free(self.keys)
        free(self.slots)
        free(self.rec_ns)
        free(self.rec_real)

    # ---- the connection table: (client, port) -> slot -------------------------------------------
    cdef int _table(self, uint32_t size) except -1:
        cdef uint64_t* old_keys = self.keys
        cdef uint32_t* old_slots = self.slots
        cdef uint32_t old_size = self.table_mask + 1 if old_keys != NULL else 0, i
        self.keys = <uint64_t*>malloc(size * sizeof(uint64_t))
        self.slots = <uint32_t*>malloc(size * sizeof(uint32_t))
        if self.keys == NULL or self.slots == NULL:
            raise MemoryError()
        for i in range(size):
            self.keys[i] = NO_KEY
        self.table_mask, self.table_used = size - 1, 0
        for i in range(old_size):
            if old_keys[i] != NO_KEY:
                self._insert(old_keys[i], old_slots[i])
        free(old_keys)
        free(old_slots)
        return 0

    cdef void _insert(self, uint64_t key, uint32_t slot) noexcept nogil:
        cdef uint32_t i = home_of(key, self.table_mask)
        while self.keys[i] != NO_KEY:
            i = (i + 1) & self.table_mask
        self.keys[i], self.slots[i] = key, slot
        self.table_used += 1

    cdef uint32_t _find(self, uint64_t key) noexcept nogil:
        cdef uint32_t i = home_of(key, self.table_mask)
        while self.keys[i] != NO_KEY:
            if self.keys[i] == key:
                return i
            i = (i + 1) & self.table_mask
        return NOT_FOUND

    cdef void _erase(self, uint64_t key) noexcept nogil:
        """Linear probing's deletion by backward shift: later entries of the run move up, no tombstones."""
        cdef uint32_t i = self._find(key), j, home
        if i == NOT_FOUND:
            return
        j = i
        while True:
            j = (j + 1) & self.table_mask
            if self.keys[j] == NO_KEY:
                break
            home = home_of(self.keys[j], self.table_mask)
            # j's entry may fill the hole at i unless its home lies cyclically in (i, j]
            if (i < j and (home <= i or home > j)) or (j < i and home <= i and home > j):
                self.keys[i], self.slots[i] = self.keys[j], self.slots[j]
                i = j
        self.keys[i] = NO_KEY
        self.table_used -= 1

    # ---- connections ----------------------------------------------------------------------------
    cdef int _connect(self, uint32_t slot) except -1:
        """The conversation's connection just opened by Generator._open: into the table, SYN due."""
        cdef Conv* c = &self.convs[slot]
        if (self.table_used + 1) * 2 > self.table_mask + 1:
            self._table((self.table_mask + 1) * 2)
        self._insert(conn_key(c.client, c.sport), slot)
        c.real = -1
        c.retries = c.server_fin = c.unacked = 0
        return 0

    cdef int _end(self, uint32_t slot, uint64_t now) except -1:
        """The connection is over: the session's next one after a think time, or the slot is free."""
        cdef Conv* c = &self.convs[slot]
        self._erase(conn_key(c.client, c.sport))
        c.gen += 1                          # whatever was pending is void
        c.conns_left -= 1
        if c.conns_left:
            self._open(c, now + APP_DELAY_NS + self._seconds(&self.think.d))
            self._connect(slot)
            self._schedule(slot, c.ts, P_REQUEST if self.udp else P_SYN)
        else:
            self.free_slots[self.n_free] = slot
            self.n_free += 1
        return 0

    cdef int _fail(self, uint32_t slot, int why, uint64_t now) except -1:
        cdef Conv* c = &self.convs[slot]
        self.fails[why] += 1
        if c.phase == C_AWAIT_RESPONSE or (c.phase == P_RESPONSE_ACK and not self._answered(c)):
            self.failed_requests += 1
        return self._end(slot, now)

    cdef bint _answered(self, const Conv* c) noexcept nogil:
        return c.header_state == HEADER_END_LEN and c.body_left == 0

    # ---- the event heap -------------------------------------------------------------------------
    cdef int _schedule(self, uint32_t slot, uint64_t ts, uint8_t phase) except -1 nogil:
        """The conversation's pending event becomes `phase` at ts (one it had is now stale)."""
        cdef Conv* c = &self.convs[slot]
        c.gen += 1
        c.phase, c.ts = phase, ts
        return self._push(slot, ts)

    cdef void _wait(self, Conv* c, uint8_t phase) noexcept nogil:
        """Nothing due: the conversation waits for the server in `phase`."""
        c.gen += 1
        c.phase = phase

    cdef void _pop(self) noexcept nogil:
        self.heap_n -= 1
        if self.heap_n:
            self.heap[0] = self.heap[self.heap_n]
            self._sift_down()

    cdef int _settle(self) except -1:
        """Admit the sessions that start before the earliest pending event; drop stale events on top."""
        cdef int64_t slot
        while True:
            while self.have_arrival and (self.heap_n == 0 or self.next_arrival <= self.heap[0].ts):
                slot = self._admit(self.next_arrival)
                self._connect(<uint32_t>slot)
                self._draw_arrival()
            if self.heap_n == 0 or self.heap[0].gen == self.convs[self.heap[0].slot].gen:
                return 0
            self._pop()

    cpdef uint64_t next_time(self) except? 0:
        """When the clients' next packet reaches the switch (2**64 - 1: they have nothing more to send,
        though answers may still make them send)."""
        self._settle()
        return self.heap[0].ts if self.heap_n else NO_KEY

    # ---- what the clients send ------------------------------------------------------------------
    cdef uint32_t emit(self, uint8_t* out, uint64_t* ts, uint32_t* slot) except? 0:
        """The next packet into out (MAX_FRAME bytes), its time and its conversation; 0: none pending.
        A retransmission timer that gives up ends its connection and the next packet comes instead;
        a UDP client giving up on a request returns 0 (the driver asks again), so that the hosts' clocks
        run up to each such moment before the clients go past it."""
        cdef Event e
        cdef uint32_t n
        while True:
            self._settle()
            if self.heap_n == 0:
                return 0
            e = self.heap[0]
            self._pop()
            n = self._send(e.slot, e.ts, out)
            if n:
                ts[0], slot[0] = e.ts, e.slot
                if self.packets == 0:
                    self.first_ns = e.ts
                self.last_ns = e.ts
                self.packets += 1
                return n
            if self.udp:
                return 0

    cdef uint32_t _send(self, uint32_t slot, uint64_t now, uint8_t* out) except? 0:
        """The due event's packet (0: it sent none) and the conversation's next phase."""
        cdef Conv* c = &self.convs[slot]
        cdef uint32_t n, size
        if self.udp:
            return self._udp_send(slot, now, out)
        c.ip_id += 1
        if c.phase == P_SYN or c.phase == C_SYN_SENT:
            if c.phase == C_SYN_SENT:
                if c.retries == SYN_RETRIES:
                    self._fail(slot, F_TIMED_OUT, now)
                    return 0
                c.retries += 1
                self.syn_retransmits += 1
                c.seq -= 1                                      # the same SYN again
            n = self._frame(c, out, TCP_SYN, 0)
            c.seq += 1
            self._schedule(slot, now + (<uint64_t>INITIAL_RTO_NS << c.retries), C_SYN_SENT)
        elif c.phase == P_HANDSHAKE_ACK:
            n = self._frame(c, out, TCP_ACK, 0)
            self._schedule(slot, now + APP_DELAY_NS, P_REQUEST)
        elif c.phase == P_REQUEST:
            size = self._request(c, out + self._payload_at(c))
            n = self._frame(c, out, TCP_PSH | TCP_ACK, size)     # the whole request in one segment
            c.seq += size
            self.requests_sent += 1
            c.request_ns = now
            c.header_state = c.length_state = c.unacked = 0
            c.content_length = 0
            c.body_left = 0
            self._wait(c, C_AWAIT_RESPONSE)
        elif c.phase == P_RESPONSE_ACK:
            n = self._frame(c, out, TCP_ACK, 0)
            c.unacked = 0
            if not self._answered(c):
                self._wait(c, C_AWAIT_RESPONSE)
            elif c.server_fin:                                  # the server closed after its answer
                self._schedule(slot, now + APP_DELAY_NS, P_FIN)
            else:
                c.requests_left -= 1
                if c.requests_left:
                    self._schedule(slot, now + APP_DELAY_NS + self._seconds(&self.think.d), P_REQUEST)
                else:
                    self._schedule(slot, now + APP_DELAY_NS, P_FIN)
        elif c.phase == P_FIN:
            n = self._frame(c, out, TCP_FIN | TCP_ACK, 0)
            c.seq += 1
            self._wait(c, C_CLOSING if c.server_fin else C_FIN_WAIT)
        elif c.phase == P_LAST_ACK:
            n = self._frame(c, out, TCP_ACK, 0)
            self._end(slot, now)
        else:
            return 0
        return n

    cdef uint32_t _udp_send(self, uint32_t slot, uint64_t now, uint8_t* out) except? 0:
        """UDP: the request datagram (then the client waits up to the timeout), or, when the timeout
        comes first, the request given up (counted) and the session's next one."""
        cdef Conv* c = &self.convs[slot]
        cdef uint32_t size
        if c.phase == P_REQUEST:
            c.ip_id += 1
            size = self._udp_request(c, out + self._l4_at(c) + UDP_HEADER_LEN)
            self.requests_sent += 1
            c.request_ns = now
            self._schedule(slot, now + self.timeout_ns, C_UDP_WAIT)
            return self._datagram(c, out, size)
        if c.phase == C_UDP_WAIT:
            self.fails[<int>F_UNANSWERED] += 1
            self.failed_requests += 1
            self._udp_next(slot, now)
        return 0

    cdef int _udp_next(self, uint32_t slot, uint64_t now) except -1:
        """The request in flight is over (answered, or given up) as the client sees it at `now` on the
        switch's clock: the next one after the think time, or the socket closes (_end)."""
        cdef Conv* c = &self.convs[slot]
        c.seq += 1                                  # an answer to the old id is late from now on
        c.requests_left -= 1
        if c.requests_left:
            self._schedule(slot, now + APP_DELAY_NS + self._seconds(&self.think.d), P_REQUEST)
            return 0
        return self._end(slot, now)

    cdef int _udp_receive(self, const uint8_t* frame, const PacketInfo* info, uint64_t now) except -1:
        """A datagram to a UDP client: a part of the answer to its request in flight, the last when it
        says nothing more comes (then recorded). One for another id, or for a socket that closed, is late
        (its request was given up)."""
        cdef uint32_t slot = self._slot_of(info), ulen, remaining
        cdef const uint8_t* payload = frame + info.l4 + UDP_HEADER_LEN
        cdef Conv* c
        ulen = (<uint32_t>frame[info.l4 + 4] << 8) | frame[info.l4 + 5]
        if (ulen < UDP_HEADER_LEN + UDP_ANSWER_HEADER or info.l4 + ulen > info.end
                or memcmp(payload, ANSWER_MAGIC, UDP_MAGIC_LEN) != 0):
            self.stray += 1
            return 0
        if slot == NOT_FOUND:
            self.late += 1                          # its socket closed when the client gave up
            return 0
        c = &self.convs[slot]
        if c.phase != C_UDP_WAIT or get32(payload + UDP_MAGIC_LEN) != c.seq:
            self.late += 1
            return 0
        remaining = get32(payload + UDP_MAGIC_LEN + UDP_ID_LEN)
        if remaining == 0:
            self._answer_done(c, now)
            self._udp_next(slot, now + self.rtt)    # the client has it half a round trip later
        return 0

    cdef uint32_t _payload_at(self, const Conv* c) noexcept nogil:
        return (0 if self.linktype == LINKTYPE_RAW else ETH_HEADER_LEN) + \
            (IP4_HEADER_LEN if c.family == 4 else IP6_HEADER_LEN) + TCP_HEADER_LEN

    # ---- what the switch sends them -------------------------------------------------------------
    cdef int receive(self, const uint8_t* frame, uint32_t caplen, uint16_t linktype, uint64_t now) except -1:
        """One packet the switch sent towards the clients. Anything not for one of their connections
        (or not in sequence: the path is lossless, so it never should be) is counted as stray."""
        cdef PacketInfo info
        cdef uint32_t slot, doff, seq, ack, data_len
        cdef const uint8_t* tcp
        cdef Conv* c
        cdef uint8_t flags
        cdef bint fin
        if (self.other is not None and parse_packet(frame, caplen, caplen, linktype, &info) == PARSED
                and info.key.proto == (IPPROTO_TCP if self.udp else IPPROTO_UDP)):
            return self.other.receive(frame, caplen, linktype, now)    # the other protocol's clients'
        if (parse_packet(frame, caplen, caplen, linktype, &info) != PARSED or info.icmp_error
                or info.key.proto != (IPPROTO_UDP if self.udp else IPPROTO_TCP) or info.end > caplen):
            self.stray += 1
            return 0
        if self.udp:
            return self._udp_receive(frame, &info, now)
        slot = self._slot_of(&info)
        if slot == NOT_FOUND:
            self.stray += 1
            return 0
        c = &self.convs[slot]
        tcp = frame + info.l4
        doff = (tcp[TCP_DATA_OFFSET] >> 4) * 4
        if doff < TCP_HEADER_LEN or info.l4 + doff > info.end:
            self.stray += 1
            return 0
        seq, ack, flags = get32(tcp + TCP_SEQ), get32(tcp + TCP_ACK_NUM), tcp[TCP_FLAGS]
        data_len = info.end - info.l4 - doff
        if c.phase == C_SYN_SENT:
            if flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN | TCP_ACK and ack == c.seq:
                c.ack = seq + 1
                self._schedule(slot, now + self.rtt, P_HANDSHAKE_ACK)
            elif flags & TCP_RST and flags & TCP_ACK and ack == c.seq:
                self._fail(slot, F_REFUSED, now)
            else:
                self.stray += 1
            return 0
        if flags & TCP_RST:
            if c.phase == C_FIN_WAIT or c.phase == C_CLOSING or c.phase == P_LAST_ACK:
                return self._end(slot, now)                     # closing anyway
            return self._fail(slot, F_RESET, now)
        if data_len and seq != c.ack:
            self.stray += 1                                     # a gap or a repeat: never on this path
            return 0
        if data_len:
            c.ack += data_len
            c.unacked += 1
            self._read(c, tcp + doff, data_len, now)
        fin = flags & TCP_FIN and seq + data_len == c.ack   # in order, after any data
        if fin:
            c.ack += 1
        if c.phase == C_CLOSING:
            if flags & TCP_ACK and ack == c.seq:
                self._end(slot, now)
            return 0
        if c.phase == C_FIN_WAIT:
            if fin:
                self._schedule(slot, now + self.rtt, P_LAST_ACK)
            return 0
        if fin:
            c.server_fin = 1
            if c.phase == C_AWAIT_RESPONSE or c.phase == P_RESPONSE_ACK:
                if not self._answered(c):
                    return self._fail(slot, F_CUT_SHORT, now)
                self._schedule(slot, now + self.rtt, P_RESPONSE_ACK)   # acknowledges the answer and the FIN
            else:
                self._schedule(slot, now + self.rtt, P_FIN)     # idle between requests: close too
            return 0
        if data_len and c.phase == C_AWAIT_RESPONSE and (self._answered(c) or c.unacked >= ACK_EVERY):
            self._schedule(slot, now + self.rtt, P_RESPONSE_ACK)
        return 0

    cdef uint32_t _slot_of(self, const PacketInfo* info) noexcept nogil:
        """The conversation a packet to a client belongs to: from the VIP and port it connected to."""
        cdef uint64_t index
        cdef uint32_t i, k
        cdef uint8_t expect[16]
        if info.key.family == 4:
            if self.clients == self.n6 or memcmp(info.key.src, self.target4, 4) != 0 or info.key.sport != self.port4:
                return NOT_FOUND
            index = <uint64_t>get32(info.key.dst) - get32(self.base4) - 1 + self.n6
            if index < self.n6 or index >= self.clients:
                return NOT_FOUND
            memcpy(expect, self.base4, 4)
            add_be(expect, 4, index - self.n6 + 1)
            if memcmp(expect, info.key.dst, 4) != 0:
                return NOT_FOUND
        else:
            if self.n6 == 0 or memcmp(info.key.src, self.target6, 16) != 0 or info.key.sport != self.port6:
                return NOT_FOUND
            index = 0
            for k in range(8, 16):
                index = (index << 8) | info.key.dst[k]
            index -= 1
            for k in range(8, 16):
                index -= <uint64_t>self.base6[k] << (8 * (15 - k))
            if index >= self.n6:
                return NOT_FOUND
            memcpy(expect, self.base6, 16)
            add_be(expect, 16, index + 1)
            if memcmp(expect, info.key.dst, 16) != 0:
                return NOT_FOUND
        i = self._find(conn_key(<uint32_t>index, info.key.dport))
        return NOT_FOUND if i == NOT_FOUND else self.slots[i]

    cdef int _read(self, Conv* c, const uint8_t* p, uint32_t n, uint64_t now) except -1:
        """The answer's bytes as the client's HTTP parser reads them: up to the blank line, noting
        Content-Length, then that many body bytes. The last one completes the answer: recorded."""
        cdef uint32_t i = 0
        cdef uint64_t take, length
        cdef uint8_t b, lower
        while i < n and c.header_state < HEADER_END_LEN:
            b = p[i]
            i += 1
            if b == HEADER_END[c.header_state]:
                c.header_state += 1
            else:
                c.header_state = 1 if b == b"\r"[0] else 0
            if c.length_state == LENGTH_DIGITS:
                if b"0"[0] <= b <= b"9"[0]:
                    length = <uint64_t>c.content_length * 10 + (b - b"0"[0])
                    c.content_length = <uint32_t>(length if length < MAX_CONTENT_LENGTH else MAX_CONTENT_LENGTH)
                    continue
                if b == b" "[0] or b == b"\t"[0]:
                    continue
                c.length_state = 0
            lower = b | 0x20 if b"A"[0] <= b <= b"Z"[0] else b
            if lower == LENGTH_NAME[c.length_state]:
                c.length_state += 1
                if c.length_state == LENGTH_NAME_LEN:
                    c.length_state = LENGTH_DIGITS
                    c.content_length = 0
            else:
                c.length_state = 1 if b == b"\n"[0] else 0
            if c.header_state == HEADER_END_LEN:
                c.body_left = c.content_length
                if c.body_left == 0:
                    return self._answer_done(c, now)
        if c.header_state == HEADER_END_LEN and c.body_left and i < n:
            take = n - i if n - i < c.body_left else c.body_left
            c.body_left -= take
            if c.body_left == 0:
                return self._answer_done(c, now)
        return 0

    cdef int _answer_done(self, Conv* c, uint64_t now) except -1:
        cdef uint64_t cap
        if self.n_records == self.cap_records:
            cap = self.cap_records * 2
            self.rec_ns = <uint64_t*>realloc(self.rec_ns, cap * sizeof(uint64_t))
            self.rec_real = <int32_t*>realloc(self.rec_real, cap * sizeof(int32_t))
            if self.rec_ns == NULL or self.rec_real == NULL:
                raise MemoryError()
            self.cap_records = cap
        self.rec_ns[self.n_records] = now - c.request_ns + self.rtt
        self.rec_real[self.n_records] = c.real
        self.n_records += 1
        return 0

    cdef void note_real(self, uint32_t slot, int32_t real) noexcept nogil:
        self.convs[slot].real = real

    # ---- Python's view --------------------------------------------------------------------------
    def next_packet(self):
        """(frame, time in ns, connection) of the clients' next packet, or None."""
        cdef uint64_t ts
        cdef uint32_t slot
        cdef uint32_t n = self.emit(self.scratch, &ts, &slot)
        while n == 0 and self.next_time() != NO_KEY:
            n = self.emit(self.scratch, &ts, &slot)
        return (bytes(self.scratch[:n]), ts, slot) if n else None

    def answer(self, const uint8_t[::1] frame, uint64_t ts, uint16_t linktype):
        """A packet the switch sent towards the clients, at ts."""
        if frame.shape[0]:
            self.receive(&frame[0], <uint32_t>frame.shape[0], linktype, ts)

    def chosen(self, uint32_t slot, int32_t real):
        """The switch sent connection `slot` to real `real` (the datapath's verdict detail)."""
        self.note_real(slot, real)

    def pair(self, Clients other):
        """A mixed workload: self and `other` speak different protocols, and each hands the other the
        packets of its protocol (the switch's answers reach whichever clients the driver holds)."""
        if other.udp == self.udp:
            raise ValueError("paired clients must speak different protocols")
        self.other, other.other = other, self

    def response_times(self):
        """[(real, response time in ns)] of every whole answer, in the order they completed."""
        return [(self.rec_real[i], self.rec_ns[i]) for i in range(self.n_records)]

    def failures(self):
        """Requests or connections that failed, by cause (the UDP clients' causes, or TCP's)."""
        if self.udp:
            return {name: self.fails[<int>F_UNANSWERED + k] for k, name in enumerate(UDP_FAILURES)}
        return {name: self.fails[k] for k, name in enumerate(FAILURES)}
