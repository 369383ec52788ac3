"""The `l4emu` command: the only place that parses arguments or prints.

Start-up is part of every command's run time, so this module holds only the group and what the
commands share (`fail`, `config_option`, `write_plot`); each command lives with its kin (capture.py: replay, compare;
views.py: conntrack, sockets, stats; config.py: config, check; live.py: live, real, lab;
simulate.py: gen, simulate: the emulated clients; sweep.py: sweep; gslb.py: gslb; report.py: report), is loaded
only when named, and imports the parts of l4emu it uses when it runs. The short help of every command is
kept here, so `l4emu --help` lists them all without loading any.
tests/test_startup.py fails when a plain `l4emu replay` imports what it does not use.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path

import click


def fail(message: str, code: int = 2):
    click.echo(f"l4emu: error: {message}", err=True)
    sys.exit(code)


# Commands defined in other modules, imported only when run: name -> ("module:attribute", short help for
# `l4emu --help`, which lists them without importing them).
LAZY_COMMANDS = {
    "replay": ("l4emu.cli.capture:replay", "Replay a capture through the switch; summarize."),
    "compare": ("l4emu.cli.capture:compare", "Replay once per scheduler; compare the spread."),
    "report": ("l4emu.cli.report:report", "Write an HTML report of a replay over time (or a state file)."),
    "sweep": ("l4emu.cli.sweep:sweep", "Replay a grid of what-ifs in parallel (Dask or processes)."),
    "gslb": ("l4emu.cli.gslb:gslb", "DNS load balancing across sites: replay, check, switch-over."),
    "conntrack": ("l4emu.cli.views:conntrack", "The connection table, like ipvsadm -L -n -c."),
    "sockets": ("l4emu.cli.views:sockets", "Emulated reals' sockets, like ss -tuan."),
    "stats": ("l4emu.cli.views:stats", "Services and reals, like ipvsadm -L -n [--stats]."),
    "config": ("l4emu.cli.config:config", "Print the embedded default config (--default)."),
    "check": ("l4emu.cli.config:check", "Validate a config file, like keepalived -t."),
    "live": ("l4emu.cli.live:live", "Run the switch on a TUN device (live traffic)."),
    "real": ("l4emu.cli.live:real", "Change a real of a running `l4emu live`."),
    "lab": ("l4emu.cli.live:lab", "Build or remove the network-namespace lab."),
    "apply": ("l4emu.cli.operate:apply", "Reload a running `l4emu live`'s config; print ipvsadm steps."),
    "save": ("l4emu.cli.operate:save", "Print a running switch's config, as ipvsadm-save does."),
    "gen": ("l4emu.cli.simulate:gen", "Write emulated clients' packets (a workload) to a capture."),
    "simulate": ("l4emu.cli.simulate:simulate", "Emulated clients to emulated reals: response times."),
}


def write_plot(draw: Callable[[], None], path: Path) -> None:
    """Draw a plot to `path`; each way it fails is one line: matplotlib missing (an L4emuError), a path
    that cannot be written, a format matplotlib does not write (.foo)."""
    from l4emu.errors import L4emuError

    try:
        draw()
    except L4emuError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{path}: cannot write the plot: {exc.strerror or exc}")
    except ValueError as exc:
        fail(f"{path}: cannot write the plot: {exc}")


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
