"""The GSLB document: [[site]] switches, [[gslb]] records, [cache]; each error one line naming its key."""
from __future__ import annotations

import subprocess
import sys

import pytest

from gslb_util import load, record_toml, sites_toml
from l4emu.config import ConfigError


def test_a_valid_document_gives_sites_with_their_own_switch_configs():
    config = load(sites_toml(2, [["172.16.0.0/16"], ["192.168.0.0/16"]]) + record_toml(2, policy='"topology"', ttl=20))
    assert [s.name for s in config.sites] == ["s0", "s1"]
    assert str(config.sites[0].config.services[0].vip) == "10.10.0.100"
    record = config.records[0]
    assert (record.domain, record.rdtype, record.ttl, record.policy) == ("www.example.com.", "A", 20, "topology")
    assert [a.site for a in record.answers] == ["s0", "s1"]


@pytest.mark.parametrize("policy, canonical", [("pickclosest", "topology"), ("ratio", "wrr"), ("least_conn", "least_conn")])
def test_policy_spellings(policy, canonical):
    assert load(sites_toml() + record_toml(policy=f'"{policy}"')).records[0].policy == canonical


BAD = [
    (record_toml(), "site", "at least one [[site]]"),
    (sites_toml(), "gslb", "at least one [[gslb]]"),
    (sites_toml(2, [["172.16.0.0/33"], []]) + record_toml(), "site[0].prefixes[0]", "not a prefix"),
    (sites_toml(2, [["172.16.0.1/16"], []]) + record_toml(), "site[0].prefixes[0]", "not a prefix"),
    (sites_toml().replace('name = "s1"', 'name = "s0"') + record_toml(), "site[1].name", "site[0] already"),
    (sites_toml().replace("10.111.0.1:8080", "10.110.0.1:8080"), "site[1].service[0].real[0].address", "site 's0'"),
    (sites_toml().replace('address = "10.110.0.1:8080"', 'address = "10.110.0.1"') + record_toml(),
     "site[0].service[0].real[0].address", "not address:port"),
    (sites_toml().replace('address = "10.110.0.1:8080"', 'address = "10.110.0.1:8080"\n    emulated = "yes"')
     + record_toml(), "site[0].service[0].real[0].emulated", "true or false"),
    (sites_toml().replace('address = "10.110.0.1:8080"', 'address = "10.110.0.1:8080"\n    forward = "dr"\n'
                          '    mac = "02:00:00:00:00:01"') + record_toml(), "site[0].service[0].real[0].address", "dr real owns the VIP"),
    (sites_toml().replace('vip = "10.10.0.100:80"', 'vip = "10.10.0.100:80"\n  fragments = "track"') + record_toml(),
     "site[0].service[0].fragments", "drop"),
    (sites_toml() + record_toml().replace(f'listen = "10.53.0.1:53"\n', ""), "gslb[0].listen", "missing"),
    (sites_toml() + record_toml().replace("10.53.0.1:53", "10.10.0.100:53"), "gslb[0].listen", "address of site"),
    (sites_toml() + record_toml(ttl=-1), "gslb[0].ttl", "out of range"),
    (sites_toml() + record_toml(ttl='"20"'), "gslb[0].ttl", "integer"),
    (sites_toml() + record_toml(policy='"geo"'), "gslb[0].policy", "not one of"),
    (sites_toml() + record_toml(fallback='"drop"'), "gslb[0].fallback", "not one of"),
    (sites_toml() + record_toml(type='"MX"').replace('type = "A"\n', ""), "gslb[0].type", "not one of"),
    (sites_toml() + record_toml().replace("www.example.com", "www..example.com"), "gslb[0].domain", "not a domain"),
    (sites_toml() + record_toml().replace("s1 =", "s9 ="), "gslb[0].vips.s9", "no site"),
    (sites_toml() + record_toml().replace("10.11.0.100:80", "10.11.0.100:81"), "gslb[0].vips.s1", "no service"),
    (sites_toml() + record_toml().replace('type = "A"', 'type = "AAAA"'), "gslb[0].vips.s0", "IPv4"),
    (sites_toml() + record_toml(weights="{ s0 = 2 }"), "gslb[0].weights", "only policy wrr"),
    (sites_toml() + record_toml(policy='"wrr"', weights="{ s0 = 0, s1 = 0 }"), "gslb[0].weights", "every weight"),
    (sites_toml() + record_toml(policy='"wrr"', weights="{ s7 = 1 }"), "gslb[0].weights.s7", "not a site"),
    (sites_toml() + record_toml(policy='"failover"', groups='[["s0"]]'), "gslb[0].groups", "in no group"),
    (sites_toml() + record_toml(policy='"failover"', groups='[["s0"], ["s0", "s1"]]'), "gslb[0].groups[1]", "twice"),
    (sites_toml() + record_toml(groups='[["s0"], ["s1"]]'), "gslb[0].groups", "only policy failover"),
    (sites_toml() + record_toml() + record_toml(), "gslb[1].domain", "gslb[0] already"),
    (sites_toml() + record_toml() + "[cache]\nlinger_share = 0.9\nstale_share = 0.2\n", "cache.stale_share", "more than 1"),
    (sites_toml() + record_toml() + "[cache]\nresolvers = 10\nclients = 5\n", "cache.resolvers", "at most one each"),
    (sites_toml() + record_toml() + "[cache]\nlinger_s = 0\n", "cache.linger_s", "above 0"),
    (sites_toml() + record_toml() + "[cache]\nshare = 1\n", "cache.share", "unknown key"),
    (sites_toml() + record_toml() + "[timeouts]\ntcp = 5\n", "timeouts.tcp", "unknown key"),
]


@pytest.mark.parametrize("text, key, words", BAD, ids=[f"{k}:{w}" for _, k, w in BAD])
def test_errors_name_the_key(text, key, words):
    with pytest.raises(ConfigError) as caught:
        load(text)
    assert caught.value.key == key and words in caught.value.problem, str(caught.value)


def test_the_cli_check_prints_one_line_and_exits_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(sites_toml() + record_toml(ttl=-1))
    good = tmp_path / "good.toml"
    good.write_text(sites_toml() + record_toml(policy='"hashed"'))
    run = [sys.executable, "-m", "l4emu.cli", "gslb", "check"]
    failed = subprocess.run([*run, str(bad)], capture_output=True, text=True)
    assert failed.returncode == 2 and failed.stdout == ""
    assert failed.stderr.count("\n") == 1 and "gslb[0].ttl" in failed.stderr and "Traceback" not in failed.stderr
    passed = subprocess.run([*run, str(good)], capture_output=True, text=True)
    assert passed.returncode == 0 and "OK, 2 sites (4 reals), 1 record, policies hashed" in passed.stdout


def test_site_events_parse_and_refuse_what_they_cannot_name():
    from l4emu.events import EventError, parse_event

    event = parse_event("5:site-down:east")
    assert (event.at_s, event.action, event.site, str(event)) == (5.0, "site-down", "east", "5:site-down:east")
    assert parse_event("7.5:site-up:east").action == "site-up"
    for bad in ("5:site-down:", "5:site-up:a:b"):
        with pytest.raises(EventError, match="the site's name"):
            parse_event(bad)


def test_serve_refuses_an_unknown_site_and_an_address_it_cannot_bind_in_one_line():
    from conftest import PCAPS, run_cli

    unknown = run_cli("gslb", "serve", "-c", PCAPS / "gslb.toml", "--down", "north", check=False)
    assert unknown.returncode == 2 and "--down north: no site 'north'" in unknown.stderr
    assert unknown.stderr.count("\n") == 1
    # 10.53.0.1 is no address of this host (the live test gives it one, in a namespace)
    unbound = run_cli("gslb", "serve", "-c", PCAPS / "gslb.toml", check=False)
    assert unbound.returncode == 2 and "10.53.0.1:53: cannot listen" in unbound.stderr, unbound.stderr
    assert unbound.stderr.count("\n") == 1


def test_a_plain_command_given_a_gslb_config_says_which_command_reads_it():
    from conftest import PCAPS, run_cli

    done = run_cli("check", PCAPS / "gslb.toml", check=False)
    assert done.returncode == 2 and "a GSLB config" in done.stderr and "l4emu gslb check" in done.stderr
