"""Live mode's recent past: a bounded ring of timeline samples, one a second, for `l4emu report --control`."""

from __future__ import annotations

import time
from collections import deque

from l4emu.switch import Switch
from l4emu.timeline import reals_of, take_sample

INTERVAL_S = 1.0  # one sample a second of the live clock
MAX_SAMPLES = 3600  # the last hour: about 1 MB of JSON with a dozen reals, and a page that opens quickly
MAX_MARKS = 1000  # control requests, reloads and health transitions remembered for the charts
X_LABEL = "seconds after the oldest sample"


class History:
    """Samples taken by the live loop between batches (`tick`), the oldest dropped past MAX_SAMPLES, and
    the events that changed the switch (`mark`). A reload may add or remove reals: each sample keeps the
    layout it was taken under (one shared tuple while the config stays), and `timeline` lays every sample
    out over all the reals the ring saw."""

    def __init__(self, start_ns: int, interval_s: float = INTERVAL_S, max_samples: int = MAX_SAMPLES):
        self.start_ns = start_ns
        self.interval_ns = int(interval_s * 1e9)
        self.samples: deque[tuple[tuple, dict]] = deque(maxlen=max_samples)
        self.marks: deque[dict] = deque(maxlen=MAX_MARKS)
        self.next_ns = start_ns
        self.layout: tuple = ()

    def _layout(self, switch: Switch) -> tuple:
        """The reals as (service, real) pairs; the same tuple object as long as they do not change."""
        now = tuple((r["service"], r["real"]) for r in reals_of(switch))
        if now != self.layout:
            self.layout = now
        return self.layout

    def due_in_s(self, now_ns: int) -> float:
        """Seconds until the next sample is due (the loop's longest sleep)."""
        return max(0.0, (self.next_ns - now_ns) / 1e9)

    def tick(self, switch: Switch, now_ns: int) -> None:
        """Take a sample when one is due. A loop that slept past a due time takes one, not several."""
        if now_ns < self.next_ns:
            return
        self.samples.append((self._layout(switch), take_sample(switch, self.start_ns, now_ns)))
        self.next_ns = max(self.next_ns + self.interval_ns, now_ns + self.interval_ns // 2)

    def mark(self, now_ns: int, label: str, real: str | None = None) -> None:
        """Something changed the switch at `now_ns`: drawn as a dotted line on every chart."""
        self.marks.append({"t": round((now_ns - self.start_ns) / 1e9, 6), "real": real, "label": label})

    def timeline(self, switch: Switch, now_ns: int, summary: dict, source: str) -> dict:
        """The ring as the report draws it (timeline.record's shape), ending with a sample taken now,
        after `summary` and the snapshot (which reap expired entries), so that the page's last figures
        are the snapshot's. Times count from the oldest sample."""
        snapshot = switch.snapshot()
        taken = [*self.samples, (self._layout(switch), take_sample(switch, self.start_ns, now_ns))]
        every = list(dict.fromkeys([*self.layout, *(pair for layout, _ in taken for pair in layout)]))
        first_t = taken[0][1]["t"]
        samples = [_laid_out(sample, layout, every, first_t) for layout, sample in taken]
        oldest_ns = self.start_ns + int(first_t * 1e9)
        return {
            "capture": source,
            "live": {
                "interval_s": self.interval_ns / 1e9,
                "max_samples": self.samples.maxlen,
                "oldest_sample_unix_s": round(time.time() - (now_ns - oldest_ns) / 1e9, 3),
            },
            "x_label": X_LABEL,
            "span_s": samples[-1]["t"],
            "seed": switch.seed,
            "reals": [{"service": service, "real": real} for service, real in every],
            "state_names": list(switch.state_counts()),
            "capacity": switch.table_info()["capacity"],
            "samples": samples,
            "summary": {**summary, "events": [], "warnings": []},
            "event_marks": [{**m, "t": round(m["t"] - first_t, 6)} for m in self.marks if m["t"] >= first_t],
            "snapshot": snapshot,
        }


def _laid_out(sample: dict, layout: tuple, every: list, first_t: float) -> dict:
    """A sample's per-real lists over `every` real (0 where the real was not configured then), its time
    counted from the oldest sample."""
    where = {pair: k for k, pair in enumerate(layout)}
    out = {**sample, "t": round(sample["t"] - first_t, 6)}
    for key in ("conns", "active", "inactive"):
        out[key] = [sample[key][where[pair]] if pair in where else 0 for pair in every]
    return out
