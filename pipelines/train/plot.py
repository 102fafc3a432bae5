"""A line chart as PNG bytes with PIL alone (training curves in job outputs; no plotting dependency)."""

from __future__ import annotations

import io

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def line_plot_png(x: list[float], series: dict[str, list[float]], title: str = "", xlabel: str = "",
                  size: tuple[int, int] = (640, 400)) -> bytes:
    """Each series against ``x`` on shared axes, with a legend and min/max ticks; returns PNG bytes."""
    from PIL import Image, ImageDraw

    if not x or not series:
        raise ValueError("line_plot_png needs at least one point and one series")
    w, h = size
    left, right, top, bottom = 60, 20, 30, 40
    im = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(im)
    values = [v for ys in series.values() for v in ys if v == v]
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1
    x0, x1 = min(x), max(x) if max(x) > min(x) else min(x) + 1

    def px(xv, yv):
        return (left + (xv - x0) / (x1 - x0) * (w - left - right),
                h - bottom - (yv - lo) / (hi - lo) * (h - top - bottom))

    draw.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        yv = lo + frac * (hi - lo)
        _, yy = px(x0, yv)
        draw.line([left - 4, yy, left, yy], fill=(0, 0, 0))
        draw.text((4, yy - 6), f"{yv:.3g}", fill=(0, 0, 0))
    for xv in (x0, (x0 + x1) / 2, x1):
        xx, _ = px(xv, lo)
        draw.line([xx, h - bottom, xx, h - bottom + 4], fill=(0, 0, 0))
        draw.text((xx - 10, h - bottom + 6), f"{xv:.0f}", fill=(0, 0, 0))
    draw.text((left, 8), title, fill=(0, 0, 0))
    draw.text((w // 2 - 10, h - 16), xlabel, fill=(0, 0, 0))
    for i, (name, ys) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        points = [px(a, b) for a, b in zip(x, ys) if b == b]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        draw.line([w - right - 120, top + 12 + 14 * i, w - right - 100, top + 12 + 14 * i], fill=colour, width=2)
        draw.text((w - right - 95, top + 6 + 14 * i), name, fill=(0, 0, 0))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
