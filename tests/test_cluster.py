"""A cluster of switch instances behind ECMP: PCC accounting, events, and the designs against their papers.

The oracle counts a connection broken when its packets reach two reals. Long-lived connections here
are raw-IP TCP flows written with struct (a SYN, then an ACK every PACKET_GAP_S): a packet of every
connection follows each event, so each event's effect is seen.
"""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from conftest import PCAPS, ROOT, run_cli
from l4emu import config as configmod
from l4emu import schedulers
from l4emu.cluster import _cluster
from l4emu.cluster.run import Cluster, compare
from l4emu.events import EventError, parse_event

sys.path.insert(0, str(ROOT / "benchmarks"))
from peers import make_bench_capture  # noqa: E402

DESIGNS = list(configmod.CONSISTENCY_DESIGNS)
LINKTYPE_RAW = 101
PACKET_GAP_S = 0.25
VIP = "10.0.0.100"


def test_the_cluster_path_is_the_compiled_extension():
    assert _cluster.__file__.endswith(".so")
    assert tuple(_cluster.DESIGN_NAMES) == tuple(DESIGNS)


def ten_reals(extra: dict | None = None, reals: int = 10) -> configmod.Config:
    document = configmod.from_flags([f"{VIP}:80/tcp"], [f"10.1.0.{k}:8080" for k in range(1, reals + 1)], "rr",
                                    {"rr"})
    document.update(extra or {})
    return configmod.from_dict(document, schedulers.catalog())


def _ip_tcp(src: int, sport: int, flags: int, seq: int, options: bytes = b"") -> bytes:
    """A raw IPv4 TCP segment from 11.x.y.z to the VIP (checksums are not what this test is about)."""
    tcp = struct.pack("!HHIIBBHHH", sport, 80, seq, 0, (5 + len(options) // 4) << 4, flags, 65535, 0, 0) + options
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, src.to_bytes(4, "big"),
                     bytes(map(int, VIP.split("."))))
    return ip + tcp


def long_lived(path: Path, flows: int, seconds: float, timestamps: bool = False) -> Path:
    """`flows` connections opened in the first PACKET_GAP_S, each sending a packet every PACKET_GAP_S
    until `seconds` (no FIN: they are all alive at every event)."""
    syn_options = struct.pack("!BBII", 8, 10, 1, 0) + b"\x01\x01" if timestamps else b""
    records = []
    steps = int(seconds / PACKET_GAP_S)
    for step in range(steps):
        for flow in range(flows):
            t = step * PACKET_GAP_S + flow * PACKET_GAP_S / flows
            src, sport = 0x0B000000 + flow // 50 + 1, 10000 + flow
            frame = _ip_tcp(src, sport, 0x02, 1, syn_options) if step == 0 else _ip_tcp(src, sport, 0x10, 2 + step)
            ns = int(t * 1e9)
            records.append(struct.pack("<IIII", 1_700_000_000 + ns // 10**9, ns % 10**9 // 1000, len(frame),
                                       len(frame)) + frame)
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW) + b"".join(records))
    return path


def totals(result: dict) -> dict[str, dict]:
    return {run["design"]: run["totals"] for run in result["runs"]}


def avoidable(t: dict) -> int:
    """Broken connections whose real was still up: what a design could have kept."""
    return t["broken"] - t["broken_real_down"]


# ---- nothing changes: nothing breaks ------------------------------------------------------------
@pytest.mark.parametrize("capture, servers", [("sample.pcap", None), ("sample-ns.pcapng", None), ("front.pcap", None),
                                              ("behind.pcap", "10.9.0.1:80,10.9.0.2:80"), ("clients.pcap", None)])
@pytest.mark.parametrize("ecmp", ["hash", "resilient"])
def test_every_design_keeps_pcc_when_nothing_changes_on_the_bundled_captures(capture, servers, ecmp):
    config = configmod.load(None, schedulers.catalog())
    if servers:                                 # behind.pcap was taken behind another load balancer
        config = configmod.with_capture_servers(config, servers)
    result = compare(PCAPS / capture, config, DESIGNS, (), 4, ecmp, seed=5)
    for design, t in totals(result).items():
        assert t["forward_packets"] > 0, (capture, design)
        assert (t["broken"], t["blackholed"], t["redirected_packets"], t["moved"]) == (0, 0, 0, 0), (design, t)


def test_every_design_keeps_pcc_when_nothing_changes_on_200k_flows(tmp_path):
    capture = tmp_path / "flows.pcap"
    make_bench_capture(capture, 200_000)
    config = configmod.from_dict(configmod.from_flags([f"{VIP}:80/tcp"], [f"10.1.0.{k}:8080" for k in range(1, 5)],
                                                      "rr", {"rr"}), schedulers.catalog())
    result = compare(capture, config, DESIGNS, (), 4, "hash", seed=1)
    for design, t in totals(result).items():
        assert t["connections"] == 200_000, design
        assert (t["broken"], t["blackholed"], t["redirected_packets"]) == (0, 0, 0), (design, t)


# ---- Katran #155: the backends change, then the instances ------------------------------------
@pytest.fixture(scope="module")
def long_capture(tmp_path_factory):
    return long_lived(tmp_path_factory.mktemp("cluster") / "long.pcap", 2000, 4.0)


def test_katran_155_a_backend_failure_then_an_instance_change(long_capture):
    """Maglev alone: after a real fails, a connection ECMP moves to another instance is rehashed on the
    new Maglev table, and some entries of reals still up changed: broken. The global table (Katran's
    remedy) and JET (rendezvous hashing moves only the failed real's connections) keep every one."""
    events = [parse_event("1:down:10.1.0.4:8080"), parse_event("2:lb-add")]
    t = totals(compare(long_capture, ten_reals(), ["maglev", "maglev-global", "jet"], events, 4, "hash", seed=2))
    assert avoidable(t["maglev"]) > 0, t["maglev"]           # Maglev's few extra changed entries (Fig. 12)
    assert avoidable(t["maglev-global"]) == 0, t["maglev-global"]
    assert avoidable(t["jet"]) == 0, t["jet"]
    assert t["maglev"]["moved"] == t["jet"]["moved"] > 1000        # one router, one ECMP: the same moves


def test_katran_155_a_backend_added_then_an_instance_change(long_capture):
    """A real comes up (down from the start: JET's horizon): Maglev breaks the moved connections whose slot
    changed; JET breaks only the moved ones it tracked, those the new real takes: fewer; global: none."""
    events = [parse_event("0:down:10.1.0.4:8080"), parse_event("1.5:up:10.1.0.4:8080"), parse_event("2.5:lb-down:1")]
    t = totals(compare(long_capture, ten_reals(), ["maglev", "maglev-global", "jet"], events, 4, "hash", seed=2))
    assert avoidable(t["maglev"]) > 20, t["maglev"]
    assert avoidable(t["maglev-global"]) == 0, t["maglev-global"]
    assert avoidable(t["jet"]) < avoidable(t["maglev"]), (t["jet"], t["maglev"])


def test_resilient_ecmp_moves_only_the_lost_instances_connections(long_capture):
    events = [parse_event("1:lb-down:2")]
    moved = {ecmp: totals(compare(long_capture, ten_reals(), ["maglev"], events, 4, ecmp, seed=2))["maglev"]["moved"]
             for ecmp in ("hash", "resilient")}
    # hash mod N: 4 -> 3 next hops moves about 3/4 of the connections; resilient only the lost quarter
    assert 0.2 * 2000 < moved["resilient"] < 0.3 * 2000
    assert moved["hash"] > 0.6 * 2000


def test_second_chance_and_daisy_chain_redirect_instead_of_breaking(long_capture):
    """A real added: GLB's rows and Beamer's buckets move to it, the new real hands what it does not
    know to the secondary or previous owner: redirected, not broken; stateless hashing breaks them."""
    events = [parse_event("0:down:10.1.0.4:8080"), parse_event("1.5:up:10.1.0.4:8080")]
    result = compare(long_capture, ten_reals(), ["rendezvous-second-chance", "beamer", "consistent", "hash"], events,
                     4, "hash", seed=2)
    t = totals(result)
    for design in ("rendezvous-second-chance", "beamer"):
        assert avoidable(t[design]) == 0, (design, t[design])
        assert t[design]["redirected_connections"] > 50, (design, t[design])
        assert 0 < t[design]["redirected_share"] < 1
    assert avoidable(t["consistent"]) > 50 and avoidable(t["hash"]) > avoidable(t["consistent"])


def test_cheetah_keeps_connections_whose_syn_carries_a_timestamp(tmp_path):
    events = [parse_event("0:down:10.1.0.4:8080"), parse_event("1.5:up:10.1.0.4:8080"), parse_event("2.5:lb-add")]
    with_ts = long_lived(tmp_path / "ts.pcap", 500, 3.0, timestamps=True)
    without = long_lived(tmp_path / "plain.pcap", 500, 3.0)
    t = totals(compare(with_ts, ten_reals(), ["cheetah", "maglev"], events, 4, "hash", seed=2))
    assert t["cheetah"]["syns_with_timestamp"] == t["cheetah"]["syns"] == 500
    assert avoidable(t["cheetah"]) == 0 and avoidable(t["maglev"]) > 0
    t = totals(compare(without, ten_reals(), ["cheetah", "maglev"], events, 4, "hash", seed=2))
    assert t["cheetah"]["syns_with_timestamp"] == 0
    assert t["cheetah"]["broken"] == t["maglev"]["broken"]           # no cookie: it is maglev


def test_silkroad_breaks_connections_whose_insert_had_not_landed_when_the_pool_changed(tmp_path):
    """Every connection's second packet comes PACKET_GAP_S after its first: with an insert delay longer
    than that, the pool change at 0.3 s catches the pending ones; with a short delay, none."""
    capture = long_lived(tmp_path / "long.pcap", 500, 2.0)
    events = [parse_event("0.3:up:10.1.0.11:8080")]
    late = ten_reals({"cluster": {"insert_delay_ms": 1000}}, reals=11)
    prompt = ten_reals({"cluster": {"insert_delay_ms": 0}}, reals=11)
    down = [parse_event("0:down:10.1.0.11:8080")]
    slow = totals(compare(capture, late, ["silkroad-delay"], down + events, 1, "hash", seed=2))["silkroad-delay"]
    fast = totals(compare(capture, prompt, ["silkroad-delay"], down + events, 1, "hash", seed=2))["silkroad-delay"]
    assert avoidable(slow) > 10 and avoidable(fast) == 0, (slow, fast)


def test_jet_tracks_only_what_the_horizon_would_take(long_capture):
    events = [parse_event("0:down:10.1.0.4:8080")]
    result = compare(long_capture, ten_reals(), ["jet", "maglev"], events, 4, "hash", seed=2)
    jet, maglev = (run for run in result["runs"])
    tracked = sum(m["entries"] for m in jet["memory"])
    everything = sum(m["entries"] for m in maglev["memory"])
    assert everything >= 2000
    assert 0.05 * everything < tracked < 0.2 * everything          # about one connection in ten reals


def test_lb_events_are_checked_and_refused_without_a_cluster(tmp_path):
    assert str(parse_event("3:lb-down:1")) == "3:lb-down:1"
    assert parse_event("3:real-down:10.1.0.1:8080").action == "down"
    with pytest.raises(EventError, match="lb-add takes no instance"):
        parse_event("3:lb-add:2")
    with pytest.raises(EventError, match="no instance 4"):
        compare(PCAPS / "sample.pcap", ten_reals(), ["maglev"], [parse_event("1:lb-down:4")], 4, "hash", seed=1)
    proc = run_cli("replay", PCAPS / "sample.pcap", "--event", "1:lb-down:0", check=False)
    assert proc.returncode == 2 and "needs a cluster" in proc.stderr


def test_a_cluster_with_emulated_reals_is_refused_in_one_line(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text((PCAPS / "emulated.toml").read_text() + "\n[cluster]\ninstances = 2\n")
    proc = run_cli("check", path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "cluster.instances" in proc.stderr


@pytest.mark.parametrize("body, key", [
    ("instances = 0", "cluster.instances"), ("ecmp = 'random'", "cluster.ecmp"),
    ("consistency = ['maglev', 'nope']", "cluster.consistency"), ("insert_delay_ms = -1", "cluster.insert_delay_ms"),
    ("zones = 2", "cluster.zones"),
])
def test_cluster_settings_are_validated_by_key(body, key):
    import tomllib

    document = {**configmod.from_flags([f"{VIP}:80/tcp"], ["10.1.0.1:8080"], "rr", {"rr"}), "cluster": tomllib.loads(body)}
    with pytest.raises(configmod.ConfigError) as caught:
        configmod.from_dict(document, schedulers.catalog())
    assert caught.value.key == key


def test_compare_cluster_prints_text_json_and_a_plot(tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "cluster.png"
    proc = run_cli("compare", PCAPS / "sample.pcap", "--cluster", "4", "--consistency", "maglev,beamer,jet",
                   "--event", "5:real-down:10.1.0.2:8080", "--event", "8:lb-down:1", "--seed", "3", "--plot", plot)
    assert "maglev-global" not in proc.stdout and "beamer" in proc.stdout and "8:lb-down:1" in proc.stdout
    assert plot.stat().st_size > 10_000
    import json

    result = json.loads(run_cli("compare", PCAPS / "sample.pcap", "--cluster", "2", "--consistency", "maglev",
                                "--json", "--seed", "3").stdout)
    assert result["instances"] == 2 and result["runs"][0]["totals"]["broken"] == 0


def test_cluster_is_deterministic_for_a_seed(long_capture):
    events = [parse_event("1:down:10.1.0.4:8080"), parse_event("2:lb-add")]
    runs = [compare(long_capture, ten_reals(), DESIGNS, events, 3, "resilient", seed=9) for _ in range(2)]
    assert totals(runs[0]) == totals(runs[1])


def test_a_restarted_instance_comes_back_with_an_empty_table(long_capture):
    cluster = Cluster(ten_reals(), "maglev", 2, "hash", seed=1)
    assert cluster.path.instance_up() == [True, True]
    cluster.apply(parse_event("1:lb-down:1"), 10**9)
    assert cluster.path.instance_up() == [True, False]
    cluster.apply(parse_event("2:lb-up:1"), 2 * 10**9)
    assert cluster.path.instance_up() == [True, True] and cluster.switches[1].table_info()["used"] == 0


def test_replay_with_a_cluster_config_says_it_runs_one_switch(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text((ROOT / "l4emu" / "data" / "default.toml").read_text() + "\n[cluster]\ninstances = 3\n")
    proc = run_cli("replay", PCAPS / "sample.pcap", "-c", path)
    assert "replay runs one switch" in proc.stderr
    proc = run_cli("compare", PCAPS / "sample.pcap", "-c", path, "--seed", "1")
    assert "3 instances" in proc.stdout and "maglev" in proc.stdout


# ---- Cheetah NSDI'20: 4 buckets permuted every 10, 100, 1000 ms --------------------------------
PERMUTED_BUCKETS = 4


def test_cheetahs_experiment_permuted_buckets(tmp_path):
    """Connections broken while 4 buckets pass their reals round every period: stateless consistent
    hashing breaks the connections of each moved bucket (more, the shorter the period); Beamer's
    daisy chain keeps them (a bucket moved twice before its connections end could still break one:
    Beamer keeps one previous owner); Cheetah's cookie keeps every one."""
    capture = long_lived(tmp_path / "ts.pcap", 2000, 3.0, timestamps=True)
    broken = {}
    for period_ms in (10, 100, 1000):
        events = [parse_event(f"{k * period_ms / 1000:g}:permute:{PERMUTED_BUCKETS}")
                  for k in range(1, int(3000 / period_ms))]
        t = totals(compare(capture, ten_reals(), ["consistent", "beamer", "cheetah"], events, 4, "hash", seed=4))
        broken[period_ms] = {design: t[design]["broken"] / t[design]["connections"] for design in t}
        assert t["cheetah"]["broken"] == 0 and t["beamer"]["redirected_packets"] >= t["beamer"]["broken"]
    print("\nshare of connections broken:", broken)
    assert broken[10]["consistent"] > broken[100]["consistent"] > 0
    assert broken[1000]["consistent"] <= broken[100]["consistent"]
    for period_ms in broken:
        assert broken[period_ms]["beamer"] <= 0.1 * broken[period_ms]["consistent"] + 1 / 2000
