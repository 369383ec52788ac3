"""Configs and reload diffs as ipvsadm speaks them: `ipvsadm-save -n` lines, and the -A/-E/-D, -a/-e/-d steps.

Lines are in ipvsadm-restore's form (ipvsadm's arguments, without the command's name), so on a
machine with IPVS they could be fed to `ipvsadm-restore`. What ipvsadm has no command for (l4emu's
other timeouts, the vs sysctls, settings IPVS keeps elsewhere) is said in `#` comments beside.
"""

from __future__ import annotations

import ipaddress

PROTOCOL_FLAGS = {"tcp": "-t", "udp": "-u"}
FORWARD_FLAGS = {"masq": "-m", "dr": "-g", "tun": "-i"}
SET_STATES = ("established", "fin_wait", "udp")  # ipvsadm --set tcp tcpfin udp
SYSCTLS = {
    "conn_reuse_mode": "net.ipv4.vs.conn_reuse_mode",
    "sloppy_tcp": "net.ipv4.vs.sloppy_tcp",
    "expire_nodest_conn": "net.ipv4.vs.expire_nodest_conn",
}


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def service_args(svc: dict) -> str:
    """-t VIP:PORT -s SCHED [-b FLAGS] [-p SECONDS [-M MASK]], as ipvsadm-save prints a service."""
    args = f"{PROTOCOL_FLAGS[svc['protocol']]} {svc['vip']} -s {svc['scheduler']}"
    if svc["scheduler_flags"]:
        args += f" -b {','.join(svc['scheduler_flags'])}"
    if svc["persistence"]:
        args += f" -p {_number(svc['persistence'])}"
        full = 32 if svc["family"] == 4 else 128
        if svc["persistence_netmask"] != full:
            mask = svc["persistence_netmask"]
            shown = str(ipaddress.IPv4Network(f"0.0.0.0/{mask}").netmask) if svc["family"] == 4 else str(mask)
            args += f" -M {shown}"
    return args


def real_args(svc: dict, real: dict) -> str:
    """-t VIP:PORT -r REAL:PORT -m|-g|-i -w W [-x U] [-y L] [--tun-type ...], as ipvsadm-save prints a real."""
    args = f"{PROTOCOL_FLAGS[svc['protocol']]} {svc['vip']} -r {real['address']} {FORWARD_FLAGS[real['forward']]}"
    args += f" -w {real['weight']}"
    if real["upper_threshold"]:
        args += f" -x {real['upper_threshold']}"
    if real["lower_threshold"]:
        args += f" -y {real['lower_threshold']}"
    if real["forward"] == "tun" and real["tun_type"] != "ipip":
        args += f" --tun-type {real['tun_type']}"
        if real["tun_type"] == "gue":
            args += f" --tun-port {real['tun_port']}"
        if real["tun_flags"] != "nocsum":
            args += f" --tun-{real['tun_flags']}"
    return args


def save_lines(config: dict) -> list[str]:
    """`ipvsadm-save -n`: each service's -A line, then its reals' -a lines."""
    lines = []
    for svc in config["services"]:
        lines.append(f"-A {service_args(svc)}")
        lines += [f"-a {real_args(svc, real)}" for real in svc["reals"]]
    return lines


def _what(changed: dict) -> str:
    return ", ".join(f"{name} {_shown(old)} -> {_shown(new)}" for name, (old, new) in changed.items())


def _shown(value) -> str:
    if isinstance(value, dict):  # a health check: keepalived's, no ipvsadm option
        return " ".join(f"{k}={_number(v)}" for k, v in value.items())
    if value is None:
        return "none"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]" if value else "none"
    return _number(value)


def diff_lines(diff: dict) -> list[str]:
    """A reload's steps: -D/-d, -A/-a, -E/-e (edits say what changed in a comment), then --set and sysctls."""
    lines = []
    for step in diff["changes"]:
        svc, real, action = step["service"], step["real"], step["action"]
        if real is None:
            flag = {"add": "-A", "edit": "-E", "delete": "-D"}[action]
            body = service_args(svc) if action != "delete" else f"{PROTOCOL_FLAGS[svc['protocol']]} {svc['vip']}"
        else:
            flag = {"add": "-a", "edit": "-e", "delete": "-d"}[action]
            body = (
                real_args(svc, real)
                if action != "delete"
                else (f"{PROTOCOL_FLAGS[svc['protocol']]} {svc['vip']} -r {real['address']}")
            )
        note = _what(step["changed"])
        lines.append(f"{flag} {body}" + (f"    # {note}" if note else ""))
    timeouts = diff["timeouts"]
    if any(state in timeouts for state in SET_STATES):  # 0 leaves a value as it is
        values = " ".join(_number(timeouts[s][1]) if s in timeouts else "0" for s in SET_STATES)
        lines.append(f"--set {values}")
    for state, (old, new) in timeouts.items():
        if state not in SET_STATES:
            lines.append(f"# timeout {state} {_number(old)} -> {_number(new)} (no ipvsadm command: [timeouts])")
    for name, (_, new) in diff["settings"].items():
        lines.append(f"# sysctl -w {SYSCTLS[name]}={int(new)}")
    return lines
