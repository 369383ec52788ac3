"""Write pcap/pcapng to "<path>.part", renamed on close, so a failed run never leaves a file that looks complete.

A target that exists and is not a regular file (a device such as /dev/full, a FIFO, a link to one) is
written in place: there is nothing to rename over, and no file is left behind to look complete.
"""

import os
import struct
from collections.abc import Callable
from typing import BinaryIO

from l4emu.errors import L4emuError
from l4emu.io.pcap._write import (
    LINKTYPE_ETHERNET,
    PCAP_MAGIC_NS,
    PCAP_MAGIC_US,
    PCAPNG_BOM,
    PCAPNG_IDB,
    PCAPNG_SHB,
    Encoder,
)

FORMATS = {".pcap": "pcap", ".pcapng": "pcapng"}
PCAP_HEADER_BYTES = 24


class WriteError(L4emuError):
    """A capture that cannot be written: names the path and the problem."""

    def __init__(self, path, problem):
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self):
        return type(self), (self.path, self.problem)


def open_writer(path, interfaces, *, nanosecond=False, fmt=None, snaplen=0):
    """Open a pcap/pcapng writer; `interfaces` may be a reader's list that grows while reading.
    `snaplen` > 0 keeps at most that many bytes of each packet (the record keeps its real length)."""
    return CaptureWriter(path, interfaces, nanosecond=nanosecond, fmt=fmt, snaplen=snaplen)


def output_format(path, fmt=None) -> str:
    """What to write to `path`: `fmt` (--format) when given, else what the extension says.

    A device or FIFO (/dev/full, /dev/stdout, a pipe) has no extension to go by: it gets pcap, which
    every reader of a stream takes (tcpdump -r -), unless --format says otherwise. A known extension
    that contradicts --format is refused rather than leaving a .pcap file that holds pcapng."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if fmt is not None and fmt not in FORMATS.values():
        raise WriteError(path, f"unknown format {fmt!r}: use 'pcap' or 'pcapng'")
    if fmt is not None and ext in FORMATS and FORMATS[ext] != fmt:
        raise WriteError(path, f"--format {fmt} contradicts the extension {ext!r}")
    if fmt is None:
        fmt = FORMATS.get(ext) or ("pcap" if _in_place(path) else None)
    if fmt is None:
        raise WriteError(
            path, f"cannot tell the format from extension {ext!r}: use .pcap or .pcapng, or give --format pcap|pcapng"
        )
    return fmt


def _in_place(path: str) -> bool:
    """Write straight to path? Only a target that exists and is not a regular file (a device, a FIFO)."""
    return os.path.exists(path) and not os.path.isfile(path)


def write_text_atomic(path, text: str) -> None:
    """Write a text file under a temporary name and rename it on success (OSError on failure, nothing left)."""
    write_atomic(path, lambda f: f.write(text), "w")


def write_atomic(path, fill, mode: str = "wb") -> None:
    """fill(file) under "<path>.part", renamed to path on success: a full disk or a missing directory
    leaves nothing behind (a device such as /dev/full is written in place)."""
    path = os.fspath(path)
    if _in_place(path):
        with open(path, mode) as f:
            fill(f)
        return
    part = path + ".part"
    try:
        with open(part, mode) as f:
            fill(f)
        os.replace(part, path)
    except BaseException:
        try:
            os.unlink(part)
        except OSError:
            pass
        raise


def _block(btype, body):
    length = 12 + len(body)
    return struct.pack("=II", btype, length) + body + struct.pack("=I", length)


class CaptureWriter:
    """Appends Batches, one file write each; pcapng IDBs are added as new interfaces appear."""

    def __init__(self, path, interfaces, *, nanosecond=False, fmt=None, snaplen=0):
        self.path = os.fspath(path)
        if snaplen < 0:
            raise WriteError(self.path, f"snap length {snaplen} is negative")
        self.format = fmt = output_format(self.path, fmt)
        self.interfaces = interfaces
        self.nanosecond = nanosecond
        self.packets_written = 0
        self._encoder = Encoder(fmt == "pcapng")
        self._encoder.snaplen = snaplen
        # How the finished file takes its name; live mode with --user hands this to a helper that kept root.
        self.rename: Callable[[str, str], None] = os.replace
        self._linktype: int | None = None  # pcap: fixed by the first packet written
        self._idbs = 0
        self._failed = False
        self._part = self.path if _in_place(self.path) else self.path + ".part"
        self._file: BinaryIO | None
        try:
            self._file = open(self._part, "wb")
        except OSError as e:
            raise WriteError(self.path, f"cannot create {self._part}: {e.strerror or e}") from None
        if fmt == "pcapng":
            self._put(_block(PCAPNG_SHB, struct.pack("=IHHq", PCAPNG_BOM, 1, 0, -1)))

    def _put(self, data):
        assert self._file is not None, "write() checks that the writer is open"
        try:
            self._file.write(data)
        except OSError as e:
            self._failed = True
            raise WriteError(self.path, f"cannot write: {e.strerror or e}") from None

    def _pcap_header(self, linktype, iface):
        snaplen = self.interfaces[iface].snaplen if iface < len(self.interfaces) else 0
        self._linktype = linktype
        self._encoder.nanosecond = self._nanosecond(self.interfaces)
        magic = PCAP_MAGIC_NS if self._encoder.nanosecond else PCAP_MAGIC_US
        self._put(struct.pack("=IHHiIII", magic, 2, 4, 0, 0, snaplen or 65535, linktype))

    def _new_idbs(self):
        blocks = []
        for iface in self.interfaces[self._idbs :]:
            nanosecond = self._nanosecond([iface])
            # if_tsresol=9 (nanoseconds), padded to 4, then opt_endofopt
            options = struct.pack("=HHB3xHH", 9, 1, 9, 0, 0) if nanosecond else b""
            blocks.append(_block(PCAPNG_IDB, struct.pack("=HHI", iface.linktype, 0, iface.snaplen) + options))
            self._encoder.add_interface(nanosecond)
        self._idbs += len(blocks)
        return b"".join(blocks)

    def _nanosecond(self, interfaces):
        # Asked for, or needed to keep an interface's timestamps whole (a reader's list may grow after open).
        return self.nanosecond or any(iface.nanosecond for iface in interfaces)

    def write(self, batch, include_dropped=False, comments=None):
        """Append the batch's packets in order (drops only if asked); `comments[verdict][detail]` (pcapng)
        annotates them."""
        if self._file is None or self._failed:
            raise WriteError(self.path, "writer is closed" if self._file is None else "an earlier write failed")
        try:
            if self.format == "pcapng":
                self._put(self._new_idbs())
                data, count = self._encoder.encode(batch, include_dropped, comments, 0)
            else:
                if self._linktype is None:
                    first = self._encoder.first_written(batch, include_dropped)
                    if first is None:
                        return
                    self._pcap_header(*first)
                data, count = self._encoder.encode(batch, include_dropped, None, self._linktype or 0)
        except ValueError as e:
            self._failed = True
            raise WriteError(self.path, str(e)) from None
        if count:
            self._put(data)
            self.packets_written += count

    def close(self):
        """Finish the file under its real name; a writer that failed (or is left by an exception) leaves nothing."""
        if self._file is None:
            return
        try:
            if not self._failed:
                if self.format == "pcap" and self._linktype is None:
                    first = self.interfaces[0].linktype if self.interfaces else LINKTYPE_ETHERNET
                    self._pcap_header(first, 0)
                elif self.format == "pcapng":
                    self._put(self._new_idbs())
                self._file.close()
                if self._part != self.path:
                    self.rename(self._part, self.path)
        except OSError as e:
            self._failed = True
            raise WriteError(self.path, f"cannot finish: {e.strerror or e}") from None
        finally:
            if self._failed:
                self._discard()
            self._file = None

    def _discard(self):
        try:
            if self._file is not None:
                self._file.close()
        except OSError:
            pass
        if self._part == self.path:  # written in place: a device or FIFO, not ours to delete
            return
        try:
            os.unlink(self._part)
        except OSError:  # gone already, or not ours to remove any more (privileges dropped)
            pass

    def start_at_offsets(self) -> int:
        """Sharded replay: workers write packets at offsets of part_path themselves. Write the header
        as far as it is known before any packet (pcapng: the SHB and an IDB for every interface of
        the list, which must be complete; pcap: nothing yet, its 24 bytes are left for the header,
        which names the first written packet's link type: finish_at_offsets) and return where packets start."""
        assert self._file is not None, "a new writer"
        if self.format == "pcapng":
            self._put(self._new_idbs())
        else:
            self._encoder.nanosecond = self._nanosecond(self.interfaces)
        self._put(b"")
        self._file.flush()
        return self._file.tell() if self.format == "pcapng" else PCAP_HEADER_BYTES

    def offsets_encoder(self) -> Encoder:
        """An encoder for a worker of start_at_offsets: the records this writer would have made."""
        encoder = Encoder(self.format == "pcapng")
        encoder.nanosecond = self._encoder.nanosecond
        for iface in self.interfaces[: self._idbs]:
            encoder.add_interface(self._nanosecond([iface]))
        return encoder

    def finish_at_offsets(self, packets: int, first: tuple[int, int] | None) -> None:
        """After the workers: the pcap header from the first written packet's (link type, interface),
        then close as usual."""
        self.packets_written = packets
        if self.format == "pcap" and first is not None:
            self._pcap_header(*first)  # at offset 0: this file object has written nothing else
        self.close()

    @property
    def part_path(self) -> str:
        """Where the bytes go until close: NAME.part, or NAME itself when written in place."""
        return self._part

    @property
    def renames(self) -> bool:
        return self._part != self.path

    def abort(self):
        """Give up: close and remove the .part file (nothing is renamed)."""
        self._failed = True
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._failed = True
        self.close()
