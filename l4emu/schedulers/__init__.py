"""Scheduler registry: built-ins by name, third-party plugins from the `l4emu.schedulers` entry points.

A scheduler class may declare `flags` (the flag names it accepts) and `options` (which of
flags, table_size and seed its constructor takes); create() passes only those.
"""

from __future__ import annotations

from collections.abc import Mapping

from l4emu.schedulers._core import PythonScheduler, RoundRobin, Scheduler
from l4emu.schedulers._hash import DestinationHash, Maglev, Rendezvous, SourceHash
from l4emu.schedulers._load import (
    LeastConnection,
    NeverQueue,
    Random,
    ShortestExpectedDelay,
    TwoChoices,
    WeightedFailover,
    WeightedLeastConnection,
    WeightedOverflow,
    WeightedRoundRobin,
)
from l4emu.schedulers._locality import LocalityLeastConnection, LocalityLeastConnectionReplicated

BUILTINS: dict[str, type[Scheduler]] = {
    cls.name: cls
    for cls in (
        RoundRobin,
        WeightedRoundRobin,
        LeastConnection,
        WeightedLeastConnection,
        ShortestExpectedDelay,
        NeverQueue,
        SourceHash,
        DestinationHash,
        Random,
        TwoChoices,
        Maglev,
        Rendezvous,
        WeightedFailover,
        WeightedOverflow,
        LocalityLeastConnection,
        LocalityLeastConnectionReplicated,
    )
}
BUILTINS["p2c"] = TwoChoices  # "power of two choices", as proxies call it


def available() -> dict[str, object]:
    """Every scheduler name: built-ins first; a plugin cannot shadow a built-in."""
    from importlib.metadata import entry_points  # slow to import and to scan: only when asked

    found: dict[str, object] = {}
    for ep in entry_points(group="l4emu.schedulers"):
        found.setdefault(ep.name, ep)
    found.update(BUILTINS)
    return found


def catalog() -> Mapping[str, tuple[str, ...]]:
    """Every scheduler name with the flags it accepts, for the config to check (plugins load here;
    one that fails to load is listed without flags and reports its error when created). A built-in
    name is answered without scanning the installed packages for plugins (tens of milliseconds at
    every start); a plugin's name, or the whole list, scans them."""
    return _Catalog()


class _Catalog(Mapping):
    def __init__(self):
        self._all: dict[str, tuple[str, ...]] | None = None

    def __getitem__(self, name: str) -> tuple[str, ...]:
        if name in BUILTINS:  # a plugin cannot shadow a built-in
            return tuple(getattr(BUILTINS[name], "flags", ()))
        return self._everything()[name]

    def __iter__(self):
        return iter(self._everything())

    def __len__(self) -> int:
        return len(self._everything())

    def _everything(self) -> dict[str, tuple[str, ...]]:
        if self._all is None:
            self._all = {}
            for name, entry in available().items():
                try:
                    self._all[name] = tuple(getattr(_resolve(name, entry), "flags", ()))
                except Exception:
                    self._all[name] = ()
        return self._all


def _resolve(name: str, entry) -> type[Scheduler]:
    cls = entry if isinstance(entry, type) else entry.load()
    if not (isinstance(cls, type) and issubclass(cls, Scheduler)):
        raise TypeError(f"scheduler plugin {name!r} is not a subclass of l4emu.schedulers.Scheduler")
    return cls


def create(name: str, flags=(), table_size: int | None = None, seed: int = 0) -> Scheduler:
    """A fresh scheduler instance for one service; flags it does not know are a ValueError."""
    entry = BUILTINS.get(name) or available().get(name)  # entry points are slow to scan
    if entry is None:
        raise KeyError(f"unknown scheduler {name!r}")
    cls = _resolve(name, entry)
    accepted = tuple(getattr(cls, "flags", ()))
    for flag in flags:
        if flag not in accepted:
            raise ValueError(f"scheduler {name!r} has no flag {flag!r} (its flags: {', '.join(accepted) or 'none'})")
    given = {"flags": tuple(flags), "table_size": table_size, "seed": seed}
    return cls(**{k: given[k] for k in getattr(cls, "options", ()) if given[k] is not None})


__all__ = ["BUILTINS", "PythonScheduler", "RoundRobin", "Scheduler", "available", "catalog", "create"]
