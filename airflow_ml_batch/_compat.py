"""Airflow 2/3 differences, in one place. Features are detected, never inferred from a version number."""

from __future__ import annotations

from importlib.metadata import version

from airflow.triggers.base import BaseTrigger
from packaging.version import Version

AIRFLOW_VERSION = Version(Version(version("apache-airflow")).base_version)
AIRFLOW_V_3_0_PLUS = Version("3.0.0") <= AIRFLOW_VERSION

try:  # Airflow 3: the Task SDK
    from airflow.sdk import BaseOperator, BaseOperatorLink, Context
except ImportError:  # Airflow 2
    from airflow.models.baseoperator import BaseOperator  # type: ignore[no-redef]
    from airflow.models.baseoperatorlink import BaseOperatorLink  # type: ignore[no-redef]
    from airflow.utils.context import Context  # type: ignore[no-redef,attr-defined]

#: ``BaseTrigger.on_kill()`` (Airflow 3.3+): the triggerer calls it when a user clears or marks a
#: deferred task, and never on a triggerer restart. Older versions need the task state checked.
TRIGGER_HAS_ON_KILL = "on_kill" in vars(BaseTrigger)

__all__ = [
    "AIRFLOW_VERSION",
    "AIRFLOW_V_3_0_PLUS",
    "TRIGGER_HAS_ON_KILL",
    "BaseOperator",
    "BaseOperatorLink",
    "Context",
]
