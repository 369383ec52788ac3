"""The `l4emu live`, `real` and `lab` commands, and the live views (`--control`) of conntrack and stats."""

from __future__ import annotations

import logging
import os
import sys
import time

import click

from l4emu.cli import config_option
from l4emu.errors import L4emuError
from l4emu.io.tun.device import enter_netns, open_tun
from l4emu.live import control
from l4emu.live.lab import Lab
from l4emu.render import report, views
from l4emu.switch import Switch

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMAT = "%(asctime)s.%(msecs)03d l4emu[%(process)d] %(levelname)s %(message)s"


def setup_logging(level: str) -> None:
    """The daemon's log: the `l4emu` loggers to stderr, one timestamped line per event."""
    logger = logging.getLogger("l4emu")
    for old in list(logger.handlers):
        logger.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def _fail(message: str, code: int = 2):
    click.echo(f"l4emu: error: {message}", err=True)
    sys.exit(code)


@click.command()
@click.option("--tun", "tun_name", required=True, help="TUN device to attach to (raw IP).")
@config_option("TOML config (default: the embedded one).")
@click.option("--control", "control_path", type=click.Path(dir_okay=False), help="Serve the control socket here.")
@click.option("--control-group", help="Let this group use the control socket (mode 0660 instead of 0600).")
@click.option("--pcap-out", type=click.Path(dir_okay=False), help="Record what passed (.pcap or .pcapng).")
@click.option(
    "--snaplen",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="BYTES",
    help="With --pcap-out: keep at most BYTES of each packet, as tcpdump -s (the record keeps the "
    "real length); 0 keeps whole packets (64 KiB super-packets with offloads).",
)
@click.option("--create", is_flag=True, help="Make the device if it does not exist (it goes when live stops).")
@click.option("--user", help="Drop root for this user once the device and the socket are open.")
@click.option("--netns", help="Run in this network namespace (as `ip netns exec NAME` would).")
@click.option(
    "--offload/--no-offload",
    default=True,
    show_default=True,
    help="Ask the TUN for checksum and segmentation offloads (64 KiB super-packets).",
)
@click.option("--seed", type=int, help="Seed for the hash secret and random choices.")
@click.option(
    "--metrics",
    metavar="HOST:PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (node_exporter's IPVS names and l4emu's own); "
    "port 0 picks a free one (printed at start).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON.")
@click.option(
    "--gslb",
    "gslb_path",
    type=click.Path(dir_okay=False),
    help="A GSLB config: UDP DNS queries to its records' listen addresses arriving on the TUN are answered.",
)
@click.option("--gslb-down", multiple=True, metavar="SITE", help="With --gslb: a site that is down (repeatable).")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    help="Log events (refused control requests, TUN write errors, plugin exceptions, reals set down or "
    "up) to stderr at this level and above, one line each.",
)
def live(
    tun_name,
    config_path,
    control_path,
    control_group,
    pcap_out,
    snaplen,
    create,
    user,
    netns,
    offload,
    seed,
    metrics,
    as_json,
    gslb_path,
    gslb_down,
    log_level,
):
    """Run the switch on a TUN device until SIGINT/SIGTERM, then print the summary."""
    from l4emu.live.loop import Live

    setup_logging(log_level)
    if snaplen and not pcap_out:
        _fail("--snaplen is for --pcap-out: give --pcap-out too")
    if gslb_down and not gslb_path:
        _fail("--gslb-down is for --gslb: give --gslb too")
    try:
        dns = None
        if gslb_path:
            from l4emu.cli.gslb import load_config
            from l4emu.gslb.tun import TunAnswerer

            dns = TunAnswerer(load_config(gslb_path), gslb_down, seed)
        if netns:
            enter_netns(netns)
        switch = Switch.from_config(config_path, seed)
        tun = open_tun(tun_name, create, offload)
        try:
            reload_path = str(config_path) if config_path else None  # what SIGHUP re-reads
            runner = Live(switch, tun, control_path, control_group, pcap_out, user, snaplen, metrics, reload_path, dns)
        except BaseException:
            tun.close()
            raise
    except (L4emuError, OSError) as exc:
        _fail(str(exc))
    click.echo(
        f"live on {tun_name}: offloads {','.join(tun.offloads) or 'off'}"
        + (f", control {control_path}" if control_path else "")
        + (f", metrics http://{runner.metrics.address}/metrics" if runner.metrics else "")
        + "; SIGHUP reloads the config, SIGINT or SIGTERM stops",
        err=True,
    )
    summary = runner.run()
    click.echo(views.to_json(summary) if as_json else live_summary_text(summary))
    if summary["error"]:
        _fail(summary["error"])


def live_summary_text(summary: dict) -> str:
    t = summary["tun"]
    return (
        views.summary_text(summary)
        + (
            f"\ntun          {t['name']}: {t['packets_in']:,} packets in ({t['gso_in']:,} GSO super-packets), "
            f"{t['packets_out']:,} out ({t['gso_out']:,} GSO UDP writes), {t['write_errors']:,} write errors; "
            f"offloads {','.join(t['offloads']) or 'off'}"
        )
        + (
            f"\ndns          {', '.join(f'{k} {n:,}' for k, n in summary['dns'].items()) or 'no queries'}"
            if "dns" in summary
            else ""
        )
        + (
            f"\ndns over tcp {', '.join(f'{k} {n:,}' for k, n in summary['dns_tcp'].items())}"
            if "dns_tcp" in summary
            else ""
        )
    )


def ask(path, op: str, **args):
    """One control request; a refusal or an unreachable socket ends the command with its reason."""
    try:
        return control.request(path, op, **args)
    except control.ControlError as exc:
        _fail(str(exc))


CONTROL_HELP = "Control socket of the running `l4emu live` (its --control PATH)."


@click.group()
@click.option("--control", "control_path", type=click.Path(dir_okay=False), metavar="SOCK", help=CONTROL_HELP)
@click.pass_context
def real(ctx, control_path):
    """Change a real server of a running `l4emu live` (admin: root or the socket's owner).

    The socket goes before or after the subcommand: `l4emu real --control SOCK set ...` or
    `l4emu real set ... --control SOCK`."""
    ctx.obj = {"control": control_path}


@real.command("set")
@click.argument("endpoint", metavar="IP:PORT")
@click.option("--control", "control_path", type=click.Path(dir_okay=False), metavar="SOCK", help=CONTROL_HELP)
@click.option("--weight", type=int, help="New weight (0 drains: no new connections, open ones finish).")
@click.option("--down", is_flag=True, help="Mark the real down (no new connections).")
@click.option("--up", is_flag=True, help="Mark the real up again.")
@click.pass_context
def real_set(ctx, endpoint, control_path, weight, down, up):
    """Set a real's weight or mark it down/up."""
    group_path = (ctx.obj or {}).get("control")
    if control_path and group_path and control_path != group_path:
        _fail(f"two control sockets given ({group_path} and {control_path}): give --control once")
    control_path = control_path or group_path
    if control_path is None:
        _fail("give the control socket: --control PATH (of the running `l4emu live`)")
    if down and up:
        _fail("--down and --up are mutually exclusive")
    state = "down" if down else "up" if up else None
    if weight is None and state is None:
        _fail("give --weight N, --down or --up")
    done = ask(control_path, "set_real", endpoint=endpoint, weight=weight, state=state)
    click.echo(
        f"{done['endpoint']}: "
        + ", ".join([f"weight {weight}"] * (weight is not None) + [f"{state}"] * (state is not None))
    )


def live_stats_text(current: dict, previous: dict | None, exact: bool) -> str:
    """ipvsadm -L -n, --stats, and with a previous sample --rate (CPS InPPS OutPPS InBPS OutBPS)."""
    size = current["stats"].get("max_connections", 0)
    text = views.services_text(current, size) + "\n\n" + report.stats_text(current, exact)
    if previous is None:
        return text
    seconds = max((current["clock_ns"] - previous["clock_ns"]) / 1e9, 1e-9)
    before = {(svc["vip"], r["address"]): r for svc in previous["services"] for r in svc["reals"]}
    by_real = {}
    for svc in current["services"]:
        for r in svc["reals"]:
            by_real[id(r)] = [(r[k] - before[(svc["vip"], r["address"])][k]) / seconds for k in report.STATS_KEYS]
    rates = report.per_real_table(
        current, "       CPS    InPPS   OutPPS    InBPS   OutBPS", lambda real: by_real[id(real)], exact
    )
    return text + "\n\n" + rates


CLEAR = "\033[H\033[2J"  # cursor home, erase the screen: what `watch` does between frames


def watch_stats(control_path, seconds: float, exact: bool, count: int | None = None) -> None:
    """Like `watch -n SECONDS l4emu stats ...`: on a terminal each frame replaces the last, under a header
    line with the time; into a pipe or a file the frames follow each other, a blank line between them,
    with no escape codes. Ends after `count` frames (as `vmstat 1 5` does), at SIGINT (exit 0), or
    when the live switch goes (exit 2)."""
    command = "l4emu " + " ".join(sys.argv[1:])
    terminal = sys.stdout.isatty()
    previous, shown = None, 0
    try:
        while count is None or shown < count:
            current = ask(control_path, "stats")
            header = f"Every {seconds:g}s: {command}  {time.strftime('%a %b %d %H:%M:%S %Y')}"
            frame = header + "\n\n" + live_stats_text(current, previous, exact)
            sys.stdout.write((CLEAR if terminal else "\n" if previous else "") + frame + "\n")
            sys.stdout.flush()
            previous, shown = current, shown + 1
            if count is None or shown < count:
                time.sleep(seconds)
    except KeyboardInterrupt:
        sys.exit(0)
    except BrokenPipeError:  # `... --watch 1 | head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


@click.group()
def lab():
    """Build or remove the network-namespace lab (client, load balancer with the TUN, servers)."""


@lab.command("up")
@config_option("Take the VIPs and reals from this config (default: the embedded one).")
@click.option("--prefix", default="l4emu", show_default=True, help="Namespace names start with this.")
@click.option("--tun", "tun_name", default="l4emu0", show_default=True, help="TUN device in the load balancer.")
def lab_up(config_path, prefix, tun_name):
    """Make the namespaces, veth pairs, TUN device and routes, and print what was made."""
    try:
        the_lab = Lab.from_config(config_path, prefix, tun_name)
        the_lab.up()
    except L4emuError as exc:
        _fail(str(exc))
    click.echo(the_lab.describe(config_path))


@lab.command("down")
@click.option(
    "--prefix",
    default="l4emu",
    show_default=True,
    help="Remove the lab whose namespaces start with this (as given to `lab up --prefix`).",
)
def lab_down(prefix):
    """Stop everything running in the lab and remove its namespaces (veths and TUN go with them)."""
    removed = Lab(prefix).down()
    click.echo(f"removed {', '.join(removed)}" if removed else f"no lab named {prefix}")
