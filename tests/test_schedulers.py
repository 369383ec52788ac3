"""Scheduler properties: each built-in does what its IPVS (or Maglev, rendezvous) definition says."""
from __future__ import annotations

import collections
import functools
import importlib.machinery
import json
import math
import os
import random
import struct
import subprocess
import sys
import tomllib

import pytest
from scapy.all import IP, TCP, Ether

from conftest import PCAPS, ROOT, Harness, make_switch
from l4emu import config as configmod
from l4emu import schedulers
from l4emu.schedulers._hash import DestinationHash, Maglev, Rendezvous, SourceHash
from l4emu.testing._drivers import pick_many
from l4emu.schedulers._locality import LocalityLeastConnection, LocalityLeastConnectionReplicated

BUILTIN_NAMES = {"rr", "wrr", "lc", "wlc", "sed", "nq", "sh", "dh", "random", "twos", "p2c", "mh", "hrw",
                 "fo", "ovf", "lblc", "lblcr"}
VIP = "10.0.0.100"


def keys(n, port=1000, start=0x0A000000):
    """n distinct client addresses (spread over the space), one flow each."""
    return [(struct.pack("!I", start + k * 7919), port, VIP, 80) for k in range(n)]


def weighted_toml(scheduler, weights, extra=""):
    lines = ["[[service]]", f'vip = "{VIP}:80"', f'scheduler = "{scheduler}"', *filter(None, extra.splitlines())]
    for i, w in enumerate(weights):
        lines += ["  [[service.real]]", f'  address = "10.1.0.{i + 1}:8080"', f"  weight = {w}"]
    return "\n".join(lines) + "\n"


def dests(switch, sports, client="192.0.2.7"):
    """New TCP flows through the real datapath: the last octet of the real each one went to (0 = dropped)."""
    frames = [Ether() / IP(src=client, dst=VIP) / TCP(sport=p, dport=80, flags="S") for p in sports]
    out = []
    for verdict, _, frame in Harness(switch).run(frames):
        out.append(int(Ether(frame)[IP].dst.split(".")[-1]) if verdict == "new" else 0)
    return out


def test_every_builtin_is_registered_compiled_and_named_as_ipvs_names_it():
    assert BUILTIN_NAMES <= set(schedulers.available())
    for name in BUILTIN_NAMES:
        cls = schedulers.BUILTINS[name]
        module = sys.modules[cls.__module__]
        assert module.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), name
        assert cls.name == ("twos" if name == "p2c" else name)
    assert schedulers.catalog()["sh"] == ("sh-fallback", "sh-port")


def test_rr_cycles_exactly_through_the_datapath(tmp_path):
    switch = make_switch(weighted_toml("rr", [1, 1, 1, 1]), tmp_path)
    assert dests(switch, range(40000, 40012)) == [1, 2, 3, 4] * 3


def ipvs_wrr(weights, picks):
    """IPVS ip_vs_wrr_schedule as a reference, from a fresh cycle."""
    mw, di, cl, cw, out = max(weights), functools.reduce(math.gcd, weights), -1, 0, []
    while len(out) < picks:
        cl = (cl + 1) % len(weights)
        if cl == 0:
            cw -= di
            if cw <= 0:
                cw = mw
        if weights[cl] >= cw:
            out.append(cl)
    return out


@pytest.mark.parametrize("weights", [[4, 3, 2], [1, 1, 1], [5, 1], [6, 4, 2, 2], [7, 3, 3, 1, 9]])
def test_wrr_hits_weights_exactly_over_a_cycle_and_interleaves(weights):
    g = functools.reduce(math.gcd, weights)
    cycle = sum(weights) // g
    picks = pick_many(schedulers.create("wrr"), [{"weight": w} for w in weights], keys(1) * (3 * cycle))
    assert picks == ipvs_wrr(weights, 3 * cycle)
    for start in range(0, 3 * cycle, cycle):
        assert collections.Counter(picks[start:start + cycle]) == {i: w // g for i, w in enumerate(weights)}


def test_wrr_interleaves_rather_than_bursts_through_the_datapath(tmp_path):
    switch = make_switch(weighted_toml("wrr", [4, 3, 2]), tmp_path)
    assert dests(switch, range(40000, 40009)) == [1, 1, 2, 1, 2, 3, 1, 2, 3]


FORMULAS = {
    "lc": lambda r: r["active"] * 256 + r["inactive"],
    "wlc": lambda r: (r["active"] * 256 + r["inactive"]) / r["weight"],
    "sed": lambda r: (r["active"] + 1) / r["weight"],
    "fo": lambda r: -r["weight"],
}


def random_reals(rng, n):
    return [{"weight": rng.choice([0, 1, 2, 3, 5, 100]), "down": rng.random() < 0.1,
             "overloaded": rng.random() < 0.1, "active": rng.choice([0, 0, 1, 2, 7, 300]),
             "inactive": rng.choice([0, 1, 5, 256, 1000])} for _ in range(n)]


def usable(r):
    return r["weight"] > 0 and not r["down"] and not r["overloaded"]


def expected(name, reals):
    """The formula's minimum among usable reals, the first one on a tie (None: no real)."""
    candidates = [i for i, r in enumerate(reals) if usable(r)]
    if name == "nq" and any(reals[i]["active"] == 0 for i in candidates):
        return next(i for i in candidates if reals[i]["active"] == 0)
    if name == "ovf":
        candidates = [i for i in candidates if reals[i]["active"] <= reals[i]["weight"]]
    formula = FORMULAS.get(name, FORMULAS["sed"] if name == "nq" else FORMULAS["fo"])
    return min(candidates, key=lambda i: (formula(reals[i]), i)) if candidates else None


@pytest.mark.parametrize("name", ["lc", "wlc", "sed", "nq", "fo", "ovf"])
def test_least_load_schedulers_pick_what_their_formula_says_ties_first(name):
    rng = random.Random(name)
    for _ in range(400):
        reals = random_reals(rng, rng.randint(1, 6))
        want = expected(name, reals)
        assert pick_many(schedulers.BUILTINS[name](), reals, keys(1)) == [-1 if want is None else want], reals


def test_wlc_weighs_an_active_connection_as_256_inactive_ones():
    # 1 active (256) on weight 1 against 511 inactive on weight 2 (255.5): the second is lighter
    reals = [{"active": 1, "weight": 1}, {"inactive": 511, "weight": 2}]
    assert pick_many(schedulers.create("wlc"), reals, keys(1)) == [1]
    reals[1]["inactive"] = 512
    assert pick_many(schedulers.create("wlc"), reals, keys(1)) == [0]


def run_in_subprocess(code):
    return json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                     cwd=ROOT).stdout)


HASH_PROBE = """
import json, struct
from l4emu.testing._drivers import pick_many
from l4emu import schedulers
ks = [(struct.pack("!I", 0x0A000000 + k * 7919), 1000 + k, "10.0.0.%d" % (k % 250), 80) for k in range(2000)]
reals = [{"weight": w} for w in (1, 2, 3, 1, 5)]
print(json.dumps({n + ",".join(f): pick_many(schedulers.create(n, f), reals, ks)
                  for n, f in [("sh", ()), ("sh", ("sh-port",)), ("dh", ()), ("mh", ()), ("hrw", ())]}))
"""


def test_hashes_map_a_key_to_the_same_real_every_time_and_in_another_process():
    theirs = run_in_subprocess(HASH_PROBE)
    ks = [(struct.pack("!I", 0x0A000000 + k * 7919), 1000 + k, "10.0.0.%d" % (k % 250), 80) for k in range(2000)]
    reals = [{"weight": w} for w in (1, 2, 3, 1, 5)]
    for name, flags in [("sh", ()), ("sh", ("sh-port",)), ("dh", ()), ("mh", ()), ("hrw", ())]:
        scheduler = schedulers.create(name, flags)
        ours = pick_many(scheduler, reals, ks)
        assert ours == pick_many(scheduler, reals, ks) == theirs[name + ",".join(flags)], name
        assert len(set(ours)) == 5, name                  # and they do spread


def test_sh_is_ipvs_source_hash_and_sh_port_adds_the_port():
    """IPVS: bucket = hash_32(port + address, 8), 256 buckets dealt to the reals in turn."""
    ks = keys(3000, port=0)
    picks = pick_many(SourceHash(), [{}] * 3, ks)
    for (client, _, _, _), pick in zip(ks, picks):
        bucket = ((int.from_bytes(client, "big") * 0x61C88647) & 0xFFFFFFFF) >> 24
        assert pick == bucket % 3
    same_client = [(b"\x0a\x00\x00\x07", port, VIP, 80) for port in range(1000, 1300)]
    assert len(set(pick_many(SourceHash(), [{}] * 3, same_client))) == 1
    assert len(set(pick_many(SourceHash(["sh-port"]), [{}] * 3, same_client))) == 3


def test_dh_is_ipvs_destination_hash():
    ks = [(b"\x0a\x00\x00\x01", 1000, struct.pack("!I", 0xC0A80000 + k), 80) for k in range(1000)]
    picks = pick_many(DestinationHash(), [{}] * 5, ks)
    assert picks == [((int.from_bytes(k[2], "big") * 2654435761) & 255) % 5 for k in ks]


def test_sh_fallback_sends_an_overloaded_reals_clients_elsewhere():
    ks = keys(2000)
    reals = [{}, {"overloaded": True}, {}]
    plain, fallback = pick_many(SourceHash(), reals, ks), pick_many(SourceHash(["sh-fallback"]), reals, ks)
    base = pick_many(SourceHash(), [{}] * 3, ks)
    assert [p for p, b in zip(plain, base) if b == 1] == [-1] * base.count(1)
    assert all(f in (0, 2) for f in fallback)
    assert [f for f, b in zip(fallback, base) if b != 1] == [b for b in base if b != 1]


@pytest.mark.parametrize("weights", [[1, 1, 1, 1, 1], [1, 2, 3, 4], [10, 1, 7]])
def test_mh_fills_its_table_within_one_percent_of_the_weights(weights):
    mh = Maglev()
    pick_many(mh, [{"weight": w} for w in weights], [])
    counts = collections.Counter(mh.slots())
    assert sum(counts.values()) == 65537 and -1 not in counts
    for i, w in enumerate(weights):
        assert abs(counts[i] / 65537 - w / sum(weights)) <= 0.01 * w / sum(weights)


@pytest.mark.parametrize("cls", [Maglev, Rendezvous])
def test_losing_one_of_n_reals_moves_about_one_nth_of_the_keys(cls):
    n, ks = 10, keys(50_000)
    scheduler = cls()
    before = pick_many(scheduler, [{}] * n, ks)
    after = pick_many(scheduler, [{}] * 3 + [{"down": True}] + [{}] * (n - 4), ks)
    moved = sum(b != a for b, a in zip(before, after)) / len(ks)
    others_moved = sum(b != a and b != 3 for b, a in zip(before, after)) / len(ks)
    assert 3 not in after and 0.8 / n < moved < 1.2 / n
    if cls is Rendezvous:
        assert others_moved == 0                        # rendezvous moves only the lost real's keys
    else:
        assert others_moved < 0.01                      # Maglev (M=65537): a small, bounded disturbance
    assert pick_many(scheduler, [{}] * n, ks) == before   # and it comes back the same


def test_mh_table_size_flags_and_fallback():
    ks = keys(3000)
    small = Maglev(table_size=251)
    assert len((pick_many(small, [{}] * 3, []), small.slots())[1]) == 251
    with pytest.raises(ValueError, match="prime"):
        Maglev(table_size=1000)
    with pytest.raises(ValueError, match="no flag 'sh-port'"):
        schedulers.create("mh", ["sh-port"])
    reals = [{}, {"overloaded": True}, {}]
    assert -1 in pick_many(Maglev(), reals, ks)
    assert set(pick_many(Maglev(["mh-fallback"]), reals, ks)) == {0, 2}
    same_client = [(b"\x0a\x00\x00\x07", port, VIP, 80) for port in range(1000, 1100)]
    assert len(set(pick_many(Maglev(["mh-port"]), [{}] * 3, same_client))) == 3


@pytest.mark.parametrize("name", sorted(BUILTIN_NAMES))
def test_weight_zero_down_and_overloaded_reals_never_get_a_new_flow(name):
    reals = [{"weight": 0}, {"down": True}, {"overloaded": True}, {"weight": 2}]
    options = {"flags": ["sh-fallback"]} if name == "sh" else {"flags": ["mh-fallback"]} if name == "mh" else {}
    picks = pick_many(schedulers.create(name, **options), reals, keys(300, port=2000), connect=True)
    if name == "dh":                # one destination: one bucket, here a quiet one's
        assert set(picks) <= {3, -1}
    elif name == "ovf":             # no real once every active count exceeds its weight
        assert set(picks) <= {3, -1} and 3 in picks
    else:
        assert set(picks) == {3}
    assert pick_many(schedulers.create(name), reals[:3], keys(20)) == [-1] * 20


def test_drain_through_the_datapath_then_weight_back(tmp_path):
    switch = make_switch(weighted_toml("wlc", [1, 0, 1]), tmp_path)
    assert set(dests(switch, range(40000, 40010))) == {1, 3}
    switch.set_real("10.1.0.2:8080", weight=5)
    assert dests(switch, range(41000, 41004)) == [2, 2, 2, 2]   # the idle newcomer is the lightest


@pytest.mark.parametrize("name", ["random", "twos", "p2c"])
def test_random_choices_repeat_with_the_seed_and_follow_weight(name, tmp_path):
    runs = [dests(make_switch(weighted_toml(name, [1, 3, 1]), tmp_path, seed=s), range(40000, 40300))
            for s in (7, 7, 8)]
    assert runs[0] == runs[1] != runs[2]
    assert 0 not in runs[0]
    picks = pick_many(schedulers.create(name, seed=3), [{"weight": w} for w in (1, 3)], keys(20_000))
    if name == "random":
        assert 0.72 < picks.count(1) / len(picks) < 0.78


def test_lblc_keeps_a_destination_on_its_real_until_overloaded():
    per_dst = [(b"\x0a\x00\x00\x01", 1000 + k, f"192.168.0.{k % 4}", 80) for k in range(40)]
    picks = pick_many(LocalityLeastConnection(), [{"weight": 100}] * 4, per_dst, connect=True)
    assert [picks[k::4] for k in range(4)] == [[p] * 10 for p in picks[:4]] and sorted(picks[:4]) == [0, 1, 2, 3]
    # a real over its weight in active flows, while another is under half of its own, sheds the destination
    reals = [{"weight": 2, "active": 3}, {"weight": 2}]
    assert pick_many(LocalityLeastConnection(), reals, per_dst[:1]) == [1]


def test_lblcr_grows_a_busy_destinations_set_and_memory_is_bounded():
    one_dst = [(b"\x0a\x00\x00\x01", 1000 + k, "192.168.0.1", 80) for k in range(400)]
    picks = pick_many(LocalityLeastConnectionReplicated(), [{"weight": 10}] * 4, one_dst, connect=True)
    assert picks[:11] == [0] * 11 and len(set(picks)) == 4   # sticks, then spreads when overloaded
    scheduler = LocalityLeastConnection()
    many = [(b"\x0a\x00\x00\x01", 1, struct.pack("!I", 0xC0000000 + k), 80) for k in range(100_000)]
    assert set(pick_many(scheduler, [{}] * 3, many)) == {0}   # 100,000 destinations in a bounded cache


def test_config_scheduler_flags_and_table_size(tmp_path):
    switch = make_switch(weighted_toml("sh", [1, 1, 1], 'scheduler_flags = ["sh-port", "sh-fallback"]'), tmp_path)
    assert len(set(dests(switch, range(40000, 40060)))) == 3       # one client, spread by port
    cfg = configmod.from_dict(tomllib.loads(weighted_toml("mh", [1], "mh_table_size = 4093")), schedulers.catalog())
    assert cfg.services[0].mh_table_size == 4093 and cfg.services[0].scheduler_flags == ()
    for extra, problem in [('scheduler_flags = ["mh-port"]', "no flag 'mh-port'"),
                           ('scheduler_flags = "sh-port"', "list of strings"),
                           ("mh_table_size = 4093", 'only scheduler "mh"')]:
        with pytest.raises(configmod.ConfigError, match=problem) as err:
            configmod.from_dict(tomllib.loads(weighted_toml("sh", [1], extra)), schedulers.catalog())
        assert err.value.key == "service[0]." + extra.split()[0]
    for size in (4096, 131101, 7):
        with pytest.raises(configmod.ConfigError, match="not a prime from 251 to 131071"):
            configmod.from_dict(tomllib.loads(weighted_toml("mh", [1], f"mh_table_size = {size}")), {"mh": ()})


# The example's scheduler also registered under a name no installed package has: whether or not
# `pip install ./examples` has run in this environment, that name is known exactly when the test says so.
TEST_ONLY_NAME = "least_recent_as_tested"


def plugin_path(tmp_path):
    """What `pip install ./examples` makes: the module and its entry point, found on sys.path (ahead of
    an installed copy, whose distribution of the same name it shadows), plus TEST_ONLY_NAME."""
    project = tomllib.loads((ROOT / "examples" / "pyproject.toml").read_text())
    info = tmp_path / "l4emu_example_schedulers-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: l4emu-example-schedulers\nVersion: 0.1.0\n")
    group = project["project"]["entry-points"]["l4emu.schedulers"]
    group = {**group, TEST_ONLY_NAME: group["least_recent"]}
    (info / "entry_points.txt").write_text("[l4emu.schedulers]\n" + "".join(f"{k} = {v}\n" for k, v in group.items()))
    return [str(tmp_path), str(ROOT / "examples")]


def test_the_python_plugin_example_is_found_and_serves_the_longest_waiting_real(tmp_path, monkeypatch):
    for entry in plugin_path(tmp_path):
        monkeypatch.syspath_prepend(entry)
    switch = make_switch(weighted_toml("least_recent", [1, 1, 0]), tmp_path)
    assert type(switch.schedulers[0]).__name__ == "LeastRecent"
    assert dests(switch, range(40000, 40004)) == [1, 2, 1, 2]
    switch.set_real("10.1.0.3:8080", weight=1)
    assert dests(switch, range(41000, 41003)) == [3, 1, 2]   # rr would go on with 3 only in turn
    assert switch.schedulers[0].errors == []


def test_the_python_plugin_example_works_through_the_cli(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(plugin_path(tmp_path) + [os.environ.get("PYTHONPATH", "")]))
    config = tmp_path / "lb.toml"
    config.write_text((ROOT / "l4emu" / "data" / "default.toml").read_text().replace('"rr"', f'"{TEST_ONLY_NAME}"'))
    proc = subprocess.run([sys.executable, "-m", "l4emu.cli", "replay", PCAPS / "sample.pcap", "-c", config,
                           "-o", tmp_path / "out.pcap", "--json"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["dropped"] == {} and summary["new_connections"]["10.1.0.3:8080"] == 10
    plain = subprocess.run([sys.executable, "-m", "l4emu.cli", "replay", PCAPS / "sample.pcap", "-c", config],
                           capture_output=True, text=True)
    assert plain.returncode == 2 and f"unknown scheduler '{TEST_ONLY_NAME}'" in plain.stderr
