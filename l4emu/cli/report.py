"""`l4emu report`: one self-contained HTML page of a replay over time, of a running live switch's recent
past, or of a state file."""

from __future__ import annotations

from pathlib import Path

import click

from l4emu.cli import config_option, fail
from l4emu.errors import L4emuError


@click.command()
@click.argument("capture", type=click.Path(dir_okay=False, path_type=Path), required=False)
@config_option("TOML config (default: the embedded one the bundled samples were made for).")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The HTML file to write."
)
@click.option(
    "--from",
    "state",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Report a state file (`replay --state-out`) instead of a capture: one snapshot, no time series.",
)
@click.option(
    "--control",
    "control_path",
    type=click.Path(dir_okay=False),
    metavar="SOCK",
    help="Report a running `l4emu live` (its --control socket): its last hour, sampled every second.",
)
@click.option(
    "--event", "events", multiple=True, metavar="T:ACTION:IP:PORT[:W]", help="As for replay; marked on the charts."
)
@click.option("--seed", type=int, help="Seed of the replay (default: drawn at random, shown in the page).")
@click.option(
    "--schedulers",
    "names",
    metavar="NAME,...",
    help="Also replay once per scheduler and add compare's table and charts (e.g. rr,wlc,mh).",
)
def report(capture, config_path, output, state, control_path, events, seed, names):
    """Write an HTML report (inline CSS and SVG, opens offline): per-real new and active connections,
    drops by reason, table occupancy and connections per state over time, the events marked; with
    --schedulers, compare's results. With --control SOCK, a running live switch's recent past (its
    ring of samples, one a second); with --from STATE, the one snapshot a state file holds."""
    from l4emu.io.pcap.writer import write_atomic
    from l4emu.render import html

    if [capture, state, control_path].count(None) != 2:
        fail("report: give a CAPTURE, --from STATE or --control SOCK (one of them)")
    if (state is not None or control_path is not None) and (events or seed is not None or names or config_path):
        how = "--from: a state file" if state is not None else "--control: a live switch"
        fail(f"report {how} is reported as it is (no -c, --event, --seed or --schedulers)")
    if state is not None:
        from l4emu.cli.views import _load_state

        page = html.state_html(_load_state(state), str(state))
    elif control_path is not None:
        from l4emu.cli.live import ask

        page = html.live_html(ask(control_path, "timeline"))
    else:
        from l4emu.cli.capture import _refuse_overwriting

        _refuse_overwriting(capture, {"-o": output})
        page = _capture_page(capture, config_path, events, seed, names)
    try:
        write_atomic(output, lambda f: f.write(page.encode()))  # the page says utf-8; a failed write leaves nothing
    except OSError as exc:
        fail(f"{output}: {exc.strerror or exc}")
    click.echo(f"report written to {output}")


def _capture_page(capture: Path, config_path, events, seed, names) -> str:
    """Replay CAPTURE sampled over time (and once per scheduler of --schedulers); the page."""
    import random

    from l4emu.cli.capture import _build_config, scheduler_list
    from l4emu.compare import compare
    from l4emu.events import parse_event
    from l4emu.render import html
    from l4emu.timeline import record

    try:
        parsed = [parse_event(e) for e in events]
        chosen = scheduler_list(names) if names else []
        config = _build_config(config_path, (), (), None)
        if seed is None:  # drawn once, so that the comparison's runs share the report's seed
            seed = random.SystemRandom().randrange(1 << 32)
        timeline = record(capture, config, parsed, seed)
        comparison = compare(capture, config, chosen, parsed, seed) if chosen else None
    except (L4emuError, OSError) as exc:
        fail(str(exc))
    for warning in timeline["summary"]["warnings"]:
        click.echo(f"l4emu: warning: {warning}", err=True)
    return html.report_html(timeline, comparison, str(config_path) if config_path else "the embedded config")
