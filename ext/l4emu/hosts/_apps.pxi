# The applications behind emulated sockets, as small state machines: HTTP/1.1 answering each
# request with its listener's template (nothing of the answer is stored per connection: a queue of
# answers is a count), echo (real bytes, buffered only while the peer's window holds them back),
# discard. An app sees a byte stream, never packets. Included by _engine.pyx.

cdef enum:
    MAX_HEADER_BYTES = 64 << 10     # a request header block larger than this is refused (431), as servers do
    MAX_BODY_BYTES = 1 << 30
    PAD_BYTE = 0x78                 # 'x': a sized answer's body after "served by <backend>"


# ---- a connection's buffers, allocated while one of them holds something ----------------------------
cdef inline ConnBufs* conn_bufs(Conn* conn) noexcept:
    if conn.bufs == NULL:
        conn.bufs = <ConnBufs*>calloc(1, sizeof(ConnBufs))
    return conn.bufs


cdef inline uint32_t buf_len(Buf* b) noexcept:
    return b.end - b.off


cdef void buf_append(Conn* conn, Buf* b, const uint8_t* data, uint32_t n) noexcept:
    cdef uint32_t have
    cdef uint8_t* grown
    if conn.bufs == NULL or n == 0:
        return                                  # out of memory: the bytes are lost
    have = b.end - b.off
    if b.off and b.end + n > b.cap:             # move what is left to the front first
        memmove(b.data, b.data + b.off, have)
        b.off, b.end = 0, have
    if b.end + n > b.cap:
        grown = <uint8_t*>realloc(b.data, max(b.cap * 2, b.end + n))
        if grown == NULL:
            return
        b.data = grown
        b.cap = max(b.cap * 2, b.end + n)
    memcpy(b.data + b.end, data, n)
    b.end += n


cdef inline void buf_clear(Buf* b) noexcept:
    free(b.data)
    b.data = NULL
    b.off = b.end = b.cap = 0


cdef void free_bufs(Conn* conn) noexcept:
    if conn.bufs != NULL:
        buf_clear(&conn.bufs.recv)
        buf_clear(&conn.bufs.send)
        buf_clear(&conn.bufs.req)
        free(conn.bufs)
        conn.bufs = NULL


cdef void free_idle(Engine e, uint32_t c) noexcept:
    """Give back a live connection's buffers once every one is empty."""
    cdef Conn* conn = e.conn(c)
    cdef ConnBufs* b = conn.bufs
    if conn.state == T_CLOSED or b == NULL:
        return
    if buf_len(&b.recv) == 0 and buf_len(&b.send) == 0 and buf_len(&b.req) == 0:
        free_bufs(conn)


# ---- the send queue: echo bytes, or HTTP answers by count ---------------------------------------------
cdef uint32_t send_len(Engine e, Conn* conn) noexcept:
    """Bytes written by the application and not sent yet."""
    cdef Listener* lst
    if conn.app == APP_HTTP and not e.listeners[conn.listener].sized:
        if not conn.http_keep and not conn.http_final:
            return 0
        lst = &e.listeners[conn.listener]
        return (conn.http_keep * lst.response_len[<int>R_OK] + lst.response_len[conn.http_final] - conn.http_off
                if conn.http_final else conn.http_keep * lst.response_len[<int>R_OK] - conn.http_off)
    return buf_len(&conn.bufs.send) if conn.bufs != NULL else 0


cdef void take_queued(Engine e, uint32_t c, uint8_t* out, uint32_t n) noexcept:
    """Copy the first n queued bytes to `out` and drop them from the queue."""
    cdef Conn* conn = e.conn(c)
    cdef Listener* lst
    cdef Buf* b
    cdef uint32_t kind, part
    if conn.app != APP_HTTP or e.listeners[conn.listener].sized:
        b = &conn.bufs.send
        memcpy(out, b.data + b.off, n)
        b.off += n
        if b.off == b.end:
            buf_clear(b)
        return
    lst = &e.listeners[conn.listener]
    while n:
        kind = R_OK if conn.http_keep else conn.http_final
        part = min(n, lst.response_len[kind] - conn.http_off)
        memcpy(out, lst.responses[kind] + conn.http_off, part)
        out += part
        n -= part
        conn.http_off += part
        if conn.http_off == lst.response_len[kind]:
            conn.http_off = 0
            if conn.http_keep:
                conn.http_keep -= 1
            else:
                conn.http_final = R_NONE


cdef void send_queued(Engine e, uint32_t c, uint8_t flags, uint32_t n) noexcept:
    """One segment carrying the next n queued bytes."""
    cdef Conn* conn = e.conn(c)
    cdef int64_t room = <int64_t>RCVBUF - recv_len(conn)
    cdef uint32_t window = <uint32_t>(room if room > 0 else 0) >> (conn.rcv_shift if conn.flags & CF_SCALING else 0)
    tcp_packet(e, conn.key.host, conn.key.peer, conn.key.port, conn.key.peer_port, conn.snd_nxt, conn.rcv_nxt,
               flags, window, NULL, 0, NULL, n, <int64_t>c)


# ---- the apps ---------------------------------------------------------------------------------------
cdef bint app_data(Engine e, uint32_t c, const uint8_t* data, uint32_t n) noexcept:
    """Data in for a running application; its answer goes to the send queue. True: it closes."""
    cdef Conn* conn = e.conn(c)
    if conn.app == APP_ECHO:
        buf_append(conn, &conn_bufs(conn).send, data, n)
        return False
    if conn.app == APP_DISCARD:
        return False
    if conn.app == APP_DNS:
        return dns_data(e, c, data, n)
    return http_data(e, c, data, n)


cdef inline void http_queue(Conn* conn, int kind) noexcept:
    if kind == R_OK:
        conn.http_keep += 1
    else:
        conn.http_final = kind


cdef bint http_request(Engine e, uint32_t c, int kind) noexcept:
    """One request read whole (or refused: kind is its answer). Without workers it is answered at once;
    with them a worker serves it (in order, after the connection's earlier ones) and it is answered
    when its service ends. True: the application closes now (its last answer is written)."""
    cdef Conn* conn = e.conn(c)
    cdef Listener* lst = &e.listeners[conn.listener]
    if lst.workers == 0:
        if lst.sized:
            write_answer(e, c, kind)
        else:
            http_queue(conn, kind)
        return kind != R_OK
    if kind == R_OK or kind == R_OK_CLOSE:
        conn.pending += 1
        if kind == R_OK_CLOSE:
            conn.owed = R_OK_CLOSE              # the last request's answer closes
        if conn.work == W_NONE:
            want_worker(e, c, e.step_at)
        return False
    if conn.pending:
        conn.owed = kind                        # refused after the ones being served: answered after them
        return False
    write_answer(e, c, kind)
    return True


cdef void write_answer(Engine e, uint32_t c, int kind) noexcept:
    """Queue one answer: the listener's template (by count), or, sized, written out per connection:
    a 200's body is `response` bytes drawn per answer, "served by <backend>" then padding."""
    cdef Conn* conn = e.conn(c)
    cdef Listener* lst = &e.listeners[conn.listener]
    cdef char head[160]
    cdef int n
    cdef uint64_t size, have
    cdef uint8_t* body
    if not lst.sized:
        http_queue(conn, kind)
        return
    if kind != R_OK and kind != R_OK_CLOSE:
        buf_append(conn, &conn_bufs(conn).send, lst.responses[kind], lst.response_len[kind])
        return
    size = draw_bytes(&lst.response, &lst.rng)
    n = snprintf(head, sizeof(head), b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %llu\r\n%s\r\n",
                 <unsigned long long>size, b"Connection: close\r\n" if kind == R_OK_CLOSE else b"")
    body = <uint8_t*>malloc(n + size if n + size else 1)
    if body == NULL:
        return                                  # out of memory: the answer is lost
    memcpy(body, head, n)
    have = size if size < lst.body_text_len else lst.body_text_len
    memcpy(body + n, lst.body_text, have)
    memset(body + n + have, PAD_BYTE, size - have)
    buf_append(conn, &conn_bufs(conn).send, body, <uint32_t>(n + size))
    free(body)


# ---- capacity: workers, the queue in front of them, service times on the packet clock --------------
cdef inline void work_account(Listener* lst, uint64_t now) noexcept:
    """Integrate the wait queue's length and the busy workers up to `now` (before either changes)."""
    if lst.last_ns and now > lst.last_ns:
        lst.queue_area += <double>lst.wq_len * <double>(now - lst.last_ns)
        lst.busy_area += <double>lst.busy * <double>(now - lst.last_ns)
    if now > lst.last_ns:
        lst.last_ns = now


cdef void want_worker(Engine e, uint32_t c, uint64_t now) noexcept:
    """The connection's next request goes to a free worker, or waits for one (first come, first served)."""
    cdef Conn* conn = e.conn(c)
    cdef Listener* lst = &e.listeners[conn.listener]
    if lst.busy < lst.workers:
        serve(e, c, now)
        return
    work_account(lst, now)
    conn.work = W_WAITING
    conn.anext = 0
    conn.aprev = lst.wq_tail
    if lst.wq_tail:
        e.conn(lst.wq_tail - 1).anext = c + 1
    else:
        lst.wq_head = c + 1
    lst.wq_tail = c + 1
    lst.wq_len += 1
    lst.waited += 1
    if lst.wq_len > lst.queue_max:
        lst.queue_max = lst.wq_len


cdef void unlink_waiting(Engine e, uint32_t c, uint64_t now) noexcept:
    cdef Conn* conn = e.conn(c)
    cdef Listener* lst = &e.listeners[conn.listener]
    work_account(lst, now)
    if conn.aprev:
        e.conn(conn.aprev - 1).anext = conn.anext
    else:
        lst.wq_head = conn.anext
    if conn.anext:
        e.conn(conn.anext - 1).aprev = conn.aprev
    else:
        lst.wq_tail = conn.aprev
    conn.aprev = conn.anext = 0
    conn.work = W_NONE
    lst.wq_len -= 1


cdef void serve(Engine e, uint32_t c, uint64_t now) noexcept:
    """A worker takes the connection's next request until its service time (drawn now) has passed."""
    cdef Conn* conn = e.conn(c)
    cdef Listener* lst = &e.listeners[conn.listener]
    work_account(lst, now)
    lst.busy += 1
    conn.work = W_SERVING
    set_deadline(e, c, now + draw_ns(&lst.service, &lst.rng))


cdef void next_waiting(Engine e, uint32_t k, uint64_t now) noexcept:
    """Free workers take the waiting connections, oldest first."""
    cdef Listener* lst = &e.listeners[k]
    cdef uint32_t c
    while lst.busy < lst.workers and lst.wq_head:
        c = lst.wq_head - 1
        unlink_waiting(e, c, now)
        serve(e, c, now)
        lst = &e.listeners[k]


cdef void served(Engine e, uint32_t c, uint64_t now) noexcept:
    """A service ends at `now`: its answer is written, the connection's next request (or the answer
    owed after them) follows, and the worker takes whoever waits longest."""
    cdef Conn* conn = e.conn(c)
    cdef uint32_t k = conn.listener
    cdef Listener* lst = &e.listeners[k]
    cdef bint close = False
    set_deadline(e, c, 0)
    conn = e.conn(c)
    work_account(lst, now)
    lst.busy -= 1
    lst.served += 1
    conn.work = W_NONE
    conn.pending -= 1
    e.step_at = now
    if conn.pending:
        write_answer(e, c, R_OK)
        want_worker(e, c, now)
    else:
        write_answer(e, c, R_OK_CLOSE if conn.owed == R_OK_CLOSE else R_OK)
        conn = e.conn(c)
        if conn.owed != R_NONE and conn.owed != R_OK_CLOSE:
            write_answer(e, c, conn.owed)
        conn = e.conn(c)
        close = conn.owed != R_NONE or conn.flags & CF_PEER_FIN
        conn.owed = R_NONE
    if close:
        app_close(e, c)
    flush(e, c)
    free_idle(e, c)
    next_waiting(e, k, now)


cdef void drop_work(Engine e, uint32_t c, uint64_t now) noexcept:
    """A connection going away mid-request: out of the wait queue, or its worker freed for the next."""
    cdef Conn* conn = e.conn(c)
    cdef uint32_t k = conn.listener
    cdef Listener* lst = &e.listeners[k]
    if conn.work == W_WAITING:
        unlink_waiting(e, c, now)
    elif conn.work == W_SERVING:
        work_account(lst, now)
        lst.busy -= 1
        conn.work = W_NONE
        next_waiting(e, k, now)
    e.conn(c).pending = 0


cdef inline uint64_t draw_ns(const Dist* d, Rng* rng) noexcept:
    cdef double v = dist_sample(d, rng)
    return <uint64_t>llround(v * NS) if v > 0 else 0


cdef inline uint64_t draw_bytes(const Dist* d, Rng* rng) noexcept:
    cdef double v = dist_sample(d, rng)
    return <uint64_t>llround(v) if v > 0 else 0


cdef inline int64_t find_blank_line(const uint8_t* p, uint32_t n) noexcept:
    """Where the first CRLF CRLF starts, or -1 (memchr finds each CR)."""
    cdef uint32_t i = 0
    cdef const uint8_t* cr
    while i + 4 <= n:
        cr = <const uint8_t*>memchr(p + i, 13, n - 3 - i)
        if cr == NULL:
            return -1
        i = <uint32_t>(cr - p)
        if p[i + 1] == 10 and p[i + 2] == 13 and p[i + 3] == 10:
            return i
        i += 1
    return -1


cdef bint http_data(Engine e, uint32_t c, const uint8_t* data, uint32_t n) noexcept:
    """HTTP/1.1: answers each complete request (header block, then Content-Length body) with 200 and
    "served by <backend>"; closes when the request says close or is HTTP/1.0 (keep-alive aside), or
    on a bad request (400) or a header block past MAX_HEADER_BYTES (431)."""
    cdef Conn* conn = e.conn(c)
    cdef Buf* req = &conn.bufs.req if conn.bufs != NULL else NULL
    cdef const uint8_t* p
    cdef uint32_t length, pos = 0, taken
    cdef int64_t end
    cdef int kind
    cdef bint closing = False
    cdef uint32_t body
    if conn.owed != R_NONE:
        return False                            # a closing answer is owed: nothing after it is read
    if req != NULL and buf_len(req):            # a header block begun before: go on from it
        buf_append(conn, req, data, n)
        p, length = req.data + req.off, buf_len(req)
    else:
        p, length = data, n
    while True:
        if conn.body_left:
            taken = min(conn.body_left, length - pos)
            conn.body_left -= taken
            pos += taken
            if conn.body_left:
                break
        end = find_blank_line(p + pos, length - pos)
        if end < 0:
            if length - pos > MAX_HEADER_BYTES:
                closing = http_request(e, c, R_TOO_LARGE)
                conn = e.conn(c)
            break
        kind = http_answer(p + pos, <uint32_t>end, &body)
        pos += <uint32_t>end + 4
        closing = http_request(e, c, kind)
        conn = e.conn(c)
        if kind != R_OK:
            break
        conn.body_left = body
    # What is left is the start of the next header block (nothing, once closing).
    if closing or pos == length:
        if req != NULL:
            buf_clear(req)
    elif req != NULL and buf_len(req):
        req.off += pos
    else:
        buf_append(conn, &conn_bufs(conn).req, p + pos, length - pos)
    return closing


cdef inline bint py_space(uint8_t b) noexcept:
    """str.isspace() of a Latin-1 character (the request is decoded as Latin-1)."""
    return (9 <= b <= 13) or (28 <= b <= 32) or b == 0x85 or b == 0xA0


cdef inline void strip(const uint8_t** p, uint32_t* n) noexcept:
    while n[0] and py_space(p[0][0]):
        p[0] += 1
        n[0] -= 1
    while n[0] and py_space(p[0][n[0] - 1]):
        n[0] -= 1


cdef inline bint same_lower(const uint8_t* p, uint32_t n, const char* word) noexcept:
    """p.lower() == word for an ASCII word (no Latin-1 letter lowers to ASCII)."""
    cdef uint32_t i = 0
    while i < n:
        if word[i] == 0:
            return False
        if (p[i] + 32 if 65 <= p[i] <= 90 else p[i]) != <uint8_t>word[i]:
            return False
        i += 1
    return word[n] == 0


cdef inline uint32_t line_end_from(const uint8_t* head, uint32_t i, uint32_t n) noexcept:
    """Where the first CRLF at or after i starts (n: none); memchr finds each CR."""
    cdef const uint8_t* cr
    while i < n:
        cr = <const uint8_t*>memchr(head + i, 13, n - i)
        if cr == NULL:
            return n
        i = <uint32_t>(cr - head)
        if i + 1 < n and head[i + 1] == 10:
            return i
        i += 1
    return n


cdef int http_answer(const uint8_t* head, uint32_t n, uint32_t* body) noexcept:
    """The answer to one header block and the length of the body that follows it."""
    cdef uint32_t i, line_end, spaces = 0, second = 0, name_n, value_n, cl_n = 1, conn_n = 0
    cdef const uint8_t* line
    cdef const uint8_t* name
    cdef const uint8_t* value
    cdef const uint8_t* cl = <const uint8_t*>"0"
    cdef const uint8_t* connection = NULL
    cdef uint64_t length = 0
    cdef bint http10, close
    body[0] = 0
    # The request line: exactly three words split on single spaces, the third HTTP/1.x.
    line_end = line_end_from(head, 0, n)
    for i in range(line_end):
        if head[i] == 32:
            spaces += 1
            if spaces == 2:
                second = i + 1
    if spaces != 2 or line_end - second < 7 or memcmp(head + second, b"HTTP/1.", 7) != 0:
        return R_BAD
    http10 = line_end - second == 8 and memcmp(head + second, b"HTTP/1.0", 8) == 0
    # Header lines "name: value"; the last of a name counts.
    i = line_end + 2
    while i <= n and line_end < n:
        line = head + i
        line_end = line_end_from(head, i, n)
        name_n = 0
        while i + name_n < line_end and head[i + name_n] != 58:
            name_n += 1
        if i + name_n == line_end:
            return R_BAD                        # no colon
        name, value = line, line + name_n + 1
        value_n = line_end - i - name_n - 1
        strip(&name, &name_n)
        strip(&value, &value_n)
        if same_lower(name, name_n, "content-length"):
            cl, cl_n = value, value_n
        elif same_lower(name, name_n, "connection"):
            connection, conn_n = value, value_n
        i = line_end + 2
    if cl_n == 0:
        return R_BAD
    for i in range(cl_n):
        if not 48 <= cl[i] <= 57:
            return R_BAD
        length = length * 10 + cl[i] - 48
        if length > MAX_BODY_BYTES:
            return R_BAD
    close = (connection != NULL and same_lower(connection, conn_n, "close")) or (
        http10 and not (connection != NULL and same_lower(connection, conn_n, "keep-alive")))
    body[0] = <uint32_t>length
    return R_OK_CLOSE if close else R_OK


cdef uint32_t send_q(Engine e, Conn* conn) noexcept:
    """ss's Send-Q: sent and not acknowledged, written and not sent, and a FIN still to send."""
    return (<uint32_t>(conn.snd_nxt - conn.snd_una) + send_len(e, conn)
            + (1 if conn.flags & CF_FIN_PENDING and not conn.flags & CF_FIN_SENT else 0))
