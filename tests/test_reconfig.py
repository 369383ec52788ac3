"""Reloads: the diff of two configs as ipvsadm steps, ipvsadm-save lines, and Switch.apply keeping the table."""
from __future__ import annotations

import pytest
from conftest import Harness, make_switch, run_cli, service_toml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, UDP, Ether

from l4emu import config as configmod
from l4emu import reconfig, schedulers
from l4emu.render import ipvsadm

OLD = service_toml() + service_toml("10.0.0.100:53", ("10.1.0.11:53", "10.1.0.12:53"), 'protocol = "udp"')


def load(text: str, tmp_path, name="lb.toml") -> configmod.Config:
    path = tmp_path / name
    path.write_text(text)
    return configmod.load(path, schedulers.catalog())


def lines(old: str, new: str, tmp_path) -> list[str]:
    diff = reconfig.diff(load(old, tmp_path, "old.toml"), load(new, tmp_path, "new.toml"))
    return ipvsadm.diff_lines(diff.as_dict())


def test_no_change_is_no_step(tmp_path):
    assert lines(OLD, OLD, tmp_path) == []
    assert not reconfig.diff(load(OLD, tmp_path), load(OLD, tmp_path))


def test_reals_added_removed_and_edited_in_ipvsadm_order(tmp_path):
    new = ('[[service]]\nvip = "10.0.0.100:80"\nscheduler = "wlc"\n'
           '  [[service.real]]\n  address = "10.1.0.1:8080"\n  weight = 3\n  upper_threshold = 100\n'
           '  [[service.real]]\n  address = "10.1.0.2:8080"\n'
           '  [[service.real]]\n  address = "10.1.0.4:8080"\n')
    new += service_toml("[2001:db8::100]:80", ("[2001:db8:1::1]:8080",), "persistence = 300\npersistence_netmask = 64")
    assert lines(OLD, new, tmp_path) == [
        "-d -t 10.0.0.100:80 -r 10.1.0.3:8080",
        "-D -u 10.0.0.100:53",
        "-E -t 10.0.0.100:80 -s wlc    # scheduler rr -> wlc",
        "-e -t 10.0.0.100:80 -r 10.1.0.1:8080 -m -w 3 -x 100    # weight 1 -> 3, upper_threshold 0 -> 100",
        "-a -t 10.0.0.100:80 -r 10.1.0.4:8080 -m -w 1",
        "-A -t [2001:db8::100]:80 -s rr -p 300 -M 64",
        "-a -t [2001:db8::100]:80 -r [2001:db8:1::1]:8080 -m -w 1",
    ]


def test_timeouts_and_settings_as_set_and_sysctl(tmp_path):
    new = "[table]\nexpire_nodest_conn = true\n[timeouts]\nestablished = 600\nudp = 30\nsyn_recv = 10\n" + OLD
    assert lines(OLD, new, tmp_path) == [
        "--set 600 0 30",
        "# timeout syn_recv 60 -> 10 (no ipvsadm command: [timeouts])",
        "# sysctl -w net.ipv4.vs.expire_nodest_conn=1",
    ]


def test_save_prints_what_ipvsadm_save_prints(tmp_path):
    text = ('[[service]]\nvip = "10.0.0.100:80"\nscheduler = "sh"\nscheduler_flags = ["sh-port"]\n'
            'persistence = 60\npersistence_netmask = 24\n'
            '  [[service.real]]\n  address = "10.1.0.1:8080"\n  weight = 2\n  lower_threshold = 5\n'
            '  upper_threshold = 10\n'
            '  [[service.real]]\n  address = "10.1.0.2:80"\n  forward = "dr"\n  mac = "02:00:00:00:00:02"\n')
    assert ipvsadm.save_lines(reconfig.config_data(load(text, tmp_path))) == [
        "-A -t 10.0.0.100:80 -s sh -b sh-port -p 60 -M 255.255.255.0",
        "-a -t 10.0.0.100:80 -r 10.1.0.1:8080 -m -w 2 -x 10 -y 5",
        "-a -t 10.0.0.100:80 -r 10.1.0.2:80 -g -w 1",
    ]


def test_what_needs_a_restart_is_refused_with_the_key(tmp_path):
    old = load(OLD, tmp_path)
    with pytest.raises(configmod.ConfigError, match=r"new.toml: table.max_connections: 1048576 -> 1000: .*restart"):
        reconfig.check_reloadable(old, load("[table]\nmax_connections = 1000\n" + OLD, tmp_path), "new.toml")
    emulated = service_toml("10.0.0.100:80", ("10.1.0.1:8080",), "").replace(
        'address = "10.1.0.1:8080"', 'address = "10.1.0.1:8080"\n  emulated = true')
    with pytest.raises(configmod.ConfigError, match=r"service\[0\].real\[0\].emulated: the new config has emulated"):
        reconfig.check_reloadable(old, load(emulated, tmp_path))


def syn(k: int, flags="S"):
    return Ether() / IP(src=f"172.16.0.{k}", dst="10.0.0.100") / TCP(sport=40000 + k, dport=80, flags=flags)


def test_apply_keeps_every_flow_on_its_real_but_a_removed_reals(tmp_path):
    switch = make_switch(OLD, tmp_path)
    harness = Harness(switch)
    harness.run([syn(k) for k in range(1, 7)], times_s=[1 + k / 10 for k in range(6)])
    harness.run([Ether() / IP(src="172.16.1.1", dst="10.0.0.100") / UDP(sport=5353, dport=53)], times_s=[2])
    before = {row["source"]: row["destination"] for row in switch.conntrack()}
    new = ('[[service]]\nvip = "10.0.0.100:80"\nscheduler = "wrr"\n'
           '  [[service.real]]\n  address = "10.1.0.4:8080"\n  weight = 5\n'
           '  [[service.real]]\n  address = "10.1.0.2:8080"\n'
           '  [[service.real]]\n  address = "10.1.0.1:8080"\n  weight = 0\n'
           + service_toml("10.0.0.100:53", ("10.1.0.12:53", "10.1.0.11:53"), 'protocol = "udp"'))
    changes = switch.apply(load(new, tmp_path, "new.toml"))
    assert [c["action"] for c in changes.changes] == ["delete", "edit", "add", "edit"]
    after = {row["source"]: row["destination"] for row in switch.conntrack()}
    gone = {src for src, dst in before.items() if dst == "10.1.0.3:8080"}
    assert len(gone) == 2 and after == {src: dst for src, dst in before.items() if src not in gone}
    assert switch.stats()["nodest"] == 2
    # The kept flows' next packets go to the same reals (the table was not dropped, and the indexes moved).
    for k in range(1, 7):
        src = f"172.16.0.{k}:{40000 + k}"
        verdict, _, packet = harness.one(syn(k, "A"), t=3)
        if src in gone:
            assert verdict == "drop"        # tcp_not_syn: as IPVS's expire_nodest_conn leaves it
        else:
            assert Ether(packet)[IP].dst == before[src].split(":")[0]
    # Counters go on; the weight-0 real takes no new flow, the new one does (wrr 5:1).
    by_real = {r["address"]: r for svc in switch.services() for r in svc["reals"]}
    assert by_real["10.1.0.1:8080"]["conns"] == 2 and by_real["10.1.0.1:8080"]["weight"] == 0
    harness.run([syn(k) for k in range(10, 16)], times_s=[4] * 6)
    by_real = {r["address"]: r for svc in switch.services() for r in svc["reals"]}
    assert by_real["10.1.0.4:8080"]["conns"] == 5 and by_real["10.1.0.2:8080"]["conns"] == 3
    assert by_real["10.1.0.1:8080"]["conns"] == 2


def test_a_persistence_change_forgets_the_templates(tmp_path):
    sticky = OLD.replace('vip = "10.0.0.100:80"', 'vip = "10.0.0.100:80"\npersistence = 300', 1)
    switch = make_switch(sticky, tmp_path)
    Harness(switch).run([syn(1)])
    assert any(row["state"] == "NONE" for row in switch.conntrack())
    switch.apply(load(sticky.replace("persistence = 300", "persistence = 300\npersistence_netmask = 24"), tmp_path))
    rows = switch.conntrack()
    assert [row["state"] for row in rows] == ["SYN_RECV"]


def test_apply_against_and_save_from_the_command_line(tmp_path):
    (tmp_path / "old.toml").write_text(OLD)
    (tmp_path / "new.toml").write_text(OLD.replace('address = "10.1.0.3:8080"', 'address = "10.1.0.3:8080"\n  weight = 2'))
    done = run_cli("apply", tmp_path / "new.toml", "--against", tmp_path / "old.toml")
    assert done.stdout == "-e -t 10.0.0.100:80 -r 10.1.0.3:8080 -m -w 2    # weight 1 -> 2\n"
    assert run_cli("save", "-c", tmp_path / "old.toml").stdout.splitlines()[:2] == [
        "-A -t 10.0.0.100:80 -s rr", "-a -t 10.0.0.100:80 -r 10.1.0.1:8080 -m -w 1"]
    refused = run_cli("apply", tmp_path / "new.toml", check=False)
    assert refused.returncode == 2 and "--control SOCK" in refused.stderr


POOL = [f"10.1.0.{k}:8080" for k in range(1, 7)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.lists(st.sampled_from(POOL), min_size=1, max_size=6, unique=True),
                          st.sampled_from(["rr", "wlc", "sh", "mh"])), min_size=1, max_size=5))
def test_any_reload_sequence_keeps_flows_and_counts(tmp_path, steps):
    """Reals come and go in any order, schedulers change: each flow keeps its real until its real goes,
    and every real's ActiveConn + InActConn still equals the connections the table holds for it."""
    switch = make_switch(service_toml(reals=POOL[:3]), tmp_path)
    harness = Harness(switch)
    client = 0
    for when, (reals, scheduler) in enumerate(steps, start=1):
        harness.run([syn(client + k) for k in range(1, 5)], times_s=[when] * 4)
        client += 4
        before = {row["source"]: row["destination"] for row in switch.conntrack()}
        switch.apply(load(service_toml(reals=reals, extra=f'scheduler = "{scheduler}"'), tmp_path, "step.toml"))
        after = {row["source"]: row["destination"] for row in switch.conntrack()}
        assert after == {src: dst for src, dst in before.items() if dst in reals}
        held = {}
        for dst in after.values():
            held[dst] = held.get(dst, 0) + 1
        for real in switch.services()[0]["reals"]:
            assert real["active"] + real["inactive"] == held.get(real["address"], 0)
