"""Packet sources and sinks: pcap/pcapng indexed and encoded in C, so replay speed is bounded by the datapath."""

from l4emu.io.pcap.reader import CaptureError, Interface, open_capture, unknown_link_types
from l4emu.io.pcap.writer import WriteError, open_writer

__all__ = ["CaptureError", "Interface", "WriteError", "open_capture", "open_writer", "unknown_link_types"]
