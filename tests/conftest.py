"""Shared fixtures: a switch on the embedded default config and a way to push scapy frames through it."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.all import raw

from l4emu.datapath._batch import NS, Batch
from l4emu.switch import Switch

ROOT = Path(__file__).resolve().parent.parent
PCAPS = ROOT / "pcaps"


class Harness:
    """Runs frames through a Switch one batch at a time and hands back (verdict, detail, bytes)."""

    def __init__(self, switch: Switch):
        self.switch = switch

    def run(self, frames, linktype=1, times_s=None):
        frames = [f if isinstance(f, bytes) else raw(f) for f in frames]
        stamps = [int(t * NS) for t in times_s] if times_s is not None else [NS * (1 + i) for i in range(len(frames))]
        batch = Batch.from_frames(frames, linktype, stamps)
        self.switch.process(batch)
        return [(*batch.result(i), batch.packet(i)) for i in range(len(frames))]

    def one(self, frame, linktype=1, t=1.0):
        return self.run([frame], linktype, [t])[0]


@pytest.fixture
def switch():
    return Switch.from_config(None, seed=1)


@pytest.fixture
def harness(switch):
    return Harness(switch)


def service_toml(vip="10.0.0.100:80", reals=("10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"), extra="") -> str:
    """One [[service]] block of a config; `extra` lines go into the service table."""
    lines = ["[[service]]", f'vip = "{vip}"', *filter(None, extra.splitlines())]
    for real in reals:
        lines += ["  [[service.real]]", f'  address = "{real}"']
    return "\n".join(lines) + "\n"


def make_switch(toml_text: str, tmp_path: Path, seed: int = 1) -> Switch:
    path = tmp_path / "lb.toml"
    path.write_text(toml_text)
    return Switch.from_config(path, seed=seed)


def run_cli(*args, check=True):
    """The installed command, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "l4emu.cli", *map(str, args)], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"l4emu {' '.join(map(str, args))} -> {proc.returncode}\n{proc.stderr}")
    return proc


needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")


def serve_control(path, handle, client):
    """Serve a control socket at `path` with `handle` in this thread, as the live loop does, while
    `client()` runs in another; returns the client's result and the socket's mode while it was served."""
    import os
    import select
    import stat
    import threading

    from l4emu.live import control

    server = control.ControlServer(str(path), handle)
    epoll = select.epoll()
    server.register(epoll)
    result = {}
    thread = threading.Thread(target=lambda: result.update(value=client()))
    thread.start()
    while thread.is_alive():
        for fd, events in epoll.poll(0.05):
            server.on_event(fd, events)
        server.expire()
    mode = stat.S_IMODE(os.stat(path).st_mode)
    server.close()
    epoll.close()
    return result.get("value"), mode
