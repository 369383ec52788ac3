"""Health checks in the lab: stopping a real's server marks it down (new connections avoid it), starting it
again brings it back; in namespaces this module makes and removes."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys

from test_live_lab import REALS, Running, _workdir, pytestmark, wait_for  # noqa: F401 (pytestmark: root, TUN)

from l4emu.config import DEFAULT_CONFIG
from l4emu.live import control

CHECK = '[service.check]\ntype = "http"\npath = "/"\ndelay_loop = 0.3\nconnect_timeout = 1\nretry = 1\n' \
        'delay_before_retry = 0.1\nrise = 2\n'


def down(sock) -> dict:
    return {r["address"]: r["down"] for svc in control.request(sock, "services") for r in svc["reals"]
            if svc["vip"] == "10.0.0.100:80"}


def test_a_stopped_server_is_marked_down_and_comes_back():
    workdir = _workdir()
    config = workdir / "lb.toml"
    default = DEFAULT_CONFIG.read_text()
    config.write_text(default.replace('scheduler = "rr"\n', 'scheduler = "rr"\n' + CHECK, 1))
    lab = Running(f"l4h{os.getpid() % 100000}", "l4h0", workdir, "-c", str(config))
    try:
        lab.start()
        wait_for(lambda: all(not d for d in down(lab.control).values()), what="every real up")
        lab.servers[1].kill()
        lab.servers[1].wait()
        wait_for(lambda: down(lab.control)["10.1.0.2:8080"], timeout=10, what="10.1.0.2 marked down")
        def from_client(real):      # the checks' GETs come from the switch's side (192.0.2.1)
            return len([line for line in lab.log(real) if line.startswith("172.16.0.2 ")])
        before = {real: from_client(real) for real in REALS}
        for _ in range(4):
            assert lab.curl() == b"hello\n"
        after = {real: from_client(real) - before[real] for real in REALS}
        assert any(line.startswith("192.0.2.1 ") for line in lab.log("10.1.0.1"))
        assert after == {"10.1.0.1": 2, "10.1.0.2": 0, "10.1.0.3": 2}
        # The server again: two checks in a row (rise = 2) bring the real back.
        again = subprocess.Popen(["ip", "netns", "exec", lab.lab.servers, sys.executable,
                                  str(workdir / "server.py"), "10.1.0.2", str(workdir / "www")],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        lab.servers.append(again)
        assert again.stdout.readline().strip() == "ready"
        wait_for(lambda: not down(lab.control)["10.1.0.2:8080"], timeout=10, what="10.1.0.2 back up")
        lab.live.send_signal(signal.SIGTERM)
        _, err = lab.live.communicate(timeout=20)
        assert "health: real 10.1.0.2:8080 (TCP 10.0.0.100:80) down: Connection refused (2 attempt(s))" in err
        assert "health: real 10.1.0.2:8080 (TCP 10.0.0.100:80) up: 2 check(s) in a row succeeded" in err
    finally:
        lab.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# An HTTPS server on a real's address, port 8443, with the certificate and key given (self-signed: a check takes
# any certificate, as keepalived's SSL_GET does). It answers every GET with 200 and "ok\n".
TLS_SERVER = """
import http.server, socketserver, ssl, sys
class Server(http.server.ThreadingHTTPServer):
    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\\n")
    def log_message(self, *args):
        pass
server = Server((sys.argv[1], 8443), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[2], sys.argv[3])
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"""
OK_MD5 = hashlib.md5(b"ok\n").hexdigest()


def reals(sock) -> dict:
    """address -> (down, weight) of the TCP service's reals."""
    return {r["address"]: (r["down"], r["weight"]) for svc in control.request(sock, "services")
            for r in svc["reals"] if svc["vip"] == "10.0.0.100:80"}


def test_https_misc_and_per_real_checks_flip_their_reals():
    """10.1.0.1 has the service's http check; 10.1.0.2 its own https check of port 8443 (with a digest);
    10.1.0.3 its own misc check, a command whose exit status the test writes (misc_dynamic)."""
    workdir = _workdir()
    cert, key = str(workdir / "cert.pem"), str(workdir / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=real.test"],
                   check=True, capture_output=True, timeout=60)
    (workdir / "code").write_text("0")
    (workdir / "tls.py").write_text(TLS_SERVER)
    own = {
        "10.1.0.2:8080": f'  [service.real.check]\n  type = "https"\n  connect_port = 8443\n  sni = "real.test"\n'
                         f'  digest = "{OK_MD5}"\n  delay_loop = 0.3\n  connect_timeout = 1\n  retry = 0\n',
        "10.1.0.3:8080": f"  [service.real.check]\n  type = \"misc\"\n  misc_path = \"/bin/sh -c 'exit $(cat "
                         f"{workdir / 'code'})'\"\n  misc_dynamic = true\n  delay_loop = 0.3\n  retry = 0\n",
    }
    text = DEFAULT_CONFIG.read_text().replace('scheduler = "rr"\n', 'scheduler = "rr"\n' + CHECK, 1)
    for address, table in own.items():
        line = f'  address = "{address}"\n'
        text = text.replace(line, line + table, 1)
    config = workdir / "lb.toml"
    config.write_text(text)
    lab = Running(f"l4m{os.getpid() % 100000}", "l4m0", workdir, "-c", str(config))

    def tls_server():
        proc = subprocess.Popen(["ip", "netns", "exec", lab.lab.servers, sys.executable, str(workdir / "tls.py"),
                                 "10.1.0.2", cert, key], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        lab.servers.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        return proc

    try:
        lab.start()
        tls = tls_server()
        up = {f"10.1.0.{k}:8080": (False, 1) for k in (1, 2, 3)}
        wait_for(lambda: reals(lab.control) == up, what="every real up")
        # The service's http check would fail 10.1.0.3 (no server on 8080): its own command keeps it up.
        lab.servers[2].kill()
        lab.servers[2].wait()
        # 10.1.0.2's HTTP server on 8080 still answers; its own check (https on 8443) is what counts.
        tls.kill()
        tls.wait()
        wait_for(lambda: reals(lab.control)["10.1.0.2:8080"][0], timeout=10, what="10.1.0.2 down")
        tls_server()
        wait_for(lambda: not reals(lab.control)["10.1.0.2:8080"][0], timeout=10, what="10.1.0.2 back up")
        (workdir / "code").write_text("1")
        wait_for(lambda: reals(lab.control)["10.1.0.3:8080"][0], timeout=10, what="10.1.0.3 down")
        (workdir / "code").write_text("6")          # misc_dynamic: up, weight 6 - 2
        wait_for(lambda: reals(lab.control)["10.1.0.3:8080"] == (False, 4), timeout=10, what="10.1.0.3 up, weight 4")
        assert reals(lab.control) == {**up, "10.1.0.3:8080": (False, 4)}
        lab.live.send_signal(signal.SIGTERM)
        _, err = lab.live.communicate(timeout=20)
        assert lab.live.returncode == 0, err
        assert "health: real 10.1.0.2:8080 (TCP 10.0.0.100:80) down: Connection refused (1 attempt(s))" in err
        assert "health: real 10.1.0.2:8080 (TCP 10.0.0.100:80) up: 1 check(s) in a row succeeded" in err
        assert "health: real 10.1.0.3:8080 (TCP 10.0.0.100:80) down: /bin/sh exited with status 1 (1 attempt(s))" in err
        assert "health: real 10.1.0.3:8080 (TCP 10.0.0.100:80) up: 1 check(s) in a row succeeded" in err
        assert "10.1.0.1:8080" not in err           # the service's check, passing all along
    finally:
        lab.stop()
        shutil.rmtree(workdir, ignore_errors=True)
