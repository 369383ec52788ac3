"""Type stub of the extension module l4emu.clients._gen (ext/l4emu/clients/_gen.pyx)."""

from collections.abc import Sequence

from l4emu.datapath._batch import Batch

DIST_KINDS: dict[str, int]
ARRIVALS: dict[str, int]

class Generator:
    """Fills Batches with the packets clients send, in time order, until every conversation has ended."""

    @property
    def sessions(self) -> int: ...
    @property
    def conversations(self) -> int: ...
    @property
    def conversations6(self) -> int: ...
    @property
    def requests_sent(self) -> int: ...
    @property
    def packets(self) -> int: ...
    @property
    def first_ns(self) -> int: ...
    @property
    def last_ns(self) -> int: ...
    @property
    def done(self) -> bool: ...
    def __init__(
        self,
        *,
        seed64: int,
        arrival: int,
        rate: float,
        duration_s: float,
        start_ns: int,
        arrivals: Sequence[int] | None,
        clients: int,
        ipv6_clients: int,
        base4: bytes,
        base6: bytes,
        target4: tuple[bytes, int] | None,
        target6: tuple[bytes, int] | None,
        requests: int,
        connections: int,
        think: tuple[str, float, float, tuple[float, ...]],
        request: tuple[str, float, float, tuple[float, ...]],
        response: tuple[str, float, float, tuple[float, ...]],
        rtt_ns: int,
        raw_ip: bool,
        head: bytes,
        tail4: bytes,
        tail6: bytes,
        udp: bool = ...,
        arrival_clients: Sequence[int] | None = ...,
    ) -> None: ...
    def fill(self, batch: Batch) -> int: ...
    def fill_with(self, other: Generator, batch: Batch) -> int: ...

def syn_times(batch: Batch) -> list[int]: ...
