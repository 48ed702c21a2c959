"""What the operators share: the hook, the deadline, the common trigger settings and the resume step."""

from __future__ import annotations

import time
from datetime import timedelta
from functools import cached_property
from typing import Any, ClassVar

from airflow.exceptions import AirflowException
from airflow.providers.amazon.aws.links.logs import CloudWatchEventsLink

from airflow_ml_batch._compat import AirflowTaskTimeout, BaseOperator, Context
from airflow_ml_batch.hooks.base import AwsServiceHook


def deadline_for(context: Context, execution_timeout: timedelta | None) -> float | None:
    """Epoch seconds at which the trigger stops the job: a little before Airflow's own deferral timeout."""
    if execution_timeout is None:
        return None
    started = context["ti"].start_date
    margin = min(15.0, execution_timeout.total_seconds() / 10)
    start = started.timestamp() if started else time.time()
    return start + execution_timeout.total_seconds() - margin


class DeferredJobOperator(BaseOperator):
    """Base of the operators: start a remote job on a worker, defer, and finish from the trigger's event.

    :param poll_interval: seconds between status polls on the triggerer.
    :param end_from_trigger: end a successful task from the triggerer, without a second worker run.
    :param log_tail_lines: CloudWatch log lines shown in a failure message.
    :param collect_metrics: put the last ``{"metrics": {...}}`` JSON line a successful job printed
        (within its last ``log_tail_lines`` log lines, read in one call) into the result as ``metrics``.
    :param missing_grace: seconds the job may be absent from describe calls before the task fails.
    :param reattach: on a retry, wait for a job an earlier try left running instead of starting another
        (default); ``False`` stops that job and starts a new one.
    :param aws_conn_id: Airflow ``aws`` connection.
    :param region_name: AWS region; defaults to the connection's.
    """

    hook_class: ClassVar[type[AwsServiceHook]]

    def __init__(
        self,
        *,
        reattach: bool = True,
        poll_interval: float = 30.0,
        end_from_trigger: bool = True,
        log_tail_lines: int = 50,
        collect_metrics: bool = False,
        missing_grace: float = 600.0,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.reattach = reattach
        self.poll_interval = poll_interval
        self.end_from_trigger = end_from_trigger
        self.log_tail_lines = log_tail_lines
        self.collect_metrics = collect_metrics
        self.missing_grace = missing_grace
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name

    @cached_property
    def hook(self) -> Any:
        return self.hook_class(aws_conn_id=self.aws_conn_id, region_name=self.region_name)

    def trigger_kwargs(self, context: Context) -> dict[str, Any]:
        """The settings every trigger takes, from this operator and the task's ``execution_timeout``."""
        location = self.link_location()
        return {
            "aws_conn_id": self.aws_conn_id,
            "region_name": self.region_name,
            "poll_interval": self.poll_interval,
            "deadline": deadline_for(context, self.execution_timeout),
            "end_from_trigger": self.end_from_trigger,
            "xcom_result": self.do_xcom_push,
            "missing_grace": self.missing_grace,
            "log_tail_lines": self.log_tail_lines,
            "collect_metrics": self.collect_metrics,
            "log_link": {
                "region_name": location["region_name"],
                "aws_domain": CloudWatchEventsLink.get_aws_domain(location["aws_partition"]),
            },
        }

    def link_location(self) -> dict[str, str]:
        """``region_name`` and ``aws_partition`` for the console links."""
        return {"region_name": self.hook.conn_region_name, "aws_partition": self.hook.conn_partition}

    def execute_complete(self, context: Context, event: Any = None) -> Any:
        """Resume after the trigger: return the job's result or raise why it failed. No AWS calls."""
        if not isinstance(event, dict):
            return None  # a TaskSuccessEvent replayed by ``dag.test()``: its XComs were pushed already
        result = event.get("result")
        if result and result.get("log_stream"):
            CloudWatchEventsLink.persist(
                context=context,
                operator=self,
                **self.link_location(),
                awslogs_region=result.get("log_region") or self.hook.conn_region_name,
                awslogs_group=result["log_group"],
                awslogs_stream_name=result["log_stream"],
            )
        if event["status"] == "success":
            return result
        if event["status"] == "timeout":
            raise AirflowTaskTimeout(event["message"])
        raise AirflowException(event["message"])
