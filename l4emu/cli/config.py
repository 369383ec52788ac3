"""`l4emu config --default` and `l4emu check`: the embedded config, and validating one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from l4emu.cli import fail
from l4emu.errors import L4emuError

if TYPE_CHECKING:
    from l4emu import config as configmod


@click.command()
@click.option("--default", "default", is_flag=True, help="The config used without -c (l4emu/data/default.toml).")
def config(default):
    """Print the embedded default config, the one the bundled samples were made for: a starting point
    for your own (`l4emu config --default > lb.toml`)."""
    from l4emu.config import DEFAULT_CONFIG

    if not default:
        fail("config: give --default to print the embedded config (validate a file with `l4emu check FILE`)")
    click.echo(DEFAULT_CONFIG.read_text(encoding="utf-8"), nl=False)


@click.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False, path_type=Path))
def check(config_path):
    """Validate CONFIG without running anything: one OK line (exit 0), or the first problem (exit 2)."""
    from l4emu import config as configmod
    from l4emu import schedulers

    catalog = schedulers.catalog()
    try:
        checked = configmod.load(config_path, catalog)
        if checked.workload:  # only then: the workload model is the emulated clients' (gen, simulate)
            from l4emu.workload import from_config

            from_config(checked, str(config_path), base=config_path.parent)
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
