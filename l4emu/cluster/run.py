"""A capture through N switch instances behind ECMP, once per consistency design: what broke, and why.

The control plane of the cluster path: it builds the instances (whole Switches sharing one seed, so
one table hash serves them all), applies events on the packet clock (reals to every instance; lb-down
takes an instance out of ECMP and loses its table, lb-up brings it back restarted, lb-add adds one),
rebuilds the designs' tables after each change, and samples what the oracle counts.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
from collections.abc import Sequence

from l4emu import config as configmod
from l4emu import schedulers
from l4emu.cluster._cluster import ClusterPath, Steered
from l4emu.cluster.designs import DESIGNS, DesignSpec
from l4emu.datapath._batch import NS
from l4emu.events import LB_ACTIONS, Event, EventError
from l4emu.io import open_capture
from l4emu.switch import Switch

SAMPLES = 100
BUCKET_DESIGNS = (
    "beamer",
    "consistent",
)  # their Maglev table is a bucket table a permute event changes  # alive-connection samples over the capture's span
BUCKET_ENTRY_BYTES = 8  # beamer: a bucket's owner and previous owner (two 32-bit server ids)
ROW_ENTRY_BYTES = 8  # rendezvous-second-chance: a row's primary and secondary
SLOT_BYTES = 4  # a stateless hash table's slot (one 32-bit real id)
# maglev-global: a shared table's connection entry (the tuple's 64-bit hash, its last-seen time, a
# design timestamp, the real, the design's field and flags), as counted since the design came in
GLOBAL_ENTRY_BYTES = 40
GLB_ROWS = 65536
COUNTS = (
    "moved",
    "broken",
    "broken_real_down",
    "blackholed",
    "redirected_packets",
    "redirected_connections",
    "forward_packets",
    "connections",
    "dropped_packets",
)


class Cluster:
    """N Switches behind one router, and one consistency design over them."""

    def __init__(self, config: configmod.Config, design: str, instances: int, ecmp: str, seed: int):
        self.spec: DesignSpec = DESIGNS[design]
        size = config.services[0].mh_table_size
        # Katran and Maglev schedule any packet that misses (a flow moved to this instance mid-way).
        self.config = dataclasses.replace(
            config,
            sloppy_tcp=True,
            services=tuple(
                dataclasses.replace(
                    svc, scheduler=self.spec.scheduler, scheduler_flags=self.spec.flags, mh_table_size=size
                )
                for svc in config.services
            ),
        )
        self.seed = seed
        self.random = random.Random(seed)  # which buckets a permute event takes
        self.real_events: list[Event] = []
        self.firsts = [sum(len(s.reals) for s in config.services[:i]) for i in range(len(config.services))]
        self.n_reals = sum(len(svc.reals) for svc in config.services)
        self.switches: list[Switch] = []
        steered = []
        for _ in range(instances):
            switch, steers = self._new_switch()
            self.switches.append(switch)
            steered.append(steers)
        self.path = ClusterPath(
            self.spec.number,
            configmod.ECMP_MODES.index(ecmp),
            [switch._datapath for switch in self.switches],
            steered,
            len(config.services),
            self.n_reals,
            config.timeouts["established"],
            config.timeouts["udp"],
            config.cluster.insert_delay_ms / 1e3,
            size if design in BUCKET_DESIGNS else 0,
        )
        self.rendezvous = schedulers.create("hrw") if design == "rendezvous-second-chance" else None
        self.refresh()

    def _new_switch(self) -> tuple[Switch, list[Steered]]:
        """A fresh instance: the cluster's config and seed, the real events so far applied."""
        steers: list[Steered] = []

        def steer(scheduler):
            steers.append(Steered(scheduler))
            return steers[-1]

        # Each instance sees a share of the flows: its index grows with them (N indexes allocated at
        # max_connections would clear N times the memory of one switch's before the first packet is done).
        switch = Switch(self.config, self.seed, make_scheduler=steer, grow_index=True)
        for event in self.real_events:
            event.apply(switch)
        for first in self.firsts:  # each service's lookup table built now, as a control plane would, not at a packet
            switch._datapath.set_real(first)
        return switch, steers

    def refresh(self) -> None:
        """The design's own tables after the reals changed (bucket owners, GLB rows, available reals)."""
        counters = self.switches[0].real_counters()
        for s, svc in enumerate(self.config.services):
            first = self.firsts[s]
            if self.spec.name in BUCKET_DESIGNS:
                self.switches[0]._datapath.set_real(first)  # no change: the Maglev table is (re)built now
                slots = self.switches[0].schedulers[s].inner.slots()
                self.path.set_buckets(s, [first + x if x >= 0 else -1 for x in slots])
            elif self.rendezvous is not None:
                self.path.build_rows(s, self.rendezvous)
            elif self.spec.name == "hash":
                up = [first + i for i in range(len(svc.reals)) if _available(counters[first + i])]
                self.path.set_available(s, up)

    def apply(self, event: Event, moment_ns: int) -> int:
        """Apply one event; returns the connections alive on its real or instance just before."""
        per_real, per_instance = self.path.alive(moment_ns)
        if event.action == "permute":
            assert event.instance is not None, "parse_event gives permute a count"
            if self.spec.name in BUCKET_DESIGNS:
                for s in range(len(self.config.services)):
                    self.path.permute_buckets(s, self.random.sample(range(self.path.bucket_size), event.instance))
            return 0
        if event.action not in LB_ACTIONS:
            indexes = [i for i, (_, real) in enumerate(self.switches[0].reals) if real.endpoint == event.endpoint]
            for switch in self.switches:
                event.apply(switch)
            self.real_events.append(event)
            self.refresh()
            return sum(per_real[i] for i in indexes)
        if event.action == "lb-add":
            switch, steers = self._new_switch()
            switch.advance_clock(moment_ns)
            self.switches.append(switch)
            self.path.add_instance(switch._datapath, steers)
            return 0
        k = event.instance
        assert k is not None, "parse_event gives lb-down and lb-up an instance"
        if event.action == "lb-down":
            self.path.set_up(k, False)
            return per_instance[k]
        if not self.path.instance_up()[k]:  # back from down: restarted, with an empty table
            switch, steers = self._new_switch()
            switch.advance_clock(moment_ns)
            self.switches[k] = switch
            self.path.replace_instance(k, switch._datapath, steers)
            self.path.set_up(k, True)
        return 0

    def memory(self) -> list[dict]:
        """Per instance: the entries the design keeps for connections (at peak) and their bytes."""
        out = []
        n_services = len(self.config.services)
        for switch in self.switches:
            info = switch.table_info()
            per_entry = info["memory_bytes"] // max(info["capacity"], 1)
            name = self.spec.name
            if name == "beamer":
                entries, size = self.path.bucket_size * n_services, BUCKET_ENTRY_BYTES
            elif name == "rendezvous-second-chance":
                entries, size = GLB_ROWS * n_services, ROW_ENTRY_BYTES
            elif name == "hash":
                entries, size = sum(len(self.path.available(s)) for s in range(n_services)), SLOT_BYTES
            elif name == "consistent":
                entries, size = self.path.bucket_size * n_services, SLOT_BYTES
            else:
                entries, size = info["peak"], per_entry
            out.append({"entries": entries, "bytes": entries * size})
        return out


def _available(counter: dict) -> bool:
    return counter["weight"] > 0 and not counter["down"] and not counter["overloaded"]


def spread(values: Sequence[float]) -> dict:
    """Load imbalance: max/mean and the coefficient of variation (population standard deviation / mean)."""
    mean = sum(values) / len(values) if values else 0
    if not mean:
        return {"max_mean": 1.0, "cv": 0.0}
    return {"max_mean": round(max(values) / mean, 3), "cv": round(statistics.pstdev(values) / mean, 3)}


def check_events(config: configmod.Config, events: Sequence[Event], instances: int) -> None:
    """Every event names a real of the config or an instance that exists by then (lb-add numbers the next)."""
    known = {real.endpoint for svc in config.services for real in svc.reals}
    count = instances
    for event in sorted(events, key=lambda e: e.at_s):
        if event.action == "permute":
            continue
        if event.site:
            raise EventError(f"--event {event}: a site event needs a GSLB's sites: l4emu gslb replay")
        if event.action == "lb-add":
            count += 1
            if count > configmod.MAX_INSTANCES:
                raise EventError(f"--event {event}: a cluster has at most {configmod.MAX_INSTANCES} instances")
        elif event.action in LB_ACTIONS:
            if event.instance is None or event.instance >= count:
                raise EventError(f"--event {event}: no instance {event.instance} (instances 0-{count - 1} by then)")
        elif event.endpoint not in known:
            raise EventError(f"--event {event}: no real server {event.endpoint} in the config")


def run(
    capture, config: configmod.Config, design: str, events: Sequence[Event], instances: int, ecmp: str, seed: int
) -> dict:
    """One design over the whole capture: totals, each event's effects, memory, load and the alive series."""
    cluster = Cluster(config, design, instances, ecmp, seed)
    ordered = sorted(events, key=lambda e: e.at_s)
    log: list[dict] = []
    series: list[list] = []
    state: dict = {"start": None, "next_sample": 0, "sample_ns": 0, "applied": 0}

    def next_moment() -> int:
        moments = [state["next_sample"]]
        if state["applied"] < len(ordered):
            moments.append(state["start"] + int(ordered[state["applied"]].at_s * NS))
        return max(1, min(moments))

    def arrive(moment: int) -> None:
        while state["applied"] < len(ordered) and state["start"] + int(ordered[state["applied"]].at_s * NS) <= moment:
            event = ordered[state["applied"]]
            alive = sum(cluster.path.alive(moment)[0])
            before = cluster.path.counters()
            on_target = cluster.apply(event, moment)
            log.append(
                {"event": str(event), "at_s": event.at_s, "alive": alive, "on_target": on_target, "_before": before}
            )
            state["applied"] += 1
        if state["next_sample"] <= moment:
            per_real, per_instance = cluster.path.alive(moment)
            series.append([round((moment - state["start"]) / NS, 6), per_real, per_instance])
            state["next_sample"] = moment + state["sample_ns"]

    with open_capture(capture) as reader:
        span_ns = 0
        for batch in reader.batches():
            if not len(batch):
                continue
            if state["start"] is None:
                state["start"] = state["next_sample"] = batch.timestamp_ns(0)
                span_ns = _span_ns(capture)
                state["sample_ns"] = max(span_ns // SAMPLES, NS // 1000)
            position = 0
            while position < len(batch):
                moment = next_moment()
                position = cluster.path.process(batch, position, moment)
                if position < len(batch):
                    arrive(moment)
        warnings = list(reader.warnings)
        error = reader.error
    after = cluster.path.counters()
    for k, entry in enumerate(log):
        later = log[k + 1]["_before"] if k + 1 < len(log) else after
        before = entry.pop("_before")
        entry.update({name: later[name] - before[name] for name in COUNTS})
        entry["redirected_share"] = _share(entry["redirected_packets"], entry["forward_packets"])
    warnings += [f"--event {event}: never applied, the capture ended first" for event in ordered[state["applied"] :]]
    per_real = cluster.path.per_real()
    per_instance = cluster.path.per_instance()
    services = []
    for s, svc in enumerate(config.services):
        held = per_real[cluster.firsts[s] : cluster.firsts[s] + len(svc.reals)]
        services.append(
            {"service": f"{svc.protocol.upper()} {svc.endpoint}", "connections_per_real": held, **spread(held)}
        )
    return {
        "design": design,
        "source": cluster.spec.source,
        "state_kept_in": cluster.spec.per_connection_state,
        "instances_at_end": len(cluster.switches),
        "totals": {
            **after,
            "redirected_share": _share(after["redirected_packets"], after["forward_packets"]),
            "syns_with_timestamp_share": _share(after["syns_with_timestamp"], after["syns"]),
        },
        "events": log,
        "memory": cluster.memory(),
        "global_table": {"entries": after["global_entries"], "bytes": after["global_entries"] * GLOBAL_ENTRY_BYTES}
        if design == "maglev-global"
        else None,
        "load": {
            "reals": services,
            "instances": {
                "packets": [i["packets"] for i in per_instance],
                **spread([i["packets"] for i in per_instance]),
            },
        },
        "alive_over_time": series,
        "warnings": warnings,
        "error": str(error) if error else None,
    }


def _share(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def _span_ns(capture) -> int:
    from l4emu.compare import capture_span_s

    return int(capture_span_s(capture) * NS)


def compare(
    capture,
    config: configmod.Config,
    designs: Sequence[str],
    events: Sequence[Event] = (),
    instances: int | None = None,
    ecmp: str | None = None,
    seed: int | None = None,
) -> dict:
    """Every design over the same capture, events, instances and seed, side by side."""
    instances = instances or config.cluster.instances
    ecmp = ecmp or config.cluster.ecmp
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 32)
    check_events(config, events, instances)
    if any(real.emulated for svc in config.services for real in svc.reals):
        raise configmod.ConfigError(
            "cluster.instances", "a cluster runs without emulated reals for now (remove emulated = true)"
        )
    return {
        "capture": str(capture),
        "instances": instances,
        "ecmp": ecmp,
        "seed": seed,
        "events": [str(e) for e in events],
        "reals": [real.endpoint for svc in config.services for real in svc.reals],
        "runs": [run(capture, config, name, events, instances, ecmp, seed) for name in designs],
    }
