"""Check a built wheel's file list and metadata: the product, its entry point, none of the repository's tools.

Usage: python scripts/check_wheel.py dist/airflow_ml_batch-X-py3-none-any.whl
"""

from __future__ import annotations

import sys
import zipfile
from email.parser import Parser

#: Modules a user imports or Airflow loads: each must be in the wheel.
REQUIRED = [
    "airflow_ml_batch/__init__.py",
    "airflow_ml_batch/py.typed",
    "airflow_ml_batch/provider_info.py",
    "airflow_ml_batch/fleet.py",
    "airflow_ml_batch/report.py",
    *(
        f"airflow_ml_batch/{kind}/{service}.py"
        for kind in ("hooks", "operators", "triggers")
        for service in ("batch", "ecs")
    ),
    "airflow_ml_batch/report_html.py",
    *(f"airflow_ml_batch/operators/{name}.py" for name in ("base", "group", "report")),
    *(
        f"airflow_ml_batch/triggers/{name}.py"
        for name in ("group", "submission", "start", "poller", "logs", "task_state")
    ),
    *(f"airflow_ml_batch/links/{name}.py" for name in ("batch", "ecs", "logs", "report")),
    *(f"airflow_ml_batch/jobs/{name}.py" for name in ("groups", "logs", "pacing", "outcomes")),
    "airflow_ml_batch/testing/moto_server.py",
]
#: What never ships: the repository's top-level folders, and its development tools inside the package (an
#: AWS-shaped endpoint that starts processes, the local Airflow launcher, the demo's sales generator).
NEVER = (
    "tests/",
    "benchmarks/",
    "scripts/",
    "docs/",
    "example_dags/",
    "constraints/",
    "airflow_ml_batch/testing/endpoint/",
    "airflow_ml_batch/testing/local_airflow.py",
    "airflow_ml_batch/testing/sales.py",
)


def main(path: str) -> int:
    with zipfile.ZipFile(path) as wheel:
        names = wheel.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(wheel.read(info).decode())
        entry_points = wheel.read(info.replace("METADATA", "entry_points.txt")).decode()
    problems = [f"missing {name}" for name in REQUIRED if name not in names]
    problems += [f"ships {name}" for name in names if name.startswith(NEVER)]
    if "provider_info = airflow_ml_batch.provider_info:get_provider_info" not in entry_points:
        problems.append("no apache_airflow_provider entry point")
    if metadata["Name"] != "airflow-ml-batch" or not metadata.get_payload().strip():
        problems.append("metadata: wrong name or no long description")
    for problem in problems:
        print(f"{path}: {problem}")
    print(f"{path}: {len(names)} files, version {metadata['Version']}: {'FAILED' if problems else 'ok'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
