"""The emulated clients' workload: a [workload] table of the config, overridable by flags, checked once.

`l4emu gen` writes it as a client-only capture; `simulate` will drive the same model through the switch.
Every error is a ConfigError naming the file and key (or the flag), so the CLI prints one line.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from l4emu.config import (
    Config,
    ConfigError,
    Distribution,
    IPAddress,
    format_endpoint,
    parse_distribution,
    parse_endpoint,
)

ARRIVALS = ("poisson", "fixed", "capture")
PROTOCOLS = ("tcp", "udp", "mixed")
LINKTYPES = ("ethernet", "raw")
DEFAULT_CLIENTS_V4 = "172.16.0.0/12"
DEFAULT_CLIENTS_V6 = "2001:db8:c::/64"
DEFAULT_REQUEST_BYTES = 128
DEFAULT_RESPONSE_BYTES = 1000
DEFAULT_RTT_S = 0.001
DEFAULT_TIMEOUT_S = 5.0  # a UDP client's wait for its answer: glibc's resolver waits 5 s (RES_TIMEOUT)
UDP_REQUEST_HEADER_BYTES = 8  # a UDP request: "L4RQ" and its id, which every answer datagram echoes
# A request is one segment: the IPv6 MSS on a 1500-byte link (1500 - 40 - 20), so both families fit.
MAX_REQUEST_BYTES = 1440
MAX_RESPONSE_BYTES = 1 << 30
MAX_REQUESTS = 1 << 20
MAX_CLIENTS = 1 << 24
MAX_RATE = 1e9  # connections (sessions) per second
MAX_DURATION_S = 86400 * 365
MAX_SECONDS = 3600.0  # a think time or RTT longer than an hour is a typo, not a workload
MAX_SEED = (1 << 64) - 1
KEYS = {
    "clients",
    "arrival",
    "rate",
    "capture",
    "duration",
    "requests_per_conn",
    "keep_alive",
    "think_time",
    "request_size",
    "response_size",
    "rtt",
    "target",
    "target6",
    "ipv6_share",
    "clients_v4",
    "clients_v6",
    "seed",
    "linktype",
    "protocol",
    "timeout",
    "udp_share",
}
# A mixed workload's UDP sessions draw from their own seed: this odd constant (2^64 / golden ratio) apart.
UDP_SEED_STEP = 0x9E3779B97F4A7C15


@dataclass(frozen=True)
class Workload:
    """Who connects, how often, and what each connection carries (times in seconds, sizes in bytes)."""

    target: tuple[IPAddress, int] | None  # where IPv4 clients connect (None: no IPv4 clients)
    target6: tuple[IPAddress, int] | None  # where IPv6 clients connect (None: no IPv6 clients)
    clients: int = 100  # distinct client addresses
    arrival: str = "poisson"  # of sessions: ARRIVALS
    rate: float = 100.0  # sessions per second (poisson, fixed)
    capture: Path | None = None  # arrival = "capture": the arrival times of this capture's SYNs
    duration: float = 1.0  # arrivals in [0, duration); conversations then run to their end
    requests_per_conn: int = 1  # requests per session: one connection (keep-alive) or one each
    keep_alive: bool = True
    think_time: Distribution = field(default_factory=lambda: Distribution.fixed(0))
    request_size: Distribution = field(default_factory=lambda: Distribution.fixed(DEFAULT_REQUEST_BYTES))
    response_size: Distribution = field(default_factory=lambda: Distribution.fixed(DEFAULT_RESPONSE_BYTES))
    rtt: float = DEFAULT_RTT_S  # client to server and back: when the client sees each answer
    ipv6_share: float = 0.0  # of the clients
    clients_v4: ipaddress.IPv4Network = ipaddress.IPv4Network(DEFAULT_CLIENTS_V4)
    clients_v6: ipaddress.IPv6Network = ipaddress.IPv6Network(DEFAULT_CLIENTS_V6)
    seed: int = 0
    linktype: str = "ethernet"
    protocol: str = "tcp"  # PROTOCOLS: TCP connections, UDP request datagrams to a request-reply service, or both
    timeout: float = DEFAULT_TIMEOUT_S  # udp: seconds a client waits for a whole answer, then gives up
    udp_share: float = 0.0  # mixed: the share of the sessions (of the rate) that are UDP
    udp_target: tuple[IPAddress, int] | None = None  # mixed: where the UDP sessions go (target, target6: TCP)
    udp_target6: tuple[IPAddress, int] | None = None

    @property
    def ipv6_clients(self) -> int:
        """Clients 0 .. ipv6_clients-1 are IPv6, the rest IPv4."""
        return round(self.clients * self.ipv6_share)

    @property
    def connections_per_session(self) -> int:
        return 1 if self.keep_alive else self.requests_per_conn

    def parts(self) -> tuple[Workload, ...]:
        """One single-protocol workload per kind of client: itself, or (mixed) the TCP sessions and the UDP
        sessions, each at its share of the rate. Splitting a Poisson process at random gives two independent
        Poisson processes of those rates, so the two streams together are the whole workload's arrivals."""
        if self.protocol != "mixed":
            return (self,)
        alone = dataclasses.replace(self, udp_share=0.0, udp_target=None, udp_target6=None)
        tcp = dataclasses.replace(alone, protocol="tcp", rate=self.rate * (1 - self.udp_share))
        udp = dataclasses.replace(
            alone,
            protocol="udp",
            rate=self.rate * self.udp_share,
            target=self.udp_target,
            target6=self.udp_target6,
            seed=(self.seed + UDP_SEED_STEP) % (MAX_SEED + 1),
        )
        return (tcp, udp)

    def describe(self, to: str | None = None) -> str:
        """One line for people; `to` names where the clients go when the targets do not (a GSLB's domain)."""
        how = f"SYN times of {self.capture}" if self.arrival == "capture" else f"{self.arrival} {self.rate:g}/s"
        if self.protocol == "udp":
            how = f"UDP {how}"
        elif self.protocol == "mixed":
            how = f"TCP and UDP ({self.udp_share:.0%} UDP) {how}"
        ends = (self.target, self.target6, self.udp_target, self.udp_target6)
        targets = to or ", ".join(format_endpoint(*t) for t in ends if t)
        return (
            f"{how}"
            + (f" for {self.duration:g} s" if math.isfinite(self.duration) else "")
            + f", {self.clients:,} clients "
            f"({self.ipv6_share:.0%} IPv6) -> {targets}, seed {self.seed}"
        )


def from_config(
    config: Config, source: str, flags: Mapping[str, object] | None = None, base: Path | None = None
) -> Workload:
    """The config's [workload] with `flags` (key -> value; None = not given) on top; errors name the
    file and key, or the flag (--request-size for request_size) when the value came from one.
    The table's capture is relative to `base` (the config's directory); a flag's to the working directory."""
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    unknown = sorted(set(config.workload) - KEYS)
    if unknown:
        raise ConfigError(f"workload.{unknown[0]}", f"unknown key (known: {', '.join(sorted(KEYS))})", source)
    table = dict(config.workload)
    if isinstance(table.get("capture"), str) and base is not None:
        table["capture"] = base / table["capture"]
    # A flag that picks the arrivals replaces the table's: --capture means arrival = "capture", and
    # --arrival poisson sets a table's capture aside.
    if "capture" in given and "arrival" not in given:
        table["arrival"] = "capture"
    elif given.get("arrival") not in (None, "capture"):
        table.pop("capture", None)
    raw = {**table, **given}

    def where(name: str) -> tuple[str, str]:
        return ("--" + name.replace("_", "-"), "") if name in given else (f"workload.{name}", source)

    try:
        return _build(raw, config, where)
    except ConfigError as exc:
        name = exc.key.split(".")[1] if exc.key.startswith("workload.") else exc.key
        name = name.split("[")[0]
        key, src = where(name) if name in KEYS else (exc.key, source)
        sub = exc.key.split(".", 2)[2] if exc.key.count(".") >= 2 else ""
        raise ConfigError(f"{key}.{sub}" if sub else key, exc.problem, src) from None


def _number(raw: dict, name: str, default: float, low: float, high: float, *, above: bool = False) -> float:
    value = raw.get(name, default)
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and low <= value <= high
    if not ok or (above and value <= low):
        span = f"above {low:g} up to {high:g}" if above else f"from {low:g} to {high:g}"
        raise ConfigError(f"workload.{name}", f"{value!r} is not a number {span}")
    return float(value)


def _integer(raw: dict, name: str, default: int, low: int, high: int) -> int:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"workload.{name}", f"{value!r} is not a whole number from {low:,} to {high:,}")
    return value


def _choice(raw: dict, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = raw.get(name, default)
    if value not in choices:
        raise ConfigError(f"workload.{name}", f"{value!r} is not one of {', '.join(choices)}")
    return value


def _network(raw: dict, name: str, default: str, version: int):
    value = raw.get(name, default)
    try:
        net = ipaddress.ip_network(value, strict=False) if isinstance(value, str) else None
    except ValueError:
        net = None
    if net is None or net.version != version:
        raise ConfigError(f"workload.{name}", f"{value!r} is not an IPv{version} network like {default!r}")
    return net


def _target(raw: dict, name: str, config: Config, family: int, protocol: str) -> tuple[IPAddress, int] | None:
    if name in raw:
        address, port = parse_endpoint(raw[name], f"workload.{name}")
        if address.version != family:
            other = "target6" if family == 4 else "target"
            raise ConfigError(f"workload.{name}", f"{raw[name]} is IPv{address.version}: give it as {other}")
        return address, port
    for svc in config.services:
        if svc.protocol == protocol and svc.vip.version == family:
            return svc.vip, svc.port
    return None


def _build(raw: dict, config: Config, where) -> Workload:
    clients = _integer(raw, "clients", 100, 1, MAX_CLIENTS)
    share = _number(raw, "ipv6_share", 0.0, 0.0, 1.0)
    protocol = _choice(raw, "protocol", "tcp", PROTOCOLS)
    if protocol == "tcp" and "timeout" in raw:
        raise ConfigError("workload.timeout", 'only UDP clients give up on a request (protocol = "udp")')
    udp_share = _udp_share(raw, protocol)
    mixed = protocol == "mixed"
    target, target6 = _targets(raw, config, "tcp" if mixed else protocol, share, mixed)
    udp_targets = _targets(raw, config, "udp", share, mixed) if mixed else (None, None)
    n6 = round(clients * share)
    if (share > 0 and n6 == 0) or (share < 1 and n6 == clients):
        raise ConfigError("workload.clients", f"{clients} clients are too few for an IPv6 share of {share:g}")
    nets = (_network(raw, "clients_v4", DEFAULT_CLIENTS_V4, 4), _network(raw, "clients_v6", DEFAULT_CLIENTS_V6, 6))
    for net, count, name in ((nets[0], clients - n6, "clients_v4"), (nets[1], n6, "clients_v6")):
        if count > net.num_addresses - 2:  # neither the network's own address nor the last
            raise ConfigError(f"workload.{name}", f"{net} holds fewer than the {count:,} clients asked for")
    arrival = _choice(raw, "arrival", "capture" if "capture" in raw else "poisson", ARRIVALS)
    if protocol == "mixed" and arrival == "capture":
        raise ConfigError(
            "workload.protocol", 'a mixed workload splits a rate (arrival "poisson" or "fixed"), not a capture\'s SYNs'
        )
    capture = raw.get("capture")
    if arrival == "capture":
        if not isinstance(capture, (str, Path)) or not str(capture):
            raise ConfigError("workload.capture", 'arrival = "capture" needs capture = "path.pcap"')
        capture = Path(capture)
    elif capture is not None:
        raise ConfigError("workload.capture", f'a capture gives the arrivals, not arrival = "{arrival}"')
    rate = _number(raw, "rate", 100.0, 0.0, MAX_RATE, above=True)
    # A capture's SYNs all count unless a duration cuts them short (from the first SYN on).
    whole = arrival == "capture" and "duration" not in raw
    duration = math.inf if whole else _number(raw, "duration", 1.0, 0.0, MAX_DURATION_S, above=True)
    requests = _integer(raw, "requests_per_conn", 1, 1, MAX_REQUESTS)
    keep_alive = raw.get("keep_alive", True)
    if not isinstance(keep_alive, bool):
        raise ConfigError("workload.keep_alive", f"expected true or false, got {keep_alive!r}")
    request_size = parse_distribution(
        raw.get("request_size", DEFAULT_REQUEST_BYTES), "workload.request_size", high=MAX_REQUEST_BYTES
    )
    smallest = UDP_REQUEST_HEADER_BYTES if protocol == "udp" else 0
    if protocol != "udp":
        smallest = max(smallest, min(len(request_template(t, b"")) for t in (target, target6) if t))
    if request_size.kind in ("fixed", "empirical") and min(request_size.values or (request_size.mean,)) < smallest:
        raise ConfigError(
            "workload.request_size",
            f"a request of these headers is at least {smallest} bytes ({request_size} asked for)",
        )
    seed = _integer(raw, "seed", 0, 0, MAX_SEED)
    return Workload(
        target=target if share < 1 else None,
        target6=target6 if share > 0 else None,
        clients=clients,
        arrival=arrival,
        rate=rate,
        capture=capture if arrival == "capture" else None,
        duration=duration,
        requests_per_conn=requests,
        keep_alive=keep_alive,
        think_time=parse_distribution(raw.get("think_time", 0), "workload.think_time", high=MAX_SECONDS),
        request_size=request_size,
        response_size=parse_distribution(
            raw.get("response_size", DEFAULT_RESPONSE_BYTES), "workload.response_size", low=1, high=MAX_RESPONSE_BYTES
        ),
        rtt=_number(raw, "rtt", DEFAULT_RTT_S, 0.0, MAX_SECONDS),
        ipv6_share=share,
        clients_v4=nets[0],
        clients_v6=nets[1],
        seed=seed,
        linktype=_choice(raw, "linktype", "ethernet", LINKTYPES),
        protocol=protocol,
        timeout=_number(raw, "timeout", DEFAULT_TIMEOUT_S, 0.0, MAX_SECONDS, above=True),
        udp_share=udp_share,
        udp_target=udp_targets[0] if share < 1 else None,
        udp_target6=udp_targets[1] if share > 0 else None,
    )


def _udp_share(raw: dict, protocol: str) -> float:
    """protocol = "mixed" needs the UDP sessions' share, strictly between none and all; others take none."""
    if protocol != "mixed":
        if "udp_share" in raw:
            raise ConfigError("workload.udp_share", 'only a mixed workload splits its sessions (protocol = "mixed")')
        return 0.0
    if "udp_share" not in raw:
        raise ConfigError(
            "workload.udp_share", 'protocol = "mixed" needs udp_share, the share of sessions that are UDP'
        )
    for name in ("target", "target6"):
        if name in raw:
            raise ConfigError(
                f"workload.{name}", "a mixed workload goes to the first TCP and the first UDP service of each family"
            )
    value = _number(raw, "udp_share", 0.0, 0.0, 1.0, above=True)
    if value >= 1:
        raise ConfigError("workload.udp_share", 'all of the sessions is not a mix: give protocol = "udp"')
    return value


def _targets(raw: dict, config: Config, protocol: str, share: float, mixed: bool) -> tuple:
    """The (IPv4, IPv6) targets of the `protocol` clients, checked against the IPv6 share (a mixed
    workload takes the services' VIPs only, so its errors do not offer target keys)."""
    target = _target(raw, "target", config, 4, protocol)
    target6 = _target(raw, "target6", config, 6, protocol)
    kind = protocol.upper()
    if share > 0 and target6 is None:
        raise ConfigError(
            "workload.ipv6_share",
            f"{share:g} of the clients are IPv6, but no {kind} service has an IPv6 VIP"
            + ("" if mixed else " (or give target6)"),
        )
    if share < 1 and target is None:
        raise ConfigError(
            "workload.ipv6_share",
            f"IPv4 clients need an IPv4 {kind} service" + ("" if mixed else " (or give target, or ipv6_share = 1)"),
        )
    return target, target6


# The request: "GET /" + padding + the rest, so that any size from the headers' own length on is exact.
REQUEST_HEAD = b"GET /"
REQUEST_TAIL = b" HTTP/1.1\r\nHost: %s\r\nUser-Agent: l4emu-gen\r\nAccept: */*\r\n\r\n"


def request_template(target: tuple[IPAddress, int], padding: bytes) -> bytes:
    """The HTTP request to `target` with `padding` as its path (the generator pads in C the same way)."""
    return REQUEST_HEAD + padding + REQUEST_TAIL % format_endpoint(*target).encode()


def with_seed(workload: Workload, seed: int) -> Workload:
    return dataclasses.replace(workload, seed=seed)
