"""What-if sweeps: a grid of replays run as independent tasks, gathered into one table.

The grid is the product of a spec's axes (captures x configs x schedulers x event sets x seeds). Each
point is one `compare.run_one`: a whole Switch replaying a whole capture, so points share nothing
and can run anywhere: on Dask (`dask.distributed`, the lightest credible engine for Python job
graphs: a local cluster of processes, or a scheduler's address on a real cluster) when it is
installed, on local processes (concurrent.futures) otherwise. Tasks get paths, so large captures
are never shipped through the scheduler; with `stage` each input travels once to each worker.
A point that fails is reported with its parameters; the others finish.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from l4emu.errors import L4emuError

AXES = ("captures", "configs", "schedulers", "events", "seeds")
DEFAULT_SEED = 1
EMBEDDED_CONFIG = "default"  # a `configs` entry naming the embedded config (l4emu config --default)


class SweepError(L4emuError):
    """A sweep spec that cannot be run: names the file and the key."""

    def __init__(self, source: str, key: str, message: str):
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")


@dataclass(frozen=True)
class Point:
    """One run of the grid: its place in the grid and its parameters (paths as the spec resolved them)."""

    index: int
    capture: str
    config: str  # a path, or EMBEDDED_CONFIG
    scheduler: str
    events: tuple[str, ...]
    seed: int

    def label(self) -> str:
        events = ",".join(self.events) or "no events"
        return f"{Path(self.capture).name} {Path(self.config).name} {self.scheduler} [{events}] seed {self.seed}"


@dataclass(frozen=True)
class Spec:
    source: str
    captures: tuple[str, ...]
    configs: tuple[str, ...]
    schedulers: tuple[str, ...]
    events: tuple[tuple[str, ...], ...]
    seeds: tuple[int, ...]

    def points(self) -> list[Point]:
        grid = itertools.product(self.captures, self.configs, self.schedulers, self.events, self.seeds)
        return [Point(k, *values) for k, values in enumerate(grid)]


def load_spec(path: str | Path, known_schedulers) -> Spec:
    """Read a sweep spec (TOML); paths in it are relative to the spec's own directory."""
    source = str(path)
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SweepError(source, "", exc.strerror or str(exc)) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SweepError(source, "", f"not valid TOML: {exc}") from None
    unknown = sorted(set(document) - set(AXES))
    if unknown:
        raise SweepError(source, unknown[0], f"unknown key (the axes are {', '.join(AXES)})")
    base = Path(path).resolve().parent
    captures = tuple(str(_existing(base, p, source, "captures")) for p in _strings(document, "captures", source))
    configs = tuple(
        p if p == EMBEDDED_CONFIG else str(_existing(base, p, source, "configs"))
        for p in _strings(document, "configs", source, default=[EMBEDDED_CONFIG])
    )
    names = _strings(document, "schedulers", source)
    bad = [n for n in names if n not in known_schedulers]
    if bad:
        raise SweepError(
            source, "schedulers", f"unknown scheduler {bad[0]!r} (known: {', '.join(sorted(known_schedulers))})"
        )
    event_sets = document.get("events", [[]])
    if not isinstance(event_sets, list) or not all(
        isinstance(s, list) and all(isinstance(e, str) for e in s) for s in event_sets
    ):
        raise SweepError(source, "events", 'a list of event sets, each a list like ["10:down:10.1.0.2:8080"]')
    _check_events(event_sets, source)
    seeds = document.get("seeds", [DEFAULT_SEED])
    if not isinstance(seeds, list) or not seeds or not all(type(s) is int and s >= 0 for s in seeds):
        raise SweepError(source, "seeds", "a non-empty list of whole numbers from 0")
    return Spec(source, captures, configs, tuple(names), tuple(tuple(s) for s in event_sets) or ((),), tuple(seeds))


def _strings(document: dict, key: str, source: str, default: list[str] | None = None) -> list[str]:
    value = document.get(key, default)
    if value is None:
        raise SweepError(source, key, "missing (a list of strings)")
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise SweepError(source, key, "a non-empty list of strings")
    return value


def _existing(base: Path, name: str, source: str, key: str) -> Path:
    path = (base / name).resolve()
    if not path.is_file():
        raise SweepError(source, key, f"{name}: no such file")
    return path


def _check_events(event_sets: list[list[str]], source: str) -> None:
    from l4emu.events import EventError, parse_event

    for events in event_sets:
        for text in events:
            try:
                parse_event(text)
            except EventError as exc:
                raise SweepError(source, "events", str(exc)) from None


def run_point(point: Point, staged: dict[str, bytes] | None = None) -> dict:
    """One grid point, in whatever process runs it: the comparison row, or the error with the point."""
    from l4emu import compare, schedulers
    from l4emu import config as configmod
    from l4emu.events import parse_event

    row: dict = {"point": asdict(point), "label": point.label()}
    try:
        capture = _local_copy(point.capture, staged) if staged else point.capture
        config_path = None if point.config == EMBEDDED_CONFIG else point.config
        if staged and config_path:
            config_path = _local_copy(config_path, staged)
        config = configmod.load(config_path, schedulers.catalog())
        events = [parse_event(e) for e in point.events]
        span = compare.capture_span_s(capture)
        row["run"] = compare.run_one(capture, config, point.scheduler, events, point.seed, span, point.capture)
        row["run"]["event_marks"] = [compare.event_mark(e) for e in events]
    except (L4emuError, OSError) as exc:
        row["error"] = str(exc)
    return row


def _local_copy(path: str, staged: dict[str, bytes]) -> str:
    """A staged input written once per worker machine, named by its content, and reused by later tasks."""
    data = staged[path]
    digest = hashlib.sha256(data).hexdigest()[:24]
    folder = Path(tempfile.gettempdir()) / "l4emu-stage"
    folder.mkdir(exist_ok=True)
    local = folder / f"{digest}-{Path(path).name}"
    if not local.exists():
        part = local.with_name(local.name + f".{os.getpid()}.part")
        part.write_bytes(data)
        part.replace(local)
    return str(local)


def run_serial(points: list[Point]) -> Iterator[dict]:
    for point in points:
        yield run_point(point)


def run_processes(points: list[Point], jobs: int) -> Iterator[dict]:
    """Local processes without Dask: one task per grid point, results as they finish."""
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_point, p) for p in points]
        for future in as_completed(futures):
            yield future.result()


def run_dask(points: list[Point], address: str | None, jobs: int, stage: bool) -> Iterator[dict]:
    """On Dask: the scheduler at `address`, or a local cluster of `jobs` single-threaded processes (replays
    are CPU-bound under one GIL per process: threads would not run two at once). Futures nested in an
    argument (the staged inputs) are resolved on the worker that runs the task."""
    from distributed import Client, LocalCluster
    from distributed import as_completed as dask_completed

    cluster = None if address else LocalCluster(n_workers=jobs, threads_per_worker=1, dashboard_address=None)
    try:
        with Client(address or cluster) as client:
            staged = None
            if stage:  # each input once to every worker; tasks then read a local copy
                files = {p for point in points for p in (point.capture, point.config) if p != EMBEDDED_CONFIG}
                staged = client.scatter({p: Path(p).read_bytes() for p in sorted(files)}, broadcast=True)
            futures = [client.submit(run_point, p, staged, pure=False) for p in points]
            for future in dask_completed(futures):
                yield future.result()
    finally:
        if cluster is not None:
            cluster.close()


def dask_available() -> bool:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


def sweep(
    spec: Spec,
    address: str | None = None,
    jobs: int = 1,
    stage: bool = False,
    engine: str | None = None,
    on_done: Callable[[int, int], None] | None = None,
) -> dict:
    """Run every point of `spec`; rows come back in grid order whatever order they finished in.
    `engine`: "dask", "processes" or "serial" (default: dask when installed and asked for more than one
    job or given an address, else processes for several jobs, else serial)."""
    points = spec.points()
    if engine is None:
        engine = "dask" if (address or jobs > 1) and dask_available() else "processes" if jobs > 1 else "serial"
    if engine == "dask":
        rows = run_dask(points, address, jobs, stage)
    elif engine == "processes":
        rows = run_processes(points, jobs)
    else:
        rows = run_serial(points)
    gathered: list[dict] = []
    for row in rows:
        gathered.append(row)
        if on_done:
            on_done(len(gathered), len(points))
    gathered.sort(key=lambda r: r["point"]["index"])
    return {
        "spec": spec.source,
        "engine": engine,
        "axes": {axis: [list(v) if isinstance(v, tuple) else v for v in getattr(spec, axis)] for axis in AXES},
        "rows": gathered,
    }
