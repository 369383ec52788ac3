"""`l4emu gen`: a workload's client packets into a capture, batch by batch through the Cython writer."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

from l4emu.clients._gen import ARRIVALS, Generator, syn_times
from l4emu.config import format_endpoint
from l4emu.datapath._batch import NS, Batch
from l4emu.io import CaptureError, Interface, open_capture, open_writer
from l4emu.workload import REQUEST_HEAD, REQUEST_TAIL, Distribution, Workload

# Packet time starts here (2024-01-01 00:00:00 UTC) unless a capture gives the arrivals.
START_NS = 1_704_067_200 * NS
LINKTYPE = {"ethernet": 1, "raw": 101}  # LINKTYPE_ETHERNET, LINKTYPE_RAW
SNAPLEN = 65535
BATCH_PACKETS = 4096


def capture_arrivals(path: Path, duration: float) -> list[int]:
    """The capture's SYN times (ns, sorted), those within `duration` seconds of the first."""
    times: list[int] = []
    with open_capture(path) as reader:
        for batch in reader.batches():
            times.extend(syn_times(batch))
        if reader.warnings and not times:
            raise CaptureError(path, 0, reader.warnings[0])
    times.sort()
    if not times:
        raise CaptureError(path, 0, "holds no TCP SYN: there are no arrivals to copy")
    if math.isfinite(duration):
        times = [t for t in times if t - times[0] < duration * NS]
    return times


def _dist(d: Distribution) -> tuple:
    return (d.kind, d.mean, d.sigma, d.values)


def generator(workload: Workload) -> Generator:
    """The Cython generator for a workload: every draw comes from one 64-bit seed made from workload.seed."""
    return Generator(**model_arguments(workload))


def model_arguments(workload: Workload) -> dict:
    """The keywords of a Generator (or of the closed loop's Clients, which extends it) for a workload."""
    arrivals = capture_arrivals(workload.capture, workload.duration) if workload.capture else None
    tails = [REQUEST_TAIL % format_endpoint(*t).encode() if t else b"" for t in (workload.target, workload.target6)]
    return dict(
        seed64=random.Random(workload.seed).getrandbits(64),
        arrival=ARRIVALS[workload.arrival],
        rate=workload.rate,
        duration_s=workload.duration,
        start_ns=START_NS,
        arrivals=arrivals,
        clients=workload.clients,
        ipv6_clients=workload.ipv6_clients,
        base4=workload.clients_v4.network_address.packed,
        base6=workload.clients_v6.network_address.packed,
        target4=(workload.target[0].packed, workload.target[1]) if workload.target else None,
        target6=(workload.target6[0].packed, workload.target6[1]) if workload.target6 else None,
        requests=1 if not workload.keep_alive else workload.requests_per_conn,
        connections=workload.connections_per_session,
        think=_dist(workload.think_time),
        request=_dist(workload.request_size),
        response=_dist(workload.response_size),
        rtt_ns=round(workload.rtt * NS),
        raw_ip=workload.linktype == "raw",
        head=REQUEST_HEAD,
        tail4=tails[0],
        tail6=tails[1],
        udp=workload.protocol == "udp",
    )


def generate(workload: Workload, output: Path, fmt: str | None = None) -> dict:
    """Write the workload's client packets to `output`; a summary of what was written (plain data)."""
    started = time.perf_counter()
    gens = [generator(part) for part in workload.parts()]
    gen = gens[0]
    linktype = LINKTYPE[workload.linktype]
    batch = Batch(BATCH_PACKETS)
    with open_writer(output, [Interface(linktype, SNAPLEN, True)], nanosecond=True, fmt=fmt) as writer:
        while not all(g.done for g in gens):
            if len(gens) == 1:
                gen.fill(batch)
            else:
                gen.fill_with(gens[1], batch)
            writer.write(batch)
            batch.reset()
    elapsed = time.perf_counter() - started
    packets = sum(g.packets for g in gens)
    summary = {
        "output": str(output),
        "workload": workload.describe(),
        "packets": packets,
        "sessions": sum(g.sessions for g in gens),
        "conversations": sum(g.conversations for g in gens),
        "conversations_ipv6": sum(g.conversations6 for g in gens),
        "requests": sum(g.requests_sent for g in gens),
        "span_s": _span(gens),
        "elapsed_s": elapsed,
        "packets_per_s": packets / elapsed if elapsed > 0 else 0.0,
    }
    if len(gens) > 1:  # a mixed workload: each protocol's share of what was written
        summary["by_protocol"] = {
            part.protocol: {"packets": g.packets, "sessions": g.sessions, "requests": g.requests_sent}
            for part, g in zip(workload.parts(), gens, strict=True)
        }
    return summary


def _span(gens: list[Generator]) -> float:
    """Seconds from the first packet written to the last, over every generator that wrote one."""
    wrote = [g for g in gens if g.packets]
    return (max(g.last_ns for g in wrote) - min(g.first_ns for g in wrote)) / NS if wrote else 0.0
