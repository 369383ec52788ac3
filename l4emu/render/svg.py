"""A small inline-SVG line chart for the HTML report: no plotting library, nothing fetched to view it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT = 860, 240  # the chart's box, in SVG user units (the page scales it to its column)
LEFT, RIGHT, TOP, BOTTOM = 56, 250, 22, 34  # margins: y labels, the legend, the title, x labels
TICKS = 5  # grid lines on each axis
# Tableau 10: distinct, and readable by most colour-blind readers.
COLOURS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")


def _fmt(value: float) -> str:
    """An axis label: whole numbers as such, others with at most three significant digits."""
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}"


X_LABEL = "seconds after the first packet"


def _frame(title: str, t_max: float, y_max: float, y_label: str, x_label: str):
    """The chart's opening: title, grid, axis labels; and its x and y scales (seconds, value -> user units)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + plot_w * t / t_max

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / y_max)

    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<text class="title" x="{LEFT}" y="14">{escape(title)}</text>',
    ]
    for k in range(TICKS + 1):
        value, t = y_max * k / TICKS, t_max * k / TICKS
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(value):.1f}" y2="{y(value):.1f}"/>')
        parts.append(f'<text class="ylab" x="{LEFT - 4}" y="{y(value) + 4:.1f}">{_fmt(value)}</text>')
        parts.append(f'<text class="xlab" x="{x(t):.1f}" y="{TOP + plot_h + 14}">{_fmt(round(t, 3))}</text>')
    parts.append(f'<text class="xlab" x="{LEFT + plot_w / 2}" y="{HEIGHT - 2}">{escape(x_label)}</text>')
    if y_label:
        parts.append(
            f'<text class="ylab" transform="rotate(-90)" x="{-(TOP + plot_h / 2)}" y="12" '
            f'style="text-anchor:middle">{escape(y_label)}</text>'
        )
    return parts, x, y


def _legend_entry(k: int, name: str) -> list[str]:
    colour = COLOURS[k % len(COLOURS)]
    ly = TOP + 14 * k + 6
    return [
        f'<rect x="{WIDTH - RIGHT + 10}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>',
        f'<text class="legend" x="{WIDTH - RIGHT + 24}" y="{ly + 1}">{escape(name)}</text>',
    ]


def _marks(marks: Sequence[tuple[float, str]], x) -> list[str]:
    """Each event as a dotted vertical line with its label; labels step down so that several do not overprint."""
    parts = []
    for k, (t, label) in enumerate(marks):
        parts.append(f'<line class="mark" x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}"/>')
        parts.append(f'<text class="marklab" x="{x(t) + 3:.1f}" y="{TOP + 10 + 12 * k}">{escape(label)}</text>')
    return parts


def _scales(times: Sequence[float], marks: Sequence[tuple[float, str]], peak: float) -> tuple[float, float]:
    """The x axis' end (seconds) and the y axis' top: whole-number steps (the charts count connections, packets)."""
    return max([1e-9, *times, *(t for t, _ in marks)]), TICKS * math.ceil(max(1.0, peak) / TICKS)


def line_chart(
    title: str,
    times: Sequence[float],
    series: Sequence[tuple[str, Sequence[float]]],
    marks: Sequence[tuple[float, str]] = (),
    y_label: str = "",
    x_label: str = X_LABEL,
) -> str:
    """One `<svg>` element: a polyline per named series over `times` (seconds), a legend, and each mark
    (an event) as a dotted vertical line with its label. Every text is escaped."""
    t_max, y_max = _scales(times, marks, max([0.0, *(v for _, values in series for v in values)]))
    parts, x, y = _frame(title, t_max, y_max, y_label, x_label)
    for k, (name, values) in enumerate(series):
        colour = COLOURS[k % len(COLOURS)]
        points = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in zip(times, values, strict=True))
        parts.append(
            f'<polyline class="series" data-name="{escape(name)}" fill="none" stroke="{colour}" '
            f'stroke-width="1.5" points="{points}"/>'
        )
        parts += _legend_entry(k, name)
    parts += _marks(marks, x)
    parts.append("</svg>")
    return "".join(parts)


def stacked_chart(
    title: str,
    times: Sequence[float],
    series: Sequence[tuple[str, Sequence[float]]],
    marks: Sequence[tuple[float, str]] = (),
    y_label: str = "",
    x_label: str = X_LABEL,
) -> str:
    """One `<svg>` element: the named series stacked as filled areas, the first at the bottom, so the top
    edge is their total at each time; a legend and the marks as line_chart draws them."""
    tops: list[list[float]] = []
    below = [0.0] * len(times)
    for _, values in series:
        below = [b + v for b, v in zip(below, values, strict=True)]
        tops.append(below)
    t_max, y_max = _scales(times, marks, max([0.0, *below]))
    parts, x, y = _frame(title, t_max, y_max, y_label, x_label)
    floor = [0.0] * len(times)
    for k, ((name, _), top) in enumerate(zip(series, tops, strict=True)):
        upper = [f"{x(t):.1f},{y(v):.1f}" for t, v in zip(times, top, strict=True)]
        lower = [f"{x(t):.1f},{y(v):.1f}" for t, v in zip(reversed(times), reversed(floor), strict=True)]
        parts.append(
            f'<polygon class="area" data-name="{escape(name)}" fill="{COLOURS[k % len(COLOURS)]}" '
            f'fill-opacity="0.85" stroke="none" points="{" ".join(upper + lower)}"/>'
        )
        parts += _legend_entry(k, name)
        floor = top
    parts += _marks(marks, x)
    parts.append("</svg>")
    return "".join(parts)
