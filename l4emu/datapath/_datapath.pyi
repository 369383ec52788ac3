"""Type stub of the extension module l4emu.datapath._datapath (ext/l4emu/datapath/_datapath.pyx)."""

import builtins
from collections.abc import Iterable, Sequence
from typing import Any

from l4emu.datapath._batch import Batch
from l4emu.datapath._flowtable import FlowTable
from l4emu.datapath._reasm import Reassembler
from l4emu.schedulers._core import Scheduler

STATE_NAMES: tuple[str, ...]
DROP_REASONS: tuple[str, ...]
PASS_REASONS: tuple[str, ...]
FORWARD_NAMES: tuple[str, ...]
FORWARD_METHODS: dict[str, int]
TUN_TYPES: dict[str, int]
TUN_FLAGS: dict[str, int]
DEFAULT_MTU: int
FRAGMENT_POLICIES: dict[str, int]
PARSED_LINKTYPES: dict[int, str]

class Datapath:
    """Parse, classify, track and rewrite: the batch loop every mode drives."""

    @property
    def table(self) -> FlowTable: ...
    @property
    def schedulers(self) -> list[Scheduler]: ...
    @property
    def conn_reuse_mode(self) -> bool: ...
    @property
    def sloppy_tcp(self) -> bool: ...
    @property
    def expire_nodest_conn(self) -> bool: ...
    @property
    def rescheduled(self) -> int: ...
    @property
    def broken(self) -> int: ...
    @property
    def blackholed(self) -> int: ...
    @property
    def clock_ns(self) -> int: ...
    @property
    def packets(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    def __init__(
        self,
        max_connections: int,
        secret: builtins.bytes,
        timeouts: Sequence[float],
        conn_reuse_mode: bool = True,
        sloppy_tcp: bool = False,
        expire_nodest_conn: bool = False,
        grow_index: bool = False,
    ) -> None: ...
    @property
    def reasm(self) -> Reassembler: ...
    def set_defrag(self, high_thresh: int, low_thresh: int = 0, timeout_s: float = 30.0) -> None: ...
    def add_service(
        self,
        vip: builtins.bytes,
        family: int,
        port: int,
        proto: int,
        scheduler: Scheduler,
        reals: Sequence[tuple[builtins.bytes, int, int, int, int]],
        persistence: float = 0,
        netmask: builtins.bytes | None = None,
        capture_servers: Sequence[tuple[builtins.bytes, int]] = (),
    ) -> int: ...
    def set_forwarding(
        self, service: int, mtu: int, source4: builtins.bytes, source6: builtins.bytes, fragments: str = "drop"
    ) -> None: ...
    def set_real_forwarding(
        self,
        index: int,
        method: str,
        family: int,
        tun_type: str = "ipip",
        tun_flags: str = "nocsum",
        tun_port: int = 0,
        katran: bool = False,
        mac: builtins.bytes = b"",
        pool: int = -1,
        toa: bool = True,
    ) -> None: ...
    def add_local_pool(self, addresses: Sequence[builtins.bytes], low: int, high: int) -> int: ...
    def local_addresses(self) -> list[tuple[builtins.bytes, int, int, int]]: ...
    def set_real(self, index: int, weight: int | None = None, down: bool | None = None) -> None: ...
    def take_over(self, old: Datapath, real_map: list[int], forget_templates: Iterable[int] = ()) -> None: ...
    def process(self, batch: Batch, start: int = 0, until_ns: int = 0, end: int = -1) -> int: ...
    def advance_clock(self, now_ns: int) -> None: ...
    def inside_view(self, before: Batch, after: Batch) -> None: ...
    def expire_due(self) -> None: ...
    def counters(self) -> dict[str, Any]: ...
    def unattributed(self) -> tuple[list[int], list[int]]: ...
    def real_counters(self) -> list[dict[str, Any]]: ...
    def state_counts(self) -> dict[str, int]: ...
    def flows(self) -> list[tuple[int, builtins.bytes, int, str, int]]: ...

# (family, src, dst, proto, sport, dport, l3, l4, end)
ParsedFrame = tuple[int, builtins.bytes, builtins.bytes, int, int, int, int, int, int]

def parse_frame(frame: builtins.bytes, linktype: int) -> ParsedFrame | None: ...
