"""Type stub of the extension module l4emu.dist._shard (ext/l4emu/dist/_shard.pyx)."""

from array import array

from l4emu.datapath._batch import Batch
from l4emu.io.pcap._read import PacketSink

DEALT_BYTES: int

class Dealer(PacketSink):
    """Deals the packets of a capture to workers by their client's address, as Scanner.feed reads them."""

    @property
    def workers(self) -> int: ...
    @property
    def filled(self) -> int: ...
    @property
    def counts(self) -> list[int]: ...
    def __init__(
        self,
        workers: int,
        endpoints: list[tuple[int, bytes, int, int]],
        addresses: list[tuple[int, bytes]],
        mask4: bytes = ...,
        mask6: bytes = ...,
    ) -> None: ...
    def begin(self, dealt: memoryview | bytearray, owners: memoryview | bytearray) -> None: ...
    def end(self) -> None: ...
    def owner_of(self, frame: bytes, linktype: int = 1, parsed: bool = False) -> int: ...

def fill_dealt(
    batch: Batch,
    capture: memoryview | bytes,
    dealt: memoryview | bytearray,
    owners: memoryview | bytearray,
    me: int,
    start: int,
    count: int,
    index: memoryview,
) -> int: ...
def account(batch: Batch, first: int, records: memoryview | bytes, pcapng: bool, lengths: memoryview) -> None: ...
def gather(
    owners: memoryview,
    start: int,
    count: int,
    lengths: list[memoryview],
    told: array[int],
    sources: list[memoryview],
    taken: array[int],
    out: bytearray,
) -> tuple[int, int]: ...
def first_written(batch: Batch, index: memoryview) -> tuple[int, int, int] | None: ...
