"""Type stub of the extension module l4emu.schedulers._core (ext/l4emu/schedulers/_core.pyx)."""

from typing import Any, ClassVar

class Scheduler:
    """What the datapath calls when a packet misses the connection table."""

    name: ClassVar[str]
    flags: ClassVar[tuple[str, ...]]
    options: ClassVar[tuple[str, ...]]

class RoundRobin(Scheduler): ...

class PythonScheduler(Scheduler):
    """Base of schedulers written in Python: override pick (and optionally the two hooks)."""

    @property
    def errors(self) -> list[Any]: ...
    def __init__(self) -> None: ...
    def pick(self, flow: Any, reals: list[Any]) -> int | None: ...
    def flow_ended(self, index: int) -> None: ...
    def reals_changed(self) -> None: ...
