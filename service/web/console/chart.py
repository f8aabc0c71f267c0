"""The overview's spend chart: one bar per UTC day of the last 30 (days without spend included, at
zero), a value axis from 0 to the largest day, dates under the bars and each day's value; plain
SVG numbers for the template, no script."""
from __future__ import annotations

import datetime as dt

DAYS = 30
BAR, LEFT, TOP, HEIGHT = 24, 56, 16, 120  # a bar's slot, the axis's margin, room for values, the plot


def days(by_day: list[dict], today: dt.date) -> list[dict]:
    """Every day from 29 days before `today` to `today`, with its spend in micro-credits (0 when
    the ledger has no charge that day)."""
    spent = {str(d["day"])[:10]: round(d["cost"] * 1_000_000) for d in by_day}
    first = today - dt.timedelta(days=DAYS - 1)
    return [{"day": (first + dt.timedelta(days=i)).isoformat(),
             "micro": spent.get((first + dt.timedelta(days=i)).isoformat(), 0)} for i in range(DAYS)]


def bars(series: list[dict], credits) -> dict:
    """Geometry for the template: the box, the axis's top value and each bar with its height,
    its date label (every fifth day and the last) and its value (days with spend)."""
    top = max([d["micro"] for d in series] + [0])
    scale = HEIGHT / top if top else 0
    out = []
    for i, d in enumerate(series):
        height = round(d["micro"] * scale, 2)
        out.append({"x": LEFT + i * BAR + 3, "y": TOP + HEIGHT - height, "h": height, "day": d["day"],
                    "label": d["day"][5:] if i % 5 == 0 or i == len(series) - 1 else "",
                    "value": credits(d["micro"]) if d["micro"] else "", "cost": credits(d["micro"])})
    return {"width": LEFT + len(series) * BAR + 8, "height": TOP + HEIGHT + 28, "left": LEFT, "top": TOP,
            "bottom": TOP + HEIGHT, "max": credits(top), "bars": out, "bar": BAR - 6}
