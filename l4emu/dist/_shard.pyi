"""Type stub of the extension module l4emu.dist._shard (ext/l4emu/dist/_shard.pyx)."""

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
    def owner_of(self, frame: bytes, linktype: int = 1) -> int: ...

def account(
    batch: Batch, index: memoryview, first: int, records: memoryview | bytes, pcapng: bool, lengths: memoryview
) -> None: ...
def window_bytes(lengths: memoryview, count: int) -> int: ...
def place(
    lengths: memoryview,
    count: int,
    mine: memoryview,
    first: int,
    records: memoryview | bytes | bytearray,
    out: memoryview,
    at: int,
) -> int: ...
def first_written(batch: Batch, index: memoryview) -> tuple[int, int, int] | None: ...
