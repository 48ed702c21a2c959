"""Provider discovery: Airflow finds the package through its entry point, cheaply and correctly."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import airflow
import jsonschema

import airflow_ml_batch
from airflow_ml_batch.provider_info import get_provider_info


def test_provider_info_imports_nothing_from_airflow() -> None:
    code = (
        "import sys, json\n"
        "from airflow_ml_batch.provider_info import get_provider_info\n"
        "get_provider_info()\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('airflow', 'botocore', 'boto3', 'aiobotocore'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert json.loads(result.stdout) == []


def test_entry_point_points_at_get_provider_info() -> None:
    (entry_point,) = [
        ep
        for ep in entry_points(group="apache_airflow_provider")
        if ep.name == "provider_info" and ep.value.startswith("airflow_ml_batch.")
    ]

    assert entry_point.load() is get_provider_info


def test_provider_info_matches_airflows_schema() -> None:
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    info = get_provider_info()

    jsonschema.validate(info, schema)
    assert info["package-name"] == "airflow-ml-batch"
    assert info["versions"][0] == airflow_ml_batch.__version__


def test_every_listed_module_and_class_imports() -> None:
    info = get_provider_info()
    modules = [
        m for section in ("hooks", "operators", "triggers") for e in info.get(section, []) for m in e["python-modules"]
    ]
    integrations = {i["integration-name"] for i in info["integrations"]}

    assert "airflow_ml_batch.hooks.batch" in modules
    assert "airflow_ml_batch.hooks.ecs" in modules
    for module in modules:
        importlib.import_module(module)
    for link in info.get("extra-links", []):
        module, _, name = link.rpartition(".")
        assert hasattr(importlib.import_module(module), name), link
    for section in ("hooks", "operators", "triggers"):
        assert {e["integration-name"] for e in info.get(section, [])} <= integrations


def test_providers_manager_discovers_the_package() -> None:
    from airflow.providers_manager import ProvidersManager

    provider = ProvidersManager().providers["airflow-ml-batch"]

    assert provider.version == airflow_ml_batch.__version__


def test_airflow_providers_list_shows_the_package() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "--output", "json"],
        capture_output=True,
        text=True,
        check=True,
    )

    listed = next(json.loads(line) for line in result.stdout.splitlines() if line.startswith("[{"))
    assert {"package_name": "airflow-ml-batch", "version": airflow_ml_batch.__version__}.items() <= next(
        p for p in listed if p["package_name"] == "airflow-ml-batch"
    ).items()
