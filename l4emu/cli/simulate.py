"""`l4emu gen` and `l4emu simulate`: the emulated clients' commands. They share the [workload] model and its
flags: gen writes what the clients send as a capture, simulate runs them through the switch to emulated
reals with finite capacity and reports what they experienced."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import click

from l4emu.cli import config_option, fail, write_plot
from l4emu.errors import L4emuError, OptionError

SEED_BITS = 32  # a drawn seed short enough to retype


class Rate(click.ParamType):
    """Sessions per second: 1000 or 1000/s (as the issue and users write it)."""

    name = "rate"

    def convert(self, value, param, ctx):
        text = str(value).strip()
        try:
            return float(text.removesuffix("/s"))
        except ValueError:
            self.fail(f"{value!r} is not a rate like 1000 or 1000/s", param, ctx)


WORKLOAD_OPTIONS = [
    click.option("--clients", type=int, help="Distinct client addresses [workload.clients; 100]."),
    click.option("--rate", type=Rate(), help="Sessions per second, e.g. 1000 or 1000/s [workload.rate; 100]."),
    click.option("--duration", type=float, help="Seconds of arrivals [workload.duration; 1]."),
    click.option(
        "--arrival", type=click.Choice(["poisson", "fixed"]), help="Arrival process [workload.arrival; poisson]."
    ),
    click.option(
        "--capture",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Arrivals at the SYN times of this capture instead [workload.capture].",
    ),
    click.option("--requests-per-conn", type=int, help="Requests per session [workload.requests_per_conn; 1]."),
    click.option(
        "--keep-alive/--no-keep-alive",
        default=None,
        help="A session's requests share one connection, or take one each [workload.keep_alive; keep-alive].",
    ),
    click.option("--think-time", type=float, help="Seconds between a session's requests [workload.think_time; 0]."),
    click.option(
        "--request-size", type=float, help="Bytes of each HTTP request, headers padded [workload.request_size; 128]."
    ),
    click.option(
        "--response-size",
        type=float,
        help="Bytes of each answer the clients acknowledge [workload.response_size; 1000].",
    ),
    click.option("--rtt", type=float, help="Round-trip time in seconds [workload.rtt; 0.001]."),
    click.option(
        "--protocol",
        type=click.Choice(["tcp", "udp", "mixed"]),
        help="TCP connections, UDP request datagrams (request-reply), or both [workload.protocol; tcp].",
    ),
    click.option(
        "--udp-share",
        type=float,
        help="--protocol mixed: the share of sessions that are UDP, above 0 and below 1 [workload.udp_share].",
    ),
    click.option(
        "--timeout",
        type=float,
        help="UDP: seconds a client waits for a whole answer before it gives up [workload.timeout; 5].",
    ),
    click.option("--ipv6-share", type=float, help="Share of IPv6 clients, 0 to 1 [workload.ipv6_share; 0]."),
    click.option(
        "--linktype",
        type=click.Choice(["ethernet", "raw"]),
        help="Link layer of the capture [workload.linktype; ethernet].",
    ),
    click.option(
        "--seed", type=int, help="Same seed, same bytes [workload.seed; default: drawn at random and printed]."
    ),
]


def workload_options(command: Callable) -> Callable:
    """The [workload] flags gen and simulate share (each overrides its key of the config's table)."""
    for option in reversed(WORKLOAD_OPTIONS):
        command = option(command)
    return command


@click.command()
@config_option("TOML config: its services give the target, its [workload] table the defaults.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The capture to write (.pcap or .pcapng, or see --format).",
)
@click.option("--format", "fmt", type=click.Choice(["pcap", "pcapng"]), help="Output format (default: from -o).")
@workload_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def gen(config_path, output, fmt, as_json, **flags):
    """Write the client side of a workload's TCP conversations to a capture (client-only: replay it
    through a config with emulated reals for the answers)."""
    from l4emu.cli.capture import _refuse_overwriting
    from l4emu.clients.gen import generate

    if flags["capture"] is not None:
        _refuse_overwriting(flags["capture"], {"-o": output})
    try:
        _, workload = load_workload(config_path, flags)
        summary = generate(workload, output, fmt)
    except (L4emuError, OSError) as exc:
        fail(str(exc))
    if as_json:
        from l4emu.render import views

        click.echo(views.to_json(summary))
        return
    click.echo(gen_text(summary))


def load_workload(config_path: Path | None, flags: dict):
    """The config and its workload with the flags on top; a seed drawn (and so printed) when none is given."""
    from l4emu import config as configmod
    from l4emu import schedulers
    from l4emu.workload import from_config

    config = configmod.load(config_path, schedulers.catalog())
    if flags["seed"] is None and "seed" not in config.workload:
        flags["seed"] = random.SystemRandom().getrandbits(SEED_BITS)
    source = str(config_path) if config_path else "default config"
    return config, from_config(config, source, flags, base=config_path.parent if config_path else None)


@click.command()
@config_option("TOML config: emulated reals with their capacity (workers, service_time, response_bytes), [workload].")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the whole conversation as the clients see it (.pcap or .pcapng, or see --format).",
)
@click.option("--format", "fmt", type=click.Choice(["pcap", "pcapng"]), help="Output format (default: from -o).")
@click.option("--scheduler", help="Every service on this scheduler instead of its own (e.g. lc).")
@workload_options
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON (with the time series).")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw the response-time CDF and each real's wait queue over time (PNG, .svg or .pdf; needs matplotlib).",
)
def simulate(config_path, output, fmt, scheduler, as_json, plot, **flags):
    """Emulated clients open TCP connections through the switch to emulated reals with finite capacity,
    send requests and wait for the answers (closed loop): response time per real is the outcome. The
    answers' size is the reals' (response_bytes), so --response-size does not apply."""
    from l4emu import schedulers
    from l4emu.compare import with_scheduler
    from l4emu.render import report, views
    from l4emu.simulate import simulate as run_simulate

    try:
        config, workload = load_workload(config_path, flags)
        if scheduler is not None:
            if scheduler not in schedulers.catalog():
                raise OptionError(f"--scheduler: unknown scheduler {scheduler!r}")
            config = with_scheduler(config, scheduler)
        result = run_simulate(config, workload, workload.seed, output, fmt)
    except (L4emuError, OSError) as exc:
        fail(str(exc))
    click.echo(views.to_json(result) if as_json else report.simulate_text(result))
    if plot:
        write_plot(lambda: report.simulate_plot([result], plot), plot)


def gen_text(summary: dict) -> str:
    """What went into the capture, for people (the `time` line is the machine's speed)."""
    return "\n".join(
        [
            f"workload     {summary['workload']}",
            f"packets      {summary['packets']:,} written to {summary['output']}",
            f"             {summary['conversations']:,} conversations ({summary['conversations_ipv6']:,} over IPv6), "
            f"{summary['sessions']:,} sessions, {summary['requests']:,} requests",
            f"span         {summary['span_s']:.6f} s of packet time",
            f"time         {summary['elapsed_s']:.3f} s, {summary['packets_per_s']:,.0f} packets/s",
        ]
    )
