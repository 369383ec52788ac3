from collections.abc import Callable

from l4emu.clients._clients import Clients
from l4emu.datapath._batch import Batch
from l4emu.datapath._datapath import Datapath
from l4emu.hosts._engine import Engine

REPLY_GAP: int

class Loop:
    last_ts: int
    answers: int
    direct: int
    superseded: int
    fragments_dropped: int
    def __init__(
        self,
        datapath: Datapath,
        hosts: Engine,
        fronts: list[tuple[bytes, int, int]],
        outside: Callable[[Batch], None] | None,
        inside: Callable[[Batch], None] | None,
        restamp: bool,
        secret: bytes,
        capacity: int = ...,
    ) -> None: ...
    def run(self, batch: Batch, start: int = ..., until_ns: int = ...) -> int: ...
    def client_frame(self, frame: bytes, ts: int, origlen: int, iface: int, linktype: int) -> None: ...
    def advance(self, now: int) -> None: ...
    def intercept(self, batch: Batch) -> int: ...
    def flush(self) -> None: ...
    def memory(self) -> int: ...
    def restamp_entries(self) -> int: ...
    def host_reassembly(self) -> dict[str, int]: ...
    def simulate(
        self,
        clients: Clients,
        sample_every_ns: int = ...,
        on_sample: Callable[[int], None] | None = ...,
        on_timer: Callable[[int], int] | None = ...,
        more: Clients | None = ...,
    ) -> int: ...
