"""The `l4emu live`, `real` and `lab` commands, and the live views (`--control`) of conntrack and stats."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from l4emu import config as configmod
from l4emu import control, inspect, report
from l4emu.io import WriteError
from l4emu.io.tun import TunError, enter_netns, open_tun
from l4emu.lab import Lab, LabError
from l4emu.switch import Switch


def _fail(message: str, code: int = 2):
    click.echo(f"l4emu: error: {message}", err=True)
    sys.exit(code)


@click.command()
@click.option("--tun", "tun_name", required=True, help="TUN device to attach to (raw IP).")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML config (default: the embedded one).")
@click.option("--control", "control_path", type=click.Path(dir_okay=False), help="Serve the control socket here.")
@click.option("--control-group", help="Let this group use the control socket (mode 0660 instead of 0600).")
@click.option("--pcap-out", type=click.Path(dir_okay=False), help="Record what passed (.pcap or .pcapng).")
@click.option("--create", is_flag=True, help="Make the device if it does not exist (it goes when live stops).")
@click.option("--user", help="Drop root for this user once the device and the socket are open.")
@click.option("--netns", help="Run in this network namespace (as `ip netns exec NAME` would).")
@click.option("--offload/--no-offload", default=True, show_default=True,
              help="Ask the TUN for checksum and segmentation offloads (64 KiB super-packets).")
@click.option("--seed", type=int, help="Seed for the hash secret and random choices.")
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON.")
def live(tun_name, config_path, control_path, control_group, pcap_out, create, user, netns, offload, seed, as_json):
    """Run the switch on a TUN device until SIGINT/SIGTERM, then print the summary."""
    from l4emu.live import Live
    try:
        if netns:
            enter_netns(netns)
        switch = Switch.from_config(config_path, seed)
        tun = open_tun(tun_name, create, offload)
        try:
            runner = Live(switch, tun, control_path, control_group, pcap_out, user)
        except BaseException:
            tun.close()
            raise
    except (configmod.ConfigError, TunError, control.ControlError, WriteError, KeyError, OSError) as exc:
        _fail(exc.args[0] if isinstance(exc, KeyError) else str(exc))
    click.echo(f"live on {tun_name}: offloads {','.join(tun.offloads) or 'off'}"
               + (f", control {control_path}" if control_path else "") + "; SIGINT or SIGTERM stops", err=True)
    summary = runner.run()
    click.echo(inspect.to_json(summary) if as_json else live_summary_text(summary))
    if summary["error"]:
        _fail(summary["error"])


def live_summary_text(summary: dict) -> str:
    t = summary["tun"]
    return inspect.summary_text(summary) + (
        f"\ntun          {t['name']}: {t['packets_in']:,} packets in ({t['gso_in']:,} GSO super-packets), "
        f"{t['packets_out']:,} out ({t['gso_out']:,} GSO UDP writes), {t['write_errors']:,} write errors; "
        f"offloads {','.join(t['offloads']) or 'off'}")


def ask(path, op: str, **args):
    """One control request; a refusal or an unreachable socket ends the command with its reason."""
    try:
        return control.request(path, op, **args)
    except control.ControlError as exc:
        _fail(str(exc))


@click.group()
def real():
    """Change a real server of a running `l4emu live` (admin: root or the socket's owner)."""


@real.command("set")
@click.argument("endpoint", metavar="IP:PORT")
@click.option("--control", "control_path", required=True, type=click.Path(dir_okay=False))
@click.option("--weight", type=int, help="New weight (0 drains: no new connections, open ones finish).")
@click.option("--down", "state", flag_value="down", help="Mark the real down.")
@click.option("--up", "state", flag_value="up", help="Mark the real up again.")
def real_set(endpoint, control_path, weight, state):
    """Set a real's weight or mark it down/up."""
    if weight is None and state is None:
        _fail("give --weight N, --down or --up")
    done = ask(control_path, "set_real", endpoint=endpoint, weight=weight, state=state)
    click.echo(f"{done['endpoint']}: " + ", ".join(
        [f"weight {weight}"] * (weight is not None) + [f"{state}"] * (state is not None)))


def live_stats_text(current: dict, previous: dict | None, exact: bool) -> str:
    """ipvsadm -L -n, --stats, and with a previous sample --rate (CPS InPPS OutPPS InBPS OutBPS)."""
    size = current["stats"].get("max_connections", 0)
    text = inspect.services_text(current, size) + "\n\n" + report.stats_text(current, exact)
    if previous is None:
        return text
    seconds = max((current["clock_ns"] - previous["clock_ns"]) / 1e9, 1e-9)
    before = {(svc["vip"], r["address"]): r for svc in previous["services"] for r in svc["reals"]}
    by_real = {}
    for svc in current["services"]:
        for r in svc["reals"]:
            by_real[id(r)] = [(r[k] - before[(svc["vip"], r["address"])][k]) / seconds for k in report.STATS_KEYS]
    rates = report.per_real_table(current, "       CPS    InPPS   OutPPS    InBPS   OutBPS",
                                  lambda real: by_real[id(real)], exact)
    return text + "\n\n" + rates


def watch_stats(control_path, seconds: float, exact: bool) -> None:
    previous = None
    while True:
        current = ask(control_path, "stats")
        click.echo(("\n" if previous else "") + live_stats_text(current, previous, exact))
        previous = current
        time.sleep(seconds)


@click.group()
def lab():
    """Build or remove the network-namespace lab (client, load balancer with the TUN, servers)."""


@lab.command("up")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Take the VIPs and reals from this config (default: the embedded one).")
@click.option("--prefix", default="l4emu", show_default=True, help="Namespace names start with this.")
@click.option("--tun", "tun_name", default="l4emu0", show_default=True, help="TUN device in the load balancer.")
def lab_up(config_path, prefix, tun_name):
    """Make the namespaces, veth pairs, TUN device and routes, and print what was made."""
    try:
        the_lab = Lab.from_config(config_path, prefix, tun_name)
        the_lab.up()
    except (configmod.ConfigError, LabError) as exc:
        _fail(str(exc))
    click.echo(the_lab.describe(config_path))


@lab.command("down")
@click.option("--prefix", default="l4emu", show_default=True)
def lab_down(prefix):
    """Stop everything running in the lab and remove its namespaces (veths and TUN go with them)."""
    removed = Lab(prefix).down()
    click.echo(f"removed {', '.join(removed)}" if removed else f"no lab named {prefix}")
