"""Model fleets as data: load a models file, validate it, and expand it into mapped tasks.

A models file (JSON or YAML) has a ``defaults`` mapping and a ``models`` list::

    defaults:
      dataset: s3://forecasts/history/{id}.parquet
      resources: {vcpus: 1, memory: 2048}
      expected_minutes: 10
    models:
      - id: emea-beverages-0001
        parameters: {alpha: 0.1}
        expected_minutes: 90
        tags: {region: emea}

A model's keys override ``defaults``; mapping-valued keys (``parameters``, ``resources``, ``tags``)
are merged key by key. ``{id}`` in ``dataset`` is replaced by the model's id.

``batch_kwargs()`` and ``ecs_kwargs()`` turn a fleet into the list that
``BatchJobOperator.partial(...).expand_kwargs(...)`` or ``EcsTaskOperator.partial(...).expand_kwargs(...)``
takes: one entry per model, the longest expected jobs first (Airflow schedules mapped task instances
of equal priority by map index), in an order that only changes when the file does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_ml_batch.jobs.common import tag_problem
from airflow_ml_batch.jobs.groups import entries_label, xcom_reference

_MODEL_KEYS = {"id", "parameters", "dataset", "resources", "expected_minutes", "tags"}
_MERGED_KEYS = ("parameters", "resources", "tags")
_RESOURCE_KEYS = {"vcpus", "memory", "gpus", "cpu"}


class ModelsFileError(ValueError):
    """A models file that cannot be used; the message names the file, the entry and the field."""


@dataclass(frozen=True)
class Model:
    """One model of a fleet, with the file's defaults applied."""

    id: str
    parameters: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    resources: dict[str, float] = field(default_factory=dict)
    expected_minutes: float = 0.0
    tags: dict[str, str] = field(default_factory=dict)


def load_models(path: str | Path) -> list[Model]:
    """Read and validate a models file (``.json``, ``.yaml`` or ``.yml``); raise :class:`ModelsFileError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ModelsFileError(f"{path}: cannot be read: {error.strerror or error}") from error
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            document = yaml.safe_load(text)
        else:
            document = json.loads(text)
    except Exception as error:
        raise ModelsFileError(f"{path}: not valid {path.suffix.lstrip('.').upper() or 'JSON'}: {error}") from error
    return parse_models(document, source=str(path))


def parse_models(document: Any, source: str = "<models>") -> list[Model]:
    """Validate an already parsed models document; ``source`` names it in error messages."""
    if not isinstance(document, Mapping):
        raise ModelsFileError(f"{source}: must be a mapping with 'defaults' and 'models'")
    unknown = set(document) - {"defaults", "models"}
    if unknown:
        raise ModelsFileError(f"{source}: unknown top-level keys {sorted(unknown)}; expected 'defaults' and 'models'")
    defaults = document.get("defaults")
    defaults = {} if defaults is None else defaults
    if not isinstance(defaults, Mapping):
        raise ModelsFileError(f"{source}: 'defaults' must be a mapping")
    entries = document.get("models")
    if not isinstance(entries, list) or not entries:
        raise ModelsFileError(f"{source}: 'models' must be a non-empty list")
    models: list[Model] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        model = _parse_model(defaults, entry, f"{source}: models[{index}]")
        if model.id in seen:
            raise ModelsFileError(
                f"{source}: models[{index}] (id {model.id!r}): duplicate id, first at models[{seen[model.id]}]"
            )
        seen[model.id] = index
        models.append(model)
    return models


def _parse_model(defaults: Mapping[str, Any], entry: Any, where: str) -> Model:
    if not isinstance(entry, Mapping):
        raise ModelsFileError(f"{where}: must be a mapping, not {type(entry).__name__}")
    model_id = entry.get("id")
    if not isinstance(model_id, str) or not model_id.strip():
        raise ModelsFileError(f"{where}: field 'id': required, a non-empty string")
    where = f"{where} (id {model_id!r})"

    def fail(name: str, problem: str) -> ModelsFileError:
        return ModelsFileError(f"{where}: field {name!r}: {problem}")

    merged = {**defaults, **entry}
    unknown = set(merged) - _MODEL_KEYS
    if unknown:
        raise fail(sorted(unknown)[0], f"unknown; expected one of {sorted(_MODEL_KEYS)}")
    for key in _MERGED_KEYS:
        parts = [part for part in (defaults.get(key), entry.get(key)) if part is not None]
        if not all(isinstance(part, Mapping) for part in parts):
            raise fail(key, "must be a mapping")
        merged[key] = {name: value for part in parts for name, value in part.items()}
    resources = merged["resources"]
    for name, value in resources.items():
        if name not in _RESOURCE_KEYS:
            raise fail(f"resources.{name}", f"unknown; expected one of {sorted(_RESOURCE_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise fail(f"resources.{name}", f"must be a positive number, not {value!r}")
    expected = merged.get("expected_minutes", 0)
    if isinstance(expected, bool) or not isinstance(expected, (int, float)) or expected < 0:
        raise fail("expected_minutes", f"must be a number of minutes >= 0, not {expected!r}")
    dataset = merged.get("dataset")
    if dataset is not None and not isinstance(dataset, str):
        raise fail("dataset", f"must be a string (a location), not {type(dataset).__name__}")
    tags = {str(k): str(v) for k, v in merged["tags"].items()}
    if (problem := tag_problem("model_id", model_id)) is not None:
        raise fail("id", f"becomes the job's model_id tag: {problem}")
    for key, value in tags.items():
        if (problem := tag_problem(key, value)) is not None:
            raise fail(f"tags.{key}", problem)
    return Model(
        id=model_id,
        parameters=dict(merged["parameters"]),
        dataset=dataset.replace("{id}", model_id) if dataset else None,
        resources=dict(resources),
        expected_minutes=float(expected),
        tags=tags,
    )


def longest_first(models: Sequence[Model]) -> list[Model]:
    """Models by expected duration, longest first; ties keep the file's order (stable map indexes)."""
    return sorted(models, key=lambda model: -model.expected_minutes)


def _environment(model: Model) -> dict[str, str]:
    environment = {"MODEL_ID": model.id, "MODEL_PARAMETERS": json.dumps(model.parameters, sort_keys=True)}
    if model.dataset:
        environment["MODEL_DATASET"] = model.dataset
    return environment


def _expand(
    models: Sequence[Model], command: list[str] | None, resources: Callable[[dict[str, float]], dict[str, Any]]
) -> list[dict[str, Any]]:
    expanded = []
    for model in longest_first(models):
        kwargs: dict[str, Any] = {
            "environment": _environment(model),
            "tags": {**model.tags, "model_id": model.id},
            **resources(model.resources),
        }
        if command is not None:
            kwargs["command"] = list(command)
        expanded.append(kwargs)
    return expanded


def batch_kwargs(models: Sequence[Model], command: list[str] | None = None) -> list[dict[str, Any]]:
    """One ``expand_kwargs`` entry per model for ``BatchJobOperator``, longest expected job first.

    Each job gets ``MODEL_ID``, ``MODEL_PARAMETERS`` (JSON) and ``MODEL_DATASET`` in its environment,
    its ``vcpus``/``memory``/``gpus``, and its tags plus ``model_id``.
    """
    return _expand(models, command, lambda r: {k: r[k] for k in ("vcpus", "memory", "gpus") if k in r})


def ecs_kwargs(models: Sequence[Model], command: list[str] | None = None) -> list[dict[str, Any]]:
    """One ``expand_kwargs`` entry per model for ``EcsTaskOperator``, longest expected task first.

    As :func:`batch_kwargs`, with ``cpu`` (units) and ``memory`` (MiB) for the task; the operator's
    ``container_name`` (set in ``partial``) says which container they apply to.
    """
    return _expand(models, command, lambda r: {k: int(r[k]) for k in ("cpu", "memory") if k in r})


def groups(entries: Sequence[dict[str, Any]], size: int = 100) -> list[list[dict[str, Any]]]:
    """Split per-model entries into groups of at most ``size``, in order, for ``BatchFleetOperator`` or
    ``EcsFleetOperator``: ``.partial(...).expand(models=groups(batch_kwargs(models)))``.

    The order is kept: with :func:`batch_kwargs`' longest-first order, the first group holds the longest
    models and Airflow starts it first.
    """
    if size < 1:
        raise ValueError(f"size must be at least 1, not {size}")
    return [list(entries[start : start + size]) for start in range(0, len(entries), size)]


def push_groups(entries: Sequence[dict[str, Any]], ti: Any, size: int = 100) -> list[dict[str, str]]:
    """Push each group of at most ``size`` entries to an XCom of its own (``models_00000``, ...) from the task
    instance ``ti``, and return one small reference per group, for ``.expand(models=plan())``.

    Each group's run then pulls its own entries only. With :func:`groups`, every group's run reads the
    whole list: Airflow walks every value given to ``expand()`` each time it parses the DAG file, and a
    mapped task pulls an upstream task's whole return value to take its item. At tens of thousands of
    models that is a large part of what a group's run costs (docs/fleet.md)::

        @task
        def plan(ti=None) -> list[dict]:
            return push_groups(batch_kwargs(load_models("/usr/local/airflow/dags/models.yaml")), ti)


        BatchFleetOperator.partial(task_id="forecast", ...).expand(models=plan())
    """
    if not hasattr(ti, "xcom_push"):
        raise TypeError(
            f"push_groups needs the running task instance, not {ti!r:.100}: give the task a ti=None argument "
            "(Airflow fills it in) and pass it on"
        )
    references = []
    for number, group in enumerate(groups(entries, size)):
        key = f"models_{number:05d}"
        ti.xcom_push(key=key, value=group)
        references.append(xcom_reference(ti.task_id, key, entries_label(group)))
    return references
