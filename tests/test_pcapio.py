"""pcap/pcapng reader and writer against scapy, tshark and hand-built files: bytes, lengths, times, faults."""
import os
import re
import subprocess
import sys
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from scapy.all import IP, TCP, UDP, Ether, PcapWriter, rdpcap, wrpcap

import l4emu.datapath._batch
import l4emu.io.pcap._read
import l4emu.io.pcap._write
from l4emu.datapath._batch import Batch
from l4emu.io import CaptureError, Interface, WriteError, open_capture, open_writer
from pcapio_build import epb, idb, pb, pcap, pcap_header, pcap_record, shb, spb, block

ROOT = os.path.dirname(os.path.dirname(l4emu.datapath._batch.__file__))
T0 = 1_700_000_000_123_456_789  # ns
DROP, PASS, NEW = 5, 1, 2


def frames(count=12):
    return [bytes(Ether() / IP(dst=f"10.0.0.{i}") / (TCP(dport=80) if i % 2 else UDP()) / (b"x" * (i * 7 % 61)))
            for i in range(count)]


def read_all(path, capacity=4096):
    """[(bytes, ts_ns)], the reader, and reader.error as it was at each yield."""
    out, errors_during = [], []
    with open_capture(path) as reader:
        for batch in reader.batches(capacity):
            errors_during.append(reader.error)
            out += [(batch.packet(i), batch.timestamp_ns(i)) for i in range(len(batch))]
        return out, reader, errors_during


def tshark(path, *fields):
    run = subprocess.run(["tshark", "-r", str(path), "-T", "fields", *sum((["-e", f] for f in fields), [])],
                         capture_output=True, text=True, check=True)
    return [line.split("\t") for line in run.stdout.splitlines()]


def epoch(ns):
    return f"{ns // 10**9}.{ns % 10**9:09d}"


def copy(src, dst, **kw):
    with open_capture(src) as reader, open_writer(dst, reader.interfaces, nanosecond=reader.nanosecond, **kw) as w:
        for batch in reader.batches(5):
            w.write(batch)
        return w.packets_written


def test_the_compiled_extensions_are_loaded():
    assert all(m.__file__.endswith(".so") for m in (l4emu.io.pcap._read, l4emu.io.pcap._write, l4emu.datapath._batch))


@pytest.mark.parametrize("nano", [False, True])
def test_pcap_matches_scapy_and_copies_byte_for_byte(tmp_path, nano):
    src = tmp_path / "in.pcap"
    packets = [Ether(f) for f in frames()]
    for i, p in enumerate(packets):
        p.time = Decimal(T0 + i * 1_000_003) / 10**9 if nano else Decimal(T0 // 1000 + i * 1003) / 10**6
    with PcapWriter(str(src), nano=nano) as w:
        w.write(packets)
    got, reader, _ = read_all(src, capacity=5)
    assert reader.format == "pcap" and reader.nanosecond == nano
    assert reader.interfaces == [Interface(1, 65535, nano)]
    assert got == [(bytes(p), int(p.time * 10**9)) for p in rdpcap(str(src))]
    assert copy(src, tmp_path / "out.pcap") == len(packets)
    assert (tmp_path / "out.pcap").read_bytes() == src.read_bytes()
    copy(src, tmp_path / "out.pcapng")
    assert read_all(tmp_path / "out.pcapng")[0] == got
    assert tshark(tmp_path / "out.pcapng", "frame.time_epoch", "frame.len") == [
        [epoch(t), str(len(d))] for d, t in got]


@pytest.mark.parametrize("nano", [False, True])
def test_big_endian_pcap_with_fcs_bits_in_the_link_type(tmp_path, nano):
    packets = [(T0 // 1000 * 1000 + i * 10**6, f) for i, f in enumerate(frames(5))]
    src = tmp_path / "be.pcap"
    src.write_bytes(pcap(packets, ">", nano, linktype=0xF000_0001))
    got, reader, _ = read_all(src)
    assert reader.interfaces == [Interface(1, 65535, nano)] and got == [(d, t) for t, d in packets]
    assert [bytes(p) for p in rdpcap(str(src))] == [f for _, f in packets]


def test_pcapng_sections_in_both_byte_orders_number_interfaces_globally(tmp_path):
    f = frames(6)
    src = tmp_path / "multi.pcapng"
    src.write_bytes(shb(">") + idb(">", 1, 0) + epb(">", 0, T0 // 1000, f[0])
                    + shb("<") + idb("<", 101, 1500, tsresol=9) + idb("<", 1, 0)
                    + epb("<", 1, T0 // 1000, f[1]) + epb("<", 0, T0 + 5, f[2][14:]) + pb("<", 1, T0 // 1000, f[3]))
    got, reader, _ = read_all(src)
    assert reader.format == "pcapng" and reader.error is None
    assert reader.interfaces == [Interface(1, 0, False), Interface(101, 1500, True), Interface(1, 0, False)]
    assert got == [(f[0], T0 // 1000 * 1000), (f[1], T0 // 1000 * 1000), (f[2][14:], T0 + 5),
                   (f[3], T0 // 1000 * 1000)]
    # tshark numbers interfaces per section; our output has one section, so global numbers
    assert tshark(src, "frame.section_number", "frame.interface_id", "frame.encap_type") == [
        ["1", "0", "1"], ["2", "1", "1"], ["2", "0", "7"], ["2", "1", "1"]]
    copy(src, tmp_path / "out.pcapng")
    assert read_all(tmp_path / "out.pcapng")[0] == got
    assert tshark(tmp_path / "out.pcapng", "frame.interface_id", "frame.encap_type") == [
        ["0", "1"], ["2", "1"], ["1", "7"], ["2", "1"]]
    with pytest.raises(WriteError, match="several link types: write .pcapng"):
        copy(src, tmp_path / "out.pcap")
    assert sorted(os.listdir(tmp_path)) == ["multi.pcapng", "out.pcapng"]


@pytest.mark.parametrize("tsresol, units, offset, ns, ask_tshark", [
    (3, 1_700_000_000_123, 0, 1_700_000_000_123_000_000, True),
    (9, T0, 0, T0, True),
    (0x80 | 10, (1_700_000_000 << 10) + 512, 0, 1_700_000_000_500_000_000, True),
    (6, 123, 1_700_000_000, 1_700_000_000_000_123_000, True),
    # tshark 4.0 overflows on these two (it prints 5.013460736 and 17000000.012776324)
    (0x80 | 40, (5 << 40) + (1 << 39), 0, 5_500_000_000, False),
    (12, 17_000_000_123_456_789_012, 0, 17_000_000_123_456_789, False),
])
def test_if_tsresol_and_if_tsoffset(tmp_path, tsresol, units, offset, ns, ask_tshark):
    src = tmp_path / "res.pcapng"
    src.write_bytes(shb() + idb("<", 1, 0, tsresol, offset or None) + epb("<", 0, units, frames(1)[0]))
    got, reader, _ = read_all(src)
    assert got[0][1] == ns and reader.nanosecond == (tsresol not in (3, 6, 0x80 | 10))
    if ask_tshark:
        assert tshark(src, "frame.time_epoch") == [[epoch(ns)]]


def test_simple_packet_blocks_and_unknown_blocks(tmp_path):
    data = bytes(range(100))
    src = tmp_path / "spb.pcapng"
    src.write_bytes(shb() + block("<", 4, b"\0" * 8) + idb("<", 1, 64) + block("<", 0x99, b"abcdefgh")
                    + epb("<", 0, T0 // 1000, data[:60]) + spb("<", 100, data[:64]) + spb("<", 10, data[:12])
                    + block("<", 5, b"\0" * 12))
    got, reader, _ = read_all(src)
    ts = T0 // 1000 * 1000
    assert reader.error is None and got == [(data[:60], ts), (data[:64], ts), (data[:10], ts)]
    assert tshark(src, "frame.cap_len", "frame.len") == [["60", "60"], ["64", "100"], ["10", "10"]]
    # an SPB shorter than min(original length, snaplen): tshark calls it corrupt, we keep what is there
    src.write_bytes(shb() + idb("<", 1, 0) + spb("<", 200, data[:20]))
    assert read_all(src)[0] == [(data[:20], 0)]


def _faults():
    f = frames(3)
    good_pcap = pcap([(T0, x) for x in f])
    at_pcap = len(good_pcap)
    ng = shb() + idb("<", 1, 0) + b"".join(epb("<", 0, 1, x) for x in f)
    at = len(ng)
    return {
        "record cut short": (good_pcap + pcap_record("<", 0, b"x" * 100)[:60], at_pcap,
                             "record cut short: length 100 but 44 bytes left"),
        "record header cut short": (good_pcap + b"\0" * 10, at_pcap, "record header cut short: 10 of 16"),
        "record too long": (pcap([(T0, x) for x in f], snaplen=0) + pcap_record("<", 0, b"", caplen=300000),
                            at_pcap, "record length 300000 exceeds 262144 bytes"),
        "block < 12": (ng + block("<", 6, b"", length=8), at, "block length 8 is less than 12"),
        "block not aligned": (ng + block("<", 9, b"\0" * 18), at, "block length 30 is not a multiple of 4"),
        "block past end": (ng + block("<", 9, b"\0" * 8, length=400), at, "block length 400 runs past the end"),
        "block header cut": (ng + b"\0" * 8, at, "block cut short: 8 bytes left"),
        "trailer differs": (ng + block("<", 6, b"\0" * 20, trailer=36), at, "trailing block length 36 differs"),
        "undeclared interface": (ng + epb("<", 1, 1, f[0]), at, "references interface 1 but its section declares 1"),
        "new section forgets interfaces": (ng + shb() + epb("<", 0, 1, f[0]), at + 28, "declares 0"),
        "spb without interface": (shb() + spb("<", 4, b"abcd"), 28, "declares 0"),
        "epb longer than block": (ng + epb("<", 0, 1, b"x" * 8, caplen=100), at, "record length 100 exceeds the 8"),
        "epb too long": (ng + epb("<", 0, 1, b"x" * 300000), at, "record length 300000 exceeds 262144"),
        "bad byte-order magic": (ng + shb()[:8] + b"\x4d\x3c\x2b\x2a" + shb()[12:], at, "byte-order magic"),
        "pcapng version 2": (ng + shb(major=2), at, "unsupported pcapng version 2.0"),
    }


@pytest.mark.parametrize("name", list(_faults()))
def test_a_fault_stops_reading_after_every_good_packet(tmp_path, name):
    data, offset, problem = _faults()[name]
    path = tmp_path / "bad.cap"
    path.write_bytes(data)
    got, reader, errors_during = read_all(path, capacity=1)
    assert errors_during == [None] * len(got)
    assert len(got) == reader.packets_read == (0 if "spb" in name else 3)
    assert isinstance(reader.error, CaptureError) and reader.error.offset == offset
    assert str(reader.error).startswith(f"{path}: offset {offset}: ") and problem in str(reader.error)


@pytest.mark.parametrize("content, problem", [
    (None, "cannot open"), (b"", "empty file"), (b"\xd4\xc3", "2 bytes are too few"),
    (b"GIF89a" * 10, "unknown magic number 0x38464947"),
    (pcap_header()[:20], "offset 0: global header cut short: 20 of 24"),
    (shb()[:20], "offset 0: block length 28 runs past the end"), (b"\n\r\r\n\0\0", "block cut short"),
])
def test_unreadable_files_raise_at_open(tmp_path, content, problem):
    path = tmp_path / "x.pcap"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CaptureError, match=problem) as info:
        open_capture(path)
    assert str(info.value).startswith(str(path))


def test_verdicts_decide_what_is_written_and_comments_reach_tshark(tmp_path):
    batch = Batch.from_frames(frames(6), 1, [T0 + i for i in range(6)])
    for i, verdict in enumerate([PASS, DROP, NEW, NEW, DROP, PASS]):
        batch.set_result(i, verdict, i % 2)
    comments = [[], [b"pass zero", b""], [b"new: real 0", "new: r\u00e9al 1".encode()], None, None, [b"x", b"dropped"]]
    ifaces = [Interface(1, 0, True)]
    with open_writer(tmp_path / "kept.pcapng", ifaces, nanosecond=True) as w:
        w.write(batch, comments=comments)
        w.write(batch, include_dropped=True, comments=comments)
        assert w.packets_written == 10
    assert tshark(tmp_path / "kept.pcapng", "frame.time_epoch", "frame.comment") == [
        [epoch(T0), "pass zero"], [epoch(T0 + 2), "new: real 0"], [epoch(T0 + 3), "new: réal 1"], [epoch(T0 + 5), ""],
        [epoch(T0), "pass zero"], [epoch(T0 + 1), "dropped"], [epoch(T0 + 2), "new: real 0"],
        [epoch(T0 + 3), "new: réal 1"], [epoch(T0 + 4), "x"], [epoch(T0 + 5), ""]]
    with open_writer(tmp_path / "kept.pcap", [Interface(1, 0, False)]) as w:
        w.write(batch, comments=comments)
    assert [bytes(p) for p in rdpcap(str(tmp_path / "kept.pcap"))] == [batch.packet(i) for i in (0, 2, 3, 5)]
    assert read_all(tmp_path / "kept.pcap")[0][1][1] == (T0 + 2) // 1000 * 1000   # microseconds, as asked


@pytest.mark.parametrize("target", ["afile/out.pcap", "missing/dir/out.pcap", "out.txt"])
def test_unwritable_targets_raise_write_error_and_leave_nothing(tmp_path, target):
    (tmp_path / "afile").write_bytes(b"")
    with pytest.raises(WriteError, match=re.escape(str(tmp_path / target))):
        open_writer(tmp_path / target, [Interface(1, 0, False)])
    assert os.listdir(tmp_path) == ["afile"]


def test_a_full_disk_raises_write_error_and_leaves_no_file(tmp_path):
    script = f"""
import resource, signal
from l4emu.datapath._batch import Batch
from l4emu.io import Interface, WriteError, open_writer
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.RLIM_INFINITY))
batch = Batch.from_frames([b"x" * 1000] * 100, 1)
try:
    with open_writer({str(tmp_path / 'full.pcapng')!r}, [Interface(1, 0, False)]) as w:
        w.write(batch)
except WriteError as e:
    print(e)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    assert run.stdout.startswith(f"{tmp_path / 'full.pcapng'}: cannot write: File too large")
    assert os.listdir(tmp_path) == []


def test_an_exception_inside_the_writer_block_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError):
        with open_writer(tmp_path / "half.pcap", [Interface(1, 0, False)]) as w:
            w.write(Batch.from_frames(frames(2), 1))
            raise RuntimeError("datapath failed")
    assert os.listdir(tmp_path) == []


def test_the_writer_follows_a_growing_interface_list(tmp_path):
    f = frames(4)
    src = tmp_path / "grow.pcapng"
    src.write_bytes(shb() + idb("<", 1) + epb("<", 0, 1, f[0]) + idb("<", 101) + epb("<", 1, 2, f[1][14:])
                    + shb() + idb("<", 113) + epb("<", 0, 3, f[2]))
    with open_capture(src) as reader:
        assert reader.interfaces == []
        with open_writer(tmp_path / "out.pcapng", reader.interfaces) as w:
            for batch in reader.batches(capacity=1):
                w.write(batch)
    assert read_all(tmp_path / "out.pcapng")[0] == read_all(src)[0]
    assert tshark(tmp_path / "out.pcapng", "frame.interface_id") == [["0"], ["1"], ["2"]]


def test_a_batch_owns_its_packets_after_the_reader_closes(tmp_path):
    (tmp_path / "a.pcap").write_bytes(pcap([(T0, x) for x in frames(3)]))
    reader = open_capture(tmp_path / "a.pcap")
    batch = next(reader.batches())
    reader.close()
    reader.close()
    assert [batch.packet(i) for i in range(len(batch))] == frames(3)


def test_batches_split_when_their_byte_buffer_fills(tmp_path):
    big = [bytes([k]) * 200_000 for k in range(12)]          # 2.4 MB: more than one batch buffer
    (tmp_path / "a.pcap").write_bytes(pcap([(T0 + k, x) for k, x in enumerate(big)], snaplen=262144))
    with open_capture(tmp_path / "a.pcap") as reader:
        sizes, packets = [], []
        for batch in reader.batches():
            sizes.append(len(batch))
            packets += [batch.packet(i) for i in range(len(batch))]
    assert len(sizes) > 1 and packets == big and reader.error is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(packets=st.lists(st.tuples(st.binary(max_size=300), st.integers(0, 2**62)), max_size=20),
       fmt=st.sampled_from(["pcap", "pcapng"]), nano=st.booleans())
def test_random_batches_survive_a_round_trip(tmp_path, packets, fmt, nano):
    if fmt == "pcap":   # the classic format keeps 32-bit seconds (later times are refused, tested elsewhere)
        packets = [(d, t % (2**32 * 10**9)) for d, t in packets]
    batch = Batch.from_frames([d for d, _ in packets], 1, [t for _, t in packets])
    path = tmp_path / f"rt.{fmt}"
    with open_writer(path, [Interface(1, 0, nano)], nanosecond=nano) as w:
        w.write(batch)
    assert read_all(path)[0] == [(d, t if nano else t // 1000 * 1000) for d, t in packets]


SEED_PCAPNG = (shb() + idb("<", 1, 128, tsresol=0x85, tsoffset=7) + epb("<", 0, 99, frames(1)[0])
               + spb("<", 40, b"y" * 40) + shb(">") + idb(">", 101) + epb(">", 0, 5, b"z" * 9))
SEED_PCAP = pcap([(T0, x) for x in frames(3)], ">", True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.sampled_from([SEED_PCAPNG, SEED_PCAP]), cut=st.integers(4, 400),
       edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6))
def test_corrupt_files_never_crash_and_stay_inside_the_file(tmp_path, seed, cut, edits):
    data = bytearray(seed[:cut])
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    path = tmp_path / "fuzz.cap"
    path.write_bytes(bytes(data))
    try:
        got, reader, _ = read_all(path, capacity=2)
    except CaptureError:
        return
    assert sum(len(d) for d, _ in got) <= len(data)
    assert reader.error is not None or reader.packets_read == len(got)
