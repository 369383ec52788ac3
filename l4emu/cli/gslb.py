"""`l4emu gslb`: the DNS hop before the switch (replay a capture through a GSLB and its sites, emulated
clients that resolve then connect, check a GSLB config, model the clients' switch-over after a site
failure)."""

from __future__ import annotations

from pathlib import Path

import click

from l4emu.cli import fail
from l4emu.cli.simulate import Rate
from l4emu.errors import L4emuError

DEFAULT_TTL_S = 20.0  # Flavel et al.'s TTL, whose figures the caching model's defaults reproduce


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def gslb():
    """GSLB: DNS-based global load balancing across sites, before the L4 switch (docs/gslb.md)."""


def load_config(config_path: Path):
    """A GSLB config, checked against the scheduler names that exist (no plugin scan)."""
    from l4emu import schedulers
    from l4emu.gslb import config as gslbconfig

    return gslbconfig.load(config_path, schedulers.catalog())


@gslb.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False, path_type=Path))
def check(config_path):
    """Validate a GSLB CONFIG ([[site]], [[gslb]], [cache]): one OK line, or the first problem (exit 2)."""
    try:
        checked = load_config(config_path)
    except L4emuError as exc:
        fail(str(exc))
    reals = sum(len(svc.reals) for site in checked.sites for svc in site.config.services)
    policies = ", ".join(dict.fromkeys(record.policy for record in checked.records))
    records = f"{len(checked.records)} record" + "s" * (len(checked.records) != 1)
    click.echo(f"{config_path}: OK, {len(checked.sites)} sites ({reals} reals), {records}, policies {policies}")


@gslb.command()
@click.argument("capture", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-c",
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The GSLB config: [[site]] switches and [[gslb]] records.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the packets, DNS answers included, here (.pcap or .pcapng).",
)
@click.option("--format", "fmt", type=click.Choice(["pcap", "pcapng"]), help="Output format (default: the extension).")
@click.option(
    "--event",
    "events",
    multiple=True,
    metavar="T:ACTION:TARGET",
    help="T:site-down:NAME, T:site-up:NAME, or a real event (T:down:IP:PORT, ...) in its site.",
)
@click.option("--seed", type=int, help="Seed of every site's switch: same seed, same output.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def replay(capture, config_path, output, fmt, events, seed, as_json):
    """Replay CAPTURE through the GSLB and its sites: DNS queries to a listen address answered, other
    packets through the switch of the site they are for."""
    from l4emu.cli.capture import _refuse_overwriting
    from l4emu.events import parse_event
    from l4emu.gslb.replay import replay as run_replay
    from l4emu.render import gslb as render
    from l4emu.render import views

    _refuse_overwriting(capture, {"-o": output})
    try:
        parsed = [parse_event(e) for e in events]
        summary = run_replay(capture, load_config(config_path), output, parsed, seed, fmt)
    except (L4emuError, OSError) as exc:
        fail(str(exc))
    click.echo(views.to_json(summary) if as_json else render.gslb_text(summary))
    for warning in summary["warnings"]:
        click.echo(f"l4emu: warning: {warning}", err=True)
    if summary["error"]:
        fail(summary["error"])


@gslb.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The GSLB config: [[site]] switches with emulated reals, [[gslb]] records, [cache].",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write every packet (DNS queries and answers, the TCP conversations) here (.pcap or .pcapng).",
)
@click.option("--format", "fmt", type=click.Choice(["pcap", "pcapng"]), help="Output format (default: the extension).")
@click.option(
    "--event",
    "events",
    multiple=True,
    metavar="T:ACTION:TARGET",
    help="T:site-down:NAME, T:site-up:NAME, or a real event (T:down:IP:PORT, ...) in its site.",
)
@click.option("--clients", type=int, help="Clients, 172.16.0.1 and up by default [100].")
@click.option("--rate", type=Rate(), help="Sessions per second over all clients, e.g. 100/s [100].")
@click.option("--duration", type=float, help="Seconds of arrivals [1].")
@click.option("--arrival", type=click.Choice(["poisson", "fixed"]), help="Arrival process [poisson].")
@click.option("--requests-per-conn", type=int, help="Requests per session [1].")
@click.option("--think-time", type=float, help="Seconds between a session's requests [0].")
@click.option("--response-size", type=float, help="Bytes of each answer the clients acknowledge [1000].")
@click.option("--rtt", type=float, help="Round-trip time in seconds, to the sites and to the GSLB [0.001].")
@click.option("--linktype", type=click.Choice(["ethernet", "raw"]), help="Link layer of the output [ethernet].")
@click.option(
    "--resolvers",
    type=click.IntRange(1, 1_000_000),
    help="Resolvers, each a cache of neighbouring clients [cache.resolvers].",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same bytes.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def simulate(config_path, output, fmt, events, resolvers, as_json, **flags):
    """Emulated clients resolve the first A record's name through the GSLB (their caches, their resolvers',
    then a DNS query to the listen address), then connect to the answered VIP, through that site's switch
    to its emulated reals (docs/gslb.md)."""
    import dataclasses

    from l4emu.events import parse_event
    from l4emu.gslb.simulate import simulate as run_simulate
    from l4emu.render import gslb as render
    from l4emu.render import views
    from l4emu.workload import from_config

    try:
        checked = load_config(config_path)
        if resolvers is not None:
            checked = dataclasses.replace(checked, cache=dataclasses.replace(checked.cache, resolvers=resolvers))
        workload = from_config(checked.sites[0].config, str(config_path), flags)
        parsed = [parse_event(e) for e in events]
        summary = run_simulate(checked, workload, parsed, output, fmt)
    except (L4emuError, OSError) as exc:
        fail(str(exc))
    summary["config"] = str(config_path)
    click.echo(views.to_json(summary) if as_json else render.simulate_text(summary))


@gslb.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A GSLB config whose [cache] and shortest TTL to use (default: the model's defaults).",
)
@click.option("--ttl", type=click.FloatRange(0, 86400, min_open=True), help="The record's TTL in seconds.")
@click.option("--clients", type=click.IntRange(1, 1_000_000), help="Clients [cache.clients].")
@click.option(
    "--resolvers", type=click.IntRange(1, 1_000_000), help="Resolvers, each a shared cache [cache.resolvers]."
)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the model's one generator.")
@click.option("--json", "as_json", is_flag=True, help="Print the curve as JSON.")
def switchover(config_path, ttl, clients, resolvers, seed, as_json):
    """Model the clients' switch-over after a site failure: the share of requests still sent to the
    failed site as their caches expire, and when 50/90/99% of the clients moved."""
    import dataclasses

    from l4emu.gslb.caching import switchover as run_model
    from l4emu.gslb.config import CacheModel, ConfigError
    from l4emu.render import gslb as render
    from l4emu.render import views

    try:
        checked = load_config(config_path) if config_path else None
        model = checked.cache if checked else CacheModel()
        model = dataclasses.replace(model, clients=clients or model.clients, resolvers=resolvers or model.resolvers)
        if model.resolvers > model.clients:
            raise ConfigError(
                "--resolvers", f"{model.resolvers} resolvers for {model.clients} clients: at most one each"
            )
        if ttl is None:
            ttl = min(r.ttl for r in checked.records) if checked else DEFAULT_TTL_S
        result = run_model(model, ttl, seed)
    except L4emuError as exc:
        fail(str(exc))
    click.echo(views.to_json(result) if as_json else render.switchover_text(result))


@gslb.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The GSLB config: its records' listen addresses are bound (UDP and TCP).",
)
@click.option("--down", "down", multiple=True, metavar="SITE", help="A site that starts down (repeatable).")
@click.option("--seed", type=int, help="Seed of the sites' switches.")
def serve(config_path, down, seed):
    """Answer DNS on the records' listen addresses (UDP and TCP) until SIGINT or SIGTERM, as the emulated
    authority answers in replay: `dig @10.53.0.1 www.example.com` in a lab (docs/gslb.md)."""
    import signal
    import threading

    from l4emu.gslb.serve import Server

    stop = threading.Event()
    try:
        server = Server(load_config(config_path), down, seed)
    except (L4emuError, OSError) as exc:
        fail(str(exc))
    for name in (signal.SIGINT, signal.SIGTERM):
        signal.signal(name, lambda *_: stop.set())
    click.echo(f"serving DNS on {', '.join(server.endpoints)} (udp, tcp)", err=True)
    try:
        server.run(stop.is_set)
    finally:
        server.close()
    counts = ", ".join(f"{name} {n}" for name, n in sorted(server.authority.counters.items()) if n)
    click.echo(f"answered: {counts or 'nothing'}", err=True)
