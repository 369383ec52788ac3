"""Sharded replay (`replay --workers N`): the same bytes and counters as one worker for schedulers whose
choice depends on the flow alone, on the bundled samples and a scapy-built capture with replies and
ICMP errors; dealing keeps a flow's packets together; --check-sharding; bad --workers values."""

from __future__ import annotations

import errno
import ipaddress
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import ICMP, IP, TCP, UDP, Ether, IPerror, TCPerror, rdpcap, wrpcap

from conftest import PCAPS, run_cli
from l4emu import config as configmod
from l4emu import schedulers
from l4emu.compare import with_scheduler
from l4emu.dist import shard
from l4emu.dist._shard import Dealer
from l4emu.replay import replay
from l4emu.switch import Switch

HASH_SCHEDULERS = ("sh", "mh", "hrw")
# Counters that are the run's, not the traffic's (peak: the workers' peaks summed, an upper bound).
NOT_COMPARED = {"output", "elapsed_s", "packets_per_s", "workers", "peak_connections"}
SAMPLES = {  # capture -> config (None: the embedded default the samples were made for)
    "sample.pcap": None,
    "sample-ns.pcapng": None,
    "fragments.pcap": "fragments.toml",
    "forwarding.pcap": "forwarding.toml",
}
VIP, REALS = "10.0.0.100", ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
SWITCH_SOURCES = {"10.0.0.2", VIP}  # pcaps/forwarding.toml: the addresses of the headers the switch writes
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:fe")


def _config(name, scheduler):
    config = configmod.load(PCAPS / name if name else None, schedulers.catalog())
    return with_scheduler(config, scheduler)


def _both(tmp_path, capture, config, workers, suffix=".pcap", seed=7):
    """(one worker's summary and bytes, the sharded run's summary and bytes)."""
    one, many = tmp_path / f"one{suffix}", tmp_path / f"many{suffix}"
    single = replay(capture, Switch(config, seed), one)
    sharded = shard.sharded_replay(capture, config, seed, workers, many)
    return (single, one.read_bytes()), (sharded, many.read_bytes())


def _same_counters(single, sharded):
    for key, value in single.items():
        if key not in NOT_COMPARED:
            assert sharded[key] == value, key
    assert sharded["peak_connections"] >= single["peak_connections"]


@pytest.fixture
def small_windows(monkeypatch):
    """Windows of a few packets, so that a sample crosses many (and ends in a partial one); the parent
    gathers through a buffer smaller than most records (grown as they come)."""
    monkeypatch.setattr(shard, "WINDOW", 7)
    monkeypatch.setattr(shard, "STAGING_STEP", 64)
    monkeypatch.setattr(shard, "GATHER_BYTES", 64)


@pytest.mark.parametrize("scheduler", HASH_SCHEDULERS)
@pytest.mark.parametrize("sample", sorted(set(SAMPLES) - {"forwarding.pcap"}))
def test_samples_byte_identical_to_one_worker(tmp_path, small_windows, sample, scheduler):
    config = _config(SAMPLES[sample], scheduler)
    suffix = ".pcapng" if sample.endswith(".pcapng") else ".pcap"
    (single, one), (sharded, many) = _both(tmp_path, PCAPS / sample, config, 3, suffix)
    assert many == one
    _same_counters(single, sharded)
    assert sharded["workers"] == 3


def _outer_id_cleared(packet):
    """A packet with its outer IPv4 ID and checksum cleared: the headers the switch writes itself (a
    tunnel's outer header, an ICMP error) take their ID from a counter of the switch, which each worker
    keeps apart."""
    packet = packet.copy()
    packet[IP].id, packet[IP].chksum = 0, None
    return bytes(packet.__class__(bytes(packet)))


@pytest.mark.parametrize("scheduler", HASH_SCHEDULERS)
def test_tunnels_identical_but_for_the_outer_ip_id(tmp_path, small_windows, scheduler):
    config = _config("forwarding.toml", scheduler)
    (single, one), (sharded, many) = _both(tmp_path, PCAPS / "forwarding.pcap", config, 3)
    _same_counters(single, sharded)
    ones, manys = rdpcap(str(tmp_path / "one.pcap")), rdpcap(str(tmp_path / "many.pcap"))
    assert len(ones) == len(manys)
    differing = 0
    for a, b in zip(ones, manys, strict=True):
        if bytes(a) != bytes(b):
            differing += 1
            assert a[IP].src in SWITCH_SOURCES, a.summary()  # a header the switch wrote: a tunnel's, an ICMP error's
            assert _outer_id_cleared(a) == _outer_id_cleared(b), a.summary()
    assert 0 < differing < len(ones)  # NAT and dr packets are the same bytes


def _generated(path):
    """Clients' TCP flows to the VIP with the reals' replies, UDP flows, and ICMP errors both ways:
    from a router to the VIP about a reply, and from a real to a client about a forwarded packet."""
    packets = []
    for k in range(40):
        client, port = f"172.16.{k // 8}.{k % 8 + 1}", 20000 + k
        real = REALS[k % 3]
        packets += [
            ETH / IP(src=client, dst=VIP) / TCP(sport=port, dport=80, flags="S", seq=k),
            ETH / IP(src=real, dst=client) / TCP(sport=8080, dport=port, flags="SA", seq=9, ack=k + 1),
            ETH / IP(src=client, dst=VIP) / TCP(sport=port, dport=80, flags="A", seq=k + 1, ack=10),
            ETH / IP(src=client, dst=VIP) / UDP(sport=port, dport=53) / b"q",
            ETH / IP(src=REALS[k % 2], dst=client) / UDP(sport=53, dport=port) / b"a",
        ]
        if k % 5 == 0:  # a router tells the VIP that its reply to the client did not get through
            packets.append(
                ETH / IP(src="192.0.2.1", dst=VIP) / ICMP(type=3, code=1)
                / IPerror(src=VIP, dst=client) / TCPerror(sport=80, dport=port, flags="SA")
            )
        if k % 7 == 0:  # a real refuses what the switch sent it
            packets.append(
                ETH / IP(src=real, dst=client) / ICMP(type=3, code=3)
                / IPerror(src=client, dst=real) / TCPerror(sport=port, dport=8080, flags="A")
            )
    for n, packet in enumerate(packets):
        packet.time = 1_700_000_000 + n / 1000
    wrpcap(str(path), packets)


@pytest.mark.parametrize("scheduler", (*HASH_SCHEDULERS, "dh"))
def test_generated_capture_with_replies_and_icmp_errors(tmp_path, scheduler):
    capture = tmp_path / "flows.pcap"
    _generated(capture)
    config = configmod.from_dict(
        configmod.from_flags(
            [f"{VIP}:80/tcp", f"{VIP}:53/udp"], [f"{real}:8080" for real in REALS], scheduler, {scheduler}
        ),
        {scheduler},
    )
    for workers in (2, 5):
        (single, one), (sharded, many) = _both(tmp_path, capture, config, workers)
        assert many == one, workers
        _same_counters(single, sharded)
    assert single["reply"] > 0 and single["new"] > 0
    assert single["translated"] > single["new"] + single["forward"]  # the ICMP errors went with their flows


def test_dealer_keeps_a_flow_its_replies_and_errors_together():
    """Each client's packets, both ways, and the ICMP errors about them: one owner, whatever the port."""
    config = _config(None, "sh")
    dealer = Dealer(4, *shard.dealing(config))
    owners = set()
    for k in range(64):
        client = f"172.16.0.{k + 1}"
        frames = [
            ETH / IP(src=client, dst=VIP) / TCP(sport=1000 + k, dport=80),
            ETH / IP(src=REALS[0], dst=client) / TCP(sport=8080, dport=1000 + k),
            ETH / IP(src=client, dst=VIP) / TCP(sport=3000 + k, dport=80),
            ETH / IP(src="192.0.2.1", dst=VIP) / ICMP(type=3, code=4)
            / IPerror(src=VIP, dst=client) / TCPerror(sport=80, dport=1000 + k),
            ETH / IP(src=client, dst=VIP, flags="MF", frag=0) / UDP(sport=5, dport=53) / (b"x" * 16),
            ETH / IP(src=client, dst=VIP, frag=3, proto=17) / (b"y" * 16),
        ]
        owner = {dealer.owner_of(bytes(frame)) for frame in frames}
        assert len(owner) == 1, client
        owners |= owner
    assert owners == {0, 1, 2, 3}  # and the clients spread over every worker


def test_pcapng_output_and_no_output(tmp_path):
    config = _config(None, "mh")
    (single, one), (sharded, many) = _both(tmp_path, PCAPS / "sample.pcap", config, 2, ".pcapng")
    assert many == one
    quiet = shard.sharded_replay(PCAPS / "sample.pcap", config, 7, 2)
    _same_counters(single, {**quiet, "output": single["output"], "written": single["written"]})


def test_stateful_scheduler_counts_add_up(tmp_path):
    config = _config(None, "rr")
    (single, _), (sharded, _) = _both(tmp_path, PCAPS / "sample.pcap", config, 2)
    assert sharded["packets"] == single["packets"]
    assert sum(sharded["new_connections"].values()) == sum(single["new_connections"].values())


def test_check_sharding_line(tmp_path):
    run = run_cli(
        "replay", PCAPS / "sample.pcap", "--workers", 2, "--check-sharding", "--seed", 1, "--json",
        "--vip", f"{VIP}:80", *[arg for real in REALS for arg in ("--real", f"{real}:8080")],
        "--scheduler", "sh",
    )  # fmt: skip
    summary = json.loads(run.stdout)
    check = summary["sharding"]
    assert check["workers"] == 2 and check["max_difference_pct"] == 0.0
    assert [row["real"] for row in check["reals"]] == [f"{real}:8080" for real in REALS]
    assert all(row["sharded"] == row["one_worker"] for row in check["reals"])
    text = run_cli("replay", PCAPS / "sample.pcap", "--workers", 3, "--check-sharding", "--seed", 1).stdout
    assert "sharding     largest difference" in text and "(3 workers)" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "--workers 0: give 1 to 64 worker processes"),
        (["--workers", "65"], "--workers 65: give 1 to 64 worker processes"),
        (["--workers", "two"], "--workers 'two': not a whole number of worker processes"),
        (["--check-sharding"], "--check-sharding compares --workers N (N > 1) with one worker"),
        (["--workers", "2", "--state-out", "s.json"], "--state-out works with one worker only"),
        (["--workers", "2", "--event", "1:down:10.1.0.1:8080"], "--event works with one worker only"),
        (["--workers", "2", "-c", PCAPS / "emulated.toml"], "emulated reals work with one worker only"),
    ],
)
def test_refusals_are_one_line(tmp_path, args, message):
    run = run_cli("replay", PCAPS / "sample.pcap", *args, check=False)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and message in run.stderr, run.stderr


def test_a_cut_capture_stops_alike(tmp_path):
    """A capture cut mid-record: every packet before the fault is processed and written, as by one
    worker, and the fault is the summary's error."""
    capture = tmp_path / "cut.pcap"
    capture.write_bytes((PCAPS / "sample.pcap").read_bytes()[:20000])
    (single, one), (sharded, many) = _both(tmp_path, capture, _config(None, "sh"), 2)
    assert many == one and single["error"] and sharded["error"] == single["error"]
    _same_counters(single, sharded)


def test_a_missing_capture_is_one_line(tmp_path):
    run = run_cli("replay", tmp_path / "none.pcap", "--workers", 2, check=False)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "none.pcap: cannot open" in run.stderr


def test_a_failing_worker_stops_the_run_in_one_line(tmp_path):
    """Two link types into a .pcap: the worker that meets the second fails, the others stop at their
    barrier, no file is left and the error is one line (as one worker's)."""
    out = tmp_path / "mixed.pcap"
    run = run_cli("replay", PCAPS / "sample-ns.pcapng", "-o", out, "--workers", 2, check=False)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "several link types: write .pcapng" in run.stderr and str(out) in run.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_a_full_staging_area_is_one_error_and_leaves_nothing(tmp_path, monkeypatch):
    """The workers' staging files are allocated before they are written (a full /dev/shm would
    otherwise be a SIGBUS through the map): no room is one ShardError naming it, and no output is left."""

    def no_room(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shard.os, "posix_fallocate", no_room)  # the forked workers inherit it
    with pytest.raises(shard.ShardError, match="no room to stage .* bytes of a worker's output"):
        shard.sharded_replay(PCAPS / "sample.pcap", _config(None, "sh"), 7, 2, tmp_path / "out.pcap")
    assert not list(tmp_path.iterdir())


def test_an_unexpected_failure_of_the_dealer_stops_the_run(tmp_path, monkeypatch):
    """The parent's dealing thread failing unexpectedly stops the waiting workers (no hang): one
    ShardError naming it, and no output left."""

    def broken(*args):
        raise RuntimeError("no deal")

    monkeypatch.setattr(shard, "_deal", broken)
    with pytest.raises(shard.ShardError, match="dealing .*sample.pcap: RuntimeError: no deal"):
        shard.sharded_replay(PCAPS / "sample.pcap", _config(None, "sh"), 7, 2, tmp_path / "out.pcap")
    assert not list(tmp_path.iterdir())


@given(
    client=st.integers(0x0B000000, 0xDFFFFFFF),
    port=st.integers(1, 65535),
    workers=st.integers(1, 64),
    junk=st.binary(max_size=80),
)
@settings(max_examples=300, deadline=None)
def test_dealing_any_client_and_any_bytes(client, port, workers, junk):
    """A client's packets both ways go to one worker in range; any bytes at all get a worker in range."""
    dealer = Dealer(workers, *shard.dealing(_config(None, "sh")))
    address = str(ipaddress.IPv4Address(client))
    there = dealer.owner_of(bytes(ETH / IP(src=address, dst=VIP) / TCP(sport=port, dport=80)))
    back = dealer.owner_of(bytes(ETH / IP(src=REALS[1], dst=address) / TCP(sport=8080, dport=port)))
    assert there == back and 0 <= there < workers
    for linktype in (1, 101, 113, 0):
        assert 0 <= dealer.owner_of(junk, linktype) < workers


@pytest.mark.parametrize("sample", sorted(PCAPS.glob("*.pcap*")), ids=lambda p: p.name)
def test_the_shard_fuzz_harness_on_the_samples_whole_and_cut(sample):
    """fuzz/common.py's run_shard (the atheris 'shard' harness): each packet dealt once, whole or cut."""
    import sys

    sys.path.insert(0, str(PCAPS.parent / "fuzz"))
    from common import run_shard

    data = sample.read_bytes()
    for end in (len(data), len(data) // 2 + 3, 100, 30):
        run_shard(data[:end])


SERVICE_SIDE = [VIP, *REALS, "192.0.2.9"]


@given(
    src=st.sampled_from(SERVICE_SIDE),
    dst=st.sampled_from(SERVICE_SIDE),
    client=st.integers(0x0B000000, 0xDFFFFFFF),
    client_is_src=st.booleans(),
    proto=st.sampled_from([6, 17, 1, 47]),
    ports=st.tuples(st.sampled_from([80, 8080, 53, 1234]), st.integers(0, 65535)),
    ihl=st.sampled_from([5, 6, 15, 4, 0]),
    fields=st.tuples(  # None: as scapy built it; else IPv4 total length, fragment bits, TCP offset, UDP length
        st.one_of(st.none(), st.sampled_from([0, 20, 39, 40, 41, 52, 60, 65535])),
        st.one_of(st.none(), st.sampled_from([0x0000, 0x2000, 0x0001, 0x4000, 0x1FFF])),
        st.one_of(st.none(), st.sampled_from([0, 4, 5, 6, 8, 15])),
        st.one_of(st.none(), st.sampled_from([0, 7, 8, 20, 21, 65535])),
    ),
    patches=st.lists(st.tuples(st.integers(12, 60), st.integers(0, 255)), max_size=1),
    cut=st.one_of(st.just(0), st.integers(0, 90)),
    workers=st.sampled_from([3, 64]),
    masked=st.booleans(),
)
@settings(max_examples=500, deadline=None)
def test_the_ipv4_fast_path_deals_as_the_whole_parse(
    src, dst, client, client_is_src, proto, ports, ihl, fields, patches, cut, workers, masked
):
    """The cheap IPv4 dealing (a few header bytes, no parse) gives every frame the owner the whole
    parse gives it: headers good or bad (lengths, options, fragment bits, data offsets, cut short)."""
    address = str(ipaddress.IPv4Address(client))
    src, dst = (address, dst) if client_is_src else (src, address)
    options = b"\x01" * 4 * max(0, ihl - 5)
    payload = TCP(sport=ports[0], dport=ports[1]) if proto == 6 else UDP(sport=ports[0], dport=ports[1])
    frame = bytearray(bytes(ETH / IP(src=src, dst=dst, proto=proto, options=options) / payload / (b"d" * 12)))
    l4 = 14 + 20 + len(options)
    total, frag, tcp_offset, udp_length = fields
    for at, value in ((16, total), (20, frag), (l4 + 4, udp_length if proto == 17 else None)):
        if value is not None:
            frame[at : at + 2] = value.to_bytes(2, "big")
    if tcp_offset is not None and proto == 6:
        frame[l4 + 12] = tcp_offset << 4
    frame[14] = 0x40 | (ihl & 0x0F)
    for offset, value in patches:
        frame[offset % len(frame)] = value
    frame = bytes(frame[: len(frame) - cut])
    mask4 = (b"\xff\xff\xf0\x00" if masked else b"\xff" * 4) + b"\xff" * 12
    dealer = Dealer(workers, *shard.dealing(_config(None, "sh"))[:2], mask4)
    assert dealer.owner_of(frame) == dealer.owner_of(frame, parsed=True)


@pytest.mark.parametrize("sample", sorted(PCAPS.glob("*.pcap")), ids=lambda p: p.name)
def test_the_ipv4_fast_path_deals_the_samples_as_the_whole_parse(sample):
    dealer = Dealer(64, *shard.dealing(_config(None, "sh")))
    frames = [bytes(packet) for packet in rdpcap(str(sample))]
    frames += [  # from the service side, to a port that is not the service's: by address alone, if a fragment
        bytes(ETH / IP(src=VIP, dst=f"172.16.5.{k}", flags=flags) / TCP(sport=1234, dport=5) / (b"d" * 12))
        for k in range(8)
        for flags in ("MF", 0)
    ]
    assert [dealer.owner_of(f) for f in frames] == [dealer.owner_of(f, parsed=True) for f in frames]
