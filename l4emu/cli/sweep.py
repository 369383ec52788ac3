"""`l4emu sweep`: a grid of what-if replays as parallel tasks (Dask or local processes), one table."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from l4emu.cli import fail, write_plot
from l4emu.errors import L4emuError


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dask", "address", metavar="tcp://HOST:PORT", help="Run on the Dask scheduler at this address.")
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=lambda: os.cpu_count() or 1,
    show_default="one per core",
    help="Worker processes of the local cluster (without --dask).",
)
@click.option("--stage", is_flag=True, help="Send each input once to every worker (no shared storage needed).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON (with the time series).")
@click.option("--csv", "as_csv", is_flag=True, help="Print a CSV row per grid point and service.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw active connections per real over time, a row per grid point (PNG, .svg or .pdf; needs matplotlib).",
)
def sweep(spec_path, address, jobs, stage, as_json, as_csv, plot):
    """Replay every point of SPEC's grid (captures x configs x schedulers x events x seeds) and gather
    the results. On Dask when installed (pip install 'l4emu[dist]'): a local cluster of --jobs
    processes, or the scheduler at --dask; on local processes otherwise."""
    from l4emu import schedulers
    from l4emu.dist import sweep as sweepmod
    from l4emu.render import report, views

    if as_json and as_csv:
        fail("sweep: give --json or --csv, not both")
    if stage and not sweepmod.dask_available():
        fail("sweep: --stage sends inputs to Dask workers, and Dask is not installed (pip install 'l4emu[dist]')")
    if address and not sweepmod.dask_available():
        fail("sweep: --dask needs Dask (pip install 'l4emu[dist]')")
    try:
        spec = sweepmod.load_spec(spec_path, schedulers.catalog())
        if jobs > 1 and not address and not sweepmod.dask_available():
            click.echo("l4emu: Dask is not installed: running on local processes (concurrent.futures)", err=True)
        if sys.stderr.isatty():
            with click.progressbar(length=len(spec.points()), label="sweeping", file=sys.stderr) as bar:
                result = sweepmod.sweep(spec, address, jobs, stage, on_done=lambda done, total: bar.update(1))
        else:  # a log or a pipe: no bar (click would print its label alone)
            result = sweepmod.sweep(spec, address, jobs, stage)
    except (L4emuError, OSError) as exc:
        fail(str(exc))
    if as_json:
        click.echo(views.to_json(result))
    elif as_csv:
        click.echo(report.sweep_csv(result), nl=False)
    else:
        click.echo(report.sweep_text(result))
    if plot:
        write_plot(lambda: report.sweep_plot(result, plot), plot)
    if any("error" in row for row in result["rows"]):
        sys.exit(1)
