"""Validate a GSLB document ([[site]] switches, [[gslb]] records, [cache]) into plain dataclasses.

Each [[site]] is an L4 switch of its own: its [[site.service]] blocks are checked by l4emu.config as a
whole config would be (with the document's [table] and [timeouts]), and its errors are re-keyed under
site[i]. Errors are ConfigError: one line naming the key.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from l4emu import config as configmod
from l4emu.config import ConfigError, IPAddress, _take, _typed, parse_endpoint

POLICIES = ("topology", "rr", "wrr", "failover", "least_conn", "hashed")
# Spellings production GSLBs use for the same policies (PowerDNS pickclosest, F5 ratio).
POLICY_ALIASES = {"pickclosest": "topology", "ratio": "wrr"}
FALLBACKS = ("all", "refuse", "servfail")  # every site down: answer every VIP, REFUSED, or SERVFAIL
RECORD_TYPES = {"A": 4, "AAAA": 6}
MAX_TTL = (1 << 31) - 1  # RFC 2181 8: a TTL is an unsigned 31-bit number
MAX_WEIGHT = 65535
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
MAX_DOMAIN = 253
# The client-side caching model's defaults (docs/gslb.md, "Clients' caches"): fitted to Flavel, Mani and
# Maltz (IEEE LANMAN 2014): with a 20 s TTL, 90% of requests switched within 60 s, 2% still stale after 15
# min; RFC 8767 caps serving stale data at 7 days.
DEFAULT_LINGER_SHARE = 0.2
DEFAULT_LINGER_S = 60.0
DEFAULT_STALE_SHARE = 0.02
STALE_CAP_S = 7 * 86400  # RFC 8767 section 5: max-stale-ttl, "7 days"
DEFAULT_REQUEST_INTERVAL_S = 10.0
DEFAULT_CLIENTS = 4000
DEFAULT_RESOLVERS = 400  # each a cache its clients share
MAX_CLIENTS = 1_000_000


@dataclass(frozen=True)
class Site:
    """A data centre: the clients it is close to, and its own switch's config."""

    name: str
    prefixes: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    config: configmod.Config


@dataclass(frozen=True)
class Answer:
    """One site's answer in a record: the VIP a client is sent to, and the service it fronts there."""

    site: str
    address: IPAddress
    port: int
    protocol: str


@dataclass(frozen=True)
class Record:
    """A [[gslb]] record: the name asked at `listen`, and how its sites' VIPs are chosen."""

    listen: tuple[IPAddress, int]
    domain: str  # lower case, with the root's trailing dot
    rdtype: str  # "A" or "AAAA"
    ttl: int
    policy: str  # one of POLICIES
    answers: tuple[Answer, ...]
    weights: tuple[int, ...] = ()  # wrr: per answer, in order
    groups: tuple[tuple[str, ...], ...] = ()  # failover: site names, best group first
    fallback: str = "all"
    ecs: bool = True  # topology and hashed use an EDNS Client Subnet when the query has one

    @property
    def listen_text(self) -> str:
        return configmod.format_endpoint(*self.listen)


@dataclass(frozen=True)
class CacheModel:
    """Clients' DNS caches: who obeys the TTL, who keeps an answer longer, and who shares a resolver."""

    linger_share: float = DEFAULT_LINGER_SHARE  # keep an answer an extra exponential time past the TTL
    linger_s: float = DEFAULT_LINGER_S  # ... with this mean
    stale_share: float = DEFAULT_STALE_SHARE  # keep it until stale_cap_s (pinned by a browser or app)
    stale_cap_s: float = STALE_CAP_S
    request_interval_s: float = DEFAULT_REQUEST_INTERVAL_S  # mean time between one client's requests
    clients: int = DEFAULT_CLIENTS
    resolvers: int = DEFAULT_RESOLVERS


@dataclass(frozen=True)
class GslbConfig:
    sites: tuple[Site, ...]
    records: tuple[Record, ...]
    cache: CacheModel = field(default_factory=CacheModel)

    def site(self, name: str) -> Site:
        return next(site for site in self.sites if site.name == name)


def from_dict(raw: dict, schedulers) -> GslbConfig:
    """Validate a parsed TOML document (`schedulers` as for l4emu.config.from_dict)."""
    raw = _take(raw, "", {"site", "gslb", "table", "timeouts", "cache"})
    sites_raw = raw.get("site", [])
    if not isinstance(sites_raw, list) or not sites_raw:
        raise ConfigError("site", "at least one [[site]] is needed")
    shared = {name: raw[name] for name in ("table", "timeouts") if name in raw}
    sites = tuple(_site(s, f"site[{i}]", shared, schedulers) for i, s in enumerate(sites_raw))
    _check_sites(sites)
    records_raw = raw.get("gslb", [])
    if not isinstance(records_raw, list) or not records_raw:
        raise ConfigError("gslb", "at least one [[gslb]] record is needed")
    records = tuple(_record(r, f"gslb[{i}]", sites) for i, r in enumerate(records_raw))
    seen: dict[tuple, int] = {}
    for i, record in enumerate(records):
        first = seen.setdefault((record.listen, record.domain, record.rdtype), i)
        if first != i:
            raise ConfigError(
                f"gslb[{i}].domain", f"{record.rdtype} {record.domain} at {record.listen_text} is gslb[{first}] already"
            )
    return GslbConfig(sites, records, _cache(raw.get("cache", {})))


def load(path: str | Path, schedulers: Collection[str] | Mapping[str, tuple[str, ...]]) -> GslbConfig:
    """Read a GSLB TOML file; errors name the file and the key."""
    return configmod.parse(configmod.read_text(path), str(path), lambda raw: from_dict(raw, schedulers))


def _site(raw, key: str, shared: dict, schedulers) -> Site:
    raw = _take(raw, key, {"name", "prefixes", "service"})
    name = _typed(raw.get("name", ""), str, f"{key}.name")
    if not SITE_NAME.match(name):
        raise ConfigError(f"{key}.name", f"{name!r} is not a site name (letters, digits, - _ . ; up to 63)")
    prefixes = raw.get("prefixes", [])
    if not isinstance(prefixes, list):
        raise ConfigError(f"{key}.prefixes", f'expected a list like ["172.16.0.0/16"], got {prefixes!r}')
    networks = []
    for i, text in enumerate(prefixes):
        if not isinstance(text, str):
            raise ConfigError(f"{key}.prefixes[{i}]", f'expected a prefix like "172.16.0.0/16", got {text!r}')
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            raise ConfigError(f"{key}.prefixes[{i}]", f"{text!r} is not a prefix: {exc}") from None
    if "service" not in raw:
        raise ConfigError(f"{key}.service", "a site needs at least one [[site.service]] (its switch's services)")
    try:
        config = configmod.from_dict({"service": raw["service"], **shared}, schedulers)
    except ConfigError as exc:
        if exc.key.split(".")[0].split("[")[0] in ("table", "timeouts"):
            raise
        raise ConfigError(f"{key}.{exc.key}", exc.problem) from None
    for j, svc in enumerate(config.services):
        # A site's switch does not hold fragments back for later packets (the replay hands each packet to
        # one site, l4emu/gslb/replay.py): its reals may be emulated and forward by any method.
        if svc.fragments != "drop":
            raise ConfigError(
                f"{key}.service[{j}].fragments", 'a site\'s service takes fragments = "drop" only, for now'
            )
    return Site(name, tuple(networks), config)


def _check_sites(sites: tuple[Site, ...]) -> None:
    """Names unique; a VIP or real address belongs to one site, so a packet names the site it is for."""
    owner: dict[object, str] = {}
    for i, site in enumerate(sites):
        if owner.setdefault(("name", site.name), f"site[{i}]") != f"site[{i}]":
            raise ConfigError(f"site[{i}].name", f"{site.name!r} is {owner[('name', site.name)]} already")
        for j, svc in enumerate(site.config.services):
            addresses = [
                (f"service[{j}].vip", svc.vip),
                *((f"service[{j}].real[{k}].address", r.address) for k, r in enumerate(svc.reals)),
            ]
            for where, address in addresses:
                first = owner.setdefault(address, site.name)
                if first != site.name:
                    raise ConfigError(
                        f"site[{i}].{where}",
                        f"{configmod.format_address(address)} is site {first!r}'s: a site's addresses are its own",
                    )


def _record(raw, key: str, sites: tuple[Site, ...]) -> Record:
    raw = _take(raw, key, {"listen", "domain", "type", "ttl", "policy", "vips", "weights", "groups", "fallback", "ecs"})
    for name in ("listen", "domain", "vips"):
        if name not in raw:
            raise ConfigError(f"{key}.{name}", "missing")
    listen = parse_endpoint(raw["listen"], f"{key}.listen")
    owners = {
        site.name
        for site in sites
        for svc in site.config.services
        for a in (svc.vip, *(r.address for r in svc.reals))
        if a == listen[0]
    }
    if owners:
        raise ConfigError(
            f"{key}.listen", f"{configmod.format_address(listen[0])} is an address of site {owners.pop()!r}"
        )
    domain = _domain(raw["domain"], f"{key}.domain")
    rdtype = _typed(raw.get("type", "A"), str, f"{key}.type").upper()
    if rdtype not in RECORD_TYPES:
        raise ConfigError(f"{key}.type", f"{rdtype!r} is not one of {', '.join(RECORD_TYPES)}")
    ttl = _typed(raw.get("ttl", 30), int, f"{key}.ttl")
    if not 0 <= ttl <= MAX_TTL:
        raise ConfigError(f"{key}.ttl", f"{ttl} is out of range 0-{MAX_TTL}")
    policy = _typed(raw.get("policy", "rr"), str, f"{key}.policy")
    policy = POLICY_ALIASES.get(policy, policy)
    if policy not in POLICIES:
        known = ", ".join((*POLICIES, *POLICY_ALIASES))
        raise ConfigError(f"{key}.policy", f"{raw['policy']!r} is not one of {known}")
    answers = _answers(raw["vips"], f"{key}.vips", sites, RECORD_TYPES[rdtype])
    names = [a.site for a in answers]
    weights = _weights(raw, key, policy, names)
    groups = _groups(raw, key, policy, names)
    fallback = _typed(raw.get("fallback", "all"), str, f"{key}.fallback")
    if fallback not in FALLBACKS:
        raise ConfigError(f"{key}.fallback", f"{fallback!r} is not one of {', '.join(FALLBACKS)}")
    ecs = _typed(raw.get("ecs", True), bool, f"{key}.ecs")
    return Record(listen, domain, rdtype, ttl, policy, answers, weights, groups, fallback, ecs)


def _domain(value, key: str) -> str:
    """A host name of labels (RFC 1035 2.3.4: 63 per label, 253 in all), kept lower case and absolute."""
    text = _typed(value, str, key).strip().rstrip(".").lower()
    if not text or len(text) > MAX_DOMAIN or not all(DNS_LABEL.match(label) for label in text.split(".")):
        raise ConfigError(key, f'{value!r} is not a domain name like "www.example.com"')
    return text + "."


def _answers(raw, key: str, sites: tuple[Site, ...], family: int) -> tuple[Answer, ...]:
    """{ east = "10.10.0.100:80", ... }: each a VIP:port of a service of that site, of the record's family."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(key, f'expected a table like {{ east = "10.10.0.100:80" }}, got {raw!r}')
    by_name = {site.name: site for site in sites}
    answers = []
    for name, text in raw.items():
        if name not in by_name:
            raise ConfigError(f"{key}.{name}", f"no site {name!r} (sites: {', '.join(by_name)})")
        address, port = parse_endpoint(text, f"{key}.{name}")
        if address.version != family:
            raise ConfigError(f"{key}.{name}", f"{text} is IPv{address.version}; the record's type answers IPv{family}")
        services = [s for s in by_name[name].config.services if (s.vip, s.port) == (address, port)]
        if not services:
            raise ConfigError(f"{key}.{name}", f"site {name!r} has no service with VIP {text}")
        answers.append(Answer(name, address, port, services[0].protocol))
    return tuple(answers)


def _weights(raw: dict, key: str, policy: str, names: list[str]) -> tuple[int, ...]:
    if "weights" not in raw:
        return (1,) * len(names) if policy == "wrr" else ()
    if policy != "wrr":
        raise ConfigError(f"{key}.weights", f"only policy wrr (ratio) has weights, not {policy}")
    table = raw["weights"]
    if not isinstance(table, dict):
        raise ConfigError(f"{key}.weights", f"expected a table like {{ east = 3, west = 1 }}, got {table!r}")
    for name in table:
        if name not in names:
            raise ConfigError(f"{key}.weights.{name}", f"{name!r} is not a site of this record's vips")
    weights = []
    for name in names:
        weight = _typed(table.get(name, 1), int, f"{key}.weights.{name}")
        if not 0 <= weight <= MAX_WEIGHT:
            raise ConfigError(f"{key}.weights.{name}", f"{weight} is out of range 0-{MAX_WEIGHT}")
        weights.append(weight)
    if not any(weights):
        raise ConfigError(f"{key}.weights", "every weight is 0: no site would ever be answered")
    return tuple(weights)


def _groups(raw: dict, key: str, policy: str, names: list[str]) -> tuple[tuple[str, ...], ...]:
    """failover: [["east"], ["west", "central"]], every site of the record in exactly one group."""
    if "groups" not in raw:
        if policy == "failover":
            return tuple((name,) for name in names)  # the vips' order is the preference
        return ()
    if policy != "failover":
        raise ConfigError(f"{key}.groups", f"only policy failover has groups, not {policy}")
    groups = raw["groups"]
    if not isinstance(groups, list) or not groups or not all(isinstance(g, list) and g for g in groups):
        raise ConfigError(f"{key}.groups", f'expected a list of site lists like [["east"], ["west"]], got {groups!r}')
    seen: list[str] = []
    for i, group in enumerate(groups):
        for name in group:
            if name not in names or name in seen:
                raise ConfigError(
                    f"{key}.groups[{i}]", f"{name!r} is not a site of this record's vips, or is listed twice"
                )
            seen.append(name)
    missing = [name for name in names if name not in seen]
    if missing:
        raise ConfigError(f"{key}.groups", f"site {missing[0]!r} is in no group: it would never be answered")
    return tuple(tuple(group) for group in groups)


def _share(raw: dict, name: str, default: float) -> float:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"cache.{name}", f"{value!r} is not a share from 0 to 1")
    return float(value)


def _seconds(raw: dict, name: str, default: float, high: float) -> float:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= high:
        raise ConfigError(f"cache.{name}", f"{value!r} is not a number of seconds above 0, up to {high:g}")
    return float(value)


def _count(raw: dict, name: str, default: int) -> int:
    value = _typed(raw.get(name, default), int, f"cache.{name}")
    if not 1 <= value <= MAX_CLIENTS:
        raise ConfigError(f"cache.{name}", f"{value} is out of range 1-{MAX_CLIENTS}")
    return value


def _cache(raw) -> CacheModel:
    """[cache]: the clients' caching model (l4emu/gslb/caching.py)."""
    known = {"linger_share", "linger_s", "stale_share", "stale_cap_s", "request_interval_s", "clients", "resolvers"}
    raw = _take(raw, "cache", known)
    linger, stale = _share(raw, "linger_share", DEFAULT_LINGER_SHARE), _share(raw, "stale_share", DEFAULT_STALE_SHARE)
    if linger + stale > 1:
        raise ConfigError(
            "cache.stale_share", f"linger_share {linger:g} and stale_share {stale:g} add up to more than 1"
        )
    clients, resolvers = _count(raw, "clients", DEFAULT_CLIENTS), _count(raw, "resolvers", DEFAULT_RESOLVERS)
    if resolvers > clients:
        raise ConfigError("cache.resolvers", f"{resolvers} resolvers for {clients} clients: at most one each")
    return CacheModel(
        linger,
        _seconds(raw, "linger_s", DEFAULT_LINGER_S, STALE_CAP_S),
        stale,
        _seconds(raw, "stale_cap_s", STALE_CAP_S, STALE_CAP_S),
        _seconds(raw, "request_interval_s", DEFAULT_REQUEST_INTERVAL_S, 86400),
        clients,
        resolvers,
    )
