"""The Switch: wires a Config to the datapath and its schedulers, and hands out plain-data snapshots."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Callable

from l4emu import config as configmod
from l4emu import reconfig, schedulers
from l4emu.datapath._batch import Batch
from l4emu.datapath._datapath import DROP_REASONS, PASS_REASONS, STATE_NAMES, Datapath

PROTO_NUMBERS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
DROP_TEXT = {
    "truncated_l2": "truncated link-layer header",
    "truncated_ip": "truncated IP packet",
    "bad_ip_header": "bad IP header",
    "truncated_ipv6_ext": "truncated IPv6 extension header",
    "truncated_tcp": "truncated TCP header",
    "bad_tcp_offset": "bad TCP data offset",
    "truncated_udp": "truncated UDP header",
    "bad_udp_length": "bad UDP length",
    "fragment": "IP fragment for a VIP (no reassembly)",
    "tcp_not_syn": "no connection, and not a SYN that could open one",
    "no_real": "no real server available",
    "table_full": "connection table full",
    "reply_clash": "the real's reply tuple is taken by another connection",
    "probe_limit": "no free index slot within the probe bound (colliding keys)",
    "ttl_exceeded": "TTL ran out where the switch forwards (ICMP time exceeded sent)",
    "too_big": "over the MTU with DF or IPv6 (ICMP fragmentation needed / packet too big sent)",
    "too_big_dropped": "over the MTU, dropped without an ICMP error (encap katran, or no DF)",
    "tunnel_link_type": "the capture's link type cannot carry the tunnel's outer address family",
    "no_memory": "out of memory for a longer packet",
    "fragment_overflow": "a fragment ahead of its first found the waiting room full (fragments = track), "
    "or reassembly memory over ipfrag_high_thresh (reassemble)",
    "fragment_held": "a fragment ahead of its first, waiting for it (fragments = track): written after it; "
    "or waiting for the rest of its datagram (reassemble): written within it",
    "local_ports_exhausted": "every local address of the full-NAT real's pool had all its ports lent",
}
PASS_TEXT = {
    "not_ip": "not IP",
    "other_protocol": "not TCP or UDP",
    "no_service": "not for a virtual service",
    "fragment": "IP fragment, not for a VIP",
    "unattributed": "from the service side (VIP, capture server or real) to a client with no connection",
}
for _names, _texts in ((DROP_REASONS, DROP_TEXT), (PASS_REASONS, PASS_TEXT)):
    if set(_texts) != set(_names):  # a reason without a text, or a text for no reason
        raise ImportError(f"reason texts out of step with the datapath: {sorted(set(_texts) ^ set(_names))}")


def _mask_bytes(prefix: int, family: int) -> bytes:
    bits = 32 if family == 4 else 128
    return (((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1)).to_bytes(bits // 8, "big")


class Switch:
    """One emulated L4 switch: config in, packets through, snapshots out."""

    def __init__(
        self,
        config: configmod.Config,
        seed: int | None = None,
        make_scheduler: Callable[[schedulers.Scheduler], schedulers.Scheduler] | None = None,
        grow_index: bool = False,
    ):
        """`make_scheduler` wraps each service's scheduler (a cluster's instances take a steered one);
        `grow_index`: the table's index starts small and grows with the flows (a cluster's instances,
        each of which holds a share of the flows), rather than allocated at max_connections."""
        self.config = config
        self.seed = seed
        # The seeded generator is the only source of randomness, so a seeded replay repeats exactly.
        self.random = random.Random(seed)
        secret = self.random.randbytes(16) if seed is not None else os.urandom(16)
        self._wrap = make_scheduler or (lambda scheduler: scheduler)
        self._datapath, self.reals = self._build(config, config.max_connections, secret, grow_index)
        # Emulated reals answer for themselves (l4emu/hosts/, imported only then: start-up); their generator
        # is drawn last, and only when there are some, so configs without them keep every seeded result.
        self.hosts = None
        if any(real.emulated for _, real in self.reals):
            from l4emu.hosts import Hosts

            self.hosts = Hosts(self.reals, random.Random(self.random.getrandbits(64)))

    def _build(
        self, config: configmod.Config, max_connections: int, secret: bytes, grow_index: bool = False
    ) -> tuple[Datapath, list[tuple[configmod.Service, configmod.Real]]]:
        """A datapath with the config's services, reals and settings (and its reals, in datapath order)."""
        try:
            datapath = Datapath(
                max_connections,
                secret,
                [config.timeouts[name.lower()] for name in STATE_NAMES],
                config.conn_reuse_mode,
                config.sloppy_tcp,
                config.expire_nodest_conn,
                grow_index,
            )
        except MemoryError as exc:  # the records are mapped whole, at their maximum
            raise configmod.ConfigError("table.max_connections", str(exc)) from None
        defrag = config.defrag
        datapath.set_defrag(defrag.ipfrag_high_thresh, defrag.ipfrag_low_thresh, defrag.ipfrag_time)
        reals: list[tuple[configmod.Service, configmod.Real]] = []
        for svc in config.services:
            index = datapath.add_service(
                svc.vip.packed,
                svc.vip.version,
                svc.port,
                PROTO_NUMBERS[svc.protocol],
                self._wrap(
                    schedulers.create(
                        svc.scheduler, svc.scheduler_flags, svc.mh_table_size, self.random.getrandbits(64)
                    )
                ),
                [(r.address.packed, r.port, r.weight, r.upper_threshold, r.lower_threshold) for r in svc.reals],
                svc.persistence,
                _mask_bytes(svc.persistence_netmask, svc.vip.version),
                [(address.packed, port) for address, port in svc.capture_servers],
            )
            self._set_forwarding(datapath, index, svc, len(reals), config.local_port_range)
            reals.extend((svc, r) for r in svc.reals)
        return datapath, reals

    def plan(self, config: configmod.Config, source: str = "") -> reconfig.Diff:
        """What apply(config) would change (nothing is changed); ConfigError for what needs a restart."""
        reconfig.check_reloadable(self.config, config, source)
        return reconfig.diff(self.config, config)

    def apply(self, config: configmod.Config, source: str = "") -> reconfig.Diff:
        """Reload: go on under `config` without dropping the table (l4emu apply, SIGHUP). Flows keep their
        reals; those of a removed real (or service) are expired at once; kept reals keep their counters
        and down marks. Returns what changed; raises ConfigError for what needs a restart (`source`
        names the file in the message)."""
        changes = self.plan(config, source)
        fresh, reals = self._build(config, 1, bytes(16))  # its one-entry table gives way to the running one
        fresh.take_over(
            self._datapath, reconfig.real_map(self.config, config), reconfig.forget_templates(self.config, config)
        )
        self._datapath, self.reals, self.config = fresh, reals, config
        return changes

    def _set_forwarding(
        self, datapath: Datapath, index: int, svc: configmod.Service, first_real: int, ports: tuple[int, int]
    ) -> None:
        """The service's MTU and the switch's addresses, and each real's method (docs/forwarding.md)."""
        four, six = svc.source_address(4), svc.source_address(6)
        datapath.set_forwarding(
            index,
            svc.mtu,
            four.packed if four else bytes(4),
            six.packed if six else bytes(16),
            svc.fragments,
        )
        shared_pool = None  # the service's local addresses, a pool made once for the reals naming none
        for k, real in enumerate(svc.reals):
            pool = -1
            if real.forward == "fullnat":
                low, high = ports
                if real.local_addresses:
                    pool = datapath.add_local_pool([a.packed for a in real.local_addresses], low, high)
                else:
                    if shared_pool is None:
                        shared_pool = datapath.add_local_pool([a.packed for a in svc.local_addresses], low, high)
                    pool = shared_pool
            if real.forward != "masq":
                datapath.set_real_forwarding(
                    first_real + k,
                    real.forward,
                    real.address.version,
                    real.tun_type,
                    real.tun_flags,
                    real.tun_port,
                    real.encap == "katran",
                    bytes.fromhex(real.mac.replace(":", "")),
                    pool,
                    real.toa,
                )

    @classmethod
    def from_config(cls, path=None, seed: int | None = None) -> Switch:
        """From a TOML file (None: the embedded default config)."""
        return cls(configmod.load(path, schedulers.catalog()), seed)

    def process(self, batch: Batch, start: int = 0, until_ns: int = 0, end: int = -1) -> int:
        """Run packets start..end (default: all) through the switch, rewriting them in place; returns where
        it stopped. With until_ns, it stops before the first packet at or past that moment on the packet
        clock, so a caller can change the switch at an exact moment and go on from the returned index.
        Fragments the switch makes or releases (verdict "more") get slots right after their packet: the
        returned index counts them (docs/forwarding.md)."""
        return self._datapath.process(batch, start, until_ns, end)

    def emulation_datapath(self) -> Datapath:
        """The datapath itself, for the emulated hosts' loop only (l4emu/emulate.py): it runs each packet
        through the datapath's per-packet path in C, interleaved with the hosts' answers."""
        return self._datapath

    def advance_clock(self, now_ns: int) -> None:
        """Move the packet clock forward without a packet (events, samples, live mode's idle ticks)."""
        self._datapath.advance_clock(now_ns)

    def real_counters(self) -> list[dict]:
        """Per real, in config order: weight, state marks, ActiveConn/InActConn, --stats counters."""
        return self._datapath.real_counters()

    def state_counts(self) -> dict[str, int]:
        """Connections per state as the datapath names them (ESTABLISHED, TIME_WAIT, ..., UDP), every state
        listed; persistence templates are left out (the reals' `persistent` counts them). Counters the packet
        path keeps, not a scan: expired entries count until the timer wheel reaps them (within a second)."""
        return self._datapath.state_counts()

    def table_info(self) -> dict:
        """The connection table's shape: entries used and at peak, capacity, index slots, bytes allocated."""
        table = self._datapath.table
        return {
            "used": table.used,
            "peak": table.peak,
            "capacity": table.capacity,
            "slots": table.slot_count,
            "memory_bytes": table.memory_bytes(),
        }

    def probe_lengths(self) -> dict[int, int]:
        """How many index probes each stored key needs, as {probes: keys} (a scan of the whole index)."""
        return self._datapath.table.probe_lengths()

    def hash_key(self, src: bytes, dst: bytes, sport: int, dport: int, proto: int) -> int:
        """The table's keyed hash of a tuple, as a lookup computes it (hash-flooding tests play an
        attacker who knows the secret)."""
        return self._datapath.table.hash_key(src, dst, sport, dport, proto)

    @property
    def schedulers(self) -> list:
        """The scheduler object of each service, in config order."""
        return list(self._datapath.schedulers)

    def inside_view(self, before: Batch, after: Batch) -> None:
        """Make `before` (a copy of `after` taken before processing) what the reals saw of it (--inside)."""
        self._datapath.inside_view(before, after)

    def set_real(self, endpoint: str, weight: int | None = None, down: bool | None = None) -> list[int]:
        """Set the weight or down mark of every real with this "ip:port" (it may serve several
        services); returns their indexes. Existing flows go on; new flows follow the change."""
        matches = [i for i, (_, real) in enumerate(self.reals) if real.endpoint == endpoint]
        if not matches:
            raise KeyError(f"no real server {endpoint}")
        if weight is not None and not 0 <= weight <= configmod.MAX_WEIGHT:
            raise ValueError(f"weight {weight} is out of range 0-{configmod.MAX_WEIGHT}")
        for index in matches:
            self._datapath.set_real(index, weight=weight, down=down)
        return matches

    def set_real_at(self, index: int, weight: int | None = None, down: bool | None = None) -> None:
        """As set_real, for the one real at this index (a health check checks a real of one service)."""
        self._datapath.set_real(index, weight=weight, down=down)

    @property
    def clock_ns(self) -> int:
        return self._datapath.clock_ns

    def stats(self) -> dict:
        """Counters: packets by verdict, drops and passes by reason, table sizes, per real; Linux's
        reassembly counters (reasm_*) when a service reassembles fragments."""
        counters = self._datapath.counters()
        if not any(svc.fragments == "reassemble" for svc in self.config.services):
            counters = {name: value for name, value in counters.items() if not name.startswith("reasm_")}
        per_real = self._datapath.real_counters()
        new: dict[str, int] = {}
        for i, (_, real) in enumerate(self.reals):  # a real serving several services: summed
            new[real.endpoint] = new.get(real.endpoint, 0) + per_real[i]["conns"]
        counters["new_connections"] = new
        counters["max_connections"] = self.config.max_connections
        counters["unattributed"] = self.unattributed()
        return counters

    def unattributed(self) -> dict[str, int]:
        """Packets from the service side that no connection owned, by sender ("ip:port"): answers from
        a VIP or capture server whose connection began before the capture or was refused, replies from
        a real for a client it does not serve (a capture made for another scheduler)."""
        per_front, per_real = self._datapath.unattributed()
        fronts = [front for svc in self.config.services for front in svc.fronts]
        out: dict[str, int] = {}
        reals = ((real.endpoint, n) for (_, real), n in zip(self.reals, per_real, strict=True))
        for endpoint, count in [*zip(fronts, per_front, strict=True), *reals]:
            if count:
                out[endpoint] = out.get(endpoint, 0) + count
        return out

    def connection_count(self) -> int:
        """Entries in the table now (expired ones reaped first)."""
        self._datapath.expire_due()
        return self._datapath.table.used

    def conntrack(self) -> list[dict]:
        """The connection table as rows of plain data, in table order (expired entries reaped first)."""
        self._datapath.expire_due()
        now = self._datapath.clock_ns
        labels = [(svc.protocol.upper(), svc.endpoint, real.endpoint) for svc, real in self.reals]
        methods = [counters["forward"] for counters in self._datapath.real_counters()]
        rows = []
        for real_index, client, cport, state, expires_ns in self._datapath.flows():
            protocol, virtual, destination = labels[real_index]
            source = (
                f"{socket.inet_ntop(socket.AF_INET, client)}:{cport}"
                if len(client) == 4
                else f"[{socket.inet_ntop(socket.AF_INET6, client)}]:{cport}"
            )
            rows.append(
                {
                    "protocol": protocol,
                    "state": state,
                    "expires_in_s": round((expires_ns - now) / 1e9, 3),
                    "source": source,
                    "virtual": virtual,
                    "destination": destination,
                    "forward": methods[real_index],
                }
            )
            if self.hosts is not None:  # the flow names its socket by number, as the host numbers it
                rows[-1]["handle"] = self.hosts.handle_of(real_index, self.reals[real_index][1].port, client, cport)
        return rows

    def sockets(self) -> list[dict]:
        """Per emulated host: its sockets as `ss -tuan` rows, handles and counters (plain data)."""
        return self.hosts.snapshot() if self.hosts is not None else []

    def services(self) -> list[dict]:
        """Services and reals with IPVS's per-real figures (Forward, Weight, ActiveConn, InActConn, --stats)."""
        per_real = self._datapath.real_counters()
        out, k = [], 0
        for svc in self.config.services:
            reals = []
            for real in svc.reals:
                reals.append({"address": real.endpoint, **per_real[k]})
                k += 1
            out.append(
                {
                    "protocol": svc.protocol.upper(),
                    "vip": svc.endpoint,
                    "scheduler": svc.scheduler,
                    "flags": list(getattr(svc, "scheduler_flags", ())),
                    "persistence": svc.persistence,
                    "persistence_netmask": svc.persistence_netmask,
                    "family": svc.vip.version,
                    "reals": reals,
                }
            )
        return out

    def snapshot(self) -> dict:
        """Everything inspection needs, as JSON-ready data; the same for a replay or a live switch."""
        connections = self.conntrack()
        return {
            "l4emu_state": 1,
            "clock_ns": self._datapath.clock_ns,
            "services": self.services(),
            "connections": connections,
            "sockets": self.sockets(),
            "stats": self.stats(),
        }

    def comment_table(self) -> list[list[bytes]]:
        """Per verdict and detail, the text --annotate writes into each packet's pcapng comment."""
        new = [f"new flow, {svc.scheduler} -> {r.endpoint}" for svc, r in self.reals]
        how = {"masq": "DNAT to", "dr": "routed to", "tun": "tunnelled to", "fullnat": "full-NAT to"}  # its method
        forward = [f"forward, {how[r.forward]} {r.endpoint}" for _, r in self.reals]
        reply = [f"reply from {r.endpoint}, SNAT to VIP {svc.endpoint}" for svc, r in self.reals]
        answer = [
            f"answer of {r.endpoint} as captured from the service side, leaves from VIP {svc.endpoint}"
            for svc, r in self.reals
        ]
        passed = [f"passed untouched: {PASS_TEXT[name]}" for name in PASS_REASONS]
        dropped = [f"dropped: {DROP_TEXT[name]}" for name in DROP_REASONS]
        icmp = [f"ICMP error sent back for a packet {DROP_TEXT[name]}" for name in DROP_REASONS]
        more = [
            f"a fragment written after the packet before it, {how[r.forward]} {r.endpoint} (a piece of it, no DF "
            f"over the MTU; or one that waited for it, its first fragment)"
            for _, r in self.reals
        ]
        table = [[], passed, new, forward, reply, dropped, answer, icmp, more]
        return [[text.encode() for text in row] for row in table]
