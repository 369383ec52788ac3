"""Scheduler registry: built-ins by name, third-party plugins from the `l4emu.schedulers` entry points."""
from __future__ import annotations

from importlib.metadata import entry_points

from l4emu._sched import PythonScheduler, RoundRobin, Scheduler

BUILTINS: dict[str, type[Scheduler]] = {"rr": RoundRobin}


def available() -> dict[str, object]:
    """Every scheduler name: built-ins first; a plugin cannot shadow a built-in."""
    found: dict[str, object] = {}
    for ep in entry_points(group="l4emu.schedulers"):
        found.setdefault(ep.name, ep)
    found.update(BUILTINS)
    return found


def create(name: str) -> Scheduler:
    """A fresh scheduler instance for one service."""
    entry = available().get(name)
    if entry is None:
        raise KeyError(f"unknown scheduler {name!r}")
    cls = entry if isinstance(entry, type) else entry.load()
    if not (isinstance(cls, type) and issubclass(cls, Scheduler)):
        raise TypeError(f"scheduler plugin {name!r} is not a subclass of l4emu.schedulers.Scheduler")
    return cls()


__all__ = ["BUILTINS", "PythonScheduler", "RoundRobin", "Scheduler", "available", "create"]
