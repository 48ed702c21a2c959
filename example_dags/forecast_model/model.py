"""Reference model container: train a linear trend on one product's demand history, forecast next month.

Reads its inputs from the environment, as ``airflow_ml_batch.fleet`` passes them:

- ``MODEL_ID``: the product line.
- ``MODEL_DATASET``: a CSV file (local path or ``s3://bucket/key``) with ``month,demand`` rows, oldest first.
- ``MODEL_PARAMETERS``: JSON; ``window`` (the last N months to fit, default all) and ``ridge`` (an L2
  penalty on the slope, default 0).

Prints progress lines and, last, one JSON line ``{"metrics": {...}, "forecast": ...}`` that the operators'
``collect_metrics`` picks up from the job's log. Standard library only (``boto3`` just for ``s3://``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Sequence


def read_history(location: str) -> list[float]:
    """Demand per month, oldest first, from a local CSV file or an ``s3://`` object."""
    if location.startswith("s3://"):
        import boto3

        bucket, _, key = location[len("s3://") :].partition("/")
        text = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    else:
        with open(location, encoding="utf-8") as handle:
            text = handle.read()
    return [float(row["demand"]) for row in csv.DictReader(io.StringIO(text))]


def fit(history: Sequence[float], ridge: float = 0.0) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)`` of demand over month number, with an L2 penalty on the slope."""
    n = len(history)
    if n == 0:
        raise ValueError("no history to train on")
    mean_x, mean_y = (n - 1) / 2, sum(history) / n
    sxx = sum((x - mean_x) ** 2 for x in range(n))
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(history))
    slope = sxy / (sxx + ridge) if sxx + ridge else 0.0
    return mean_y - slope * mean_x, slope


def mape(actual: Sequence[float], predicted: Sequence[float]) -> float | None:
    """Mean absolute percentage error over the months with non-zero demand."""
    pairs = [(a, p) for a, p in zip(actual, predicted, strict=True) if a]
    return sum(abs(a - p) / abs(a) for a, p in pairs) / len(pairs) if pairs else None


def run(model_id: str, history: Sequence[float], parameters: dict[str, float]) -> dict[str, object]:
    """Train on ``history`` and forecast the month after it; the result line the job prints."""
    window = int(parameters.get("window") or len(history))
    recent = list(history)[-window:]
    intercept, slope = fit(recent, float(parameters.get("ridge", 0.0)))
    fitted = [intercept + slope * x for x in range(len(recent))]
    forecast = max(0.0, intercept + slope * len(recent))
    error = mape(recent, fitted)
    return {
        "model_id": model_id,
        "forecast": round(forecast, 3),
        "metrics": {
            "mape": None if error is None else round(error, 6),
            "slope": round(slope, 6),
            "months": len(recent),
        },
    }


def main() -> int:
    model_id = os.environ.get("MODEL_ID", "unknown")
    dataset = os.environ.get("MODEL_DATASET")
    if not dataset:
        print("MODEL_DATASET is not set", file=sys.stderr)
        return 2
    parameters = json.loads(os.environ.get("MODEL_PARAMETERS") or "{}")
    history = read_history(dataset)
    print(f"{model_id}: training on {len(history)} months from {dataset}", flush=True)
    print(json.dumps(run(model_id, history, parameters), sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
