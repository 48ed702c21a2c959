"""Write the example models file: 5 regions x 5 product groups x N products, one forecast model each.

    python example_dags/forecast_model/make_models.py --count 5000 > example_dags/forecast_model/models.json

Most models are expected to take 10 minutes; about one in twenty-five takes 90 (a long history or a
wide product line, on 4 vCPUs) and one in ten takes 30, drawn from a hash of the id so the file only
changes when ``--count`` does. Every model is tagged with its region and product group, which Batch
propagates to the job for cost attribution.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from typing import Any

REGIONS = ("amer", "apac", "emea", "latam", "mea")
PRODUCT_GROUPS = ("beverages", "dairy", "frozen", "household", "snacks")
DEFAULTS: dict[str, Any] = {
    "dataset": "s3://demand-forecast-data/history/{id}.csv",
    "parameters": {"window": 24, "ridge": 0.0},
    "resources": {"vcpus": 1, "memory": 2048},
    "expected_minutes": 10,
}


def model(region: str, group: str, number: int) -> dict[str, Any]:
    """One models-file entry; only what differs from :data:`DEFAULTS`."""
    model_id = f"{region}-{group}-{number:04d}"
    entry: dict[str, Any] = {"id": model_id, "tags": {"region": region, "product_group": group}}
    draw = int(hashlib.sha256(model_id.encode()).hexdigest()[:8], 16) % 100
    if draw < 4:
        entry.update(expected_minutes=90, resources={"vcpus": 4, "memory": 8192}, parameters={"window": 60})
    elif draw < 14:
        entry.update(expected_minutes=30, parameters={"ridge": 0.5})
    return entry


def models_document(count: int) -> dict[str, Any]:
    """``count`` models spread evenly over the regions and product groups, ordered by id."""
    entries: list[dict[str, Any]] = []
    number = 0
    while len(entries) < count:
        number += 1
        for region in REGIONS:
            for group in PRODUCT_GROUPS:
                if len(entries) < count:
                    entries.append(model(region, group, number))
    return {"defaults": DEFAULTS, "models": sorted(entries, key=lambda entry: entry["id"])}


def dumps(document: dict[str, Any]) -> str:
    """JSON with one model per line: a readable diff when the file changes."""
    lines = [json.dumps(entry, sort_keys=True) for entry in document["models"]]
    defaults = json.dumps(document["defaults"], sort_keys=True)
    return '{\n"defaults": ' + defaults + ',\n"models": [\n' + ",\n".join(lines) + "\n]\n}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=5000, help="number of models (default 5000)")
    parser.add_argument("--output", help="file to write (default: standard output)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    text = dumps(models_document(args.count))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
