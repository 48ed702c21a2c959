"""The fleet report: outcomes described from a Batch-shaped endpoint, the CSV file, the chart, the summary."""

from __future__ import annotations

import csv
import struct
import sys
from pathlib import Path

import pytest

from airflow_ml_batch.fleet import Model, batch_kwargs, groups
from airflow_ml_batch.hooks.batch import BatchHook
from airflow_ml_batch.hooks.ecs import EcsHook
from airflow_ml_batch.report import (
    NOT_SUBMITTED,
    JobOutcome,
    chart_metric,
    gather_batch_jobs,
    gather_ecs_tasks,
    metric_values,
    model_ids,
    outcome_from_result,
    pulled,
    read_csv,
    summarize,
    write_chart,
    write_csv,
)
from airflow_ml_batch.testing.endpoint import Endpoint

MINUTE_MS = 60_000


def finished_job(
    endpoint: Endpoint, model_id: str, status: str, minutes: float, try_number: int = 1, **fields: object
) -> str:
    started = 1_700_000_000_000
    fields.setdefault("tags", {"model_id": model_id, "airflow:try_number": str(try_number)})
    return endpoint.batch.add_job(
        status,
        startedAt=started,
        stoppedAt=started + int(minutes * MINUTE_MS),
        **fields,
    )


def test_model_ids_follow_the_map_order_of_the_expanded_fleet() -> None:
    models = [Model(id="short", expected_minutes=10), Model(id="long", expected_minutes=90)]

    assert model_ids(batch_kwargs(models)) == ["long", "short"]


def test_outcomes_come_from_aws_batch_in_model_order_with_metrics_from_the_results(aws_endpoint: Endpoint) -> None:
    ok = finished_job(aws_endpoint, "emea-1", "SUCCEEDED", 12, container={"exitCode": 0})
    failed = finished_job(
        aws_endpoint,
        "emea-2",
        "FAILED",
        3,
        statusReason="Essential container in task exited",
        container={"exitCode": 137},
        attempts=[{"container": {"exitCode": 1}}, {"container": {"exitCode": 137}}],
    )
    first_try = finished_job(aws_endpoint, "emea-3", "FAILED", 1, try_number=1)
    second_try = finished_job(aws_endpoint, "emea-3", "SUCCEEDED", 9, try_number=2)
    by_environment = aws_endpoint.batch.add_job(
        "RUNNING", container={"environment": [{"name": "MODEL_ID", "value": "emea-4"}]}, startedAt=1
    )
    hook = BatchHook(aws_conn_id="aws_fake", region_name="eu-west-1")

    outcomes = gather_batch_jobs(
        hook,
        ["emea-1", "emea-2", "emea-3", "emea-4", "emea-5"],
        [second_try, by_environment, failed, None, ok, first_try, "unknown-id"],
        [{"job_id": ok, "metrics": {"mape": 0.12}}, None, {"job_id": second_try, "metrics": {"mape": 0.3}}],
    )

    assert [(o.model_id, o.status, o.job_id) for o in outcomes] == [
        ("emea-1", "SUCCEEDED", ok),
        ("emea-2", "FAILED", failed),
        ("emea-3", "SUCCEEDED", second_try),  # the latest try wins
        ("emea-4", "RUNNING", by_environment),  # no model_id tag: the MODEL_ID variable names it
        ("emea-5", NOT_SUBMITTED, None),
    ]
    assert outcomes[0] == JobOutcome(
        "emea-1",
        "SUCCEEDED",
        ok,
        720.0,
        0,
        1,
        0,
        None,
        {"mape": 0.12},
        definition="forecast:1",
        log_group="/aws/batch/job",
    )
    assert (outcomes[1].exit_code, outcomes[1].attempts, outcomes[1].reason) == (
        137,
        2,
        "Essential container in task exited",
    )
    assert (outcomes[2].try_number, outcomes[2].duration_seconds, outcomes[2].metrics) == (2, 540.0, {"mape": 0.3})
    assert aws_endpoint.calls["DescribeJobs"] == 1


IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/forecast:2026.11"


def test_each_row_records_what_ran(aws_endpoint: Endpoint) -> None:
    environment = [
        {"name": "MODEL_ID", "value": "emea-1"},
        {"name": "MODEL_DATASET", "value": "s3://sales/emea-1.csv"},
        {"name": "MODEL_PARAMETERS", "value": '{"window": 24}'},
    ]
    job = finished_job(
        aws_endpoint,
        "emea-1",
        "SUCCEEDED",
        12,
        try_number=2,
        jobDefinition="arn:aws:batch:eu-west-1:123456789012:job-definition/forecast:7",
        container={
            "exitCode": 0,
            "image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/forecast:2026.11",
            "environment": environment,
        },
    )

    (outcome,) = gather_batch_jobs(BatchHook(aws_conn_id="aws_fake", region_name="eu-west-1"), ["emea-1"], [job])

    assert (outcome.definition, outcome.image, outcome.dataset, outcome.parameters, outcome.try_number) == (
        "forecast:7",
        IMAGE,
        "s3://sales/emea-1.csv",
        '{"window": 24}',
        2,
    )


def test_ecs_tasks_give_the_same_rows(aws_endpoint: Endpoint) -> None:
    def task(model: str, exit_code: int, **fields: object) -> str:
        return aws_endpoint.ecs.add_task(
            "STOPPED",
            taskDefinitionArn="arn:aws:ecs:eu-west-1:123456789012:task-definition/forecast:4",
            startedAt="2026-11-30T00:00:00Z",
            stoppedAt="2026-11-30T00:10:00Z",
            stopCode="EssentialContainerExited",
            stoppedReason="Essential container in task exited",
            containers=[{"name": "model", "image": "forecast:11", "exitCode": exit_code, "lastStatus": "STOPPED"}],
            overrides={
                "containerOverrides": [
                    {
                        "name": "model",
                        "environment": [
                            {"name": "MODEL_ID", "value": model},
                            {"name": "MODEL_DATASET", "value": f"{model}.csv"},
                        ],
                    }
                ]
            },
            **fields,
        )

    ok, failed = task("emea-1", 0), task("emea-2", 1, tags=[{"key": "airflow:try_number", "value": "2"}])
    running = aws_endpoint.ecs.add_task("RUNNING", tags=[{"key": "model_id", "value": "emea-3"}])

    outcomes = gather_ecs_tasks(
        EcsHook(aws_conn_id="aws_fake", region_name="eu-west-1"),
        "models",
        ["emea-1", "emea-2", "emea-3", "emea-4"],
        [running, failed, ok, None],
        [{"task_arn": ok, "metrics": {"mape": 0.08}}],
    )

    assert [(o.model_id, o.status, o.exit_code, o.try_number) for o in outcomes] == [
        ("emea-1", "SUCCEEDED", 0, None),
        ("emea-2", "CONTAINER_FAILED", 1, 2),
        ("emea-3", "RUNNING", None, None),
        ("emea-4", NOT_SUBMITTED, None, None),
    ]
    assert (outcomes[0].duration_seconds, outcomes[0].metrics, outcomes[0].definition, outcomes[0].image) == (
        600.0,
        {"mape": 0.08},
        "forecast:4",
        "forecast:11",
    )
    assert (outcomes[1].reason, outcomes[1].dataset) == ("Essential container in task exited", "emea-2.csv")


def test_jobs_are_described_a_hundred_per_call(aws_endpoint: Endpoint) -> None:
    ids = [finished_job(aws_endpoint, f"m{n}", "SUCCEEDED", 1) for n in range(250)]

    outcomes = gather_batch_jobs(
        BatchHook(aws_conn_id="aws_fake", region_name="eu-west-1"), [f"m{n}" for n in range(250)], ids
    )

    assert [o.status for o in outcomes] == ["SUCCEEDED"] * 250
    assert aws_endpoint.calls["DescribeJobs"] == 3
    assert [len(body["jobs"]) for op, body in aws_endpoint.requests if op == "DescribeJobs"] == [100, 100, 50]


OUTCOMES = [
    JobOutcome("a", "SUCCEEDED", "j1", 600.0, 1, 1, 0, None, {"mape": 0.1, "slope": 2}, "forecast:3", "img:1", "a.csv"),
    JobOutcome("b", "FAILED", "j2", 60.0, 1, 3, 1, "Essential container in task exited"),
    JobOutcome("c", "SUCCEEDED", "j3", 5400.0, 1, 1, 0, None, {"mape": 0.3}),
    JobOutcome("d", NOT_SUBMITTED),
]


def test_the_csv_has_a_row_per_model_and_a_column_per_metric(tmp_path: Path) -> None:
    path = write_csv(OUTCOMES, tmp_path / "report.csv")

    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == [
        "model_id",
        "status",
        "job_id",
        "duration_seconds",
        "attempts",
        "try_number",
        "exit_code",
        "reason",
        "definition",
        "image",
        "dataset",
        "parameters",
        "metric_mape",
        "metric_slope",
    ]
    assert [(r["model_id"], r["status"], r["metric_mape"], r["try_number"]) for r in rows] == [
        ("a", "SUCCEEDED", "0.1", "1"),
        ("b", "FAILED", "", "3"),
        ("c", "SUCCEEDED", "0.3", "1"),
        ("d", NOT_SUBMITTED, "", ""),
    ]
    assert rows[1]["reason"] == "Essential container in task exited"


def test_cells_a_spreadsheet_would_run_as_formulas_are_escaped_and_read_back(tmp_path: Path) -> None:
    hostile = JobOutcome('=HYPERLINK("http://x","click")', "FAILED", "j9", 1.0, 1, 1, -1, "@SUM(A1:A9)")
    path = write_csv([hostile], tmp_path / "report.csv")

    (row,) = csv.DictReader(path.open())
    assert row["model_id"] == '\'=HYPERLINK("http://x","click")'
    assert row["reason"] == "'@SUM(A1:A9)"
    assert row["exit_code"] == "-1", "numbers are numbers"
    assert read_csv(path) == [hostile]


def test_a_written_report_reads_back(tmp_path: Path) -> None:
    assert read_csv(write_csv(OUTCOMES, tmp_path / "report.csv")) == [
        JobOutcome(
            "a", "SUCCEEDED", "j1", 600.0, 1, 1, 0, None, {"mape": 0.1, "slope": 2.0}, "forecast:3", "img:1", "a.csv"
        ),
        *OUTCOMES[1:],
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, []),
        ("job-1", ["job-1"]),
        ({"job_id": "j"}, [{"job_id": "j"}]),
        (iter(["a", "b"]), ["a", "b"]),
        (
            ['{"job_id": "j", "metrics": {"mape": 0.1}}', "{not json"],
            [{"job_id": "j", "metrics": {"mape": 0.1}}, "{not json"],
        ),
        (
            ['[{"model": "m1"}, {"model": "m2"}]', [{"model": "m3"}]],
            [{"model": "m1"}, {"model": "m2"}, {"model": "m3"}],
        ),
    ],
)
def test_pulled_turns_what_each_airflow_version_returns_into_a_list(value: object, expected: list[object]) -> None:
    assert pulled(value) == expected


def test_the_chart_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")  # the report extra; the newest leg installs it

    path = write_chart(OUTCOMES, tmp_path / "report.png", title="March")

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1200, 800)


def test_the_chart_shows_mape_unless_told_another_metric() -> None:
    assert chart_metric(OUTCOMES) == "mape"
    assert chart_metric(OUTCOMES, "slope") == "slope"
    assert chart_metric([JobOutcome("a", "SUCCEEDED", metrics={"rmse": 2, "note": "x"})]) == "rmse"
    assert chart_metric([JobOutcome("a", "SUCCEEDED")]) is None
    assert metric_values(OUTCOMES, "mape") == [0.1, 0.3]


def test_the_chart_says_what_to_install_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)

    with pytest.raises(ImportError, match=r"pip install 'airflow-ml-batch\[report\]'"):
        write_chart(OUTCOMES, tmp_path / "report.png")
    assert not (tmp_path / "report.png").exists()


def test_the_summary_counts_times_metrics_and_names_the_failures() -> None:
    assert summarize(OUTCOMES, show_failures=1).splitlines() == [
        "4 models: 2 succeeded, 1 failed, 1 not_submitted",
        "durations: median 10.0 min, p95 90.0 min, longest 90.0 min (c)",
        "retried: 1 models needed more than one try or attempt",
        "metric mape: median 0.2 (p10 0.1, p90 0.3) over 2 models",
        "metric slope: median 2 (p10 2, p90 2) over 1 models",
        "  b: FAILED Essential container in task exited",
        "  ... and 1 more (see the CSV)",
    ]


def test_every_job_kind_gives_a_row_with_its_exit_code_and_attempts(aws_endpoint: Endpoint) -> None:
    # No model_id tags: the MODEL_ID variable of each kind's containers names the model.
    def model(name: str) -> list[dict[str, str]]:
        return [{"name": "MODEL_ID", "value": name}]

    multi_node = finished_job(
        aws_endpoint,
        "ignored",
        "FAILED",
        30,
        tags={},
        nodeProperties={
            "numNodes": 2,
            "mainNode": 0,
            "nodeRangeProperties": [{"targetNodes": "0:1", "container": {"environment": model("mnp")}}],
        },
        attempts=[{"container": {"exitCode": 1}}, {"container": {"exitCode": 2}}],
    )
    ecs = finished_job(
        aws_endpoint,
        "ignored",
        "SUCCEEDED",
        5,
        tags={},
        ecsProperties={
            "taskProperties": [{"containers": [{"name": "model", "environment": model("ecs"), "exitCode": 0}]}]
        },
    )
    eks = finished_job(
        aws_endpoint,
        "ignored",
        "FAILED",
        2,
        tags={},
        eksProperties={"podProperties": {"containers": [{"name": "model", "env": model("eks"), "exitCode": 137}]}},
        eksAttempts=[{"containers": [{"name": "model", "exitCode": 137}]}],
    )
    array = aws_endpoint.batch.add_array_job(3, "FAILED", child_status="FAILED", tags={"model_id": "array"})

    outcomes = gather_batch_jobs(
        BatchHook(aws_conn_id="aws_fake", region_name="eu-west-1"),
        ["mnp", "ecs", "eks", "array"],
        [multi_node, ecs, eks, array],
    )

    assert [(o.model_id, o.status, o.exit_code, o.attempts) for o in outcomes] == [
        ("mnp", "FAILED", 2, 2),  # the main node's exit code
        ("ecs", "SUCCEEDED", 0, 0),
        ("eks", "FAILED", 137, 1),
        ("array", "FAILED", None, 0),
    ]
    assert outcomes[0].duration_seconds == 1800.0


def test_model_ids_read_groups_as_the_entries_they_hold() -> None:
    entries = batch_kwargs([Model(id="a"), Model(id="b"), Model(id="c")])

    assert model_ids(groups(entries, size=2)) == model_ids(entries) == ["a", "b", "c"]
    assert model_ids([{"tags": {"model_id": "t"}}, {"job_name": "j"}, {}]) == ["t", "j", "model-2"]


def test_an_outcome_reads_a_batch_result_as_its_task_pushed_it() -> None:
    result = {
        "job_id": "j1",
        "status": "FAILED",
        "status_reason": "Essential container in task exited",
        "exit_code": 137,
        "attempts": [{"exit_code": 1}, {"exit_code": 137}],
        "duration_seconds": 60.0,
        "job_definition": "arn:aws:batch:eu-west-1:1:job-definition/forecast:3",
        "image": "forecast:3",
        "log_group": "/aws/batch/job",
        "log_stream": "forecast/default/abc",
    }
    entry = batch_kwargs([Model(id="a", dataset="s3://d/a.csv", parameters={"alpha": 1})])[0]

    outcome = outcome_from_result("a", result, entry)

    assert outcome == JobOutcome(
        "a", "FAILED", "j1", 60.0, 2, None, 137, "Essential container in task exited", {}, "forecast:3",
        "forecast:3", "s3://d/a.csv", '{"alpha": 1}', "/aws/batch/job", "forecast/default/abc",
    )  # fmt: skip


def test_an_outcome_reads_an_ecs_result_and_a_groups_entries() -> None:
    task = {
        "task_arn": "arn:aws:ecs:eu-west-1:1:task/models/t1",
        "outcome": "container_failed",
        "stopped_reason": "Essential container in task exited",
        "containers": [{"name": "sidecar", "exit_code": 0, "image": "proxy"}, {"name": "model", "exit_code": 2}],
        "essential_containers": ["model"],
        "started_at": "2026-01-01T00:00:00+00:00",
        "duration_seconds": 30.0,
        "task_definition": "arn:aws:ecs:eu-west-1:1:task-definition/forecast:7",
    }
    retried = {"model": "m", "index": 0, **task, "succeeded": False, "tries": 2, "message": "failed\nlog line"}
    rejected = {"model": "r", "index": 1, "job_id": None, "status": "REJECTED", "status_reason": "bad vcpus",
                "succeeded": False, "tries": 1, "message": "bad vcpus"}  # fmt: skip

    ecs, group, refused = (
        outcome_from_result("m", task),
        outcome_from_result("m", retried),
        outcome_from_result("r", rejected),
    )

    assert (ecs.status, ecs.exit_code, ecs.attempts, ecs.definition, ecs.job_id) == (
        "CONTAINER_FAILED", 2, 1, "forecast:7", task["task_arn"]
    )  # fmt: skip
    assert group.attempts == 2  # the group ran the model twice
    assert (refused.status, refused.reason, refused.job_id, refused.attempts) == ("REJECTED", "bad vcpus", None, 0)
