"""Read pcap/pcapng from a read-only memory map, copying packets into batches (the file is never written)."""

import mmap
import os
from dataclasses import dataclass, field

from l4emu.datapath._batch import Batch
from l4emu.errors import L4emuError
from l4emu.io.pcap._read import Scanner


class CaptureError(L4emuError):
    """A capture that cannot be read (further): names the file, the byte offset and the problem."""

    def __init__(self, path, offset, problem):
        self.path, self.offset, self.problem = path, offset, problem
        where = f"{path}: " if offset is None else f"{path}: offset {offset}: "
        super().__init__(where + problem)

    def __reduce__(self):
        return type(self), (self.path, self.offset, self.problem)


@dataclass(frozen=True)
class Interface:
    """A capture interface as declared by the file (pcap: its global header; pcapng: an IDB)."""

    linktype: int
    snaplen: int
    nanosecond: bool
    offset: int = field(default=0, compare=False)  # of the global header or IDB that declares it


def unknown_link_types(path, interfaces, known) -> list[str]:
    """A message per interface whose link type is not in `known` (a switch passes its packets untouched)."""
    return [
        f"{path}: offset {iface.offset}: interface {i} has link type {iface.linktype}, which l4emu does not "
        f"parse: its packets pass untouched (parsed: {', '.join(map(str, sorted(known)))})"
        for i, iface in enumerate(interfaces)
        if iface.linktype not in known
    ]


def open_capture(path):
    """Open a pcap or pcapng file (told apart by its magic number) for reading in batches."""
    return CaptureReader(path)


class CaptureReader:
    """Yields Batches over the mapped file; `error` holds the fault that ended reading, if any."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.error = None
        self.packets_read = 0
        self.interfaces = []
        try:
            with open(self.path, "rb") as f:
                if os.fstat(f.fileno()).st_size == 0:
                    raise CaptureError(self.path, None, "empty file")
                self._map: mmap.mmap | None = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise CaptureError(self.path, None, f"cannot open: {e.strerror or e}") from None
        self._scanner = Scanner(self._map)
        if self._scanner.failed:
            error = self._fault()
            self.close()
            raise error
        self.format = "pcapng" if self._scanner.pcapng else "pcap"
        self._sync_interfaces()

    @property
    def position(self):
        """Bytes of the file read so far (for progress)."""
        return self._scanner.pos

    @property
    def size(self):
        return self._scanner.size

    @property
    def nanosecond(self):
        return any(iface.nanosecond for iface in self.interfaces)

    @property
    def warnings(self) -> list[str]:
        """What was read past so far (records over the snaplen, bad timestamps, versions libpcap refuses)."""
        return [f"{self.path}: offset {offset}: {text}" for offset, text in self._scanner.notes]

    def _fault(self):
        return CaptureError(self.path, self._scanner.fault_offset, self._scanner.problem)

    def _sync_interfaces(self):
        # Appended in place: a writer holding this list sees interfaces declared mid-file.
        scanner = self._scanner
        for i in range(len(self.interfaces), scanner.interface_count):
            self.interfaces.append(Interface(*scanner.interface(i)))

    def batches(self, capacity=4096):
        """Packets from where reading stopped, one refilled Batch at a time; stops at the end or a fault."""
        batch = Batch(capacity)
        scanner = self._scanner
        while scanner.fill(batch):
            self._sync_interfaces()
            self.packets_read += batch.n
            yield batch
        self._sync_interfaces()
        if scanner.failed and self.error is None:
            self.error = self._fault()

    def feed(self, sink, stop: int) -> int:
        """Tell `sink` (a _read.PacketSink) where each next packet lies, up to the packet numbered `stop`;
        returns how many (fewer than asked at the end or after a fault, then in `error`)."""
        count = self._scanner.feed(sink, stop)
        self._sync_interfaces()
        self.packets_read += count
        if self._scanner.failed and self.error is None:
            self.error = self._fault()
        return count

    @property
    def seen(self) -> int:
        """Packets `feed` has read."""
        return self._scanner.seen

    @property
    def latest_ns(self) -> int:
        """The latest timestamp of the packets `feed` has read."""
        return self._scanner.seen_ns

    def skim(self) -> None:
        """Read to the end, keeping no packet: every interface the file declares is in `interfaces`."""
        self._scanner.skim()
        self._sync_interfaces()

    def close(self):
        if self._map is None:
            return
        self._scanner.release()
        self._map.close()
        self._map = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
