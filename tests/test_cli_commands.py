"""The command line itself (issue 11): wrong files named in one line, outputs that would destroy the
input, --format, moments past the capture's end, compare's defaults and plot, help, config, check."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

from conftest import PCAPS, ROOT, run_cli

SAMPLE = PCAPS / "sample.pcap"
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


def one_error_line(proc, *words):
    """Exit 2, exactly one line on stderr, `l4emu: error: ` and every word in it, no traceback."""
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith("l4emu: error: ") and all(w in line for w in words), line
    return line


@pytest.mark.parametrize("command", ["conntrack", "stats", "sockets"])
def test_a_capture_given_as_a_state_file_is_named_in_one_line(command):
    line = one_error_line(run_cli(command, SAMPLE, check=False), str(SAMPLE), "not a state file")
    assert "byte 0xd4 at offset 0" in line


@pytest.mark.parametrize("args", [["replay", SAMPLE, "-c", SAMPLE], ["compare", SAMPLE, "-c", SAMPLE],
                                  ["check", SAMPLE]])
def test_a_binary_config_is_named_in_one_line(args):
    one_error_line(run_cli(*args, check=False), f"{SAMPLE}: not a TOML config (not UTF-8 text")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_dev_full_as_named_is_written_in_place_and_fails_on_the_full_disk():
    one_error_line(run_cli("replay", SAMPLE, "-o", "/dev/full", check=False), "/dev/full", "No space left on device")
    one_error_line(run_cli("replay", SAMPLE, "-o", "/dev/full", "--format", "pcapng", check=False),
                   "No space left on device")


def test_format_flag_names_what_the_extension_cannot(tmp_path):
    out = tmp_path / "out.dat"
    one_error_line(run_cli("replay", SAMPLE, "-o", out, check=False), "extension '.dat'", "--format pcap|pcapng")
    run_cli("replay", SAMPLE, "-o", out, "--format", "pcapng", "--annotate")
    assert out.read_bytes()[:4] == PCAPNG_MAGIC
    run_cli("replay", SAMPLE, "-o", out, "--format", "pcap")
    assert out.read_bytes()[:4] == SAMPLE.read_bytes()[:4]
    one_error_line(run_cli("replay", SAMPLE, "-o", tmp_path / "x.pcap", "--format", "pcapng", check=False),
                   "--format pcapng contradicts the extension '.pcap'")
    assert sorted(os.listdir(tmp_path)) == ["out.dat"]


@pytest.mark.parametrize("how", ["same path", "symlink", "other spelling"])
def test_an_output_on_the_input_is_refused_and_the_input_kept(tmp_path, how):
    capture = tmp_path / "in.pcap"
    shutil.copy(SAMPLE, capture)
    (tmp_path / "sub").mkdir()
    target = {"same path": capture, "symlink": tmp_path / "link.pcap",
              "other spelling": tmp_path / "sub" / ".." / "in.pcap"}[how]
    if how == "symlink":
        target.symlink_to(capture)
    for flag in ("-o", "--state-out"):
        one_error_line(run_cli("replay", capture, flag, target, check=False), f"{target}: {flag} is the input capture")
    assert capture.read_bytes() == SAMPLE.read_bytes()


def test_two_outputs_on_one_file_are_refused_but_a_device_takes_both(tmp_path):
    config = PCAPS / "emulated.toml"
    one_error_line(run_cli("replay", PCAPS / "clients.pcap", "-c", config, "-o", tmp_path / "a.pcap",
                           "--inside", tmp_path / "a.pcap", check=False), "given to both -o and --inside")
    run_cli("replay", PCAPS / "clients.pcap", "-c", config, "-o", os.devnull, "--inside", os.devnull)
    assert os.listdir(tmp_path) == []


def test_events_and_at_past_the_end_are_warned_about(tmp_path):
    state = tmp_path / "state.json"
    proc = run_cli("replay", SAMPLE, "--event", "100:down:10.1.0.2:8080", "--event", "1:down:10.1.0.1:8080",
                   "--state-out", state, "--at", "2", "--at", "100", "--json")
    summary = json.loads(proc.stdout)
    assert [e["event"] for e in summary["events"]] == ["1:down:10.1.0.1:8080"]
    # (The real down at 1 s leaves replies recorded from it unowned: warned about too, after these.)
    assert proc.stderr.splitlines()[:2] == [
        "l4emu: warning: --event 100:down:10.1.0.2:8080: never applied, the capture's last packet is at 18.127 s",
        "l4emu: warning: --at 100: the capture's last packet is at 18.127 s; the state at 100 s has the clock "
        "moved on, with no packets since"]
    assert summary["warnings"] == [w.removeprefix("l4emu: warning: ") for w in proc.stderr.splitlines()]
    quiet = run_cli("replay", SAMPLE, "--event", "18:down:10.1.0.2:8080", "--state-out", state, "--at", "18")
    assert quiet.stderr == ""
    compared = run_cli("compare", SAMPLE, "--schedulers", "rr,mh", "--event", "100:down:10.1.0.2:8080")
    assert compared.stderr.splitlines()[:1] == proc.stderr.splitlines()[:1]     # once, not once per scheduler
    assert sum("--event" in line for line in compared.stderr.splitlines()) == 1


def test_at_keeps_the_users_spelling_in_the_file_name(tmp_path):
    state = tmp_path / "state.json"
    run_cli("replay", SAMPLE, "--state-out", state, "--at", "1.0", "--at", "1", "--at", "2.50")
    assert sorted(os.listdir(tmp_path)) == ["state.json", "state@1.0.json", "state@1.json", "state@2.50.json"]
    assert (tmp_path / "state@1.0.json").read_text() == (tmp_path / "state@1.json").read_text()
    for bad in ("x", "-1", "nan", "inf"):
        proc = run_cli("replay", SAMPLE, "--state-out", state, "--at", bad, check=False)
        assert proc.returncode == 2 and "Invalid value for '--at'" in proc.stderr


def test_compare_defaults_to_several_schedulers_and_prints_its_seed():
    drawn = json.loads(run_cli("compare", SAMPLE, "--json").stdout)
    assert [run["scheduler"] for run in drawn["runs"]] == ["rr", "wlc", "sh", "mh", "p2c"]
    assert isinstance(drawn["seed"], int) and "new_flows_per_s" not in drawn["runs"][0]
    again = json.loads(run_cli("compare", SAMPLE, "--json", "--seed", drawn["seed"]).stdout)
    assert again == drawn           # the printed seed repeats the comparison, p2c's random draws too
    text = run_cli("compare", SAMPLE, "--seed", 5, "--schedulers", "rr").stdout
    assert text.splitlines()[0] == "capture " + str(SAMPLE) + " (18.127 s of packets), seed 5"
    assert "flows/s" not in text


def test_compare_prints_the_table_before_a_plot_that_cannot_be_written(tmp_path):
    target = tmp_path / "nodir" / "x.png"
    proc = run_cli("compare", SAMPLE, "--schedulers", "rr", "--seed", 1, "--plot", target, check=False)
    assert "TCP 10.0.0.100:80: reals" in proc.stdout
    one_error_line(proc, f"{target}: cannot write the plot: No such file or directory")
    proc = run_cli("compare", SAMPLE, "--schedulers", "rr", "--seed", 1, "--plot", tmp_path / "x.foo", check=False)
    one_error_line(proc, "x.foo: cannot write the plot: Format 'foo' is not supported")
    assert os.listdir(tmp_path) == []


def test_compare_plot_has_a_panel_per_service_and_says_what_each_event_did(tmp_path):
    plot = tmp_path / "cmp.svg"     # matplotlib's SVG keeps every text as a comment: readable here
    run_cli("compare", SAMPLE, "--schedulers", "rr,mh", "--seed", 1, "--event", "5:down:10.1.0.2:8080",
            "--event", "9:weight:[2001:db8:1::2]:8080:3", "--plot", plot)
    texts = re.findall(r"<!-- (.*?) -->", plot.read_text())
    titles = [t for t in texts if re.match(r"(rr|mh): ", t)]
    assert titles == [f"{s}: {v}" for s in ("rr", "mh")
                      for v in ("TCP 10.0.0.100:80", "UDP 10.0.0.100:53", "TCP [2001:db8::100]:80")]
    # each event labelled in its real's service only, once per scheduler
    assert texts.count("10.1.0.2:8080 down") == 2 and texts.count("[2001:db8:1::2]:8080 weight 3") == 2
    assert all(texts.count(real) == 1 for real in ("10.1.0.1:8080", "10.1.0.11:53", "[2001:db8:1::1]:8080"))


def test_top_level_help_cuts_no_description():
    text = run_cli("--help").stdout
    listed = dict(re.findall(r"^  (\w+)\s+(.+)$", text.split("Commands:")[1], re.M))
    assert set(listed) == {"apply", "check", "compare", "config", "conntrack", "gen", "gslb", "lab", "live", "real",
                           "replay", "report", "save", "simulate", "sockets", "stats", "sweep"}
    assert not [line for line in listed.values() if line.endswith("...")], listed


def test_config_default_prints_the_embedded_config_that_check_accepts(tmp_path):
    text = run_cli("config", "--default").stdout
    assert text == (ROOT / "l4emu" / "data" / "default.toml").read_text()
    config = tmp_path / "lb.toml"
    config.write_text(text)
    proc = run_cli("check", config)
    assert proc.stdout == f"{config}: OK, 3 services (2 tcp, 1 udp), 7 reals, scheduler rr\n"
    emulated = run_cli("check", PCAPS / "emulated.toml").stdout
    assert emulated.endswith(": OK, 3 services (2 tcp, 1 udp), 7 reals (7 emulated), scheduler rr\n")
    one_error_line(run_cli("config", check=False), "--default")


def test_check_names_the_first_problem_in_one_line(tmp_path):
    config = tmp_path / "lb.toml"
    config.write_text((ROOT / "l4emu" / "data" / "default.toml").read_text().replace('"10.1.0.2:8080"', '"10.1.0.2"'))
    one_error_line(run_cli("check", config, check=False), f"{config}: service[0].real[1].address: '10.1.0.2'")
    one_error_line(run_cli("check", tmp_path / "none.toml", check=False), "none.toml", "No such file")


def test_check_creates_the_schedulers_as_a_switch_would(tmp_path):
    """A plugin that is installed but cannot be imported passes the config's checks; check finds it."""
    info = tmp_path / "broken_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[l4emu.schedulers]\nbroken = no_such_module_here:Broken\n")
    config = tmp_path / "lb.toml"
    config.write_text((ROOT / "l4emu" / "data" / "default.toml").read_text().replace('"rr"', '"broken"', 1))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "l4emu.cli", "check", config], capture_output=True, text=True,
                          env=env)
    one_error_line(proc, f"{config}: service[0].scheduler: 'broken' cannot be created", "no_such_module_here")


def test_the_test_extra_holds_what_the_debug_build_compiles_with():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    test_extra = {re.split(r"[<>=;\s]", r)[0].lower() for r in project["project"]["optional-dependencies"]["test"]}
    build = {re.split(r"[<>=;\s]", r)[0].lower() for r in project["build-system"]["requires"]} - {"wheel"}
    assert build <= test_extra


def test_shadow_build_without_cython_says_how_to_get_it(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text("#!/bin/sh\nexit 1\n")     # a python on which `import Cython` fails
    (fake / "python").chmod(0o755)
    proc = subprocess.run([ROOT / "tools" / "shadow_build.sh", tmp_path / "out"], capture_output=True, text=True,
                          env=dict(os.environ, PATH=f"{fake}{os.pathsep}{os.environ['PATH']}"))
    assert proc.returncode == 2 and 'pip install -e ".[test]"' in proc.stderr
    assert not (tmp_path / "out").exists()
