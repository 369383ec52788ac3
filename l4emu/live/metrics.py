"""--metrics: a Prometheus endpoint whose scrapes the live loop answers with a snapshot between batches.

prometheus_client serves HTTP in threads of its own; the switch belongs to the live loop's thread
(its batches run without the GIL), so a scrape never reads the switch itself: it asks the loop for a
snapshot through a wake-up socket in the loop's epoll and waits for it. A scrape thus costs one
snapshot, and nothing per packet.
"""

from __future__ import annotations

import ipaddress
import queue
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import Future

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from l4emu.datapath._datapath import DROP_REASONS, PASS_REASONS
from l4emu.errors import OptionError
from l4emu.render import metrics as render

SCRAPE_TIMEOUT_S = 5.0  # a scrape waits this long for the loop (Prometheus's default scrape_timeout is 10 s)


def parse_address(text: str) -> tuple[str, int]:
    """--metrics HOST:PORT ([v6]:PORT) -> (host, port); anything else is the user's mistake, said so."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        number = -1
    if not sep or not 0 <= number <= 65535:
        raise OptionError(f"--metrics {text!r}: give an address and port, as 127.0.0.1:9101 or [::1]:9101")
    return host, number


class SnapshotCollector(Collector):
    """A custom collector: each collect() renders one snapshot that `fetch` returns."""

    def __init__(self, fetch: Callable[[], dict]):
        self.fetch = fetch

    def collect(self) -> Iterator[Metric]:
        return render.families(self.fetch(), DROP_REASONS, PASS_REASONS)


class MetricsServer:
    """The HTTP endpoint and its hand-off: `fd` goes in the loop's epoll, `serve` answers waiting scrapes."""

    def __init__(self, address: str, snapshot: Callable[[], dict]):
        host, port = parse_address(address)
        self.snapshot = snapshot
        self.waiting: queue.SimpleQueue[Future] = queue.SimpleQueue()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SnapshotCollector(self._fetch))
        ProcessCollector(registry=registry)  # process_cpu_seconds_total, resident memory, open fds
        try:
            self.httpd, self.thread = start_http_server(port, host, registry)
        except OSError as exc:
            self.wake_r.close()
            self.wake_w.close()
            raise OptionError(f"--metrics {address}: {exc.strerror or exc}") from None
        bound_host, bound_port = str(self.httpd.server_address[0]), self.httpd.server_address[1]
        self.address = f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"

    @property
    def fd(self) -> int:
        return self.wake_r.fileno()

    def _fetch(self) -> dict:
        """In an HTTP thread: ask the loop for a snapshot and wait for it."""
        future: Future = Future()
        self.waiting.put(future)
        try:
            self.wake_w.send(b"s")
        except BlockingIOError:
            pass  # the loop has wake-ups pending already; it drains the queue whole
        return future.result(timeout=SCRAPE_TIMEOUT_S)

    def serve(self) -> None:
        """In the loop: one snapshot for every scrape waiting now."""
        try:
            while self.wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        snapshot = None
        while True:
            try:
                future = self.waiting.get_nowait()
            except queue.Empty:
                return
            if snapshot is None:
                snapshot = self.snapshot()
            future.set_result(snapshot)

    def close(self) -> None:
        """Stop serving; scrapes still waiting get an error (HTTP 500) rather than hanging."""
        self.httpd.shutdown()
        self.httpd.server_close()
        while True:
            try:
                self.waiting.get_nowait().set_exception(RuntimeError("l4emu live is stopping"))
            except queue.Empty:
                break
        self.wake_r.close()
        self.wake_w.close()
