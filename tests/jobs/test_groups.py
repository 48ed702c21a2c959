"""Model groups' names, what a (re)started group waits for, and its verdict (pure logic)."""

from __future__ import annotations

from airflow_ml_batch.jobs.batch import valid_job_name
from airflow_ml_batch.jobs.groups import (
    FoundJob,
    entries_label,
    group_failure_message,
    group_key,
    group_label,
    group_prefix,
    model_job_name,
    model_label,
    parse_job_name,
    plan_group,
    progress_line,
    referenced_xcom,
    xcom_reference,
)


def test_job_names_are_valid_and_parse_back_even_for_long_labels() -> None:
    prefix = group_prefix("x" * 200, group_key("dag", "task", "run", 3))
    name = model_job_name(prefix, 4711, "emea/beverages " * 20, try_number=12, attempt=3)

    assert valid_job_name(name)
    assert parse_job_name(prefix, name) == (4711, 12, 3)
    assert parse_job_name(prefix.upper(), name) == (4711, 12, 3)  # Batch matches names case-insensitively
    assert parse_job_name(group_prefix("x" * 200, group_key("dag", "task", "run", 4)), name) is None


def test_each_task_instance_has_its_own_prefix_in_every_try() -> None:
    keys = {group_key("dag", "task", "run", index) for index in range(100)}

    assert len(keys) == 100
    assert group_key("dag", "task", "run", 1) == group_key("dag", "task", "run", 1)


def test_a_models_label_is_its_job_name_its_model_id_or_its_index() -> None:
    assert model_label({"job_name": "n", "tags": {"model_id": "m"}}, 3) == "n"
    assert model_label({"tags": {"model_id": "m"}}, 3) == "m"
    assert model_label({}, 3) == "model-3"


def job(index: int, try_number: int, attempt: int = 1, active: bool = True) -> FoundJob:
    return FoundJob(f"job-{index}-{try_number}-{attempt}", index, try_number, attempt, active)


def test_a_restarted_trigger_waits_for_its_own_tries_jobs_and_counts_their_attempts() -> None:
    found = [job(0, 1, 1, active=False), job(0, 1, 2), job(1, 1, 1, active=False)]

    plan = plan_group(found, 3, try_number=1, reattachable=range(1, 1))

    assert plan.attach == {0: found[1], 1: found[2]}
    assert plan.attempts == {0: 2, 1: 1}
    assert plan.stop == []


def test_a_retry_reattaches_to_earlier_tries_jobs_without_counting_them() -> None:
    found = [job(0, 1, active=False), job(1, 1), job(2, 2, active=False)]

    plan = plan_group(found, 3, try_number=3, reattachable=range(1, 3))

    assert set(plan.attach) == {0, 1, 2}
    assert plan.attempts == {}
    assert plan.stop == []


def test_a_retry_resubmits_an_earlier_tries_failed_job_without_waiting_for_it() -> None:
    failed = FoundJob("job-0-1-1", 0, 1, 1, active=False, failed=True)
    found = [failed, job(1, 1, active=False), job(2, 1)]

    plan = plan_group(found, 3, try_number=2, reattachable=range(1, 2))

    assert plan.attach == {1: found[1], 2: found[2]}
    assert plan.attempts == {}
    assert plan.stop == []


def test_a_restarted_trigger_still_waits_for_its_own_tries_failed_job() -> None:
    failed = FoundJob("job-0-2-1", 0, 2, 1, active=False, failed=True)

    plan = plan_group([failed], 1, try_number=2, reattachable=range(1, 2))

    assert plan.attach == {0: failed}
    assert plan.attempts == {0: 1}


def test_a_cleared_tries_jobs_are_stopped_and_never_waited_for() -> None:
    found = [job(0, 1), job(1, 1, active=False), job(2, 2)]

    plan = plan_group(found, 3, try_number=2, reattachable=range(2, 2))

    assert plan.attach == {2: found[2]}
    assert plan.stop == [found[0]]


def test_without_reattach_every_active_job_of_an_earlier_try_is_stopped() -> None:
    found = [job(0, 1), job(1, 2)]

    plan = plan_group(found, 2, try_number=2, reattachable=range(1, 2), reattach=False)

    assert plan.attach == {1: found[1]}
    assert plan.stop == [found[0]]


def test_a_second_active_job_of_a_model_is_stopped_and_later_tries_are_left_alone() -> None:
    found = [job(0, 1, 1), job(0, 1, 2), job(1, 5), job(7, 1)]

    plan = plan_group(found, 2, try_number=1, reattachable=range(1, 1))

    assert plan.attach == {0: found[1]}
    assert plan.stop == [found[0]]


def test_progress_counts_each_state_and_the_models_not_submitted_yet() -> None:
    line = progress_line({0: "RUNNING", 1: "SUCCEEDED", 2: "RUNNING"}, 5)

    assert line == "5 models: 2 RUNNING, 1 SUCCEEDED, 2 waiting to be submitted"


def test_progress_names_the_models_that_failed_so_far_the_first_ten() -> None:
    states = {n: "FAILED" for n in range(12)}

    assert (
        progress_line({0: "FAILED", 1: "RUNNING"}, 2, ["m0"]) == "2 models: 1 FAILED, 1 RUNNING; failed so far (1): m0"
    )
    assert progress_line(states, 12, [f"m{n}" for n in range(12)]).endswith(
        "failed so far (12): m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, ..."
    )


def test_a_group_is_labelled_by_its_first_and_last_model_and_how_many() -> None:
    assert group_label(["m001", "m002", "m100"]) == "m001 .. m100 (3 models)"
    assert group_label(["only"]) == "only"
    assert group_label([]) == ""
    assert len(group_label(["a" * 300, "b" * 300])) <= 250
    # entries are called by their job name or model_id tag, else by their index in the group
    assert entries_label([{"job_name": "m001"}, {}, {"tags": {"model_id": "m100"}}]) == "m001 .. m100 (3 models)"
    assert entries_label([{}, "not an entry"]) == "model-0 .. 1 (2 models)"


def test_the_failure_message_counts_and_shows_the_first_failures() -> None:
    results = [{"model": f"m{n}", "succeeded": n % 2 == 0, "message": f"why {n}", "tries": 2} for n in range(20)]

    message = group_failure_message("AWS Batch jobs", results, allowed_failures=3)

    assert message is not None
    assert message.splitlines()[0] == "10 of 20 models failed (AWS Batch jobs; allowed_failures=3)."
    assert "--- model m1 (tries 2):\nwhy 1" in message
    assert "why 9" in message
    assert "why 11" not in message
    assert message.endswith("... and 5 more: every model's outcome is in the result")
    assert group_failure_message("AWS Batch jobs", results, allowed_failures=10) is None


def test_the_next_attempt_follows_the_highest_seen_not_the_count() -> None:
    # attempt 2's job was lost to a listing (or stopped and gone): counting would reuse attempt 2's name
    found = [job(0, 1, 1, active=False), job(0, 1, 3, active=False)]

    plan = plan_group(found, 1, try_number=1, reattachable=range(1, 1))

    assert plan.attempts == {0: 3}
    assert plan.attach == {0: found[1]}


def test_two_jobs_of_one_attempt_keep_the_newest_and_stop_the_other() -> None:
    # a SubmitJob whose answer was lost, sent again before the listing showed its job
    first = FoundJob("job-a", 0, 1, 1, active=True, created_at=1.0)
    second = FoundJob("job-b", 0, 1, 1, active=True, created_at=2.0)

    plan = plan_group([second, first], 1, try_number=1, reattachable=range(1, 1))

    assert plan.attach == {0: second}
    assert plan.stop == [first]
    assert plan.attempts == {0: 1}


def test_a_reference_to_a_groups_xcom_is_told_from_a_list_of_entries() -> None:
    assert referenced_xcom(xcom_reference("plan", "models_00003", "m1 .. m9 (9 models)")) == ("plan", "models_00003")
    assert referenced_xcom({"xcom_task_id": "plan", "xcom_key": "models_00003"}) == ("plan", "models_00003")
    assert referenced_xcom([{"tags": {"model_id": "m1"}}]) is None
    assert referenced_xcom({"xcom_task_id": "plan"}) is None
    assert referenced_xcom({"xcom_task_id": "plan", "xcom_key": "k", "job_name": "x"}) is None
