"""The authority's answers and each policy against its definition, through real DNS messages (dnspython)."""
from __future__ import annotations

import ipaddress
from collections import Counter

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gslb_util import load, query, record_toml, sites_toml
from l4emu.config import parse_address
from l4emu.gslb.policy import create
from l4emu.gslb.server import Authority

LISTEN = (parse_address("10.53.0.1"), 53)
CLIENT = parse_address("172.16.0.1")


class Sites:
    """Health and load set by the test, per site name."""

    def __init__(self, config):
        self.up = {site.name: True for site in config.sites}
        self.active = {site.name: 0 for site in config.sites}

    def authority(self, config):
        return Authority(config, lambda a: self.up[a.site], lambda a: self.active[a.site])


def ask(authority, message=None, client=CLIENT, tcp=False):
    wire, outcome = authority.respond((message or query()).to_wire(), client, LISTEN, tcp)
    return (dns.message.from_wire(wire) if wire is not None else None), outcome


def answered(response):
    return [rd.address for rrset in response.answer for rd in rrset]


def build(n=2, prefixes=None, family=4, **keys):
    config = load(sites_toml(n, prefixes, family) + record_toml(n, family, **keys))
    sites = Sites(config)
    return config, sites, sites.authority(config)


def test_an_answer_matches_its_query_as_an_authoritative_server_answers():
    _, _, authority = build(ttl=20)
    q = query()
    q.id = 4321
    r, outcome = ask(authority, q)
    assert r.id == 4321 and r.question == q.question and r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.QR and r.flags & dns.flags.AA and r.flags & dns.flags.RD
    assert [rrset.ttl for rrset in r.answer] == [20] and answered(r) == ["10.10.0.100"]
    q.flags &= ~dns.flags.RD
    assert not ask(authority, q)[0].flags & dns.flags.RD  # RD echoed, not set


@pytest.mark.parametrize(
    "message, rcode, outcome",
    [
        (query("nosuch.example.com"), dns.rcode.NXDOMAIN, "NXDOMAIN"),
        (query(rdtype="AAAA"), dns.rcode.NOERROR, "NODATA"),
        (query(rdtype="MX"), dns.rcode.NOERROR, "NODATA"),
        (dns.message.make_query("www.example.com", "A", rdclass="CH"), dns.rcode.REFUSED, "REFUSED"),
    ],
)
def test_unknown_names_and_types(message, rcode, outcome):
    _, _, authority = build()
    r, got = ask(authority, message)
    assert r.rcode() == rcode and got.rcode == outcome and not r.answer and r.flags & dns.flags.AA


def test_malformed_queries_get_formerr_with_their_id_and_short_ones_are_dropped():
    _, _, authority = build()
    loop = bytes.fromhex("beef01000001000000000000c00c00010001")  # a name that points at itself
    wire, outcome = authority.respond(loop, CLIENT, LISTEN)
    r = dns.message.from_wire(wire)
    assert (r.id, r.rcode(), outcome.rcode) == (0xBEEF, dns.rcode.FORMERR, "FORMERR") and r.flags & dns.flags.RD
    assert authority.respond(loop[:11], CLIENT, LISTEN)[0] is None
    response = query().to_wire()
    response = response[:2] + bytes([response[2] | 0x80]) + response[3:]  # QR set: never answered
    assert authority.respond(response, CLIENT, LISTEN)[0] is None
    assert authority.counters["dropped_short"] == 1 and authority.counters["dropped_response"] == 1


def test_an_answer_too_big_for_udp_is_truncated_and_whole_over_tcp_or_edns():
    _, sites, authority = build(30, family=6, fallback='"all"')
    for name in sites.up:
        sites.up[name] = False  # every site down: fallback "all" answers 30 AAAA records (> 512 bytes)
    r, outcome = ask(authority, query(rdtype="AAAA"))
    assert r.flags & dns.flags.TC and not r.answer and outcome.truncated
    assert len(answered(ask(authority, query(rdtype="AAAA"), tcp=True)[0])) == 30
    assert len(answered(ask(authority, query(rdtype="AAAA", use_edns=0, payload=4096))[0])) == 30


@pytest.mark.parametrize("fallback, rcode", [("refuse", dns.rcode.REFUSED), ("servfail", dns.rcode.SERVFAIL)])
def test_every_site_down_refuses_or_fails_per_fallback(fallback, rcode):
    _, sites, authority = build(fallback=f'"{fallback}"')
    sites.up = dict.fromkeys(sites.up, False)
    r, _ = ask(authority)
    assert r.rcode() == rcode and not r.answer


def test_topology_sends_each_prefix_to_its_site_and_honours_ecs():
    prefixes = [["172.16.0.0/16"], ["192.168.0.0/16", "172.16.5.0/24"]]
    _, sites, authority = build(2, prefixes, policy='"topology"')
    for client, site_vip in [("172.16.0.1", "10.10.0.100"), ("172.16.5.9", "10.11.0.100"),
                             ("192.168.3.3", "10.11.0.100"), ("10.99.0.1", "10.10.0.100")]:
        assert answered(ask(authority, client=parse_address(client))[0]) == [site_vip], client
    ecs = query(use_edns=0, options=[dns.edns.ECSOption("192.168.7.0", 24)])
    r, _ = ask(authority, ecs, client=parse_address("8.8.8.8"))  # a resolver asking for its client's subnet
    assert answered(r) == ["10.11.0.100"]
    echoed = [o for o in r.options if isinstance(o, dns.edns.ECSOption)][0]
    assert (echoed.address, echoed.srclen, echoed.scopelen) == ("192.168.7.0", 24, 24)
    sites.up["s1"] = False
    assert answered(ask(authority, client=parse_address("192.168.3.3"))[0]) == ["10.10.0.100"]


def test_wrr_hits_its_ratio_within_2_percent_over_10000_queries():
    """10,000 choices of the policy itself, and 1,000 whole DNS answers through the authority."""
    config, _, authority = build(3, policy='"wrr"', weights="{ s0 = 5, s1 = 3, s2 = 2 }")
    policy = create(config.records[0], config.sites)
    client = ipaddress.ip_network("172.16.0.1")
    counts = Counter(policy.choose(client, [True] * 3, [0] * 3)[0] for _ in range(10_000))
    answers = Counter(answered(ask(authority)[0])[0] for _ in range(1_000))
    for index, vip, weight in ((0, "10.10.0.100", 5), (1, "10.11.0.100", 3), (2, "10.12.0.100", 2)):
        assert abs(counts[index] / 10_000 - weight / 10) <= 0.02, counts
        assert abs(answers[vip] / 1_000 - weight / 10) <= 0.02, answers
    counts = Counter(policy.choose(client, [True, False, True], [0] * 3)[0] for _ in range(10_000))
    assert abs(counts[0] / 10_000 - 5 / 7) <= 0.02 and 1 not in counts  # a down site's share goes to the others


def test_rr_rotates_over_healthy_sites():
    _, sites, authority = build(3, policy='"rr"')
    sites.up["s1"] = False
    assert [answered(ask(authority)[0])[0] for _ in range(4)] == ["10.10.0.100", "10.12.0.100"] * 2


FAILOVER = build(4, policy='"failover"', groups='[["s0"], ["s1", "s2"], ["s3"]]')[1:]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=4, max_size=4), min_size=1, max_size=20))
def test_failover_never_answers_a_down_site_while_a_healthy_one_exists(patterns):
    sites, authority = FAILOVER
    for pattern in patterns:
        sites.up = {f"s{k}": up for k, up in enumerate(pattern)}
        r, _ = ask(authority)
        vips = answered(r)
        if any(pattern):
            first_group = next(g for g in (["s0"], ["s1", "s2"], ["s3"]) if any(sites.up[s] for s in g))
            assert len(vips) == 1
            site = f"s{int(vips[0].split('.')[1]) - 10}"
            assert sites.up[site] and site in first_group
        else:
            assert len(vips) == 4  # fallback "all"


def test_least_conn_answers_the_site_with_fewest_active_connections():
    _, sites, authority = build(3, policy='"least_conn"')
    sites.active = {"s0": 7, "s1": 2, "s2": 5}
    assert answered(ask(authority)[0]) == ["10.11.0.100"]
    sites.up["s1"] = False
    assert answered(ask(authority)[0]) == ["10.12.0.100"]


def test_hashed_is_sticky_and_a_failure_moves_only_the_failed_sites_clients():
    _, sites, authority = build(4, policy='"hashed"')
    clients = [parse_address(str(ipaddress.IPv4Address("172.16.0.0") + i)) for i in range(400)]
    before = {c: answered(ask(authority, client=c)[0])[0] for c in clients}
    assert before == {c: answered(ask(authority, client=c)[0])[0] for c in clients}  # sticky
    assert len(set(before.values())) == 4
    sites.up["s2"] = False
    after = {c: answered(ask(authority, client=c)[0])[0] for c in clients}
    moved = [c for c in clients if after[c] != before[c]]
    assert moved and all(before[c] == "10.12.0.100" for c in moved)
    assert "10.12.0.100" not in after.values()


HOSTILE = build()[2]  # one authority for every example: building one is the slow part


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.binary(max_size=600),
    st.tuples(st.integers(0, 40), st.binary(min_size=1, max_size=8)).map(
        lambda cut: (query().to_wire() + b"\0" * 40)[: cut[0]] + cut[1]),
    st.tuples(st.integers(0, 28), st.integers(0, 255)).map(
        lambda edit: (lambda w: w[: edit[0]] + bytes([edit[1]]) + w[edit[0] + 1:])(query().to_wire())),
    st.tuples(st.integers(0, 65535), st.integers(0, 65535)).map(  # huge counts
        lambda c: query().to_wire()[:4] + c[0].to_bytes(2, "big") + c[1].to_bytes(2, "big") + query().to_wire()[8:]),
))
def test_hostile_queries_get_formerr_or_a_valid_response_or_are_dropped(wire):
    response, outcome = HOSTILE.respond(wire, CLIENT, LISTEN)
    if response is None:
        assert outcome.rcode == "dropped"
        return
    parsed = dns.message.from_wire(response)
    assert parsed.id == int.from_bytes(wire[:2], "big") and parsed.flags & dns.flags.QR
    assert dns.rcode.to_text(parsed.rcode()) in ("NOERROR", "FORMERR", "NXDOMAIN", "REFUSED", "NOTIMP")
