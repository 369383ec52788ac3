"""One error hierarchy: every error l4emu raises for a bad input or a user's mistake is an L4emuError.

The CLI catches L4emuError (and OSError where a file system error is meant) and prints it as one
line, exit 2. Each subclass lives beside the code that raises it (ConfigError in config.py,
CaptureError and WriteError in io/pcap/, TunError in io/tun/device.py, ControlError and LabError in
live/, EventError in events.py), so that importing this module stays free.
"""

from __future__ import annotations


class L4emuError(Exception):
    """A bad input (file, config, flag, request) or a refusal, with a message fit to show a user as is."""


class OptionError(L4emuError, ValueError):
    """A command option, or a combination of options, that cannot be honoured (`--annotate` without a
    .pcapng output, a negative `--at`, `--plot` without matplotlib, `emulate` with no emulated real)."""
