"""Parse and validate the TOML configuration into plain dataclasses, with errors that name the key."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import socket
import tomllib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from l4emu import checks
from l4emu.errors import L4emuError

if TYPE_CHECKING:
    import random

T = TypeVar("T")  # what parse() builds: a Config, or another loader's (the GSLB's)

# IPVS default timeouts in seconds (net/netfilter/ipvs/ip_vs_proto_tcp.c, _udp.c), by state.
DEFAULT_TIMEOUTS: dict[str, float] = {
    "none": 2,
    "established": 900,
    "syn_sent": 120,
    "syn_recv": 60,
    "fin_wait": 120,
    "time_wait": 120,
    "close": 10,
    "close_wait": 60,
    "last_ack": 30,
    "listen": 120,
    "synack": 120,
    "udp": 300,
}
PROTOCOLS = ("tcp", "udp")
DEFAULT_PERSISTENCE = 300  # ipvsadm -p without a value
MAX_WEIGHT = 65535
MAX_CONNECTIONS = (1 << 30) - 1  # the flow table's limit (flow indexes and refs are 32-bit)
MH_TABLE_SIZE = 65537  # Katran's default; IPVS mh allows primes from 251 to 131071
MH_TABLE_RANGE = (251, 131071)
APPS = ("http", "echo", "discard")  # an emulated real's application (l4emu/hosts/apps.py)
SYN_OVERFLOW = ("drop", "reset")
MAX_BACKLOG = 65535  # net.core.somaxconn's ceiling
EMULATION_KEYS = ("app", "backlog", "accept_rate", "syn_overflow", "workers", "service_time", "response_bytes")
TCP_ONLY_KEYS = ("accept_rate", "syn_overflow")  # an emulated UDP real takes the other emulation keys
DISTRIBUTIONS = ("fixed", "exponential", "lognormal", "empirical")
MAX_WORKERS = 1 << 16
MAX_SERVICE_TIME_S = 3600.0  # a request served for more than an hour is a typo
MAX_RESPONSE_BYTES = 1 << 30
# Forwarding methods (docs/forwarding.md): IPVS's NAT, direct routing and tunnels; DPVS's full-NAT.
FORWARD_METHODS = ("masq", "dr", "tun", "fullnat")
TUN_TYPES = ("ipip", "gue", "gre")  # ipvsadm --tun-type
TUN_FLAGS = ("nocsum", "csum", "remcsum")  # ipvsadm --tun-nocsum / --tun-csum / --tun-remcsum
ENCAPS = ("ipvs", "katran")
FORWARD_KEYS = ("forward", "mac", "tun_type", "tun_port", "tun_flags", "encap", "local_addresses", "toa")
LOCAL_PORT_RANGE = (1025, 65535)  # DPVS sa_pool's default range of the ports a local address lends
DEFAULT_MTU = 1500
MTU_RANGE = (1280, 65535)  # IPv6's minimum link MTU up to the largest IP length
FRAGMENT_POLICIES = ("drop", "3tuple", "track", "reassemble")  # what a fragment for a VIP gets (docs/forwarding.md)
MAC = re.compile(r"^[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}$")
# An address as the stdlib holds it (packed bytes, version); parsed and printed as inet_pton/ntop do.
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# A cluster of switch instances behind ECMP (l4emu/cluster/): its limits and vocabularies.
MAX_INSTANCES = 64  # the cluster path's fixed next-hop arrays
ECMP_MODES = ("hash", "resilient")
CONSISTENCY_DESIGNS = (  # l4emu/cluster/designs.py describes each, from its paper
    "maglev",
    "maglev-global",
    "rendezvous-second-chance",
    "beamer",
    "cheetah",
    "jet",
    "silkroad-delay",
    "hash",
    "consistent",
)
DEFAULT_INSERT_DELAY_MS = 1.0  # silkroad-delay: how long a new entry takes to land (an assumption; see docs/cluster.md)
ENDPOINT = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<v4>[^:\[\]]+)):(?P<port>\d+)$")


class ConfigError(L4emuError, ValueError):
    """A configuration problem: `key` says where, the message says what."""

    def __init__(self, key: str, problem: str, source: str = ""):
        where = ": ".join(part for part in (source, key) if part)
        super().__init__(f"{where}: {problem}" if where else problem)
        self.key, self.problem = key, problem


@dataclass(frozen=True)
class Distribution:
    """A quantity drawn per use (seconds or bytes): fixed, exponential, lognormal or an empirical list.

    One type for every such knob, so that servers' service_time and response_bytes take the same
    spelling; the C twin that draws from it is ext/l4emu/clients/_random.pxd."""

    kind: str
    mean: float
    sigma: float = 0.0  # lognormal: the standard deviation of the value's logarithm
    values: tuple[float, ...] = ()  # empirical: drawn uniformly from these

    @classmethod
    def fixed(cls, value: float) -> Distribution:
        return cls("fixed", float(value))

    def sample(self, rng: random.Random) -> float:
        """One draw (the reference the C sampler is checked against)."""
        if self.kind == "exponential":
            return rng.expovariate(1 / self.mean)
        if self.kind == "lognormal":
            return rng.lognormvariate(math.log(self.mean) - self.sigma**2 / 2, self.sigma)
        if self.kind == "empirical":
            return rng.choice(self.values)
        return self.mean

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"{self.mean:g}"
        if self.kind == "lognormal":
            return f"lognormal(mean {self.mean:g}, sigma {self.sigma:g})"
        return f"{self.kind}(mean {self.mean:g})"


def parse_distribution(value, key: str, *, low: float = 0.0, high: float = math.inf) -> Distribution:
    """A plain number (fixed) or a table like { dist = "exponential", mean = 0.01 }; values within [low, high]."""

    def number(v, where: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high:
            raise ConfigError(where, f"{v!r} is not a number from {low:g} to {high:g}")
        return float(v)

    if not isinstance(value, dict):
        return Distribution.fixed(number(value, key))
    kind = value.get("dist")
    allowed = {"dist", "values"} if kind == "empirical" else {"dist", "mean", "sigma"}
    unknown = sorted(set(value) - allowed)
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{key}.dist", f"{kind!r} is not one of {', '.join(DISTRIBUTIONS)}")
    if unknown:
        raise ConfigError(
            f"{key}.{unknown[0]}", f"not a key of a {kind} distribution (its keys: {', '.join(sorted(allowed))})"
        )
    if kind == "empirical":
        values = value.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{key}.values", f"expected a non-empty list of numbers, got {values!r}")
        picked = tuple(number(v, f"{key}.values[{i}]") for i, v in enumerate(values))
        return Distribution("empirical", math.fsum(picked) / len(picked), values=picked)
    if "mean" not in value:
        raise ConfigError(f"{key}.mean", "missing")
    mean = number(value["mean"], f"{key}.mean")
    if kind != "fixed" and mean <= 0:
        raise ConfigError(f"{key}.mean", f"a {kind} distribution needs a mean above 0, got {mean:g}")
    sigma = value.get("sigma", 1.0 if kind == "lognormal" else 0.0)
    if kind != "lognormal" and "sigma" in value:
        raise ConfigError(f"{key}.sigma", "only a lognormal distribution has a sigma")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 <= sigma <= 10:
        raise ConfigError(f"{key}.sigma", f"{sigma!r} is not a number from 0 to 10")
    return Distribution(kind, mean, float(sigma))


@dataclass(frozen=True)
class Real:
    address: IPAddress
    port: int
    weight: int = 1
    upper_threshold: int = 0  # IPVS -x: no new flows at this many connections (0 = no limit)
    lower_threshold: int = 0  # IPVS -y: new flows again under this many (0 = 3/4 of the upper)
    emulated: bool = False  # answered by an emulated host (l4emu/hosts/) instead of written out or sent on
    app: str = "http"  # emulated: what answers (APPS)
    backlog: int = 128  # emulated TCP: listen() backlog, Linux semantics; UDP with workers: datagrams waiting
    accept_rate: float = 0  # emulated TCP: accepts per second on the packet clock (0: at once)
    syn_overflow: str = "drop"  # emulated TCP: "reset" is Linux's tcp_abort_on_overflow = 1
    # Capacity of an emulated real's application (TCP, or UDP request-reply): requests served at once (0: as
    # many as come, each answered at once: the default), how long each takes on the packet clock, how big each
    # answer's body is (None: the "served by" text).
    workers: int = 0
    service_time: Distribution = field(default_factory=lambda: Distribution.fixed(0.0))
    response_bytes: Distribution | None = None
    forward: str = "masq"  # FORWARD_METHODS: how packets reach it (IPVS -m, -g, -i)
    mac: str = ""  # dr, tun: the Ethernet destination the switch writes ("" keeps the frame's)
    tun_type: str = "ipip"  # tun: TUN_TYPES
    tun_port: int = 0  # tun with gue: the UDP destination port
    tun_flags: str = "nocsum"  # tun with gue or gre: TUN_FLAGS
    encap: str = "ipvs"  # tun: "katran" writes Katran's outer headers instead of IPVS's
    # fullnat: the switch's addresses that stand for the clients (empty: the service's), and whether a TOA TCP
    # option carries the client's address and port to the real
    local_addresses: tuple[IPAddress, ...] = ()
    toa: bool = True
    check: checks.HealthCheck | None = None  # [service.real.check]: this real's own, in place of the service's

    @property
    def endpoint(self) -> str:
        return format_endpoint(self.address, self.port)

    @property
    def host_settings(self) -> tuple:
        """What one listening socket is made of: two services sharing it must agree on these."""
        return (
            self.app,
            self.backlog,
            self.accept_rate,
            self.syn_overflow,
            self.workers,
            self.service_time,
            self.response_bytes,
        )


@dataclass(frozen=True)
class Service:
    vip: IPAddress
    port: int
    protocol: str
    scheduler: str
    reals: tuple[Real, ...]
    persistence: float = 0  # IPVS -p: seconds a client (network) sticks to its real; 0 = off
    persistence_netmask: int = 32  # IPVS -M as a prefix length: which client bits make "a client"
    scheduler_flags: tuple[str, ...] = ()  # e.g. ("sh-port", "sh-fallback"), as ipvsadm -b takes them
    mh_table_size: int = MH_TABLE_SIZE  # Maglev lookup table slots (a prime)
    # The servers a capture was taken with, behind another load balancer: they stand for the VIP.
    capture_servers: tuple[tuple[IPAddress, int], ...] = ()
    mtu: int = DEFAULT_MTU  # the route MTU towards the reals (dr, tun; docs/forwarding.md)
    # The switch's own addresses (tunnel outer source, ICMP errors' source); by default the VIP.
    source_addresses: tuple[IPAddress, ...] = ()
    fragments: str = "drop"  # FRAGMENT_POLICIES
    check: checks.HealthCheck | None = None  # [service.check]: its reals' checks (but a real's own): live, or emulated
    local_addresses: tuple[IPAddress, ...] = ()  # fullnat: the pool of its reals that name none of their own

    def source_address(self, family: int) -> IPAddress | None:
        """The switch's address of this family (the VIP for its own family when none is given)."""
        for address in self.source_addresses:
            if address.version == family:
                return address
        return self.vip if self.vip.version == family else None

    @property
    def endpoint(self) -> str:
        return format_endpoint(self.vip, self.port)

    @property
    def fronts(self) -> list[str]:
        """Where clients meet the service in a capture: its VIP, then its capture servers."""
        return [self.endpoint, *(format_endpoint(a, p) for a, p in self.capture_servers)]


@dataclass(frozen=True)
class ClusterSettings:
    """[cluster]: N switch instances behind a router's ECMP, and the consistency designs to run."""

    instances: int = 1
    ecmp: str = "hash"
    consistency: tuple[str, ...] = ("maglev",)
    insert_delay_ms: float = DEFAULT_INSERT_DELAY_MS


@dataclass(frozen=True)
class Defrag:
    """[defrag]: Linux's reassembly limits (fragments = "reassemble"; the sysctls of the same names)."""

    ipfrag_high_thresh: int = 4 << 20  # bytes of fragments held; past it fragments are dropped
    ipfrag_low_thresh: int = 0  # 0: as Linux since 4.17 (no eviction); else evict the oldest down to it
    ipfrag_time: float = 30.0  # seconds a datagram waits for its fragments


@dataclass(frozen=True)
class Config:
    services: tuple[Service, ...]
    max_connections: int = 1 << 20
    timeouts: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    conn_reuse_mode: bool = True
    sloppy_tcp: bool = False
    expire_nodest_conn: bool = False
    local_port_range: tuple[int, int] = LOCAL_PORT_RANGE  # fullnat: the ports each local address lends
    # [workload] as written: emulated clients only (l4emu/workload.py checks it), so replay never parses it
    workload: dict = field(default_factory=dict)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    defrag: Defrag = field(default_factory=Defrag)


def format_endpoint(address: IPAddress, port: int) -> str:
    return f"[{format_address(address)}]:{port}" if address.version == 6 else f"{address}:{port}"


def format_address(address: IPAddress) -> str:
    """As inet_ntop writes it (and so conntrack's client column): ::ffff:10.0.0.1, not ipaddress's ::ffff:a00:1."""
    if address.version == 4:
        return str(address)
    return socket.inet_ntop(socket.AF_INET6, address.packed)


def parse_address(text: str) -> IPAddress:
    """Strictly as inet_pton reads it (no leading zeros, no IPv6 scope): ValueError otherwise."""
    for family, make in ((socket.AF_INET, ipaddress.IPv4Address), (socket.AF_INET6, ipaddress.IPv6Address)):
        try:
            return make(socket.inet_pton(family, text))
        except OSError:
            continue
    raise ValueError(f"{text!r} is not an IP address")


def parse_endpoint(text, key: str) -> tuple[IPAddress, int]:
    """'10.0.0.1:80' or '[2001:db8::1]:80' -> (address, port)."""
    if not isinstance(text, str):
        raise ConfigError(key, f'expected a string like "10.0.0.1:80", got {text!r}')
    match = ENDPOINT.match(text.strip())
    if not match:
        raise ConfigError(key, f"{text!r} is not address:port (IPv6 as [address]:port)")
    host = match["v6"] or match["v4"]
    try:
        address = parse_address(host)
    except ValueError:
        raise ConfigError(key, f"{host!r} is not an IP address") from None
    if match["v4"] and address.version != 4:
        raise ConfigError(key, f"IPv6 address {host!r} must be written in brackets: [{host}]:port")
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise ConfigError(key, f"port {port} is out of range 1-65535")
    return address, port


def _take(table: dict, key: str, allowed: set[str]) -> dict:
    if not isinstance(table, dict):
        raise ConfigError(key, f"expected a table, got {type(table).__name__}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        prefix = f"{key}." if key else ""
        raise ConfigError(f"{prefix}{unknown[0]}", f"unknown key (known: {', '.join(sorted(allowed))})")
    return table


def _typed(value, kind, key: str):
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(key, f"expected a number of seconds, got {value!r}")
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if kind is str and not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {value!r}")
    return value


def _real(raw, key: str, family: int, protocol: str = "tcp") -> Real:
    raw = _take(
        raw,
        key,
        {
            "address",
            "weight",
            "upper_threshold",
            "lower_threshold",
            "emulated",
            "check",
            *EMULATION_KEYS,
            *FORWARD_KEYS,
        },
    )
    if "address" not in raw:
        raise ConfigError(f"{key}.address", "missing")
    address, port = parse_endpoint(raw["address"], f"{key}.address")
    forwarding = _forwarding(raw, key, family)
    if address.version != family and forwarding["forward"] != "tun":
        raise ConfigError(
            f"{key}.address", f"IPv{address.version} real for an IPv{family} VIP (only a tunnel changes the family)"
        )
    weight = _typed(raw.get("weight", 1), int, f"{key}.weight")
    if not 0 <= weight <= MAX_WEIGHT:
        raise ConfigError(f"{key}.weight", f"{weight} is out of range 0-{MAX_WEIGHT}")
    thresholds = []
    for name in ("upper_threshold", "lower_threshold"):
        value = _typed(raw.get(name, 0), int, f"{key}.{name}")
        if not 0 <= value <= 1 << 30:
            raise ConfigError(f"{key}.{name}", f"{value} is out of range 0-{1 << 30}")
        thresholds.append(value)
    if thresholds[1] and thresholds[1] > thresholds[0]:
        raise ConfigError(f"{key}.lower_threshold", f"{thresholds[1]} is above upper_threshold {thresholds[0]}")
    emulation = _emulation(raw, key, protocol)
    check = None
    if "check" in raw:
        check = checks.parse(raw["check"], f"{key}.check", protocol, ConfigError, _typed, _take)
        refusal = checks.emulated_refusal(check) if emulation["emulated"] else None
        if refusal:
            raise ConfigError(f"{key}.check.{refusal[0]}", refusal[1])
    return Real(address, port, weight, thresholds[0], thresholds[1], **emulation, **forwarding, check=check)


def _forwarding(raw: dict, key: str, family: int) -> dict:
    """forward, mac, the tunnel's keys, local_addresses, toa: each checked, and only where its method uses it."""
    forward = _typed(raw.get("forward", "masq"), str, f"{key}.forward")
    if forward not in FORWARD_METHODS:
        raise ConfigError(f"{key}.forward", f"{forward!r} is not one of {', '.join(FORWARD_METHODS)}")
    tunnel_keys = [name for name in ("tun_type", "tun_port", "tun_flags", "encap") if name in raw]
    if tunnel_keys and forward != "tun":
        raise ConfigError(f"{key}.{tunnel_keys[0]}", 'only a tunnel has this (forward = "tun")')
    fullnat_keys = [name for name in ("local_addresses", "toa") if name in raw]
    if fullnat_keys and forward != "fullnat":
        raise ConfigError(f"{key}.{fullnat_keys[0]}", 'only a full-NAT real has this (forward = "fullnat")')
    if "mac" in raw and forward in ("masq", "fullnat"):
        raise ConfigError(f"{key}.mac", 'only dr and tun write a MAC (forward = "dr" or "tun")')
    mac = _typed(raw.get("mac", ""), str, f"{key}.mac")
    if mac and not MAC.match(mac):
        raise ConfigError(f"{key}.mac", f"{mac!r} is not a MAC address like 02:00:00:00:00:01")
    if forward == "dr" and not mac:
        raise ConfigError(f"{key}.mac", "missing: direct routing changes only the destination MAC, to this one")
    tun_type = _typed(raw.get("tun_type", "ipip"), str, f"{key}.tun_type")
    if tun_type not in TUN_TYPES:
        raise ConfigError(f"{key}.tun_type", f"{tun_type!r} is not one of {', '.join(TUN_TYPES)}")
    encap = _typed(raw.get("encap", "ipvs"), str, f"{key}.encap")
    if encap not in ENCAPS:
        raise ConfigError(f"{key}.encap", f"{encap!r} is not one of {', '.join(ENCAPS)}")
    if encap == "katran" and tun_type == "gre":
        raise ConfigError(f"{key}.encap", "Katran encapsulates in ipip or gue, not gre")
    port = _typed(raw.get("tun_port", 0), int, f"{key}.tun_port")
    if "tun_port" in raw and (tun_type != "gue" or not 1 <= port <= 65535):
        raise ConfigError(f"{key}.tun_port", f"{port} is not a UDP port 1-65535 of a gue tunnel")
    if tun_type == "gue" and encap == "ipvs" and not port:
        raise ConfigError(f"{key}.tun_port", "missing: an IPVS gue tunnel needs its destination port")
    flags = _typed(raw.get("tun_flags", "nocsum"), str, f"{key}.tun_flags")
    if flags not in TUN_FLAGS:
        raise ConfigError(f"{key}.tun_flags", f"{flags!r} is not one of {', '.join(TUN_FLAGS)}")
    if "tun_flags" in raw and (tun_type == "ipip" or encap == "katran"):
        raise ConfigError(f"{key}.tun_flags", "only an IPVS gue or gre tunnel has checksum flags")
    if flags == "remcsum" and tun_type != "gue":
        raise ConfigError(f"{key}.tun_flags", "remcsum is a gue option (IPVS)")
    return {
        "forward": forward,
        "mac": mac.lower(),
        "tun_type": tun_type,
        "tun_port": port,
        "tun_flags": flags,
        "encap": encap,
        "local_addresses": _local_addresses(raw.get("local_addresses", []), family, f"{key}.local_addresses"),
        "toa": _typed(raw.get("toa", True), bool, f"{key}.toa"),
    }


def _local_addresses(value, family: int, key: str) -> tuple:
    """A list of the switch's addresses of the VIP's family (DPVS laddr), none twice."""
    if not isinstance(value, list) or not all(isinstance(text, str) for text in value):
        raise ConfigError(key, f'expected a list of addresses like ["10.0.0.11", "10.0.0.12"], got {value!r}')
    addresses: list[IPAddress] = []
    for i, text in enumerate(value):
        try:
            address = parse_address(text)
        except ValueError:
            raise ConfigError(f"{key}[{i}]", f"{text!r} is not an IP address") from None
        if address.version != family:
            raise ConfigError(f"{key}[{i}]", f"{text} is IPv{address.version}; the VIP and its reals are IPv{family}")
        if address in addresses:
            raise ConfigError(f"{key}[{i}]", f"{text} is listed twice")
        addresses.append(address)
    return tuple(addresses)


def _emulation(raw: dict, key: str, protocol: str) -> dict:
    """emulated, app, backlog, accept_rate, syn_overflow and the capacity (workers, service_time,
    response_bytes): checked one by one, each error naming its key."""
    emulated = _typed(raw.get("emulated", False), bool, f"{key}.emulated")
    given = [name for name in EMULATION_KEYS if name in raw]
    if given and not emulated:
        raise ConfigError(f"{key}.{given[0]}", "only an emulated real has this (add emulated = true)")
    if protocol == "udp" and set(given) & set(TCP_ONLY_KEYS):
        name = sorted(set(given) & set(TCP_ONLY_KEYS))[0]
        raise ConfigError(f"{key}.{name}", "a UDP real has no listen queue; app and its capacity apply")
    if protocol == "udp" and "backlog" in raw and not raw.get("workers"):
        raise ConfigError(
            f"{key}.backlog",
            "a UDP real has no listen queue; its backlog is the datagrams waiting for workers (give workers)",
        )
    app = _typed(raw.get("app", "http"), str, f"{key}.app")
    if app not in APPS:
        raise ConfigError(f"{key}.app", f"{app!r} is not one of {', '.join(APPS)}")
    backlog = _typed(raw.get("backlog", 128), int, f"{key}.backlog")
    if not 1 <= backlog <= MAX_BACKLOG:
        raise ConfigError(f"{key}.backlog", f"{backlog} is out of range 1-{MAX_BACKLOG}")
    rate = raw.get("accept_rate", 0)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1e9:
        raise ConfigError(f"{key}.accept_rate", f"{rate!r} is not a number of accepts per second from 0 to 1e9")
    overflow = _typed(raw.get("syn_overflow", "drop"), str, f"{key}.syn_overflow")
    if overflow not in SYN_OVERFLOW:
        raise ConfigError(f"{key}.syn_overflow", f"{overflow!r} is not one of {', '.join(SYN_OVERFLOW)}")
    workers = _typed(raw.get("workers", 0), int, f"{key}.workers")
    if not 0 <= workers <= MAX_WORKERS:
        raise ConfigError(f"{key}.workers", f"{workers} is out of range 0-{MAX_WORKERS} (0: no limit)")
    service_time = parse_distribution(raw.get("service_time", 0), f"{key}.service_time", high=MAX_SERVICE_TIME_S)
    if "service_time" in raw and not workers:
        raise ConfigError(f"{key}.service_time", "a service time needs workers (how many requests are served at once)")
    response_bytes = None
    if "response_bytes" in raw:
        if app != "http":
            raise ConfigError(f"{key}.response_bytes", "only the http app's answers have a size to set")
        response_bytes = parse_distribution(raw["response_bytes"], f"{key}.response_bytes", high=MAX_RESPONSE_BYTES)
    if workers and app != "http":
        raise ConfigError(f"{key}.workers", "only the http app serves requests (echo and discard answer bytes)")
    return {
        "emulated": emulated,
        "app": app,
        "backlog": backlog,
        "accept_rate": float(rate),
        "syn_overflow": overflow,
        "workers": workers,
        "service_time": service_time,
        "response_bytes": response_bytes,
    }


def _check_emulated_neighbours(services: Sequence[Service], reals: list[tuple[int, int, Real]]) -> None:
    """With emulated reals the switch runs one packet at a time between their answers (the emulate loop):
    every forwarding method and fragment policy works there (the hosts reassemble what reaches them).
    A dr or tun host owns its service's VIP and answers from it: one socket, one VIP, one family."""
    owner: dict[tuple, tuple[str, str]] = {}
    for i, k, real in reals:
        key, svc = f"service[{i}].real[{k}]", services[i]
        if not real.emulated:
            continue
        if real.forward == "tun" and real.address.version != svc.vip.version:
            raise ConfigError(
                f"{key}.address",
                f"an emulated tun real decapsulates IPv{svc.vip.version} in IPv{svc.vip.version} only: "
                f"{real.address} is IPv{real.address.version}",
            )
        answers_from = str(svc.vip) if real.forward in ("dr", "tun") else real.address.compressed
        first = owner.setdefault((svc.protocol, real.endpoint), (answers_from, key))
        if first[0] != answers_from:
            raise ConfigError(
                f"{key}.forward",
                f"{svc.protocol.upper()} {real.endpoint} answers from {first[0]} for {first[1]}: "
                f"one emulated socket answers from one address ({real.forward} answers from {answers_from})",
            )


def _check_hosts(services: tuple) -> None:
    """One address is one emulated host: emulated everywhere or nowhere; a shared socket has one setting."""
    emulated: dict[str, tuple[bool, str]] = {}
    sockets: dict[tuple, tuple] = {}
    for i, svc in enumerate(services):
        for j, real in enumerate(svc.reals):
            key, address = f"service[{i}].real[{j}]", format_address(real.address)
            first = emulated.setdefault(address, (real.emulated, key))
            if first[0] != real.emulated:
                raise ConfigError(
                    f"{key}.emulated",
                    f"{address} is {'' if first[0] else 'not '}emulated in "
                    f"{first[1]}: one address is one host, emulated or not",
                )
            ident = (svc.protocol, real.endpoint)
            if real.emulated and sockets.setdefault(ident, (real.host_settings, key))[0] != real.host_settings:
                raise ConfigError(
                    f"{key}.app",
                    f"{svc.protocol.upper()} {real.endpoint} is one socket: its app, "
                    f"backlog, accept_rate, syn_overflow and capacity must match {sockets[ident][1]}",
                )


def _service(raw, key: str, schedulers) -> Service:
    raw = _take(
        raw,
        key,
        {
            "vip",
            "protocol",
            "scheduler",
            "real",
            "persistence",
            "persistence_netmask",
            "scheduler_flags",
            "mh_table_size",
            "capture_servers",
            "mtu",
            "source_address",
            "fragments",
            "check",
            "local_addresses",
        },
    )
    if "vip" not in raw:
        raise ConfigError(f"{key}.vip", "missing")
    vip, port = parse_endpoint(raw["vip"], f"{key}.vip")
    protocol = _typed(raw.get("protocol", "tcp"), str, f"{key}.protocol").lower()
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{key}.protocol", f"{protocol!r} is not one of {', '.join(PROTOCOLS)}")
    scheduler = _typed(raw.get("scheduler", "rr"), str, f"{key}.scheduler")
    if scheduler not in schedulers:
        raise ConfigError(
            f"{key}.scheduler", f"unknown scheduler {scheduler!r} (known: {', '.join(sorted(schedulers))})"
        )
    reals_raw = raw.get("real", [])
    if not isinstance(reals_raw, list) or not reals_raw:
        raise ConfigError(f"{key}.real", "a service needs at least one [[service.real]]")
    reals = tuple(_real(r, f"{key}.real[{i}]", vip.version, protocol) for i, r in enumerate(reals_raw))
    seen = set()
    for i, real in enumerate(reals):
        if real.endpoint in seen:
            raise ConfigError(f"{key}.real[{i}].address", f"{real.endpoint} is listed twice")
        seen.add(real.endpoint)
    persistence = raw.get("persistence", 0)
    if persistence is True:
        persistence = DEFAULT_PERSISTENCE
    if _typed(persistence, float, f"{key}.persistence") < 0 or persistence > 86400 * 365:
        raise ConfigError(f"{key}.persistence", f"{persistence} is not a number of seconds from 0 to one year")
    netmask = _netmask(raw.get("persistence_netmask", None), vip.version, f"{key}.persistence_netmask")
    flags = _scheduler_flags(raw.get("scheduler_flags", []), scheduler, schedulers, f"{key}.scheduler_flags")
    table_size = _typed(raw.get("mh_table_size", MH_TABLE_SIZE), int, f"{key}.mh_table_size")
    if "mh_table_size" in raw and scheduler != "mh":
        raise ConfigError(f"{key}.mh_table_size", f'only scheduler "mh" has a table size, not {scheduler!r}')
    if not (MH_TABLE_RANGE[0] <= table_size <= MH_TABLE_RANGE[1] and _is_prime(table_size)):
        raise ConfigError(
            f"{key}.mh_table_size",
            f"{table_size} is not a prime from {MH_TABLE_RANGE[0]} to {MH_TABLE_RANGE[1]} (65537 is a good one)",
        )
    capture_servers = _capture_servers(raw.get("capture_servers", []), vip, port, f"{key}.capture_servers")
    mtu = _typed(raw.get("mtu", DEFAULT_MTU), int, f"{key}.mtu")
    if not MTU_RANGE[0] <= mtu <= MTU_RANGE[1]:
        raise ConfigError(f"{key}.mtu", f"{mtu} is out of range {MTU_RANGE[0]}-{MTU_RANGE[1]}")
    sources = _source_addresses(raw.get("source_address", []), f"{key}.source_address")
    fragments = _typed(raw.get("fragments", "drop"), str, f"{key}.fragments")
    if fragments not in FRAGMENT_POLICIES:
        raise ConfigError(f"{key}.fragments", f"{fragments!r} is not one of {', '.join(FRAGMENT_POLICIES)}")
    local = _local_addresses(raw.get("local_addresses", []), vip.version, f"{key}.local_addresses")
    fullnat = [i for i, real in enumerate(reals) if real.forward == "fullnat"]
    if local and not fullnat:
        raise ConfigError(
            f"{key}.local_addresses", 'only a service with a full-NAT real (forward = "fullnat") takes them'
        )
    for i in fullnat:
        if not (local or reals[i].local_addresses):
            raise ConfigError(
                f"{key}.local_addresses",
                f"missing: real[{i}] is full-NAT and takes the client's place from a local address "
                "(give them here or on the real)",
            )
    if fullnat and fragments != "drop":
        raise ConfigError(f"{key}.fragments", 'a service with full-NAT reals drops fragments, as DPVS does ("drop")')
    if fragments == "3tuple" and any(real.forward == "masq" for real in reals):
        raise ConfigError(
            f"{key}.fragments",
            "3tuple sends fragments on with no connection, which only dr and tun reals can take "
            "(a masq real's replies would find none to translate them)",
        )
    check = None
    if "check" in raw:
        check = checks.parse(raw["check"], f"{key}.check", protocol, ConfigError, _typed, _take)
        refusal = checks.emulated_refusal(check)
        if refusal and any(real.emulated and real.check is None for real in reals):
            raise ConfigError(f"{key}.check.{refusal[0]}", refusal[1])
    service = Service(
        vip,
        port,
        protocol,
        scheduler,
        reals,
        persistence,
        netmask,
        flags,
        table_size,
        capture_servers,
        mtu,
        sources,
        fragments,
        check,
        local,
    )
    for i, real in enumerate(reals):
        if real.forward in ("dr", "tun") and real.port != port:
            raise ConfigError(
                f"{key}.real[{i}].address", f"port {real.port}: a {real.forward} real owns the VIP, port {port} too"
            )
        if real.forward == "tun" and service.source_address(real.address.version) is None:
            raise ConfigError(
                f"{key}.source_address",
                f"real[{i}] is tunnelled over IPv{real.address.version}: "
                f"name the switch's IPv{real.address.version} address",
            )
    return service


def _source_addresses(value, key: str) -> tuple:
    """One address or a list of them, at most one per family."""
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list):
        raise ConfigError(key, f'expected an address or a list like ["10.0.0.2", "2001:db8::2"], got {value!r}')
    addresses: list[IPAddress] = []
    for i, text in enumerate(values):
        try:
            address = parse_address(text) if isinstance(text, str) else None
        except ValueError:
            address = None
        if address is None:
            raise ConfigError(f"{key}[{i}]", f"{text!r} is not an IP address")
        if any(a.version == address.version for a in addresses):
            raise ConfigError(f"{key}[{i}]", f"a second IPv{address.version} address: give one per family")
        addresses.append(address)
    return tuple(addresses)


def _capture_servers(value, vip: IPAddress, port: int, key: str) -> tuple:
    """A list of "address:port" of the VIP's family, none of them the VIP itself, none twice."""
    if not isinstance(value, list):
        raise ConfigError(key, f'expected a list like ["10.9.0.1:80"], got {value!r}')
    servers = []
    for i, text in enumerate(value):
        address, sport = parse_endpoint(text, f"{key}[{i}]")
        if address.version != vip.version:
            raise ConfigError(f"{key}[{i}]", f"{text} is IPv{address.version}, the VIP is IPv{vip.version}")
        if (address, sport) == (vip, port) or (address, sport) in servers:
            raise ConfigError(f"{key}[{i}]", f"{text} is the VIP or listed twice")
        servers.append((address, sport))
    return tuple(servers)


def with_capture_servers(config: Config, text: str) -> Config:
    """--capture-servers [VIP=]A:P,B:P: add the capture's original servers to a service. Without VIP=,
    the service is the one of the servers' family whose port they share, or the only one of that family."""
    key = "--capture-servers"
    vip_text, _, listed = text.rpartition("=")
    endpoints = [part.strip() for part in listed.split(",") if part.strip()]
    if not endpoints:
        raise ConfigError(key, f"{text!r} names no server (give address:port,address:port)")
    servers = [parse_endpoint(e, key) for e in endpoints]
    if vip_text:
        chosen = [i for i, svc in enumerate(config.services) if svc.endpoint == vip_text.strip()]
        if not chosen:
            raise ConfigError(
                key,
                f"no service has VIP {vip_text.strip()} "
                f"(services: {', '.join(svc.endpoint for svc in config.services)})",
            )
    else:
        family, ports = servers[0][0].version, {p for _, p in servers}
        same = [i for i, svc in enumerate(config.services) if svc.vip.version == family]
        chosen = [i for i in same if {config.services[i].port} == ports] or same
    if len(chosen) != 1:
        raise ConfigError(
            key,
            "more than one service could own these servers: write VIP=servers, e.g. "
            f"{config.services[chosen[0]].endpoint}={listed}"
            if chosen
            else f"no service of the servers' address family (IPv{servers[0][0].version})",
        )
    index = chosen[0]
    svc = config.services[index]
    merged = [format_endpoint(a, p) for a, p in svc.capture_servers] + endpoints
    updated = dataclasses.replace(svc, capture_servers=_capture_servers(merged, svc.vip, svc.port, key))
    services = config.services[:index] + (updated,) + config.services[index + 1 :]
    _check_fronts(services)
    return dataclasses.replace(config, services=services)


def _check_fronts(services: tuple) -> None:
    """A VIP or capture server belongs to one service: a packet from it must name one flow's service."""
    owner: dict[tuple, str] = {}
    for i, svc in enumerate(services):
        for k, front in enumerate(svc.fronts):
            where = f"service[{i}].vip" if k == 0 else f"service[{i}].capture_servers[{k - 1}]"
            first = owner.setdefault((svc.protocol, front), where)
            if first != where:
                raise ConfigError(where, f"{svc.protocol.upper()} {front} is already {first}")


def _scheduler_flags(value, scheduler: str, schedulers, key: str) -> tuple[str, ...]:
    """A list of flag names; checked per scheduler when `schedulers` maps names to their flags."""
    if not isinstance(value, list) or not all(isinstance(flag, str) for flag in value):
        raise ConfigError(key, f'expected a list of strings like ["sh-port"], got {value!r}')
    if len(set(value)) != len(value):
        raise ConfigError(key, f"a flag is listed twice in {value!r}")
    accepted = schedulers.get(scheduler) if isinstance(schedulers, Mapping) else None
    for flag in value if accepted is not None else ():
        if accepted is not None and flag not in accepted:
            raise ConfigError(
                key, f"scheduler {scheduler!r} has no flag {flag!r} (its flags: {', '.join(accepted) or 'none'})"
            )
    return tuple(value)


def _is_prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, int(n**0.5) + 1))


def _netmask(value, family: int, key: str) -> int:
    """A prefix length from 24, "/24" or "255.255.255.0" (IPv6: a prefix length); None = whole address."""
    bits = 32 if family == 4 else 128
    if value is None:
        return bits
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            prefix = value
        elif isinstance(value, str) and value.lstrip("/").isdigit():
            prefix = int(value.lstrip("/"))
        elif isinstance(value, str) and family == 4:
            host_bits = ~int.from_bytes(socket.inet_pton(socket.AF_INET, value), "big") & 0xFFFFFFFF
            if host_bits & (host_bits + 1):  # ones, then zeros: 255.255.255.0 is a mask, 255.0.255.0 is not
                raise ValueError
            prefix = 32 - host_bits.bit_length()
        else:
            raise ValueError
    except (ValueError, OSError):
        raise ConfigError(key, f"{value!r} is not a netmask (a prefix length, or a dotted IPv4 mask)") from None
    if not 0 <= prefix <= bits:
        raise ConfigError(key, f"prefix length {prefix} is out of range 0-{bits}")
    return prefix


def from_dict(raw: dict, schedulers) -> Config:
    """Validate a parsed TOML document; `schedulers` are the names that exist (a mapping of names
    to the flags each accepts also checks scheduler_flags; schedulers.catalog() gives one)."""
    for key in ("site", "gslb"):
        if key in raw:  # l4emu/gslb/config.py reads those
            raise ConfigError(
                key, "a GSLB config ([[site]], [[gslb]]): give it to `l4emu gslb check` or `l4emu gslb replay`"
            )
    raw = _take(raw, "", {"service", "table", "timeouts", "workload", "cluster", "defrag"})
    workload = raw.get("workload", {})
    if not isinstance(workload, dict):
        raise ConfigError("workload", f"expected a table, got {type(workload).__name__}")
    table = _take(
        raw.get("table", {}),
        "table",
        {"max_connections", "conn_reuse_mode", "sloppy_tcp", "expire_nodest_conn", "local_port_range"},
    )
    max_conns = _typed(table.get("max_connections", Config.max_connections), int, "table.max_connections")
    if not 1 <= max_conns <= MAX_CONNECTIONS:
        raise ConfigError("table.max_connections", f"{max_conns} is out of range 1-{MAX_CONNECTIONS}")
    timeouts = dict(DEFAULT_TIMEOUTS)
    for name, value in _take(raw.get("timeouts", {}), "timeouts", set(DEFAULT_TIMEOUTS)).items():
        if _typed(value, float, f"timeouts.{name}") <= 0 or value > 86400 * 365:
            raise ConfigError(f"timeouts.{name}", f"{value} is not a timeout between 0 and one year")
        timeouts[name] = value
    services_raw = raw.get("service", [])
    if not isinstance(services_raw, list) or not services_raw:
        raise ConfigError("service", "at least one [[service]] is needed")
    services = tuple(_service(s, f"service[{i}]", schedulers) for i, s in enumerate(services_raw))
    seen = set()
    for i, svc in enumerate(services):
        ident = (svc.protocol, svc.endpoint)
        if ident in seen:
            raise ConfigError(f"service[{i}].vip", f"{svc.protocol.upper()} {svc.endpoint} is defined twice")
        seen.add(ident)
    _check_fronts(services)
    _check_hosts(services)
    cluster = cluster_settings(raw.get("cluster", {}))
    if cluster.instances > 1 and any(real.emulated for svc in services for real in svc.reals):
        raise ConfigError("cluster.instances", "a cluster runs without emulated reals for now (remove emulated = true)")
    reals = [(i, k, real) for i, svc in enumerate(services) for k, real in enumerate(svc.reals)]
    if any(real.emulated for _, _, real in reals):
        _check_emulated_neighbours(services, reals)
    return Config(
        services=services,
        max_connections=max_conns,
        timeouts=timeouts,
        conn_reuse_mode=_typed(table.get("conn_reuse_mode", True), bool, "table.conn_reuse_mode"),
        sloppy_tcp=_typed(table.get("sloppy_tcp", False), bool, "table.sloppy_tcp"),
        expire_nodest_conn=_typed(table.get("expire_nodest_conn", False), bool, "table.expire_nodest_conn"),
        local_port_range=_port_range(table.get("local_port_range", list(LOCAL_PORT_RANGE)), "table.local_port_range"),
        workload=workload,
        cluster=cluster,
        defrag=defrag_settings(raw.get("defrag", {})),
    )


def _port_range(value, key: str) -> tuple[int, int]:
    """[low, high]: the ports 1-65535 each local address lends to full-NAT flows."""
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or not 1 <= value[0] <= value[1] <= 65535
    ):
        raise ConfigError(key, f"expected [low, high] with 1 <= low <= high <= 65535, got {value!r}")
    return (value[0], value[1])


def defrag_settings(raw) -> Defrag:
    """[defrag]: ipfrag_high_thresh 1 KiB-1 GiB, ipfrag_low_thresh below it (or 0), ipfrag_time 1 s-1 h."""
    raw = _take(raw, "defrag", {"ipfrag_high_thresh", "ipfrag_low_thresh", "ipfrag_time"})
    high = _typed(raw.get("ipfrag_high_thresh", Defrag.ipfrag_high_thresh), int, "defrag.ipfrag_high_thresh")
    if not 1 << 10 <= high <= 1 << 30:
        raise ConfigError("defrag.ipfrag_high_thresh", f"{high} is out of range {1 << 10}-{1 << 30}")
    low = _typed(raw.get("ipfrag_low_thresh", 0), int, "defrag.ipfrag_low_thresh")
    if not 0 <= low < high:
        raise ConfigError("defrag.ipfrag_low_thresh", f"{low} is not 0 or below ipfrag_high_thresh ({high})")
    time = _typed(raw.get("ipfrag_time", Defrag.ipfrag_time), float, "defrag.ipfrag_time")
    if not 1 <= time <= 3600:
        raise ConfigError("defrag.ipfrag_time", f"{time} is out of range 1-3600 seconds")
    return Defrag(high, low, time)


def cluster_settings(raw) -> ClusterSettings:
    """[cluster]: instances 1-64, ecmp "hash" or "resilient", consistency a design name or a list of them."""
    raw = _take(raw, "cluster", {"instances", "ecmp", "consistency", "insert_delay_ms"})
    instances = _typed(raw.get("instances", 1), int, "cluster.instances")
    if not 1 <= instances <= MAX_INSTANCES:
        raise ConfigError("cluster.instances", f"{instances} is out of range 1-{MAX_INSTANCES}")
    ecmp = _typed(raw.get("ecmp", "hash"), str, "cluster.ecmp")
    if ecmp not in ECMP_MODES:
        raise ConfigError("cluster.ecmp", f"{ecmp!r} is not one of {', '.join(ECMP_MODES)}")
    designs = raw.get("consistency", ["maglev"])
    designs = [designs] if isinstance(designs, str) else designs
    if not isinstance(designs, list) or not designs or not all(isinstance(d, str) for d in designs):
        raise ConfigError(
            "cluster.consistency", f'expected a design name or a list like ["maglev", "beamer"], got {designs!r}'
        )
    for name in designs:
        if name not in CONSISTENCY_DESIGNS:
            raise ConfigError(
                "cluster.consistency", f"unknown design {name!r} (known: {', '.join(CONSISTENCY_DESIGNS)})"
            )
    delay = raw.get("insert_delay_ms", DEFAULT_INSERT_DELAY_MS)
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= 60_000:
        raise ConfigError("cluster.insert_delay_ms", f"{delay!r} is not a number of milliseconds from 0 to 60000")
    return ClusterSettings(instances, ecmp, tuple(dict.fromkeys(designs)), float(delay))


# Installed beside this module (package data). Read as a file, not through importlib.resources: l4emu is
# never run from a zip, and importlib.resources costs every command ~5 ms of imports (tests/test_startup.py).
DEFAULT_CONFIG = Path(__file__).parent / "data" / "default.toml"


def load(path: str | Path | None, schedulers: Collection[str] | Mapping[str, tuple[str, ...]]) -> Config:
    """Read a TOML file (None: the embedded default the bundled samples were made for)."""
    if path is None:
        text = DEFAULT_CONFIG.read_text(encoding="utf-8")
        source = "default config"
    else:
        source = str(path)
        text = read_text(path)
    return loads(text, source, schedulers)


def read_text(path: str | Path) -> str:
    """A config file's text; ConfigError naming the file when it cannot be read or is not text."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", exc.strerror or str(exc), str(path)) from None
    except UnicodeDecodeError as exc:  # a capture or other binary file given as -c
        raise ConfigError("", f"not a TOML config ({not_text(exc)})", str(path)) from None


def parse(text: str, source: str, build: Callable[[dict], T]) -> T:
    """TOML text through `build` (a from_dict); every ConfigError names `source`."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"not valid TOML: {exc}", source) from None
    try:
        return build(raw)
    except ConfigError as exc:
        raise ConfigError(exc.key, exc.problem, source) from None


def loads(text: str, source: str, schedulers: Collection[str] | Mapping[str, tuple[str, ...]]) -> Config:
    """A config from TOML text; `source` names it in messages (a live switch gets `l4emu apply`'s file so)."""
    return parse(text, source, lambda raw: from_dict(raw, schedulers))


def not_text(exc: UnicodeDecodeError) -> str:
    """Why a file is not text, in the user's terms (offset and byte, not codec internals)."""
    return f"not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"


def from_flags(vips: list[str], reals: list[str], scheduler: str, schedulers: Collection[str]) -> dict:
    """Turn --vip 10.0.0.100:80/tcp --real 10.1.0.1:8080 ... into a config document."""
    services = []
    for vip in vips:
        endpoint, _, protocol = vip.partition("/")
        services.append(
            {
                "vip": endpoint,
                "protocol": protocol or "tcp",
                "scheduler": scheduler,
                "real": [{"address": r} for r in reals],
            }
        )
    return {"service": services}
