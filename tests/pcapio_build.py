"""Hand-built pcap/pcapng bytes in either byte order, so tests control every field, broken ones included."""
import struct


def pad4(data):
    return data + b"\0" * (-len(data) % 4)


def pcap_header(e="<", nano=False, snaplen=65535, linktype=1, version=(2, 4)):
    return struct.pack(e + "IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, *version, 0, 0, snaplen, linktype)


def pcap_record(e, ts_ns, data, nano=False, caplen=None, origlen=None, frac=None):
    """frac: the sub-second field as stored (to write an invalid one)."""
    if frac is None:
        frac = ts_ns % 10**9 if nano else ts_ns % 10**9 // 1000
    caplen = len(data) if caplen is None else caplen
    return struct.pack(e + "IIII", ts_ns // 10**9, frac, caplen, origlen or len(data)) + data


def pcap(packets, e="<", nano=False, **header):
    """packets: (ts_ns, bytes) pairs."""
    return pcap_header(e, nano, **header) + b"".join(pcap_record(e, t, d, nano) for t, d in packets)


def block(e, btype, body, length=None, trailer=None):
    length = 12 + len(body) if length is None else length
    return struct.pack(e + "II", btype, length) + body + struct.pack(e + "I", length if trailer is None else trailer)


def option(e, code, value):
    return struct.pack(e + "HH", code, len(value)) + pad4(value)


def shb(e="<", major=1, minor=0):
    return block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, major, minor, -1))


def idb(e, linktype, snaplen=0, tsresol=None, tsoffset=None):
    options = b""
    if tsresol is not None:
        options += option(e, 9, bytes([tsresol]))
    if tsoffset is not None:
        options += option(e, 14, struct.pack(e + "q", tsoffset))
    if options:
        options += struct.pack(e + "HH", 0, 0)
    return block(e, 1, struct.pack(e + "HHI", linktype, 0, snaplen) + options)


def epb(e, iface, units, data, caplen=None, origlen=None, options=b""):
    caplen = len(data) if caplen is None else caplen
    head = struct.pack(e + "IIIII", iface, units >> 32, units & 0xFFFFFFFF, caplen, origlen or len(data))
    return block(e, 6, head + pad4(data) + options)


def pb(e, iface, units, data):
    head = struct.pack(e + "HHIIII", iface, 0, units >> 32, units & 0xFFFFFFFF, len(data), len(data))
    return block(e, 2, head + pad4(data))


def spb(e, origlen, data):
    return block(e, 3, struct.pack(e + "I", origlen) + pad4(data))
