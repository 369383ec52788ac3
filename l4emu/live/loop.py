"""Live mode: one epoll loop moves TUN packets through the same datapath as replay and serves the control socket."""

from __future__ import annotations

import logging
import os
import pwd
import select
import signal
import socket
import time
from pathlib import Path

from l4emu import config as configmod
from l4emu import reconfig, schedulers
from l4emu.checks import live_refusal
from l4emu.datapath._batch import Batch
from l4emu.emulate import BatchSink, Emulator
from l4emu.errors import L4emuError, OptionError
from l4emu.io import Interface, WriteError, open_writer
from l4emu.io.pcap.writer import CaptureWriter
from l4emu.io.tun._io import LINKTYPE_RAW, TunIO
from l4emu.io.tun.device import Tun
from l4emu.live.control import ControlServer
from l4emu.live.health import HealthChecks
from l4emu.live.history import History
from l4emu.live.metrics import MetricsServer
from l4emu.render import ipvsadm
from l4emu.replay import emulated_summary, emulator_counts, summarize
from l4emu.switch import Switch

BATCH = 256  # packets per read round; the datapath's windows prefetch within it
ROUNDS_PER_WAKE = 64  # then the control socket and signals get a turn (epoll is level-triggered)
log = logging.getLogger("l4emu.live")  # the daemon's events, one line each (cli: --log-level)
MAX_SNAPLEN = 262144  # tcpdump's: larger than any packet or 64 KiB super-packet the TUN hands over


class Live:
    """Owns the switch while it runs: packets and control requests take turns in one thread."""

    def __init__(
        self,
        switch: Switch,
        tun: Tun,
        control_path: str | None = None,
        control_group: str | None = None,
        pcap_out: str | None = None,
        user: str | None = None,
        snaplen: int = 0,
        metrics: str | None = None,
        config_path: str | None = None,
        dns=None,
    ):
        self.switch, self.tun = switch, tun
        self.dns = dns  # a GSLB's l4emu.gslb.tun.TunAnswerer: DNS queries the switch passed are answered
        self.config_path = config_path  # what SIGHUP re-reads (None: the embedded default)
        self.reload_requested = False
        self.reloads = {"applied": 0, "refused": 0}  # by apply or SIGHUP (a dry run is neither)
        self.control: ControlServer | None = None
        self.metrics: MetricsServer | None = None
        self.writer: CaptureWriter | None = None
        self.finisher: Finisher | None = None
        self.stopping = False
        self.error: str | None = None
        try:
            self._open(control_path, control_group, pcap_out, user, snaplen, metrics)
        except BaseException:
            if self.writer is not None:
                self.writer.abort()  # a .part file made before the failure goes again (and the socket)
            self.close()
            raise

    def _open(self, control_path, control_group, pcap_out, user, snaplen, metrics) -> None:
        switch = self.switch
        self.batch = Batch(BATCH)
        # A monotonic clock (as the datapath needs) that starts at wall-clock time, for --pcap-out.
        self.epoch_ns = time.time_ns() - time.monotonic_ns()
        self.io = TunIO(self.tun.fd, self.tun.vnet, BATCH, self.epoch_ns)
        self.started_at = time.perf_counter()  # for the summary a report asks for
        self.history = History(self._clock_ns())  # what `l4emu report --control` draws
        self.pcap_out = pcap_out
        owner = user_id(user) if user else None
        if control_path:
            self.control = ControlServer(control_path, self._request, control_group, owner)
        if pcap_out:
            self.writer = open_writer(
                pcap_out, [Interface(LINKTYPE_RAW, snaplen or MAX_SNAPLEN, True)], nanosecond=True, snaplen=snaplen
            )
        # Emulated reals answer here: what the switch sends them never reaches the TUN, their answers do,
        # a batch at a time (one write_from, as for the switch's own packets).
        self.emulator = (
            Emulator(switch, outside=BatchSink(self._answers), restamp=False) if switch.hosts is not None else None
        )
        refusal = live_refusal(switch.config.services)
        if refusal:
            raise OptionError(refusal)
        self.health = HealthChecks(switch, self._health_changed)  # [service.check]: none until a service has one
        self.write_errors_logged = 0
        # Python plugin schedulers collect their exceptions (the packet path cannot raise): logged as they come.
        self.plugins = [s for s in switch.schedulers if hasattr(s, "errors")]
        self.plugin_errors_logged = [0] * len(self.plugins)
        if user:
            # Renaming the capture into place and removing the socket need write access to their
            # directories, which the user may not have: a helper that keeps root does those two things.
            part = self.writer.part_path if self.writer is not None and self.writer.renames else None
            if part or control_path:
                self.finisher = Finisher(part, pcap_out if part else None, control_path)
                if part and self.writer is not None:
                    self.writer.rename = self.finisher.rename
        if metrics:  # after the helper's fork (a fork copies no HTTP thread), before root goes (ports < 1024)
            self.metrics = MetricsServer(metrics, self.metrics_snapshot)
        if user:
            drop_privileges(user)

    def _clock_ns(self) -> int:
        """Now on the live packet clock: monotonic, started at wall-clock time."""
        return time.monotonic_ns() + self.epoch_ns

    def _now(self) -> None:
        """Bring the packet clock to now, so expiry and `expire` columns are right between packets."""
        self.switch.advance_clock(self._clock_ns())

    def _sample_if_due(self) -> None:
        """One timeline sample a second (History), between batches."""
        if self.history.due_in_s(self._clock_ns()) == 0:
            self._now()
            self.history.tick(self.switch, self.switch.clock_ns)

    def _health_changed(self, endpoint: str, healthy: bool) -> None:
        self.history.mark(self._clock_ns(), f"{endpoint} {'up' if healthy else 'down'} (health check)", endpoint)

    def _request(self, request: dict):
        op = request["op"]
        self._now()
        if op == "set_real":
            state = request.get("state")
            down = {"down": True, "up": False}.get(state) if state else None
            weight = request.get("weight")
            if weight is not None and not isinstance(weight, int):
                raise ValueError("weight must be an integer")
            self.switch.set_real(str(request["endpoint"]), weight=weight, down=down)
            what = (
                ", ".join([f"weight {weight}"] * (weight is not None) + ["down" if down else "up"] * (down is not None))
                or "unchanged"
            )
            log.info("real %s: %s (control request)", request["endpoint"], what)
            self.history.mark(self._clock_ns(), f"{request['endpoint']} {what}", str(request["endpoint"]))
            return {"endpoint": request["endpoint"], "weight": weight, "down": down}
        if op == "apply":
            source = str(request.get("source") or "new config")
            try:
                return self.apply(str(request["toml"]), source, bool(request.get("dry_run")))
            except L4emuError as exc:  # one the control socket does not know (a plugin that fails): refused too
                raise ValueError(str(exc)) from None
        if op == "config":
            return reconfig.config_data(self.switch.config)
        if op == "timeline":
            return self.timeline()
        if op == "conntrack":
            return self.switch.conntrack()
        if op == "services":
            return self.switch.services()
        if op == "sockets":
            self._emulate_until_now()
            return {"clock_ns": self.switch.clock_ns, "sockets": self.switch.sockets()}
        if op == "stats":
            stats = {
                "clock_ns": self.switch.clock_ns,
                "services": self.switch.services(),
                "stats": self.switch.stats(),
                "tun": self.tun_counters(),
            }
            if self.emulator is not None:
                stats["emulated"] = self.emulated_counts()  # answers, and `direct`: past the switch (dr, tun)
            return stats
        return {**self.switch.snapshot(), "tun": self.tun_counters()}

    def apply(self, text: str, source: str, dry_run: bool = False) -> dict:
        """Reload from TOML text (l4emu apply, SIGHUP): the diff as plain data; ConfigError if it cannot be."""
        try:
            config = configmod.loads(text, source, schedulers.catalog())  # emulated reals: refused by the plan
            diff = self.switch.plan(config, source) if dry_run else self.switch.apply(config, source)
        except L4emuError:
            self.reloads["refused"] += not dry_run
            raise
        self.reloads["applied"] += not dry_run
        lines = ipvsadm.diff_lines(diff.as_dict())
        if not dry_run:
            self.health.rebuild(self.switch)
            self.plugins = [s for s in self.switch.schedulers if hasattr(s, "errors")]
            self.plugin_errors_logged = [0] * len(self.plugins)
            log.info("reload from %s: %s", source, f"{len(lines)} change(s)" if lines else "no change")
            self.history.mark(self._clock_ns(), f"reload: {len(lines)} change(s)")
            for line in lines:
                log.info("reload: %s", line)
        return {"source": source, "applied": not dry_run, **diff.as_dict(), "ipvsadm": lines}

    def _reload(self) -> None:
        """SIGHUP: re-read -c; a config that cannot be read or applied is logged and the running one kept."""
        self.reload_requested = False
        source = self.config_path or "default config"
        try:
            text = (
                Path(self.config_path).read_text(encoding="utf-8")
                if self.config_path
                else configmod.DEFAULT_CONFIG.read_text(encoding="utf-8")
            )
        except (OSError, UnicodeDecodeError) as exc:
            log.error("SIGHUP: %s: %s; the running config stays", source, getattr(exc, "strerror", None) or exc)
            return
        try:
            self.apply(text, source)
        except L4emuError as exc:
            log.error("SIGHUP: %s; the running config stays", exc)

    def timeline(self) -> dict:
        """The recent past for `l4emu report --control`: the ring of samples, the events, and now (summary
        and snapshot) in timeline.record's shape."""
        self._now()
        written = self.writer.packets_written if self.writer is not None else 0
        elapsed = time.perf_counter() - self.started_at
        summary = summarize(self.switch, f"tun {self.tun.name}", self.pcap_out, written, elapsed, None)
        data = self.history.timeline(self.switch, self.switch.clock_ns, summary, f"live on {self.tun.name}")
        data["live"]["config"] = self.config_path or "the embedded config"
        data["tun"] = self.tun_counters()
        return data

    def metrics_snapshot(self) -> dict:
        """What a --metrics scrape renders (l4emu/render/metrics.py), taken between batches."""
        self._now()
        return {
            "services": self.switch.services(),
            "stats": self.switch.stats(),
            "table": self.switch.table_info(),
            "tun": self.tun_counters(),
            "reloads": dict(self.reloads),
            "health": self.health.snapshot(),
        }

    def emulated_counts(self) -> dict:
        """The emulated hosts' totals and the emulate loop's counts (answers in packets, `direct` those
        of dr and tun reals, which never crossed the switch), as a replay summary gives them."""
        assert self.emulator is not None
        return {**emulated_summary(self.switch, None), **emulator_counts(self.emulator)}

    def tun_counters(self) -> dict:
        io = self.io
        return {
            "name": self.tun.name,
            "packets_in": io.packets_in,
            "packets_out": io.packets_out,
            "bytes_in": io.bytes_in,
            "bytes_out": io.bytes_out,
            "gso_in": io.gso_in,
            "gso_out": io.gso_out,
            "write_errors": io.write_errors,
            "offloads": list(self.tun.offloads),
        }

    def _pump(self) -> None:
        for _ in range(ROUNDS_PER_WAKE):
            got = self.io.read_into(self.batch)
            if got < 0:
                self.error = f"{self.tun.name}: read failed: {os.strerror(-got)}"
                log.error("%s", self.error)
                self.stopping = True
            if len(self.batch) == 0:
                return
            self.switch.process(self.batch)
            answers = self.dns.answer(self.batch) if self.dns is not None else None
            if self.writer is not None:
                self._record(self.batch)
            if self.emulator is not None:
                self.emulator.intercept(self.batch)
            self.io.write_from(self.batch)  # empties the batch
            if answers is not None:
                self._answers(answers)  # the GSLB's DNS answers, in a batch of their own
            if self.emulator is not None:
                self.emulator.flush()  # the hosts' answers, through the switch already
            self._log_errors()
            if got <= 0:
                return

    def _log_errors(self) -> None:
        """TUN write errors and plugin exceptions since the last look: one line per kind and round."""
        failed = self.io.write_errors - self.write_errors_logged
        if failed:
            self.write_errors_logged = self.io.write_errors
            log.warning(
                "%s: %d packet(s) could not be written to the TUN (%d so far)",
                self.tun.name,
                failed,
                self.io.write_errors,
            )
        for k, plugin in enumerate(self.plugins):
            errors = plugin.errors
            for exc in errors[self.plugin_errors_logged[k] :]:
                log.error(
                    "scheduler plugin %s raised %s: %s (the packet got no real)",
                    type(plugin).__name__,
                    type(exc).__name__,
                    exc,
                )
            self.plugin_errors_logged[k] = len(errors)

    def run(self) -> dict:
        """Run until SIGINT/SIGTERM (or a TUN error); returns the summary."""
        started = time.perf_counter()
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._hangup)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        epoll = select.epoll()
        try:
            epoll.register(self.tun.fd, select.EPOLLIN)
            epoll.register(wake_r.fileno(), select.EPOLLIN)
            if self.control:
                self.control.register(epoll)
            if self.metrics:
                epoll.register(self.metrics.fd, select.EPOLLIN)
            self.health.register(epoll)
            while not self.stopping:
                for fd, events in epoll.poll(self._poll_timeout()):
                    if fd == self.tun.fd:
                        self._pump()
                    elif fd == wake_r.fileno():
                        wake_r.recv(256)
                    elif self.control and self.control.owns(fd):
                        self.control.on_event(fd, events)
                    elif self.metrics and fd == self.metrics.fd:
                        self.metrics.serve()
                    elif self.health.owns(fd):
                        self.health.on_event(fd, events)
                if self.control:
                    self.control.expire()
                if self.reload_requested:
                    self._now()
                    self._reload()
                self.health.run_due()
                self._emulate_until_now()
                self._sample_if_due()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            epoll.close()
            wake_r.close()
            wake_w.close()
            self.close()
        return self.summary(time.perf_counter() - started)

    def _answers(self, batch: Batch) -> None:
        """Emulated hosts' packets, through the switch already: to the TUN (and --pcap-out), in one batch."""
        if self.writer is not None:
            self._record(batch)
        self.io.write_from(batch)  # answers the switch dropped are left out; failures count as write errors

    def _record(self, batch: Batch) -> None:
        """--pcap-out: a capture that cannot be written (disk full) stops the run, with the reason."""
        assert self.writer is not None
        try:
            self.writer.write(batch)
        except WriteError as exc:
            if self.error is None:
                self.error = str(exc)
            log.error("--pcap-out: %s; stopping", exc)
            self.stopping = True

    def _emulate_until_now(self) -> None:
        """The hosts' clocks (accept pace, TIME-WAIT) follow the live packet clock between packets too, as
        do the GSLB's DNS-over-TCP connections' (an idle one's close)."""
        if self.emulator is not None:
            self._now()
            self.emulator.advance(self.switch.clock_ns)
            self.emulator.flush()
        deadline = self.dns.next_deadline() if self.dns is not None else None
        if deadline is not None and self.dns is not None:
            self._now()
            if deadline <= self.switch.clock_ns:  # only when one is due: advance() starts a new answers batch
                answers = self.dns.advance(self.switch.clock_ns)
                if answers is not None:
                    self._answers(answers)

    def _poll_timeout(self) -> float:
        deadlines = [
            d
            for d in (
                self.emulator.hosts.next_deadline() if self.emulator is not None else None,
                self.dns.next_deadline() if self.dns is not None else None,
            )
            if d is not None
        ]
        deadline = min(deadlines) if deadlines else None
        checks = self.health.timeout()
        wait = min(1.0, self.history.due_in_s(self._clock_ns()))
        wait = wait if checks is None else min(wait, checks)
        if deadline is None:
            return wait
        return min(wait, max(0.0, (deadline - time.monotonic_ns() - self.epoch_ns) / 1e9))

    def _hangup(self, signum, frame) -> None:
        log.info("SIGHUP: reloading %s", self.config_path or "the default config")
        self.reload_requested = True

    def _stop(self, signum, frame) -> None:
        if not self.stopping:
            log.info("%s: stopping", signal.Signals(signum).name)
        self.stopping = True

    def close(self) -> None:
        """Remove the socket, finish the capture, close the TUN: each step even when one before failed."""
        try:
            try:
                if getattr(self, "health", None) is not None:
                    self.health.close()
                if self.metrics is not None:
                    self.metrics.close()
            finally:
                self.metrics = None
                if self.control is not None:
                    self.control.close()
        finally:
            self.control = None
            try:
                if self.writer is not None:
                    try:
                        self.writer.close()
                    except WriteError as exc:
                        self.error = self.error or str(exc)
            finally:
                try:
                    self.tun.close()
                finally:
                    if self.finisher is not None:
                        self.finisher.close()
                        self.finisher = None

    def summary(self, elapsed: float) -> dict:
        self._now()
        written = self.writer.packets_written if self.writer is not None else 0
        summary = summarize(self.switch, f"tun {self.tun.name}", self.pcap_out, written, elapsed, None)
        summary["tun"] = self.tun_counters()
        if self.emulator is not None:
            summary["emulated"] = self.emulated_counts()
        if self.dns is not None:
            summary["dns"] = dict(sorted((name, n) for name, n in self.dns.counters.items() if n))
            tcp = self.dns.tcp_counters()
            if tcp is not None:
                summary["dns_tcp"] = tcp
        summary["error"] = self.error
        return summary


def user_id(user: str) -> int:
    """--user's uid; an unknown name is the user's mistake, said as getpwnam says it."""
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError as exc:
        raise OptionError(exc.args[0]) from None


def drop_privileges(user: str) -> None:
    """Become `user` for good (the TUN fd, the control socket and the capture file stay open)."""
    entry = pwd.getpwnam(user)
    os.setgroups(os.getgrouplist(entry.pw_name, entry.pw_gid))
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


class Finisher:
    """With --user: a helper process that keeps root for the two things the switch, once it has dropped
    root, may not be allowed to do in a directory it cannot write: rename the finished capture from
    NAME.part to NAME, and remove the control socket. It knows both paths from the start and takes a
    single request ("finish": rename the capture). When the switch is gone, however it went (even
    SIGKILL), the helper sees its end of the socket pair close: it removes the socket file (if it is
    still the one this run made) and an unfinished .part file, and exits."""

    def __init__(self, part: str | None, final: str | None, socket_path: str | None):
        self.part, self.final = part, final
        try:
            st = os.lstat(socket_path) if socket_path else None
        except FileNotFoundError:
            st = None
        ours = (st.st_dev, st.st_ino) if st else None
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # the helper: never returns to the caller's code
            code = 1
            try:
                mine.close()
                _detach(theirs.fileno())
                _finish_when_done(theirs, part, final, socket_path, ours)
                code = 0
            finally:
                os._exit(code)
        theirs.close()
        self.pid, self.sock = pid, mine
        self.replies = mine.makefile("rb")

    def rename(self, part: str, final: str) -> None:
        """The writer's rename: done by the helper; OSError with its reason if it could not."""
        if (part, final) != (self.part, self.final):
            raise OSError(f"the helper renames only {self.part} -> {self.final}")
        try:
            self.sock.sendall(b"finish\n")
            reply = self.replies.readline().decode(errors="replace").rstrip("\n")
        except OSError as exc:
            raise OSError(f"the helper that renames it is gone ({exc.strerror or exc})") from None
        if reply != "ok":
            raise OSError(reply.removeprefix("error ") or "the helper that renames it is gone")

    def close(self) -> None:
        """Let the helper clean up and wait for it, so the socket is gone when live exits."""
        self.replies.close()
        self.sock.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _detach(keep: int) -> None:
    """In the helper: ignore the terminal's and the test's signals (it ends when the switch does),
    let go of the TUN, the capture and the caller's stdout/stderr (nobody waits on the helper's pipes)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _finish_when_done(sock: socket.socket, part, final, socket_path, ours) -> None:
    finished = False
    with sock, sock.makefile("rb") as requests:
        for line in requests:
            if line == b"finish\n" and part and not finished:
                try:
                    os.replace(part, final)
                    finished = True
                    reply = b"ok\n"
                except OSError as exc:
                    reply = f"error {exc.strerror or exc}\n".encode()
            else:
                reply = b"error not a request the helper takes\n"
            try:
                sock.sendall(reply)
            except OSError:
                break
    if part and not finished:
        try:
            os.unlink(part)
        except OSError:
            pass
    if socket_path and ours:
        try:
            st = os.lstat(socket_path)
            if (st.st_dev, st.st_ino) == ours:
                os.unlink(socket_path)
        except OSError:
            pass
