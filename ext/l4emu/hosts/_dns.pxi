# The "dns" application: DNS over TCP as an authoritative server's side speaks it (RFC 1035 4.2.2,
# RFC 7766). Each message travels behind a 2-byte length; a message split over segments waits in the
# request buffer until it is whole, and several on one connection are answered in order, each answer
# behind its own length. The answer itself comes from Python (Engine.dns: the GSLB's authority, where
# dnspython reads and writes the messages). Every connection's state is bounded: at most DNS_MAX_CONNS
# open per listener (more SYNs are dropped), DNS_MAX_QUERIES answers per connection, DNS_IDLE_NS
# without a message; each limit closes (FIN after what is queued) and is counted, and a closed one the
# client never answers is forgotten DNS_ORPHAN_NS later (else it would hold its place). A length shorter
# than a DNS header, or a message the authority will not answer, closes the connection, counted.
# Included by _engine.pyx.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

cdef enum:
    DNS_LENGTH_BYTES = 2
    DNS_HEADER_BYTES = 12
    DNS_MAX_QUERIES = 100           # per connection, then closed (as Unbound's incoming-num-tcp reuse caps)
    DNS_MAX_CONNS = 150             # per listener (BIND's tcp-clients default)
    DNS_MAX_MESSAGE = 0xFFFF        # what a 2-byte length can say

cdef uint64_t DNS_IDLE_NS = 30 * <uint64_t>NS      # BIND's and Unbound's tcp-idle-timeout default (30 s)
# The path has no loss, so no retransmission ends a close the client never answers: a closed connection
# (FIN-WAIT, LAST-ACK) is forgotten this long after, as Linux's tcp_fin_timeout ends orphans (60 s).
cdef uint64_t DNS_ORPHAN_NS = 60 * <uint64_t>NS


cdef inline bint dns_conn_limited(Engine e, Listener* lst, uint32_t h) noexcept:
    """A SYN for a DNS listener that holds DNS_MAX_CONNS connections already: dropped, counted."""
    if lst.app != APP_DNS or lst.dns_open < DNS_MAX_CONNS:
        return False
    e.count(h, C_DNS_CONN_LIMIT, 1)
    return True


cdef bint dns_data(Engine e, uint32_t c, const uint8_t* data, uint32_t n) noexcept:
    """Bytes of the client's stream: answer every whole message in it. True: the connection closes."""
    cdef Conn* conn = e.conn(c)
    cdef uint32_t h = conn.key.host, length
    cdef Buf* b
    cdef uint8_t prefix[DNS_LENGTH_BYTES]
    if conn_bufs(conn) == NULL:
        return True                             # out of memory: closed rather than a stream lost silently
    buf_append(conn, &conn.bufs.req, data, n)
    while True:
        conn = e.conn(c)
        b = &conn.bufs.req
        if buf_len(b) < DNS_LENGTH_BYTES:
            return False
        length = load16(b.data + b.off)
        if length < DNS_HEADER_BYTES:
            e.count(h, C_DNS_BAD_LENGTH, 1)
            buf_clear(b)
            return True
        if buf_len(b) < DNS_LENGTH_BYTES + length:
            return False                        # the rest of the message is still to come
        e.count(h, C_DNS_QUERIES, 1)
        answer = dns_answer(e, c, b.data + b.off + DNS_LENGTH_BYTES, length)
        conn = e.conn(c)
        b = &conn.bufs.req
        b.off += DNS_LENGTH_BYTES + length
        if b.off == b.end:
            buf_clear(b)
        if answer is None:
            e.count(h, C_DNS_UNANSWERED, 1)
            buf_clear(b)
            return True
        store16(prefix, <uint16_t>PyBytes_GET_SIZE(answer))
        buf_append(conn, &conn_bufs(conn).send, prefix, DNS_LENGTH_BYTES)
        buf_append(conn, &conn.bufs.send, <const uint8_t*>PyBytes_AS_STRING(answer),
                   <uint32_t>PyBytes_GET_SIZE(answer))
        conn.http_keep += 1                     # dns: messages answered on this connection
        if conn.http_keep >= DNS_MAX_QUERIES:
            e.count(h, C_DNS_QUERY_LIMIT, 1)
            buf_clear(&conn.bufs.req)
            return True


cdef object dns_answer(Engine e, uint32_t c, const uint8_t* message, uint32_t n) noexcept:
    """Engine.dns's answer to one message (bytes of at most DNS_MAX_MESSAGE), or None: not answered
    (the callable said so, returned something else, or raised; the caller counts it)."""
    cdef Conn* conn = e.conn(c)
    cdef Host* host = &e.hosts[conn.key.host]
    cdef uint32_t alen = 4 if conn.key.family == 4 else 16
    try:
        answer = e.dns((<const char*>message)[:n], (<const char*>conn.key.peer)[:alen],
                       (<const char*>host.addr)[:alen], conn.key.port)
    except Exception:                           # noqa: the callable's bug becomes a counted close, not a crash
        return None
    if type(answer) is not bytes or PyBytes_GET_SIZE(answer) > DNS_MAX_MESSAGE:
        return None
    return answer


cdef inline void dns_idle_from(Engine e, uint32_t c, uint64_t now) noexcept:
    """A DNS connection with nothing to read closes DNS_IDLE_NS from `now` unless a message comes."""
    set_deadline(e, c, now + DNS_IDLE_NS)


cdef void dns_idle(Engine e, uint32_t c, uint64_t now) noexcept:
    """Its idle time is up: the server closes (FIN after what is queued), counted."""
    cdef Conn* conn = e.conn(c)
    set_deadline(e, c, 0)
    e.step_at = now
    e.count(conn.key.host, C_DNS_IDLE_CLOSED, 1)
    app_close(e, c)
    flush(e, c)
    free_idle(e, c)


cdef inline void dns_closing(Engine e, uint32_t c) noexcept:
    """The application closed: the idle time stops, and the close must end within DNS_ORPHAN_NS (the
    client's FIN and ACK overwrite this with TIME-WAIT's deadline, or remove the connection)."""
    set_deadline(e, c, e.step_at + DNS_ORPHAN_NS)


cdef void dns_orphan_ended(Engine e, uint32_t c, uint64_t now) noexcept:
    """A close the client never answered: forgotten, counted (no RST: the client is gone)."""
    e.step_at = now
    e.count(e.conn(c).key.host, C_DNS_ORPHANS_ENDED, 1)
    remove_conn(e, c)
