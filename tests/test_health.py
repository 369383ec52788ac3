"""Health checks: the [service.check] table, the status-line parser, and the checker against real local servers."""
from __future__ import annotations

import contextlib
import hashlib
import http.server
import logging
import os
import re
import select
import socket
import ssl
import subprocess
import threading
import time

import pytest
from conftest import make_switch
import hypothesis
from hypothesis import example, given, settings
from hypothesis import strategies as st

from l4emu import checks
from l4emu.checks import HealthCheck
from l4emu.config import ConfigError
from l4emu.live.health import HealthChecks
from l4emu.live.probes import status_code


def toml(reals, check: str) -> str:
    text = '[[service]]\nvip = "10.0.0.100:80"\n[service.check]\n' + check + "\n"
    return text + "".join(f'  [[service.real]]\n  address = "{r}"\n' for r in reals)


@pytest.mark.parametrize("check, message", [
    ('type = "icmp"', "service[0].check.type: 'icmp' is not one of tcp, http, https, misc"),
    ("delay_loop = 0", "service[0].check.delay_loop: 0 is not a number of seconds above 0"),
    ("retry = -1", "service[0].check.retry: -1 is out of range 0-100"),
    ("rise = 0", "service[0].check.rise: 0 is out of range 1-100"),
    ('path = "/"', 'service[0].check.path: only type = "http" or "https" has it'),
    ('type = "http"\ndigest = "abc"', "service[0].check.digest: 'abc' is not an MD5 digest"),
    ('type = "http"\nsni = "example.org"', 'service[0].check.sni: only type = "https" has it'),
    ('type = "https"\nsni = "bad name"', "service[0].check.sni: 'bad name' is not a server name"),
    ('type = "misc"', 'service[0].check.misc_path: missing: type = "misc" runs this command'),
    ('type = "misc"\nmisc_path = "\'unclosed"', "service[0].check.misc_path: \"'unclosed\" does not split into words"),
    ('type = "misc"\nmisc_path = " "', "service[0].check.misc_path: ' ' is not a command line"),
    ('type = "misc"\nmisc_path = "true"\nmisc_timeout = 0', "service[0].check.misc_timeout: 0 is not a number"),
    ('type = "misc"\nmisc_path = "true"\nconnect_port = 81',
     'service[0].check.connect_port: only type = "tcp" or "http" or "https" has it'),
    ("misc_dynamic = true", 'service[0].check.misc_dynamic: only type = "misc" has it'),
    ('type = "http"\npath = "no-slash"', "service[0].check.path: 'no-slash' is not a URL path"),
    ('type = "http"\nstatus_code = 99', "service[0].check.status_code: 99 is not an HTTP status code"),
    ("interval = 5", "service[0].check.interval: unknown key"),
    ("connect_port = 70000", "service[0].check.connect_port: 70000 is out of range"),
])
def test_check_table_errors_name_the_key(tmp_path, check, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_switch(toml(["10.1.0.1:8080"], check), tmp_path)


def test_udp_services_have_no_connecting_check_but_may_run_a_command(tmp_path):
    text = toml(["10.1.0.1:53"], 'type = "tcp"').replace('vip = "10.0.0.100:80"', 'vip = "10.0.0.100:53"\nprotocol = "udp"')
    with pytest.raises(ConfigError, match="service\\[0\\].check: tcp checks connect over TCP: a udp service"):
        make_switch(text, tmp_path)
    misc = text.replace('type = "tcp"', 'type = "misc"\nmisc_path = "true"')      # a command can check anything
    assert make_switch(misc, tmp_path).config.services[0].check.misc_path == "true"


@given(st.binary(max_size=200))
def test_status_line_parser_takes_any_bytes(data):
    code = status_code(data)
    assert code is None or (data.startswith(b"HTTP/") and 0 <= code <= 999)


@pytest.mark.parametrize("line, code", [(b"HTTP/1.1 200 OK\r\n", 200), (b"HTTP/1.0 503\r\n", 503),
                                        (b"HTTP/1.1 20", None), (b"SSH-2.0-OpenSSH\r\n", None), (b"", None)])
def test_status_line(line, code):
    assert status_code(line) == code


class Answers(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ok" else 500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Driver:
    """The live loop's part: one epoll over the checks' sockets, due attempts, deadlines."""

    def __init__(self, checks: HealthChecks):
        self.checks, self.epoll = checks, select.epoll()
        checks.register(self.epoll)

    def run(self, seconds: float, until=lambda: False) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not until():
            for fd, events in self.epoll.poll(min(self.checks.timeout() or 0.05, 0.05)):
                self.checks.on_event(fd, events)
            self.checks.run_due()

    def close(self) -> None:
        self.checks.close()
        self.epoll.close()


def drive(checks: HealthChecks, seconds: float) -> None:
    driver = Driver(checks)
    try:
        driver.run(seconds)
    finally:
        driver.close()


def states(switch) -> dict:
    return {r["address"]: (r["down"], r["weight"]) for r in switch.services()[0]["reals"]}


def test_tcp_check_marks_a_closed_port_down_and_brings_it_back_after_rise(tmp_path, caplog):
    listening = socket.create_server(("127.0.0.1", 0))
    up, closed = f"127.0.0.1:{listening.getsockname()[1]}", f"127.0.0.1:{free_port()}"
    check = "delay_loop = 0.2\nconnect_timeout = 1\nretry = 1\ndelay_before_retry = 0.05\nrise = 2"
    switch = make_switch(toml([up, closed], check), tmp_path)
    driver = Driver(HealthChecks(switch))
    try:
        driver.run(0.6)
        assert states(switch) == {up: (False, 1), closed: (True, 1)}
        assert "health: real " + closed in caplog.text and "Connection refused (2 attempt(s))" in caplog.text
        counts = {t["address"]: t for t in driver.checks.snapshot()}
        assert counts[closed]["down"] == 1 and counts[closed]["failure"] >= 2 and counts[up]["failure"] == 0
        back = socket.create_server(("127.0.0.1", int(closed.rsplit(":", 1)[1])))
        try:
            def successes():
                return {t["address"]: t for t in driver.checks.snapshot()}[closed]["success"]
            driver.run(5, until=lambda: successes() == 1)
            assert states(switch)[closed] == (True, 1)            # one success: rise = 2 keeps it down
            driver.run(5, until=lambda: successes() == 2)
            assert states(switch)[closed] == (False, 1)
            assert {t["address"]: t for t in driver.checks.snapshot()}[closed]["up"] == 1
        finally:
            back.close()
    finally:
        driver.close()
        listening.close()


def test_http_check_wants_the_status_and_inhibit_sets_weight_0(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        check = f'type = "http"\npath = "/broken"\ndelay_loop = 0.2\nretry = 0\nconnect_port = {port}\n'
        switch = make_switch(toml(["127.0.0.1:9"], check + "inhibit_on_failure = true"), tmp_path)
        checks = HealthChecks(switch)
        drive(checks, 0.5)
        assert states(switch) == {"127.0.0.1:9": (False, 0)}          # weight 0, not down
        fixed = make_switch(toml(["127.0.0.1:9"], check.replace("/broken", "/ok")), tmp_path)
        checks = HealthChecks(fixed)
        drive(checks, 0.5)
        assert states(fixed) == {"127.0.0.1:9": (False, 1)}
        assert {t["address"]: t for t in checks.snapshot()}["127.0.0.1:9"]["failure"] == 0
    finally:
        server.shutdown()
        server.server_close()


def test_a_check_that_gets_no_answer_fails_at_connect_timeout(tmp_path):
    silent = socket.create_server(("127.0.0.1", 0))        # accepts (the backlog does), never answers
    try:
        check = 'type = "http"\npath = "/"\ndelay_loop = 5\nconnect_timeout = 0.2\nretry = 0'
        switch = make_switch(toml([f"127.0.0.1:{silent.getsockname()[1]}"], check), tmp_path)
        checks = HealthChecks(switch)
        started = time.monotonic()
        drive(checks, 0.5)
        assert time.monotonic() - started < 1 and list(states(switch).values()) == [(True, 1)]
    finally:
        silent.close()


def test_a_reload_keeps_a_failing_real_down_and_checks_new_reals(tmp_path):
    listening = socket.create_server(("127.0.0.1", 0))
    up, closed = f"127.0.0.1:{listening.getsockname()[1]}", f"127.0.0.1:{free_port()}"
    check = "delay_loop = 0.2\nretry = 0"
    switch = make_switch(toml([up, closed], check), tmp_path)
    driver = Driver(HealthChecks(switch))
    try:
        driver.run(0.4)
        assert states(switch) == {up: (False, 1), closed: (True, 1)}
        other = f"127.0.0.1:{free_port()}"
        (tmp_path / "new.toml").write_text(toml([closed, up, other], check + "\ninhibit_on_failure = true"))
        from l4emu import config as configmod
        from l4emu import schedulers
        switch.apply(configmod.load(tmp_path / "new.toml", schedulers.catalog()))
        driver.checks.rebuild(switch)
        # Still failing across the reload (now inhibited: weight 0), the new real checked at once.
        assert states(switch)[closed] == (False, 0)
        driver.run(0.4)
        assert states(switch)[other] == (False, 0) and states(switch)[up] == (False, 1)
        downs = {t["address"]: t["down"] for t in driver.checks.snapshot()}
        assert downs == {closed: 1, up: 0, other: 1}          # the closed real's transition counted once
    finally:
        driver.close()
        listening.close()


# --- https (SSL_GET), digest, misc (MISC_CHECK), and a real's own check ---------------------------------------

BODY = b"all is well\n"
BODY_MD5 = hashlib.md5(BODY).hexdigest()


class Pages(http.server.BaseHTTPRequestHandler):
    """/ok: 200 and BODY; anything else: 500."""

    def do_GET(self):
        ok = self.path == "/ok"
        self.send_response(200 if ok else 500)
        self.send_header("Content-Length", str(len(BODY) if ok else 0))
        self.end_headers()
        if ok:
            self.wfile.write(BODY)

    def log_message(self, *args):
        pass


def self_signed(directory) -> tuple[str, str]:
    """A throwaway certificate and key made by the openssl CLI (as an operator would)."""
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=real.test"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@contextlib.contextmanager
def serving(handler, tls_dir=None, names=None):
    """An HTTP server on a free local port (HTTPS with a self-signed certificate given tls_dir); yields the port.
    `names` collects the server names clients send (SNI)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls_dir is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*self_signed(tls_dir))
        if names is not None:
            context.sni_callback = lambda sock, name, ctx: names.append(name)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def checked_once(tmp_path, check: str, seconds=0.6, reals=("127.0.0.1:9",)):
    """Run the checks of a one-service config for a moment; the switch's reals and the checks' counts after."""
    switch = make_switch(toml(list(reals), check), tmp_path)
    checks = HealthChecks(switch)
    drive(checks, seconds)
    return states(switch), {t["address"]: t for t in checks.snapshot()}


def test_https_check_does_tls_takes_a_self_signed_certificate_and_sends_sni(tmp_path, caplog):
    names = []
    with serving(Pages, tmp_path, names) as port:
        base = f'type = "https"\ndelay_loop = 0.2\nretry = 0\nconnect_port = {port}\nsni = "www.real.test"\n'
        seen, counts = checked_once(tmp_path, base + 'path = "/ok"')
        assert seen == {"127.0.0.1:9": (False, 1)} and counts["127.0.0.1:9"]["success"] >= 2
        assert names and set(names) == {"www.real.test"}
        seen, _ = checked_once(tmp_path, base + 'path = "/broken"')
        assert seen == {"127.0.0.1:9": (True, 1)}
        assert "down: status 500, not 200 (1 attempt(s))" in caplog.text


def test_https_check_against_a_plain_server_fails_in_the_handshake(tmp_path, caplog):
    with serving(Pages) as port:
        seen, _ = checked_once(tmp_path, f'type = "https"\ndelay_loop = 0.2\nretry = 0\nconnect_port = {port}')
    assert seen == {"127.0.0.1:9": (True, 1)}
    assert re.search(r"down: TLS: \w+", caplog.text), caplog.text


@pytest.mark.parametrize("kind", ["http", "https"])
def test_digest_is_the_md5_of_the_body(tmp_path, caplog, kind):
    with serving(Pages, tmp_path if kind == "https" else None) as port:
        base = f'type = "{kind}"\npath = "/ok"\ndelay_loop = 0.2\nretry = 0\nconnect_port = {port}\n'
        seen, _ = checked_once(tmp_path, base + f'digest = "{BODY_MD5.upper()}"')
        assert seen == {"127.0.0.1:9": (False, 1)}
        wrong = "0" * 32
        seen, _ = checked_once(tmp_path, base + f'digest = "{wrong}"')
        assert seen == {"127.0.0.1:9": (True, 1)}
        assert f"down: body digest {BODY_MD5}, not {wrong}" in caplog.text


def exit_code_script(tmp_path, code: int) -> str:
    """A command that exits with the status written in a file (the test changes it); returns misc_path."""
    (tmp_path / "code").write_text(str(code))
    return f"/bin/sh -c 'exit $(cat {tmp_path / 'code'})'"


def test_misc_check_exit_status_marks_the_real_and_misc_dynamic_sets_its_weight(tmp_path, caplog):
    caplog.set_level(logging.INFO, "l4emu.live")
    command = exit_code_script(tmp_path, 0)
    check = f'type = "misc"\nmisc_path = "{command}"\ndelay_loop = 0.1\nretry = 0\nmisc_dynamic = true'
    switch = make_switch(toml(["127.0.0.1:9"], check), tmp_path)
    driver = Driver(HealthChecks(switch))
    try:
        driver.run(0.3)
        assert states(switch) == {"127.0.0.1:9": (False, 1)}          # 0: up, the config's weight
        (tmp_path / "code").write_text("7")
        driver.run(3, until=lambda: states(switch)["127.0.0.1:9"] == (False, 5))
        assert states(switch) == {"127.0.0.1:9": (False, 5)}          # 7: up, weight 7 - 2
        (tmp_path / "code").write_text("1")
        driver.run(3, until=lambda: states(switch)["127.0.0.1:9"][0])
        assert states(switch)["127.0.0.1:9"][0] is True
        (tmp_path / "code").write_text("0")                          # back up, with the weight it had
        driver.run(3, until=lambda: not states(switch)["127.0.0.1:9"][0])
        assert states(switch) == {"127.0.0.1:9": (False, 5)}
        assert "weight 5 (misc_dynamic: exit status 7)" in caplog.text
        assert "down: /bin/sh exited with status 1 (1 attempt(s))" in caplog.text
    finally:
        driver.close()


def test_misc_without_dynamic_takes_2_as_a_failure_and_tells_the_command_its_real(tmp_path):
    check = f'type = "misc"\nmisc_path = "{exit_code_script(tmp_path, 2)}"\ndelay_loop = 0.2\nretry = 0'
    seen, _ = checked_once(tmp_path, check, 0.4)
    assert seen == {"127.0.0.1:9": (True, 1)}
    command = """/bin/sh -c 'test "$L4EMU_REAL_ADDRESS:$L4EMU_REAL_PORT" = 127.0.0.1:9'"""
    check = f"type = 'misc'\nmisc_path = '''{command}'''\ndelay_loop = 0.2\nretry = 0"    # TOML's literal string
    seen, _ = checked_once(tmp_path, check, 0.4)
    assert seen == {"127.0.0.1:9": (False, 1)}


def test_a_command_that_cannot_run_is_a_failed_check(tmp_path, caplog):
    check = f'type = "misc"\nmisc_path = "{tmp_path}/no-such-check --flag"\ndelay_loop = 0.2\nretry = 1\n' \
            'delay_before_retry = 0.05'
    seen, counts = checked_once(tmp_path, check, 0.4)
    assert seen == {"127.0.0.1:9": (True, 1)} and counts["127.0.0.1:9"]["failure"] >= 2
    assert f"down: {tmp_path}/no-such-check: No such file or directory (2 attempt(s))" in caplog.text


def _alive(pid: int) -> bool:
    """Running or a zombie (a zombie's /proc entry stays until it is reaped)."""
    return os.path.exists(f"/proc/{pid}")


def test_a_command_past_misc_timeout_fails_and_it_and_its_children_are_killed_and_reaped(tmp_path, caplog):
    pids = tmp_path / "pids"
    # The shell starts a sleeper (its child, in its session) and waits: both must go, neither left a zombie.
    command = f"/bin/sh -c 'sleep 30 & echo $$ $! > {pids}; wait'"
    check = f'type = "misc"\nmisc_path = "{command}"\nmisc_timeout = 0.3\ndelay_loop = 30\nretry = 0'
    switch = make_switch(toml(["127.0.0.1:9"], check), tmp_path)
    driver = Driver(HealthChecks(switch))
    try:
        started = time.monotonic()
        driver.run(3, until=lambda: states(switch)["127.0.0.1:9"][0])
        assert 0.25 < time.monotonic() - started < 2
        assert "down: /bin/sh did not exit within 0.3 s (1 attempt(s))" in caplog.text
        shell, sleeper = map(int, pids.read_text().split())
        driver.run(3, until=lambda: not driver.checks.leftovers)     # reaped from the loop, no wait() blocking
        assert not driver.checks.leftovers and not _alive(shell)
        time.sleep(0.1)
        assert not _alive(sleeper) or open(f"/proc/{sleeper}/stat").read().split()[2] == "Z"  # init reaps it
    finally:
        driver.close()


def test_close_kills_and_reaps_a_running_command(tmp_path):
    check = 'type = "misc"\nmisc_path = "sleep 30"\ndelay_loop = 30'
    switch = make_switch(toml(["127.0.0.1:9"], check), tmp_path)
    driver = Driver(HealthChecks(switch))
    driver.run(0.2)
    (target,) = driver.checks.targets.values()
    pid = target.probe.process.pid
    driver.close()
    assert not _alive(pid)


def test_a_reals_own_check_replaces_the_services(tmp_path):
    listening = socket.create_server(("127.0.0.1", 0))
    open_port, closed = listening.getsockname()[1], free_port()
    text = (f'[[service]]\nvip = "10.0.0.100:80"\n[service.check]\nconnect_port = {closed}\ndelay_loop = 0.2\n'
            'retry = 0\n'
            '  [[service.real]]\n  address = "127.0.0.1:1"\n'
            '  [[service.real]]\n  address = "127.0.0.2:1"\n'
            f'  [service.real.check]\n  connect_port = {open_port}\n  delay_loop = 0.2\n')
    try:
        switch = make_switch(text, tmp_path)
        assert switch.config.services[0].reals[1].check.connect_port == open_port
        drive(HealthChecks(switch), 0.5)
        # The first real has the service's check (a closed port): down. The second its own: up.
        assert states(switch) == {"127.0.0.1:1": (True, 1), "127.0.0.2:1": (False, 1)}
    finally:
        listening.close()


def test_a_real_may_be_checked_when_its_service_has_no_check(tmp_path):
    text = ('[[service]]\nvip = "10.0.0.100:80"\n  [[service.real]]\n  address = "127.0.0.1:1"\n'
            '  [[service.real]]\n  address = "127.0.0.2:1"\n'
            '  [service.real.check]\n  type = "misc"\n  misc_path = "false"\n  delay_loop = 0.2\n  retry = 0\n')
    switch = make_switch(text, tmp_path)
    checks = HealthChecks(switch)
    assert [t["address"] for t in checks.snapshot()] == ["127.0.0.2:1"]
    drive(checks, 0.4)
    assert states(switch) == {"127.0.0.1:1": (False, 1), "127.0.0.2:1": (True, 1)}


@pytest.mark.parametrize("real, message", [
    ('  [service.real.check]\n  type = "ping"\n', "service[0].real[0].check.type: 'ping' is not one of"),
    ('  [service.real.check]\n  misc_timeout = 1\n', 'service[0].real[0].check.misc_timeout: only type = "misc"'),
    ('  emulated = true\n  [service.real.check]\n  type = "misc"\n  misc_path = "true"\n',
     "service[0].real[0].check.type: tcp or http: an emulated real is checked from its host's state"),
    ('  emulated = true\n  [service.real.check]\n  type = "http"\n  digest = "eff5bc1ef8ec9d03e640fc4370f5eacd"\n',
     "service[0].real[0].check.digest: an emulated real is checked from its host's state"),
])
def test_a_reals_check_errors_name_the_real(tmp_path, real, message):
    text = '[[service]]\nvip = "10.0.0.100:80"\n  [[service.real]]\n  address = "10.1.0.1:80"\n' + real
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_switch(text, tmp_path)


def test_a_reload_that_changes_a_reals_check_is_an_edit_of_that_real(tmp_path):
    from l4emu import config as configmod
    from l4emu import reconfig, schedulers
    from l4emu.render import ipvsadm
    base = '[[service]]\nvip = "10.0.0.100:80"\n  [[service.real]]\n  address = "10.1.0.1:80"\n'
    old = configmod.loads(base, "old", schedulers.catalog())
    new = configmod.loads(base + '  [service.real.check]\n  type = "misc"\n  misc_path = "true"\n', "new",
                          schedulers.catalog())
    (step,) = reconfig.diff(old, new).changes
    assert step["action"] == "edit" and step["real"]["check"]["misc_path"] == "true"
    assert step["changed"]["check"][0] is None
    (line,) = ipvsadm.diff_lines(reconfig.diff(old, new).as_dict())
    assert line.startswith("-e -t 10.0.0.100:80 -r 10.1.0.1:80 -m -w 1    # check none -> type=misc")


@given(st.binary(max_size=300), st.booleans())
@example(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nx", True)
@example(b"HTTP/1.1 200 OK\nA: b\n\nx", True)
@example(b"HTTP/1.1 200", False)
def test_an_answer_of_any_bytes_ends_the_attempt_as_the_status_and_digest_say(data, with_digest):
    from l4emu.live import probes
    wanted = hashlib.md5(b"x").hexdigest()
    check = HealthCheck(type="http", digest=wanted if with_digest else "")
    ours, real = socket.socketpair()
    ours.setblocking(False)
    attempt = probes.Connection(check, probes.Real("127.0.0.1", 80, 4, 80), ours, 0.0)
    attempt.phase = "read"
    real.sendall(data)
    real.close()
    try:
        outcome = attempt.step(select.EPOLLIN)
    finally:
        attempt.release(0.0)
    end = probes.HEAD_END.search(data)
    ok = status_code(data) == 200 and (
        not with_digest or (end is not None and hashlib.md5(data[end.end():]).hexdigest() == wanted))
    assert outcome is not None and outcome.ok == ok


CHECK_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=True),
                         st.text(max_size=12), st.sampled_from(["tcp", "http", "https", "misc", "true", "/x"]))


@settings(max_examples=150, suppress_health_check=[hypothesis.HealthCheck.too_slow])    # a loaded machine
@given(st.dictionaries(st.sampled_from(sorted(HealthCheck.__dataclass_fields__) + ["bogus"]), CHECK_VALUES,
                       max_size=6), st.sampled_from(["tcp", "udp"]))
def test_any_check_table_is_a_check_or_one_config_error(raw, protocol):
    from l4emu import config as configmod
    raw = {k: v for k, v in raw.items() if v is not None}
    try:
        check = checks.parse(raw, "service[0].check", protocol, ConfigError, configmod._typed, configmod._take)
    except ConfigError as exc:
        assert str(exc).startswith("service[0].check") and "\n" not in str(exc)
        return
    assert check.type in checks.CHECK_TYPES and (protocol == "tcp" or check.type == "misc")


def test_a_reload_keeps_a_misc_dynamic_weight(tmp_path):
    from l4emu import config as configmod
    from l4emu import schedulers
    check = f'type = "misc"\nmisc_path = "{exit_code_script(tmp_path, 9)}"\ndelay_loop = 30\nmisc_dynamic = true'
    switch = make_switch(toml(["127.0.0.1:9"], check), tmp_path)
    driver = Driver(HealthChecks(switch))
    try:
        driver.run(3, until=lambda: states(switch)["127.0.0.1:9"] == (False, 7))
        switch.apply(configmod.load(tmp_path / "lb.toml", schedulers.catalog()))   # the config's weight (1) again
        driver.checks.rebuild(switch)
        assert states(switch) == {"127.0.0.1:9": (False, 7)}
    finally:
        driver.close()


def test_a_service_check_emulated_reals_cannot_take_is_refused(tmp_path):
    text = ('[[service]]\nvip = "10.0.0.100:80"\n  [service.check]\n  type = "https"\n'
            '  [[service.real]]\n  address = "10.1.0.1:80"\n  emulated = true\n')
    with pytest.raises(ConfigError, match=re.escape("service[0].check.type: tcp or http: an emulated real")):
        make_switch(text, tmp_path)
