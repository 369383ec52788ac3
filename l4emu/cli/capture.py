"""`l4emu replay` and `l4emu compare`: captures through the switch, once or once per scheduler."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from l4emu.cli import config_option, fail, write_plot
from l4emu.errors import L4emuError

PROGRESS_MIN_BYTES = 8 << 20  # smaller captures finish before a bar would help

if TYPE_CHECKING:
    from l4emu import config as configmod
    from l4emu.switch import Switch


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


@click.command()
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
@click.option(
    "--workers",
    default="1",
    metavar="N",
    help="Replay in N processes, flows dealt by client address (docs/replay.md: sharded replay).",
)
@click.option(
    "--check-sharding",
    is_flag=True,
    help="With --workers N: also replay in one process and show how far each real's new connections differ.",
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
    workers,
    check_sharding,
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
    workers = worker_count(workers)
    if workers > 1 or check_sharding:
        _refuse_with_workers(workers, check_sharding, annotate, events, inside, state_out, at_times)
        _sharded(
            capture,
            output,
            fmt,
            config_path,
            vips,
            reals,
            scheduler,
            seed,
            as_json,
            capture_servers,
            workers,
            check_sharding,
        )
        return
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
    if switch.config.cluster.instances > 1:
        summary["warnings"].append(
            f"[cluster] instances = {switch.config.cluster.instances}: replay runs one switch; "
            f"`l4emu compare {capture}` runs the cluster"
        )
    for warning in summary["warnings"]:
        click.echo(f"l4emu: warning: {warning}", err=True)
    if summary["error"]:
        fail(summary["error"])


def worker_count(text: str) -> int:
    """--workers N: a whole number of processes, 1 to MAX_WORKERS (one line when it is not). The sharding
    module is imported only when N is not 1 (start-up: tests/test_startup.py)."""
    try:
        workers = int(text.strip())
    except ValueError:
        fail(f"--workers {text!r}: not a whole number of worker processes")
    if workers != 1:
        from l4emu.dist.shard import MAX_WORKERS

        if not 1 <= workers <= MAX_WORKERS:
            fail(f"--workers {workers}: give 1 to {MAX_WORKERS} worker processes")
    return workers


def _refuse_with_workers(workers: int, check: bool, annotate, events, inside, state_out, at_times) -> None:
    """What sharded replay does not do (yet): each a one-line refusal before any work."""
    if check and workers == 1:
        fail("--check-sharding compares --workers N (N > 1) with one worker: give --workers")
    refused = {
        "--annotate": annotate,
        "--event": events,
        "--inside": inside,
        "--state-out": state_out,
        "--at": at_times,
    }
    for flag, given in refused.items():
        if given:
            fail(f"{flag} works with one worker only: leave out --workers {workers} (sharded replay)")


def _sharded(
    capture, output, fmt, config_path, vips, reals, scheduler, seed, as_json, capture_servers, workers, check
) -> None:
    """replay --workers N: the capture's flows dealt to N processes; one summary, as one worker prints."""
    from l4emu.dist.shard import check_sharding, sharded_replay
    from l4emu.render import views

    try:
        config = _build_config(config_path, vips, reals, scheduler, capture_servers)
        if any(real.emulated for svc in config.services for real in svc.reals):
            fail(f"emulated reals work with one worker only: leave out --workers {workers}")
        summary = sharded_replay(capture, config, seed, workers, output, fmt)
        if check:
            summary["sharding"] = check_sharding(summary, capture, config, seed)
    except (L4emuError, OSError) as exc:
        fail(str(exc))
    click.echo(views.to_json(summary) if as_json else views.summary_text(summary))
    if config.cluster.instances > 1:
        summary["warnings"].append(
            f"[cluster] instances = {config.cluster.instances}: replay runs one switch a worker; "
            f"`l4emu compare {capture}` runs the cluster"
        )
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


# Enough to compare: rotation, least connections, two hashes and a randomized choice.
DEFAULT_COMPARE = "rr,wlc,sh,mh,p2c"


@click.command()
@click.argument("capture", type=click.Path(dir_okay=False, path_type=Path), required=False)
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
@click.option(
    "--cluster",
    "instances",
    type=click.IntRange(1, 64),
    help="Run N switch instances behind ECMP and compare consistency designs (default: [cluster] instances).",
)
@click.option(
    "--consistency",
    metavar="DESIGN,...",
    help="With a cluster: the designs to compare (maglev, maglev-global, rendezvous-second-chance, beamer, "
    "cheetah, jet, silkroad-delay, hash, consistent; default: [cluster] consistency).",
)
@click.option("--ecmp", type=click.Choice(["hash", "resilient"]), help="With a cluster: the router's ECMP.")
@click.option(
    "--simulate",
    is_flag=True,
    help="No capture: the config's emulated clients ([workload]) through each scheduler to its emulated reals.",
)
@click.option("--rate", type=float, help="With --simulate: sessions per second [workload.rate].")
@click.option("--duration", type=float, help="With --simulate: seconds of arrivals [workload.duration].")
@click.option("--clients", type=int, help="With --simulate: distinct client addresses [workload.clients].")
@click.option(
    "--gslb",
    "policies",
    metavar="POLICY,...",
    help="CAPTURE through a GSLB config's sites once per GSLB policy (topology, rr, wrr, failover, least_conn, "
    "hashed); events may be T:site-down:NAME (docs/gslb.md).",
)
def compare(
    capture,
    config_path,
    names,
    events,
    seed,
    capture_servers,
    plot,
    as_json,
    instances,
    consistency,
    ecmp,
    simulate,
    rate,
    duration,
    clients,
    policies,
):
    """Replay CAPTURE once per scheduler and compare how each spreads the load; with --cluster N (or a
    [cluster] of several instances), once per consistency design: what broke, moved and was redirected;
    with --simulate, run the emulated clients once per scheduler and compare their response times;
    with --gslb, once per GSLB policy: each site's answers, clients and connections side by side."""
    if policies is not None:
        others = {"--simulate": simulate, "--capture-servers": capture_servers, "--cluster": instances}
        others |= {"--consistency": consistency, "--ecmp": ecmp, "--rate": rate, "--duration": duration}
        given = [flag for flag, value in {**others, "--clients": clients}.items() if value not in (None, False)]
        if given:
            fail(f"compare --gslb: {', '.join(given)} do not go with it (the GSLB config names its sites)")
        if capture is None or config_path is None:
            fail("compare --gslb: give a CAPTURE and -c, the GSLB config ([[site]], [[gslb]])")
        _compare_gslb(capture, config_path, policies, events, seed, plot, as_json)
        return
    if simulate:
        if capture is not None or events or capture_servers:
            fail("compare --simulate: no capture, --event or --capture-servers (the clients are emulated)")
        _compare_simulated(
            config_path, names, seed, plot, as_json, {"rate": rate, "duration": duration, "clients": clients}
        )
        return
    if rate is not None or duration is not None or clients is not None:
        fail("compare: --rate, --duration and --clients go with --simulate")
    if capture is None:
        fail("compare: give a CAPTURE (or --simulate to compare with emulated clients)")
    if instances is not None or consistency is not None or ecmp is not None:
        _compare_cluster(
            capture, config_path, events, seed, capture_servers, plot, as_json, instances, consistency, ecmp
        )
        return
    from l4emu.compare import compare as run_compare
    from l4emu.events import parse_event
    from l4emu.render import report, views

    if plot is not None:
        _refuse_overwriting(capture, {"--plot": plot})
    try:
        events = [parse_event(e) for e in events]
        chosen = scheduler_list(names)
        config = _build_config(config_path, (), (), None, capture_servers)
        if config.cluster.instances > 1:  # the config describes a cluster: compare its designs
            _compare_cluster(capture, config_path, [str(e) for e in events], seed, capture_servers, plot, as_json)
            return
        result = run_compare(capture, config, chosen, events, seed)
    except (L4emuError, OSError) as exc:
        fail(str(exc))
    # The table first: a plot that cannot be written must not cost the user the numbers.
    click.echo(views.to_json(result) if as_json else report.compare_text(result))
    for warning in dict.fromkeys(w for run in result["runs"] for w in run["warnings"]):
        click.echo(f"l4emu: warning: {warning}", err=True)
    if plot:
        write_plot(lambda: report.compare_plot(result, plot), plot)


def name_list(text: str, known: Sequence[str], option: str, what: str, unique: bool = False) -> list[str]:
    """A comma-separated option (--schedulers, --consistency): at least one name, each known (listed in
    the order of `known` when not); `unique` drops repeats."""
    from l4emu import config as configmod

    chosen = [n.strip() for n in text.split(",") if n.strip()]
    if unique:
        chosen = list(dict.fromkeys(chosen))
    unknown = [n for n in chosen if n not in known]
    if not chosen or unknown:
        raise configmod.ConfigError(
            option,
            f"unknown {what}(s) {', '.join(unknown) or '(none given)'} (known: {', '.join(known)})",
        )
    return chosen


def scheduler_list(names: str) -> list[str]:
    """--schedulers a,b,c: built-in names (no plugin scan)."""
    from l4emu import schedulers

    return name_list(names, sorted(schedulers.catalog()), "--schedulers", "scheduler")


def _compare_simulated(config_path, names: str, seed, plot, as_json: bool, flags: dict) -> None:
    """compare --simulate: the same workload and seed through each scheduler."""
    from l4emu.cli.simulate import load_workload
    from l4emu.compare import with_scheduler
    from l4emu.render import report, views
    from l4emu.simulate import simulate as run_simulate

    try:
        chosen = scheduler_list(names)
        config, workload = load_workload(config_path, {**flags, "seed": seed})
        results = [run_simulate(with_scheduler(config, name), workload, workload.seed) for name in chosen]
    except (L4emuError, OSError) as exc:
        fail(str(exc))
    click.echo(views.to_json({"runs": results}) if as_json else report.simulate_compare_text(results))
    if plot:
        write_plot(lambda: report.simulate_plot(results, plot), plot)


def _compare_gslb(capture, config_path, policies: str, events, seed, plot, as_json: bool) -> None:
    """compare --gslb a,b: the capture through the GSLB and its sites once per policy."""
    from l4emu.cli.gslb import load_config
    from l4emu.events import parse_event
    from l4emu.gslb.compare import compare as run_compare
    from l4emu.gslb.config import POLICIES, POLICY_ALIASES
    from l4emu.render import gslb as render
    from l4emu.render import views

    if plot is not None:
        _refuse_overwriting(capture, {"--plot": plot})
    try:
        chosen = name_list(policies, [*POLICIES, *POLICY_ALIASES], "--gslb", "policy", unique=True)
        parsed = [parse_event(e) for e in events]
        result = run_compare(capture, load_config(config_path), chosen, parsed, seed)
    except (L4emuError, OSError) as exc:
        fail(str(exc))
    click.echo(views.to_json(result) if as_json else render.compare_text(result))
    for warning in dict.fromkeys(w for run in result["runs"] for w in run["warnings"]):
        click.echo(f"l4emu: warning: {warning}", err=True)
    errors = dict.fromkeys(run["error"] for run in result["runs"] if run["error"])
    if errors:
        fail("; ".join(errors))
    if plot:
        write_plot(lambda: render.compare_plot(result, plot), plot)


def _compare_cluster(
    capture, config_path, events, seed, capture_servers, plot, as_json, instances=None, consistency=None, ecmp=None
):
    """`compare --cluster N --consistency a,b`: the capture through N instances once per design."""
    from l4emu import config as configmod
    from l4emu.cluster.run import compare as run_cluster
    from l4emu.events import parse_event
    from l4emu.render import cluster as render
    from l4emu.render import views

    if plot is not None:
        _refuse_overwriting(capture, {"--plot": plot})
    try:
        parsed = [parse_event(e) for e in events]
        config = _build_config(config_path, (), (), None, capture_servers)
        designs = list(config.cluster.consistency)
        if consistency is not None:
            designs = name_list(consistency, configmod.CONSISTENCY_DESIGNS, "--consistency", "design", unique=True)
        result = run_cluster(capture, config, designs, parsed, instances, ecmp, seed)
    except (L4emuError, OSError) as exc:
        fail(str(exc))
    click.echo(views.to_json(result) if as_json else render.cluster_text(result))
    for warning in dict.fromkeys(w for run in result["runs"] for w in run["warnings"]):
        click.echo(f"l4emu: warning: {warning}", err=True)
    if plot:
        write_plot(lambda: render.cluster_plot(result, plot), plot)
