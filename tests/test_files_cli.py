"""Bad captures, unwritable outputs and bad configs through the `l4emu` command: one line, exit 2.

A capture fault names the file, the offset and the problem, and everything good before it is
processed and written; an output that cannot be written (a full disk, /dev/full, a path that cannot
exist) fails the run and leaves no file that looks complete; every config mistake names its key.
Most cases run the click command in-process (click's CliRunner: the same code, without a process
start per case); the ones that need a process of their own (a file size limit) start one.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest
from click.testing import CliRunner

from conftest import PCAPS, ROOT
from l4emu.cli import main
from l4emu.io import open_capture
from malformed import well_formed_variants
from pcapio_build import block, epb, idb, pcap, pcap_header, pcap_record, shb, spb

FRAMES = [c.frame for c in well_formed_variants() if c.linktype == 1][:3]
GOOD_PCAP = pcap([(10**9 + k, f) for k, f in enumerate(FRAMES)])
GOOD_NG = shb() + idb("<", 1, 0) + b"".join(epb("<", 0, 10**6 + k, f) for k, f in enumerate(FRAMES))


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result


def read_back(path):
    with open_capture(path) as reader:
        packets = [b.packet(i) for b in reader.batches() for i in range(len(b))]
        assert reader.error is None
    return packets


# (file bytes, offset, problem, good packets before the fault); offsets as the reader reports them
CAPTURE_FAULTS = {
    "record cut short at the end": (GOOD_PCAP + pcap_record("<", 0, b"x" * 100)[:60], len(GOOD_PCAP),
                                    "record cut short: length 100 but 44 bytes left", 3),
    "record over 256 KiB": (pcap([(1, f) for f in FRAMES], snaplen=0) + pcap_record("<", 0, b"", caplen=262145),
                            len(GOOD_PCAP), "record length 262145 exceeds 262144 bytes", 3),
    "pcapng block shorter than 12": (GOOD_NG + block("<", 6, b"", length=8), len(GOOD_NG),
                                     "block length 8 is less than 12", 3),
    "pcapng block length not aligned": (GOOD_NG + block("<", 6, b"\0" * 18), len(GOOD_NG),
                                        "block length 30 is not a multiple of 4", 3),
    "pcapng block past the end": (GOOD_NG + block("<", 6, b"\0" * 8, length=400), len(GOOD_NG),
                                  "block length 400 runs past the end of file (20 bytes left)", 3),
    "pcapng trailer differs": (GOOD_NG + block("<", 6, b"\0" * 20, trailer=36), len(GOOD_NG),
                               "trailing block length 36 differs from leading 32", 3),
    "packet before any interface block": (shb() + spb("<", 4, b"abcd"), 28,
                                          "packet references interface 0 but its section declares 0", 0),
    "epb for an undeclared interface": (GOOD_NG + epb("<", 1, 1, FRAMES[0]), len(GOOD_NG),
                                        "packet references interface 1 but its section declares 1", 3),
}


@pytest.mark.parametrize("name", list(CAPTURE_FAULTS))
def test_a_capture_fault_is_one_line_and_the_good_packets_are_written(tmp_path, name):
    data, offset, problem, good = CAPTURE_FAULTS[name]
    src, out = tmp_path / "bad.cap", tmp_path / "out.pcapng"
    src.write_bytes(data)
    result = cli("replay", src, "-o", out)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"l4emu: error: {src}: offset {offset}: {problem}"]
    assert len(read_back(out)) == good                  # everything before the fault, translated
    assert sorted(os.listdir(tmp_path)) == ["bad.cap", "out.pcapng"]


@pytest.mark.parametrize("data, problem", [
    (b"GIF89a" * 10, "offset 0: unknown magic number 0x38464947: not a pcap or pcapng file"),
    (pcap_header()[:20], "offset 0: global header cut short: 20 of 24 bytes"),
    (shb()[:8] + b"\x00\x00\x00\x00" + shb()[12:], "offset 0: bad byte-order magic 0x00000000"),
])
def test_an_unreadable_capture_is_one_line_and_writes_nothing(tmp_path, data, problem):
    src = tmp_path / "bad.cap"
    src.write_bytes(data)
    result = cli("replay", src, "-o", tmp_path / "out.pcap")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"l4emu: error: {src}: {problem}"]
    assert os.listdir(tmp_path) == ["bad.cap"]


def test_an_unknown_link_type_is_named_with_its_offset_and_passes_untouched(tmp_path):
    src, out = tmp_path / "mixed.pcapng", tmp_path / "out.pcapng"
    ng = shb() + idb("<", 1, 0) + epb("<", 0, 1, FRAMES[0])
    src.write_bytes(ng + idb("<", 147, 0) + epb("<", 1, 2, FRAMES[0]))
    result = cli("replay", src, "-o", out, "--json")
    assert result.exit_code == 0
    [line] = result.stderr.splitlines()
    assert line.startswith(f"l4emu: warning: {src}: offset {len(ng)}: interface 1 has link type 147, "
                           "which l4emu does not parse: its packets pass untouched")
    assert read_back(out)[1] == FRAMES[0] and read_back(out)[0] != FRAMES[0]


def full_disk_run(args, limit):
    """The command in a process whose files may not grow past `limit` bytes (EFBIG, as a full disk)."""
    def limit_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return subprocess.run([sys.executable, "-m", "l4emu.cli", *map(str, args)], capture_output=True, text=True,
                          preexec_fn=limit_files, cwd=ROOT)


def test_a_full_disk_fails_the_replay_and_leaves_no_output(tmp_path):
    out = tmp_path / "out.pcap"
    proc = full_disk_run(["replay", PCAPS / "sample.pcap", "-o", out], 8192)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"l4emu: error: {out}: cannot write: File too large"]
    assert os.listdir(tmp_path) == []


def test_a_full_disk_leaves_no_half_state_file(tmp_path):
    state = tmp_path / "state.json"
    proc = full_disk_run(["replay", PCAPS / "sample.pcap", "--state-out", state], 4096)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [f"l4emu: error: {state}: File too large"]
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
@pytest.mark.parametrize("what", ["-o", "--state-out"])
def test_dev_full_fails_with_exit_2_and_stays_a_device(tmp_path, what):
    target = tmp_path / ("full.pcap" if what == "-o" else "full.json")
    target.symlink_to("/dev/full")
    result = cli("replay", PCAPS / "sample.pcap", what, target)
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"l4emu: error: {target}: ") and line.endswith("No space left on device")
    assert os.readlink(target) == "/dev/full" and os.listdir(tmp_path) == [target.name]


@pytest.mark.parametrize("target", ["afile/out.pcap", "no/such/dir/out.pcap", "afile/out.pcapng"])
def test_an_output_path_that_cannot_be_created_is_one_line(tmp_path, target):
    (tmp_path / "afile").write_bytes(b"")
    result = cli("replay", PCAPS / "sample.pcap", "-o", f"{tmp_path}/{target}")
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("l4emu: error: ")
    assert os.listdir(tmp_path) == ["afile"]


SERVICE = '[[service]]\nvip = "10.0.0.100:80"\n'
REAL = '  [[service.real]]\n  address = "10.1.0.1:8080"\n'
BAD_CONFIGS = [
    # wrong types
    ("[table]\nmax_connections = \"many\"\n" + SERVICE + REAL, "table.max_connections", "expected an integer"),
    ("[table]\nmax_connections = 1.5\n" + SERVICE + REAL, "table.max_connections", "expected an integer"),
    ("[table]\nsloppy_tcp = \"yes\"\n" + SERVICE + REAL, "table.sloppy_tcp", "expected true or false"),
    ("[table]\nconn_reuse_mode = 0\n" + SERVICE + REAL, "table.conn_reuse_mode", "expected true or false"),
    ("[timeouts]\nestablished = \"5m\"\n" + SERVICE + REAL, "timeouts.established", "expected a number"),
    ("table = 3\n" + SERVICE + REAL, "table", "expected a table"),
    ('service = "10.0.0.100:80"\n', "service", "at least one"),
    ("service = [1]\n", "service[0]", "expected a table"),
    ('[[service]]\nvip = 80\n' + REAL, "service[0].vip", "expected a string"),
    (SERVICE + 'protocol = 6\n' + REAL, "service[0].protocol", "expected a string"),
    (SERVICE + 'real = "10.1.0.1:8080"\n', "service[0].real", "at least one"),
    (SERVICE + 'real = ["10.1.0.1:8080"]\n', "service[0].real[0]", "expected a table"),
    (SERVICE + REAL + "  weight = 1.5\n", "service[0].real[0].weight", "expected an integer"),
    (SERVICE + REAL + "  weight = true\n", "service[0].real[0].weight", "expected an integer"),
    (SERVICE + "persistence = \"long\"\n" + REAL, "service[0].persistence", "expected a number"),
    # unknown keys, at every level
    ("[tabel]\n" + SERVICE + REAL, "tabel", "unknown key"),
    ("[table]\nmax_conns = 5\n" + SERVICE + REAL, "table.max_conns", "unknown key"),
    (SERVICE + "vport = 80\n" + REAL, "service[0].vport", "unknown key"),
    (SERVICE + REAL + "  wieght = 2\n", "service[0].real[0].wieght", "unknown key"),
    # duplicates, missing ports, bad addresses, weights out of range
    (SERVICE + REAL + SERVICE + REAL, "service[1].vip", "TCP 10.0.0.100:80 is defined twice"),
    (SERVICE + REAL + REAL, "service[0].real[1].address", "listed twice"),
    (SERVICE + '  [[service.real]]\n  address = "10.1.0.1"\n', "service[0].real[0].address", "not address:port"),
    ('[[service]]\nvip = "10.0.0.100"\n' + REAL, "service[0].vip", "not address:port"),
    (SERVICE + '  [[service.real]]\n  address = "10.1.0.300:80"\n', "service[0].real[0].address", "not an IP address"),
    (SERVICE + '  [[service.real]]\n  address = "backend:80"\n', "service[0].real[0].address", "not an IP address"),
    (SERVICE + '  [[service.real]]\n  address = "10.1.0.1:0"\n', "service[0].real[0].address", "out of range"),
    ('[[service]]\nvip = "[2001:db8::zz]:80"\n' + REAL, "service[0].vip", "not an IP address"),
    (SERVICE + '  [[service.real]]\n  address = "[2001:db8::1]:80"\n', "service[0].real[0].address", "IPv6 real"),
    (SERVICE + REAL + "  weight = -1\n", "service[0].real[0].weight", "out of range 0-65535"),
    (SERVICE + REAL + "  weight = 65536\n", "service[0].real[0].weight", "out of range 0-65535"),
    ("[table]\nmax_connections = 0\n" + SERVICE + REAL, "table.max_connections", "out of range"),
    ("[table]\nmax_connections = 1073741824\n" + SERVICE + REAL, "table.max_connections", "out of range 1-1073741823"),
]


@pytest.mark.parametrize("text, key, problem", BAD_CONFIGS, ids=[f"{k}:{p}" for _, k, p in BAD_CONFIGS])
def test_every_config_mistake_is_one_line_naming_the_key(tmp_path, text, key, problem):
    path = tmp_path / "lb.toml"
    path.write_text(text)
    result = cli("replay", PCAPS / "sample.pcap", "-c", path)
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"l4emu: error: {path}: {key}: ") and problem in line, line


def test_invalid_toml_is_one_line(tmp_path):
    path = tmp_path / "lb.toml"
    path.write_text("[table\nmax_connections = 5\n")
    result = cli("replay", PCAPS / "sample.pcap", "-c", path)
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"l4emu: error: {path}: not valid TOML: ")


def test_a_table_too_big_for_memory_is_one_line_naming_the_key(tmp_path):
    """The table is allocated whole at start: if the address space cannot hold it, say so, exit 2."""
    path = tmp_path / "lb.toml"
    path.write_text("[table]\nmax_connections = 50000000\n" + SERVICE + REAL)

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, resource.RLIM_INFINITY))
    proc = subprocess.run([sys.executable, "-m", "l4emu.cli", "replay", PCAPS / "sample.pcap", "-c", path],
                          capture_output=True, text=True, preexec_fn=limit_memory)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "l4emu: error: table.max_connections: cannot allocate a table for 50000000 connections (5.0 GiB)"]
