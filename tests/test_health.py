"""Health checks: the [service.check] table, the status-line parser, and the checker against real local servers."""
from __future__ import annotations

import http.server
import re
import select
import socket
import threading
import time

import pytest
from conftest import make_switch
from hypothesis import given
from hypothesis import strategies as st

from l4emu.config import ConfigError
from l4emu.live.health import HealthChecks, status_code


def toml(reals, check: str) -> str:
    text = '[[service]]\nvip = "10.0.0.100:80"\n[service.check]\n' + check + "\n"
    return text + "".join(f'  [[service.real]]\n  address = "{r}"\n' for r in reals)


@pytest.mark.parametrize("check, message", [
    ('type = "icmp"', "service[0].check.type: 'icmp' is not one of tcp, http"),
    ("delay_loop = 0", "service[0].check.delay_loop: 0 is not a number of seconds above 0"),
    ("retry = -1", "service[0].check.retry: -1 is out of range 0-100"),
    ("rise = 0", "service[0].check.rise: 0 is out of range 1-100"),
    ('path = "/"', 'service[0].check.path: only type = "http" has it'),
    ('type = "http"\npath = "no-slash"', "service[0].check.path: 'no-slash' is not a URL path"),
    ('type = "http"\nstatus_code = 99', "service[0].check.status_code: 99 is not an HTTP status code"),
    ("interval = 5", "service[0].check.interval: unknown key"),
    ("connect_port = 70000", "service[0].check.connect_port: 70000 is out of range"),
])
def test_check_table_errors_name_the_key(tmp_path, check, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_switch(toml(["10.1.0.1:8080"], check), tmp_path)


def test_udp_services_have_no_check(tmp_path):
    text = toml(["10.1.0.1:53"], 'type = "tcp"').replace('vip = "10.0.0.100:80"', 'vip = "10.0.0.100:53"\nprotocol = "udp"')
    with pytest.raises(ConfigError, match="service\\[0\\].check: checks connect over TCP: a udp service"):
        make_switch(text, tmp_path)


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
