"""Live mode's ring of timeline samples (l4emu/live/history.py), driven here by a switch fed real frames on
a chosen clock (the live loop, its socket and TUN are tests/test_live_report.py's): bounded, laid out
across a reload that removes a real, and rendered by the report with the snapshot's numbers."""
from __future__ import annotations

from scapy.all import IP, TCP, Ether
from test_report import Tables

from conftest import Harness
from l4emu import config as configmod
from l4emu import schedulers
from l4emu.live.history import History
from l4emu.render.html import _per_interval, live_html
from l4emu.replay import summarize
from l4emu.switch import Switch

NS = 10**9
MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def syn(port: int):
    return Ether(**MACS) / IP(src="172.16.0.2", dst="10.0.0.100") / TCP(sport=port, dport=80, flags="S")


def drive(switch: Switch, history: History, seconds: range, reload_at: int | None = None) -> None:
    """Second by second: two new connections, then the loop's sample at half past."""
    harness = Harness(switch)
    for k in seconds:
        harness.run([syn(2000 + 2 * k), syn(2001 + 2 * k)], times_s=[k + 0.1, k + 0.2])
        if k == reload_at:
            smaller = configmod.DEFAULT_CONFIG.read_text().replace(
                '  [[service.real]]\n  address = "10.1.0.2:8080"\n', ""
            )
            switch.apply(configmod.loads(smaller, "smaller.toml", schedulers.catalog()), "smaller.toml")
            history.mark(int((k + 0.3) * NS), "reload: 1 change(s)")
        switch.advance_clock(int((k + 0.5) * NS))
        history.tick(switch, switch.clock_ns)


def export(switch: Switch, history: History, now_s: float) -> dict:
    switch.advance_clock(int(now_s * NS))
    summary = summarize(switch, "tun test", None, 0, 1.0, None)
    data = history.timeline(switch, switch.clock_ns, summary, "live on test0")
    data["live"]["config"] = "the embedded config"
    return data


def test_the_ring_is_bounded_and_counts_from_its_oldest_sample():
    switch = Switch.from_config(None, seed=1)
    history = History(start_ns=1 * NS, max_samples=5)
    drive(switch, history, range(1, 9))
    assert len(history.samples) == 5  # 8 samples taken, the 3 oldest gone
    history.mark(int(2.3 * NS), "too old to show")
    history.mark(int(7.3 * NS), "10.1.0.1:8080 weight 0", "10.1.0.1:8080")
    data = export(switch, history, 9.0)
    samples = data["samples"]
    assert [s["t"] for s in samples] == [0.0, 1.0, 2.0, 3.0, 4.0, 4.5]  # the oldest left at 4.5 s; and now
    assert data["event_marks"] == [{"t": 2.8, "real": "10.1.0.1:8080", "label": "10.1.0.1:8080 weight 0"}]
    page = Tables(live_html(data))
    reals = page.table("real")
    snapshot = {(f"{s['protocol']} {s['vip']}", r["address"]): r for s in data["snapshot"]["services"]
                for r in s["reals"]}
    for real, row in reals.items():
        counters = snapshot[(row[0], real)]
        assert [int(row[1]), int(row[2])] == [counters["conns"], counters["active"]]
    assert sum(int(row[1]) for row in reals.values()) == 16
    assert page.table("seconds") == {"2.8": ["10.1.0.1:8080 weight 0"]}
    # new connections per interval count from the oldest sample: 0 there, then two a second
    assert _per_interval([sum(s["conns"]) for s in samples], from_first=True) == [0, 2, 2, 2, 2, 0]
    assert _per_interval([5, 7, 1, 4]) == [5, 2, 1, 3]  # a counter started again (a real re-added) counts anew
    assert "one every 1 s" in live_html(data) and "the last 5" in live_html(data)


def test_a_reload_keeps_the_removed_real_in_the_past_samples():
    switch = Switch.from_config(None, seed=1)
    history = History(start_ns=1 * NS)
    drive(switch, history, range(1, 7), reload_at=4)
    data = export(switch, history, 7.0)
    names = [r["real"] for r in data["reals"]]
    gone = names.index("10.1.0.2:8080")
    assert gone == len(names) - 1  # not in the running config: after its reals
    conns = [s["conns"][gone] for s in data["samples"]]
    # rr over three reals, two SYNs a second: sampled at 1.5, 2.5, 3.5 s; removed at 4.3 s
    assert conns == [1, 1, 2] + [0] * 4
    assert [m["label"] for m in data["event_marks"]] == ["reload: 1 change(s)"]
    assert data["event_marks"][0]["t"] == 2.8
    # the 12 connections: 3 were on the removed real (the third in the 4th second), gone with it
    kept = sum(data["samples"][-1]["conns"])
    assert kept == 9 and data["samples"][-1]["states"] == {"SYN_RECV": 9}
    page = live_html(data)
    assert "10.1.0.2:8080" in page and page.count("<svg") == 4
