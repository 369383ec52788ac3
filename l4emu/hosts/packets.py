"""Read and write the IPv4/IPv6 TCP/UDP packets an emulated host sees, with plain struct.

Hosts are the server side, not the switch's datapath, so they parse in Python; every length is
checked before it is read, and a packet that cannot be read whole (snapped, fragmented, a bad
header) is None, never a guess. Checksums are RFC 1071 over the pseudo-header.
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

TCP, UDP, ICMP, ICMPV6 = socket.IPPROTO_TCP, socket.IPPROTO_UDP, socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
TTL = 64
IPV6_EXTENSIONS = (0, 43, 60)          # hop-by-hop, routing, destination options: walked over
IPV6_FRAGMENT = 44


@dataclass(slots=True)
class Segment:
    """One TCP segment or UDP datagram; addresses are packed bytes (4 or 16)."""
    family: int
    src: bytes
    dst: bytes
    proto: int
    sport: int
    dport: int
    payload: bytes
    l3: int                 # offsets in the frame it was read from (for rewrites in place)
    l4: int
    end: int                # where the IP packet ends (Ethernet padding may follow)
    seq: int = 0
    ack: int = 0
    flags: int = 0
    window: int = 0
    options: bytes = b""


def link_offset(frame: bytes, linktype: int) -> int | None:
    """Where the IP header starts for the link types the datapath reads; None if not IP or too short."""
    n = len(frame)
    if linktype == 1:                                   # Ethernet with up to 4 VLAN tags
        off = 12
        for _ in range(5):
            if n < off + 2:
                return None
            ethertype = int.from_bytes(frame[off:off + 2], "big")
            if ethertype not in (0x8100, 0x88A8, 0x9100):
                return off + 2 if ethertype in (0x0800, 0x86DD) else None
            off += 4
        return None
    if linktype in (101, 12, 14, 228, 229):
        return 0
    return {113: 16, 276: 20, 0: 4, 108: 4}.get(linktype) if n else None


def parse(frame: bytes, l3: int) -> Segment | None:
    """The TCP/UDP packet at `l3`, or None when it is not one that can be read whole."""
    n = len(frame)
    if n < l3 + 1:
        return None
    version = frame[l3] >> 4
    if version == 4:
        if n < l3 + 20:
            return None
        ihl = (frame[l3] & 0x0F) * 4
        total = int.from_bytes(frame[l3 + 2:l3 + 4], "big")
        frag = int.from_bytes(frame[l3 + 6:l3 + 8], "big")
        if ihl < 20 or total < ihl or n < l3 + total or frag & 0x3FFF:
            return None
        proto, src, dst = frame[l3 + 9], frame[l3 + 12:l3 + 16], frame[l3 + 16:l3 + 20]
        l4, end, family = l3 + ihl, l3 + total, 4
    elif version == 6:
        if n < l3 + 40:
            return None
        end = l3 + 40 + int.from_bytes(frame[l3 + 4:l3 + 6], "big")
        if n < end:
            return None
        proto, src, dst, l4, family = frame[l3 + 6], frame[l3 + 8:l3 + 24], frame[l3 + 24:l3 + 40], l3 + 40, 6
        while proto in IPV6_EXTENSIONS:
            if end < l4 + 8:
                return None
            proto, l4 = frame[l4], l4 + (frame[l4 + 1] + 1) * 8
        if proto == IPV6_FRAGMENT or l4 > end:
            return None
    else:
        return None
    if proto == TCP:
        if end < l4 + 20:
            return None
        sport, dport, seq, ack, off, flags, window = struct.unpack_from("!HHIIBBH", frame, l4)
        doff = (off >> 4) * 4
        if doff < 20 or l4 + doff > end:
            return None
        return Segment(family, bytes(src), bytes(dst), TCP, sport, dport, bytes(frame[l4 + doff:end]), l3, l4, end,
                       seq, ack, flags, window, bytes(frame[l4 + 20:l4 + doff]))
    if proto == UDP:
        if end < l4 + 8:
            return None
        sport, dport, length = struct.unpack_from("!HHH", frame, l4)
        if length < 8 or l4 + length > end:
            return None
        return Segment(family, bytes(src), bytes(dst), UDP, sport, dport, bytes(frame[l4 + 8:l4 + length]),
                       l3, l4, l4 + length)
    return None


def option_spans(options: bytes):
    """(offset, kind, length) of each TCP option with a length byte; stops at End of Options or at an
    option that does not fit (NOPs are stepped over)."""
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            return
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2 or i + options[i + 1] > len(options):
            return
        yield i, kind, options[i + 1]
        i += options[i + 1]


def tcp_options(options: bytes) -> dict[int, bytes]:
    """Option kind -> value."""
    return {kind: options[i + 2:i + length] for i, kind, length in option_spans(options)}


def checksum(data: bytes) -> int:
    """RFC 1071: the one's-complement of the one's-complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo(family: int, src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if family == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def _ip(family: int, src: bytes, dst: bytes, proto: int, body: bytes, ip_id: int) -> bytes:
    if family == 4:
        head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), ip_id & 0xFFFF, 0x4000, TTL, proto, 0, src, dst)
        return head[:10] + struct.pack("!H", checksum(head)) + head[12:] + body
    return struct.pack("!IHBB16s16s", 6 << 28, len(body), proto, TTL, src, dst) + body


def tcp_packet(family: int, src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
               window: int, options: bytes = b"", payload: bytes = b"", ip_id: int = 0) -> bytes:
    """An IP packet holding one TCP segment, every checksum right."""
    if len(options) % 4 or len(options) > 40:
        raise ValueError("TCP options must be padded to 32 bits and at most 40 bytes")
    head = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                       (20 + len(options)) // 4 << 4, flags, min(window, 0xFFFF), 0, 0) + options
    segment = head + payload
    csum = checksum(_pseudo(family, src, dst, TCP, len(segment)) + segment)
    return _ip(family, src, dst, TCP, segment[:16] + struct.pack("!H", csum) + segment[18:], ip_id)


def udp_packet(family: int, src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, ip_id: int = 0) -> bytes:
    datagram = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    csum = checksum(_pseudo(family, src, dst, UDP, len(datagram)) + datagram) or 0xFFFF
    return _ip(family, src, dst, UDP, datagram[:6] + struct.pack("!H", csum) + datagram[8:], ip_id)


def port_unreachable(family: int, src: bytes, dst: bytes, quoted: bytes, ip_id: int = 0) -> bytes:
    """ICMP (type 3 code 3) or ICMPv6 (type 1 code 4) quoting as much of the datagram as RFC 1812/4443 allow."""
    if family == 4:
        body = struct.pack("!BBHI", 3, 3, 0, 0) + quoted[:548]
        return _ip(4, src, dst, ICMP, body[:2] + struct.pack("!H", checksum(body)) + body[4:], ip_id)
    body = struct.pack("!BBHI", 1, 4, 0, 0) + quoted[:1232]
    csum = checksum(_pseudo(6, src, dst, ICMPV6, len(body)) + body)
    return _ip(6, src, dst, ICMPV6, body[:2] + struct.pack("!H", csum) + body[4:], ip_id)


def rewrite_ack(frame: bytes, seg: Segment, ack: int) -> bytes:
    """The frame with a new acknowledgement number, SACK blocks and timestamps turned into NOPs
    (they count in the other side's sequence space, which we do not map), and the TCP checksum redone."""
    out = bytearray(frame)
    struct.pack_into("!I", out, seg.l4 + 8, ack & 0xFFFFFFFF)
    for i, kind, length in option_spans(seg.options):
        if kind in (5, 8):
            start = seg.l4 + 20 + i
            out[start:start + length] = b"\x01" * length
    struct.pack_into("!H", out, seg.l4 + 16, 0)
    body = bytes(out[seg.l4:seg.end])
    struct.pack_into("!H", out, seg.l4 + 16, checksum(_pseudo(seg.family, seg.src, seg.dst, TCP, len(body)) + body))
    return bytes(out)


def reply_link_header(header: bytes, linktype: int) -> bytes:
    """The link header for a reply to a frame with `header`: Ethernet swaps its MAC addresses (VLAN tags stay)."""
    if linktype == 1 and len(header) >= 14:
        return header[6:12] + header[0:6] + header[12:]
    return header
