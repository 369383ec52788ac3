"""The control socket's rules: mode 0600, bounded JSON lines, unknown or malformed requests refused, stale files replaced."""
from __future__ import annotations

import socket

import pytest
from conftest import serve_control

from l4emu.live import control


def serve(path, client):
    """Run `client()` against a control socket that echoes each request's op; returns its result, the
    requests seen and the socket's mode."""
    seen = []
    value, mode = serve_control(path, lambda req: seen.append(req) or {"echo": req["op"]}, client)
    return value, seen, mode


def raw(path, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(4096):
            out += chunk
        return out


def test_read_request_answered_and_socket_private(tmp_path):
    path = tmp_path / "ctl.sock"
    value, seen, mode = serve(path, lambda: control.request(path, "stats"))
    assert value == {"echo": "stats"} and seen == [{"op": "stats"}]
    assert mode == 0o600
    assert not path.exists()


@pytest.mark.parametrize("data, message", [
    (b"not json\n", b"Expecting value"),
    (b'{"op": "__import__(\'os\')"}\n', b"unknown request"),
    (b'["op"]\n', b"unknown request"),
    (b"x" * (control.MAX_REQUEST + 10), b"longer than"),
])
def test_bad_requests_are_refused_not_evaluated(tmp_path, data, message):
    path = tmp_path / "ctl.sock"
    reply, seen, _ = serve(path, lambda: raw(path, data))
    assert b'"ok": false' in reply and message in reply
    assert seen == []


def test_a_silent_peer_is_dropped(tmp_path, monkeypatch):
    monkeypatch.setattr(control, "REQUEST_TIMEOUT_S", 0.2)
    path = tmp_path / "ctl.sock"
    reply, _, _ = serve(path, lambda: raw(path, b'{"op": "stats"}'))     # no newline: never complete
    assert reply == b""


def test_stale_socket_replaced_live_one_kept(tmp_path):
    path = tmp_path / "ctl.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()                       # the file stays, nobody listens: a killed run's leftover
    value, _, _ = serve(path, lambda: control.request(path, "services"))
    assert value == {"echo": "services"}
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(path))
    listening.listen(1)
    try:
        with pytest.raises(control.ControlError, match="another l4emu live"):
            control.ControlServer(str(path), lambda req: None)
    finally:
        listening.close()
