"""The `l4emu` command: the only place that parses arguments or prints."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from l4emu import config as configmod
from l4emu import inspect, schedulers
from l4emu.io import CaptureError, WriteError
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
def replay(capture, output, config_path, vips, reals, scheduler, seed, as_json, state_out, annotate):
    """Replay CAPTURE through the switch and summarize what it did."""
    try:
        switch = _build_switch(config_path, vips, reals, scheduler, seed)
        show_bar = not as_json and capture.exists() and capture.stat().st_size >= PROGRESS_MIN_BYTES
        with click.progressbar(length=capture.stat().st_size if show_bar else 0, label="replaying",
                               file=sys.stderr, hidden=not show_bar) as bar:
            summary = run_replay(capture, switch, output, annotate,
                                 progress=(lambda done, total: bar.update(done - bar.pos)) if show_bar else None)
    except (configmod.ConfigError, CaptureError, WriteError, ValueError, OSError) as exc:
        fail(str(exc))
    if state_out:
        try:
            state_out.write_text(inspect.to_json(switch.snapshot()) + "\n")
        except OSError as exc:
            fail(f"{state_out}: {exc.strerror or exc}")
    click.echo(inspect.to_json(summary) if as_json else inspect.summary_text(summary))
    if summary["error"]:
        fail(summary["error"])


def _build_switch(config_path, vips, reals, scheduler, seed) -> Switch:
    if vips or reals:
        if config_path:
            raise configmod.ConfigError("--vip", "give either -c/--config or --vip/--real, not both")
        if not (vips and reals):
            raise configmod.ConfigError("--vip", "--vip and --real go together")
        known = set(schedulers.available())
        document = configmod.from_flags(list(vips), list(reals), scheduler, known)
        return Switch(configmod.from_dict(document, known), seed)
    return Switch.from_config(config_path, seed)


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


@main.command()
@click.argument("state", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def conntrack(state, as_json):
    """Show the connection table of a state file, like `ipvsadm -L -n -c`."""
    snapshot = _load_state(state)
    click.echo(inspect.to_json(snapshot["connections"]) if as_json else inspect.conntrack_text(snapshot))


if __name__ == "__main__":
    main()
