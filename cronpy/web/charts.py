"""Charts as SVG markup rendered on the server: no JavaScript, no chart library, no inline style
(the pages' Content-Security-Policy forbids it). Colours come from classes in style.css.

Every piece of text placed in the markup goes through `escape`; numbers are formatted here.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Callable, Sequence

from markupsafe import Markup

from cronpy.durations import format_duration
from cronpy.models import RunRecord


def _dur(seconds: float) -> str:
    return format_duration(seconds)


def sparkline(values: Sequence[float], *, width: int = 96, height: int = 20) -> Markup:
    """Durations as a line scaled between 0 and their max, oldest on the left."""
    if len(values) < 2:
        return Markup("")
    hi = max(values) or 1.0
    step = (width - 2) / (len(values) - 1)
    points = " ".join(f"{1 + i * step:.1f},{height - 1 - v / hi * (height - 2):.1f}" for i, v in enumerate(values))
    label = f"durations of the last {len(values)} runs, longest {_dur(max(values))}"
    return Markup(
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img"'
        f' aria-label="{escape(label)}"><title>{escape(label)}</title>'
        f'<polyline points="{points}" fill="none" stroke-width="1.5"/></svg>')


#: Axis maxima for durations, in seconds: round in the unit a reader thinks in (1m30s, not 100s).
_AXIS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900, 1200,
         1800, 2700, 3600, 5400, 7200, 10800, 14400, 21600, 43200, 86400)


def _nice(hi: float) -> float:
    """A round axis maximum at or above `hi` seconds."""
    for top in _AXIS:
        if top >= hi:
            return float(top)
    return float(-(-hi // 86400) * 86400)


def durations_chart(runs: Sequence[RunRecord], fmt: Callable[[datetime], str], *,
                    width: int = 1100, height: int = 240) -> Markup:
    """Each finished run as a dot (x: start time, y: duration, colour: status), linked to its page."""
    pts = [(r, r.started_at, r.duration) for r in runs if r.duration is not None and r.started_at is not None]
    if not pts:
        return Markup('<p class="muted">No finished runs yet.</p>')
    left, right, top, bottom = 64, 12, 12, 28
    w, h = width - left - right, height - top - bottom
    t0, t1 = pts[0][1].timestamp(), pts[-1][1].timestamp()
    span = (t1 - t0) or 1.0
    ymax = _nice(max(d for _, _, d in pts))
    out = [f'<svg class="chart" width="100%" viewBox="0 0 {width} {height}" role="img"'
           f' aria-label="durations of the last {len(pts)} finished runs">']
    for frac in (0.0, 0.5, 1.0):
        y = top + h - frac * h
        out.append(f'<line class="grid" x1="{left}" x2="{left + w}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
                   f'{escape(_dur(ymax * frac) if frac else "0")}</text>')
    out.append(f'<text class="axis" x="{left}" y="{height - 8}">{escape(fmt(pts[0][1]))}</text>'
               f'<text class="axis" x="{left + w}" y="{height - 8}" text-anchor="end">{escape(fmt(pts[-1][1]))}</text>')
    line, dots = [], []
    for r, started, d in pts:
        x = left + ((started.timestamp() - t0) / span * w if len(pts) > 1 else w / 2)
        y = top + h - min(1.0, d / ymax) * h
        line.append(f"{x:.1f},{y:.1f}")
        tip = f"run {r.id}: {r.status.value}, {_dur(d)}, {fmt(started)}"
        dots.append(f'<a href="/runs/{r.id}"><circle class="dot s-{escape(r.status.value)}" cx="{x:.1f}"'
                    f' cy="{y:.1f}" r="3.5"><title>{escape(tip)}</title></circle></a>')
    out.append(f'<polyline class="trend" points="{" ".join(line)}" fill="none"/>')
    out += dots
    out.append("</svg>")
    return Markup("".join(out))


def rate_bar(failures: int, runs: int, *, width: int = 120, height: int = 10) -> Markup:
    """A horizontal bar: the failed share of a day's finished runs."""
    if not runs:
        return Markup(f'<svg class="bar" width="{width}" height="{height}" aria-hidden="true">'
                      f'<rect class="bar-empty" width="{width}" height="{height}" rx="2"/></svg>')
    bad = round(failures / runs * width)
    return Markup(f'<svg class="bar" width="{width}" height="{height}" aria-hidden="true">'
                  f'<rect class="bar-ok" width="{width}" height="{height}" rx="2"/>'
                  f'<rect class="bar-bad" width="{bad}" height="{height}" rx="2"/></svg>')


def daily_chart(days: Sequence[tuple[datetime, int, int]], *, width: int = 1100, height: int = 170) -> Markup:
    """Failure rate per day as columns (red: the failed share, its label above), one column per
    day with the day under it; a day without finished runs shows an empty slot."""
    if not days:
        return Markup("")
    left, right, top, bottom = 40, 8, 18, 34
    w, h = width - left - right, height - top - bottom
    slot = w / len(days)
    bar = min(44.0, slot * 0.6)
    out = [f'<svg class="chart" width="100%" viewBox="0 0 {width} {height}" role="img"'
           f' aria-label="failure rate by day over the last {len(days)} days">']
    for frac in (0.0, 0.5, 1.0):
        y = top + h - frac * h
        out.append(f'<line class="grid" x1="{left}" x2="{left + w}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{frac:.0%}</text>')
    for i, (day, runs, bad) in enumerate(days):
        x = left + i * slot + (slot - bar) / 2
        cx = x + bar / 2
        label = day.strftime("%a %d")
        if runs:
            rate = bad / runs
            bh = max(1.0 if bad else 0.0, rate * h)
            tip = f"{day:%Y-%m-%d}: {bad} of {runs} finished runs failed ({rate:.1%})"
            out.append(f'<g><title>{escape(tip)}</title>'
                       f'<rect class="bar-ok" x="{x:.1f}" y="{top}" width="{bar:.1f}" height="{h}" rx="2"/>'
                       f'<rect class="bar-bad" x="{x:.1f}" y="{top + h - bh:.1f}" width="{bar:.1f}"'
                       f' height="{bh:.1f}" rx="2"/></g>')
            if bad:
                out.append(f'<text class="axis" x="{cx:.1f}" y="{top + h - bh - 4:.1f}" text-anchor="middle">'
                           f'{rate:.0%}</text>')
        else:
            out.append(f'<rect class="bar-empty" x="{x:.1f}" y="{top}" width="{bar:.1f}" height="{h}" rx="2">'
                       f'<title>{day:%Y-%m-%d}: no finished runs</title></rect>')
        out.append(f'<text class="axis" x="{cx:.1f}" y="{height - 12}" text-anchor="middle">{escape(label)}</text>')
    out.append("</svg>")
    return Markup("".join(out))
