"""The `real` and `lab` commands' arguments and help, and how stats shows a real that takes no new flows:
through the CLI, without root (no live switch needed for these)."""
from __future__ import annotations

from conftest import PCAPS, run_cli


def test_stats_text_marks_a_real_marked_down(tmp_path):
    state = tmp_path / "state.json"
    run_cli("replay", PCAPS / "sample.pcap", "--event", "1:down:10.1.0.2:8080", "--state-out", state)
    lines = run_cli("stats", state).stdout.splitlines()
    assert lines[2] == "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn State"
    services = lines[:lines.index("")]             # ipvsadm -L -n; the --stats table follows a blank line
    rows = {line.split()[1]: line.split() for line in services if line.startswith("  -> ") and "Remote" not in line}
    assert rows["10.1.0.2:8080"][-1] == "down" and rows["10.1.0.2:8080"][3] == "1"
    assert len(rows["10.1.0.1:8080"]) == 6          # no state for reals that take flows
    assert "down" not in "".join(lines[lines.index("") + 1:])   # the --stats table is ipvsadm's as it is


def test_stats_text_has_no_state_column_when_every_real_is_up(tmp_path):
    state = tmp_path / "state.json"
    run_cli("replay", PCAPS / "sample.pcap", "--state-out", state)
    assert run_cli("stats", state).stdout.splitlines()[2].endswith("InActConn")


def test_real_set_refuses_down_with_up_and_a_missing_socket_in_one_line(tmp_path):
    sock = tmp_path / "none.sock"
    for args, message in (
            (["real", "set", "10.1.0.1:8080", "--down", "--up", "--control", sock],
             "--down and --up are mutually exclusive"),
            (["real", "--control", sock, "set", "10.1.0.1:8080", "--up", "--down"],
             "--down and --up are mutually exclusive"),
            (["real", "set", "10.1.0.1:8080", "--down"], "give the control socket: --control PATH"),
            (["real", "--control", sock, "set", "10.1.0.1:8080", "--weight", "0"], f"{sock}: No such file"),
            (["real", "--control", sock, "set", "10.1.0.1:8080", "--weight", "0", "--control", tmp_path / "b"],
             "two control sockets given")):
        done = run_cli(*args, check=False)
        assert done.returncode == 2, args
        assert done.stderr.startswith(f"l4emu: error: {message}") and done.stderr.count("\n") == 1, done.stderr


def test_real_set_and_lab_down_options_have_help():
    text = run_cli("real", "set", "--help").stdout
    assert "--control SOCK Control socket of the running `l4emu live`" in " ".join(text.split())
    assert "Control socket" in run_cli("real", "--help").stdout
    down = " ".join(run_cli("lab", "down", "--help").stdout.split())
    assert "--prefix TEXT Remove the lab whose namespaces start with this" in down
