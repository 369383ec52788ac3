"""l4emu: a packet-level L4 switch (load balancer) emulator.

The public API, loaded on first use (PEP 562) so that `import l4emu`, and so every `l4emu` command,
stays cheap:

    Switch       l4emu.switch.Switch: a switch built from a Config (Switch.from_config(path, seed))
    Config       l4emu.config.Config: a validated configuration
    replay       l4emu.replay.replay(capture, switch, output=None, ...): replay a capture, return a summary
    L4emuError   the base of every error l4emu raises for a bad input (l4emu.errors names them all)
    ConfigError, CaptureError, WriteError, EventError: what those raise for bad input
    __version__  the installed distribution's version

`l4emu.replay` is the function, as an eager `from l4emu.replay import replay` here would make it;
its module's other names are imported from it: `from l4emu.replay import summarize`.
"""

import sys
import types

_API = {
    "Switch": "l4emu.switch",
    "Config": "l4emu.config",
    "ConfigError": "l4emu.config",
    "replay": "l4emu.replay",
    "CaptureError": "l4emu.io",
    "WriteError": "l4emu.io",
    "EventError": "l4emu.events",
    "L4emuError": "l4emu.errors",
}

__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        from importlib import import_module

        value = getattr(import_module(_API[name]), name)
    elif name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("l4emu")
        except PackageNotFoundError:  # run from a source tree that was never installed
            value = "0+unknown"
    else:
        raise AttributeError(f"module 'l4emu' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        # Loading the submodule l4emu.replay binds it here as `replay`; the public name stays the function.
        if name == "replay" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
