# A UDP request-reply application with finite capacity (a DNS-like server): each datagram is a request,
# served by one of `workers` for a drawn service time, waiting first come first served in a queue of
# at most `backlog` datagrams (the socket's receive buffer; a datagram that finds it full is dropped,
# as Linux counts Udp RcvbufErrors). The answer is `response_bytes` of data ("served by <backend>"
# then padding) in as many datagrams as it takes without IP fragmentation. A request is
#   "L4RQ" | its id (u32) | padding to its size
# and each datagram of its answer
#   "L4RA" | the request's id | the answer's bytes still to come after this one (u32) | data
# so a client knows which request a datagram answers and which datagram is the last. The magic words
# keep tshark's heuristic dissectors (RTP, RTCP, ...) from taking the datagrams for theirs.
# Included by _engine.pyx; the engine's clock runs udp_advance.

cdef enum:
    UDP_MAGIC_LEN = 4
    UDP_ID_LEN = 4
    UDP_ANSWER_HEADER = 12          # magic, id, bytes still to come
    UDP_DATA_V4 = 1500 - 20 - 8 - UDP_ANSWER_HEADER     # a 1500-byte MTU, no fragments
    UDP_DATA_V6 = 1500 - 40 - 8 - UDP_ANSWER_HEADER

cdef const char* ANSWER_MAGIC = b"L4RA"


cdef int udp_capacity(UdpSock* u, uint32_t workers, uint32_t backlog, service, response,
                      uint64_t seed64) except -1:
    """A socket turned request-reply: its workers, queue, distributions and generator."""
    u.sized = 1
    u.sized_response = response is not None
    u.workers, u.backlog = workers, backlog
    rng_seed(&u.rng, seed64)
    set_dist(&u.service, service or ("fixed", 0.0, 0.0, ()))
    set_dist(&u.response, response or ("fixed", 0.0, 0.0, ()))
    return 0


cdef inline void udp_account(UdpSock* u, uint64_t now) noexcept:
    """Integrate the wait queue's length and the busy workers up to `now` (before either changes)."""
    if u.last_ns and now > u.last_ns:
        u.queue_area += <double>u.wq_len * <double>(now - u.last_ns)
        u.busy_area += <double>u.busy * <double>(now - u.last_ns)
    if now > u.last_ns:
        u.last_ns = now


cdef int64_t new_job(Engine e, uint32_t s, Seg* seg) noexcept:
    """A job for the request in `seg` holding its client's link (-1: out of memory, the request is lost)."""
    cdef uint32_t j
    cdef UdpJob* grown
    cdef UdpJob* job
    if e.free_job:
        j = e.free_job - 1
        e.free_job = e.jobs[j].next
    else:
        if e.n_jobs == e.jobs_cap:
            grown = <UdpJob*>realloc(e.jobs, (e.jobs_cap * 2 + MIN_RECORDS) * sizeof(UdpJob))
            if grown == NULL:
                return -1
            e.jobs = grown
            e.jobs_cap = e.jobs_cap * 2 + MIN_RECORDS
        j = e.n_jobs
        e.n_jobs += 1
    job = &e.jobs[j]
    memset(job, 0, sizeof(UdpJob))
    memcpy(job.peer, seg.src, 4 if seg.family == 4 else 16)
    job.family, job.peer_port, job.sock = seg.family, seg.sport, s
    if seg.plen > UDP_MAGIC_LEN:             # the id after the request's magic (zeros when it is short)
        memcpy(job.id, seg.payload + UDP_MAGIC_LEN,
               seg.plen - UDP_MAGIC_LEN if seg.plen < UDP_MAGIC_LEN + UDP_ID_LEN else UDP_ID_LEN)
    if e.cur_peer >= 0:
        job.peer_rec = <uint32_t>e.cur_peer + 1
        (<Peer*>rec(&e.peers, e.cur_peer)).refs += 1
    return j


cdef void free_job(Engine e, uint32_t j) noexcept:
    cdef UdpJob* job = &e.jobs[j]
    cdef Peer* p
    if job.peer_rec:
        p = <Peer*>rec(&e.peers, job.peer_rec - 1)
        p.refs -= 1
        if p.refs == 0:
            e._prune_later(job.peer_rec - 1)
        job.peer_rec = 0
    job.next = e.free_job
    e.free_job = j + 1


cdef void udp_request(Engine e, uint32_t h, uint32_t s, Seg* seg, uint64_t now) noexcept:
    """One request datagram in: answered at once (no workers), served, queued, or dropped (queue full)."""
    cdef UdpSock* u = &e.udps[s]
    cdef int64_t j
    if u.workers == 0:
        j = new_job(e, s, seg)
        if j >= 0:
            udp_reply(e, <uint32_t>j)
            free_job(e, <uint32_t>j)
        return
    if u.busy >= u.workers and u.wq_len >= u.backlog:
        u.dropped += 1
        e.count(h, C_UDP_RCVBUF_ERRORS, 1)
        return
    j = new_job(e, s, seg)
    if j < 0:
        return
    u = &e.udps[s]
    if u.busy < u.workers:
        udp_serve(e, <uint32_t>j, now)
        return
    udp_account(u, now)
    if u.wq_tail:
        e.jobs[u.wq_tail - 1].next = <uint32_t>j + 1
    else:
        u.wq_head = <uint32_t>j + 1
    u.wq_tail = <uint32_t>j + 1
    u.wq_len += 1
    u.waited += 1
    if u.wq_len > u.queue_max:
        u.queue_max = u.wq_len


cdef void udp_serve(Engine e, uint32_t j, uint64_t now) noexcept:
    """A worker takes the job until its service time (drawn now) has passed."""
    cdef UdpSock* u = &e.udps[e.jobs[j].sock]
    udp_account(u, now)
    u.busy += 1
    uj_push(e, now + draw_ns(&u.service, &u.rng), j)


cdef void udp_served(Engine e, uint32_t j, uint64_t now) noexcept:
    """A service ends at `now`: the answer goes out, the worker takes the job that waited longest."""
    cdef uint32_t s = e.jobs[j].sock, nxt
    cdef UdpSock* u = &e.udps[s]
    udp_account(u, now)
    u.busy -= 1
    u.served += 1
    e.step_at = now
    udp_reply(e, j)
    free_job(e, j)
    u = &e.udps[s]
    while u.busy < u.workers and u.wq_head:
        nxt = u.wq_head - 1
        udp_account(u, now)
        u.wq_head = e.jobs[nxt].next
        if u.wq_head == 0:
            u.wq_tail = 0
        u.wq_len -= 1
        e.jobs[nxt].next = 0
        udp_serve(e, nxt, now)


cdef void udp_advance(Engine e, uint64_t now) noexcept:
    """Every service that ends by `now`, in time order."""
    cdef uint32_t j
    cdef uint64_t when
    while e.n_uj and e.uj_when[0] <= now:
        when, j = e.uj_when[0], e.uj_job[0]
        uj_pop(e)
        udp_served(e, j, when)


cdef void udp_reply(Engine e, uint32_t j) noexcept:
    """The job's answer: its data split into datagrams of at most UDP_DATA_Vn bytes (one at least)."""
    cdef UdpJob* job = &e.jobs[j]
    cdef UdpSock* u = &e.udps[job.sock]
    cdef Host* host = &e.hosts[u.host]
    cdef uint64_t size = draw_bytes(&u.response, &u.rng) if u.sized_response else u.text_len
    cdef uint64_t sent = 0, left
    cdef uint32_t chunk = UDP_DATA_V4 if host.family == 4 else UDP_DATA_V6, part, iph = ip_len(host.family)
    cdef uint32_t ulen, have
    cdef uint16_t csum
    cdef uint8_t* p
    cdef uint8_t* d
    while True:
        part = <uint32_t>(size - sent if size - sent < chunk else chunk)
        left = size - sent - part
        ulen = UDP_HEADER_LEN + UDP_ANSWER_HEADER + part
        host.ip_id += 1
        p = e.reserve(iph + ulen)
        if p == NULL:
            return                              # out of memory: the rest of the answer is lost
        ip_header(p, host.family, host.addr, job.peer, IPPROTO_UDP, ulen, host.ip_id)
        d = p + iph
        store16(d + L4_SPORT, u.port)
        store16(d + L4_DPORT, job.peer_port)
        store16(d + UDP_LEN, ulen)
        store16(d + UDP_CSUM, 0)
        memcpy(d + UDP_HEADER_LEN, ANSWER_MAGIC, UDP_MAGIC_LEN)
        memcpy(d + UDP_HEADER_LEN + UDP_MAGIC_LEN, job.id, UDP_ID_LEN)
        store32(d + UDP_HEADER_LEN + UDP_MAGIC_LEN + UDP_ID_LEN,
                <uint32_t>(left if left < 0xFFFFFFFF else 0xFFFFFFFF))
        # the data: "served by <backend>\n" from its start, then padding
        have = <uint32_t>(u.text_len - sent if sent < u.text_len else 0)
        if have > part:
            have = part
        if have:
            memcpy(d + UDP_HEADER_LEN + UDP_ANSWER_HEADER, u.text + sent, have)
        memset(d + UDP_HEADER_LEN + UDP_ANSWER_HEADER + have, PAD_BYTE, part - have)
        csum = internet_checksum(sum_bytes(pseudo_sum(host.family, host.addr, job.peer, IPPROTO_UDP, ulen), d, ulen))
        store16(d + UDP_CSUM, csum if csum else 0xFFFF)     # RFC 768: zero would mean "no checksum"
        u.answered += 1
        e.count(u.host, C_DATAGRAMS_OUT, 1)
        sent += part
        if sent >= size:
            return


# ---- the service heap: (end, job), earliest first --------------------------------------------------
cdef inline bint uj_less(Engine e, uint32_t a, uint32_t b) noexcept:
    return e.uj_when[a] < e.uj_when[b] or (e.uj_when[a] == e.uj_when[b] and e.uj_job[a] < e.uj_job[b])


cdef inline void uj_swap(Engine e, uint32_t a, uint32_t b) noexcept:
    e.uj_when[a], e.uj_when[b] = e.uj_when[b], e.uj_when[a]
    e.uj_job[a], e.uj_job[b] = e.uj_job[b], e.uj_job[a]


cdef void uj_push(Engine e, uint64_t when, uint32_t j) noexcept:
    cdef uint32_t k, parent
    cdef uint64_t* w
    cdef uint32_t* t
    if e.n_uj == e.uj_cap:
        w = <uint64_t*>realloc(e.uj_when, (e.uj_cap * 2 + MIN_RECORDS) * sizeof(uint64_t))
        if w != NULL:
            e.uj_when = w
        t = <uint32_t*>realloc(e.uj_job, (e.uj_cap * 2 + MIN_RECORDS) * sizeof(uint32_t))
        if t != NULL:
            e.uj_job = t
        if w == NULL or t == NULL:
            return                              # no room: the service never ends (counted nowhere)
        e.uj_cap = e.uj_cap * 2 + MIN_RECORDS
    k = e.n_uj
    e.n_uj += 1
    e.uj_when[k], e.uj_job[k] = when, j
    while k:
        parent = (k - 1) // 2
        if not uj_less(e, k, parent):
            break
        uj_swap(e, k, parent)
        k = parent


cdef void uj_pop(Engine e) noexcept:
    cdef uint32_t k = 0, child
    e.n_uj -= 1
    if e.n_uj == 0:
        return
    e.uj_when[0], e.uj_job[0] = e.uj_when[e.n_uj], e.uj_job[e.n_uj]
    while True:
        child = 2 * k + 1
        if child >= e.n_uj:
            return
        if child + 1 < e.n_uj and uj_less(e, child + 1, child):
            child += 1
        if not uj_less(e, child, k):
            return
        uj_swap(e, k, child)
        k = child
