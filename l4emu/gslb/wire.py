"""A DNS query's UDP datagram and the frame that answers it, on the query's own link.

The query is read by the datapath's parse (the project's one parser: l4emu.datapath._datapath.parse_frame);
the answer mirrors it: the link header with its MACs swapped (VLAN tags kept), a fresh IP header from
the listen address to the client, UDP from port 53 back to the client's port, every checksum RFC 1071.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from l4emu.datapath._datapath import parse_frame

UDP = 17
TCP = 6
ETHERNET = 1
RAW_LINKS = (12, 14, 101, 228, 229)  # no link header: the frame is the IP packet
ANSWER_TTL = 64
IPV4_DONT_FRAGMENT = 0x4000
UDP_HEADER = 8


@dataclass(frozen=True, slots=True)
class Datagram:
    """What the parse found of one packet: addresses (packed), ports, where its layers start and end."""

    family: int
    src: bytes
    dst: bytes
    proto: int
    sport: int
    dport: int
    l3: int
    l4: int
    end: int

    def payload(self, frame: bytes) -> bytes:
        return frame[self.l4 + UDP_HEADER : self.end] if self.proto == UDP else b""


def parse(frame: bytes, linktype: int) -> Datagram | None:
    parsed = parse_frame(frame, linktype)
    return Datagram(*parsed) if parsed is not None else None


def answerable_link(linktype: int) -> bool:
    """Links whose header the answer can mirror: Ethernet (MACs swapped) and raw IP (none)."""
    return linktype == ETHERNET or linktype in RAW_LINKS


def checksum(data: bytes) -> int:
    """RFC 1071: the ones' complement of the ones' complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def answer_frame(query: bytes, linktype: int, dgram: Datagram, payload: bytes) -> bytes:
    """The frame that carries `payload` from the query's destination back to its source."""
    link = query[: dgram.l3]
    if linktype == ETHERNET:
        link = link[6:12] + link[0:6] + link[12:]
    length = UDP_HEADER + len(payload)
    if dgram.family == 4:
        pseudo = dgram.dst + dgram.src + struct.pack("!BBH", 0, UDP, length)
    else:
        pseudo = dgram.dst + dgram.src + struct.pack("!IxxxB", length, UDP)
    udp = struct.pack("!HHHH", dgram.dport, dgram.sport, length, 0) + payload
    udp_sum = checksum(pseudo + udp) or 0xFFFF  # RFC 768: a computed 0 is sent as all ones
    udp = udp[:6] + struct.pack("!H", udp_sum) + udp[8:]
    if dgram.family == 4:
        header = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, IPV4_DONT_FRAGMENT, ANSWER_TTL, UDP, 0, dgram.dst, dgram.src
        )
        header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    else:
        header = struct.pack("!IHBB16s16s", 6 << 28, length, UDP, ANSWER_TTL, dgram.dst, dgram.src)
    return link + header + udp
