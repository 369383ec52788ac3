"""Read and write the IPv4/IPv6 TCP/UDP packets an emulated host sees.

Reading goes through the datapath's parser (link layers, VLANs, IPv4 options, IPv6 extension
headers, lengths checked before they are read); a packet that cannot be read whole (snapped,
fragmented, a bad header) is None, never a guess. Writing builds packets with plain struct;
checksums are RFC 1071 over the pseudo-header.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from l4emu.datapath._datapath import parse_frame

TCP, UDP, ICMP, ICMPV6 = socket.IPPROTO_TCP, socket.IPPROTO_UDP, socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
TTL = 64


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
    l3: int  # offsets in the frame it was read from (for rewrites in place)
    l4: int
    end: int  # where the IP packet ends (Ethernet padding may follow)
    seq: int = 0
    ack: int = 0
    flags: int = 0
    window: int = 0
    options: bytes = b""


def parse(frame: bytes, linktype: int) -> Segment | None:
    """The TCP segment or UDP datagram in a frame, as the datapath parses it (its parser is the only
    one: a packet the switch sends to a host is one the host can read); None when it is not one that
    can be read whole."""
    parsed = parse_frame(frame, linktype)
    if parsed is None:
        return None
    family, src, dst, proto, sport, dport, l3, l4, end = parsed
    if proto == TCP:
        seq, ack, offset, flags, window = struct.unpack_from("!IIBBH", frame, l4 + 4)
        doff = (offset >> 4) * 4  # checked by the datapath: 20 or more, within the packet
        return Segment(
            family,
            src,
            dst,
            TCP,
            sport,
            dport,
            bytes(frame[l4 + doff : end]),
            l3,
            l4,
            end,
            seq,
            ack,
            flags,
            window,
            bytes(frame[l4 + 20 : l4 + doff]),
        )
    length = struct.unpack_from("!H", frame, l4 + 4)[0] or end - l4  # 0: a jumbo datagram (RFC 2675)
    return Segment(family, src, dst, UDP, sport, dport, bytes(frame[l4 + 8 : l4 + length]), l3, l4, l4 + length)


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
    return {kind: options[i + 2 : i + length] for i, kind, length in option_spans(options)}


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


def tcp_packet(
    family: int,
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    options: bytes = b"",
    payload: bytes = b"",
    ip_id: int = 0,
) -> bytes:
    """An IP packet holding one TCP segment, every checksum right."""
    if len(options) % 4 or len(options) > 40:
        raise ValueError("TCP options must be padded to 32 bits and at most 40 bytes")
    head = (
        struct.pack(
            "!HHIIBBHHH",
            sport,
            dport,
            seq & 0xFFFFFFFF,
            ack & 0xFFFFFFFF,
            (20 + len(options)) // 4 << 4,
            flags,
            min(window, 0xFFFF),
            0,
            0,
        )
        + options
    )
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
            out[start : start + length] = b"\x01" * length
    struct.pack_into("!H", out, seg.l4 + 16, 0)
    body = bytes(out[seg.l4 : seg.end])
    struct.pack_into("!H", out, seg.l4 + 16, checksum(_pseudo(seg.family, seg.src, seg.dst, TCP, len(body)) + body))
    return bytes(out)


def reply_link_header(header: bytes, linktype: int) -> bytes:
    """The link header for a reply to a frame with `header`: Ethernet swaps its MAC addresses (VLAN tags stay)."""
    if linktype == 1 and len(header) >= 14:
        return header[6:12] + header[0:6] + header[12:]
    return header
