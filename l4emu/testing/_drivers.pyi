"""Type stub of the extension module l4emu.testing._drivers (ext/l4emu/testing/_drivers.pyx)."""

from collections.abc import Iterable
from typing import Any

from l4emu.io.tun._io import TunIO
from l4emu.schedulers._core import Scheduler

def pick_many(
    scheduler: Scheduler, reals: list[dict[str, Any]], keys: Iterable[Any], connect: bool = False, now_ns: int = 0
) -> list[int]: ...
def complete_form(header: bytes, packet: bytes, capacity: int = 1) -> tuple[TunIO, bytes]: ...
def partial_form(io: TunIO, packet: bytes) -> bytes: ...
def ones_sum(data: bytes, acc: int = 0) -> int: ...
