"""`l4emu conntrack`, `sockets` and `stats`: a state file or a live switch, as ipvsadm and ss show them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from l4emu.cli import fail

if TYPE_CHECKING:
    pass


def _load_state(path: Path) -> dict:
    import json

    from l4emu import config as configmod

    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"{path}: {exc.strerror or exc}")
    except UnicodeDecodeError as exc:  # a capture given where a state file belongs
        fail(f"{path}: not a state file ({configmod.not_text(exc)}; write one with `l4emu replay ... --state-out`)")
    except json.JSONDecodeError as exc:
        fail(f"{path}: not a state file (invalid JSON: {exc})")
    if not isinstance(state, dict) or state.get("l4emu_state") != 1:
        fail(f"{path}: not an l4emu state file (write one with `l4emu replay ... --state-out`)")
    return state


def _source(state, control_path, op) -> dict:
    """A state file, or (--control) a running `l4emu live`: the same snapshot shape either way."""
    from l4emu.cli import live as live_cli

    if (state is None) == (control_path is None):
        fail("give a STATE file or --control PATH (one of them)")
    if state is None:
        return live_cli.ask(control_path, op)
    return _load_state(state)


def state_or_control(command):
    """STATE (a file from `replay --state-out`) or --control SOCK (a running `l4emu live`): where every
    view takes its snapshot from (`_source`)."""
    command = click.option(
        "--control",
        "control_path",
        type=click.Path(dir_okay=False),
        help="Ask a running `l4emu live` instead of reading a state file.",
    )(command)
    return click.argument("state", required=False, type=click.Path(dir_okay=False, path_type=Path))(command)


@click.command()
@state_or_control
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def conntrack(state, control_path, as_json):
    """Show the connection table of a state file or a live switch, like `ipvsadm -L -n -c`."""
    from l4emu.render import views

    snapshot = _source(state, control_path, "snapshot")
    click.echo(views.to_json(snapshot["connections"]) if as_json else views.conntrack_text(snapshot))


@click.command()
@state_or_control
@click.option("--host", "host", metavar="IP", help="Only this emulated host.")
@click.option("--json", "as_json", is_flag=True, help="Print the hosts, their sockets and counters as JSON.")
def sockets(state, control_path, host, as_json):
    """Show the sockets of the emulated real servers, like `ss -tuan` (plus each socket's handle)."""
    from l4emu.render import views

    snapshot = _source(state, control_path, "sockets")
    hosts = snapshot.get("sockets", [])
    if host is not None:
        hosts = [h for h in hosts if h["host"] == host.strip("[]")]
        if not hosts:
            emulated = ", ".join(h["host"] for h in snapshot.get("sockets", [])) or "none"
            fail(f"no emulated host {host} (emulated: {emulated})")
    click.echo(views.to_json(hosts) if as_json else views.sockets_text(hosts))


@click.command()
@state_or_control
@click.option(
    "--watch",
    type=click.FloatRange(min=0.1),
    metavar="SECONDS",
    help="With --control: print again every SECONDS, with rates (ipvsadm --rate columns).",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    metavar="N",
    help="With --watch: stop after N frames (default: until Ctrl-C).",
)
@click.option("--exact", is_flag=True, help="Exact numbers instead of K/M/G suffixes.")
@click.option("--json", "as_json", is_flag=True, help="Print services and reals as JSON.")
def stats(state, control_path, watch, count, exact, as_json):
    """Show services and reals of a state file or a live switch, like `ipvsadm -L -n` and `ipvsadm -L -n --stats`."""
    from l4emu.cli import live as live_cli
    from l4emu.render import report, views

    if watch and not as_json:
        if control_path is None:
            fail("--watch needs --control")
        return live_cli.watch_stats(control_path, watch, exact, count)
    snapshot = _source(state, control_path, "stats")
    if as_json:
        click.echo(views.to_json(snapshot["services"]))
        return
    size = snapshot["stats"].get("max_connections", 0)
    click.echo(views.services_text(snapshot, size) + "\n\n" + report.stats_text(snapshot, exact))
