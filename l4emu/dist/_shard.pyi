"""Type stub of the extension module l4emu.dist._shard (ext/l4emu/dist/_shard.pyx)."""

from array import array

from l4emu.datapath._batch import Batch
from l4emu.io.pcap._read import PacketFilter

class Dealer(PacketFilter):
    """Keeps the packets of one worker's share: those whose client address hashes to it."""

    @property
    def workers(self) -> int: ...
    @property
    def me(self) -> int: ...
    def __init__(
        self,
        workers: int,
        me: int,
        endpoints: list[tuple[int, bytes, int, int]],
        addresses: list[tuple[int, bytes]],
        mask4: bytes = ...,
        mask6: bytes = ...,
    ) -> None: ...
    def owner_of(self, frame: bytes, linktype: int = 1, parsed: bool = False) -> int: ...

def account(
    batch: Batch,
    index: memoryview,
    first: int,
    records: memoryview | bytes,
    pcapng: bool,
    lengths: memoryview,
    owners: memoryview,
    me: int,
) -> None: ...
def gather(
    lengths: memoryview,
    owners: memoryview,
    start: int,
    count: int,
    sources: list[memoryview],
    taken: array[int],
    out: bytearray,
) -> tuple[int, int]: ...
def first_written(batch: Batch, index: memoryview) -> tuple[int, int, int] | None: ...
