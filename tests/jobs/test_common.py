"""The pure functions of :mod:`airflow_ml_batch.jobs.common`: the metrics a job logs."""

from __future__ import annotations

from airflow_ml_batch.jobs.common import metrics_from_log


def test_the_metrics_are_the_last_json_line_with_a_metrics_mapping() -> None:
    lines = [
        '{"metrics": {"mape": 0.5}}',
        "training",
        '  {"metrics": {"mape": 0.25, "rows": 36}}  ',
        '{"metrics": "not a mapping"}',
        '["metrics"]',
        '{"metrics": {"mape": 0.1}',  # cut off: not JSON
        "done",
    ]

    assert metrics_from_log(lines) == {"mape": 0.25, "rows": 36}
    assert metrics_from_log(["training", "done"]) is None
    assert metrics_from_log([]) is None
