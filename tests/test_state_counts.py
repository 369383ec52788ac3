"""The datapath's per-state connection counters (what the report's states-over-time chart samples) equal a
scan of the table at every sample: through whole captures, with persistence templates, evictions,
expiry, reused connections and a reload that removes a real."""
from __future__ import annotations

from collections import Counter

import pytest

from conftest import PCAPS, make_switch, service_toml
from l4emu import config as configmod
from l4emu import schedulers
from l4emu.replay import replay
from l4emu.switch import Switch


def scanned(switch: Switch) -> Counter:
    """The table walked entry by entry (expired ones not yet reaped included, as the counters have them):
    connections per state, persistence templates left out (each shows as NONE; the reals count them)."""
    counts = Counter(state for _, _, _, state, _ in switch._datapath.flows())
    counts["NONE"] -= sum(r["persistent"] for r in switch.real_counters())
    return +counts


def kept(switch: Switch) -> Counter:
    return +Counter(switch.state_counts())


def check_at_every_sample(capture, switch: Switch, every_s: float = 0.05) -> int:
    checked = []

    def on_sample(_clock_ns: int) -> None:
        assert kept(switch) == scanned(switch)
        checked.append(sum(kept(switch).values()))

    replay(capture, switch, sample_every_s=every_s, on_sample=on_sample)
    assert kept(switch) == scanned(switch)
    return max(checked)


def test_counters_follow_the_sample_capture():
    switch = Switch.from_config(None, seed=4)
    assert check_at_every_sample(PCAPS / "sample.pcap", switch) > 10
    states = Counter(row["state"] for row in switch.conntrack())  # reaps the expired, then the counters again
    assert kept(switch) == states and {"TIME_WAIT", "UDP"} <= set(states)
    assert set(switch.state_counts()) >= {"ESTABLISHED", "SYN_RECV", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "SYNACK"}


def test_counters_with_persistence_templates_and_a_small_table(tmp_path):
    # 24 entries for the sample's ~40 connections and their templates: evictions and refusals on the way;
    # short timeouts, so that the timer wheel reaps entries in the middle of the 18 s capture
    text = "[table]\nmax_connections = 24\n[timeouts]\ntime_wait = 2\nestablished = 3\nsyn_recv = 1\n" + service_toml(
        extra="persistence = 2\npersistence_netmask = 32"
    )
    switch = make_switch(text, tmp_path, seed=2)
    check_at_every_sample(PCAPS / "sample.pcap", switch, every_s=0.02)
    stats = switch.stats()
    assert stats["evicted"] + sum(stats["dropped"].values()) > 0 and stats["expired"] > 0


@pytest.mark.parametrize("name", ["forwarding", "fragments", "fullnat"])
def test_counters_follow_the_other_samples(name):
    capture = PCAPS / f"{name}.pcap"
    if not capture.exists():
        capture = PCAPS / "sample.pcap"
    check_at_every_sample(capture, Switch.from_config(PCAPS / f"{name}.toml", seed=1))


def test_a_reload_that_removes_a_real_takes_its_connections_out_of_the_counts(tmp_path):
    switch = Switch.from_config(None, seed=3)
    moments, samples = [], []

    def reload_once(_clock_ns: int) -> None:
        samples.append(_clock_ns)
        if moments or len(samples) < 3:  # the first sample is at the first packet: reload 6 s in
            return
        before = kept(switch)
        smaller = configmod.loads(
            configmod.DEFAULT_CONFIG.read_text().replace('  [[service.real]]\n  address = "10.1.0.2:8080"\n', ""),
            "smaller.toml",
            schedulers.catalog(),
        )
        on_gone = sum(1 for real, *_ in switch._datapath.flows() if switch.reals[real][1].endpoint == "10.1.0.2:8080")
        switch.apply(smaller, "smaller.toml")
        moments.append(on_gone)
        assert sum(before.values()) - sum(kept(switch).values()) == on_gone
        assert kept(switch) == scanned(switch)

    replay(PCAPS / "sample.pcap", switch, sample_every_s=3.0, on_sample=reload_once)
    assert moments and moments[0] > 0
    assert kept(switch) == scanned(switch)
