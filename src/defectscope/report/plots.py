"""Inline SVG charts for the HTML report: curves and score histograms.

Charts are SVG text, drawn without a plotting library, so a report embeds
them directly and needs no extra install. Coordinates are in data units
mapped onto a fixed plot box.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

import numpy as np

WIDTH = 360
HEIGHT = 300
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 12, 28, 40
SERIES_COLOURS = ("#1f5fbf", "#d9480f", "#2b8a3e", "#862e9c")
NORMAL_COLOUR = "#2b8a3e"
ANOMALOUS_COLOUR = "#c92a2a"


@dataclass
class Series:
    """One curve: x and y values of equal length, in data units, and its legend label."""

    x: np.ndarray
    y: np.ndarray
    label: str


def subsample_curve(x: np.ndarray, y: np.ndarray, max_points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Keep at most ``max_points`` points of a curve, always including its first and last point.

    Points are taken at evenly spaced indices, so a long pixel-level curve
    draws in a few kilobytes while keeping its shape.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) <= max_points:
        return x, y
    indices = np.unique(np.linspace(0, len(x) - 1, max_points).round().astype(int))
    return x[indices], y[indices]


class _Frame:
    """Maps data coordinates to SVG pixels inside the plot box."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float]) -> None:
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        self.inner_width = WIDTH - _LEFT - _RIGHT
        self.inner_height = HEIGHT - _TOP - _BOTTOM

    def x(self, value: float) -> float:
        span = (self.x1 - self.x0) or 1.0
        return _LEFT + (value - self.x0) / span * self.inner_width

    def y(self, value: float) -> float:
        span = (self.y1 - self.y0) or 1.0
        return _TOP + self.inner_height - (value - self.y0) / span * self.inner_height


def _axes(frame: _Frame, title: str, x_label: str, y_label: str, x_ticks: list[float], y_ticks: list[float]) -> list[str]:
    """Draw the plot box, ticks, tick labels, axis labels and title."""
    parts = [
        f'<rect x="{_LEFT}" y="{_TOP}" width="{frame.inner_width}" height="{frame.inner_height}" fill="#fff" stroke="#444"/>',
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
        f'<text x="{_LEFT + frame.inner_width / 2}" y="{HEIGHT - 6}" text-anchor="middle">{escape(x_label)}</text>',
        f'<text x="12" y="{_TOP + frame.inner_height / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {_TOP + frame.inner_height / 2})">{escape(y_label)}</text>',
    ]
    for value in x_ticks:
        x = frame.x(value)
        parts.append(f'<line x1="{x:.1f}" y1="{_TOP + frame.inner_height}" x2="{x:.1f}" y2="{_TOP + frame.inner_height + 4}" stroke="#444"/>')
        parts.append(f'<text x="{x:.1f}" y="{_TOP + frame.inner_height + 16}" text-anchor="middle">{_tick_label(value)}</text>')
    for value in y_ticks:
        y = frame.y(value)
        parts.append(f'<line x1="{_LEFT - 4}" y1="{y:.1f}" x2="{_LEFT}" y2="{y:.1f}" stroke="#444"/>')
        parts.append(f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_tick_label(value)}</text>')
    return parts


def _tick_label(value: float) -> str:
    return f"{value:.3g}"


def _svg(parts: list[str], description: str) -> str:
    body = "\n".join(parts)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'font-family="sans-serif" font-size="11" role="img" aria-label="{escape(description)}">\n{body}\n</svg>'
    )


def _legend(labels: list[tuple[str, str]], frame: _Frame, corner: str) -> list[str]:
    """Draw legend entries (label, colour) in the plot's ``corner`` ("bottom-right" or "top-right")."""
    parts = []
    right = _LEFT + frame.inner_width - 6
    line_height = 14
    top = _TOP + 8 if corner == "top-right" else _TOP + frame.inner_height - 6 - line_height * len(labels)
    for row, (label, colour) in enumerate(labels):
        y = top + row * line_height + 8
        parts.append(f'<line x1="{right - 16}" y1="{y - 4}" x2="{right - 2}" y2="{y - 4}" stroke="{colour}" stroke-width="3"/>')
        parts.append(f'<text x="{right - 20}" y="{y}" text-anchor="end">{escape(label)}</text>')
    return parts


def curve_svg(series: list[Series], title: str, x_label: str, y_label: str, diagonal: bool = False, legend_corner: str = "bottom-right") -> str:
    """Draw curves on the unit square, e.g. ROC (``diagonal=True`` adds the chance line) or precision-recall.

    Each series' values must lie in [0, 1]; NaN points are dropped. Returns
    an ``<svg>`` element as text.
    """
    frame = _Frame((0.0, 1.0), (0.0, 1.0))
    ticks = [0.0, 0.25, 0.5, 0.75, 1.0]
    parts = _axes(frame, title, x_label, y_label, ticks, ticks)
    if diagonal:
        parts.append(f'<line x1="{frame.x(0)}" y1="{frame.y(0)}" x2="{frame.x(1)}" y2="{frame.y(1)}" stroke="#aaa" stroke-dasharray="4 3"/>')

    legend = []
    for index, item in enumerate(series):
        colour = SERIES_COLOURS[index % len(SERIES_COLOURS)]
        keep = np.isfinite(item.x) & np.isfinite(item.y)
        if not keep.any():
            continue
        points = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in zip(item.x[keep], item.y[keep]))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        legend.append((item.label, colour))
    parts.extend(_legend(legend, frame, legend_corner))
    return _svg(parts, title)


def histogram_svg(
    normal_scores: np.ndarray,
    anomalous_scores: np.ndarray,
    threshold: float | None,
    title: str,
    x_label: str,
    bins: int = 30,
    upper_quantile: float = 0.95,
) -> str:
    """Draw overlaid histograms of normal and anomalous image scores with a dashed threshold line.

    Both histograms share bins from the lowest score to the larger of the
    threshold and the ``upper_quantile`` of all scores, so a few very high
    scores do not squash the rest. Scores above that range are counted in
    the last bin, whose lower edge the x label names. Bar heights are image counts.
    Returns an ``<svg>`` element as text.
    """
    normal_scores = np.asarray(normal_scores, dtype=np.float64)
    anomalous_scores = np.asarray(anomalous_scores, dtype=np.float64)
    scores = np.concatenate([normal_scores, anomalous_scores])
    range_values = [float(scores.min()), float(np.quantile(scores, upper_quantile))] if scores.size else [0.0, 1.0]
    if threshold is not None:
        range_values.append(float(threshold))
    low = min(range_values)
    high = max(range_values[1:])
    if high <= low:
        low, high = low - 0.5, high + 0.5
    if scores.size and scores.max() > high:
        # Widen by one bin so the overflow bin sits right of the range, then clip the overflow into it.
        high += (high - low) / (bins - 1)
        x_label = f"{x_label} (last bin: all above {high - (high - low) / bins:.4g})"
    edges = np.linspace(low, high, bins + 1)
    normal_counts, _ = np.histogram(np.minimum(normal_scores, high), edges)
    anomalous_counts, _ = np.histogram(np.minimum(anomalous_scores, high), edges)
    top = max(1, int(max(normal_counts.max(initial=0), anomalous_counts.max(initial=0))))

    frame = _Frame((low, high), (0.0, float(top)))
    x_ticks = list(np.linspace(low, high, 5))
    y_ticks = sorted({round(v) for v in np.linspace(0, top, min(top, 4) + 1)})
    parts = _axes(frame, title, x_label, "images", x_ticks, [float(v) for v in y_ticks])
    for counts, colour in ((normal_counts, NORMAL_COLOUR), (anomalous_counts, ANOMALOUS_COLOUR)):
        for left, right, count in zip(edges[:-1], edges[1:], counts):
            if count == 0:
                continue
            x, y = frame.x(left), frame.y(count)
            width = max(frame.x(right) - x - 0.5, 0.5)
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{frame.y(0) - y:.1f}" fill="{colour}" fill-opacity="0.55"/>')

    legend = [(f"normal ({normal_scores.size})", NORMAL_COLOUR), (f"anomalous ({anomalous_scores.size})", ANOMALOUS_COLOUR)]
    if threshold is not None:
        x = frame.x(threshold)
        parts.append(f'<line x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{frame.y(0):.1f}" stroke="#000" stroke-width="2" stroke-dasharray="6 3"/>')
        legend.append(("threshold", "#000"))
    parts.extend(_legend(legend, frame, "top-right"))
    return _svg(parts, title)
