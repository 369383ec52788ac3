"""`l4emu apply` and `l4emu save`: reload a running switch's config, and print a config as ipvsadm-save does."""

from __future__ import annotations

from pathlib import Path

import click

from l4emu.cli import config_option, fail
from l4emu.errors import L4emuError

CONTROL_HELP = "Control socket of the running `l4emu live` (its --control PATH)."


def _load(path: Path | None):
    from l4emu import config as configmod
    from l4emu import schedulers

    try:
        return configmod.load(path, schedulers.catalog())
    except L4emuError as exc:
        fail(str(exc))


@click.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--control", "control_path", type=click.Path(dir_okay=False), metavar="SOCK", help=CONTROL_HELP)
@click.option(
    "--against",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="OLD",
    help="Instead of a running switch: show what applying CONFIG to one running OLD would do.",
)
@click.option("--dry-run", is_flag=True, help="With --control: show the changes, change nothing.")
@click.option("--json", "as_json", is_flag=True, help="The changes as JSON.")
def apply(config_path, control_path, against, dry_run, as_json):
    """Reload a running `l4emu live` with CONFIG without dropping its connection table; print the
    changes as ipvsadm commands (-A/-E/-D, -a/-e/-d, --set). Flows keep their reals, but those of a
    removed real, which are expired at once. Admin: root or the socket's owner."""
    from l4emu import reconfig
    from l4emu.render import ipvsadm, views

    if (control_path is None) == (against is None):
        fail("give --control SOCK (a running `l4emu live`) or --against OLD.toml (one of them)")
    new = _load(config_path)  # the file's problems are said here, with its name, before anything is sent
    if against is not None:
        old = _load(against)
        try:
            reconfig.check_reloadable(old, new, str(config_path))
        except L4emuError as exc:
            fail(str(exc))
        result = reconfig.diff(old, new).as_dict()
        result["ipvsadm"] = ipvsadm.diff_lines(result)
    else:
        from l4emu.cli.live import ask

        text = config_path.read_text(encoding="utf-8")
        result = ask(control_path, "apply", toml=text, source=str(config_path), dry_run=dry_run)
    if as_json:
        click.echo(views.to_json(result))
    else:
        click.echo("\n".join(result["ipvsadm"]) if result["ipvsadm"] else "# no change")


@click.command()
@config_option("Print this config file (default: the embedded one) instead of a running switch's.")
@click.option("--control", "control_path", type=click.Path(dir_okay=False), metavar="SOCK", help=CONTROL_HELP)
def save(config_path, control_path):
    """Print the running switch's services and reals (--control) or a config's, as `ipvsadm-save -n` does."""
    from l4emu import reconfig
    from l4emu.render import ipvsadm

    if control_path is not None and config_path is not None:
        fail("give --control SOCK or -c CONFIG, not both")
    if control_path is not None:
        from l4emu.cli.live import ask

        data = ask(control_path, "config")
    else:
        data = reconfig.config_data(_load(config_path))
    click.echo("\n".join(ipvsadm.save_lines(data)))
