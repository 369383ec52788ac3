"""Regenerate the sample captures byte for byte, so tests and docs can rely on their exact content.

The captures hold the traffic as it arrives at a switch running the embedded default config
(l4emu/data/default.toml, read here, never restated): clients address a VIP, and the reals' replies
come back addressed to the client from the real's own address and port (IPVS "Masq"), ready to be
SNATed back to the VIP. Which real answers is decided the way the rr scheduler decides it: within
each service, the k-th new connection by arrival order (timestamp of its first packet) goes to real
k mod N, reals in the order the config lists them. Every conversation with a VIP uses a fresh client
port, so each one is exactly one new connection. Times are fixed offsets from EPOCH_NS and every
random choice comes from a seeded generator: two runs give identical files (compare sha256 sums).

Usage: python pcaps/make_samples.py
"""
import ipaddress
import random
import struct
import tomllib
from pathlib import Path

from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "l4emu" / "data" / "default.toml"
EPOCH_NS = 1_700_000_000 * 10**9      # 2023-11-14 22:13:20 UTC: a fixed start, never the wall clock
SWITCH_MAC = "02:00:00:00:00:fe"
ROUTER_MAC = "02:00:00:00:00:01"      # every client arrives through one upstream router
OTHER_HOST = "10.0.0.200"             # behind the switch but no VIP: its traffic must pass untouched
CLIENTS = ["172.16.0.1", "172.16.0.2", "172.16.1.7", "172.16.2.9", "172.16.3.1", "192.168.50.10"]
CLIENTS6 = ["2001:db8:ff::10", "2001:db8:ff::11"]
DOT1Q = ((0x8100, 10),)
QINQ = ((0x88A8, 100), (0x8100, 10))


def split_endpoint(text):
    """Config endpoints are 'a.b.c.d:port' or '[v6]:port'; the generator needs both parts apart."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def load_services(path=CONFIG):
    """Services keyed by (protocol, IP family), since that is how each conversation picks its VIP."""
    with open(path, "rb") as f:
        config = tomllib.load(f)
    services = {}
    for svc in config["service"]:
        vip, vport = split_endpoint(svc["vip"])
        reals = [split_endpoint(r["address"]) for r in svc["real"]]
        services[(svc["protocol"], ipaddress.ip_address(vip).version)] = (vip, vport, reals)
    return services


def mac_of(host):
    """A host's MAC derived from its address, so frames tell which real or host sent them."""
    return "02:00:" + ":".join(f"{b:02x}" for b in ipaddress.ip_address(host).packed[-4:])


def ethernet(tags=()):
    """A link that frames packets in Ethernet to the switch, with VLAN tags outermost first."""
    def head(src_host, src, dst):
        frame = Ether(src=ROUTER_MAC if src_host is None else mac_of(src_host), dst=SWITCH_MAC)
        for tpid, vlan in tags:
            frame = frame / (Dot1AD(vlan=vlan) if tpid == 0x88A8 else Dot1Q(vlan=vlan))
        return frame / (IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst))
    return head


def raw_ip(src_host, src, dst):
    """A link without a link header (linktype 101), as a TUN device captures."""
    return IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)


class Timing:
    """Seeded delays rounded to the capture's resolution, so that writing can never reorder packets."""

    def __init__(self, seed, tick):
        self.rng, self.tick = random.Random(seed), tick

    def us(self, lo, hi):
        return self.rng.randrange(lo * 1000, hi * 1000) // self.tick * self.tick


def tcp_exchange(tm, t, fwd, rev, request, response):
    """A whole short TCP connection: handshake, request, response, FIN/ACK from both sides."""
    ci, si = tm.rng.getrandbits(32), tm.rng.getrandbits(32)
    mss = [("MSS", 1460)]

    def seg(way, flags, seq, ack, data=b"", options=()):
        head, sport, dport = way
        tcp = TCP(sport=sport, dport=dport, flags=flags, seq=seq & 0xFFFFFFFF,
                  ack=ack & 0xFFFFFFFF, window=64240, options=list(options))
        return head / tcp / data if data else head / tcp
    hop = lambda: tm.us(80, 600)          # switch <-> real round trip: same rack
    wan = lambda: tm.us(2000, 40000)      # switch <-> client round trip: across the internet
    q, r = len(request), len(response)
    out = [(t, seg(fwd, "S", ci, 0, options=mss))]
    t += hop(); out.append((t, seg(rev, "SA", si, ci + 1, options=mss)))
    t += wan(); out.append((t, seg(fwd, "A", ci + 1, si + 1)))
    t += tm.us(50, 20000); out.append((t, seg(fwd, "PA", ci + 1, si + 1, request)))
    t += hop() + tm.us(500, 20000); out.append((t, seg(rev, "PA", si + 1, ci + 1 + q, response)))
    t += wan(); out.append((t, seg(fwd, "A", ci + 1 + q, si + 1 + r)))
    t += tm.us(200_000, 3_000_000); out.append((t, seg(fwd, "FA", ci + 1 + q, si + 1 + r)))
    t += hop(); out.append((t, seg(rev, "FA", si + 1 + r, ci + 2 + q)))
    t += wan(); out.append((t, seg(fwd, "A", ci + 2 + q, si + 2 + r)))
    return out


def udp_exchange(tm, t, fwd, rev, request, response):
    """One datagram and its answer, as DNS or NTP do."""
    out = [(t, fwd[0] / UDP(sport=fwd[1], dport=fwd[2]) / request)]
    t += tm.us(80, 600) + tm.us(200, 5000)
    return out + [(t, rev[0] / UDP(sport=rev[1], dport=rev[2]) / response)]


def http(vip, real):
    """A GET and its answer; the body names the real so a reader can see where the flow went."""
    host = f"[{vip}]" if ":" in vip else vip
    request = f"GET /index.html HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
    body = f"hello from {real}\n"
    response = (f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                f"Connection: keep-alive\r\n\r\n{body}")
    return request.encode(), response.encode()


def dns(qid, name, answer):
    """A recursive A query and the real's authoritative answer."""
    query = DNS(id=qid, rd=1, qd=DNSQR(qname=name))
    reply = DNS(id=qid, qr=1, aa=1, rd=1, ra=1, qd=DNSQR(qname=name),
                an=DNSRR(rrname=name, ttl=300, rdata=answer))
    return bytes(query), bytes(reply)


class Plan:
    """Conversations waiting for their real: rr can only pick once every arrival time is known."""

    def __init__(self, services, seed, tick):
        self.services, self.rng, self.tick = services, random.Random(seed), tick
        self.items, self.ports = [], {}

    def start(self, lo_s, hi_s):
        return self.rng.randrange(lo_s * 10**9, hi_s * 10**9) // self.tick * self.tick

    def timing(self):
        return Timing(self.rng.getrandbits(64), self.tick)

    def port(self, client):
        # A fresh ephemeral port per connection, so no conversation reuses another's flow.
        self.ports[client] = self.ports.get(client, 32768 + self.rng.randrange(20000)) + 1
        return self.ports[client]

    def to_vip(self, proto, client, start, link, iface=0):
        """A conversation with the VIP serving proto for client's IP family."""
        key = (proto, ipaddress.ip_address(client).version)
        vip, vport, _ = self.services[key]
        tm, cport, qid = self.timing(), self.port(client), self.rng.randrange(65536)

        def build(real):
            rip, rport = real
            fwd = (link(None, client, vip), cport, vport)
            rev = (link(rip, rip, client), rport, cport)
            if proto == "tcp":
                return tcp_exchange(tm, start, fwd, rev, *http(vip, f"{rip}:{rport}"))
            name = f"host{qid % 50}.example.com"
            return udp_exchange(tm, start, fwd, rev, *dns(qid, name, f"192.0.2.{qid % 250 + 1}"))
        self.items.append((start, key, build, iface))

    def at_server(self, proto, client, start, link, server=None, cut=0):
        """A conversation as captured in front of the service: answers from the VIP itself (or, with
        `server`, from that one of a former load balancer's servers, the client addressing it). `cut`
        leaves out the conversation's first packets, as a capture started while it was going on."""
        key = (proto, ipaddress.ip_address(client).version)
        vip, vport, _ = self.services[key]
        sip, sport = server or (vip, vport)
        tm, cport, qid = self.timing(), self.port(client), self.rng.randrange(65536)
        fwd = (link(None, client, sip), cport, sport)
        rev = (link(sip, sip, client), sport, cport)
        if proto == "tcp":
            packets = tcp_exchange(tm, start, fwd, rev, *http(sip, f"web-{cport % 7 + 1}"))
        else:
            packets = udp_exchange(tm, start, fwd, rev, *dns(qid, f"host{qid % 50}.example.com",
                                                           f"192.0.2.{qid % 250 + 1}"))
        self.fixed(start, packets[cut:])

    def fixed(self, start, packets, iface=0):
        """Traffic no service owns: it must leave the switch exactly as it came."""
        self.items.append((start, None, lambda _real: packets, iface))

    def packets(self):
        """(time, rank, index, iface, bytes) sorted by arrival, reals assigned round-robin."""
        order = sorted(range(len(self.items)), key=lambda i: (self.items[i][0], i))
        served, out = {}, []
        for rank, i in enumerate(order):
            _, key, build, iface = self.items[i]
            real = None
            if key is not None:
                reals = self.services[key][2]
                real = reals[served.get(key, 0) % len(reals)]
                served[key] = served.get(key, 0) + 1
            for k, (t, pkt) in enumerate(build(real)):
                out.append((t, rank, k, iface, wire_bytes(pkt)))
        return sorted(out)


def wire_bytes(pkt):
    """Frame bytes as a receiving NIC captures them: Ethernet padded to its 60-byte minimum."""
    data = bytes(pkt)
    return data.ljust(60, b"\0") if isinstance(pkt, Ether) else data


def plan_sample(services):
    """sample.pcap: HTTP, DNS and IPv6 to the VIPs, tagged flows, and traffic that must pass."""
    plan = Plan(services, seed=20231114, tick=1000)
    for tags in [()] * 26 + [DOT1Q] * 3 + [QINQ]:
        plan.to_vip("tcp", plan.rng.choice(CLIENTS), plan.start(0, 19), ethernet(tags))
    for _ in range(5):
        plan.to_vip("udp", plan.rng.choice(CLIENTS), plan.start(0, 19), ethernet())
    for k in range(4):
        plan.to_vip("tcp", CLIENTS6[k % 2], plan.start(1, 18), ethernet())
    vip, _, reals = services[("tcp", 4)]
    add_passing(plan, vip, reals[0][0])
    return plan


def add_passing(plan, vip, real):
    """ARP, pings to the VIP, TCP/UDP to a host that is no VIP, and a fragmented datagram."""
    router, host = ethernet(), OTHER_HOST
    plan.fixed(0, [
        (0, Ether(src=ROUTER_MAC, dst="ff:ff:ff:ff:ff:ff") /
         ARP(op=1, hwsrc=ROUTER_MAC, psrc="10.0.0.1", hwdst="00:00:00:00:00:00", pdst=vip)),
        (1_000_000, Ether(src=mac_of(real), dst=SWITCH_MAC) /
         ARP(op=2, hwsrc=mac_of(real), psrc=real, hwdst=SWITCH_MAC, pdst="10.1.0.254"))])
    start, client = plan.start(2, 15), CLIENTS[2]
    plan.fixed(start, [(start + s * 10**9, router(None, client, vip) /
                        ICMP(type=8, id=0x1234, seq=s + 1) / bytes(range(32))) for s in range(3)])
    start, client = plan.start(3, 15), CLIENTS[0]
    cport = plan.port(client)
    plan.fixed(start, tcp_exchange(plan.timing(), start, (router(None, client, host), cport, 22),
                                   (router(host, host, client), 22, cport),
                                   b"SSH-2.0-OpenSSH_9.6\r\n", b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3\r\n"))
    start, client = plan.start(4, 16), CLIENTS[1]
    plan.fixed(start, udp_exchange(plan.timing(), start, (router(None, client, host), 123, 123),
                                   (router(host, host, client), 123, 123),
                                   b"\x23" + bytes(47), b"\x24\x02" + bytes(46)))
    start = plan.start(5, 15)
    big = IP(id=0x4242, src=CLIENTS[3], dst=host) / UDP(sport=40000, dport=5001) / bytes(2000)
    plan.fixed(start, [(start + k * 20_000, Ether(src=ROUTER_MAC, dst=SWITCH_MAC) / frag)
                       for k, frag in enumerate(fragment(big, fragsize=1480))])


def plan_sample_ns(services):
    """sample-ns.pcapng: a few conversations over Ethernet (iface 0) and raw IP (iface 1), ns times."""
    plan = Plan(services, seed=1114, tick=1)
    plan.to_vip("tcp", CLIENTS[0], plan.start(0, 3), ethernet(), iface=0)
    plan.to_vip("tcp", CLIENTS[1], plan.start(0, 3), ethernet(), iface=0)
    plan.to_vip("udp", CLIENTS[2], plan.start(0, 3), ethernet(), iface=0)
    plan.to_vip("tcp", CLIENTS[3], plan.start(0, 3), raw_ip, iface=1)
    plan.to_vip("udp", CLIENTS[4], plan.start(0, 3), raw_ip, iface=1)
    plan.to_vip("tcp", CLIENTS6[0], plan.start(0, 3), raw_ip, iface=1)
    return plan


def plan_front(services):
    """front.pcap: captured in front of the service, both directions at the VIP (vantage point 1)."""
    plan = Plan(services, seed=1, tick=1000)
    for _ in range(12):
        plan.at_server("tcp", plan.rng.choice(CLIENTS), plan.start(1, 9), ethernet())
    for _ in range(3):
        plan.at_server("udp", plan.rng.choice(CLIENTS), plan.start(1, 9), ethernet())
    for client in CLIENTS6:
        plan.at_server("tcp", client, plan.start(1, 9), ethernet())
    plan.at_server("tcp", CLIENTS[5], 0, ethernet(), cut=4)     # began before the capture did
    return plan


FORMER_SERVERS = [("10.9.0.1", 80), ("10.9.0.2", 80)]     # behind.pcap: the load balancer it was taken behind


def plan_behind(services):
    """behind.pcap: captured behind another load balancer, clients talking to its two servers, each
    client sticking to one (source hashing), as vantage point 2 looks."""
    plan = Plan(services, seed=2, tick=1000)
    for k in range(20):
        client = CLIENTS[k % len(CLIENTS)]
        server = FORMER_SERVERS[int(ipaddress.ip_address(client)) % len(FORMER_SERVERS)]
        plan.at_server("tcp", client, plan.start(0, 9), ethernet(), server=server)
    return plan


def client_exchange(tm, t, fwd, request, response_len, server_closes=False):
    """The client's half of one HTTP conversation, acknowledging a server that is not in the file.

    The ACK numbers name an imagined original server (its own ISN, a response of response_len
    bytes); replaying through emulated hosts re-stamps them to the emulated server's. When the
    server closes (Connection: close) its FIN comes with the response, and the client's FIN follows.
    """
    ci, si = tm.rng.getrandbits(32), tm.rng.getrandbits(32)
    head, sport, dport = fwd

    def seg(flags, seq, ack, data=b"", options=()):
        tcp = TCP(sport=sport, dport=dport, flags=flags, seq=seq & 0xFFFFFFFF, ack=ack & 0xFFFFFFFF,
                  window=502 if flags != "S" else 64240, options=list(options))
        return head / tcp / data if data else head / tcp
    wan = lambda: tm.us(2000, 40000)
    q, r = len(request), response_len + (1 if server_closes else 0)
    out = [(t, seg("S", ci, 0, options=[("MSS", 1460), ("SAckOK", b""), ("NOP", None), ("WScale", 7)]))]
    t += wan(); out.append((t, seg("A", ci + 1, si + 1)))
    t += tm.us(50, 2000); out.append((t, seg("PA", ci + 1, si + 1, request)))
    t += wan() + tm.us(500, 20000); out.append((t, seg("A", ci + 1 + q, si + 1 + r)))
    t += tm.us(200_000, 3_000_000); out.append((t, seg("FA", ci + 1 + q, si + 1 + r)))
    t += wan(); out.append((t, seg("A", ci + 2 + q, si + 2 + r)))
    return out if not server_closes else out[:-1]


def plan_clients(services):
    """clients.pcap: only what clients send (HTTP over IPv4 and IPv6, a DNS query, a probe at a
    real's closed port), for replay through emulated servers (pcaps/emulated.toml)."""
    plan = Plan(services, seed=4, tick=1000)
    for k in range(5):
        client, close = CLIENTS[k], k == 4
        vip, vport, _ = services[("tcp", 4)]
        request, response = http(vip, "10.1.0.9:8080")
        if close:
            request = request.replace(b"Accept: */*\r\n", b"Accept: */*\r\nConnection: close\r\n")
        start = plan.start(0, 4) if k < 4 else plan.start(4, 5)
        plan.fixed(start, client_exchange(plan.timing(), start, (ethernet()(None, client, vip), plan.port(client),
                                                                 vport), request, len(response), close))
    for client in CLIENTS6:
        vip, vport, _ = services[("tcp", 6)]
        request, response = http(vip, "[2001:db8:1::9]:8080")
        start = plan.start(1, 4)
        plan.fixed(start, client_exchange(plan.timing(), start, (ethernet()(None, client, vip), plan.port(client),
                                                                 vport), request, len(response)))
    vip, vport, reals = services[("udp", 4)]
    query, _ = dns(0x4C34, "www.example.com", "192.0.2.80")
    start = plan.start(2, 3)
    plan.fixed(start, [(start, ethernet()(None, CLIENTS[5], vip) / UDP(sport=plan.port(CLIENTS[5]), dport=vport)
                        / query)])
    real = services[("tcp", 4)][2][0][0]
    start = plan.start(3, 4)
    plan.fixed(start, [(start, ethernet()(None, CLIENTS[0], real) / TCP(sport=plan.port(CLIENTS[0]), dport=22,
                                                                        flags="S", seq=plan.rng.getrandbits(32),
                                                                        window=64240, options=[("MSS", 1460)]))])
    return plan


FULL_SEGMENT = 1460         # an IPv4 TCP segment of 1500 bytes, the Ethernet MTU
FRAGMENT_SIZE = 1400        # IPv4 fragments that still fit the MTU once tunnelled
IPV6_MIN_MTU = 1280


def client_side(packets, client):
    """What a dr or tun switch sees of a conversation: the client's packets (the reals answer it
    straight from the VIP, around the switch)."""
    return [(t, pkt) for t, pkt in packets if pkt.haslayer(IP) and pkt[IP].src == client
            or pkt.haslayer(IPv6) and pkt[IPv6].src == client]


def df_ethernet(src_host, src, dst, **fields):
    """Ethernet to the switch, IPv4 with DF as Linux clients send TCP (path MTU discovery)."""
    frame = Ether(src=ROUTER_MAC if src_host is None else mac_of(src_host), dst=SWITCH_MAC)
    return frame / (IPv6(src=src, dst=dst, **fields) if ":" in src else IP(src=src, dst=dst, flags="DF", **fields))


def plan_forwarding(services):
    """forwarding.pcap: the clients' side of HTTP (IPv4, IPv6) and DNS conversations for
    pcaps/forwarding.toml, where every real is reached by dr or a tunnel; plus what a forwarding hop
    must answer: TTL / hop limit 1, full-size segments with DF (and IPv6) that no longer fit once
    tunnelled, an ECN CE mark, and a full-size UDP datagram without DF; and fragmented datagrams
    (IPv4 UDP, IPv6 TCP) for services that schedule fragments by 3-tuple."""
    plan = Plan(services, seed=15, tick=1000)
    vip, vport, _ = services[("tcp", 4)]
    vip6, vport6, _ = services[("tcp", 6)]
    dns_vip, dns_port, _ = services[("udp", 4)]
    for k in range(14):
        client, start = CLIENTS[k % len(CLIENTS)], plan.start(0, 9)
        tos = {"tos": 0x03} if k == 3 else {}           # ECN CE: an IPVS tunnel writes ECT(0) outside
        request = http(vip, "the VIP")[0]
        request += b"x" * (FULL_SEGMENT - len(request)) if k % 5 == 4 else b""
        head = df_ethernet(None, client, vip, **tos)
        rev = df_ethernet(vip, vip, client)
        packets = tcp_exchange(plan.timing(), start, (head, plan.port(client), vport), (rev, vport, 0), request,
                               b"HTTP/1.1 200 OK\r\n\r\n")
        plan.fixed(start, client_side(packets, client))
    for k in range(6):
        client, start = CLIENTS6[k % 2], plan.start(0, 9)
        request = http(vip6, "the VIP")[0]
        request += b"x" * (FULL_SEGMENT - 20 - len(request)) if k % 3 == 2 else b""
        packets = tcp_exchange(plan.timing(), start, (df_ethernet(None, client, vip6), plan.port(client), vport6),
                               (df_ethernet(vip6, vip6, client), vport6, 0), request, b"HTTP/1.1 200 OK\r\n\r\n")
        plan.fixed(start, client_side(packets, client))
    for k in range(5):
        client, start = CLIENTS[k], plan.start(0, 9)
        query, _ = dns(0x1500 + k, f"host{k}.example.com", "192.0.2.15")
        plan.fixed(start, [(start, ethernet()(None, client, dns_vip) / UDP(sport=plan.port(client), dport=dns_port)
                            / (query if k < 3 else bytes(1472)))])       # the last two: 1500 bytes, no DF
    for k, client in enumerate((CLIENTS[0], CLIENTS[5], CLIENTS[4])):    # to both reals, by 3-tuple
        start = plan.start(0, 9)
        big = IP(id=0x1500 + k, src=client, dst=dns_vip) / UDP(sport=plan.port(client), dport=dns_port) / bytes(3000)
        plan.fixed(start, [(start + n * 1000, Ether(src=ROUTER_MAC, dst=SWITCH_MAC) / frag)
                           for n, frag in enumerate(fragment(big, fragsize=FRAGMENT_SIZE))])
    client, start = CLIENTS6[1], plan.start(0, 9)          # and an IPv6 one to the IPv6 HTTP service
    big6 = IPv6(src=client, dst=vip6) / IPv6ExtHdrFragment(id=0x15) / TCP(sport=plan.port(client), dport=vport6,
                                                                           flags="PA") / bytes(2000)
    plan.fixed(start, [(start + n * 1000, Ether(src=ROUTER_MAC, dst=SWITCH_MAC) / frag)
                       for n, frag in enumerate(fragment6(big6, IPV6_MIN_MTU))])
    start = plan.start(9, 10)
    plan.fixed(start, [(start, df_ethernet(None, CLIENTS[5], vip, ttl=1) /
                        TCP(sport=plan.port(CLIENTS[5]), dport=vport, flags="S", seq=1, options=[("MSS", 1460)])),
                       (start + 1000, df_ethernet(None, CLIENTS6[0], vip6, hlim=1) /
                        TCP(sport=plan.port(CLIENTS6[0]), dport=vport6, flags="S", seq=1, options=[("MSS", 1440)]))])
    return plan


def plan_fragments(services):
    """fragments.pcap: fragmented datagrams for fragments.toml's tracking services: UDP over IPv4 in
    order, in reverse and with the first fragment in the middle; TCP over IPv6 in order and
    reversed; and one datagram whose first fragment never comes (it waits, and is forgotten after
    30 s on the packet clock, when a last early fragment arrives 40 s on)."""
    plan = Plan(services, seed=16, tick=1000)
    dns_vip, dns_port, _ = services[("udp", 4)]
    vip6, vport6, _ = services[("tcp", 6)]
    orders = [(0, 1, 2), (2, 1, 0), (1, 0, 2)]
    for k in range(6):
        client, start = CLIENTS[k], plan.start(0, 5)
        big = IP(id=0x1600 + k, src=client, dst=dns_vip) / UDP(sport=plan.port(client), dport=dns_port) / bytes(3000)
        pieces = fragment(big, fragsize=FRAGMENT_SIZE)
        plan.fixed(start, [(start + n * 1000, Ether(src=ROUTER_MAC, dst=SWITCH_MAC) / pieces[m])
                           for n, m in enumerate(orders[k % 3])])
    for k, client in enumerate(CLIENTS6 * 2):    # a SYN opens the connection, then a fragmented segment
        start, cport = plan.start(0, 5), plan.port(client)
        syn = ethernet()(None, client, vip6) / TCP(sport=cport, dport=vport6, flags="S", seq=1)
        big6 = IPv6(src=client, dst=vip6) / IPv6ExtHdrFragment(id=0x1600 + k) / TCP(
            sport=cport, dport=vport6, flags="A", seq=2, ack=1) / bytes(2000)
        pieces = fragment6(big6, IPV6_MIN_MTU)
        plan.fixed(start, [(start, syn)] + [(start + (n + 1) * 1000, Ether(src=ROUTER_MAC, dst=SWITCH_MAC) / piece)
                                           for n, piece in enumerate(pieces if k < 2 else pieces[::-1])])
    lost = fragment(IP(id=0x16FF, src=CLIENTS[0], dst=dns_vip) / UDP(sport=9, dport=dns_port) / bytes(3000),
                    fragsize=FRAGMENT_SIZE)
    start = plan.start(5, 6)
    plan.fixed(start, [(start, Ether(src=ROUTER_MAC, dst=SWITCH_MAC) / lost[1]),
                       (start + 40 * 10**9, Ether(src=ROUTER_MAC, dst=SWITCH_MAC) / lost[2])])
    return plan


def load_gslb(path):
    """gslb.toml's sites, as Plan keys them (("site", name): its first service), its listen address and domain."""
    with open(path, "rb") as f:
        config = tomllib.load(f)
    sites = {}
    for site in config["site"]:
        svc = site["service"][0]
        vip, vport = split_endpoint(svc["vip"])
        sites[("site", site["name"])] = (vip, vport, [split_endpoint(r["address"]) for r in svc["real"]])
    record = config["gslb"][0]
    return sites, split_endpoint(record["listen"]), record["domain"]


def plan_gslb(sites, listen, domain):
    """gslb.pcap: clients that ask the GSLB for the domain, then connect to their site's VIP. East's
    clients come back after 10 s and connect to west, as they would once east failed (--event 8:site-down:east)."""
    plan = Plan(sites, 16, 1000)
    link = ethernet()
    east = ["172.16.0.1", "172.16.0.2", "172.16.1.7", "172.16.2.9"]
    west = ["192.168.50.10", "192.168.50.11", "192.168.7.1", "192.168.9.9"]

    def query(client, start, name=domain, qtype="A", payload=None):
        qid = plan.rng.randrange(65536)
        message = payload if payload is not None else DNS(id=qid, rd=1, qd=DNSQR(qname=name, qtype=qtype))
        packet = link(None, client, listen[0]) / UDP(sport=plan.port(client), dport=listen[1]) / message
        plan.fixed(start, [(start, packet)])

    def visit(client, site, start):
        query(client, start)
        connect_at = start + plan.timing().us(2000, 30000)
        vip, vport, _ = sites[("site", site)]
        tm, cport = plan.timing(), plan.port(client)

        def build(real):
            fwd = (link(None, client, vip), cport, vport)
            rev = (link(real[0], real[0], client), real[1], cport)
            return tcp_exchange(tm, connect_at, fwd, rev, *http(vip, f"{real[0]}:{real[1]}"))
        plan.items.append((connect_at, ("site", site), build, 0))

    for client in east:
        visit(client, "east", plan.start(0, 4))
    for client in west:
        visit(client, "west", plan.start(0, 4))
    for client in east:  # after east's failure: asked again, answered west
        visit(client, "west", plan.start(10, 14))
    query(west[0], plan.start(4, 6), name="nosuch.example.com")   # NXDOMAIN
    query(west[1], plan.start(4, 6), qtype="AAAA")                # NOERROR, no answer: the record is A only
    query(west[2], plan.start(4, 6), payload=bytes.fromhex("beef01000001000000000000c00c00010001"))  # a pointer loop: FORMERR
    # An east client asking over TCP (as dig +tcp, or a resolver after a TC answer): two queries on one
    # connection, the second split over two segments; the recorded server's side is in the capture too.
    client = "172.16.3.3"
    tm, cport, qid = plan.timing(), plan.port(client), plan.rng.randrange(65536)
    fwd = (link(None, client, listen[0]), cport, listen[1])
    rev = (link(listen[0], listen[0], client), listen[1], cport)
    vip = sites[("site", "east")][0]
    exchanges = []
    for k, qtype in enumerate(("A", "AAAA")):
        ask = DNS(id=(qid + k) % 65536, rd=1, qd=DNSQR(qname=domain, qtype=qtype))
        answer = DNS(id=ask.id, qr=1, aa=1, rd=1, qd=ask.qd,
                     an=DNSRR(rrname=domain, ttl=20, rdata=vip) if qtype == "A" else None)
        exchanges.append((bytes(ask), bytes(answer)))
    start = plan.start(6, 7)
    plan.fixed(start, dns_tcp_exchange(tm, start, fwd, rev, exchanges))
    return plan


def plan_gslb_emulated(sites, listen, domain):
    """gslb-emulated.pcap: only what clients send, for gslb-emulated.toml's emulated reals to answer. Each
    client asks the GSLB, then connects to the VIP its answer names. East's four clients come at once in
    the first 0.4 s, so requests queue behind east's one slow real and its check fails at 1 s: asking
    again at 2-3 s they are answered west; east has drained by 5 s, so at 6-7 s they are answered east."""
    plan = Plan(sites, 17, 1000)
    link = ethernet()
    east = ["172.16.0.1", "172.16.0.2", "172.16.1.7", "172.16.2.9"]
    west = ["192.168.50.10", "192.168.50.11"]

    def visit(client, site, start):
        message = DNS(id=plan.rng.randrange(65536), rd=1, qd=DNSQR(qname=domain, qtype="A"))
        query = link(None, client, listen[0]) / UDP(sport=plan.port(client), dport=listen[1]) / message
        tm = plan.timing()
        connect_at = start + tm.us(2000, 30000)
        vip, vport, _ = sites[("site", site)]
        request, _ = http(vip, "an emulated real")
        plan.fixed(start, [(start, query)])
        plan.fixed(connect_at, client_exchange(tm, connect_at, (link(None, client, vip), plan.port(client), vport),
                                               request, 0))

    def between(lo_ms, hi_ms):
        return plan.rng.randrange(lo_ms * 10**6, hi_ms * 10**6) // plan.tick * plan.tick

    for client in east:
        visit(client, "east", between(0, 400))
    for client in west:
        visit(client, "west", between(0, 1000))
    for client in east:  # east's real is down (its check failed at 1 s): answered west
        visit(client, "west", between(2000, 3000))
    for client in east:  # east has drained and passed its check at 5 s: answered east again
        visit(client, "east", between(6000, 7000))
    return plan


def dns_tcp_exchange(tm, t, fwd, rev, exchanges):
    """DNS over TCP (RFC 7766): handshake, each query behind its 2-byte length and its answer (the
    second query split over two segments), FIN/ACK from both sides."""
    ci, si = tm.rng.getrandbits(32), tm.rng.getrandbits(32)

    def seg(way, flags, seq, ack, data=b""):
        head, sport, dport = way
        tcp = TCP(sport=sport, dport=dport, flags=flags, seq=seq & 0xFFFFFFFF, ack=ack & 0xFFFFFFFF,
                  window=64240, options=[("MSS", 1460)] if "S" in flags else [])
        return head / tcp / data if data else head / tcp
    wan = lambda: tm.us(2000, 40000)
    out = [(t, seg(fwd, "S", ci, 0))]
    t += tm.us(100, 800); out.append((t, seg(rev, "SA", si, ci + 1)))
    t += wan(); out.append((t, seg(fwd, "A", ci + 1, si + 1)))
    c, s = ci + 1, si + 1
    for k, (query, answer) in enumerate(exchanges):
        query, answer = struct.pack("!H", len(query)) + query, struct.pack("!H", len(answer)) + answer
        parts = [query] if k == 0 else [query[:7], query[7:]]
        for part in parts:
            t += tm.us(50, 5000); out.append((t, seg(fwd, "PA", c, s, part)))
            c += len(part)
        t += tm.us(100, 800); out.append((t, seg(rev, "PA", s, c, answer)))
        s += len(answer)
        t += wan(); out.append((t, seg(fwd, "A", c, s)))
    t += tm.us(1000, 50000); out.append((t, seg(fwd, "FA", c, s)))
    t += tm.us(100, 800); out.append((t, seg(rev, "FA", s, c + 1)))
    t += wan(); out.append((t, seg(fwd, "A", c + 1, s + 1)))
    return out


def write_pcap(path, packets):
    """Classic pcap, microsecond, Ethernet: the format most tools read."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for t, _rank, _k, _iface, data in packets:
            sec, usec = divmod((EPOCH_NS + t) // 1000, 10**6)
            f.write(struct.pack("<IIII", sec, usec, len(data), len(data)) + data)


def option(code, value):
    """One pcapng option, padded to 32 bits as the format requires."""
    return struct.pack("<HH", code, len(value)) + value + bytes(-len(value) % 4)


def block(kind, body):
    """One pcapng block: its length both before and after the body lets readers walk both ways."""
    return struct.pack("<II", kind, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def write_pcapng(path, packets, interfaces):
    """pcapng with nanosecond timestamps (if_tsresol=9) on each (name, linktype) interface."""
    end = option(0, b"")
    out = [block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
                 + option(4, b"l4emu pcaps/make_samples.py") + end)]
    for name, linktype in interfaces:
        out.append(block(1, struct.pack("<HHI", linktype, 0, 65535)
                         + option(2, name.encode()) + option(9, b"\x09") + end))
    for t, _rank, _k, iface, data in packets:
        ts = EPOCH_NS + t
        out.append(block(6, struct.pack("<IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data))
                         + data + bytes(-len(data) % 4)))
    with open(path, "wb") as f:
        f.write(b"".join(out))


def main():
    services = load_services()
    write_pcap(HERE / "sample.pcap", plan_sample(services).packets())
    write_pcapng(HERE / "sample-ns.pcapng", plan_sample_ns(services).packets(),
                 [("eth0", 1), ("tun0", 101)])
    write_pcap(HERE / "clients.pcap", plan_clients(load_services(HERE / "emulated.toml")).packets())
    write_pcap(HERE / "front.pcap", plan_front(services).packets())
    write_pcap(HERE / "behind.pcap", plan_behind(services).packets())
    write_pcap(HERE / "forwarding.pcap", plan_forwarding(load_services(HERE / "forwarding.toml")).packets())
    write_pcap(HERE / "fragments.pcap", plan_fragments(load_services(HERE / "fragments.toml")).packets())
    write_pcap(HERE / "gslb.pcap", plan_gslb(*load_gslb(HERE / "gslb.toml")).packets())
    write_pcap(HERE / "gslb-emulated.pcap", plan_gslb_emulated(*load_gslb(HERE / "gslb-emulated.toml")).packets())


if __name__ == "__main__":
    main()
