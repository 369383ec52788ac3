"""The `l4emu` command: the only place that parses arguments or prints."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from l4emu import config as configmod
from l4emu import inspect, live_cli, report, schedulers
from l4emu.compare import compare as run_compare, unattributed_warnings
from l4emu.events import parse_event
from l4emu.io import CaptureError, WriteError
from l4emu.io.writer import write_text_atomic
from l4emu.replay import replay as run_replay
from l4emu.switch import Switch

PROGRESS_MIN_BYTES = 8 << 20    # smaller captures finish before a bar would help


def fail(message: str, code: int = 2):
    click.echo(f"l4emu: error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="l4emu")
def main():
    """l4emu: see, test and measure what an L4 load balancer does to real traffic."""


@main.command()
@click.argument("capture", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the translated packets here (.pcap or .pcapng).")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML config (default: the embedded one the bundled samples were made for).")
@click.option("--vip", "vips", multiple=True, metavar="IP:PORT[/tcp|udp]",
              help="A virtual service instead of a config file (with --real).")
@click.option("--real", "reals", multiple=True, metavar="IP:PORT", help="A real server of every --vip.")
@click.option("--scheduler", default="rr", show_default=True, help="Scheduler for --vip services.")
@click.option("--seed", type=int, help="Seed for the hash secret and random choices: same seed, same output.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("--state-out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the final state (connection table, services, counters) as JSON.")
@click.option("--annotate", is_flag=True,
              help="Comment every packet with the switch's decision (pcapng output; dropped packets kept).")
@click.option("--event", "events", multiple=True, metavar="T:ACTION:IP:PORT[:W]",
              help="Change a real at T seconds after the first packet: T:down:IP:PORT, T:up:IP:PORT, "
                   "T:weight:IP:PORT:W.")
@click.option("--inside", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write what the reals see: packets to them after DNAT, their answers before SNAT.")
@click.option("--capture-servers", metavar="[VIP=]IP:PORT,...",
              help="The servers the capture was taken with (behind another load balancer): clients' packets "
                   "to them go to the service, their packets are its answers.")
@click.option("--at", "at_times", multiple=True, type=click.FloatRange(min=0), metavar="T",
              help="Also write the state at T seconds after the first packet, beside --state-out as "
                   "NAME@T.json (repeatable).")
def replay(capture, output, config_path, vips, reals, scheduler, seed, as_json, state_out, annotate, events,
           inside, capture_servers, at_times):
    """Replay CAPTURE through the switch and summarize what it did.

    With emulated reals (emulated = true in the config), their hosts answer: -o then holds the whole
    conversation as the clients see it."""
    if at_times and not state_out:
        fail("--at writes its states beside --state-out: give --state-out too")
    try:
        events = [parse_event(e) for e in events]
        switch = _build_switch(config_path, vips, reals, scheduler, seed, capture_servers)
        show_bar = not as_json and capture.exists() and capture.stat().st_size >= PROGRESS_MIN_BYTES
        with click.progressbar(length=capture.stat().st_size if show_bar else 0, label="replaying",
                               file=sys.stderr, hidden=not show_bar) as bar:
            summary = run_replay(capture, switch, output, annotate,
                                 progress=(lambda done, total: bar.update(done - bar.pos)) if show_bar else None,
                                 events=events, inside=inside, at=at_times,
                                 on_at=lambda t, snap: _write_state(at_path(state_out, t), snap))
    except (configmod.ConfigError, CaptureError, WriteError, ValueError, OSError) as exc:
        fail(str(exc))
    if state_out:
        _write_state(state_out, switch.snapshot())
    click.echo(inspect.to_json(summary) if as_json else inspect.summary_text(summary))
    for warning in summary["warnings"]:
        click.echo(f"l4emu: warning: {warning}", err=True)
    if summary["error"]:
        fail(summary["error"])


def at_path(state_out: Path, t: float) -> Path:
    """Where --at T goes: state.json -> state@T.json (T as given, in seconds after the first packet)."""
    return state_out.with_name(f"{state_out.stem}@{t:g}{state_out.suffix or '.json'}")


def _write_state(path: Path, snapshot: dict) -> None:
    try:
        write_text_atomic(path, inspect.to_json(snapshot) + "\n")    # a failed write leaves no half file
    except OSError as exc:
        fail(f"{path}: {exc.strerror or exc}")


def _build_switch(config_path, vips, reals, scheduler, seed, capture_servers=None) -> Switch:
    return Switch(_build_config(config_path, vips, reals, scheduler, capture_servers), seed)


def _build_config(config_path, vips, reals, scheduler, capture_servers=None) -> configmod.Config:
    """From -c (or the embedded default), or from --vip/--real; plus --capture-servers."""
    if vips or reals:
        if config_path:
            raise configmod.ConfigError("--vip", "give either -c/--config or --vip/--real, not both")
        if not (vips and reals):
            raise configmod.ConfigError("--vip", "--vip and --real go together")
        known = set(schedulers.available())
        config = configmod.from_dict(configmod.from_flags(list(vips), list(reals), scheduler, known), known)
    else:
        config = configmod.load(config_path, schedulers.catalog())
    return configmod.with_capture_servers(config, capture_servers) if capture_servers else config


def _load_state(path: Path) -> dict:
    try:
        state = json.loads(path.read_text())
    except OSError as exc:
        fail(f"{path}: {exc.strerror or exc}")
    except json.JSONDecodeError as exc:
        fail(f"{path}: not a state file (invalid JSON: {exc})")
    if not isinstance(state, dict) or state.get("l4emu_state") != 1:
        fail(f"{path}: not an l4emu state file (write one with `l4emu replay ... --state-out`)")
    return state


def _source(state, control_path, op) -> dict:
    """A state file, or (--control) a running `l4emu live`: the same snapshot shape either way."""
    if (state is None) == (control_path is None):
        fail("give a STATE file or --control PATH (one of them)")
    if state is None:
        return live_cli.ask(control_path, op)
    return _load_state(state)


@main.command()
@click.argument("state", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--control", "control_path", type=click.Path(dir_okay=False),
              help="Ask a running `l4emu live` instead of reading a state file.")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def conntrack(state, control_path, as_json):
    """Show the connection table of a state file or a live switch, like `ipvsadm -L -n -c`."""
    snapshot = _source(state, control_path, "snapshot")
    click.echo(inspect.to_json(snapshot["connections"]) if as_json else inspect.conntrack_text(snapshot))


@main.command()
@click.argument("state", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--control", "control_path", type=click.Path(dir_okay=False),
              help="Ask a running `l4emu live` instead of reading a state file.")
@click.option("--host", "host", metavar="IP", help="Only this emulated host.")
@click.option("--json", "as_json", is_flag=True, help="Print the hosts, their sockets and counters as JSON.")
def sockets(state, control_path, host, as_json):
    """Show the sockets of the emulated real servers, like `ss -tuan` (plus each socket's handle)."""
    snapshot = _source(state, control_path, "sockets")
    hosts = snapshot.get("sockets", [])
    if host is not None:
        hosts = [h for h in hosts if h["host"] == host.strip("[]")]
        if not hosts:
            fail(f"no emulated host {host} (emulated: {', '.join(h['host'] for h in snapshot.get('sockets', [])) or 'none'})")
    click.echo(inspect.to_json(hosts) if as_json else inspect.sockets_text(hosts))


@main.command()
@click.argument("state", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--control", "control_path", type=click.Path(dir_okay=False),
              help="Ask a running `l4emu live` instead of reading a state file.")
@click.option("--watch", type=click.FloatRange(min=0.1), metavar="SECONDS",
              help="With --control: print again every SECONDS, with rates (ipvsadm --rate columns).")
@click.option("--exact", is_flag=True, help="Exact numbers instead of K/M/G suffixes.")
@click.option("--json", "as_json", is_flag=True, help="Print services and reals as JSON.")
def stats(state, control_path, watch, exact, as_json):
    """Show services and reals of a state file or a live switch, like `ipvsadm -L -n` and `ipvsadm -L -n --stats`."""
    if watch and not as_json:
        if control_path is None:
            fail("--watch needs --control")
        return live_cli.watch_stats(control_path, watch, exact)
    snapshot = _source(state, control_path, "stats")
    if as_json:
        click.echo(inspect.to_json(snapshot["services"]))
        return
    size = snapshot["stats"].get("max_connections", 0)
    click.echo(inspect.services_text(snapshot, size) + "\n\n" + report.stats_text(snapshot, exact))


@main.command()
@click.argument("capture", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML config (default: the embedded one).")
@click.option("--schedulers", "names", default="rr", show_default=True,
              help="Comma-separated schedulers to compare, e.g. rr,wlc,sh,mh,p2c.")
@click.option("--event", "events", multiple=True, metavar="T:ACTION:IP:PORT[:W]",
              help="As for replay; applied in every run.")
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed in every run.")
@click.option("--capture-servers", metavar="[VIP=]IP:PORT,...",
              help="As for replay: the servers the capture was taken with stand for the service.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
              help="Draw active connections per real over time, a panel per scheduler (PNG; needs matplotlib).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON (with the time series).")
def compare(capture, config_path, names, events, seed, capture_servers, plot, as_json):
    """Replay CAPTURE once per scheduler and compare how each spreads the load."""
    try:
        events = [parse_event(e) for e in events]
        known = set(schedulers.available())
        chosen = [n.strip() for n in names.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in known]
        if not chosen or unknown:
            raise configmod.ConfigError("--schedulers", f"unknown scheduler(s) {', '.join(unknown) or '(none given)'}"
                                                        f" (known: {', '.join(sorted(known))})")
        config = _build_config(config_path, (), (), None, capture_servers)
        result = run_compare(capture, config, chosen, events, seed)
        if plot:
            report.compare_plot(result, plot)
    except (configmod.ConfigError, CaptureError, ValueError, OSError, RuntimeError) as exc:
        fail(str(exc))
    click.echo(inspect.to_json(result) if as_json else report.compare_text(result))
    for warning in unattributed_warnings(result):
        click.echo(f"l4emu: warning: {warning}", err=True)


for _command in (live_cli.live, live_cli.real, live_cli.lab):
    main.add_command(_command)

if __name__ == "__main__":
    main()
