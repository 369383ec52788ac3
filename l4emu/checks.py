"""Health checks of reals, as keepalived's checkers take them: `[service.check]`, and `[service.real.check]`
for one real (it replaces the service's for that real, as keepalived keeps a checker in each real_server).

TCP_CHECK connects; HTTP_GET (`http`) and SSL_GET (`https`) connect, ask for `path` and compare the status
code and, given a `digest`, the MD5 of the body; MISC_CHECK (`misc`) runs a command and reads its exit
status (with `misc_dynamic`, 2-255 also set the weight to status - 2). A real is marked down when a check
and its `retry` retries (`delay_before_retry` apart) all fail, and up again after `rise` checks in a row
succeed (hysteresis); `inhibit_on_failure` sets its weight to 0 instead of marking it down, as keepalived
does. Live mode checks real hosts over sockets and commands (l4emu/live/health.py); replay and simulate
check emulated reals (tcp and http) on the packet clock from their hosts' state (l4emu/emulated_checks.py).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from l4emu.errors import L4emuError

CHECK_TYPES = ("tcp", "http", "https", "misc")
CONNECTING = ("tcp", "http", "https")  # the types that connect to the real (over TCP)
HTTP_TYPES = ("http", "https")
MAX_SECONDS = 3600.0
MAX_RETRY = 100
MAX_PATH = 1024
MAX_COMMAND = 4096
MAX_SNI = 253  # a DNS name's length
MD5_HEX = re.compile(r"[0-9a-fA-F]{32}")
SNI_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
# Which keys belong to which types (the rest are every type's).
ONLY = {
    "connect_timeout": CONNECTING,
    "connect_port": CONNECTING,
    "path": HTTP_TYPES,
    "status_code": HTTP_TYPES,
    "digest": HTTP_TYPES,
    "sni": ("https",),
    "misc_path": ("misc",),
    "misc_timeout": ("misc",),
    "misc_dynamic": ("misc",),
}


@dataclass(frozen=True)
class HealthCheck:
    type: str = "tcp"
    delay_loop: float = 60.0  # keepalived's default: seconds between checks
    connect_timeout: float = 5.0  # tcp, http, https: for the whole attempt
    retry: int = 1  # retries after a failed attempt before the check fails
    delay_before_retry: float = 1.0
    rise: int = 1  # checks in a row that must succeed to bring a down real back
    inhibit_on_failure: bool = False
    connect_port: int = 0  # 0: the real's port
    path: str = "/"  # http, https
    status_code: int = 200  # http, https
    digest: str = ""  # http, https: the MD5 (hex) the body must have ("": not compared)
    sni: str = ""  # https: the server name sent in the TLS handshake and the Host header ("": none)
    misc_path: str = ""  # misc: the command line (split as a shell would, run without one)
    misc_timeout: float = 0.0  # misc: seconds before the command is killed (0: delay_loop, as keepalived)
    misc_dynamic: bool = False  # misc: exit status 2-255 means up with weight status - 2

    @property
    def command_timeout(self) -> float:
        return self.misc_timeout or self.delay_loop


def parse(raw, key: str, protocol: str, error: type[L4emuError], typed, take) -> HealthCheck:
    """A check table, each value checked; `error`, `typed` and `take` are config.py's."""
    raw = take(raw, key, set(HealthCheck.__dataclass_fields__))
    kind = typed(raw.get("type", "tcp"), str, f"{key}.type")
    if kind not in CHECK_TYPES:
        raise error(f"{key}.type", f"{kind!r} is not one of {', '.join(CHECK_TYPES)}")
    if protocol != "tcp" and kind in CONNECTING:
        raise error(key, f'{kind} checks connect over TCP: a {protocol} service has none to check (type = "misc" can)')
    for name in sorted(set(raw) & set(ONLY)):
        if kind not in ONLY[name]:
            kinds = " or ".join(f'"{t}"' for t in ONLY[name])
            raise error(f"{key}.{name}", f"only type = {kinds} has it")
    values: dict = {"type": kind}
    for name in ("delay_loop", "connect_timeout", "delay_before_retry"):
        values[name] = _seconds(raw, name, key, error, typed)
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
    if kind in HTTP_TYPES:
        values.update(_http(raw, key, error, typed))
    if kind == "misc":
        values.update(_misc(raw, key, error, typed))
    return HealthCheck(**values)


EMULATED_TYPES = ("tcp", "http")


def emulated_refusal(check: HealthCheck) -> tuple[str, str] | None:
    """(the key, why) when an emulated real cannot take this check: it is judged from its host's state, so
    no TLS, command or body digest runs against it; None when it can."""
    if check.type not in EMULATED_TYPES:
        return "type", f"{' or '.join(EMULATED_TYPES)}: an emulated real is checked from its host's state"
    if check.digest:
        return "digest", "an emulated real is checked from its host's state, not its answer's body"
    return None


def effective(svc, real) -> HealthCheck | None:
    """The check a real gets: its own `[service.real.check]`, else its service's."""
    return real.check or svc.check


def live_refusal(services) -> str | None:
    """Why live mode cannot run these services' checks (None: it can): a live check connects over real
    sockets, which an emulated real (answered inside l4emu) never accepts."""
    for k, svc in enumerate(services):
        if any(real.emulated and effective(svc, real) is not None for real in svc.reals):
            return (
                f"service[{k}].check: live checks connect to real hosts, and this service has emulated reals "
                "(their checks run in replay and simulate, on the packet clock)"
            )
    return None


def _seconds(raw: dict, name: str, key: str, error, typed) -> float:
    value = typed(raw.get(name, getattr(HealthCheck, name)), float, f"{key}.{name}")
    if not 0 < value <= MAX_SECONDS:
        raise error(f"{key}.{name}", f"{value} is not a number of seconds above 0 and at most {MAX_SECONDS:g}")
    return float(value)


def _http(raw: dict, key: str, error, typed) -> dict:
    """path, status_code, digest (and sni: only https gets this far with one)."""
    path = typed(raw.get("path", "/"), str, f"{key}.path")
    if not path.startswith("/") or len(path) > MAX_PATH or not path.isprintable() or " " in path:
        raise error(f"{key}.path", f"{path!r} is not a URL path (/..., printable, no spaces)")
    status = typed(raw.get("status_code", 200), int, f"{key}.status_code")
    if not 100 <= status <= 599:
        raise error(f"{key}.status_code", f"{status} is not an HTTP status code (100-599)")
    digest = typed(raw.get("digest", ""), str, f"{key}.digest")
    if "digest" in raw and not MD5_HEX.fullmatch(digest):
        raise error(f"{key}.digest", f"{digest!r} is not an MD5 digest (32 hex digits, as md5sum prints)")
    sni = typed(raw.get("sni", ""), str, f"{key}.sni")
    if "sni" in raw and (len(sni) > MAX_SNI or not SNI_NAME.fullmatch(sni)):
        raise error(f"{key}.sni", f"{sni!r} is not a server name (letters, digits, dots and hyphens)")
    return {"path": path, "status_code": status, "digest": digest.lower(), "sni": sni}


def _misc(raw: dict, key: str, error, typed) -> dict:
    """misc_path (required, a command line that splits), misc_timeout, misc_dynamic."""
    if "misc_path" not in raw:
        raise error(f"{key}.misc_path", 'missing: type = "misc" runs this command')
    command = typed(raw["misc_path"], str, f"{key}.misc_path")
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise error(f"{key}.misc_path", f"{command!r} does not split into words: {exc}") from None
    if not words or len(command) > MAX_COMMAND or "\0" in command:
        raise error(f"{key}.misc_path", f"{command!r} is not a command line (a program and its arguments)")
    values: dict = {"misc_path": command}
    if "misc_timeout" in raw:
        values["misc_timeout"] = _seconds(raw, "misc_timeout", key, error, typed)
    values["misc_dynamic"] = typed(raw.get("misc_dynamic", False), bool, f"{key}.misc_dynamic")
    return values
