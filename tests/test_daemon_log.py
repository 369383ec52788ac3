"""Live mode logs like a daemon: --log-level, one timestamped line per event on stderr (no root needed here)."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from conftest import serve_control

from l4emu.cli import main
from l4emu.cli.live import setup_logging

ROOT = Path(__file__).resolve().parent.parent


def no_such_real(request):
    raise KeyError(f"no real server {request['endpoint']}")


def test_a_refused_control_request_is_one_log_line(tmp_path, caplog):
    path = tmp_path / "ctl.sock"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cli = [sys.executable, "-m", "l4emu.cli", "real", "set", "10.9.9.9:80", "--weight", "3", "--control", str(path)]
    with caplog.at_level(logging.INFO, logger="l4emu.live"):
        proc, _ = serve_control(path, no_such_real, lambda: subprocess.run(cli, capture_output=True, text=True, env=env))
    assert proc.returncode == 2 and proc.stderr == "l4emu: error: no real server 10.9.9.9:80\n"
    refused = [r for r in caplog.records if r.name == "l4emu.live"]
    assert len(refused) == 1 and refused[0].levelno == logging.WARNING
    assert refused[0].getMessage() == f"control: request refused (uid {os.getuid()}): no real server 10.9.9.9:80"


def test_log_lines_carry_a_timestamp_and_the_level(capsys):
    try:
        setup_logging("warning")
        logging.getLogger("l4emu.live").info("not shown at warning")
        logging.getLogger("l4emu.live").warning("tun0: 2 packet(s) could not be written to the TUN (2 so far)")
    finally:
        logger = logging.getLogger("l4emu")
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate, logger.level = True, logging.NOTSET
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} l4emu\[\d+\] WARNING tun0: 2 packet\(s\) could not be "
                        r"written to the TUN \(2 so far\)", lines[0])


def test_log_level_is_an_option_of_live():
    runner = CliRunner()
    assert "--log-level" in runner.invoke(main, ["live", "--help"]).output
    bad = runner.invoke(main, ["live", "--tun", "tun9", "--log-level", "chatty"])
    assert bad.exit_code == 2 and "--log-level" in bad.output
