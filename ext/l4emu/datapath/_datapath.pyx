"""The packet path: one batch at a time, without the GIL and without a Python object per packet.

Classification follows IPVS in NAT ("Masq") mode: a packet whose tuple is a flow's forward key is
DNATed to its real, one whose tuple is a reply key is SNATed back to the VIP, a TCP SYN (or any UDP
datagram) to a service with no flow is scheduled, everything else passes untouched. TCP states
move by IPVS's table; timeouts run on the packet clock.
"""
from libc.stdlib cimport calloc, malloc, realloc, free
from libc.string cimport memcmp, memcpy, memmove, memset
from l4emu.datapath._batch cimport Batch, V_PASS, V_NEW, V_FORWARD, V_REPLY, V_DROP, V_ANSWER, V_ICMP, V_MORE
from l4emu.datapath._checksum cimport diff_words, apply_diff, apply_diff_native, diff_native, load16
from l4emu.datapath._flowtable cimport (FlowTable, R_EXPIRED, R_NODEST, R_REUSED, key_hash, key_lookup,
                                        make_ref, prefetch_flow, prefetch_slot, ref_index, ref_is_reply, slot_room)
from l4emu.datapath._wire cimport *
from l4emu.datapath._headers cimport parse_packet, PARSED, PARSE_PASS, PARSE_DROP, PARSE_FRAGMENT
from l4emu.schedulers._core cimport Scheduler
from l4emu.datapath._persist cimport find_template, note_template
from l4emu.datapath._icmp cimport rewrite_icmp_error
from l4emu.datapath._forward cimport *
from l4emu.datapath._fragments cimport *
from l4emu.datapath._fullnat cimport *
from l4emu.datapath._reasm cimport *

# The names of _types.pxd's vocabularies, each bound to its enum (checked complete at import).
STATE_NAMES = name_table({
    S_NONE: "NONE", S_ESTABLISHED: "ESTABLISHED", S_SYN_SENT: "SYN_SENT", S_SYN_RECV: "SYN_RECV",
    S_FIN_WAIT: "FIN_WAIT", S_TIME_WAIT: "TIME_WAIT", S_CLOSE: "CLOSE", S_CLOSE_WAIT: "CLOSE_WAIT",
    S_LAST_ACK: "LAST_ACK", S_LISTEN: "LISTEN", S_SYNACK: "SYNACK", S_UDP: "UDP",
}, N_STATES, "ConnState")
DROP_REASONS = name_table({
    D_TRUNCATED_L2: "truncated_l2", D_TRUNCATED_IP: "truncated_ip", D_BAD_IP_HEADER: "bad_ip_header",
    D_TRUNCATED_IPV6_EXT: "truncated_ipv6_ext", D_TRUNCATED_TCP: "truncated_tcp",
    D_BAD_TCP_OFFSET: "bad_tcp_offset", D_TRUNCATED_UDP: "truncated_udp", D_BAD_UDP_LENGTH: "bad_udp_length",
    D_FRAGMENT: "fragment", D_TCP_NOT_SYN: "tcp_not_syn", D_NO_REAL: "no_real", D_TABLE_FULL: "table_full",
    D_REPLY_CLASH: "reply_clash", D_PROBE_LIMIT: "probe_limit", D_TTL_EXCEEDED: "ttl_exceeded",
    D_TOO_BIG: "too_big", D_TOO_BIG_DROPPED: "too_big_dropped", D_TUNNEL_LINK: "tunnel_link_type",
    D_NO_MEMORY: "no_memory", D_FRAG_OVERFLOW: "fragment_overflow", D_FRAG_HELD: "fragment_held",
    D_NO_LOCAL_PORT: "local_ports_exhausted",
}, N_DROP_REASONS, "DropReason")
# ipvsadm's names of the forwarding methods (the Forward column); FullNat as Alibaba's LVS writes it.
FORWARD_NAMES = name_table({FWD_MASQ: "Masq", FWD_DR: "Route", FWD_TUN: "Tunnel", FWD_FULLNAT: "FullNat"}, N_FWD,
                           "FwdMethod")
FORWARD_METHODS = {"masq": FWD_MASQ, "dr": FWD_DR, "tun": FWD_TUN, "fullnat": FWD_FULLNAT}
TUN_TYPES = {"ipip": TUN_IPIP, "gue": TUN_GUE, "gre": TUN_GRE}
TUN_FLAGS = {"nocsum": 0, "csum": TUNF_CSUM, "remcsum": TUNF_REMCSUM}
FRAGMENT_POLICIES = {"drop": FRAG_DROP, "3tuple": FRAG_3TUPLE, "track": FRAG_TRACK, "reassemble": FRAG_REASSEMBLE}
DEFAULT_MTU = 1500
PASS_REASONS = name_table({
    P_NOT_IP: "not_ip", P_OTHER_PROTOCOL: "other_protocol", P_NO_SERVICE: "no_service", P_FRAGMENT: "fragment",
    P_UNATTRIBUTED: "unattributed",
}, N_PASS_REASONS, "PassReason")
# The link types _headers.pxd's link_layer parses; a frame of any other passes untouched as not_ip.
PARSED_LINKTYPES = {LINKTYPE_NULL: "BSD null", LINKTYPE_ETHERNET: "Ethernet", DLT_RAW_BSD: "raw IP",
                    DLT_RAW_OPENBSD: "raw IP", LINKTYPE_RAW: "raw IP", LINKTYPE_LOOP: "BSD loop",
                    LINKTYPE_LINUX_SLL: "Linux cooked (SLL)", LINKTYPE_IPV4: "IPv4", LINKTYPE_IPV6: "IPv6",
                    LINKTYPE_LINUX_SLL2: "Linux cooked (SLL2)"}

cdef enum:
    EV_SYN = 0
    EV_FIN = 1
    EV_ACK = 2
    EV_RST = 3
    DIR_INPUT = 0           # client -> real (IPVS's INPUT rows)
    DIR_OUTPUT = 4          # real -> client (OUTPUT rows)
    DIR_INPUT_ONLY = 8      # client -> real while the real's side was never seen (dr, tun: INPUT-ONLY rows)
    WINDOW = 16             # packets parsed and prefetched ahead of their handling

# IPVS's short state names (ip_vs_proto_tcp.c), for its table below.
cdef enum:
    sNO = S_NONE
    sES = S_ESTABLISHED
    sSS = S_SYN_SENT
    sSR = S_SYN_RECV
    sFW = S_FIN_WAIT
    sTW = S_TIME_WAIT
    sCL = S_CLOSE
    sCW = S_CLOSE_WAIT
    sLA = S_LAST_ACK
    sLI = S_LISTEN
    sSA = S_SYNACK

# IPVS's tcp_states (current kernels), rows [direction + event], columns: the current state.
cdef uint8_t NEXT_STATE[12][11]
NEXT_STATE[:] = [
    # sNO  sES  sSS  sSR  sFW  sTW  sCL  sCW  sLA  sLI  sSA            INPUT
    [sSR, sES, sES, sSR, sSR, sSR, sSR, sSR, sSR, sSR, sSR],    # syn
    [sCL, sCW, sSS, sTW, sTW, sTW, sCL, sCW, sLA, sLI, sTW],    # fin
    [sCL, sES, sSS, sES, sFW, sTW, sCL, sCW, sCL, sLI, sES],    # ack
    [sCL, sCL, sCL, sSR, sCL, sCL, sCL, sCL, sLA, sLI, sSR],    # rst
    #                                                                 OUTPUT
    [sSS, sES, sSS, sSR, sSS, sSS, sSS, sSS, sSS, sLI, sSR],    # syn
    [sTW, sFW, sSS, sTW, sFW, sTW, sCL, sTW, sLA, sLI, sTW],    # fin
    [sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sLA, sES, sES],    # ack
    [sCL, sCL, sSS, sCL, sCL, sTW, sCL, sCL, sCL, sCL, sCL],    # rst
    #                                                                 INPUT-ONLY
    [sSR, sES, sES, sSR, sSR, sSR, sSR, sSR, sSR, sSR, sSR],    # syn
    [sCL, sFW, sSS, sTW, sFW, sTW, sCL, sCW, sLA, sLI, sTW],    # fin
    [sCL, sES, sSS, sES, sFW, sTW, sCL, sCW, sCL, sLI, sES],    # ack
    [sCL, sCL, sCL, sSR, sCL, sCL, sCL, sCL, sLA, sLI, sCL],    # rst
]


cdef inline int tcp_event(uint8_t flags) noexcept nogil:
    if flags & TCP_RST:
        return EV_RST
    if flags & TCP_SYN:
        return EV_SYN
    if flags & TCP_FIN:
        return EV_FIN
    if flags & TCP_ACK:
        return EV_ACK
    return -1


cdef inline bint is_active(uint8_t state) noexcept nogil:
    return state == S_ESTABLISHED or state == S_SYN_SENT or state == S_SYN_RECV or state == S_SYNACK


cdef inline void check_threshold(Real* r) noexcept nogil:
    """IPVS's -x/-y: overloaded at the upper threshold, available again under the lower one."""
    cdef uint32_t conns = r.active + r.inactive
    cdef uint32_t lower = r.lower_threshold if r.lower_threshold else r.upper_threshold * 3 // 4
    if r.upper_threshold == 0:
        return
    if conns >= r.upper_threshold:
        r.flags |= RF_OVERLOADED
    elif conns < lower or lower == 0:
        r.flags &= ~RF_OVERLOADED


cdef void on_flow_removed(void* ctx, Flow* f, int why) noexcept nogil:
    """Keep the real's connection counts right and tell its scheduler."""
    cdef Tables* t = <Tables*>ctx
    cdef Real* r = &t.reals[f.real]
    cdef Service* s = &t.services[r.service]
    cdef SchedulerHook* hook = &t.hooks[r.service]
    if f.flags & F_TEMPLATE:
        return
    if r.forward == FWD_FULLNAT:
        port_give_back(&t.laddrs[f.laddr], f.lport)
    if is_active(f.state):
        r.active -= 1
    else:
        r.inactive -= 1
    t.states[f.state] -= 1
    check_threshold(r)
    if hook.ended != NULL:
        hook.ended(hook.state, &t.reals[s.first_real], s.n_reals, f.real - s.first_real)


cdef inline void apply_l4_diff(uint8_t* csum, uint8_t proto, uint32_t d) noexcept nogil:
    """An RFC 1624 update of a TCP or UDP checksum; a UDP zero means "no checksum" and stays so, and a
    computed zero is sent as 0xFFFF."""
    if proto == IPPROTO_TCP:
        apply_diff(csum, d)
    elif load16(csum) != 0:
        apply_diff(csum, d)
        if load16(csum) == 0:
            csum[0] = csum[1] = 0xFF


cdef inline void rewrite(uint8_t* p, const PacketInfo* info, bint dst_side, const uint8_t* addr,
                         uint16_t port) noexcept nogil:
    """Replace the destination (DNAT) or source (SNAT) address and port, checksums by RFC 1624."""
    cdef uint32_t alen = 4 if info.key.family == 4 else 16
    cdef uint8_t* a = p + info.l3 + addr_offset(info.key.family, dst_side)
    cdef uint8_t* pt = p + info.l4 + (L4_DPORT if dst_side else L4_SPORT)
    cdef uint8_t newport[2]
    cdef uint32_t d
    cdef uint8_t* csum
    newport[0] = <uint8_t>(port >> 8)
    newport[1] = <uint8_t>port
    d = diff_words(0, a, addr, alen)
    if info.key.family == 4:
        apply_diff(p + info.l3 + IP4_CSUM, d)
    if dst_side and info.dst_in_rthdr:
        d = 0                       # the pseudo-header holds the routing header's final address, not this one
    d = diff_words(d, pt, newport, 2)
    csum = p + info.l4 + l4_csum_offset(info.key.proto)
    apply_l4_diff(csum, info.key.proto, d)
    memcpy(a, addr, alen)
    memcpy(pt, newport, 2)


cdef inline void apply_l4_diff_native(uint8_t* csum, uint8_t proto, uint64_t d) noexcept nogil:
    """apply_l4_diff for a diff_native sum."""
    if proto == IPPROTO_TCP:
        apply_diff_native(csum, d)
    elif load16(csum) != 0:
        apply_diff_native(csum, d)
        if load16(csum) == 0:
            csum[0] = csum[1] = 0xFF


cdef inline void rewrite_both(uint8_t* p, const PacketInfo* info, const uint8_t* src, uint16_t sport,
                              const uint8_t* dst, uint16_t dport) noexcept nogil:
    """Full-NAT: both addresses and both ports at once, one RFC 1624 update per checksum. A literal
    address size each: the inline rewrite_both_sized is compiled with constant sizes, its loops and
    copies plain loads and stores (every full-NAT packet comes through here, both ways)."""
    if info.key.family == 4:
        rewrite_both_sized(p, info, 4, src, sport, dst, dport)
    else:
        rewrite_both_sized(p, info, 16, src, sport, dst, dport)


cdef inline void rewrite_both_sized(uint8_t* p, const PacketInfo* info, uint32_t alen, const uint8_t* src,
                                    uint16_t sport, const uint8_t* dst, uint16_t dport) noexcept nogil:
    """rewrite_both for addresses of `alen` bytes, the sums taken four bytes at a time in the machine's
    byte order (diff_native): the same bytes as diff_words and apply_diff would write."""
    cdef int fam = 4 if alen == 4 else 6
    cdef uint8_t* s_at = p + info.l3 + addr_offset(fam, False)
    cdef uint8_t* d_at = p + info.l3 + addr_offset(fam, True)
    cdef uint8_t* ports_at = p + info.l4 + L4_SPORT
    cdef uint8_t ports[4]
    cdef uint64_t ds, dd
    ports[0] = <uint8_t>(sport >> 8)
    ports[1] = <uint8_t>sport
    ports[2] = <uint8_t>(dport >> 8)
    ports[3] = <uint8_t>dport
    ds = diff_native(0, s_at, src, alen)
    dd = diff_native(0, d_at, dst, alen)
    if fam == 4:
        apply_diff_native(p + info.l3 + IP4_CSUM, ds + dd)
    apply_l4_diff_native(p + info.l4 + l4_csum_offset(info.key.proto), info.key.proto,
                         diff_native(ds + (0 if info.dst_in_rthdr else dd), ports_at, ports, 4))
    memcpy(s_at, src, alen)
    memcpy(d_at, dst, alen)
    memcpy(ports_at, ports, 4)


cdef inline bint outer_fits(int fam, bint df, int outer, uint32_t reasm_max, uint32_t mtu) noexcept nogil:
    """May a tunnel packet over the MTU be fragmented on the way out (its outer packet)? IPVS's
    ensure_mtu_is_adequate lets through an IPv4 packet without DF (and, as l4emu always has for an
    IPv4 outer header, a reassembled datagram); over IPv6 an IPv6 packet only when reassembled from
    fragments that each fit (__mtu_check_toobig_v6: frag_max_size). ip6_fragment then splits the outer
    IPv6 packet, as IPVS sets ignore_df."""
    if outer == 4:
        return True
    return not df if fam == 4 else reasm_max != 0 and reasm_max <= mtu


cdef inline uint32_t segment_ip_len(const uint8_t* p, const PacketInfo* info, uint16_t gso_size) noexcept nogil:
    """The IP length the route MTU is held against: the packet's own or, for a GSO super-packet (a TUN's
    TSO/USO, gso_size > 0), one of the segments it stands for: its IP and L4 headers plus gso_size
    bytes (Linux skb_gso_validate_network_len; IPVS's own check skips GSO packets, and the output
    path checks each segment). Without it a 64 KiB super-packet would be refused as too big for ever,
    however small the client's segments are."""
    cdef uint32_t ip_len = info.end - info.l3, seg
    if gso_size == 0 or info.icmp_error or info.fragment:
        return ip_len
    if info.key.proto == IPPROTO_TCP:
        if info.l4 + TCP_DATA_OFFSET >= info.caplen:
            return ip_len
        seg = info.l4 + (p[info.l4 + TCP_DATA_OFFSET] >> 4) * 4u
    else:
        seg = info.l4 + UDP_HEADER_LEN
    seg = seg - info.l3 + gso_size
    return seg if seg < ip_len else ip_len


cdef class Datapath:
    def __cinit__(self, uint32_t max_connections, bytes secret, timeouts, bint conn_reuse_mode=True,
                  bint sloppy_tcp=False, bint expire_nodest_conn=False, bint grow_index=False):
        cdef int i
        self.table = FlowTable(max_connections, secret, grow_index)
        if len(timeouts) != N_STATES:
            raise ValueError(f"timeouts: {N_STATES} values expected, in STATE_NAMES order")
        for i in range(N_STATES):
            self.timeout_ns[i] = <uint64_t>(timeouts[i] * NS)
        self.conn_reuse_mode = conn_reuse_mode
        self.sloppy_tcp = sloppy_tcp
        self.expire_nodest_conn = expire_nodest_conn
        self.schedulers = []
        self.frag_table = <FragEntry*>calloc(FRAG_TRACK_SLOTS, sizeof(FragEntry))
        if self.frag_table == NULL:
            raise MemoryError()
        self.secret = secret
        self.reasm = Reassembler(secret)

    def set_defrag(self, uint64_t high_thresh, uint64_t low_thresh=0, double timeout_s=30.0):
        """Linux's defragmentation limits (ipfrag_high_thresh, ipfrag_low_thresh, ipfrag_time) for
        fragments = "reassemble"; fixed once packets have been processed."""
        if self.started:
            raise RuntimeError("the defragmentation limits are fixed once packets have been processed")
        self.reasm = Reassembler(self.secret, high_thresh, low_thresh, timeout_s)

    def __dealloc__(self):
        cdef int k
        for k in range(FRAG_HOLD_SLOTS):
            free(self.held[k].data)
        free(self.frag_table)
        for k in range(<int>self.n_laddrs):
            free(self.t.laddrs[k].ring)
        free(self.t.laddrs)
        free(self.pools)
        free(self.pool_members)
        free(self.fronts)
        free(self.unattributed_front)
        free(self.unattributed_real)
        free(self.t.services)
        free(self.t.hooks)
        free(self.t.reals)

    def add_service(self, bytes vip, int family, int port, int proto, Scheduler scheduler, reals,
                    double persistence_s=0, bytes persistence_mask=b"", capture_servers=()):
        """Add a service and its reals [(address bytes, port, weight, upper, lower threshold)]; returns its index.

        `capture_servers` [(address bytes, port)] are the servers a capture was taken with (behind another
        load balancer): they stand for the VIP, so their clients are the service's and their packets answers."""
        cdef uint32_t k, n = len(reals)
        cdef Service* s
        cdef Real* r
        if self.started:
            raise RuntimeError("services are fixed once packets have been processed")
        self.t.services = <Service*>realloc(self.t.services, (self.n_services + 1) * sizeof(Service))
        self.t.hooks = <SchedulerHook*>realloc(self.t.hooks, (self.n_services + 1) * sizeof(SchedulerHook))
        self.t.reals = <Real*>realloc(self.t.reals, (self.n_reals + n) * sizeof(Real))
        if self.t.services == NULL or self.t.hooks == NULL or self.t.reals == NULL:
            raise MemoryError()
        s = &self.t.services[self.n_services]
        s.vip = _addr16(vip)
        s.vport = port
        s.proto = proto
        s.family = family
        s.first_real = self.n_reals
        s.n_reals = n
        s.persist_ns = <uint64_t>(persistence_s * NS)
        s.persist_mask = _addr16(persistence_mask or b"\xff" * 16)
        s.mtu = DEFAULT_MTU
        s.fragments = FRAG_DROP
        s.source4 = _addr16(vip)
        s.source6 = _addr16(vip)
        self.t.hooks[self.n_services] = scheduler.hook()
        self.schedulers.append(scheduler)
        for k in range(n):
            address, rport, weight, upper, lower = reals[k]
            r = &self.t.reals[self.n_reals + k]
            memcpy(r, &EMPTY_REAL, sizeof(Real))
            r.addr = _addr16(address)
            r.port = rport
            r.family = family
            r.service = self.n_services
            r.weight = weight
            r.upper_threshold = upper
            r.lower_threshold = lower
        self.n_reals += n
        self._add_fronts(vip, family, port, proto, capture_servers)
        self.n_services += 1
        self.table.bind(self.t.reals, self.t.services, self.t.laddrs, on_flow_removed, &self.t)
        return self.n_services - 1

    def _add_fronts(self, bytes vip, int family, int port, int proto, capture_servers):
        """The service's VIP and capture servers as fronts (and zeroed unattributed counters)."""
        cdef uint32_t k, n = 1 + len(capture_servers)
        cdef Front* fr
        self.fronts = <Front*>realloc(self.fronts, (self.n_fronts + n) * sizeof(Front))
        self.unattributed_front = <uint64_t*>realloc(self.unattributed_front, (self.n_fronts + n) * sizeof(uint64_t))
        self.unattributed_real = <uint64_t*>realloc(self.unattributed_real, max(self.n_reals, 1) * sizeof(uint64_t))
        if self.fronts == NULL or self.unattributed_front == NULL or self.unattributed_real == NULL:
            raise MemoryError()
        for k in range(self.n_reals):
            self.unattributed_real[k] = 0
        for k, (address, fport) in enumerate([(vip, port), *capture_servers]):
            fr = &self.fronts[self.n_fronts + k]
            fr.addr = _addr16(address)
            fr.port = fport
            fr.proto = proto
            fr.family = family
            fr.is_vip = k == 0
            fr.service = self.n_services
            self.unattributed_front[self.n_fronts + k] = 0
        self.n_fronts += n
        self.n_aliases += n - 1

    def set_real(self, uint32_t index, weight=None, down=None):
        """Change a real's weight or down mark (the control plane's admin knob); flows go on."""
        cdef Real* r
        cdef Service* s
        cdef SchedulerHook* hook
        if index >= self.n_reals:
            raise IndexError(f"no real {index}")
        r = &self.t.reals[index]
        s = &self.t.services[r.service]
        hook = &self.t.hooks[r.service]
        if weight is not None:
            self.t.reals[index].weight = weight
        if down is not None:
            if down:
                self.t.reals[index].flags |= RF_DOWN
            else:
                self.t.reals[index].flags &= ~RF_DOWN
        if hook.changed != NULL:
            hook.changed(hook.state, &self.t.reals[s.first_real], s.n_reals)

    def take_over(self, Datapath old, real_map, forget_templates=()):
        """Go on from `old` under this datapath's services and reals (a reload): its connection table, its
        counters, its fragment state. `real_map[k]` is the index here of old real k, or -1 for a real that is
        gone: its connections and templates are removed at once (counted as nodest, as IPVS's
        expire_nodest_conn would), every other flow keeps its real. A kept real keeps its counters and its
        down mark; weights, thresholds and forwarding are this datapath's. Persistence templates of the old
        services in `forget_templates` (whose persistence changed) are removed too."""
        cdef uint32_t k, n = old.table.next_unused
        cdef Flow* f
        cdef Real* r
        cdef Real* was
        cdef int32_t to
        cdef int pass_
        if len(real_map) != old.n_reals:
            raise ValueError(f"real_map: {old.n_reals} entries expected")
        if self.started or self.table.used:
            raise ValueError("take_over wants a fresh datapath (no packet through it yet)")
        for k in range(old.n_reals):
            if not -1 <= real_map[k] < <int64_t>self.n_reals:
                raise ValueError(f"real_map[{k}] = {real_map[k]}: no such real here")
        if [a[:2] for a in self.local_addresses()] != [a[:2] for a in old.local_addresses()]:
            raise ValueError("full-NAT's local addresses differ: their ports cannot be carried over")
        forget = set(forget_templates)
        for pass_ in range(2):      # connections first: their templates must still be found to be released
            for k in range(n):
                f = &old.table.flows[k]
                if not (f.flags & F_IN_USE) or bool(f.flags & F_TEMPLATE) != (pass_ == 1):
                    continue
                if real_map[f.real] < 0 or (pass_ == 1 and old.t.reals[f.real].service in forget):
                    old.table.remove(k, R_NODEST)
        for k in range(n):
            f = &old.table.flows[k]
            if f.flags & F_IN_USE:
                f.real = <uint32_t>real_map[f.real]
        for k in range(old.n_reals):
            to = real_map[k]
            if to < 0:
                continue
            r, was = &self.t.reals[to], &old.t.reals[k]
            r.flags = (r.flags & ~RF_DOWN) | (was.flags & RF_DOWN)
            r.active, r.inactive, r.conns, r.persistent = was.active, was.inactive, was.conns, was.persistent
            r.in_pkts, r.out_pkts, r.in_bytes, r.out_bytes = was.in_pkts, was.out_pkts, was.in_bytes, was.out_bytes
            check_threshold(r)
            self.unattributed_real[to] = old.unattributed_real[k]
        self._take_counters(old, real_map)
        self._take_local_addresses(old)
        self.table = old.table
        self.table.bind(self.t.reals, self.t.services, self.t.laddrs, on_flow_removed, &self.t)
        for k in range(self.n_services):
            if self.t.hooks[k].changed != NULL:
                self.t.hooks[k].changed(self.t.hooks[k].state, &self.t.reals[self.t.services[k].first_real],
                                        self.t.services[k].n_reals)

    cdef void _take_local_addresses(self, Datapath old):
        """take_over's full-NAT part: the two datapaths swap their local addresses' port rings, so the ports
        running connections hold stay lent (each frees its own). The caller checked the addresses match."""
        cdef LocalAddr* mine = self.t.laddrs
        self.t.laddrs, old.t.laddrs = old.t.laddrs, mine

    cdef void _take_counters(self, Datapath old, real_map):
        """take_over's rest: the switch-wide counters, the clock, the fronts' counts and the fragment state
        (the two datapaths swap their fragment tables and reassembly queues, so each frees its own)."""
        cdef uint32_t k, j
        cdef FragEntry* frags
        cdef HeldFragment held
        self.packets, self.bytes, self.clock_ns, self.started = old.packets, old.bytes, old.clock_ns, old.started
        self.rescheduled, self.broken, self.blackholed = old.rescheduled, old.broken, old.blackholed
        memcpy(self.t.states, old.t.states, sizeof(self.t.states))     # after take_over removed the gone reals'
        memcpy(self.verdicts, old.verdicts, sizeof(self.verdicts))
        memcpy(self.drops, old.drops, sizeof(self.drops))
        memcpy(self.passes, old.passes, sizeof(self.passes))
        self.ip_id, self.fragments_made = old.ip_id, old.fragments_made
        self.fragments_held, self.fragments_released = old.fragments_held, old.fragments_released
        self.fragments_expired, self.frag_track_forgotten = old.fragments_expired, old.frag_track_forgotten
        for k in range(self.n_fronts):
            for j in range(old.n_fronts):
                if (memcmp(self.fronts[k].addr, old.fronts[j].addr, 16) == 0 and self.fronts[k].port
                        == old.fronts[j].port and self.fronts[k].proto == old.fronts[j].proto):
                    self.unattributed_front[k] = old.unattributed_front[j]
        frags = self.frag_table
        self.frag_table = old.frag_table
        old.frag_table = frags
        for k in range(FRAG_TRACK_SLOTS):
            if self.frag_table[k].expires_ns:
                if real_map[self.frag_table[k].real] < 0:
                    self.frag_table[k].expires_ns = 0
                else:
                    self.frag_table[k].real = <uint32_t>real_map[self.frag_table[k].real]
        for k in range(FRAG_HOLD_SLOTS):
            held = self.held[k]
            self.held[k] = old.held[k]
            old.held[k] = held
        self.held_bytes, old.held_bytes = old.held_bytes, self.held_bytes
        fresh = self.reasm      # datagrams being reassembled go on, under this datapath's limits
        self.reasm, old.reasm = old.reasm, fresh
        self.reasm.high_thresh, self.reasm.low_thresh = fresh.high_thresh, fresh.low_thresh
        self.reasm.timeout_ns = fresh.timeout_ns

    def process(self, Batch batch, Py_ssize_t start=0, uint64_t until_ns=0, Py_ssize_t end=-1):
        """Run packets start..end (default: to the last) through the switch, rewriting in place;
        returns where it stopped.

        With until_ns, stop before the first packet at or past that time on the packet clock (so a
        caller can change the switch at an exact moment, then go on from the returned index).
        Packets go in windows: parse and hash a window and prefetch its index slots, then prefetch
        the flow records those slots name, then handle each packet in order. The table is only
        read ahead, never changed ahead, so the result is that of one packet at a time.

        A packet the switch fragments gets new slots right after it (verdict `more`): the packets after
        it move up, and the returned index counts them, so a caller goes on from it as before. (While
        the window runs, new slots wait at the batch's end, linked after their packet; the batch is
        settled once at the end: Batch.insert.)
        """
        cdef PacketInfo info[WINDOW]
        cdef int parsed[WINDOW]
        cdef uint64_t h[WINDOW]
        cdef Py_ssize_t base = start, i, stop = batch.n if end < 0 else end
        cdef int j, m
        if start < 0 or start > stop or stop > batch.n:
            raise IndexError(f"packets {start}..{stop} are outside the batch of {batch.n}")
        self.started = True
        batch.settle()
        self.cur = batch
        self.inserted = 0
        with nogil:
            while base < stop:
                m = <int>min(<Py_ssize_t>WINDOW, stop - base)
                for j in range(m):
                    i = base + j
                    parsed[j] = self.classify(batch.data + batch.offset[i], batch.caplen[i],
                                              batch.origlen[i], batch.linktype[i], &info[j])
                    if parsed[j] == PARSED:
                        h[j] = key_hash(self.table, &info[j].key)
                        prefetch_slot(self.table, h[j])
                for j in range(m):
                    if parsed[j] == PARSED:
                        prefetch_flow(self.table, h[j])
                for j in range(m):
                    i = base + j
                    if until_ns and max(self.clock_ns, batch.ts_ns[i]) >= until_ns:
                        stop = base + j
                        break
                    self.cur_i = i
                    self.handle(batch.data + batch.offset[i], &info[j], parsed[j], h[j], batch.ts_ns[i],
                                batch.origlen[i], &batch.verdict[i], &batch.detail[i])
                    if info[j].fragment and parsed[j] == PARSED:     # track: a first fragment went through
                        self.first_fragment_done(&info[j])
                base += m
        batch.settle()
        self.cur = None                             # the batch is the caller's again
        return stop + self.inserted

    cdef int hash_ahead(self, const uint8_t* p, uint32_t caplen, uint32_t origlen, uint16_t linktype,
                        PacketInfo* info, uint64_t* h) noexcept nogil:
        """A packet coming soon (packet-at-a-time callers read ahead as process() does in its windows):
        its parse and key hash, for process_slot, with the index slot prefetched."""
        cdef int parsed = self.classify(p, caplen, origlen, linktype, info)
        h[0] = 0
        if parsed == PARSED:
            h[0] = key_hash(self.table, &info.key)
            prefetch_slot(self.table, h[0])
        return parsed

    cdef int process_slot(self, Batch b, PacketInfo* info, int parsed, uint64_t h) noexcept:
        """Packet 0 of a batch holding one (the emulated hosts' loop), as process() handles it: the
        forwarding methods that build (tunnels, TOA, ICMP errors, fragments) build in that batch, which
        then holds what the switch sent (packet 0 and any `more` after it). `info`/`parsed`/`h`: its
        parse and hash (hash_ahead, or parsed = -1: parse it here). Returns the parse's outcome."""
        if parsed < 0:
            parsed = self.classify(b.data + b.offset[0], b.caplen[0], b.origlen[0], b.linktype[0], info)
            h = key_hash(self.table, &info.key) if parsed == PARSED else 0
        self.started = True
        self.cur = b
        self.cur_i = 0
        self.inserted = 0
        self.handle(b.data + b.offset[0], info, parsed, h, b.ts_ns[0], b.origlen[0], &b.verdict[0], &b.detail[0])
        if info.fragment and parsed == PARSED:     # track: a first fragment went through
            self.first_fragment_done(info)
        b.settle()                                  # inserted slots into wire order, as process() leaves them
        self.cur = None
        return parsed

    cdef void prefetch_record(self, uint64_t h) noexcept nogil:
        """The flow record the slot of a hash from hash_ahead names (after the slot has arrived)."""
        prefetch_flow(self.table, h)

    def advance_clock(self, uint64_t now_ns):
        """Move the packet clock forward without a packet (events and samples between packets)."""
        if now_ns > self.clock_ns:
            self.clock_ns = now_ns
            self.table.advance(now_ns)
            self.reasm.expire(now_ns)

    cdef int32_t find_service(self, const PacketKey* key, bint any_port) noexcept nogil:
        cdef uint32_t k
        cdef size_t alen = 4 if key.family == 4 else 16
        for k in range(self.n_services):
            if (self.t.services[k].family == key.family and memcmp(self.t.services[k].vip, key.dst, alen) == 0
                    and (any_port or (self.t.services[k].vport == key.dport
                                      and self.t.services[k].proto == key.proto))):
                return k
        return -1

    cdef void alias_destination(self, PacketInfo* info) noexcept nogil:
        """A client's packet to a capture server is the service's: key it as sent to the VIP."""
        cdef uint32_t k
        cdef Front* fr
        cdef Service* s
        cdef size_t alen = 4 if info.key.family == 4 else 16
        for k in range(self.n_fronts):
            fr = &self.fronts[k]
            if (not fr.is_vip and fr.port == info.key.dport and fr.proto == info.key.proto
                    and fr.family == info.key.family and memcmp(fr.addr, info.key.dst, alen) == 0):
                s = &self.t.services[fr.service]
                memcpy(info.key.dst, s.vip, 16)
                info.key.dport = s.vport
                return

    cdef int32_t front_of_source(self, const PacketKey* key) noexcept nogil:
        cdef uint32_t k
        cdef size_t alen = 4 if key.family == 4 else 16
        for k in range(self.n_fronts):
            if (self.fronts[k].port == key.sport and self.fronts[k].proto == key.proto
                    and self.fronts[k].family == key.family and memcmp(self.fronts[k].addr, key.src, alen) == 0):
                return k
        return -1

    cdef int32_t real_of_source(self, const PacketKey* key) noexcept nogil:
        cdef uint32_t k
        cdef size_t alen = 4 if key.family == 4 else 16
        for k in range(self.n_reals):
            if (self.t.reals[k].port == key.sport and self.t.reals[k].family == key.family
                    and self.t.services[self.t.reals[k].service].proto == key.proto
                    and memcmp(self.t.reals[k].addr, key.src, alen) == 0):
                return k
        return -1

    cdef uint32_t answer_ref(self, PacketInfo* info, int32_t* front, uint8_t* verdict,
                             int32_t* detail) noexcept nogil:
        """A packet for no service and no flow: is it a flow's answer as the capture recorded it (from the
        VIP or a capture server to the flow's client)? Returns the flow's reply ref, or 0 with the packet
        passed: counted as unattributed when it came from the service side, else as not for a service."""
        cdef PacketKey back
        cdef uint32_t ref
        cdef int32_t k = self.front_of_source(&info.key)
        cdef Service* s
        front[0] = k
        if k >= 0:
            s = &self.t.services[self.fronts[k].service]
            back = info.key                         # the forward key of the flow this would answer
            memcpy(back.src, info.key.dst, 16)
            back.sport = info.key.dport
            memcpy(back.dst, s.vip, 16)
            back.dport = s.vport
            ref = key_lookup(self.table, &back, key_hash(self.table, &back))
            if ref and not ref_is_reply(ref) and self.table.flows[ref_index(ref)].expires_ns > self.clock_ns:
                return make_ref(ref_index(ref), True)
            self.unattributed_front[k] += 1
        else:
            k = self.real_of_source(&info.key)
            if k < 0:
                self.finish(verdict, detail, V_PASS, P_NO_SERVICE)
                return 0
            self.unattributed_real[k] += 1
        self.finish(verdict, detail, V_PASS, P_UNATTRIBUTED)
        return 0

    cdef void set_state(self, Flow* f, uint8_t state) noexcept nogil:
        cdef Real* r = &self.t.reals[f.real]
        if is_active(f.state) != is_active(state):
            if is_active(state):
                r.active += 1
                r.inactive -= 1
            else:
                r.active -= 1
                r.inactive += 1
        self.t.states[f.state] -= 1
        self.t.states[state] += 1
        f.state = state

    cdef int classify(self, const uint8_t* p, uint32_t caplen, uint32_t origlen, uint16_t linktype,
                      PacketInfo* info) noexcept nogil:
        """Parse; a fragment for a VIP goes by its service's policy (3tuple: kept, its service in
        info.reason) or is dropped; one for no VIP is passed."""
        cdef int r = parse_packet(p, caplen, origlen, linktype, info)
        cdef int32_t svc
        if r == PARSED and self.n_aliases and not info.icmp_error:
            self.alias_destination(info)
        if r == PARSE_FRAGMENT:
            svc = self.fragment_service(&info.key)
            if svc >= 0 and (self.t.services[svc].fragments == FRAG_3TUPLE
                             or self.t.services[svc].fragments == FRAG_REASSEMBLE):
                info.reason = svc
                return PARSE_FRAGMENT
            if svc >= 0 and self.t.services[svc].fragments == FRAG_TRACK:
                info.reason = svc
                if info.frag_offset:
                    return PARSE_FRAGMENT           # a later fragment: it follows its datagram's first
                if not first_fragment_has_ports(info):
                    info.reason = D_FRAGMENT        # a tiny first fragment (RFC 1858)
                    return PARSE_DROP
                info.key.sport = load16(p + info.l4 + L4_SPORT)     # the first: a packet like any other
                info.key.dport = load16(p + info.l4 + L4_DPORT)
                if info.key.proto == IPPROTO_TCP:
                    info.tcp_flags = p[info.l4 + TCP_FLAGS]
                return PARSED
            if svc < 0:
                svc = self.masq_real_of_address(&info.key)       # a NAT real's datagram to a client
                if svc >= 0:
                    info.reason = svc
                    if info.frag_offset or self.t.services[svc].fragments == FRAG_REASSEMBLE:
                        return PARSE_FRAGMENT
                    if first_fragment_has_ports(info):
                        info.key.sport = load16(p + info.l4 + L4_SPORT)
                        info.key.dport = load16(p + info.l4 + L4_DPORT)
                        if info.key.proto == IPPROTO_TCP:
                            info.tcp_flags = p[info.l4 + TCP_FLAGS]
                        return PARSED
                    info.reason = P_FRAGMENT
                    return PARSE_PASS
            if self.find_service(&info.key, True) >= 0:
                info.reason = D_FRAGMENT
                return PARSE_DROP
            info.reason = P_FRAGMENT
            return PARSE_PASS
        return r

    cdef void handle(self, uint8_t* p, PacketInfo* info, int parsed, uint64_t h, uint64_t ts,
                     uint32_t origlen, uint8_t* verdict, int32_t* detail) noexcept nogil:
        """Conntrack, schedule and rewrite one parsed packet, on the packet clock."""
        cdef int ev
        cdef uint32_t ref, idx
        cdef int32_t svc, front = -1
        cdef Flow* f
        cdef Real* real
        cdef Service* s
        cdef uint8_t old
        if ts > self.clock_ns:                      # the clock never runs backwards
            self.clock_ns = ts
            self.table.advance(ts)
        self.packets += 1
        self.bytes += origlen
        if parsed == PARSE_FRAGMENT:
            self.fragment(p, info, origlen, verdict, detail)
            return
        if parsed != PARSED:
            self.finish(verdict, detail, V_DROP if parsed == PARSE_DROP else V_PASS, info.reason)
            return
        ev = tcp_event(info.tcp_flags) if info.key.proto == IPPROTO_TCP else -1
        ref = key_lookup(self.table, &info.key, h)
        if info.icmp_error:
            self.icmp_error(p, info, ref, origlen, verdict, detail)
            return
        if ref:
            idx = ref_index(ref)
            f = &self.table.flows[idx]
            if f.expires_ns <= self.clock_ns:
                self.table.remove(idx, R_EXPIRED)
                ref = 0
            elif (self.conn_reuse_mode and not ref_is_reply(ref) and ev == EV_SYN and not (info.tcp_flags & TCP_ACK)
                    and (f.state == S_TIME_WAIT or f.state == S_CLOSE)):
                self.table.remove(idx, R_REUSED)
                ref = 0
            elif not ref_is_reply(ref) and self.t.reals[f.real].flags & RF_DOWN:
                if self.expire_nodest_conn:             # IPVS: expire it, the packet may get a new real
                    self.table.remove(idx, R_NODEST)
                    self.new_flow(p, info, -1, ev, h, origlen, verdict, detail)
                    # a batch's arrays may have moved (fragments inserted); one packet's verdict has not
                    if self.cur.verdict[self.cur_i] == V_NEW:
                        self.rescheduled += 1
                    else:
                        self.broken += 1
                    return
                if not (f.flags & F_BLACKHOLED):
                    f.flags |= F_BLACKHOLED
                    self.blackholed += 1
        if ref == 0:
            svc = self.find_service(&info.key, False)
            if svc >= 0:
                self.new_flow(p, info, svc, ev, h, origlen, verdict, detail)
                return
            ref = self.answer_ref(info, &front, verdict, detail)
            if ref == 0:
                return
            idx = ref_index(ref)
            f = &self.table.flows[idx]
        real = &self.t.reals[f.real]
        old = f.state
        if ref_is_reply(ref):
            f.flags &= ~F_NOOUTPUT                  # IPVS: an output packet ends the input-only rows
        if info.key.proto == IPPROTO_TCP:
            if ev >= 0:
                self.set_state(f, NEXT_STATE[(DIR_OUTPUT if ref_is_reply(ref) else
                                              DIR_INPUT_ONLY if f.flags & F_NOOUTPUT else DIR_INPUT) + ev][f.state])
            if f.state == S_ESTABLISHED:
                self.table.assure(idx)
        elif ref_is_reply(ref):
            self.table.assure(idx)                  # UDP: a reply makes the flow assured
        f.expires_ns = self.clock_ns + self.timeout_ns[<int>f.state]
        if f.state != old:
            self.table.reschedule(idx)
        s = &self.t.services[real.service]
        if ref_is_reply(ref):
            if real.forward == FWD_MASQ or real.forward == FWD_FULLNAT:
                if front < 0:                           # the real's answer: the switch routes it back
                    if not self.routed(p, info, s, verdict, detail):
                        return
                    if real.forward == FWD_FULLNAT:
                        self.fullnat_out(p, info, f, real, s)
                    else:
                        rewrite(p, info, False, s.vip, s.vport)
                elif not self.fronts[front].is_vip:    # an answer from the VIP leaves as it came
                    rewrite(p, info, False, s.vip, s.vport)
                if (real.forward == FWD_FULLNAT and info.key.proto == IPPROTO_TCP
                        and (info.tcp_flags & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK)):
                    f.fdata_seq = tcp_seq(p, info) + 1  # DPVS tcp_out_init_seq: TOA goes where this is acked
                    f.flags |= F_FDATA
            real.out_pkts += 1
            real.out_bytes += origlen
            self.finish(verdict, detail, V_ANSWER if front >= 0 else V_REPLY, f.real)
        elif real.forward == FWD_MASQ:
            if not self.routed(p, info, s, verdict, detail):
                return
            rewrite(p, info, True, real.addr, real.port)
            real.in_pkts += 1
            real.in_bytes += origlen
            self.finish(verdict, detail, V_FORWARD, f.real)
        elif real.forward == FWD_FULLNAT:
            self.fullnat_in(p, info, f, real, origlen, V_FORWARD, verdict, detail)
        else:
            self.forward(p, info, real, h, origlen, V_FORWARD, verdict, detail)

    cdef void icmp_error(self, uint8_t* p, PacketInfo* info, uint32_t ref, uint32_t origlen, uint8_t* verdict,
                         int32_t* detail) noexcept nogil:
        """Translate an ICMP error with the flow it quotes; it never opens or refreshes a flow."""
        cdef Flow* f
        cdef Real* real
        cdef Service* s
        if ref == 0 or self.table.flows[ref_index(ref)].expires_ns <= self.clock_ns:
            self.finish(verdict, detail, V_PASS, P_OTHER_PROTOCOL)
            return
        f = &self.table.flows[ref_index(ref)]
        real = &self.t.reals[f.real]
        s = &self.t.services[real.service]
        if real.forward == FWD_DR or real.forward == FWD_TUN:     # IPVS: sent on by the flow's method, untranslated
            if ref_is_reply(ref):
                self.finish(verdict, detail, V_PASS, P_OTHER_PROTOCOL)
            else:
                self.forward(p, info, real, 0, origlen, V_FORWARD, verdict, detail)
            return
        if not self.routed(p, info, s, verdict, detail):
            return
        # fullnat translates both ends of the error and of its quote: the client's side too
        if ref_is_reply(ref):
            rewrite_icmp_error(p, info.caplen, info, True, s.vip, s.vport)
            if real.forward == FWD_FULLNAT:
                rewrite_icmp_error(p, info.caplen, info, False, f.client, f.cport)
            real.out_pkts += 1
            real.out_bytes += origlen
            self.finish(verdict, detail, V_REPLY, f.real)
        else:
            rewrite_icmp_error(p, info.caplen, info, False, real.addr, real.port)
            if real.forward == FWD_FULLNAT:
                rewrite_icmp_error(p, info.caplen, info, True, self.t.laddrs[f.laddr].addr, f.lport)
            real.in_pkts += 1
            real.in_bytes += origlen
            self.finish(verdict, detail, V_FORWARD, f.real)

    cdef void new_flow(self, uint8_t* p, PacketInfo* info, int32_t svc, int ev, uint64_t h, uint32_t origlen,
                       uint8_t* verdict, int32_t* detail) noexcept nogil:
        """Schedule a flow for the packet's key (hash h) to service svc (-1: find it); refused flows are
        counted drops, never evictions."""
        cdef int32_t pick
        cdef uint64_t hr
        cdef Service* s
        cdef SchedulerHook* hook
        cdef Real* real
        cdef PacketKey reply
        cdef int64_t idx, template = -1
        cdef Flow* f
        cdef bint fullnat
        cdef uint16_t laddr = 0, lport = 0
        cdef int refused = -1
        if svc < 0:
            svc = self.find_service(&info.key, False)
        if svc < 0:
            self.finish(verdict, detail, V_PASS, P_NO_SERVICE)
            return
        if info.key.proto == IPPROTO_TCP and ((info.tcp_flags & TCP_RST) or not (
                self.sloppy_tcp or (info.tcp_flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST)) == TCP_SYN)):
            # IPVS: a bare SYN, or sloppy and no RST
            self.finish(verdict, detail, V_DROP, D_TCP_NOT_SYN)
            return
        s = &self.t.services[svc]
        hook = &self.t.hooks[svc]
        if s.persist_ns:
            template = find_template(self.table, s, &info.key, self.clock_ns)
        if template >= 0:
            pick = self.table.flows[template].real - s.first_real
        else:
            pick = hook.pick(hook.state, &self.t.reals[s.first_real], s.n_reals, &info.key, self.clock_ns)
        if pick < 0 or <uint32_t>pick >= s.n_reals:
            self.finish(verdict, detail, V_DROP, D_NO_REAL)
            return
        real = &self.t.reals[s.first_real + pick]
        fullnat = real.forward == FWD_FULLNAT
        reply = info.key                            # the reply key this flow would own
        memcpy(reply.src, real.addr, 16)
        reply.sport = real.port
        if fullnat:                                 # the real answers a local address and port (DPVS laddr)
            if not self.take_local_port(real, &laddr, &lport):
                self.finish(verdict, detail, V_DROP, D_NO_LOCAL_PORT)
                return
            memcpy(reply.dst, self.t.laddrs[laddr].addr, 16)
            reply.dport = lport
        else:
            memcpy(reply.dst, info.key.src, 16)
            reply.dport = info.key.sport
        hr = key_hash(self.table, &reply)
        idx = -1
        if key_lookup(self.table, &reply, hr):
            refused = D_REPLY_CLASH
        # Colliding keys (a hash flood) fill a probe run: refuse before alloc, which could evict.
        elif not (slot_room(self.table, h) and slot_room(self.table, hr)):
            self.table.insert_failed += 1
            refused = D_PROBE_LIMIT
        else:
            idx = self.table.alloc(self.clock_ns)
            if idx < 0:
                refused = D_TABLE_FULL
        if refused >= 0:
            if fullnat:
                port_give_back(&self.t.laddrs[laddr], lport)
            self.finish(verdict, detail, V_DROP, refused)
            return
        f = &self.table.flows[idx]
        memcpy(f.client, info.key.src, 16)
        f.cport = info.key.sport
        f.proto = info.key.proto
        f.family = info.key.family
        f.real = s.first_real + pick
        f.laddr = laddr
        f.lport = lport
        if real.forward == FWD_DR or real.forward == FWD_TUN:
            f.flags |= F_NOOUTPUT
        if info.key.proto == IPPROTO_UDP:
            f.state = S_UDP
        elif ev >= 0:
            f.state = NEXT_STATE[DIR_INPUT + ev][<int>S_NONE]
        else:
            f.state = S_NONE
        f.expires_ns = self.clock_ns + self.timeout_ns[<int>f.state]
        if self.table.insert(<uint32_t>idx) < 0:          # both keys' last free slot was the same one
            if fullnat:
                port_give_back(&self.t.laddrs[laddr], lport)
            self.finish(verdict, detail, V_DROP, D_PROBE_LIMIT)
            return
        if is_active(f.state):
            real.active += 1
        else:
            real.inactive += 1
        self.t.states[f.state] += 1
        check_threshold(real)
        if s.persist_ns:
            note_template(self.table, s, &info.key, f.real, template, self.clock_ns)
        real.conns += 1
        if fullnat:
            self.fullnat_in(p, info, f, real, origlen, V_NEW, verdict, detail)
            return
        if real.forward != FWD_MASQ:
            self.forward(p, info, real, h, origlen, V_NEW, verdict, detail)
            return
        if not self.routed(p, info, s, verdict, detail):
            return
        real.in_pkts += 1
        real.in_bytes += origlen
        rewrite(p, info, True, real.addr, real.port)
        self.finish(verdict, detail, V_NEW, f.real)

    # ---- track: Cilium's policy, with a bounded waiting room ------------------------------------
    cdef FragEntry* frag_lookup(self, const PacketInfo* info) noexcept nogil:
        """The datagram of a fragment, if its first fragment went through within FRAG_TIMEOUT_S."""
        cdef uint64_t slot = (three_tuple_hash(&info.key) ^ info.frag_id) % FRAG_TRACK_SLOTS
        cdef int k
        cdef FragEntry* e
        for k in range(FRAG_TRACK_PROBE):
            e = &self.frag_table[(slot + k) % FRAG_TRACK_SLOTS]
            if e.expires_ns > self.clock_ns and same_datagram(e.src, e.dst, e.id, e.proto, e.family, info):
                return e
        return NULL

    cdef void first_fragment_done(self, PacketInfo* info) noexcept nogil:
        """A first fragment reached a real: remember its datagram (the oldest of a full probe window is
        forgotten), and send the fragments that waited for it right after it."""
        cdef uint8_t v = self.cur.verdict[self.cur_i]
        cdef uint64_t slot = (three_tuple_hash(&info.key) ^ info.frag_id) % FRAG_TRACK_SLOTS
        cdef FragEntry* e
        cdef FragEntry* oldest = NULL
        cdef HeldFragment* f
        cdef PacketInfo later
        cdef Py_ssize_t i = self.cur_i, j
        cdef int32_t real = self.cur.detail[i]
        cdef int k
        if v != V_NEW and v != V_FORWARD and not (v == V_REPLY and self.t.reals[real].forward == FWD_MASQ):
            return
        for k in range(FRAG_TRACK_PROBE):
            e = &self.frag_table[(slot + k) % FRAG_TRACK_SLOTS]
            if e.expires_ns <= self.clock_ns or same_datagram(e.src, e.dst, e.id, e.proto, e.family, info):
                oldest = e
                break
            if oldest == NULL or e.expires_ns < oldest.expires_ns:
                oldest = e
        if (oldest.expires_ns > self.clock_ns
                and not same_datagram(oldest.src, oldest.dst, oldest.id, oldest.proto, oldest.family, info)):
            self.frag_track_forgotten += 1
        memcpy(oldest.src, info.key.src, 16)
        memcpy(oldest.dst, info.key.dst, 16)
        oldest.id = info.frag_id
        oldest.proto = info.key.proto
        oldest.family = info.key.family
        oldest.real = real
        oldest.reply = v == V_REPLY
        oldest.expires_ns = self.clock_ns + <uint64_t>FRAG_TIMEOUT_S * NS
        self.expire_held()
        for k in range(FRAG_HOLD_SLOTS):
            f = &self.held[k]
            if f.data == NULL or not same_datagram(f.src, f.dst, f.id, f.proto, f.family, info):
                continue
            while self.cur.after[i]:                # after what is already there
                i = self.cur.after[i]
            j = self.cur.insert(i, f.size)
            if j < 0:
                break                               # it waits on, until it expires
            memcpy(self.cur.data + self.cur.offset[j], f.data, f.size)
            self.cur.origlen[j] = f.origlen
            self.inserted += 1
            self.cur_i = j
            if parse_packet(self.cur.data + self.cur.offset[j], f.size, f.origlen, self.cur.linktype[j],
                            &later) == PARSE_FRAGMENT:
                self.send_fragment(self.cur.data + self.cur.offset[j], &later, &self.t.reals[real], v == V_REPLY,
                                   f.origlen, &self.cur.verdict[j], &self.cur.detail[j])
            if self.cur.verdict[j] == V_FORWARD or self.cur.verdict[j] == V_REPLY:
                self.cur.verdict[j] = V_MORE        # counted as forwarded; written after its first fragment
            self.cur_i = i = j
            self.held_bytes -= f.size
            self.fragments_held -= 1
            self.fragments_released += 1
            free(f.data)
            f.data = NULL
        self.cur_i = i

    cdef void send_fragment(self, uint8_t* p, PacketInfo* info, Real* real, bint reply, uint32_t origlen,
                            uint8_t* verdict, int32_t* detail) noexcept nogil:
        """A later fragment to its datagram's real: masq DNATs its address, dr and tun forward it whole;
        or (reply) a later fragment of the real's datagram to the client: masq SNATs it back to the VIP."""
        if not (real.forward == FWD_DR or real.forward == FWD_TUN or   # NAT routes it: TTL - 1
                self.routed(p, info, &self.t.services[real.service], verdict, detail)):
            return
        if reply:
            rewrite_fragment_address(p, info, False, self.t.services[real.service].vip)
            real.out_pkts += 1
            real.out_bytes += origlen
            self.finish(verdict, detail, V_REPLY, real - self.t.reals)
            return
        if real.forward != FWD_MASQ:
            self.forward(p, info, real, three_tuple_hash(&info.key), origlen, V_FORWARD, verdict, detail)
            return
        rewrite_fragment_address(p, info, True, real.addr)
        real.in_pkts += 1
        real.in_bytes += origlen
        self.finish(verdict, detail, V_FORWARD, real - self.t.reals)

    cdef void hold(self, uint8_t* p, PacketInfo* info, uint32_t origlen, uint8_t* verdict,
                   int32_t* detail) noexcept nogil:
        """A fragment ahead of its first: a copy waits (its slot writes nothing) in a room of
        FRAG_HOLD_SLOTS fragments and FRAG_HOLD_BYTES bytes; a full room drops it, counted."""
        cdef uint32_t size = info.caplen
        cdef HeldFragment* f = NULL
        cdef int k
        self.expire_held()
        for k in range(FRAG_HOLD_SLOTS):
            if self.held[k].data == NULL:
                f = &self.held[k]
                break
        if f == NULL or self.held_bytes + size > FRAG_HOLD_BYTES:
            self.finish(verdict, detail, V_DROP, D_FRAG_OVERFLOW)
            return
        f.data = <uint8_t*>malloc(size if size else 1)
        if f.data == NULL:
            self.finish(verdict, detail, V_DROP, D_NO_MEMORY)
            return
        memcpy(f.data, p, size)
        f.size = size
        f.origlen = origlen
        f.id = info.frag_id
        f.proto = info.key.proto
        f.family = info.key.family
        memcpy(f.src, info.key.src, 16)
        memcpy(f.dst, info.key.dst, 16)
        f.expires_ns = self.clock_ns + <uint64_t>FRAG_TIMEOUT_S * NS
        self.held_bytes += size
        self.fragments_held += 1
        verdict[0] = V_DROP                         # nothing to write now; counted when it leaves or expires
        detail[0] = D_FRAG_HELD

    cdef void expire_held(self) noexcept nogil:
        """Forget the fragments whose first never came within FRAG_TIMEOUT_S (Linux: ipfrag_time)."""
        cdef int k
        for k in range(FRAG_HOLD_SLOTS):
            if self.held[k].data != NULL and self.held[k].expires_ns <= self.clock_ns:
                free(self.held[k].data)
                self.held[k].data = NULL
                self.held_bytes -= self.held[k].size
                self.fragments_held -= 1
                self.fragments_expired += 1

    cdef int32_t masq_real_of_address(self, const PacketKey* key) noexcept nogil:
        """The track or reassemble service whose NAT real sends this fragment (by address and protocol: a later fragment
        has no port), or -1."""
        cdef uint32_t k
        cdef Service* s
        cdef size_t alen = 4 if key.family == 4 else 16
        for k in range(self.n_reals):
            s = &self.t.services[self.t.reals[k].service]
            if ((s.fragments == FRAG_TRACK or s.fragments == FRAG_REASSEMBLE) and self.t.reals[k].forward == FWD_MASQ
                    and s.proto == key.proto
                    and self.t.reals[k].family == key.family and memcmp(self.t.reals[k].addr, key.src, alen) == 0):
                return self.t.reals[k].service
        return -1

    cdef int32_t fragment_service(self, const PacketKey* key) noexcept nogil:
        """The service of a fragment's VIP and protocol (a fragment has no port to tell services apart)."""
        cdef uint32_t k
        cdef size_t alen = 4 if key.family == 4 else 16
        for k in range(self.n_services):
            if (self.t.services[k].family == key.family and self.t.services[k].proto == key.proto
                    and memcmp(self.t.services[k].vip, key.dst, alen) == 0):
                return k
        return -1

    cdef void fragment(self, uint8_t* p, PacketInfo* info, uint32_t origlen, uint8_t* verdict,
                       int32_t* detail) noexcept nogil:
        """Maglev's 3-tuple policy: the real by a fixed hash of (source, destination, protocol), so that
        every fragment of a datagram, and every instance of a cluster, agrees; no flow is made. The
        service's reals are dr or tun (config): the fragment goes on whole by the real's method."""
        cdef Service* s = &self.t.services[info.reason]
        cdef uint64_t h = three_tuple_hash(&info.key)
        cdef int32_t pick
        cdef FragEntry* e
        if s.fragments == FRAG_REASSEMBLE:
            self.reassemble(p, info, verdict, detail)
            return
        if s.fragments == FRAG_TRACK:
            e = self.frag_lookup(info)
            if e != NULL:
                self.send_fragment(p, info, &self.t.reals[e.real], e.reply, origlen, verdict, detail)
            else:
                self.hold(p, info, origlen, verdict, detail)
            return
        pick = pick_by_hash(&self.t.reals[s.first_real], s.n_reals, h)
        if pick < 0:
            self.finish(verdict, detail, V_DROP, D_NO_REAL)
            return
        if info.frag_offset == 0 and not first_fragment_has_ports(info):
            self.finish(verdict, detail, V_DROP, D_FRAGMENT)        # a tiny first fragment (RFC 1858)
            return
        self.forward(p, info, &self.t.reals[s.first_real + pick], h, origlen, V_FORWARD, verdict, detail)

    # ---- reassemble: Linux's defragmentation before IPVS (_reasm.pyx) ------------------------------
    cdef void reassemble(self, uint8_t* p, PacketInfo* info, uint8_t* verdict, int32_t* detail) noexcept nogil:
        """A fragment waits in its datagram's queue (its slot writes nothing); the one that completes the
        datagram becomes it, in fresh room, and the datagram goes through the switch like any packet,
        then leaves fragmented as it came (refragment; a tunnel's outer packet is fragmented by forward)."""
        cdef Py_ssize_t i = self.cur_i
        cdef PacketInfo whole
        cdef int r, parsed
        cdef uint32_t size, mtu
        cdef uint8_t* q
        cdef uint8_t v
        cdef bint tunnelled
        cdef Real* real
        r = self.reasm.add(p, info, self.cur.origlen[i], self.cur.linktype[i], self.clock_ns)
        if r == RQ_QUEUED:
            verdict[0] = V_DROP                     # nothing to write now: it leaves within its datagram
            detail[0] = D_FRAG_HELD
            return
        if r != RQ_COMPLETE:
            self.finish(verdict, detail, V_DROP, D_FRAG_OVERFLOW if r == RQ_NO_ROOM else
                        D_TRUNCATED_IP if r == RQ_TRUNCATED else D_FRAGMENT)
            return
        size = self.reasm.size()
        q = self.cur.room(i, size)
        if q == NULL:
            self.reasm.build(NULL)
            self.finish(verdict, detail, V_DROP, D_NO_MEMORY)
            return
        self.reasm.build(q)
        self.cur.caplen[i] = self.cur.origlen[i] = size
        parsed = self.classify(q, size, size, self.cur.linktype[i], &whole)
        self.packets -= 1                           # its fragments were counted as they came
        self.bytes -= size
        self.reasm_max = self.reasm.max_size
        self.handle(q, &whole, parsed, key_hash(self.table, &whole.key) if parsed == PARSED else 0,
                    self.clock_ns, size, &self.cur.verdict[i], &self.cur.detail[i])
        self.reasm_max = 0
        v = self.cur.verdict[i]
        if v == V_PASS:
            self.pass_originals(i)
        elif v == V_NEW or v == V_FORWARD or v == V_REPLY:
            real = &self.t.reals[self.cur.detail[i]]
            mtu = 0xFFFF if v == V_REPLY else self.t.services[real.service].mtu
            tunnelled = v != V_REPLY and real.forward == FWD_TUN    # whole inside its tunnel
            if not tunnelled and self.refragment(whole.l3, whole.key.family, mtu, self.cur.detail[i]) < 0:
                self.finish(&self.cur.verdict[i], &self.cur.detail[i], V_DROP, D_NO_MEMORY)
        self.reasm.release()

    cdef void pass_originals(self, Py_ssize_t i) noexcept nogil:
        """A reassembled datagram no service takes is untouched traffic: it leaves as the fragments it
        came in, byte for byte, in the order they came (the first in slot i, the others after it, each
        a pass of the datagram's reason; the datagram counts one pass, its fragments one queued each),
        at the time the last of them came."""
        cdef Py_ssize_t j = i
        cdef uint32_t k, n = self.reasm.originals(), caplen, origlen
        cdef int32_t reason = self.cur.detail[i]
        cdef const uint8_t* frame
        cdef uint8_t* q
        if n == 0:                                  # their copy could not be kept
            self.finish(&self.cur.verdict[i], &self.cur.detail[i], V_DROP, D_NO_MEMORY)
            return
        for k in range(n):
            frame = self.reasm.original(k, &caplen, &origlen)
            if k == 0:
                q = self.cur.room(i, caplen)
            else:
                j = self.cur.insert(j, caplen)
                q = NULL if j < 0 else self.cur.data + self.cur.offset[j]
            if q == NULL:
                self.cur.verdict[i] = V_DROP        # none of them, rather than some
                self.cur.detail[i] = D_NO_MEMORY
                while self.cur.after[i]:
                    i = self.cur.after[i]
                    self.cur.verdict[i] = V_DROP
                    self.cur.detail[i] = D_NO_MEMORY
                return
            memcpy(q, frame, caplen)
            if k == 0:
                self.cur.caplen[i] = caplen
                self.cur.origlen[i] = origlen
            else:
                self.cur.origlen[j] = origlen
                self.cur.verdict[j] = V_PASS        # not counted: each was counted as it queued
                self.cur.detail[j] = reason
                self.inserted += 1

    cdef void drop_pieces(self, Py_ssize_t i) noexcept nogil:
        """The pieces made after slot i so far are dropped (the batch could not grow for the next)."""
        while self.cur.after[i] and self.cur.verdict[self.cur.after[i]] == V_MORE:
            i = self.cur.after[i]
            self.cur.verdict[i] = V_DROP
            self.cur.detail[i] = D_NO_MEMORY

    cdef int refragment(self, uint32_t l3, int family, uint32_t mtu, int32_t real) noexcept nogil:
        """The reassembled datagram in the current slot leaves as fragments, as Linux's ip_do_fragment and
        ip6_fragment send a defragmented packet: in the sizes it came in when they all fit (the fast path
        over its frag_list), else in pieces of (mtu - headers) & ~7, mtu at most its largest fragment
        (IPCB frag_max_size); its IP ID kept, the first piece in the slot, the others after it (verdict
        more); past the first piece, IPv4 options not to be copied become NOPs. 0, or -1 when the batch
        cannot grow (the pieces made so far are marked dropped)."""
        cdef Py_ssize_t i = self.cur_i, j = i
        cdef uint64_t old = self.cur.offset[i]
        cdef uint8_t* pkt = self.cur.data + old
        cdef uint8_t* q
        cdef uint32_t hdr = self.reasm.unfrag, extra = 0 if family == 4 else REASM_FRAG_HEADER_LEN
        cdef uint32_t total = (load16(pkt + l3 + IP4_TOTAL_LEN) if family == 4 else
                               IP6_HEADER_LEN + load16(pkt + l3 + IP6_PAYLOAD_LEN))
        cdef uint32_t payload = total - hdr, space, k, n = self.reasm.n_sizes, start = 0, per
        cdef bint fast = True
        cdef uint32_t* sizes = self.reasm.sizes
        mtu = min(mtu, self.reasm.max_size)
        if family == 6 and mtu < IPV6_MIN_MTU:
            mtu = IPV6_MIN_MTU
        if mtu < hdr + extra + 8:
            return -1
        space = mtu - hdr - extra
        for k in range(n):
            start += sizes[k]
            if sizes[k] > space or (k + 1 < n and sizes[k] & 7):
                fast = False
        if not fast or start != payload:            # ip_do_fragment's slow path
            per = space & ~(<uint32_t>7)
            n = 0
            start = 0
            while start < payload and n < REASM_MAX_PIECES:
                sizes[n] = min(per, payload - start)
                start += per
                n += 1
        start = sizes[0]
        for k in range(1, n):
            j = self.cur.insert(j, l3 + hdr + extra + sizes[k])
            if j < 0:
                self.drop_pieces(i)
                return -1
            pkt = self.cur.data + old               # the buffer may have moved
            q = self.cur.data + self.cur.offset[j]
            memcpy(q, pkt, l3 + hdr)
            memcpy(q + l3 + hdr + extra, pkt + l3 + hdr + start, sizes[k])
            if family == 4:
                ip_options_fragment(q + l3, hdr)
                write_fragment_header(q + l3, hdr, sizes[k], start, k + 1 < n)
            else:
                write_ipv6_fragment(q, l3, hdr, self.reasm.prevhdr, self.reasm.upper, self.reasm.id, start, sizes[k],
                                    k + 1 < n)
            self.cur.verdict[j] = V_MORE
            self.cur.detail[j] = real
            self.inserted += 1
            self.fragments_made += 1
            start += sizes[k]
        if family == 4:
            pkt = self.cur.data + old
            write_fragment_header(pkt + l3, hdr, sizes[0], 0, n > 1)
            self.cur.caplen[i] = self.cur.origlen[i] = l3 + hdr + sizes[0]
            return 0
        q = self.cur.room(i, l3 + hdr + extra + sizes[0])    # the first piece grows by its fragment header
        if q == NULL:
            return -1
        pkt = self.cur.data + old
        memcpy(q, pkt, l3 + hdr)
        memcpy(q + l3 + hdr + extra, pkt + l3 + hdr, sizes[0])
        write_ipv6_fragment(q, l3, hdr, self.reasm.prevhdr, self.reasm.upper, self.reasm.id, 0, sizes[0], n > 1)
        self.cur.caplen[i] = self.cur.origlen[i] = l3 + hdr + extra + sizes[0]
        return 0

    # ---- forwarding methods other than NAT (dr, tun): _forward.pxd writes the bytes --------------
    cdef void forward(self, uint8_t* p, PacketInfo* info, Real* real, uint64_t h, uint32_t origlen, uint8_t v,
                      uint8_t* verdict, int32_t* detail) noexcept nogil:
        """Send a client's packet to its real by the real's method, as IPVS's xmit functions do: TTL
        first (an expiring packet gets ICMP time exceeded), then the MTU (DF or IPv6: ICMP
        fragmentation needed / packet too big quoting it), then DR's MAC or the tunnel's headers.
        Katran's encapsulation touches no TTL and sends no ICMP: what does not fit is dropped."""
        cdef Service* s = &self.t.services[real.service]
        cdef bint gso = self.cur.gso_size[self.cur_i] != 0     # not fragmented: segments that do not fit are refused
        cdef uint32_t l3 = info.l3, ip_len = segment_ip_len(p, info, self.cur.gso_size[self.cur_i])
        cdef uint32_t overhead = tunnel_overhead(real) if real.forward == FWD_TUN else 0
        cdef uint32_t mtu
        cdef bint ipvs = not (real.forward == FWD_TUN and real.katran)
        cdef bint split = False, later = False
        cdef int fam = info.key.family
        if self.reasm_max and real.forward == FWD_DR:
            ip_len = self.reasm_max                 # IPCB frag_max_size: it leaves in pieces no larger
        if ipvs:
            if not ttl_left(p, l3, fam):
                if info.icmp_error:                 # never an ICMP error about an ICMP error (RFC 1122 3.2.2)
                    self.finish(verdict, detail, V_DROP, D_TTL_EXCEEDED)
                else:
                    self.icmp_back(p, info, s, D_TTL_EXCEEDED, 0, verdict, detail)
                return
        if ip_len + overhead > s.mtu and not info.len_from_capture:
            mtu = s.mtu - overhead
            if (ipvs and fam == 4 and not (p[l3 + IP4_FRAG] & (IP4_DF >> 8)) and not info.icmp_error
                    and self.reasm_max and real.forward == FWD_DR):
                later = True                        # reassembled: refragmented after this (reassemble)
            elif (ipvs and not gso and not (self.reasm_max and real.forward == FWD_DR)
                    and (fam == 4 and not (p[l3 + IP4_FRAG] & (IP4_DF >> 8)) or self.reasm_max)
                    and not info.icmp_error and info.end <= info.caplen
                    and (outer_fits(fam, p[l3 + IP4_FRAG] & (IP4_DF >> 8), real.family, self.reasm_max, mtu)
                         if real.forward == FWD_TUN else (p[l3] & 0x0F) * 4 == IP4_HEADER_LEN)):
                split = True                        # IPVS: no DF, so Linux fragments it on the way out
            elif (not ipvs or info.icmp_error or (fam == 4 and not (p[l3 + IP4_FRAG] & (IP4_DF >> 8)))
                    or info.frag_offset):           # IPVS: packet too big only for a first fragment
                self.finish(verdict, detail, V_DROP, D_TOO_BIG_DROPPED)     # a drop leaves the bytes as they came
            else:
                decrement_ttl(p, l3, fam)           # IPVS checks the MTU after decrement_ttl: the quote shows it
                self.icmp_back(p, info, s, D_TOO_BIG, max(mtu, <uint32_t>IPV6_MIN_MTU) if fam == 6 else mtu,
                               verdict, detail)
                return
            if not (split or later):
                return
        if real.forward == FWD_DR:
            decrement_ttl(p, l3, fam)
            next_hop_mac(p, self.cur.linktype[self.cur_i], real)
            real.in_pkts += 1
            real.in_bytes += origlen
            if split and self.fragment_out(l3, s.mtu, real - self.t.reals, info.frag_offset, info.more_frags) < 0:
                v = V_DROP
            self.finish(&self.cur.verdict[self.cur_i], &self.cur.detail[self.cur_i], v,   # the arrays may have moved
                        D_NO_MEMORY if v == V_DROP else real - self.t.reals)
            return
        self.encapsulate(p, info, real, s, h, v, verdict, detail, split)

    cdef void encapsulate(self, uint8_t* p, PacketInfo* info, Real* real, Service* s, uint64_t h,
                          uint8_t v, uint8_t* verdict, int32_t* detail, bint split) noexcept nogil:
        """IPVS ip_vs_tunnel_xmit (ipip, gue, gre) or Katran's encap: the IP packet (Ethernet padding left
        behind; IPVS: its TTL one less) after new outer headers, in fresh room at the end of the batch.
        What cannot be sent is dropped with its bytes as they came."""
        cdef Py_ssize_t i = self.cur_i
        cdef uint16_t linktype = self.cur.linktype[i]
        cdef uint32_t l3 = info.l3, ip_len = info.end - info.l3
        cdef uint32_t kept = (info.end if info.end < info.caplen else info.caplen) - l3
        cdef uint32_t overhead = tunnel_overhead(real)
        cdef int fam = info.key.family, outer = real.family
        cdef uint32_t hdr = IP4_HEADER_LEN if outer == 4 else IP6_HEADER_LEN, u = l3 + hdr
        cdef uint64_t old = self.cur.offset[i]
        cdef bint whole = info.end <= info.caplen
        cdef uint8_t tos, ttl, proto, inner_proto = IPPROTO_IPIP if fam == 4 else IPPROTO_IPV6_ENCAP
        cdef uint8_t katran_src[16]
        cdef const uint8_t* src
        cdef uint8_t* q
        if outer != fam and not (linktype == LINKTYPE_ETHERNET or linktype == LINKTYPE_LINUX_SLL
                                 or linktype == LINKTYPE_LINUX_SLL2 or linktype == LINKTYPE_RAW
                                 or linktype == DLT_RAW_BSD or linktype == DLT_RAW_OPENBSD):
            self.finish(verdict, detail, V_DROP, D_TUNNEL_LINK)
            return
        if ip_len + overhead - (IP4_HEADER_LEN if outer == 4 else 0) > 0xFFFF:     # longer than a length field
            self.finish(verdict, detail, V_DROP, D_TOO_BIG_DROPPED)
            return
        tos = dsfield(p, l3, fam)
        if self.cur.headroom[i] >= overhead:       # in place: only the link header moves, into the headroom
            q = p - overhead
            memmove(q, p, l3)
            self.cur.offset[i] = self.cur.offset[i] - overhead
            self.cur.headroom[i] = <uint16_t>(self.cur.headroom[i] - overhead)
            self.cur.caplen[i] = l3 + overhead + kept
        else:                                       # no headroom (a TUN read, from_frames): a copy, at the end
            q = self.cur.room(i, l3 + overhead + kept)
            if q == NULL:
                self.finish(verdict, detail, V_DROP, D_NO_MEMORY)
                return
            p = self.cur.data + old                 # the buffer may have moved
            memcpy(q, p, l3)
            memcpy(q + l3 + overhead, p + l3, kept)
        self.cur.origlen[i] = l3 + overhead + ip_len
        if not real.katran:
            decrement_ttl(q, l3 + overhead, fam)
        ttl = q[l3 + overhead + (IP4_TTL if fam == 4 else IP6_HOP_LIMIT)]
        if outer != fam:
            set_link_family(q, l3, linktype, outer)
        next_hop_mac(q, linktype, real)
        if real.tun_type == TUN_GUE:
            proto = IPPROTO_UDP
            store16(q + u + UDP_LEN, overhead - hdr + ip_len)
            store16(q + u + UDP_CSUM, 0)
            if real.katran:                         # Katran's GUE: UDP straight before the inner IP header
                store16(q + u + L4_SPORT, katran_gue_sport(&info.key, outer))
                store16(q + u + L4_DPORT, real.tun_port if real.tun_port else KATRAN_GUE_PORT)
            else:
                store16(q + u + L4_SPORT, flow_src_port(h))
                store16(q + u + L4_DPORT, real.tun_port)
                q[u + UDP_HEADER_LEN] = 0           # version 0, no control, no options
                q[u + UDP_HEADER_LEN + 1] = inner_proto
                store16(q + u + UDP_HEADER_LEN + 2, 0)
        elif real.tun_type == TUN_GRE:
            proto = IPPROTO_GRE
            store16(q + u, GRE_FLAG_CSUM if real.tun_flags & TUNF_CSUM else 0)
            store16(q + u + 2, ETHERTYPE_IPV4 if fam == 4 else ETHERTYPE_IPV6)
            if real.tun_flags & TUNF_CSUM:
                store16(q + u + GRE_HEADER_LEN, 0)
                store16(q + u + GRE_HEADER_LEN + 2, 0)
                if whole:
                    store16(q + u + GRE_HEADER_LEN,
                            ~fold(sum_bytes(0, q + u, overhead - hdr + ip_len)) & 0xFFFF)
        else:
            proto = inner_proto
        if real.katran:
            if real.tun_type == TUN_GUE:
                src = &s.source4[0] if outer == 4 else &s.source6[0]
            else:
                katran_ipip_source(katran_src, &info.key, outer)
                src = katran_src
            write_outer_ip(q, l3, outer, tos, overhead - hdr + ip_len, 0, False, KATRAN_TTL, proto, src,
                           real.addr)
        else:
            self.ip_id += 1
            write_outer_ip(q, l3, outer, ecn_encapsulate(tos), overhead - hdr + ip_len, self.ip_id,
                           fam == 4 and (q[l3 + overhead + IP4_FRAG] & (IP4_DF >> 8)), ttl, proto,
                           &s.source4[0] if outer == 4 else &s.source6[0], real.addr)
        if (real.tun_type == TUN_GUE and not real.katran and real.tun_flags & (TUNF_CSUM | TUNF_REMCSUM)
                and whole):
            finish_l4_checksum(q, l3, u, outer, overhead - hdr + ip_len, IPPROTO_UDP, UDP_CSUM)
        real.in_pkts += 1
        real.in_bytes += self.cur.origlen[i]
        if split and (self.fragment_out6(l3, s.mtu, real - self.t.reals) if outer == 6 else
                      self.fragment_out(l3, s.mtu, real - self.t.reals, 0, False)) < 0:
            v = V_DROP
        self.finish(&self.cur.verdict[i], &self.cur.detail[i], v,     # the arrays may have moved
                    D_NO_MEMORY if v == V_DROP else real - self.t.reals)

    cdef int fragment_out6(self, uint32_t l3, uint32_t mtu, int32_t real) noexcept nogil:
        """Fragment the outer IPv6 packet (a tunnel's: its header alone is unfragmentable) at l3 of the
        current slot to `mtu`, as ip6_fragment does for IPVS's tunnel packets (ignore_df): a Fragment
        header after the IPv6 header, payloads of (mtu - 48) & ~7 bytes, one identification for all
        (the switch's counter); the first piece in the slot, the others after it (verdict more). 0, or -1
        when memory runs out (the pieces made so far are marked dropped)."""
        cdef Py_ssize_t i = self.cur_i, j = i
        cdef uint64_t old = self.cur.offset[i]
        cdef uint8_t* pkt = self.cur.data + old
        cdef uint8_t* q
        cdef uint32_t payload = load16(pkt + l3 + IP6_PAYLOAD_LEN), start, length, ident
        cdef uint32_t per = (mtu - IP6_HEADER_LEN - REASM_FRAG_HEADER_LEN) & ~(<uint32_t>7)
        cdef uint8_t upper = pkt[l3 + IP6_NEXT]
        if mtu < IP6_HEADER_LEN + REASM_FRAG_HEADER_LEN + 8:
            return -1
        self.ip6_id += 1
        ident = self.ip6_id
        start = per
        while start < payload:
            length = min(per, payload - start)
            j = self.cur.insert(j, l3 + IP6_HEADER_LEN + REASM_FRAG_HEADER_LEN + length)
            if j < 0:
                self.drop_pieces(i)
                return -1
            pkt = self.cur.data + old               # the buffer may have moved
            q = self.cur.data + self.cur.offset[j]
            memcpy(q, pkt, l3 + IP6_HEADER_LEN)
            memcpy(q + l3 + IP6_HEADER_LEN + REASM_FRAG_HEADER_LEN, pkt + l3 + IP6_HEADER_LEN + start, length)
            write_ipv6_fragment(q, l3, IP6_HEADER_LEN, IP6_NEXT, upper, ident, start, length,
                                start + length < payload)
            self.cur.verdict[j] = V_MORE
            self.cur.detail[j] = real
            self.inserted += 1
            self.fragments_made += 1
            start += per
        q = self.cur.room(i, l3 + IP6_HEADER_LEN + REASM_FRAG_HEADER_LEN + per)
        if q == NULL:
            self.drop_pieces(i)
            return -1
        pkt = self.cur.data + old
        memcpy(q, pkt, l3 + IP6_HEADER_LEN)
        memcpy(q + l3 + IP6_HEADER_LEN + REASM_FRAG_HEADER_LEN, pkt + l3 + IP6_HEADER_LEN, per)
        write_ipv6_fragment(q, l3, IP6_HEADER_LEN, IP6_NEXT, upper, ident, 0, per, True)
        self.cur.caplen[i] = self.cur.origlen[i] = l3 + IP6_HEADER_LEN + REASM_FRAG_HEADER_LEN + per
        return 0

    cdef int fragment_out(self, uint32_t l3, uint32_t mtu, int32_t real, uint32_t base_offset,
                          bint last_more) noexcept nogil:
        """Fragment the IPv4 packet (no options past the first fragment's header: the caller checks)
        at l3 of the current slot to `mtu`, as Linux's ip_fragment does on output: payloads of
        (mtu - header) & ~7 bytes, the header copied with its ID, offsets and MF set, checksums
        computed; the first fragment stays in the slot, the others follow it (verdict more).
        base_offset and last_more: the packet's own place when it is a fragment itself. 0, or -1 when
        memory runs out (the fragments made so far are marked dropped)."""
        cdef Py_ssize_t i = self.cur_i, j = i
        cdef uint8_t* pkt = self.cur.data + self.cur.offset[i]
        cdef uint32_t hlen = (pkt[l3] & 0x0F) * 4, total = load16(pkt + l3 + IP4_TOTAL_LEN)
        cdef uint32_t per = (mtu - hlen) & ~(<uint32_t>7), payload = total - hlen, start, length
        cdef uint8_t* q
        start = per
        while start < payload:
            length = min(per, payload - start)
            j = self.cur.insert(j, l3 + hlen + length)
            if j < 0:
                self.drop_pieces(i)
                return -1
            pkt = self.cur.data + self.cur.offset[i]    # the buffer may have moved
            q = self.cur.data + self.cur.offset[j]
            memcpy(q, pkt, l3 + hlen)
            memcpy(q + l3 + hlen, pkt + l3 + hlen + start, length)
            write_fragment_header(q + l3, hlen, length, base_offset + start,
                                  start + length < payload or last_more)
            self.cur.verdict[j] = V_MORE
            self.cur.detail[j] = real
            self.inserted += 1
            self.fragments_made += 1
            start += per
        pkt = self.cur.data + self.cur.offset[i]
        write_fragment_header(pkt + l3, hlen, per, base_offset, True)
        self.cur.caplen[i] = self.cur.origlen[i] = l3 + hlen + per
        return 0

    cdef void icmp_back(self, uint8_t* p, PacketInfo* info, Service* s, int reason, uint32_t mtu,
                        uint8_t* verdict, int32_t* detail) noexcept nogil:
        """Put, in the packet's place, the ICMP error a forwarding hop sends its sender (Linux icmp_send
        and icmpv6_send: from the switch's address, quoting as much as fits in 576 / 1280 bytes)."""
        cdef Py_ssize_t i = self.cur_i
        cdef int fam = info.key.family
        cdef uint32_t l3 = info.l3
        cdef uint32_t quote = (info.end if info.end < info.caplen else info.caplen) - l3
        cdef uint32_t size
        cdef uint64_t old = self.cur.offset[i]
        cdef uint8_t* q
        quote = min(quote, <uint32_t>(ICMP4_QUOTE_MAX if fam == 4 else ICMP6_QUOTE_MAX))
        size = l3 + (IP4_HEADER_LEN if fam == 4 else IP6_HEADER_LEN) + ICMP_HEADER_LEN + quote
        q = self.cur.room(i, size)
        if q == NULL:
            self.finish(verdict, detail, V_DROP, D_NO_MEMORY)
            return
        p = self.cur.data + old
        self.ip_id += 1
        if reason == D_TTL_EXCEEDED:
            write_icmp_error(q, p, l3, quote, self.cur.linktype[i], fam, ICMP4_TIME_EXCEEDED if fam == 4 else
                             ICMP6_TIME_EXCEEDED, 0, 0, &s.source4[0] if fam == 4 else &s.source6[0], self.ip_id)
        elif fam == 4:
            write_icmp_error(q, p, l3, quote, self.cur.linktype[i], 4, ICMP4_UNREACH, ICMP4_FRAG_NEEDED, mtu & 0xFFFF,
                             s.source4, self.ip_id)
        else:
            write_icmp_error(q, p, l3, quote, self.cur.linktype[i], 6, ICMP6_PACKET_TOO_BIG, 0, mtu, s.source6, 0)
        self.cur.origlen[i] = size
        self.cur.gso_size[i] = 0                    # one packet now, whatever it quotes
        self.finish(verdict, detail, V_ICMP, reason)

    cdef bint routed(self, uint8_t* p, PacketInfo* info, Service* s, uint8_t* verdict, int32_t* detail) noexcept nogil:
        """A packet NAT sends on is routed: IPVS's __ip_vs_get_out_rt (to the real) and Linux's ip_forward
        (the real's answer, back through the switch) take one from its TTL / hop limit, and one that arrives
        with 1 or 0 gets ICMP time exceeded in its place. False: it is not sent on."""
        if ttl_left(p, info.l3, info.key.family):
            decrement_ttl(p, info.l3, info.key.family)
            return True
        if info.icmp_error:                         # never an error about an error
            self.finish(verdict, detail, V_DROP, D_TTL_EXCEEDED)
        else:
            self.icmp_back(p, info, s, D_TTL_EXCEEDED, 0, verdict, detail)
        return False

    # ---- fullnat: DPVS's full-NAT, local addresses, TOA (_fullnat.pxd writes the bytes) ----------
    cdef bint take_local_port(self, Real* real, uint16_t* laddr, uint16_t* port) noexcept nogil:
        """DPVS dp_vs_laddr_bind: the pool's next local address round robin, and the next one while it has
        no free port, up to LADDR_MAX_TRIALS addresses. False: every one tried was full."""
        cdef LocalPool* pool = &self.pools[real.pool]
        cdef uint32_t _trial, a
        for _trial in range(min(pool.n, <uint32_t>LADDR_MAX_TRIALS)):
            pool.cursor = pool.cursor + 1 if pool.cursor + 1 < pool.n else 0
            a = self.pool_members[pool.first + pool.cursor]
            if port_take(&self.t.laddrs[a], port):
                laddr[0] = <uint16_t>a
                return True
        return False

    cdef void fullnat_in(self, uint8_t* p, PacketInfo* info, Flow* f, Real* real, uint32_t origlen, uint8_t v,
                         uint8_t* verdict, int32_t* detail) noexcept nogil:
        """DPVS __dp_vs_xmit_fnat4/6: the route MTU first (DF or IPv6: ICMP fragmentation needed / packet
        too big; IPv4 without DF: fragmented on the way out), then the TTL, then both ends rewritten (the
        client's address and port become the local ones), and TOA in the client's packets that
        acknowledge the real's SYN-ACK."""
        cdef Service* s = &self.t.services[real.service]
        cdef bint gso = self.cur.gso_size[self.cur_i] != 0
        cdef uint32_t l3 = info.l3, ip_len = segment_ip_len(p, info, self.cur.gso_size[self.cur_i])
        cdef int fam = info.key.family
        cdef bint split = False
        if ip_len > s.mtu and not info.len_from_capture:
            if fam == 4 and not (p[l3 + IP4_FRAG] & (IP4_DF >> 8)):
                if gso or info.end > info.caplen or (p[l3] & 0x0F) * 4 != IP4_HEADER_LEN:
                    self.finish(verdict, detail, V_DROP, D_TOO_BIG_DROPPED)     # what l4emu does not fragment
                    return
                split = True
            else:
                self.icmp_back(p, info, s, D_TOO_BIG, max(s.mtu, <uint32_t>IPV6_MIN_MTU) if fam == 6 else s.mtu,
                               verdict, detail)
                return
        if not self.routed(p, info, s, verdict, detail):
            return
        rewrite_both(p, info, self.t.laddrs[f.laddr].addr, f.lport, real.addr, real.port)
        real.in_pkts += 1
        real.in_bytes += origlen
        if (info.key.proto == IPPROTO_TCP and real.toa and (f.flags & F_FDATA)
                and acks_first_data(p, info, f.fdata_seq)):
            # (a super-packet: each of its segments would carry the option and outgrow the MTU)
            if split or gso or info.len_from_capture or ip_len + toa_length(fam) > s.mtu:
                self.toa_too_big += 1               # DPVS: EDPVS_FRAG, sent on without it
            else:
                self.insert_toa(p, info, f, s)
        if split and self.fragment_out(l3, s.mtu, real - self.t.reals, 0, False) < 0:
            v = V_DROP
        self.finish(&self.cur.verdict[self.cur_i], &self.cur.detail[self.cur_i], v,   # the arrays may have moved
                    D_NO_MEMORY if v == V_DROP else real - self.t.reals)

    cdef bint insert_toa(self, uint8_t* p, PacketInfo* info, Flow* f, Service* s) noexcept nogil:
        """DPVS tcp_in_add_toa: TOA right after the fixed TCP header, the options and data moved down
        (here the headers move up into the batch's headroom instead, or the packet moves to fresh room);
        skipped and counted when the options have no room for it (Ethernet padding is left behind).
        What it reads of `info` and the batch is read once into locals first: the packet's bytes are
        written through a uint8_t*, which may alias anything, so the compiler would load them again."""
        cdef Py_ssize_t i = self.cur_i
        cdef uint64_t* offset = self.cur.offset
        cdef uint16_t* room = self.cur.headroom
        cdef uint32_t l3 = info.l3, l4 = info.l4, end = info.end
        cdef int family = info.key.family
        cdef uint32_t n = toa_length(family)
        cdef uint32_t head = l4 + TCP_HEADER_LEN
        cdef uint32_t kept = end if end < info.caplen else info.caplen
        cdef uint16_t headroom = room[i]
        cdef uint64_t old
        cdef uint8_t* q
        if ((p[l4 + TCP_DATA_OFFSET] >> 4) * 4 + n > TCP_MAX_HEADER_LEN
                or (family == 4 and end - l3 + n > 0xFFFF)):
            self.toa_no_room += 1                   # DPVS: EDPVS_NOROOM, sent on without it
            return False
        if headroom >= n:                           # in place: the headers move up into the headroom
            q = p - n
            offset[i] = offset[i] - n
            room[i] = <uint16_t>(headroom - n)
            self.cur.caplen[i] = kept + n
            self.cur.origlen[i] = end + n
            memmove(q, p, head)
        else:                                       # no headroom: a copy at the end of the batch
            old = offset[i]
            q = self.cur.room(i, kept + n)
            if q == NULL:
                self.toa_no_room += 1
                return False
            p = self.cur.data + old                 # the buffer may have moved
            memcpy(q, p, head)
            memcpy(q + head + n, p + head, kept - head)
            self.cur.origlen[i] = end + n
        if family == 4:                             # a literal family each: the inline write_toa is
            write_toa(q, l3, l4, 4, f.client, f.cport)  # compiled with constant sizes, its loops unrolled
        else:
            write_toa(q, l3, l4, 6, f.client, f.cport)
        self.toa_added += 1
        return True

    cdef void fullnat_out(self, uint8_t* p, PacketInfo* info, Flow* f, Real* real, Service* s) noexcept nogil:
        """The real's answer to the local address goes back from the VIP to the client (DPVS
        __dp_vs_out_xmit_fnat4/6); its SYN-ACK offers an MSS that leaves room for TOA (tcp_out_adjust_mss)."""
        cdef uint32_t limit
        rewrite_both(p, info, s.vip, s.vport, f.client, f.cport)
        if (real.toa and info.key.proto == IPPROTO_TCP
                and (info.tcp_flags & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK)):
            limit = info.l4 + (p[info.l4 + TCP_DATA_OFFSET] >> 4) * 4
            lower_mss(p, info.l4, limit if limit < info.caplen else info.caplen, toa_length(info.key.family))

    def add_local_pool(self, addresses, uint32_t low, uint32_t high):
        """A pool of local addresses (packed bytes) for fullnat reals; returns its index. An address given
        again (in another pool) is the same address with the same ports: its allocator is shared."""
        cdef uint32_t k, a
        cdef LocalAddr* la
        if self.started:
            raise RuntimeError("local addresses are fixed once packets have been processed")
        if not addresses or not 1 <= low <= high <= 65535:
            raise ValueError("a pool needs addresses and a port range within 1-65535")
        members = []
        for address in addresses:
            padded = _addr16(address)
            for a in range(self.n_laddrs):
                if bytes(self.t.laddrs[a].addr[:16]) == padded:
                    break
            else:
                if self.n_laddrs >= 0xFFFF:
                    raise ValueError("at most 65535 local addresses")
                la = <LocalAddr*>realloc(self.t.laddrs, (self.n_laddrs + 1) * sizeof(LocalAddr))
                if la == NULL:
                    raise MemoryError()
                self.t.laddrs = la
                la = &self.t.laddrs[self.n_laddrs]
                la.addr = padded
                la.family = 4 if len(address) == 4 else 6
                la.size = la.n_free = high - low + 1
                la.head = 0
                la.flows = 0
                la.ring = <uint16_t*>malloc(la.size * sizeof(uint16_t))
                if la.ring == NULL:
                    raise MemoryError()
                for k in range(la.size):
                    la.ring[k] = <uint16_t>(low + k)
                a = self.n_laddrs
                self.n_laddrs += 1
            members.append(a)
        self.pools = <LocalPool*>realloc(self.pools, (self.n_pools + 1) * sizeof(LocalPool))
        self.pool_members = <uint32_t*>realloc(self.pool_members, (self.n_members + len(members)) * sizeof(uint32_t))
        if self.pools == NULL or self.pool_members == NULL:
            raise MemoryError()
        self.pools[self.n_pools].first = self.n_members
        self.pools[self.n_pools].n = len(members)
        self.pools[self.n_pools].cursor = len(members) - 1     # DPVS starts at the list's first address
        for a in members:
            self.pool_members[self.n_members] = a
            self.n_members += 1
        self.n_pools += 1
        self.table.bind(self.t.reals, self.t.services, self.t.laddrs, on_flow_removed, &self.t)
        return self.n_pools - 1

    def local_addresses(self):
        """Per local address, in the order first given: (address bytes, ports, ports in use, flows given)."""
        cdef uint32_t k
        return [(bytes(self.t.laddrs[k].addr[:4 if self.t.laddrs[k].family == 4 else 16]), self.t.laddrs[k].size,
                 self.t.laddrs[k].size - self.t.laddrs[k].n_free, self.t.laddrs[k].flows) for k in range(self.n_laddrs)]

    def set_forwarding(self, uint32_t service, uint32_t mtu, bytes source4, bytes source6, str fragments="drop"):
        """A service's route MTU towards its reals, the switch's own addresses (outer sources, ICMP) and
        what a fragment for its VIP gets (FRAGMENT_POLICIES)."""
        if service >= self.n_services:
            raise IndexError(f"no service {service}")
        self.t.services[service].fragments = FRAGMENT_POLICIES[fragments]
        self.t.services[service].mtu = mtu
        self.t.services[service].source4 = _addr16(source4)
        self.t.services[service].source6 = _addr16(source6)

    def set_real_forwarding(self, uint32_t index, str method, int family, str tun_type="ipip",
                            str tun_flags="nocsum", int tun_port=0, bint katran=False, bytes mac=b"",
                            int pool=-1, bint toa=True):
        """A real's forwarding method (FORWARD_METHODS), its own address family (a tunnel may carry
        IPv4 in IPv6 and back), the tunnel's type, flags and GUE port, the Ethernet destination; fullnat:
        its local address pool (add_local_pool) and whether TOA carries the client's address."""
        cdef Real* r
        if index >= self.n_reals:
            raise IndexError(f"no real {index}")
        if self.started:
            raise RuntimeError("forwarding is fixed once packets have been processed")
        if (method == "fullnat") != (0 <= pool < <int>self.n_pools):
            raise ValueError("a fullnat real, and only one, takes a local address pool (add_local_pool)")
        r = &self.t.reals[index]
        r.forward = FORWARD_METHODS[method]
        r.pool = pool if pool >= 0 else 0
        r.toa = toa
        r.family = family
        r.tun_type = TUN_TYPES[tun_type]
        r.tun_flags = TUN_FLAGS[tun_flags]
        r.tun_port = tun_port
        r.katran = katran
        r.has_mac = len(mac) == ETH_ADDR_LEN
        if r.has_mac:
            memcpy(r.mac, <const uint8_t*>mac, ETH_ADDR_LEN)

    cdef void finish(self, uint8_t* verdict, int32_t* detail, uint8_t v, int32_t d) noexcept nogil:
        verdict[0] = v
        detail[0] = d
        self.verdicts[v] += 1
        if v == V_DROP or v == V_ICMP:              # an ICMP error stands for a dropped packet
            self.drops[d] += 1
        elif v == V_PASS:
            self.passes[d] += 1

    def inside_view(self, Batch before, Batch after):
        """Turn `before` (a copy of `after` taken before it was processed) into what the reals saw:
        packets sent to a real as rewritten, replies as the real sent them, answers captured from the
        service side with the flow's real as their source (as replies); the rest is marked dropped."""
        cdef Py_ssize_t i
        cdef PacketInfo info
        cdef Real* real
        cdef Flow* f
        cdef uint8_t v
        cdef uint8_t* p
        cdef Py_ssize_t last = -1, kept = 0
        for i in range(after.n):                    # the fragments the switch made: slots in the copy too
            if i == 0 or after.source[i] != after.source[i - 1] or before.n >= after.n:
                last = kept                         # a packet the copy holds
                kept += 1
            else:
                last = before.insert(last, after.caplen[i])     # chained after the one before it
                if last < 0:
                    raise MemoryError()
        before.settle()
        if before.n != after.n:
            raise ValueError(f"the copy holds {before.n} packets, the batch {after.n}")
        for i in range(after.n):
            v = after.verdict[i]
            before.detail[i] = after.detail[i]
            before.verdict[i] = v if v == V_NEW or v == V_FORWARD or v == V_REPLY or v == V_MORE else V_DROP
            p = before.data + before.offset[i]
            if v == V_NEW or v == V_FORWARD or v == V_MORE:
                if after.caplen[i] != before.caplen[i]:     # it grew (a tunnel): fresh room, as in `after`
                    p = before.room(i, after.caplen[i])
                    if p == NULL:
                        raise MemoryError()
                    before.origlen[i] = after.origlen[i]
                memcpy(p, after.data + after.offset[i], after.caplen[i])
            elif v == V_ANSWER and parse_packet(p, before.caplen[i], before.origlen[i], before.linktype[i],
                                                &info) == PARSED:
                real = &self.t.reals[after.detail[i]]
                f = self.fullnat_flow_of_answer(&info, real)
                if f != NULL:                       # a full-NAT real answered its local address and port
                    rewrite_both(p, &info, real.addr, real.port, self.t.laddrs[f.laddr].addr, f.lport)
                else:
                    rewrite(p, &info, False, real.addr, real.port)
                before.verdict[i] = V_REPLY

    cdef Flow* fullnat_flow_of_answer(self, const PacketInfo* info, const Real* real) noexcept nogil:
        """The full-NAT flow a captured answer (VIP or capture server -> client) belongs to, or NULL."""
        cdef PacketKey fwd
        cdef uint32_t ref
        cdef const Service* s = &self.t.services[real.service]
        if real.forward != FWD_FULLNAT:
            return NULL
        memset(&fwd, 0, sizeof(PacketKey))
        memcpy(fwd.src, info.key.dst, 16)
        memcpy(fwd.dst, s.vip, 16)
        fwd.sport = info.key.dport
        fwd.dport = s.vport
        fwd.proto = info.key.proto
        fwd.family = info.key.family
        ref = key_lookup(self.table, &fwd, key_hash(self.table, &fwd))
        if ref == 0 or ref_is_reply(ref):
            return NULL
        return &self.table.flows[ref_index(ref)]

    # ---- snapshots (plain Python data; inspection never borrows internals) --------------------
    def expire_due(self):
        """Reap every flow already expired on the packet clock (before a snapshot)."""
        with nogil:
            self.table.expire_due(self.clock_ns)

    def counters(self):
        cdef int k
        return {
            "packets": self.packets, "bytes": self.bytes,
            "new": self.verdicts[<int>V_NEW], "forward": self.verdicts[<int>V_FORWARD],
            "reply": self.verdicts[<int>V_REPLY], "answer": self.verdicts[<int>V_ANSWER],
            "passed": self.verdicts[<int>V_PASS], "icmp": self.verdicts[<int>V_ICMP],
            "dropped_total": self.verdicts[<int>V_DROP],
            "dropped": {DROP_REASONS[k]: self.drops[k] for k in range(N_DROP_REASONS) if self.drops[k]},
            "passed_by_reason": {PASS_REASONS[k]: self.passes[k] for k in range(N_PASS_REASONS) if self.passes[k]},
            "connections": self.table.used, "peak_connections": self.table.peak,
            **self.table.removed_by_reason(), "insert_failed": self.table.insert_failed,
            "rescheduled": self.rescheduled, "broken": self.broken, "blackholed": self.blackholed,
            "clock_ns": self.clock_ns, "fragments_made": self.fragments_made,
            "fragments_held": self.fragments_held, "fragments_released": self.fragments_released,
            "fragments_expired": self.fragments_expired, "fragment_datagrams_forgotten": self.frag_track_forgotten,
            **({"toa_added": self.toa_added, "toa_no_room": self.toa_no_room, "toa_too_big": self.toa_too_big}
               if self.n_laddrs else {}),     # fullnat's, shown where there is a local address
            **self.reasm.counters(),
        }

    def unattributed(self):
        """Packets from the service side that no flow owned: ([per front, in add order], [per real])."""
        return ([self.unattributed_front[k] for k in range(self.n_fronts)],
                [self.unattributed_real[k] for k in range(self.n_reals)])

    def real_counters(self):
        """Per real, in config order: the counters IPVS shows (ActiveConn, InActConn, --stats)."""
        cdef uint32_t k
        return [{
            "weight": self.t.reals[k].weight, "down": bool(self.t.reals[k].flags & RF_DOWN),
            "persistent": self.t.reals[k].persistent,
            "overloaded": bool(self.t.reals[k].flags & RF_OVERLOADED),
            "active": self.t.reals[k].active, "inactive": self.t.reals[k].inactive,
            "conns": self.t.reals[k].conns, "in_pkts": self.t.reals[k].in_pkts,
            "out_pkts": self.t.reals[k].out_pkts, "in_bytes": self.t.reals[k].in_bytes,
            "out_bytes": self.t.reals[k].out_bytes, "forward": FORWARD_NAMES[self.t.reals[k].forward],
        } for k in range(self.n_reals)]

    def state_counts(self):
        """Connections in the table per state name (STATE_NAMES order; templates are not connections): the
        counters the packet path keeps as flows move, so reading them costs the same for any table size."""
        cdef int k
        return {STATE_NAMES[k]: self.t.states[k] for k in range(N_STATES)}

    def flows(self):
        """Every tracked flow: (real index, client address bytes, client port, state name, expires_ns).

        A persistence template shows as IPVS shows it: state NONE, client port 0, the client's network."""
        cdef uint32_t k
        cdef Flow* f
        out = []
        for k in range(self.table.next_unused):
            f = &self.table.flows[k]
            if f.flags & F_IN_USE:
                out.append((f.real, bytes(f.client[:4] if f.family == 4 else f.client[:16]),
                            f.cport, STATE_NAMES[<int>f.state], f.expires_ns))
        return out


def parse_frame(frame, uint16_t linktype):
    """The datapath's parse of one frame, for the emulated hosts (the project's one parser):
    (family, src, dst, proto, sport, dport, l3, l4, end) of a TCP segment or UDP datagram held whole
    in the frame (end: where its IP packet ends), else None: not IP, not TCP/UDP, an ICMP error, a
    fragment, malformed, or cut short by the capture."""
    cdef const uint8_t[::1] view = frame
    cdef PacketInfo info
    cdef uint32_t n = <uint32_t>view.shape[0]
    cdef size_t alen
    if n == 0 or parse_packet(&view[0], n, n, linktype, &info) != PARSED or info.icmp_error or info.end > n:
        return None
    alen = 4 if info.key.family == 4 else 16
    return (info.key.family, bytes(info.key.src[:alen]), bytes(info.key.dst[:alen]), info.key.proto,
            info.key.sport, info.key.dport, info.l3, info.l4, info.end)


cdef Real EMPTY_REAL


cdef inline object _addr16(bytes packed):
    """An address as the 16-byte array the C structs hold (IPv4 in the first four bytes)."""
    if len(packed) not in (4, 16):
        raise ValueError("an address is 4 or 16 bytes")
    return packed + bytes(16 - len(packed))
