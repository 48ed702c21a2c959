"""The reference model container's script, as plain Python."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "example_dags" / "forecast_model" / "model.py"
spec = importlib.util.spec_from_file_location("forecast_model", SCRIPT)
assert spec is not None
assert spec.loader is not None
model = importlib.util.module_from_spec(spec)
spec.loader.exec_module(model)


def test_a_straight_line_is_fitted_exactly_and_extended() -> None:
    result = model.run("widgets", [100, 110, 120, 130], {})

    assert result["forecast"] == 140
    assert result["metrics"] == {"mape": 0.0, "slope": 10.0, "months": 4}


def test_window_and_ridge_parameters() -> None:
    history = [500, 500, 100, 110, 120]

    assert model.run("x", history, {"window": 3})["forecast"] == 130
    damped = model.run("x", history, {"window": 3, "ridge": 2})["metrics"]["slope"]
    assert 0 < damped < 10


def test_forecasts_are_never_negative_and_empty_history_is_an_error() -> None:
    assert model.run("x", [30, 20, 10], {})["forecast"] == 0
    with pytest.raises(ValueError, match="no history"):
        model.fit([])


def test_the_script_prints_the_metrics_line_last(tmp_path: Path) -> None:
    dataset = tmp_path / "history.csv"
    dataset.write_text("month,demand\n2026-08,10\n2026-09,12\n2026-10,14\n")
    env = {"MODEL_ID": "emea-0001", "MODEL_DATASET": str(dataset), "MODEL_PARAMETERS": "{}"}

    output = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, check=True)

    last = json.loads(output.stdout.splitlines()[-1])
    assert last == {"forecast": 16.0, "metrics": {"mape": 0.0, "months": 3, "slope": 2.0}, "model_id": "emea-0001"}
