"""Generated monthly sales history, one CSV file per model, for the reference model to train on.

Each product's demand has a level, a trend, a yearly season and noise drawn from its id, so the same id
always gets the same history (``month,demand`` rows, oldest first). A ``defect`` writes the bad
history a model job must fail on: ``"empty"`` (no months) or ``"malformed"`` (a month without a number).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

DEFECTS = ("empty", "malformed")


def sales_history(model_id: str, months: int = 36, last: tuple[int, int] = (2026, 11)) -> list[tuple[str, float]]:
    """``(YYYY-MM, demand)`` for the ``months`` months up to ``last`` (year, month), oldest first."""
    rng = random.Random(model_id)
    level = rng.uniform(50, 5000)
    trend = rng.uniform(-0.01, 0.03) * level
    season = rng.uniform(0.0, 0.3) * level
    noise = rng.uniform(0.02, 0.2)
    year, month = last
    rows = []
    for age in range(months - 1, -1, -1):
        index = year * 12 + month - 1 - age
        t = months - 1 - age
        demand = (level + trend * t + season * math.sin(2 * math.pi * (index % 12) / 12)) * rng.gauss(1, noise)
        rows.append((f"{index // 12:04d}-{index % 12 + 1:02d}", round(max(0.0, demand), 1)))
    return rows


def write_history(path: str | Path, model_id: str, defect: str | None = None, months: int = 36) -> Path:
    """Write ``model_id``'s history CSV to ``path`` (with ``defect``: one of ``DEFECTS``)."""
    if defect is not None and defect not in DEFECTS:
        raise ValueError(f"defect must be one of {DEFECTS}, not {defect!r}")
    rows = [] if defect == "empty" else [f"{month},{demand}" for month, demand in sales_history(model_id, months)]
    if defect == "malformed":
        rows[len(rows) // 2] = rows[len(rows) // 2].split(",")[0] + ",n/a"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(["month,demand", *rows]) + "\n", encoding="utf-8")
    return path
