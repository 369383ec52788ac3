"""Sharded replay: one capture through N worker processes, each a whole Switch over its share of flows.

The parent walks the capture once and deals each packet to the worker its client address hashes to,
so a flow, its replies, its fragments and the ICMP errors about it meet in one worker. A connection's
fate then depends only on its own packets, as long as the scheduler's choice does too (sh, dh, mh,
hrw; not rr, wlc, ..., where each worker schedules its own flows, as per-core IPVS/DPVS workers do).

The capture is dealt in windows of WINDOW packets: per packet of a window, where it lies in the file
and its owner (two shared tables). Each worker copies only its own packets from the mapped file (it
never reads another's), runs them through its switch, appends its records to its own staging file (in
memory) and notes each packet's bytes in its own list. When every worker is through the window, the
parent copies the records to the output in capture order, each from its owner's staging file, deals
the window after next into the tables just freed, and the workers go on meanwhile. The file is byte
for byte what one worker writes. Memory is flat in the capture's size: two windows' tables and records.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing
import os
import shutil
import struct
import tempfile
import threading
import time
from array import array
from collections.abc import Sequence
from multiprocessing.connection import wait
from pathlib import Path
from threading import BrokenBarrierError

from l4emu.config import Config
from l4emu.datapath._batch import Batch
from l4emu.datapath._datapath import DROP_REASONS, PARSED_LINKTYPES, PASS_REASONS
from l4emu.dist._shard import DEALT_BYTES, Dealer, account, fill_dealt, first_written, gather
from l4emu.errors import L4emuError
from l4emu.io import CaptureError, open_capture, open_writer, unknown_link_types

WINDOW = 1 << 18  # capture packets per window: the workers meet once per window to place their records
BATCH = 4096  # packets per batch, as replay reads them
MAX_WORKERS = 64
PROTOCOLS = {"tcp": 6, "udp": 17}
# Counters that are not sums over workers: the run's, or the config's.
STAGING_DIR = "/dev/shm"  # staging files in memory where there is a tmpfs for it
STAGING_STEP = 16 << 20  # staging files grow in steps of this many bytes
GATHER_BYTES = 1 << 20  # the parent writes the output in chunks of this many bytes
NOT_SUMMED = {"capture", "output", "seed", "max_connections", "elapsed_s", "packets_per_s", "error"}


class ShardError(L4emuError):
    """A sharded replay that cannot run, or a worker that failed: one line saying which and why."""


def check_workers(workers: int) -> None:
    if not 1 <= workers <= MAX_WORKERS:
        raise ShardError(f"--workers {workers}: give 1 to {MAX_WORKERS} worker processes")


def _padded(address) -> bytes:
    return address.packed.ljust(16, b"\0")


def dealing(config: Config) -> tuple[list, list, bytes, bytes]:
    """The Dealer's tables: the service side's endpoints and addresses, and the client address masks
    (the coarsest persistence netmask of each family, so that a client network stays in one worker)."""
    endpoints, addresses = [], []
    prefix = {4: 32, 6: 128}
    for svc in config.services:
        proto = PROTOCOLS[svc.protocol]
        fronts = [(svc.vip, svc.port), *svc.capture_servers]
        for address, port in [*fronts, *((real.address, real.port) for real in svc.reals)]:
            endpoints.append((address.version, _padded(address), port, proto))
            addresses.append((address.version, _padded(address)))
        addresses += [(a.version, _padded(a)) for a in svc.source_addresses]
        if svc.persistence:
            prefix[svc.vip.version] = min(prefix[svc.vip.version], svc.persistence_netmask)
    masks = [
        (((1 << bits) - 1) << (width - bits)).to_bytes(width // 8, "big").ljust(16, b"\xff")
        for bits, width in ((prefix[4], 32), (prefix[6], 128))
    ]
    return endpoints, addresses, masks[0], masks[1]


def sharded_replay(capture: str | Path, config: Config, seed: int, workers: int, output=None, fmt=None) -> dict:
    """Replay `capture` in `workers` processes; the summary replay() would print (counters summed,
    "peak_connections" the sum of the workers' peaks), plus "workers"."""
    from l4emu.replay import outcome_warnings

    check_workers(workers)
    started = time.perf_counter()
    with open_capture(capture) as reader:
        if reader.format == "pcapng":  # every interface now: IDBs go before the workers' packets
            reader.skim()
        interfaces, nanosecond = list(reader.interfaces), reader.nanosecond
    target = output
    if output is not None and not _regular_target(output):  # a device or FIFO: assembled aside, then copied
        suffix = _format_of(output, fmt)
        target = Path(tempfile.mkdtemp(prefix="l4emu-shard-")) / ("out." + suffix)
    writer = None
    try:
        writer = open_writer(target, interfaces, nanosecond=nanosecond, fmt=fmt) if target is not None else None
        start = writer.start_at_offsets() if writer is not None else 0
        results, (error, warnings) = _run_workers(capture, config, seed, workers, writer, start, output)
        if writer is not None:
            firsts = [r["first"] for r in results if r["first"] is not None]
            if len({first[1] for first in firsts}) > 1:
                raise ShardError(f"{output}: packets of several link types: write .pcapng")
            first = min(firsts)[1:] if firsts else None
            writer.finish_at_offsets(sum(r["written"] for r in results), first)
            if target != output:
                _copy_to(target, output)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if target != output and target is not None:
            shutil.rmtree(Path(target).parent, ignore_errors=True)
    summary = merge([r["summary"] for r in results], time.perf_counter() - started, key_orders(config))
    summary["error"] = str(error) if error else None
    summary["output"] = str(output) if output else None
    summary["workers"] = workers
    summary["events"], summary["inside_written"] = [], 0  # as replay() gives them without --event, --inside
    summary["warnings"] = [
        *warnings,
        *unknown_link_types(capture, interfaces, PARSED_LINKTYPES),
        *outcome_warnings(summary, capture),
    ]
    return summary


def _regular_target(path) -> bool:
    return not (os.path.exists(path) and not os.path.isfile(path))


def _format_of(path, fmt) -> str:
    from l4emu.io.pcap.writer import output_format

    return output_format(path, fmt)


def _copy_to(source: Path, device) -> None:
    try:
        with open(source, "rb") as src, open(device, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except OSError as exc:
        raise ShardError(f"{device}: cannot write: {exc.strerror or exc}") from None


def key_orders(config: Config) -> dict[str, list[str]]:
    """The order one worker lists each per-name count in (only names with a count appear): reasons
    in the datapath's order, senders as Switch.unattributed() lists them."""
    fronts = [front for svc in config.services for front in svc.fronts]
    reals = [real.endpoint for svc in config.services for real in svc.reals]
    return {
        "dropped": list(DROP_REASONS),
        "passed_by_reason": list(PASS_REASONS),
        "unattributed": fronts + reals,
        "new_connections": reals,
    }


def merge(summaries: Sequence[dict], elapsed: float, orders: dict[str, list[str]]) -> dict:
    """One summary from the workers': counts summed (per-name counts listed in `orders`' order)."""
    merged = dict(summaries[0])
    for key, value in merged.items():
        if key in NOT_SUMMED:
            continue
        if isinstance(value, dict):
            total: dict = {}
            for summary in summaries:
                for name, count in summary[key].items():
                    total[name] = total.get(name, 0) + count
            rank = {name: k for k, name in reversed(list(enumerate(orders.get(key, []))))}
            merged[key] = dict(sorted(total.items(), key=lambda item: rank.get(item[0], len(rank))))
        elif isinstance(value, int):
            merged[key] = sum(summary[key] for summary in summaries)
    merged["elapsed_s"] = round(elapsed, 6)
    merged["packets_per_s"] = round(merged["packets"] / elapsed) if elapsed > 0 else 0
    return merged


class Meeting:
    """What the workers and the parent share, made before the fork: a barrier, each capture packet's
    place in the file and owner (a window's tables, double-buffered), and per worker its packets'
    bytes out and two staging files, where it appends its records of a window for the parent to gather.

    Per window w (half h = w % 2): the parent deals it into half h and releases each worker's `ready`
    semaphore; each worker processes its packets of the window, sets its records' size and meets the
    parent at `placed`; the parent gathers the half into the output, deals window w + 2 into it and
    releases the workers once more. The parent never waits for a worker but at `placed`; the workers
    never wait for each other."""

    def __init__(self, context, workers: int, output: bool):
        self.workers = workers
        self.placed = context.Barrier(workers + 1)
        self.ready = [context.Semaphore(0) for _ in range(workers)]
        self.dealt = mmap.mmap(-1, 2 * WINDOW * DEALT_BYTES)  # anonymous and shared
        self.owners = mmap.mmap(-1, 2 * WINDOW)
        self.lengths = mmap.mmap(-1, workers * 2 * WINDOW * 4)  # per worker and half: its packets' bytes out
        # per half: per worker its records' bytes, then the window's packet count and whether it is the
        # last; then the latest packet time of the capture; at the end, whether the run was aborted
        self.sizes = mmap.mmap(-1, 2 * 8 * (workers + 2) + 8 + 1)
        staging = STAGING_DIR if os.path.isdir(STAGING_DIR) else None
        self.staging = (
            [[tempfile.TemporaryFile(dir=staging) for _ in range(2)] for _ in range(workers)] if output else []
        )

    def dealt_of(self, half: int) -> memoryview:
        """The half's Dealt table, in bytes: where each packet of the window lies."""
        return memoryview(self.dealt)[half * WINDOW * DEALT_BYTES : (half + 1) * WINDOW * DEALT_BYTES]

    def owners_of(self, half: int) -> memoryview:
        """The half's owner of each packet of the window."""
        return memoryview(self.owners)[half * WINDOW : (half + 1) * WINDOW]

    def lengths_of(self, k: int, half: int) -> memoryview:
        """Worker k's list of its packets' bytes out in the half, in capture order."""
        at = (2 * k + half) * WINDOW
        return memoryview(self.lengths).cast("I")[at : at + WINDOW]

    def abort(self) -> None:
        self.sizes[-1] = 1
        self.placed.abort()
        for semaphore in self.ready:
            semaphore.release()

    def wait_ready(self, k: int) -> None:
        self.ready[k].acquire()
        if self.sizes[-1]:
            raise BrokenBarrierError

    def set_ready(self) -> None:
        for semaphore in self.ready:
            semaphore.release()

    def _at(self, half: int, slot: int) -> int:
        return 8 * ((self.workers + 2) * half + slot)

    def set_size(self, half: int, k: int, size: int) -> None:
        struct.pack_into("=Q", self.sizes, self._at(half, k), size)

    def set_window(self, half: int, count: int, last: bool) -> None:
        struct.pack_into("=QQ", self.sizes, self._at(half, self.workers), count, last)

    def window(self, half: int) -> tuple[list[int], int, bool]:
        """Each worker's records' bytes, the window's packets and whether it is the last."""
        values = struct.unpack_from(f"={self.workers + 2}Q", self.sizes, self._at(half, 0))
        return list(values[: self.workers]), values[-2], bool(values[-1])

    @property
    def latest_ns(self) -> int:
        """The latest packet time of the capture (set with the last window)."""
        return struct.unpack_from("=Q", self.sizes, self._at(2, 0))[0]

    @latest_ns.setter
    def latest_ns(self, value: int) -> None:
        struct.pack_into("=Q", self.sizes, self._at(2, 0), value)

    def close(self) -> None:
        self.dealt.close()
        self.owners.close()
        self.lengths.close()
        self.sizes.close()
        for files in self.staging:
            for file in files:
                file.close()


def _run_workers(capture, config: Config, seed: int, workers: int, writer, start: int, shown=None):
    """Fork the workers, deal them the capture and append their windows to the output, wait for each
    one's result; a worker that fails stops the others. `shown`: the output as errors name it (a
    device's output is assembled aside). Returns the workers' results and the dealing reader's
    (error, warnings)."""
    from l4emu.replay import summarize  # noqa: F401  (imported once here, not in every worker after the fork)
    from l4emu.switch import Switch  # noqa: F401

    context = multiprocessing.get_context("fork")  # the config and tables are inherited, not pickled
    meeting = Meeting(context, workers, writer is not None)
    plan = (capture, config, seed, workers, writer, shown)
    pipes, processes = [], []
    results: list = [None] * workers
    failure = None
    dealing_failures: list = []
    with open_capture(capture) as reader:
        dealer = Dealer(workers, *dealing(config))  # before the fork: a failure here leaves no worker waiting
        for k in range(workers):
            receive, send = context.Pipe(duplex=False)
            process = context.Process(target=_worker, args=(k, plan, meeting, send), daemon=True)
            process.start()
            send.close()
            pipes.append(receive)
            processes.append(process)
        part = writer.part_path if writer is not None else None
        parent = threading.Thread(target=_deal_and_gather, args=(meeting, reader, dealer, part, start, dealing_failures))
        parent.start()
        waiting = dict(zip(pipes, range(workers), strict=True))
        try:
            while waiting:  # a worker that dies closes its pipe: heard here, not left hanging at a barrier
                for ready in wait(list(waiting)):
                    k = waiting.pop(ready)  # type: ignore[call-overload]  # wait() returns what it was given
                    try:
                        status, value = pipes[k].recv()
                    except EOFError:
                        processes[k].join()
                        status = "error"
                        value = f"worker {k} ended without a result (exit code {processes[k].exitcode})"
                    if status == "error" and failure is None:
                        failure = value
                        meeting.abort()
                    results[k] = value
        except BaseException:  # Ctrl-C or an unexpected error here: the dealer and the workers must not wait on
            meeting.abort()
            raise
        finally:
            if failure is not None:
                meeting.abort()
            parent.join()
            for process in processes:
                process.join()
            meeting.close()
        outcome = (reader.error, reader.warnings)
    failure = failure or next(iter(dealing_failures), None)
    if failure is not None:
        raise ShardError(failure)
    if any(result is None for result in results):
        raise ShardError("a worker stopped when another failed")
    return results, outcome


def _deal_and_gather(meeting: Meeting, reader, dealer: Dealer, path: str | None, start: int, failures: list) -> None:
    """The parent's thread: deals each window into its half of the tables (two ahead), and once the
    workers are through it, gathers its records from their staging halves to the output's end in
    capture order (`path`; None: no output); `failures` gets the one line if writing fails."""
    views = [_Staging(files, writable=False) for files in meeting.staging]
    counts: list[list[int]] = [[], []]
    try:
        with open(path, "r+b") if path is not None else contextlib.nullcontext() as out:
            if out is not None:
                out.seek(start)
            last = -1  # the last window, once dealt
            for ahead in (0, 1):
                counts[ahead], ended = _deal(meeting, reader, dealer, ahead)
                meeting.set_ready()
                if ended:
                    last = ahead
                    break
            window = 0
            while True:
                meeting.placed.wait()
                half = window % 2
                sizes, count, _ = meeting.window(half)
                if out is not None:
                    _gather_window(out, meeting, half, count, counts[half], views, sizes)
                if window == last:
                    return
                if last < 0:
                    counts[half], ended = _deal(meeting, reader, dealer, window + 2)
                    if ended:
                        last = window + 2
                    meeting.set_ready()
                window += 1
    except BrokenBarrierError:  # a worker failed: it reports why
        return
    except OSError as exc:
        failures.append(f"{path}: cannot write: {exc.strerror or exc}")
        meeting.abort()
    except ValueError as exc:
        failures.append(f"{path}: {exc}")
        meeting.abort()
    except Exception as exc:  # noqa: BLE001 (the workers wait on this thread: they must hear, not hang)
        failures.append(f"dealing {reader.path}: {type(exc).__name__}: {exc}")
        meeting.abort()
    finally:
        for view in views:
            view.close()


def _deal(meeting: Meeting, reader, dealer: Dealer, window: int) -> tuple[list[int], bool]:
    """Deal window `window` into its half: each worker's packets of it, and whether it is the last."""
    half = window % 2
    dealer.begin(meeting.dealt_of(half), meeting.owners_of(half))
    try:
        count = reader.feed(dealer, (window + 1) * WINDOW)
    finally:
        dealer.end()
    if dealer.filled != count:
        raise ValueError(f"window {window}: {dealer.filled} packets dealt of {count} read")
    ended = count < WINDOW
    if ended:
        meeting.latest_ns = reader.latest_ns
    meeting.set_window(half, count, ended)
    return dealer.counts, ended


def _gather_window(out, meeting: Meeting, half: int, count: int, dealt: list[int], views: list, sizes: list[int]):
    """Write a window's records to `out` in capture order, each from its owner's staging half."""
    sources = [view.room(half, size) for view, size in zip(views, sizes, strict=True)]
    lengths = [meeting.lengths_of(k, half)[:n] for k, n in enumerate(dealt)]
    taken = array("Q", bytes(8 * len(sources)))
    told = array("Q", bytes(8 * len(sources)))
    buffer = bytearray(GATHER_BYTES)
    done = 0
    try:
        while done < count:
            done, filled = gather(meeting.owners_of(half), done, count, lengths, told, sources, taken, buffer)
            if filled == 0 and done < count:
                buffer = bytearray(2 * len(buffer))  # a record bigger than the buffer
            out.write(memoryview(buffer)[:filled])
    finally:
        for source in sources:
            source.release()
        for each in lengths:
            each.release()
    if list(taken) != sizes or list(told) != dealt:
        raise ValueError("the window's records and capture indices disagree")


def _worker(k: int, plan, meeting: Meeting, send) -> None:
    try:
        send.send(("ok", _replay_share(k, plan, meeting)))
    except (BrokenBarrierError, KeyboardInterrupt):  # another process failed (it reports why), or Ctrl-C
        meeting.abort()
        send.send(("stopped", None))
    except L4emuError as exc:
        meeting.abort()
        send.send(("error", str(exc)))
    except Exception as exc:  # noqa: BLE001 (a process boundary: the parent must hear, not hang)
        meeting.abort()
        send.send(("error", f"worker {k}: {type(exc).__name__}: {exc}"))
    finally:
        send.close()


def _replay_share(k: int, plan, meeting: Meeting) -> dict:
    """One worker: its share of the capture, window by window as dealt, through its own Switch, its
    records staged."""
    from l4emu.replay import summarize
    from l4emu.switch import Switch

    capture, config, seed, workers, writer, shown = plan
    started = time.perf_counter()
    switch = Switch(config, seed)
    staging = _Staging(meeting.staging[k]) if writer is not None else None
    with open(capture, "rb") as file:
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        with memoryview(mapped) as packets:
            written, first = _replay_windows(k, switch, packets, meeting, writer, staging, shown)
    finally:
        mapped.close()
        if staging is not None:
            staging.close()
    switch.advance_clock(meeting.latest_ns)  # the clock one worker would end on: expiries as it sees them
    summary = summarize(switch, capture, None, written, time.perf_counter() - started, None)
    return {"summary": summary, "written": written, "first": first}


def _replay_windows(k: int, switch, packets: memoryview, meeting: Meeting, writer, staging, shown):
    """Worker k's packets of each window (copied from the mapped capture, `packets`) through `switch`,
    their records staged; returns the packets written and the first one's (capture index, link type,
    interface), or None."""
    index = memoryview(array("I", bytes(4 * BATCH))).cast("B").cast("I")
    batch = Batch(BATCH)
    encoder = writer.offsets_encoder() if writer is not None else None
    pcapng = writer is not None and writer.format == "pcapng"
    written, first, linktype = 0, None, None
    window = 0
    while True:
        half = window % 2
        meeting.wait_ready(k)  # the parent has dealt the window into this half
        _, count, last = meeting.window(half)
        at = used = mine = 0
        with meeting.dealt_of(half) as dealt, meeting.owners_of(half) as owners, meeting.lengths_of(k, half) as lengths:
            while at < count:
                at = fill_dealt(batch, packets, dealt, owners, k, at, count, index)
                pushed = batch.n
                if pushed == 0:
                    break
                switch.process(batch)
                mine += pushed
                if encoder is None or staging is None:
                    continue
                if first is None and (first := first_written(batch, index)) is not None:
                    first, linktype = (window * WINDOW + first[0], *first[1:]), first[1]
                try:
                    size, _ = encoder.measure(batch, False, None, linktype or 0)
                except ValueError as exc:
                    raise ShardError(f"{shown}: {exc}") from None
                with staging.room(half, used + size) as room, room[used:] as records:
                    written += encoder.encode_into(batch, False, None, linktype or 0, records)[1]
                    account(batch, mine - pushed, records, pcapng, lengths)
                used += size
        meeting.set_size(half, k, used)
        meeting.placed.wait()
        if last:
            return written, first
        window += 1


def _reserve(fd: int, size: int) -> None:
    """Grow a staging file with its pages allocated now: a sparse file on a full tmpfs would fail later,
    as a SIGBUS on the first write through the map (Docker's /dev/shm is 64 MB)."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        where = STAGING_DIR if os.path.isdir(STAGING_DIR) else tempfile.gettempdir()
        raise ShardError(
            f"{where}: no room to stage {size:,} bytes of a worker's output ({exc.strerror}): "
            "free some, or use fewer workers"
        ) from None


class _Staging:
    """One worker's two staging files, mapped: written by the worker (grown, never shrunk, to hold its
    records of a window), read by the parent's gather."""

    def __init__(self, files, writable: bool = True):
        self.files = files
        self.writable = writable
        self.maps: list[mmap.mmap | None] = [None, None]

    def room(self, half: int, size: int) -> memoryview:
        """A view of the half's first `size` bytes (only while the other side keeps off it: the worker
        until it meets the parent, the parent until it releases the workers)."""
        if size == 0:
            return memoryview(bytearray(0))
        current = self.maps[half]
        if current is None or len(current) < size:
            fd = self.files[half].fileno()
            if self.writable:
                want = -(-size // STAGING_STEP) * STAGING_STEP
                if os.fstat(fd).st_size < want:
                    _reserve(fd, want)
            else:
                want = os.fstat(fd).st_size
            if current is not None:
                current.close()
            access = mmap.ACCESS_WRITE if self.writable else mmap.ACCESS_READ
            current = self.maps[half] = mmap.mmap(fd, want, access=access)
        return memoryview(current)[:size]

    def close(self) -> None:
        for each in self.maps:
            if each is not None:
                each.close()


def check_sharding(summary: dict, capture, config: Config, seed: int | None) -> dict:
    """How far the sharded run's new connections per real are from one worker's (the capture replayed
    again in this process, no output): zero for schedulers whose choice depends on the flow alone."""
    from l4emu.replay import replay
    from l4emu.switch import Switch

    single = replay(capture, Switch(config, seed))
    rows = []
    for real, one in single["new_connections"].items():
        many = summary["new_connections"].get(real, 0)
        share = abs(many - one) / one * 100 if one else (100.0 if many else 0.0)
        rows.append({"real": real, "one_worker": one, "sharded": many, "difference_pct": round(share, 2)})
    return {
        "workers": summary["workers"],
        "reals": rows,
        "max_difference_pct": max((row["difference_pct"] for row in rows), default=0.0),
    }
