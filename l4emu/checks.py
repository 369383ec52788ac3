"""Health checks of a service's reals, as keepalived's checkers take them: the `[service.check]` table.

TCP_CHECK connects; HTTP_GET connects, asks for `path` and compares the status code. A real is marked
down when a check and its `retry` retries (`delay_before_retry` apart) all fail, and up again after
`rise` checks in a row succeed (hysteresis); `inhibit_on_failure` sets its weight to 0 instead of
marking it down, as keepalived does. Live mode checks real hosts over sockets (l4emu/live/health.py);
replay and simulate check emulated reals on the packet clock from their hosts' state
(l4emu/emulated_checks.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from l4emu.errors import L4emuError

CHECK_TYPES = ("tcp", "http")
MAX_SECONDS = 3600.0
MAX_RETRY = 100
MAX_PATH = 1024


@dataclass(frozen=True)
class HealthCheck:
    type: str = "tcp"
    delay_loop: float = 60.0  # keepalived's default: seconds between checks
    connect_timeout: float = 5.0
    retry: int = 1  # retries after a failed attempt before the check fails
    delay_before_retry: float = 1.0
    rise: int = 1  # checks in a row that must succeed to bring a down real back
    inhibit_on_failure: bool = False
    connect_port: int = 0  # 0: the real's port
    path: str = "/"  # http
    status_code: int = 200  # http


def parse(raw, key: str, protocol: str, error: type[L4emuError], typed, take) -> HealthCheck:
    """The service's check table, each value checked; `error`, `typed` and `take` are config.py's."""
    raw = take(raw, key, set(HealthCheck.__dataclass_fields__))
    if protocol != "tcp":
        raise error(key, f"checks connect over TCP: a {protocol} service has none to check")
    kind = typed(raw.get("type", "tcp"), str, f"{key}.type")
    if kind not in CHECK_TYPES:
        raise error(f"{key}.type", f"{kind!r} is not one of {', '.join(CHECK_TYPES)}")
    values: dict = {"type": kind}
    for name in ("delay_loop", "connect_timeout", "delay_before_retry"):
        value = typed(raw.get(name, getattr(HealthCheck, name)), float, f"{key}.{name}")
        if not 0 < value <= MAX_SECONDS:
            raise error(f"{key}.{name}", f"{value} is not a number of seconds above 0 and at most {MAX_SECONDS:g}")
        values[name] = float(value)
    for name, low in (("retry", 0), ("rise", 1)):
        value = typed(raw.get(name, getattr(HealthCheck, name)), int, f"{key}.{name}")
        if not low <= value <= MAX_RETRY:
            raise error(f"{key}.{name}", f"{value} is out of range {low}-{MAX_RETRY}")
        values[name] = value
    values["inhibit_on_failure"] = typed(raw.get("inhibit_on_failure", False), bool, f"{key}.inhibit_on_failure")
    port = typed(raw.get("connect_port", 0), int, f"{key}.connect_port")
    if not 0 <= port <= 65535:
        raise error(f"{key}.connect_port", f"{port} is out of range 1-65535 (0: the real's port)")
    values["connect_port"] = port
    if kind == "http":
        path = typed(raw.get("path", "/"), str, f"{key}.path")
        if not path.startswith("/") or len(path) > MAX_PATH or not path.isprintable() or " " in path:
            raise error(f"{key}.path", f"{path!r} is not a URL path (/..., printable, no spaces)")
        status = typed(raw.get("status_code", 200), int, f"{key}.status_code")
        if not 100 <= status <= 599:
            raise error(f"{key}.status_code", f"{status} is not an HTTP status code (100-599)")
        values["path"], values["status_code"] = path, status
    elif {"path", "status_code"} & set(raw):
        raise error(f"{key}.{sorted({'path', 'status_code'} & set(raw))[0]}", 'only type = "http" has it')
    return HealthCheck(**values)


def live_refusal(services) -> str | None:
    """Why live mode cannot run these services' checks (None: it can): a live check connects over real
    sockets, which an emulated real (answered inside l4emu) never accepts."""
    for k, svc in enumerate(services):
        if svc.check is not None and any(real.emulated for real in svc.reals):
            return (
                f"service[{k}].check: live checks connect to real hosts, and this service has emulated reals "
                "(their checks run in replay and simulate, on the packet clock)"
            )
    return None
