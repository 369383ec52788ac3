"""Start-up: the `l4emu` command imports what the command it runs uses, and nothing more.

Each check runs a fresh interpreter (this one has everything imported already) and lists the modules
loaded after the interpreter's own start. No timing here: a module that should not load is a fact on
any machine; how long the start takes is measured as a whole command (see benchmarks/bench.py).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import PCAPS, ROOT

# Loaded by the interpreter's start (site, .pth files) are not counted: only what l4emu brought in.
PROBE = """
import contextlib, io, json, sys
before = set(sys.modules)
sys.argv = ["l4emu", *json.loads(sys.argv[1])]
from l4emu.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main()
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "new": sorted(set(sys.modules) - before)}))
"""

# Needed by none of the commands checked here: the live/lab side, the emulated hosts, the comparison
# and its plot, the emulated clients (gen), the plugin scan (importlib.metadata reads every installed
# distribution), the progress bar's terminal code, the test suite's own packet libraries, and
# importlib.resources (the default config is read as a file beside the package).
HEAVY = ("l4emu.cli.live", "l4emu.live", "l4emu.io.tun", "l4emu.hosts", "l4emu.emulate", "l4emu.compare",
         "l4emu.render.report", "l4emu.workload", "l4emu.clients", "l4emu.cli.simulate", "l4emu.dist", "matplotlib",
         "scapy", "dpkt", "importlib.metadata", "importlib.resources", "click._termui_impl",
         "l4emu.cluster", "l4emu.render.cluster")


def loaded(*args) -> tuple[int, list[str]]:
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps([str(a) for a in args])], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    return result["code"], result["new"]


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def test_a_plain_replay_imports_only_what_it_uses():
    code, modules = loaded("replay", PCAPS / "sample.pcap")
    assert code in (None, 0)
    assert "l4emu.replay" in modules            # the probe did run the replay
    assert heavy(modules) == []
    assert "json" not in modules                # for --json and state files only


@pytest.mark.parametrize("args, own", [
    (["--help"], []),
    (["--version"], []),
    (["replay", "--help"], ["l4emu.cli.capture", "l4emu.errors"]),      # the command's module and the error base
])
def test_help_lists_every_command_without_importing_them(args, own):
    code, modules = loaded(*args)
    assert code in (None, 0)
    assert [m for m in modules if m.startswith("l4emu")] == sorted(["l4emu", "l4emu.cli", *own])


def test_the_lazy_commands_load_when_named():
    code, modules = loaded("live", "--help")
    assert code in (None, 0)
    assert "l4emu.cli.live" in modules


def test_import_l4emu_is_cheap_and_names_the_public_api():
    out = subprocess.run([sys.executable, "-c", "import sys; before = set(sys.modules); import l4emu; "
                          "print(sorted(set(sys.modules) - before))"], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.split() == ["['l4emu']"]
    import l4emu
    import l4emu.compare                        # loads the module l4emu.replay: the name stays the function
    from l4emu.replay import replay
    assert l4emu.replay is replay
    assert {"Switch", "Config", "replay", "ConfigError", "CaptureError", "WriteError", "EventError",
            "__version__"} <= set(l4emu.__all__)
    for name in l4emu.__all__:
        assert getattr(l4emu, name) is not None
