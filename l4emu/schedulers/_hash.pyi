"""Type stub of the extension module l4emu.schedulers._hash (ext/l4emu/schedulers/_hash.pyx)."""

from collections.abc import Iterable

from l4emu.schedulers._core import Scheduler

DEFAULT_MH_SIZE: int

def flags_of(cls: type[Scheduler], flags: Iterable[str]) -> tuple[str, ...]: ...

class SourceHash(Scheduler):
    def __init__(self, flags: Iterable[str] = ()) -> None: ...

class DestinationHash(Scheduler): ...

class Maglev(Scheduler):
    def __init__(self, flags: Iterable[str] = (), table_size: int = ...) -> None: ...
    def slots(self) -> list[int]: ...

class Rendezvous(Scheduler):
    def __init__(self, flags: Iterable[str] = ()) -> None: ...
