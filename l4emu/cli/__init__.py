"""The `l4emu` command: the only place that parses arguments or prints.

Start-up is part of every command's run time, so this module imports click and little else: each command
imports the parts of l4emu it uses when it runs, and the live, real and lab commands (cli/live.py, with
the TUN device, the lab and the control socket) are loaded only when one of them is named. Their short
help is kept here, so `l4emu --help` lists every command without loading any.
tests/test_startup.py fails when a plain `l4emu replay` imports what it does not use.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from l4emu.errors import L4emuError  # light: the base class alone

if TYPE_CHECKING:  # for annotations only; the commands import what they use
    from l4emu import config as configmod
    from l4emu.switch import Switch

PROGRESS_MIN_BYTES = 8 << 20  # smaller captures finish before a bar would help


def fail(message: str, code: int = 2):
    click.echo(f"l4emu: error: {message}", err=True)
    sys.exit(code)


# Commands defined in other modules, imported only when run: name -> ("module:attribute", short help for
# `l4emu --help`, which lists them without importing them).
LAZY_COMMANDS = {
    "live": ("l4emu.cli.live:live", "Run the switch on a TUN device (live traffic)."),
    "real": ("l4emu.cli.live:real", "Change a real of a running `l4emu live`."),
    "lab": ("l4emu.cli.live:lab", "Build or remove the network-namespace lab."),
}


def config_option(help_text: str = "TOML config (default: the embedded one).") -> Callable:
    """-c/--config, as every command that reads a config takes it."""
    return click.option(
        "-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help=help_text
    )


def _fixed_help(text: str) -> Callable[[int], str]:
    """A short-help getter for a command not loaded yet: its text from LAZY_COMMANDS, at any width."""
    return lambda limit: text


class LazyGroup(click.Group):
    """A click group that also lists LAZY_COMMANDS, importing one only when it is run or asked for by
    name (`l4emu live --help`, shell completion)."""

    def __init__(self, *args, lazy: dict[str, tuple[str, str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx):
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx, name):
        if name not in self.commands and name in self.lazy:
            target, short_help = self.lazy[name]
            module, attribute = target.split(":")
            command = getattr(importlib.import_module(module), attribute)
            command.short_help = short_help
            self.add_command(command, name)
        return self.commands.get(name)

    def format_commands(self, ctx, formatter):
        """As click.Group.format_commands, with the short help of commands not yet loaded from LAZY_COMMANDS."""
        rows: list[tuple[str, Callable[[int], str]]] = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name)
            if command is None:
                rows.append((name, _fixed_help(self.lazy[name][1])))
            elif not command.hidden:
                rows.append((name, command.get_short_help_str))
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _ in rows)
            with formatter.section("Commands"):
                formatter.write_dl([(name, short_help(limit)) for name, short_help in rows])


@click.group(cls=LazyGroup, lazy=LAZY_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="l4emu")
def main():
    """l4emu: see, test and measure what an L4 load balancer does to real traffic."""


class Seconds(click.ParamType):
    """A time in seconds from 0, kept as the user spelled it: `--at 1.0` names its file state@1.0.json
    (a float would print as 1), so the file is where the user will look for it."""

    name = "seconds"

    def convert(self, value, param, ctx):
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not 0 <= seconds < float("inf"):
            self.fail(f"{value!r} is not a time from 0 seconds on", param, ctx)
        return text


@main.command(short_help="Replay a capture through the switch; summarize.")
@click.argument("capture", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the translated packets here (.pcap or .pcapng, or see --format).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["pcap", "pcapng"]),
    help="Output format of -o and --inside (default: from the extension; pcap for a device or FIFO).",
)
@config_option("TOML config (default: the embedded one the bundled samples were made for).")
@click.option(
    "--vip",
    "vips",
    multiple=True,
    metavar="IP:PORT[/tcp|udp]",
    help="A virtual service instead of a config file (with --real).",
)
@click.option("--real", "reals", multiple=True, metavar="IP:PORT", help="A real server of every --vip.")
@click.option("--scheduler", default="rr", show_default=True, help="Scheduler for --vip services.")
@click.option(
    "--seed",
    type=int,
    help="Seed for the hash secret and random choices: same seed, same output (default: drawn at random).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option(
    "--state-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the final state (connection table, services, counters) as JSON.",
)
@click.option(
    "--annotate",
    is_flag=True,
    help="Comment every packet with the switch's decision (pcapng output; dropped packets kept).",
)
@click.option(
    "--event",
    "events",
    multiple=True,
    metavar="T:ACTION:IP:PORT[:W]",
    help="Change a real at T seconds after the first packet: T:down:IP:PORT, T:up:IP:PORT, T:weight:IP:PORT:W.",
)
@click.option(
    "--inside",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write what the reals see: packets to them after DNAT, their answers before SNAT.",
)
@click.option(
    "--capture-servers",
    metavar="[VIP=]IP:PORT,...",
    help="The servers the capture was taken with (behind another load balancer): clients' packets "
    "to them go to the service, their packets are its answers.",
)
@click.option(
    "--at",
    "at_times",
    multiple=True,
    type=Seconds(),
    metavar="T",
    help="Also write the state at T seconds after the first packet, beside --state-out as NAME@T.json (repeatable).",
)
def replay(
    capture,
    output,
    fmt,
    config_path,
    vips,
    reals,
    scheduler,
    seed,
    as_json,
    state_out,
    annotate,
    events,
    inside,
    capture_servers,
    at_times,
):
    """Replay CAPTURE through the switch and summarize what it did.

    With emulated reals (emulated = true in the config), their hosts answer: -o then holds the whole
    conversation as the clients see it."""
    from l4emu.events import parse_event
    from l4emu.render import views
    from l4emu.replay import replay as run_replay

    if at_times and not state_out:
        fail("--at writes its states beside --state-out: give --state-out too")
    _refuse_overwriting(capture, {"-o": output, "--inside": inside, "--state-out": state_out})
    spellings = at_spellings(at_times)
    try:
        events = [parse_event(e) for e in events]
        switch = _build_switch(config_path, vips, reals, scheduler, seed, capture_servers)
        show_bar = not as_json and capture.exists() and capture.stat().st_size >= PROGRESS_MIN_BYTES
        # (no hidden bar when none is shown: click's progress bar imports its terminal code)
        with (
            click.progressbar(length=capture.stat().st_size, label="replaying", file=sys.stderr)
            if show_bar
            else contextlib.nullcontext()
        ) as bar:
            summary = run_replay(
                capture,
                switch,
                output,
                annotate,
                progress=(lambda done, total: bar.update(done - bar.pos)) if bar else None,
                events=events,
                inside=inside,
                at=list(spellings),
                fmt=fmt,
                on_at=lambda t, snap: _write_states(state_out, spellings[t], snap),
            )
    except (L4emuError, OSError) as exc:
        fail(str(exc))
    if state_out:
        _write_state(state_out, switch.snapshot())
    click.echo(views.to_json(summary) if as_json else views.summary_text(summary))
    for warning in summary["warnings"]:
        click.echo(f"l4emu: warning: {warning}", err=True)
    if summary["error"]:
        fail(summary["error"])


def at_spellings(at_times) -> dict[float, list[str]]:
    """Each --at moment with the spellings that asked for it (`--at 1 --at 1.0`: one moment, two files)."""
    spellings: dict[float, list[str]] = {}
    for text in at_times:
        if text not in spellings.setdefault(float(text), []):
            spellings[float(text)].append(text)
    return spellings


def at_path(state_out: Path, t: str) -> Path:
    """Where --at T goes: state.json -> state@T.json (T as the user wrote it, seconds after the first packet)."""
    return state_out.with_name(f"{state_out.stem}@{t}{state_out.suffix or '.json'}")


def _same_file(a: Path, b: Path) -> bool:
    """One file by two names (a symlink, ../dir/x)? samefile when both exist, else the resolved paths."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _refuse_overwriting(capture: Path, outputs: dict) -> None:
    """An output that is the capture would replace the input with its own translation, and two outputs
    on one file would overwrite each other: refuse both before reading a packet. Devices (/dev/null)
    may take several outputs."""
    given = [(flag, path) for flag, path in outputs.items() if path is not None]
    for flag, path in given:
        if _same_file(capture, path):
            fail(f"{path}: {flag} is the input capture {capture}: write it elsewhere")
    for k, (flag, path) in enumerate(given):
        for other, earlier in given[:k]:
            if _same_file(earlier, path) and not (path.exists() and not path.is_file()):
                fail(f"{path}: given to both {other} and {flag}: give each its own file")


def _write_states(state_out: Path, spellings: list[str], snapshot: dict) -> None:
    """One --at moment's state, under each spelling that asked for it."""
    for text in spellings:
        _write_state(at_path(state_out, text), snapshot)


def _write_state(path: Path, snapshot: dict) -> None:
    from l4emu.io.pcap.writer import write_text_atomic
    from l4emu.render import views

    try:
        write_text_atomic(path, views.to_json(snapshot) + "\n")  # a failed write leaves no half file
    except OSError as exc:
        fail(f"{path}: {exc.strerror or exc}")


def _build_switch(config_path, vips, reals, scheduler, seed, capture_servers=None) -> Switch:
    from l4emu.switch import Switch

    return Switch(_build_config(config_path, vips, reals, scheduler, capture_servers), seed)


def _build_config(config_path, vips, reals, scheduler, capture_servers=None) -> configmod.Config:
    """From -c (or the embedded default), or from --vip/--real; plus --capture-servers."""
    from l4emu import config as configmod
    from l4emu import schedulers

    if vips or reals:
        if config_path:
            raise configmod.ConfigError("--vip", "give either -c/--config or --vip/--real, not both")
        if not (vips and reals):
            raise configmod.ConfigError("--vip", "--vip and --real go together")
        known = schedulers.catalog()  # built-in names without a plugin scan
        config = configmod.from_dict(configmod.from_flags(list(vips), list(reals), scheduler, known), known)
    else:
        config = configmod.load(config_path, schedulers.catalog())
    return configmod.with_capture_servers(config, capture_servers) if capture_servers else config


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


@main.command(short_help="The connection table, like ipvsadm -L -n -c.")
@click.argument("state", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--control",
    "control_path",
    type=click.Path(dir_okay=False),
    help="Ask a running `l4emu live` instead of reading a state file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def conntrack(state, control_path, as_json):
    """Show the connection table of a state file or a live switch, like `ipvsadm -L -n -c`."""
    from l4emu.render import views

    snapshot = _source(state, control_path, "snapshot")
    click.echo(views.to_json(snapshot["connections"]) if as_json else views.conntrack_text(snapshot))


@main.command(short_help="Emulated reals' sockets, like ss -tuan.")
@click.argument("state", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--control",
    "control_path",
    type=click.Path(dir_okay=False),
    help="Ask a running `l4emu live` instead of reading a state file.",
)
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


@main.command(short_help="Services and reals, like ipvsadm -L -n [--stats].")
@click.argument("state", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--control",
    "control_path",
    type=click.Path(dir_okay=False),
    help="Ask a running `l4emu live` instead of reading a state file.",
)
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


# Enough to compare: rotation, least connections, two hashes and a randomized choice.
DEFAULT_COMPARE = "rr,wlc,sh,mh,p2c"


@main.command(short_help="Replay once per scheduler; compare the spread.")
@click.argument("capture", type=click.Path(dir_okay=False, path_type=Path))
@config_option("TOML config (default: the embedded one).")
@click.option(
    "--schedulers", "names", default=DEFAULT_COMPARE, show_default=True, help="Comma-separated schedulers to compare."
)
@click.option(
    "--event", "events", multiple=True, metavar="T:ACTION:IP:PORT[:W]", help="As for replay; applied in every run."
)
@click.option(
    "--seed",
    type=int,
    help="Seed of every run (default: one drawn at random, printed so that the runs can be repeated).",
)
@click.option(
    "--capture-servers",
    metavar="[VIP=]IP:PORT,...",
    help="As for replay: the servers the capture was taken with stand for the service.",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw active connections per real over time, a panel per scheduler and service "
    "(PNG, or .svg/.pdf; needs matplotlib).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON (with the time series).")
def compare(capture, config_path, names, events, seed, capture_servers, plot, as_json):
    """Replay CAPTURE once per scheduler and compare how each spreads the load."""
    from l4emu import config as configmod
    from l4emu import schedulers
    from l4emu.compare import compare as run_compare
    from l4emu.events import parse_event
    from l4emu.render import report, views

    if plot is not None:
        _refuse_overwriting(capture, {"--plot": plot})
    try:
        events = [parse_event(e) for e in events]
        known = schedulers.catalog()  # built-in names without a plugin scan
        chosen = [n.strip() for n in names.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in known]
        if not chosen or unknown:
            raise configmod.ConfigError(
                "--schedulers",
                f"unknown scheduler(s) {', '.join(unknown) or '(none given)'} (known: {', '.join(sorted(known))})",
            )
        config = _build_config(config_path, (), (), None, capture_servers)
        result = run_compare(capture, config, chosen, events, seed)
    except (L4emuError, OSError) as exc:
        fail(str(exc))
    # The table first: a plot that cannot be written must not cost the user the numbers.
    click.echo(views.to_json(result) if as_json else report.compare_text(result))
    for warning in dict.fromkeys(w for run in result["runs"] for w in run["warnings"]):
        click.echo(f"l4emu: warning: {warning}", err=True)
    if plot:
        _write_plot(result, plot)


def _write_plot(result: dict, path: Path) -> None:
    from l4emu.render import report

    try:
        report.compare_plot(result, path)
    except L4emuError as exc:  # matplotlib is missing
        fail(str(exc))
    except OSError as exc:
        fail(f"{path}: cannot write the plot: {exc.strerror or exc}")
    except ValueError as exc:  # a format matplotlib does not write (.foo)
        fail(f"{path}: cannot write the plot: {exc}")


@main.command(short_help="Print the embedded default config (--default).")
@click.option("--default", "default", is_flag=True, help="The config used without -c (l4emu/data/default.toml).")
def config(default):
    """Print the embedded default config, the one the bundled samples were made for: a starting point
    for your own (`l4emu config --default > lb.toml`)."""
    from importlib import resources

    if not default:
        fail("config: give --default to print the embedded config (validate a file with `l4emu check FILE`)")
    click.echo(resources.files("l4emu").joinpath("data/default.toml").read_text(), nl=False)


@main.command(short_help="Validate a config file, like keepalived -t.")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False, path_type=Path))
def check(config_path):
    """Validate CONFIG without running anything: one OK line (exit 0), or the first problem (exit 2)."""
    from l4emu import config as configmod
    from l4emu import schedulers

    catalog = schedulers.catalog()
    try:
        checked = configmod.load(config_path, catalog)
    except L4emuError as exc:
        fail(str(exc))
    _check_schedulers(config_path, checked)
    click.echo(f"{config_path}: OK, {check_summary(checked)}")


def _check_schedulers(path: Path, checked: configmod.Config) -> None:
    """Create each service's scheduler as a switch would: a plugin that is installed but fails to load
    (or rejects its options) shows up only here, not in the config's own checks."""
    from l4emu import schedulers

    for i, svc in enumerate(checked.services):
        try:
            schedulers.create(svc.scheduler, svc.scheduler_flags, svc.mh_table_size, 0)
        except Exception as exc:  # whatever a third-party plugin raises, one line
            fail(f"{path}: service[{i}].scheduler: {svc.scheduler!r} cannot be created: {exc}")


def check_summary(checked: configmod.Config) -> str:
    """'3 services (2 tcp, 1 udp), 9 reals (2 emulated), schedulers rr, wlc'."""
    from l4emu import config as configmod

    services = checked.services
    reals = [real for svc in services for real in svc.reals]
    protocols = ", ".join(
        f"{sum(s.protocol == p for s in services)} {p}"
        for p in configmod.PROTOCOLS
        if any(s.protocol == p for s in services)
    )
    emulated = sum(real.emulated for real in reals)
    names = ", ".join(dict.fromkeys(s.scheduler for s in services))
    return (
        f"{len(services)} service{'s' * (len(services) != 1)} ({protocols}), "
        f"{len(reals)} real{'s' * (len(reals) != 1)}"
        + (f" ({emulated} emulated)" if emulated else "")
        + f", scheduler{'s' * (names.count(',') > 0)} {names}"
    )
