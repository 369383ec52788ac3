"""Replay a capture through a Switch: read in batches, process, write; the summary users see."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from l4emu.io import CaptureError, open_capture, open_writer
from l4emu.switch import Switch


def replay(capture: str | Path, switch: Switch, output: str | Path | None = None, annotate: bool = False,
           progress: Callable[[int, int], None] | None = None) -> dict:
    """Run every packet of `capture` through `switch`; returns the summary (see summary_text).

    A capture fault stops reading after everything good before it was processed and written; the
    summary then carries the fault under "error".
    """
    if annotate and (output is None or Path(output).suffix != ".pcapng"):
        raise ValueError("--annotate writes packet comments, which need a .pcapng output (-o out.pcapng)")
    started = time.perf_counter()
    written = 0
    with open_capture(capture) as reader:
        writer = open_writer(output, reader.interfaces, nanosecond=reader.nanosecond) if output else None
        comments = switch.comment_table() if annotate else None
        try:
            for batch in reader.batches():
                switch.process(batch)
                if writer is not None:
                    writer.write(batch, include_dropped=annotate, comments=comments)
                if progress is not None:
                    progress(reader.position, reader.size)
        finally:
            if writer is not None:
                writer.close()
                written = writer.packets_written
        error = reader.error
    elapsed = time.perf_counter() - started
    return summarize(switch, capture, output, written, elapsed, error)


def summarize(switch: Switch, capture, output, written: int, elapsed: float, error: CaptureError | None) -> dict:
    stats = switch.stats()
    final = switch.connection_count()
    return {
        "capture": str(capture), "output": str(output) if output else None, "seed": switch.seed,
        "packets": stats["packets"], "written": written,
        "translated": stats["new"] + stats["forward"] + stats["reply"],
        "new": stats["new"], "forward": stats["forward"], "reply": stats["reply"],
        "passed": stats["passed"], "passed_by_reason": stats["passed_by_reason"],
        "dropped": stats["dropped"],
        "new_connections": stats["new_connections"],
        "peak_connections": stats["peak_connections"], "final_connections": final,
        "max_connections": switch.config.max_connections,
        "expired": stats["expired"], "evicted": stats["evicted"], "reused": stats["reused"],
        "elapsed_s": round(elapsed, 6),
        "packets_per_s": round(stats["packets"] / elapsed) if elapsed > 0 else 0,
        "error": str(error) if error else None,
    }
