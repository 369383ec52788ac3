"""Type stub of the extension module l4emu.io.pcap._write (ext/l4emu/io/pcap/_write.pyx)."""

from collections.abc import Sequence

from l4emu.datapath._batch import Batch

PCAP_MAGIC_US: int
PCAP_MAGIC_NS: int
PCAPNG_SHB: int
PCAPNG_BOM: int
PCAPNG_IDB: int
LINKTYPE_ETHERNET: int

class Encoder:
    """Encodes a batch's packets as pcap records or pcapng EPBs (with comments) into one buffer."""

    nanosecond: bool
    snaplen: int
    def __init__(self, pcapng: bool) -> None: ...
    def add_interface(self, nanosecond: bool) -> None: ...
    def first_written(self, batch: Batch, include_dropped: bool) -> tuple[int, int] | None: ...
    def encode(
        self, batch: Batch, include_dropped: bool, comments: Sequence[Sequence[bytes]] | None, linktype: int
    ) -> tuple[memoryview | bytes, int]: ...
    def measure(
        self, batch: Batch, include_dropped: bool, comments: Sequence[Sequence[bytes]] | None, linktype: int
    ) -> tuple[int, int]: ...
    def encode_into(
        self,
        batch: Batch,
        include_dropped: bool,
        comments: Sequence[Sequence[bytes]] | None,
        linktype: int,
        out: memoryview | bytearray,
    ) -> tuple[int, int]: ...
