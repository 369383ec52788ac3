"""Simulate: emulated clients through the switch to emulated servers with finite capacity, closed loop.

The clients (l4emu.clients._clients) open real TCP connections to the VIP or send UDP requests (or
both: a mixed workload), the datapath schedules and forwards them as in replay, the emulated reals
(l4emu.hosts) serve each request with their workers for a drawn service time, and every answer goes
back to its client (through the switch, or past it from dr and tun reals), which waits for it before
its next request. Response time is an outcome: what users would see from the switch's scheduler and
the reals' capacity. Health checks of the reals run on the same clock (l4emu.emulated_checks).
Everything runs on the packet clock, so a seed fixes every byte.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

from l4emu import config as configmod
from l4emu.datapath._batch import NS
from l4emu.errors import OptionError
from l4emu.switch import Switch
from l4emu.workload import Workload

SAMPLES = 200  # queue-length and active-connection samples over the simulated span
PERCENTILES = (50, 90, 99)
CDF_STEPS = 200  # the response-time distribution kept for plots: its 0.5th, 1st, ... 100th percentiles
MS = 1e6  # nanoseconds per millisecond


def percentile(sorted_values: list[int], p: float) -> float:
    """The nearest-rank percentile (the value at rank ceil(p/100 * n)), as load-testing tools report it."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def check_emulated(config: configmod.Config, workload: Workload) -> None:
    """Every real of a service the clients connect to must answer for itself (UDP: as a request-reply
    app, which its capacity keys make it: each answer says which request it answers and when it ends)."""
    for part in workload.parts():
        _check_part(config, part)


def _check_part(config: configmod.Config, workload: Workload) -> None:
    for target in (workload.target, workload.target6):
        if target is None:
            continue
        for svc in config.services:
            if (svc.vip, svc.port) == target and svc.protocol == workload.protocol:
                plain = [real.endpoint for real in svc.reals if not real.emulated]
                if plain:
                    raise OptionError(
                        f"simulate: {svc.protocol.upper()} {svc.endpoint} has reals that are not emulated "
                        f"({', '.join(plain)}): give them emulated = true "
                        "(and workers, service_time for their capacity)"
                    )
                bare = [real.endpoint for real in svc.reals if not (real.workers or real.response_bytes)]
                if svc.protocol == "udp" and bare:
                    raise OptionError(
                        f"simulate: UDP {svc.endpoint} has reals without capacity ({', '.join(bare)}): give them "
                        "workers or response_bytes, which make a UDP real answer requests (docs/simulate.md)"
                    )


def simulate(
    config: configmod.Config,
    workload: Workload,
    seed: int,
    output: str | Path | None = None,
    fmt: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict:
    """Run the workload's clients through a Switch of `config` until every conversation has ended; the
    outcome per real (requests, response times, queues, utilisation, refusals) and in total. `output`
    gets the whole conversation as the clients see it (their packets, the answers after SNAT)."""
    from l4emu.clients._clients import Clients
    from l4emu.clients.gen import LINKTYPE, SNAPLEN, model_arguments
    from l4emu.emulate import BatchSink, Emulator
    from l4emu.emulated_checks import EmulatedChecks
    from l4emu.io import Interface, open_writer

    check_emulated(config, workload)
    switch = Switch(config, seed)
    parts = workload.parts()
    crowds = [Clients(timeout_ns=round(part.timeout * NS), **model_arguments(part)) for part in parts]
    writer = (
        open_writer(output, [Interface(LINKTYPE[workload.linktype], SNAPLEN, True)], nanosecond=True, fmt=fmt)
        if output
        else None
    )
    try:
        emulator = Emulator(switch, outside=BatchSink.writer(writer) if writer else None, restamp=False)
        assert switch.hosts is not None  # check_emulated: the clients' services are emulated
        engine = switch.hosts.engine
        samples: list[tuple[int, list, list[int]]] = []

        tables: dict[str, Callable[[], list]] = {"tcp": engine.capacity, "udp": engine.udp_capacity}

        def on_sample(now: int) -> None:
            queues = [(part.protocol, *row) for part in parts for row in tables[part.protocol]()]
            samples.append((now, queues, [r["active"] for r in switch.real_counters()]))
            if on_progress:
                on_progress(now)

        span = workload.duration if math.isfinite(workload.duration) else 1.0
        started = time.process_time()
        checks = EmulatedChecks(switch)
        on_timer = checks.run_due if checks else None
        every = max(1, int(span * NS / SAMPLES))
        more = crowds[1] if len(crowds) > 1 else None
        last = emulator.loop.simulate(crowds[0], every, on_sample, on_timer, more)
        cpu = time.process_time() - started
        emulator.flush()
    finally:
        if writer is not None:
            writer.close()
    if len(parts) == 1:
        result = _outcome(config, workload, switch, crowds[0], samples, last, cpu, output, emulator.direct)
    else:
        result = _mixed_outcome(config, workload, switch, crowds, samples, last, cpu, output, emulator.direct)
    if checks:
        result["health"] = checks.summary()
    return result


def _outcome(config, workload, switch, clients, samples, last: int, cpu: float, output, direct: int) -> dict:
    first = clients.first_ns
    span_ns = max(1, last - first)
    udp = workload.protocol == "udp"
    reals = _reals(switch, workload.protocol, clients.response_times(), span_ns)
    everything = sorted(ns for _, ns in clients.response_times())
    late = {"late_answers": clients.late} if udp else {}  # datagrams for a request the client gave up
    return {
        "workload": workload.describe(),
        "protocol": workload.protocol,
        "schedulers": sorted({svc.scheduler for svc in config.services}),
        "output": str(output) if output else None,
        "span_s": round(span_ns / NS, 6),
        "sessions": clients.sessions,
        "connections": clients.conversations,
        "requests": clients.requests_sent,
        "answered": len(everything),
        **_times(everything),
        "failed_requests": clients.failed_requests,
        "failures": clients.failures(),
        **late,
        "syn_retransmits": clients.syn_retransmits,
        "packets": {"clients": clients.packets, "answers": switch_answers(switch) + direct},
        "reals": reals,
        "queue_over_time": _queue_series(samples, first, [workload.protocol], switch),
        "cdf_ms": [round(percentile(everything, q / CDF_STEPS * 100) / MS, 3) for q in range(1, CDF_STEPS + 1)],
        "cpu_s": round(cpu, 3),
    }


def _mixed_outcome(config, workload, switch, crowds, samples, last: int, cpu: float, output, direct: int) -> dict:
    """A mixed workload's outcome: the whole (every request of either protocol), each protocol's clients
    apart (by_protocol), and every real of either protocol's services."""
    first = min(c.first_ns for c in crowds if c.packets) if any(c.packets for c in crowds) else 0
    span_ns = max(1, last - first)
    by_protocol = {}
    reals = []
    for part, clients in zip(workload.parts(), crowds, strict=True):
        times = sorted(ns for _, ns in clients.response_times())
        by_protocol[part.protocol] = {
            "sessions": clients.sessions,
            "connections": clients.conversations,
            "requests": clients.requests_sent,
            "answered": len(times),
            **_times(times),
            "failed_requests": clients.failed_requests,
            "failures": clients.failures(),
            **({"late_answers": clients.late} if part.protocol == "udp" else {}),
            "packets": clients.packets,
        }
        reals += _reals(switch, part.protocol, clients.response_times(), span_ns)
    everything = sorted(ns for c in crowds for _, ns in c.response_times())
    tcp, udp = by_protocol["tcp"], by_protocol["udp"]
    return {
        "workload": workload.describe(),
        "protocol": "mixed",
        "schedulers": sorted({svc.scheduler for svc in config.services}),
        "output": str(output) if output else None,
        "span_s": round(span_ns / NS, 6),
        "sessions": tcp["sessions"] + udp["sessions"],
        "connections": tcp["connections"] + udp["connections"],
        "requests": tcp["requests"] + udp["requests"],
        "answered": len(everything),
        **_times(everything),
        "failed_requests": tcp["failed_requests"] + udp["failed_requests"],
        "failures": {**tcp["failures"], **udp["failures"]},
        "late_answers": udp["late_answers"],
        "syn_retransmits": crowds[0].syn_retransmits,
        "packets": {"clients": tcp["packets"] + udp["packets"], "answers": switch_answers(switch) + direct},
        "by_protocol": by_protocol,
        "reals": reals,
        "queue_over_time": _queue_series(samples, first, [part.protocol for part in workload.parts()], switch),
        "cdf_ms": [round(percentile(everything, q / CDF_STEPS * 100) / MS, 3) for q in range(1, CDF_STEPS + 1)],
        "cpu_s": round(cpu, 3),
    }


def _reals(switch, protocol: str, response_times: list[tuple[int, int]], span_ns: int) -> list[dict]:
    """Per emulated real of the protocol's services: its clients' requests and response times, refusals
    (TCP) or drops (UDP), and its capacity's queue and utilisation over the span."""
    times_by_real: dict[int, list[int]] = {}
    for real, ns in response_times:
        times_by_real.setdefault(real, []).append(ns)
    udp = protocol == "udp"
    engine = switch.hosts.engine
    rows = engine.udp_capacity() if udp else engine.capacity()
    capacity = {(host, port): row for host, port, *row in rows}
    host_of = {address: h for h, address in enumerate(switch.hosts.addresses)}
    snapshot = {row["host"]: row["counters"] for row in switch.sockets()}
    reals = []
    for index, (svc, real) in enumerate(switch.reals):
        if not real.emulated or svc.protocol != protocol:
            continue
        times = sorted(times_by_real.get(index, []))
        row = capacity.get((host_of[real.address.packed], real.port))
        counters = snapshot.get(configmod.format_address(real.address), {})
        entry = {
            "service": f"{svc.protocol.upper()} {svc.endpoint}",
            "real": real.endpoint,
            "requests": len(times),
            **_times(times),
            "workers": real.workers,
        }
        if udp:  # request datagrams a full wait queue dropped (Linux Udp RcvbufErrors)
            entry["dropped"] = row[-1] if row is not None else 0
        else:
            entry["refused"] = counters.get("listen_drops", 0)  # SYNs a full queue dropped (Linux ListenDrops)
        if row is not None:
            workers, served, waited, queue_max, _, _, queue_area, busy_area = row[:8]
            entry.update(
                served=served,
                waited=waited,
                queue_mean=round(queue_area / span_ns, 3),
                queue_max=queue_max,
                utilisation=round(busy_area / (workers * span_ns), 4),
            )
        reals.append(entry)
    return reals


def switch_answers(switch) -> int:
    """Packets the emulated reals sent through the switch (what it counted as their replies; dr and tun
    reals answer past it)."""
    return sum(r["out_pkts"] for r in switch.real_counters())


def _times(sorted_ns: list[int]) -> dict:
    """Response-time figures in milliseconds (first request byte at the switch to the answer's last byte)."""
    out = {f"p{p}_ms": round(percentile(sorted_ns, p) / MS, 3) for p in PERCENTILES}
    out["mean_ms"] = round(sum(sorted_ns) / len(sorted_ns) / MS, 3) if sorted_ns else 0.0
    out["max_ms"] = round(sorted_ns[-1] / MS, 3) if sorted_ns else 0.0
    return out


def _queue_series(samples, first: int, protocols: list[str], switch) -> list:
    """[(seconds, waiting per real, active connections per real)] at each sample: the plot's lines, one per
    emulated real of the protocols' services in the order the outcome lists them (_reals), keyed by the
    real's index and its protocol, so a TCP and a UDP real on one address and port keep their own lines."""
    host_of = {address: h for h, address in enumerate(switch.hosts.addresses)}
    lines = [
        (index, (svc.protocol, host_of[real.address.packed], real.port))
        for protocol in protocols
        for index, (svc, real) in enumerate(switch.reals)
        if real.emulated and svc.protocol == protocol
    ]
    series = []
    for now, capacity, active in samples:
        waiting = {(protocol, host, port): row[4] for protocol, host, port, *row in capacity}
        series.append(
            [
                round((now - first) / NS, 6),
                [waiting.get(where, 0) for _, where in lines],
                [active[index] for index, _ in lines],
            ]
        )
    return series
