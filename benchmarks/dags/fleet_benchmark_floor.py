"""The floor of a per-model fleet: N mapped tasks that only defer, and that the triggerer ends.

Each task's worker run defers at once to the standard provider's ``DateTimeTrigger`` (``--duration`` s
ahead, ``end_from_trigger=True``): no AWS call, no hook, no XCom of its own. What such a run costs is
what Airflow costs per task instance, and so the least any per-model operator can cost. The endpoint
sees no job; the harness runs it like the other DAGs (``--dag fleet_benchmark_floor``).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

try:
    from airflow.providers.standard.triggers.temporal import DateTimeTrigger
    from airflow.sdk import DAG, BaseOperator
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.models import BaseOperator
    from airflow.triggers.temporal import DateTimeTrigger
from fleet_settings import COMMON, DURATION, MODELS, START


class DeferOnly(BaseOperator):
    """Defer at once for ``seconds``; the triggerer ends the task."""

    def __init__(self, *, seconds: float, model: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seconds = seconds
        self.model = model

    def execute(self, context: Any) -> None:
        moment = datetime.now(timezone.utc) + timedelta(seconds=self.seconds)
        self.defer(trigger=DateTimeTrigger(moment=moment, end_from_trigger=True), method_name="execute_complete")

    def execute_complete(self, context: Any, event: Any = None) -> None:
        return None


with DAG(dag_id="fleet_benchmark_floor", schedule=None, start_date=START, catchup=False):
    floor = {key: value for key, value in COMMON.items() if key in ("task_id", "retries", "retry_delay")}
    DeferOnly.partial(seconds=DURATION, **floor).expand(model=MODELS)
