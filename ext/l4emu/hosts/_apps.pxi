# The applications behind emulated sockets, as small state machines: HTTP/1.1 answering each
# request with its listener's template (nothing of the answer is stored per connection: a queue of
# answers is a count), echo (real bytes, buffered only while the peer's window holds them back),
# discard. An app sees a byte stream, never packets. Included by _engine.pyx.

cdef enum:
    MAX_HEADER_BYTES = 64 << 10     # a request header block larger than this is refused (431), as servers do
    MAX_BODY_BYTES = 1 << 30


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
    if conn.app == APP_HTTP:
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
    if conn.app != APP_HTTP:
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
    return http_data(e, c, data, n)


cdef inline void http_queue(Conn* conn, int kind) noexcept:
    if kind == R_OK:
        conn.http_keep += 1
    else:
        conn.http_final = kind


cdef inline int64_t find_blank_line(const uint8_t* p, uint32_t n) noexcept:
    """Where the first CRLF CRLF starts, or -1."""
    cdef uint32_t i = 0
    while i + 4 <= n:
        if p[i] == 13 and p[i + 1] == 10 and p[i + 2] == 13 and p[i + 3] == 10:
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
                http_queue(conn, R_TOO_LARGE)
                closing = True
            break
        kind = http_answer(p + pos, <uint32_t>end, &body)
        pos += <uint32_t>end + 4
        http_queue(conn, kind)
        if kind != R_OK:
            closing = True
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
    line_end = 0
    while line_end < n and not (head[line_end] == 13 and line_end + 1 < n and head[line_end + 1] == 10):
        line_end += 1
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
        line_end = i
        while line_end < n and not (head[line_end] == 13 and line_end + 1 < n and head[line_end + 1] == 10):
            line_end += 1
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
