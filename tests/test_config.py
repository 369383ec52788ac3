"""Configuration: good files load; every bad one gets one line naming the key, exit 2, no traceback."""
from __future__ import annotations

import pytest

from conftest import PCAPS, run_cli
from l4emu import config as configmod

GOOD = """
[table]
max_connections = 5000
[timeouts]
established = 300
udp = 30
[[service]]
vip = "[2001:db8::100]:443"
protocol = "tcp"
scheduler = "rr"
  [[service.real]]
  address = "[2001:db8:1::1]:8443"
  weight = 3
"""
SERVICE = '[[service]]\nvip = "10.0.0.100:80"\n  [[service.real]]\n  address = "10.1.0.1:8080"\n'


def load_text(tmp_path, text):
    path = tmp_path / "lb.toml"
    path.write_text(text)
    return configmod.load(path, {"rr"})


def test_good_config_loads(tmp_path):
    cfg = load_text(tmp_path, GOOD)
    assert cfg.max_connections == 5000
    assert cfg.timeouts["established"] == 300 and cfg.timeouts["syn_recv"] == 60
    [svc] = cfg.services
    assert svc.endpoint == "[2001:db8::100]:443" and svc.reals[0].weight == 3


def test_embedded_default_loads():
    cfg = configmod.load(None, {"rr"})
    assert [s.endpoint for s in cfg.services] == ["10.0.0.100:80", "10.0.0.100:53", "[2001:db8::100]:80"]


@pytest.mark.parametrize("text,key", [
    ('[[service]]\nvip = "10.0.0.100"\n', "service[0].vip"),
    ('[[service]]\nvip = "10.0.0.300:80"\n', "service[0].vip"),
    ('[[service]]\nvip = "2001:db8::1:80"\n', "service[0].vip"),
    ('[[service]]\nvip = "10.0.0.1:70000"\n', "service[0].vip"),
    ('[[service]]\nvip = "10.0.0.1:80"\nprotocol = "sctp"\n[[service.real]]\naddress = "10.1.0.1:1"\n', "service[0].protocol"),
    ('[[service]]\nvip = "10.0.0.1:80"\nscheduler = "nope"\n[[service.real]]\naddress = "10.1.0.1:1"\n', "service[0].scheduler"),
    ('[[service]]\nvip = "10.0.0.1:80"\n', "service[0].real"),
    ('[[service]]\nvip = "10.0.0.1:80"\n[[service.real]]\naddress = "10.1.0.1"\n', "service[0].real[0].address"),
    ('[[service]]\nvip = "10.0.0.1:80"\n[[service.real]]\naddress = "[2001:db8::1]:80"\n', "service[0].real[0].address"),
    ('[[service]]\nvip = "10.0.0.1:80"\n[[service.real]]\naddress = "10.1.0.1:1"\nweight = 70000\n', "service[0].real[0].weight"),
    ('[[service]]\nvip = "10.0.0.1:80"\n[[service.real]]\naddress = "10.1.0.1:1"\nweight = "3"\n', "service[0].real[0].weight"),
    ('[[service]]\nvip = "10.0.0.1:80"\n[[service.real]]\naddress = "10.1.0.1:1"\nwieght = 3\n', "service[0].real[0].wieght"),
    (SERVICE + SERVICE, "service[1].vip"),
    ("[table]\nmax_connections = 0\n" + SERVICE, "table.max_connections"),
    ("[table]\nsloppy_tcp = 1\n" + SERVICE, "table.sloppy_tcp"),
    ("[timeouts]\nestablished = -1\n" + SERVICE, "timeouts.established"),
    ("[timeouts]\nestablishd = 5\n" + SERVICE, "timeouts.establishd"),
    ("[tabel]\n" + SERVICE, "tabel"),
    ("", "service"),
])
def test_bad_config_names_the_key(tmp_path, text, key):
    with pytest.raises(configmod.ConfigError) as info:
        load_text(tmp_path, text)
    assert info.value.key == key
    assert str(info.value).startswith(f"{tmp_path / 'lb.toml'}: {key}: ")


def test_cli_reports_a_bad_config_in_one_line(tmp_path):
    path = tmp_path / "lb.toml"
    path.write_text('[[service]]\nvip = "10.0.0.1:80"\n[[service.real]]\naddress = "10.1.0.1"\n')
    proc = run_cli("replay", PCAPS / "sample.pcap", "-c", path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"l4emu: error: {path}: service[0].real[0].address: '10.1.0.1' is not address:port (IPv6 as [address]:port)"]


@pytest.mark.parametrize("args", [
    ["replay", "missing.pcap"],
    ["replay", str(PCAPS / "README.md")],
    ["replay", str(PCAPS / "sample.pcap"), "-c", "missing.toml"],
    ["replay", str(PCAPS / "sample.pcap"), "-o", "/nonexistent-dir/out.pcap"],
    ["replay", str(PCAPS / "sample.pcap"), "-o", "out.txt"],
    ["replay", str(PCAPS / "sample.pcap"), "--vip", "10.0.0.1:80"],
    ["conntrack", str(PCAPS / "README.md")],
])
def test_cli_errors_are_one_line_exit_2(args):
    proc = run_cli(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("l4emu: error: ") and "Traceback" not in proc.stderr
