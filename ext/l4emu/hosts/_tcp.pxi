# The TCP responder of the emulated hosts: handshakes, listen queues, data, close, resets.
# Included by _engine.pyx.
#
# It follows Linux where a user can see the difference: the accept queue holds backlog + 1, a SYN
# that finds it full is dropped, and the handshake's last ACK into a full queue is ignored (or reset
# with syn_overflow = "reset", Linux's tcp_abort_on_overflow). A segment no socket owns gets a RST
# (RFC 9293 3.10.7.1). The path to the client is lossless, so there are no retransmission timers;
# the only clocks are TIME-WAIT (60 s), how long a half-open request is kept (63 s, as long as
# Linux's five SYN-ACK retries take) and the application's accept pace, all on the packet clock.

cdef enum:
    MSS_V4 = 1460                   # a 1500-byte MTU
    MSS_V6 = 1440
    DEFAULT_MSS = 536               # RFC 9293: the peer's MSS without the option
    OUR_SHIFT = 7                   # the window scale Linux offers with default buffers
    MAX_SHIFT = 14                  # RFC 7323 2.3
    RCVBUF = 65535
    TCPOPT_EOL = 0
    TCPOPT_NOP = 1
    TCPOPT_MSS = 2
    TCPOPT_WSCALE = 3
    SYN_ACK_OPTIONS_MAX = 8

cdef uint64_t TIME_WAIT_NS = 60 * <uint64_t>NS      # Linux TCP_TIMEWAIT_LEN
cdef uint64_t SYN_RECV_NS = 63 * <uint64_t>NS


cdef inline bint before(uint32_t a, uint32_t b) noexcept nogil:
    """a comes before b in sequence space (RFC 1982 arithmetic)."""
    return <uint32_t>(a - b) > 0x7FFFFFFF


# ---- output -----------------------------------------------------------------------------------------
cdef void tcp_packet(Engine e, uint32_t h, const uint8_t* dst, uint16_t sport, uint16_t dport, uint32_t seq,
                     uint32_t ack, uint8_t flags, uint32_t window, const uint8_t* options, uint32_t olen,
                     const uint8_t* payload, uint32_t plen, int64_t from_conn) noexcept:
    """An IP packet holding one TCP segment, every checksum right, into the output (ip_id counted first);
    with no `payload`, plen bytes come from the send queue of connection `from_conn`."""
    cdef Host* host = &e.hosts[h]
    cdef uint32_t iph = ip_len(host.family), tlen = TCP_HEADER_LEN + olen + plen
    cdef uint8_t* p
    cdef uint8_t* t
    host.ip_id += 1
    p = e.reserve(iph + tlen)
    if p == NULL:
        return
    ip_header(p, host.family, host.addr, dst, IPPROTO_TCP, tlen, host.ip_id)
    t = p + iph
    store16(t + L4_SPORT, sport)
    store16(t + L4_DPORT, dport)
    store32(t + 4, seq)
    store32(t + 8, ack)
    t[TCP_DATA_OFFSET] = <uint8_t>(((TCP_HEADER_LEN + olen) // 4) << 4)
    t[TCP_FLAGS] = flags
    store16(t + 14, window if window < 0xFFFF else 0xFFFF)
    store16(t + TCP_CSUM, 0)
    store16(t + 18, 0)
    if olen:
        memcpy(t + TCP_HEADER_LEN, options, olen)
    if plen and payload != NULL:
        memcpy(t + TCP_HEADER_LEN + olen, payload, plen)
    elif plen:
        take_queued(e, <uint32_t>from_conn, t + TCP_HEADER_LEN + olen, plen)
    store16(t + TCP_CSUM, internet_checksum(
        sum_bytes(pseudo_sum(host.family, host.addr, dst, IPPROTO_TCP, tlen), t, tlen)))
    e.count(h, C_SEGMENTS_OUT, 1)


cdef inline uint32_t recv_len(Conn* c) noexcept:
    return c.bufs.recv.end - c.bufs.recv.off if c.bufs != NULL else 0


cdef void send_flags(Engine e, uint32_t c, uint8_t flags, const uint8_t* payload, uint32_t plen) noexcept:
    cdef Conn* conn = e.conn(c)
    cdef int64_t room = <int64_t>RCVBUF - recv_len(conn)
    cdef uint32_t window = <uint32_t>(room if room > 0 else 0) >> (conn.rcv_shift if conn.flags & CF_SCALING else 0)
    tcp_packet(e, conn.key.host, conn.key.peer, conn.key.port, conn.key.peer_port, conn.snd_nxt, conn.rcv_nxt,
               flags, window, NULL, 0, payload, plen, -1)


cdef void syn_ack(Engine e, uint32_t c) noexcept:
    cdef Conn* conn = e.conn(c)
    cdef uint8_t options[SYN_ACK_OPTIONS_MAX]
    cdef uint32_t olen = 4
    cdef uint16_t mss = MSS_V4 if conn.key.family == 4 else MSS_V6
    options[0] = TCPOPT_MSS
    options[1] = 4
    store16(options + 2, mss)
    if conn.flags & CF_SCALING:
        options[4] = TCPOPT_NOP
        options[5] = TCPOPT_WSCALE
        options[6] = 3
        options[7] = OUR_SHIFT
        olen = 8
    tcp_packet(e, conn.key.host, conn.key.peer, conn.key.port, conn.key.peer_port, conn.iss, conn.rcv_nxt,
               TCP_SYN | TCP_ACK, RCVBUF, options, olen, NULL, 0, -1)


cdef void reset_for(Engine e, uint32_t h, Seg* seg) noexcept:
    """RFC 9293 3.10.7.1: a RST that the sender of `seg` will accept; never one for a RST."""
    cdef uint32_t seq, ack
    cdef uint8_t flags
    if seg.flags & TCP_RST:
        return
    if seg.flags & TCP_ACK:
        seq, ack, flags = seg.ack, 0, TCP_RST
    else:
        seq, flags = 0, TCP_RST | TCP_ACK
        ack = seg.seq + seg.plen + (1 if seg.flags & TCP_SYN else 0) + (1 if seg.flags & TCP_FIN else 0)
    tcp_packet(e, h, seg.src, seg.dport, seg.sport, seq, ack, flags, 0, NULL, 0, NULL, 0, -1)
    e.count(h, C_RESETS_SENT, 1)


cdef void udp_answer(Engine e, uint32_t h, Seg* seg, const uint8_t* payload, uint32_t plen) noexcept:
    cdef Host* host = &e.hosts[h]
    cdef uint32_t iph = ip_len(host.family), ulen = UDP_HEADER_LEN + plen
    cdef uint16_t csum
    cdef uint8_t* p = e.reserve(iph + ulen)
    cdef uint8_t* u
    if p == NULL:
        return
    ip_header(p, host.family, host.addr, seg.src, IPPROTO_UDP, ulen, host.ip_id)
    u = p + iph
    store16(u + L4_SPORT, seg.dport)
    store16(u + L4_DPORT, seg.sport)
    store16(u + UDP_LEN, ulen)
    store16(u + UDP_CSUM, 0)
    memcpy(u + UDP_HEADER_LEN, payload, plen)
    csum = internet_checksum(sum_bytes(pseudo_sum(host.family, host.addr, seg.src, IPPROTO_UDP, ulen), u, ulen))
    store16(u + UDP_CSUM, csum if csum else 0xFFFF)     # RFC 768: zero would mean "no checksum"


cdef void port_unreachable(Engine e, uint32_t h, Seg* seg) noexcept:
    """ICMP (type 3 code 3) or ICMPv6 (type 1 code 4) quoting as much of the datagram as RFC 1812/4443 allow."""
    cdef Host* host = &e.hosts[h]
    cdef uint32_t iph = ip_len(host.family)
    cdef uint32_t quote = min(seg.ip_len, <uint32_t>(ICMP_QUOTE_V4 if host.family == 4 else ICMP_QUOTE_V6))
    cdef uint32_t blen = ICMP_HEADER_LEN + quote
    cdef uint8_t proto = IPPROTO_ICMP if host.family == 4 else IPPROTO_ICMPV6
    cdef uint8_t* p = e.reserve(iph + blen)
    cdef uint8_t* b
    cdef uint32_t acc
    if p == NULL:
        return
    ip_header(p, host.family, host.addr, seg.src, proto, blen, host.ip_id)
    b = p + iph
    memset(b, 0, ICMP_HEADER_LEN)
    b[0] = ICMP_UNREACH if host.family == 4 else ICMP6_UNREACH
    b[1] = ICMP_PORT_UNREACH if host.family == 4 else ICMP6_PORT_UNREACH
    memcpy(b + ICMP_HEADER_LEN, seg.ip, quote)
    acc = 0 if host.family == 4 else pseudo_sum(6, host.addr, seg.src, proto, blen)
    store16(b + ICMP_CSUM, internet_checksum(sum_bytes(acc, b, blen)))


# ---- input ------------------------------------------------------------------------------------------
cdef void tcp_segment(Engine e, uint32_t h, Seg* seg, uint64_t now, int c) noexcept:
    """One segment for host h; c: the connection it belongs to (-1: none)."""
    cdef Conn* conn
    e.count(h, C_SEGMENTS_IN, 1)
    if c >= 0:
        conn = e.conn(c)
        if (conn.state == T_TIME_WAIT and seg.flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
                and before(conn.rcv_nxt, seg.seq)):
            remove_conn(e, c)               # Linux lets a new SYN past the old one's sequence reopen the pair
            c = -1
    if c < 0:
        no_connection(e, h, seg, now)
    elif e.conn(c).state == T_SYN_RECV:
        half_open(e, c, seg, now)
    else:
        synchronized(e, c, seg, now)
    if c >= 0:
        free_idle(e, c)


cdef void no_connection(Engine e, uint32_t h, Seg* seg, uint64_t now) noexcept:
    cdef int s = e.socket_of(h, seg.dport, PROTO_KEY_TCP)
    cdef Listener* lst
    cdef ConnKey key
    cdef int c
    cdef Conn* conn
    cdef uint32_t i, kind, length, mss_value = 0, shift = 0, iss
    cdef bint has_mss = False, has_shift = False
    if s < 0:
        if seg.flags & TCP_SYN and not seg.flags & TCP_ACK:
            e.count(h, C_CLOSED_PORT, 1)
        reset_for(e, h, seg)
        return
    lst = &e.listeners[s]
    if seg.flags & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN:
        reset_for(e, h, seg)                # an ACK (or SYN-ACK) to a listener: no such connection
        return
    e.count(h, C_SYNS, 1)
    if dns_conn_limited(e, lst, h):
        return
    if accept_queue_full(lst) or syn_queue_full(lst):
        e.count(h, C_LISTEN_DROPS, 1)
        e.count(h, C_LISTEN_OVERFLOWS, accept_queue_full(lst))
        return
    # The options of the SYN (the last of a kind counts): MSS and window scale.
    i = 0
    while i < seg.olen:
        kind = seg.options[i]
        if kind == TCPOPT_EOL:
            break
        if kind == TCPOPT_NOP:
            i += 1
            continue
        if i + 1 >= seg.olen or seg.options[i + 1] < 2 or i + seg.options[i + 1] > seg.olen:
            break                           # an option that does not fit ends the list
        length = seg.options[i + 1]
        if kind == TCPOPT_MSS:
            has_mss = length == 4
            if has_mss:
                mss_value = load16(seg.options + i + 2)
        elif kind == TCPOPT_WSCALE:
            has_shift = length == 3
            if has_shift:
                shift = seg.options[i + 2]
        i += length
    memset(&key, 0, sizeof(key))
    key.host, key.port, key.peer_port, key.family = h, seg.dport, seg.sport, seg.family
    memcpy(key.peer, seg.src, 4 if seg.family == 4 else 16)
    iss = mt_next32(&e.isn[h])              # the host's seeded generator: one draw per new connection
    c = slab_add_hashed(&e.conns, &key, e.cur_hash)     # receive() hashed the same client half
    if c < 0:
        return                              # out of memory: as a dropped SYN
    lst = &e.listeners[s]
    conn = e.conn(c)
    conn.listener = s
    conn.iss = iss
    conn.irs = seg.seq
    conn.born_ns = now
    conn.order = e.created
    e.created += 1
    conn.handle = -1
    conn.app = lst.app
    conn.state = T_SYN_RECV
    conn.mss = DEFAULT_MSS
    conn.rcv_nxt = seg.seq + 1
    conn.snd_una = conn.iss
    conn.snd_nxt = conn.iss + 1
    conn.snd_wnd = seg.window               # never scaled in a SYN
    if has_mss:
        conn.mss = min(mss_value, <uint32_t>(MSS_V4 if seg.family == 4 else MSS_V6))
    if has_shift:
        conn.flags |= CF_SCALING
        conn.snd_shift = min(shift, <uint32_t>MAX_SHIFT)
        conn.rcv_shift = OUR_SHIFT
    conn.flags |= CF_SYN_QUEUE
    lst.syn_count += 1
    lst.dns_open += lst.app == APP_DNS
    e.peer_ref(conn, 1)
    set_queued_deadline(e, c, now + SYN_RECV_NS, Q_SYN_RECV)
    syn_ack(e, c)


cdef inline bint accept_queue_full(Listener* lst) noexcept:
    # Linux's sk_acceptq_is_full() tests ">": one more than the backlog fits (include/net/sock.h).
    return lst.accept_count > lst.backlog


cdef inline bint syn_queue_full(Listener* lst) noexcept:
    # inet_csk_reqsk_queue_is_full() with tcp_syncookies = 0: half-open requests up to the backlog.
    return lst.syn_count >= lst.backlog


cdef void half_open(Engine e, uint32_t c, Seg* seg, uint64_t now) noexcept:
    cdef Conn* conn = e.conn(c)
    cdef Listener* lst = &e.listeners[conn.listener]
    if seg.flags & TCP_RST:
        if seg.seq == conn.rcv_nxt:
            remove_conn(e, c)
        return
    if seg.flags & TCP_SYN:
        if not seg.flags & TCP_ACK and seg.seq == conn.irs:
            syn_ack(e, c)                   # the SYN again: the SYN-ACK again
        return
    if not seg.flags & TCP_ACK:
        return
    if seg.ack != conn.snd_nxt:
        reset_for(e, conn.key.host, seg)
        return
    if accept_queue_full(lst):
        e.count(conn.key.host, C_LISTEN_OVERFLOWS, 1)
        if lst.abort_on_overflow:
            reset_for(e, conn.key.host, seg)
            remove_conn(e, c)
        return                              # else ignored: still half-open, as in Linux
    conn.flags &= ~CF_SYN_QUEUE
    lst.syn_count -= 1
    conn.state = T_ESTAB
    conn.snd_una = seg.ack
    set_deadline(e, c, 0)
    conn = e.conn(c)
    conn.born_ns = now
    conn.flags |= CF_ACCEPT_QUEUE           # to the tail of the accept queue
    conn.aprev, conn.anext = lst.aq_tail, 0
    if lst.aq_tail:
        e.conn(lst.aq_tail - 1).anext = c + 1
    else:
        lst.aq_head = c + 1
    lst.aq_tail = c + 1
    if lst.accept_count == 0:
        e.waiting += 1
    lst.accept_count += 1
    accept_due(e, conn.listener, now, False)
    synchronized(e, c, seg, now)


cdef void synchronized(Engine e, uint32_t c, Seg* seg, uint64_t now) noexcept:
    cdef Conn* conn = e.conn(c)
    cdef uint8_t flags = seg.flags
    if conn.state == T_CLOSED:
        return                              # removed while accepted just now (cannot happen: kept for safety)
    if flags & TCP_RST:
        if seg.seq == conn.rcv_nxt:
            e.count(conn.key.host, C_RESETS_RECEIVED, 1)
            remove_conn(e, c)
        elif not before(seg.seq, conn.rcv_nxt):
            send_flags(e, c, TCP_ACK, NULL, 0)  # RFC 5961 challenge ACK
        return
    if flags & TCP_SYN:
        send_flags(e, c, TCP_ACK, NULL, 0)      # RFC 5961 4.2
        return
    if not flags & TCP_ACK:
        return
    if before(conn.snd_nxt, seg.ack):
        send_flags(e, c, TCP_ACK, NULL, 0)      # acknowledges what was never sent
        return
    if before(conn.snd_una, seg.ack):
        conn.snd_una = seg.ack
    conn.snd_wnd = <uint32_t>seg.window << conn.snd_shift
    if conn.flags & CF_FIN_SENT and conn.snd_una == conn.snd_nxt:
        if conn.state == T_LAST_ACK:
            remove_conn(e, c)
            return
        if conn.state == T_FIN_WAIT_1:
            conn.state = T_FIN_WAIT_2
        elif conn.state == T_CLOSING:
            conn.state = T_TIME_WAIT
            set_queued_deadline(e, c, now + TIME_WAIT_NS, Q_TIME_WAIT)
    if not receive_data(e, c, seg, now) and not flush(e, c) and (seg.plen or flags & TCP_FIN):
        send_flags(e, c, TCP_ACK, NULL, 0)


cdef bint receive_data(Engine e, uint32_t c, Seg* seg, uint64_t now) noexcept:
    """Take in order data and FIN; True when a packet (ACK, data or RST) went out for it."""
    cdef Conn* conn = e.conn(c)
    cdef const uint8_t* data = seg.payload
    cdef uint32_t n = seg.plen, cut
    cdef bint fin = (seg.flags & TCP_FIN) != 0
    if not n and not fin:
        return False
    cut = conn.rcv_nxt - seg.seq
    if cut and cut <= 0x7FFFFFFF:               # starts before what we expect
        if cut > n or (cut == n and not fin):
            return False                        # all seen before: the caller re-ACKs
        data += cut
        n -= cut
    elif cut:
        e.count(conn.key.host, C_OUT_OF_ORDER, 1)   # a gap: duplicate ACK, data dropped
        return False
    if conn.state != T_ESTAB and conn.state != T_FIN_WAIT_1 and conn.state != T_FIN_WAIT_2:
        return False                            # past the peer's FIN: a retransmission
    if n and conn.handle < 0 and conn.flags & CF_FIN_PENDING:
        send_flags(e, c, TCP_RST | TCP_ACK, NULL, 0)    # Linux: data for a closed (orphaned) socket
        e.count(conn.key.host, C_RESETS_SENT, 1)
        remove_conn(e, c)
        return True
    conn.rcv_nxt = conn.rcv_nxt + n + fin
    if fin:
        conn.flags |= CF_PEER_FIN
        if conn.state == T_ESTAB:
            conn.state = T_CLOSE_WAIT
        elif conn.state == T_FIN_WAIT_1:
            conn.state = T_CLOSING
        else:
            conn.state = T_TIME_WAIT
            set_queued_deadline(e, c, now + TIME_WAIT_NS, Q_TIME_WAIT)
    feed(e, c, data, n)
    return flush(e, c)


# ---- the application side ---------------------------------------------------------------------------
cdef void feed(Engine e, uint32_t c, const uint8_t* data, uint32_t n) noexcept:
    """Data (and EOF) to the application, or into Recv-Q while nobody has accepted the connection."""
    cdef Conn* conn = e.conn(c)
    cdef bint close = False
    cdef uint32_t answered = conn.http_keep    # dns: messages answered so far
    if not conn.flags & CF_APP:
        if conn.handle < 0 and not conn.flags & CF_FIN_PENDING and n:
            buf_append(conn, &conn_bufs(conn).recv, data, n)
        return
    if n:
        close = app_data(e, c, data, n)
        conn = e.conn(c)
    if conn.flags & CF_PEER_FIN and not close and not conn.pending:
        close = True                            # the peer closed: every app here closes too (no half-duplex servers)
    if close:                                   # (with requests in service: once they are answered, served())
        app_close(e, c)
    elif conn.app == APP_DNS and (n == 0 or conn.http_keep != answered):
        dns_idle_from(e, c, e.step_at)          # accepted, or a whole message answered: idle from now (bytes
        #                                         dripped without completing one do not hold the place)


cdef void app_close(Engine e, uint32_t c) noexcept:
    """close(2) by the application: the number is free at once; the FIN follows what is queued."""
    cdef Conn* conn = e.conn(c)
    release_handle(&e.hosts[conn.key.host], conn.handle)
    conn.handle = -1
    conn.flags = (conn.flags & ~CF_APP) | CF_FIN_PENDING
    if conn.app == APP_DNS:
        dns_closing(e, c)                       # its idle time no longer counts; its close is bounded


cdef bint flush(Engine e, uint32_t c) noexcept:
    """Send what the peer's window allows, then the FIN once the buffer is empty; True if anything went."""
    cdef Conn* conn = e.conn(c)
    cdef bint sent = False, fin
    cdef int64_t room
    cdef uint32_t n, pending = send_len(e, conn)
    cdef uint8_t flags
    while pending:
        room = <int64_t>conn.snd_wnd - <uint32_t>(conn.snd_nxt - conn.snd_una)
        if room <= 0:
            break
        n = min(<uint32_t>conn.mss, pending)
        if <int64_t>n > room:
            n = <uint32_t>room
        if n == 0:
            break                               # a zero MSS sends nothing (Linux would never agree to it)
        pending -= n
        fin = pending == 0 and (conn.flags & CF_FIN_PENDING) != 0
        flags = TCP_ACK | (0 if pending else TCP_PSH) | (TCP_FIN if fin else 0)
        send_queued(e, c, flags, n)
        conn = e.conn(c)
        conn.snd_nxt = conn.snd_nxt + n
        sent = True
        if fin:
            fin_sent(conn)
    if conn.flags & CF_FIN_PENDING and not conn.flags & CF_FIN_SENT and pending == 0:
        send_flags(e, c, TCP_FIN | TCP_ACK, NULL, 0)
        fin_sent(e.conn(c))
        sent = True
    return sent


cdef inline void fin_sent(Conn* conn) noexcept:
    conn.snd_nxt = conn.snd_nxt + 1
    conn.flags |= CF_FIN_SENT
    if conn.state == T_ESTAB:
        conn.state = T_FIN_WAIT_1
    elif conn.state == T_CLOSE_WAIT:
        conn.state = T_LAST_ACK


cdef void accept_due(Engine e, uint32_t k, uint64_t now, bint stamp) noexcept:
    """accept(2) what the application's pace allows by `now`; with `stamp`, each accept's answers
    carry its moment (the clocks' own step) instead of the packet's."""
    cdef Listener* lst = &e.listeners[k]
    cdef uint32_t c
    cdef Conn* conn
    cdef uint64_t at
    cdef ConnBufs* b
    cdef uint8_t* data
    cdef uint32_t n
    while lst.accept_count and lst.ready_ns <= now:
        c = lst.aq_head - 1
        unlink_accept(e, c)
        conn = e.conn(c)
        at = lst.ready_ns if lst.ready_ns > conn.born_ns else conn.born_ns
        lst.ready_ns = at + lst.interval_ns
        if stamp:
            e.step_at = at
        conn.handle = take_handle(&e.hosts[conn.key.host])
        conn.flags |= CF_APP
        lst.accepted += 1
        e.count(conn.key.host, C_ACCEPTED, 1)
        b = conn.bufs
        if b != NULL and b.recv.end > b.recv.off:       # what arrived before accept(), read at once
            data, n = b.recv.data + b.recv.off, b.recv.end - b.recv.off
            b.recv.data, b.recv.off, b.recv.end, b.recv.cap = NULL, 0, 0, 0
            feed(e, c, data, n)
            free(data)
        else:
            feed(e, c, NULL, 0)
        flush(e, c)
        free_idle(e, c)
        lst = &e.listeners[k]


cdef void unlink_accept(Engine e, uint32_t c) noexcept:
    cdef Conn* conn = e.conn(c)
    cdef Listener* lst = &e.listeners[conn.listener]
    if conn.aprev:
        e.conn(conn.aprev - 1).anext = conn.anext
    else:
        lst.aq_head = conn.anext
    if conn.anext:
        e.conn(conn.anext - 1).aprev = conn.aprev
    else:
        lst.aq_tail = conn.aprev
    conn.aprev = conn.anext = 0
    conn.flags &= ~CF_ACCEPT_QUEUE
    lst.accept_count -= 1
    if lst.accept_count == 0:
        e.waiting -= 1


cdef void remove_conn(Engine e, uint32_t c) noexcept:
    cdef Conn* conn = e.conn(c)
    cdef Listener* lst = &e.listeners[conn.listener]
    if conn.flags & CF_SYN_QUEUE:
        lst.syn_count -= 1
    lst.dns_open -= conn.app == APP_DNS
    if conn.flags & CF_ACCEPT_QUEUE:
        unlink_accept(e, c)                 # reset before accept(): never handed out
    if conn.work != W_NONE:
        drop_work(e, c, e.step_at)          # reset mid-request: the worker moves on
        conn = e.conn(c)
    if conn.handle >= 0:
        release_handle(&e.hosts[conn.key.host], conn.handle)   # the app sees the error and closes
    set_deadline(e, c, 0)
    conn = e.conn(c)
    e.peer_ref(conn, -1)
    free_bufs(conn)
    conn.state = T_CLOSED
    conn.flags = 0
    conn.handle = -1
    slab_remove(&e.conns, c)
