"""The dashboard's charts, drawn on the server as inline SVG: nothing to load, nothing that needs JavaScript.

Each function takes plain numbers (as the result mapping serves them) and returns markup whose every piece
of text went through ``markupsafe.escape``: candidate names are user input. Colours come from classes
(``s0``…``s7``, ``raw``, ``after``) styled in static/style.css, so the charts follow the page's palette.

- `gamma_histogram`: |γ| on the engine's fixed bins (bnrank/engine/gamma.py), one phase over another, as the
  share of channels per bin so networks of different widths compare; one per candidate, side by side, is
  thesis Fig. 3.2.
- `curves`: validation score against step, one polyline per candidate.
- `clipping`: Dice against the share of γ clipped, by threshold and at random with its spread (Fig. 3.1).
- `grouped_bars`: a value per group and series (alchemy's Dice per fold: scratch / fine-tune / alchemy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

PALETTE_SIZE = 8


@dataclass(frozen=True)
class Box:
    """The plot area inside an SVG of ``width`` × ``height``, margins for the axes' labels."""

    width: int
    height: int
    left: int = 40
    right: int = 10
    top: int = 12
    bottom: int = 26

    @property
    def inner_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def inner_h(self) -> float:
        return self.height - self.top - self.bottom

    def x(self, value: float, lo: float, hi: float) -> float:
        return self.left + (value - lo) / ((hi - lo) or 1.0) * self.inner_w

    def y(self, value: float, lo: float, hi: float) -> float:
        return self.top + self.inner_h - (value - lo) / ((hi - lo) or 1.0) * self.inner_h


def _num(value: float) -> str:
    return f"{value:.1f}"


def _open(box: Box, css: str, label: str) -> str:
    return (
        f'<svg class="chart {css}" viewBox="0 0 {box.width} {box.height}" width="{box.width}" height="{box.height}" '
        f'role="img" aria-label="{escape(label)}"><title>{escape(label)}</title>'
    )


def _axes(box: Box, xlo: float, xhi: float, ylo: float, yhi: float, xticks: Sequence[float], xfmt: str) -> str:
    """The two axes with a few ticks; y ticks at the ends and the middle."""
    parts = [
        f'<line class="axis" x1="{box.left}" y1="{_num(box.top + box.inner_h)}" '
        f'x2="{_num(box.left + box.inner_w)}" y2="{_num(box.top + box.inner_h)}"/>',
        f'<line class="axis" x1="{box.left}" y1="{box.top}" x2="{box.left}" y2="{_num(box.top + box.inner_h)}"/>',
    ]
    for t in xticks:
        x = box.x(t, xlo, xhi)
        parts.append(
            f'<text class="tick" x="{_num(x)}" y="{box.height - 8}" text-anchor="middle">{format(t, xfmt)}</text>'
        )
    span = abs(yhi - ylo) or 1.0
    digits = max(2, 1 - math.floor(math.log10(span / 2)))  # enough decimals that the three ticks differ
    for t in (ylo, (ylo + yhi) / 2, yhi):
        y = box.y(t, ylo, yhi)
        parts.append(
            f'<text class="tick" x="{box.left - 4}" y="{_num(y + 3)}" text-anchor="end">{t:.{digits}f}</text>'
        )
    return "".join(parts)


def gamma_histogram(
    phases: Sequence[tuple[str, Sequence[int]]],
    edges: Sequence[float | None],
    threshold: float | None = None,
    label: str = "γ histogram",
    width: int = 300,
    height: int = 130,
) -> Markup:
    """Share of channels per |γ| bin, one translucent bar set per phase (first drawn first); last bin: ≥ 2."""
    box = Box(width, height)
    shares = []
    for phase, counts in phases:
        total = sum(counts) or 1
        shares.append((phase, [c / total for c in counts]))
    bins = max((len(s) for _, s in shares), default=0)
    top = max((max(s) for _, s in shares if s), default=0.0) or 1.0
    xhi = float(bins) or 1.0
    parts = [_open(box, "gamma-histogram", label)]
    for phase, values in shares:
        for i, v in enumerate(values):
            if v <= 0:
                continue
            x0, x1 = box.x(i, 0, xhi), box.x(i + 1, 0, xhi)
            y = box.y(v, 0, top)
            w = max(x1 - x0 - 0.5, 0.5)
            parts.append(
                f'<rect class="bar {escape(phase)}" x="{_num(x0)}" y="{_num(y)}" width="{_num(w)}" '
                f'height="{_num(box.top + box.inner_h - y)}"><title>{escape(phase)}: {v:.1%} of channels in '
                f"[{_edge(edges, i)}, {_edge(edges, i + 1)})</title></rect>"
            )
    if threshold is not None and len(edges) > 1 and edges[1]:
        x = box.x(threshold / float(edges[1]), 0, xhi)  # bins are equal up to the overflow bin
        parts.append(
            f'<line class="threshold" x1="{_num(x)}" y1="{box.top}" x2="{_num(x)}" y2="{_num(box.top + box.inner_h)}">'
            f"<title>threshold {threshold:g}</title></line>"
        )
    ticks = [i for i in range(0, bins + 1, 10)] if bins else []
    parts.append(_axes(box, 0, xhi, 0, top, [], ""))
    for t in ticks:
        parts.append(
            f'<text class="tick" x="{_num(box.x(t, 0, xhi))}" y="{height - 8}" text-anchor="middle">'
            f"{_edge(edges, t)}</text>"
        )
    parts.append(_legend(box, [p for p, _ in shares], classes=[p for p, _ in shares]))
    parts.append("</svg>")
    return Markup("".join(parts))


def _edge(edges: Sequence[float | None], i: int) -> str:
    if i >= len(edges) or edges[i] is None:
        return "∞"
    return f"{edges[i]:g}"


def _legend(box: Box, labels: Sequence[str], classes: Sequence[str]) -> str:
    parts = []
    for i, (text, css) in enumerate(zip(labels, classes, strict=True)):
        y = box.top + 10 + 12 * i
        x = box.left + box.inner_w - 4
        parts.append(
            f'<rect class="key {escape(css)}" x="{_num(x - 8)}" y="{_num(y - 7)}" width="8" height="8"/>'
            f'<text class="legend" x="{_num(x - 11)}" y="{_num(y)}" text-anchor="end">{escape(text)}</text>'
        )
    return "".join(parts)


def curves(
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    label: str = "validation curves",
    width: int = 560,
    height: int = 220,
) -> Markup:
    """One polyline (with a dot per validation) per series of (step, score); series with no point are left out."""
    box = Box(width, height, right=170)
    drawn = [(name, list(points)) for name, points in series if points]
    xs = [p[0] for _, pts in drawn for p in pts] or [0.0, 1.0]
    ys = [p[1] for _, pts in drawn for p in pts] or [0.0, 1.0]
    xlo, xhi = 0.0, max(xs) or 1.0
    ylo, yhi = min(ys), max(ys)
    pad = (yhi - ylo) * 0.1 or 0.05
    ylo, yhi = max(0.0, ylo - pad), min(1.0, yhi + pad) if yhi <= 1.0 else yhi + pad
    parts = [_open(box, "curves", label), _axes(box, xlo, xhi, ylo, yhi, _ticks(xlo, xhi), ".0f")]
    for i, (name, points) in enumerate(drawn):
        css = f"s{i % PALETTE_SIZE}"
        coords = " ".join(f"{_num(box.x(x, xlo, xhi))},{_num(box.y(y, ylo, yhi))}" for x, y in points)
        parts.append(f'<polyline class="line {css}" points="{coords}"><title>{escape(name)}</title></polyline>')
        for x, y in points:
            parts.append(
                f'<circle class="dot {css}" cx="{_num(box.x(x, xlo, xhi))}" cy="{_num(box.y(y, ylo, yhi))}" r="2">'
                f"<title>{escape(name)}: step {x:.0f}, {y:.4f}</title></circle>"
            )
        ly = box.top + 10 + 14 * i
        lx = box.left + box.inner_w + 10
        parts.append(
            f'<line class="line {css}" x1="{_num(lx)}" y1="{_num(ly - 4)}" x2="{_num(lx + 14)}" y2="{_num(ly - 4)}"/>'
            f'<text class="legend" x="{_num(lx + 18)}" y="{_num(ly)}">{escape(_short(name))}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _short(text: str, n: int = 24) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


@dataclass(frozen=True)
class ClipPoint:
    """One threshold of the probe: share of γ clipped, Dice clipped by |γ|, Dice clipped at random ± std."""

    share: float
    dice_threshold: float
    dice_random: float
    dice_random_std: float


def clipping(
    points: Sequence[ClipPoint], unclipped: float | None, label: str = "γ clipping", width: int = 420, height: int = 220
) -> Markup:
    """Fig. 3.1: Dice as more γ are zeroed, smallest |γ| first vs as many at random (bars: ± one std)."""
    box = Box(width, height, right=130)
    pts = sorted(points, key=lambda p: p.share)
    ys = [p.dice_threshold for p in pts] + [p.dice_random + p.dice_random_std for p in pts]
    ys += [max(0.0, p.dice_random - p.dice_random_std) for p in pts]
    if unclipped is not None:
        ys.append(unclipped)
    ylo, yhi = 0.0, max(ys or [1.0]) * 1.05 or 1.0
    xhi = max([p.share for p in pts] or [1.0]) or 1.0
    parts = [_open(box, "clipping", label), _axes(box, 0.0, xhi, ylo, yhi, _ticks(0.0, xhi), ".0%")]
    if unclipped is not None:
        y = box.y(unclipped, ylo, yhi)
        parts.append(
            f'<line class="baseline" x1="{box.left}" y1="{_num(y)}" x2="{_num(box.left + box.inner_w)}" y2="{_num(y)}">'
            f"<title>nothing clipped: {unclipped:.4f}</title></line>"
        )
    for css, get in (("s0", lambda p: p.dice_threshold), ("s1", lambda p: p.dice_random)):
        coords = " ".join(f"{_num(box.x(p.share, 0, xhi))},{_num(box.y(get(p), ylo, yhi))}" for p in pts)
        parts.append(f'<polyline class="line {css}" points="{coords}"/>')
    for p in pts:
        x = box.x(p.share, 0, xhi)
        lo = box.y(max(0.0, p.dice_random - p.dice_random_std), ylo, yhi)
        hi = box.y(p.dice_random + p.dice_random_std, ylo, yhi)
        parts.append(
            f'<line class="errorbar s1" x1="{_num(x)}" y1="{_num(lo)}" x2="{_num(x)}" y2="{_num(hi)}"/>'
            f'<circle class="dot s0" cx="{_num(x)}" cy="{_num(box.y(p.dice_threshold, ylo, yhi))}" r="2.5">'
            f"<title>{p.share:.1%} clipped by |γ|: Dice {p.dice_threshold:.4f}</title></circle>"
            f'<circle class="dot s1" cx="{_num(x)}" cy="{_num(box.y(p.dice_random, ylo, yhi))}" r="2.5">'
            f"<title>{p.share:.1%} clipped at random: Dice {p.dice_random:.4f} ± {p.dice_random_std:.4f}"
            "</title></circle>"
        )
    parts.append(_legend(Box(width, height, right=10), ["smallest |γ|", "random ± std"], ["s0", "s1"]))
    parts.append("</svg>")
    return Markup("".join(parts))


def grouped_bars(
    groups: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    label: str = "Dice per fold",
    width: int = 420,
    height: int = 200,
) -> Markup:
    """One bar per series within each group (missing values leave a gap); y from 0 to the largest value."""
    box = Box(width, height, right=110)
    values = [v for _, vs in series for v in vs if v is not None]
    yhi = max(values or [1.0]) * 1.05 or 1.0
    n_groups, n_series = max(len(groups), 1), max(len(series), 1)
    parts = [_open(box, "bars", label), _axes(box, 0, n_groups, 0, yhi, [], "")]
    slot = box.inner_w / n_groups
    bar = slot * 0.8 / n_series
    for g, name in enumerate(groups):
        parts.append(
            f'<text class="tick" x="{_num(box.left + slot * (g + 0.5))}" y="{height - 8}" text-anchor="middle">'
            f"{escape(name)}</text>"
        )
        for s, (series_name, vs) in enumerate(series):
            v = vs[g] if g < len(vs) else None
            if v is None:
                continue
            x = box.left + slot * g + slot * 0.1 + bar * s
            y = box.y(v, 0, yhi)
            parts.append(
                f'<rect class="bar s{s % PALETTE_SIZE}" x="{_num(x)}" y="{_num(y)}" width="{_num(bar - 1)}" '
                f'height="{_num(box.top + box.inner_h - y)}"><title>{escape(series_name)}, {escape(name)}: {v:.4f}'
                "</title></rect>"
            )
    parts.append(
        _legend(Box(width, height, right=10), [n for n, _ in series], [f"s{i}" for i in range(len(series))])
    )
    parts.append("</svg>")
    return Markup("".join(parts))
