"""IPVS policies users trip over: persistence templates, expire_nodest_conn, black-holed flows."""
from __future__ import annotations

from scapy.all import IP, TCP, UDP, Ether

from conftest import Harness, make_switch, service_toml
from l4emu import config as configmod

E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
UDP_REALS = ("10.1.0.1:53", "10.1.0.2:53", "10.1.0.3:53")


def syn(client, sport, flags="S"):
    return E / IP(src=client, dst="10.0.0.100") / TCP(sport=sport, dport=80, flags=flags)


def dest(result):
    return Ether(result[2])[IP].dst


def test_persistence_keeps_a_client_network_on_one_real_until_the_timeout(tmp_path):
    sw = make_switch(service_toml(extra="persistence = 300\npersistence_netmask = 24"), tmp_path)
    h = Harness(sw)
    first = [dest(r) for r in h.run([syn("192.0.2.1", 1000 + k) for k in range(4)], times_s=[1, 2, 3, 4])]
    assert first == ["10.1.0.1"] * 4                                  # one client: one real
    assert dest(h.one(syn("192.0.2.77", 5000), t=5)) == "10.1.0.1"     # same /24: same template
    assert dest(h.one(syn("198.51.100.1", 5000), t=6)) == "10.1.0.2"   # another network: scheduled
    rows = sw.conntrack()
    template = [r for r in rows if r["source"] == "192.0.2.0:0"]
    assert template and template[0]["state"] == "NONE" and template[0]["destination"] == "10.1.0.1:8080"
    assert sw.services()[0]["reals"][0]["persistent"] == 1
    # Every connection of 192.0.2.0/24 expires (SYN_RECV: 60 s); the template then lasts its 300 s.
    h.one(syn("203.0.113.9", 1), t=200)
    assert {r["source"] for r in sw.conntrack() if r["source"].endswith(":0")} == {
        "192.0.2.0:0", "198.51.100.0:0", "203.0.113.0:0"}
    assert dest(h.one(syn("203.0.113.9", 2), t=520)) == "10.1.0.1"      # its template ran out at 500: rr again
    assert not [r for r in sw.conntrack() if r["source"] == "192.0.2.0:0"]
    assert dest(h.one(syn("192.0.2.1", 9999), t=521)) == "10.1.0.2"     # so did 192.0.2.0/24's: rr goes on


def test_a_template_outlives_its_timeout_while_it_controls_a_connection(tmp_path):
    sw = make_switch(service_toml(extra="persistence = 10"), tmp_path)
    h = Harness(sw)
    h.run([syn("192.0.2.1", 1000), E / IP(src="10.1.0.1", dst="192.0.2.1") / TCP(sport=8080, dport=1000, flags="SA"),
           syn("192.0.2.1", 1000, flags="A")], times_s=[1, 1, 1])      # ESTABLISHED: 900 s
    h.one(syn("203.0.113.9", 1), t=100)
    assert [r["state"] for r in sw.conntrack() if r["source"] == "192.0.2.1:0"] == ["NONE"]
    assert dest(h.one(syn("192.0.2.1", 2000), t=101)) == "10.1.0.1"


def test_a_down_real_keeps_its_flows_by_default_and_they_are_counted_blackholed(tmp_path):
    sw = make_switch(service_toml("10.0.0.100:53", UDP_REALS, 'protocol = "udp"'), tmp_path)
    h = Harness(sw)
    query = E / IP(src="192.0.2.1", dst="10.0.0.100") / UDP(sport=4000, dport=53) / b"q"
    assert dest(h.one(query, t=1)) == "10.1.0.1"
    sw.set_real("10.1.0.1:53", down=True)
    assert dest(h.one(query, t=2)) == "10.1.0.1"
    assert dest(h.one(query, t=3)) == "10.1.0.1"
    assert sw.stats()["blackholed"] == 1 and sw.stats()["rescheduled"] == 0


def test_expire_nodest_conn_moves_udp_and_breaks_tcp(tmp_path):
    text = "[table]\nexpire_nodest_conn = true\n"
    sw = make_switch(text + service_toml("10.0.0.100:53", UDP_REALS, 'protocol = "udp"') + service_toml(), tmp_path)
    h = Harness(sw)
    query = E / IP(src="192.0.2.1", dst="10.0.0.100") / UDP(sport=4000, dport=53) / b"q"
    assert dest(h.one(query, t=1)) == "10.1.0.1"
    assert dest(h.one(syn("192.0.2.1", 7), t=1)) == "10.1.0.1"
    sw.set_real("10.1.0.1:53", down=True)
    sw.set_real("10.1.0.1:8080", down=True)
    verdict, _, out = h.one(query, t=2)
    assert verdict == "new" and Ether(out)[IP].dst == "10.1.0.2"
    assert h.one(syn("192.0.2.1", 7, flags="A"), t=2)[0] == "drop"
    stats = sw.stats()
    assert (stats["rescheduled"], stats["broken"], stats["nodest"]) == (1, 1, 2)


def test_process_stops_at_a_moment_of_the_packet_clock(tmp_path):
    sw = make_switch(service_toml(), tmp_path)
    from l4emu.datapath._batch import Batch
    from scapy.all import raw
    batch = Batch.from_frames([raw(syn("192.0.2.1", k)) for k in range(6)], 1, [k * 10**9 for k in range(1, 7)])
    stop = sw.process(batch, 0, 3 * 10**9)
    assert stop == 2 and [batch.result(i)[0] for i in range(6)] == ["new", "new"] + ["unseen"] * 4
    sw.set_real("10.1.0.3:8080", down=True)
    assert sw.process(batch, stop) == 6
    assert [Ether(batch.packet(i))[IP].dst for i in range(6)] == ["10.1.0.1", "10.1.0.2", "10.1.0.1", "10.1.0.2",
                                                                 "10.1.0.1", "10.1.0.2"]


def test_persistence_config_errors(tmp_path):
    import pytest
    for text, key in [("persistence = -1", "service[0].persistence"),
                      ('persistence_netmask = "255.0.255.0"', "service[0].persistence_netmask"),
                      ("persistence_netmask = 33", "service[0].persistence_netmask")]:
        path = tmp_path / "lb.toml"
        path.write_text(service_toml(extra=text))
        with pytest.raises(configmod.ConfigError) as info:
            configmod.load(path, {"rr"})
        assert info.value.key == key


def test_replies_from_a_down_real_are_still_translated(tmp_path):
    sw = make_switch("[table]\nexpire_nodest_conn = true\n" + service_toml(), tmp_path)
    h = Harness(sw)
    h.one(syn("192.0.2.1", 7), t=1)
    sw.set_real("10.1.0.1:8080", down=True)
    verdict, _, out = h.one(E / IP(src="10.1.0.1", dst="192.0.2.1") / TCP(sport=8080, dport=7, flags="SA"), t=2)
    assert verdict == "reply" and Ether(out)[IP].src == "10.0.0.100"


def test_process_can_stop_at_an_index(tmp_path):
    from scapy.all import raw
    from l4emu.datapath._batch import Batch
    sw = make_switch(service_toml(), tmp_path)
    batch = Batch.from_frames([raw(syn("192.0.2.1", k)) for k in range(5)], 1, [10**9] * 5)
    assert sw.process(batch, 1, 0, 3) == 3
    assert [batch.result(i)[0] for i in range(5)] == ["unseen", "new", "new", "unseen", "unseen"]
