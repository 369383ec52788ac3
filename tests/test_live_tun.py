"""TUN offload checksums: a packet with only a pseudo-header sum (NEEDS_CSUM) must leave the datapath right."""
from __future__ import annotations

import random
import struct

import pytest
from scapy.all import IP, TCP, UDP, IPv6, raw

from l4emu.datapath._batch import Batch
from l4emu.io.tun import _io as _tun
from l4emu.testing._drivers import complete_form, partial_form

NEEDS_CSUM = 1


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _words(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def partial(packet) -> tuple[bytes, bytes]:
    """What the kernel hands a TUN with offloads: the field holds the pseudo-header sum, plus the virtio header."""
    data = bytearray(raw(packet))
    v6 = isinstance(packet, IPv6)
    start = 40 if v6 else (data[0] & 0xF) * 4
    proto = 6 if packet.haslayer(TCP) else 17
    offset = 16 if proto == 6 else 6
    src, dst = (data[8:24], data[24:40]) if v6 else (data[12:16], data[16:20])
    pseudo = _fold(_words(bytes(src + dst)) + proto + len(data) - start)
    data[start + offset:start + offset + 2] = struct.pack("!H", pseudo)
    header = struct.pack("<BBHHHH", NEEDS_CSUM, 0, 0, 0, start, offset)
    return header, bytes(data)


def complete(header: bytes, data: bytes) -> bytes:
    """What the kernel (or a NIC) does with the partial packet: sum from csum_start, store the complement."""
    _, _, _, _, start, offset = struct.unpack("<BBHHHH", header)
    out = bytearray(data)
    out[start + offset:start + offset + 2] = struct.pack("!H", ~_fold(_words(bytes(out[start:]))) & 0xFFFF)
    return bytes(out)


def correct(data: bytes, v6: bool) -> bytes:
    """scapy's own checksums for the same bytes: the independent oracle."""
    packet = IPv6(data) if v6 else IP(data)
    layer = packet[TCP] if packet.haslayer(TCP) else packet[UDP]
    del layer.chksum
    if not v6:
        del packet.chksum
    return raw(packet)


def through(switch, header: bytes, data: bytes) -> tuple[str, bytes]:
    """read_into's transform, the datapath, write_from's transform: what goes back to the kernel."""
    io, seen = complete_form(header, data)
    batch = Batch.from_frames([seen], _tun.LINKTYPE_RAW, [10**9])
    switch.process(batch)
    return batch.result(0)[0], partial_form(io, batch.packet(0))


def test_extension_is_compiled():
    assert _tun.__file__.endswith(".so")


@pytest.mark.parametrize("v6,proto", [(False, "tcp"), (False, "udp"), (True, "tcp")])
def test_partial_checksums_come_out_right_both_ways(switch, v6, proto):
    rng = random.Random(5)
    ip, vip, real_base = (IPv6, "2001:db8::100", "2001:db8:1::") if v6 else (IP, "10.0.0.100", "10.1.0.")
    port, real_port = (80, 8080) if proto == "tcp" else (53, 53)
    for k in range(40):
        client = f"2001:db8:9::{k + 1:x}" if v6 else f"172.16.{k}.{rng.randrange(1, 255)}"
        cport = rng.randrange(1024, 65536)
        payload = rng.randbytes(rng.randrange(0, 1400))
        l4 = (TCP(sport=cport, dport=port, flags="S") if proto == "tcp" else UDP(sport=cport, dport=port))
        verdict, out = through(switch, *partial(ip(src=client, dst=vip) / l4 / payload))
        assert verdict == "new"
        header = partial(ip(src=client, dst=vip) / l4)[0]
        assert complete(header, out) == correct(out, v6)
        real = (IPv6 if v6 else IP)(out).dst
        assert real.startswith(real_base)
        back = (TCP(sport=real_port, dport=cport, flags="SA") if proto == "tcp" else UDP(sport=real_port, dport=cport))
        verdict, out = through(switch, *partial(ip(src=real, dst=client) / back / payload))
        assert verdict == "reply"
        assert complete(header, out) == correct(out, v6)
        assert (IPv6 if v6 else IP)(out).src == vip


def test_udp_pseudo_sum_of_all_ones_is_not_taken_for_no_checksum(switch):
    # A client whose pseudo-header sum folds to 0xFFFF: its complement would be 0, UDP's "no checksum".
    fixed = _words(bytes([10, 0, 0, 100])) + 17 + 9
    n = next(n for n in range(1 << 16) if _fold(0xAC11 + n + fixed) == 0xFFFF)
    client = f"172.17.{n >> 8}.{n & 0xFF}"
    header, data = partial(IP(src=client, dst="10.0.0.100") / UDP(sport=5000, dport=53) / b"q")
    assert data[26:28] == b"\xff\xff"
    verdict, out = through(switch, header, data)
    assert verdict == "new"
    assert complete(header, out) == correct(out, False)


def test_packets_without_needs_csum_are_left_to_the_datapath(switch):
    data = raw(IP(src="172.16.0.9", dst="10.0.0.100") / TCP(sport=4000, dport=80, flags="S"))
    verdict, out = through(switch, bytes(10), data)
    assert verdict == "new" and out == correct(out, False)
