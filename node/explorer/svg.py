"""Server-drawn inline SVG charts (no JavaScript, no CDN). Every text is XML-escaped here."""

from __future__ import annotations

from datetime import UTC, datetime
from xml.sax.saxutils import escape

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf")


def _label(ms: int, span_ms: int) -> str:
    t = datetime.fromtimestamp(ms / 1000, UTC)
    return t.strftime("%H:%M:%S") if span_ms < 86_400_000 else t.strftime("%m-%d %H:%M")


def grouped_bars(series: dict[str, list[int]], edges: list[int], width: int = 860, height: int = 320) -> str:
    """One group of bars per time slice, one bar per hospital, with a y axis, x labels and a legend."""
    names = [n for n, v in series.items() if any(v)] or list(series)
    buckets = len(edges) - 1
    top = max((max(v) for v in series.values() if v), default=0) or 1
    left, right, up, down = 48, 150, 16, 40
    plot_w, plot_h = width - left - right, height - up - down
    group_w = plot_w / max(1, buckets)
    bar_w = max(1.0, (group_w - 6) / max(1, len(names)))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="events per hospital over time">',
             f'<rect x="{left}" y="{up}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ccc"/>']
    steps = min(4, top)  # whole-number ticks only: counts are integers
    for k in range(steps + 1):  # y grid and labels
        v = round(top * k / steps)
        y = up + plot_h - plot_h * v / top
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{v}</text>')
    parts.append(f'<text x="4" y="{up - 4}" font-size="11" fill="#555">events</text>')
    span = edges[-1] - edges[0] if edges else 0
    for b in range(buckets):
        x0 = left + b * group_w + 3
        for j, name in enumerate(names):
            count = series[name][b]
            if not count:
                continue
            h = plot_h * count / top
            parts.append(f'<rect x="{x0 + j * bar_w:.1f}" y="{up + plot_h - h:.1f}" width="{bar_w:.1f}" '
                         f'height="{h:.1f}" fill="{COLORS[j % len(COLORS)]}">'
                         f'<title>{escape(name)}: {count}</title></rect>')
        if b % max(1, buckets // 6) == 0:
            parts.append(f'<text x="{x0:.1f}" y="{up + plot_h + 16}" font-size="11">'
                         f'{escape(_label(edges[b], span))}</text>')
    parts.append(f'<text x="{left}" y="{height - 6}" font-size="11" fill="#555">event time (UTC)</text>')
    for j, name in enumerate(names):
        y = up + 14 + j * 18
        parts.append(f'<rect x="{left + plot_w + 14}" y="{y - 10}" width="12" height="12" '
                     f'fill="{COLORS[j % len(COLORS)]}"/>')
        parts.append(f'<text x="{left + plot_w + 32}" y="{y}" font-size="12">'
                     f'{escape(name)} ({sum(series[name])})</text>')
    parts.append("</svg>")
    return "".join(parts)
