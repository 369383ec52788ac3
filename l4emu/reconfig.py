"""What a reload changes: the difference between a running switch's config and a new one, as plain data.

A service is known by its protocol, VIP and port, a real by its service and address:port (as IPVS knows
them), so a VIP that changes is one service removed and another added. `diff` lists the changes in the
order ipvsadm would make them (removals first, so an address can move); `real_map` tells the datapath
which old real each new one continues.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from l4emu.config import Config, ConfigError, Real, Service

# What `ipvsadm -E` / `-e` change, by the field names of config.Service / config.Real.
SERVICE_FIELDS = (
    "scheduler",
    "scheduler_flags",
    "persistence",
    "persistence_netmask",
    "mh_table_size",
    "mtu",
    "source_addresses",
    "fragments",
    "capture_servers",
    "check",
)
REAL_FIELDS = (
    "weight",
    "upper_threshold",
    "lower_threshold",
    "forward",
    "mac",
    "tun_type",
    "tun_port",
    "tun_flags",
    "encap",
    "check",
)
# Switch-wide settings a reload may change (the table's size may not: it is allocated whole at start).
SETTINGS = ("conn_reuse_mode", "sloppy_tcp", "expire_nodest_conn")


@dataclass(frozen=True)
class Diff:
    """`changes`: plain-data steps {"action": add | edit | delete, "service": ..., "real": ... or None,
    "changed": {field: [old, new]}}, services and reals as `service_data`/`real_data` give them."""

    changes: tuple[dict, ...]
    timeouts: dict[str, tuple[float, float]]  # state -> (old, new), the states whose timeout changed
    settings: dict[str, tuple[bool, bool]]  # setting -> (old, new)

    def __bool__(self) -> bool:
        return bool(self.changes or self.timeouts or self.settings)

    def as_dict(self) -> dict:
        return {"changes": list(self.changes), "timeouts": self.timeouts, "settings": self.settings}


def service_data(svc: Service) -> dict:
    """A service as plain data (what ipvsadm -A names), without its reals."""
    return {
        "protocol": svc.protocol,
        "vip": svc.endpoint,
        "family": svc.vip.version,
        **{name: _plain(getattr(svc, name)) for name in SERVICE_FIELDS},
    }


def real_data(real: Real) -> dict:
    """A real as plain data (what ipvsadm -a names)."""
    return {"address": real.endpoint, **{name: _plain(getattr(real, name)) for name in REAL_FIELDS}}


def config_data(config: Config) -> dict:
    """The whole running config as plain data, for `l4emu save` (ipvsadm-save)."""
    return {
        "services": [{**service_data(svc), "reals": [real_data(r) for r in svc.reals]} for svc in config.services],
        "timeouts": dict(config.timeouts),
        "settings": {name: getattr(config, name) for name in SETTINGS},
    }


def _plain(value):
    """Addresses and tuples of them as strings and lists, a health check as a table (JSON for the control socket)."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


def service_key(svc: Service) -> tuple[str, str]:
    return (svc.protocol, svc.endpoint)


def check_reloadable(old: Config, new: Config, source: str = "") -> None:
    """What a running switch cannot take without a restart: one ConfigError naming the key and why."""
    if old.max_connections != new.max_connections:
        raise ConfigError(
            "table.max_connections",
            f"{old.max_connections} -> {new.max_connections}: the table is allocated whole at start; "
            "restart l4emu live to resize it",
            source,
        )
    if local_addresses(old) != local_addresses(new):
        raise ConfigError(
            "local_addresses",
            "full-NAT's local addresses or local_port_range changed: the ports they lend belong to running "
            "connections; restart l4emu live to change them",
            source,
        )
    for config in (old, new):
        for i, svc in enumerate(config.services):
            for j, real in enumerate(svc.reals):
                if real.emulated:
                    which = "the new config" if config is new else "the running config"
                    raise ConfigError(
                        f"service[{i}].real[{j}].emulated",
                        f"{which} has emulated reals: their sockets and queues are not carried over a reload; "
                        "restart l4emu live instead",
                        source,
                    )


def local_addresses(config: Config) -> tuple:
    """Full-NAT's local addresses in the order the datapath numbers them, and the ports each lends: a reload
    carries their port allocators over only when these are the same."""
    seen: dict[str, None] = {}
    for svc in config.services:
        for real in svc.reals:
            if real.forward == "fullnat":
                seen.update((str(a), None) for a in real.local_addresses or svc.local_addresses)
    return (tuple(seen), config.local_port_range if seen else None)


def _step(action: str, svc: Service, real: Real | None = None, changed: dict | None = None) -> dict:
    return {
        "action": action,
        "service": service_data(svc),
        "real": real_data(real) if real is not None else None,
        "changed": changed or {},
    }


def _changed(old, new, names) -> dict:
    """{field: [old, new]} for the fields that differ, as plain data."""
    return {n: [_plain(getattr(old, n)), _plain(getattr(new, n))] for n in names if getattr(old, n) != getattr(new, n)}


def diff(old: Config, new: Config) -> Diff:
    """The changes that turn `old` into `new`: deleted reals and services first (so an address can
    move), then added services, edited services, and reals added and edited, each in config order."""
    before = {service_key(svc): svc for svc in old.services}
    after = {service_key(svc): svc for svc in new.services}
    deletes: list[dict] = []
    for svc in old.services:
        if service_key(svc) not in after:
            deletes.append(_step("delete", svc))
            continue
        kept = {real.endpoint for real in after[service_key(svc)].reals}
        deletes += [_step("delete", svc, real) for real in svc.reals if real.endpoint not in kept]
    adds: list[dict] = []
    for svc in new.services:
        was = before.get(service_key(svc))
        if was is None:
            adds.append(_step("add", svc))
            adds += [_step("add", svc, real) for real in svc.reals]
            continue
        if edited := _changed(was, svc, SERVICE_FIELDS):
            adds.append(_step("edit", svc, changed=edited))
        old_reals = {real.endpoint: real for real in was.reals}
        for real in svc.reals:
            prior = old_reals.get(real.endpoint)
            if prior is None:
                adds.append(_step("add", svc, real))
            elif edited_real := _changed(prior, real, REAL_FIELDS):
                adds.append(_step("edit", svc, real, edited_real))
    timeouts = {
        state: (old.timeouts[state], new.timeouts[state])
        for state in new.timeouts
        if old.timeouts.get(state) != new.timeouts[state]
    }
    settings = {
        name: (getattr(old, name), getattr(new, name)) for name in SETTINGS if getattr(old, name) != getattr(new, name)
    }
    return Diff(tuple(deletes + adds), timeouts, settings)


def real_map(old: Config, new: Config) -> list[int]:
    """For each real of `old` (in the datapath's order: services, then their reals), its index in `new`,
    or -1 when it is gone (its service or itself removed)."""
    index: dict[tuple, int] = {}
    k = 0
    for svc in new.services:
        for real in svc.reals:
            index[(service_key(svc), real.endpoint)] = k
            k += 1
    return [index.get((service_key(svc), real.endpoint), -1) for svc in old.services for real in svc.reals]


def forget_templates(old: Config, new: Config) -> list[int]:
    """Old services whose persistence (timeout or netmask) changed, or went: their templates go with the reload
    (a template made under the old netmask would never be found, nor released, under the new one)."""
    after = {service_key(svc): svc for svc in new.services}
    out = []
    for k, svc in enumerate(old.services):
        now = after.get(service_key(svc))
        if now is None or (svc.persistence, svc.persistence_netmask) != (now.persistence, now.persistence_netmask):
            out.append(k)
    return out
