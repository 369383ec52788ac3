"""One error hierarchy: every error l4emu raises for a bad input or a user's mistake is an L4emuError.

The CLI catches L4emuError (and OSError where a file system error is meant) and prints it as one
line, exit 2. Each subclass lives beside the code that raises it, so that importing this module stays
free; `from l4emu.errors import ConfigError` (or any other below) works too, loading only its home.
"""

from __future__ import annotations

import importlib
from typing import Any


class L4emuError(Exception):
    """A bad input (file, config, flag, request) or a refusal, with a message fit to show a user as is."""


class OptionError(L4emuError, ValueError):
    """A command option, or a combination of options, that cannot be honoured (`--annotate` without a
    .pcapng output, a negative `--at`, `--plot` without matplotlib, `emulate` with no emulated real)."""


# Where each subclass is defined (its home module is imported on first use only).
HOMES = {
    "ConfigError": "l4emu.config",
    "CaptureError": "l4emu.io.pcap.reader",
    "WriteError": "l4emu.io.pcap.writer",
    "TunError": "l4emu.io.tun.device",
    "ControlError": "l4emu.live.control",
    "LabError": "l4emu.live.lab",
    "EventError": "l4emu.events",
}

__all__ = ["L4emuError", "OptionError", *HOMES]


def __getattr__(name: str) -> Any:
    if name in HOMES:
        return getattr(importlib.import_module(HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
