"""Fault scenarios on a fleet run through a real Airflow: each prints its verdict, PASS or FAIL, with numbers.

Each scenario starts the endpoint, the database and Airflow (:class:`airflow_fleet.Fleet`), triggers
``fleet_benchmark`` (``--dag fleet_benchmark_groups``: the same models in groups of ``--group-size``),
injects its fault at the endpoint or into Airflow's processes, waits for the run, and checks what the
endpoint and the metadata database saw::

    python benchmarks/chaos.py --scenario triggerer-kill --jobs 200
    python benchmarks/chaos.py --scenario triggerer-kill --dag fleet_benchmark_groups --jobs 40 --group-size 20
    python benchmarks/chaos.py --scenario group-retry --jobs 100
    python benchmarks/chaos.py --scenario lost-answers --dag fleet_benchmark_groups --jobs 300 --duration 30
    python benchmarks/chaos.py --scenario group-timeout-no-triggerer --jobs 200 --group-size 50
    python benchmarks/chaos.py --scenario all --jobs 100 --db sqlite

Scenarios: triggerer-kill, throttle-storm, clear-deferred, expiring-credentials, endpoint-down,
worker-kill, ha-triggerers, triggerer-stall, group-retry, lost-answers, group-timeout-no-triggerer.
Group mode (``--dag fleet_benchmark_groups``) runs triggerer-kill and lost-answers, and group-retry and
group-timeout-no-triggerer (always in group mode); the others act on mapped tasks one by one.
In group mode the checks count jobs per model (a group names each model's job by try and attempt): no
model may get a second job unless the scenario expects one. Exit status 0 only if every scenario run passed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from airflow_fleet import TASK_ID, Fleet, jobs_by_model, log, model_of, parser

from airflow_ml_batch.jobs.groups import FAILURES_SHOWN
from airflow_ml_batch.testing.local_airflow import http_json


@dataclass
class Verdict:
    """A scenario's checks (each must hold) and the numbers behind them."""

    scenario: str
    checks: dict[str, bool] = field(default_factory=dict)
    numbers: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.checks) and all(self.checks.values())

    def __str__(self) -> str:
        lines = [f"== {self.scenario}: {'PASS' if self.passed else 'FAIL'}"]
        if self.error:
            lines.append(f"   error: {self.error}")
        lines += [f"   [{'ok' if ok else 'FAILED'}] {check}" for check, ok in self.checks.items()]
        lines += [f"   {name}: {value}" for name, value in self.numbers.items()]
        return "\n".join(lines)


# What every scenario waits for and checks.


def wait_deferred(fleet: Fleet, count: int, timeout: float = 900) -> float:
    """Wait until ``count`` tasks have deferred (or ended); return when."""
    log(f"waiting for {count} deferred tasks")
    fleet.wait(lambda: _deferred_or_done(fleet) >= count, timeout, f"{count} deferred tasks")
    return time.time()


def _deferred_or_done(fleet: Fleet) -> int:
    states = fleet.task_states()
    return states["deferred"] + states["success"]


def finish(
    fleet: Fleet,
    verdict: Verdict,
    *,
    duplicates_allowed: frozenset[str] = frozenset(),
    marked_failed: int = 0,
) -> dict[str, Any]:
    """Wait for the run, then check the run's outcome, single submissions, and that no job is left running.

    ``marked_failed`` tasks were marked failed by the scenario: the run fails, every other task succeeds.
    ``duplicates_allowed``: job names (mapped tasks), or models (groups: :func:`airflow_fleet.model_of`),
    that may have a second job.
    """
    fleet.wait()
    results = fleet.results()
    jobs = fleet.bench("jobs")
    submits = results["submits"]
    tasks = fleet.task_count
    if marked_failed:
        verdict.checks["the DAG run failed (tasks marked failed), no other task failed"] = results["state"] == "failed"
        expected = {"success": tasks - marked_failed, "failed": marked_failed}
        verdict.checks["every other task succeeded"] = results["tasks"] == expected
    else:
        verdict.checks["the DAG run succeeded"] = results["state"] == "success"
        verdict.checks["every task succeeded"] = results["tasks"] == {"success": tasks}
    twice = sorted(n for n, k in submits.items() if k > 1 and n not in duplicates_allowed)
    if fleet.grouped:  # a group names each model's job by try and attempt: a second job has another name
        per_model: collections.Counter[str] = collections.Counter()
        for name, count in submits.items():
            per_model[model_of(name)] += count
        verdict.checks["every model's job was submitted"] = results["models_with_a_job"] == fleet.args.jobs
        verdict.checks["no job name submitted twice"] = not twice
        more = sorted(m for m, n in per_model.items() if n > 1 and m not in duplicates_allowed)
        verdict.checks["no model had a second job"] = not more
        verdict.numbers["models with more than one job"] = results["models_with_more_than_one_job"]
    else:
        names = {fleet.job_name(i) for i in range(fleet.args.jobs)}
        verdict.checks["every task's job was submitted"] = names <= set(submits)
        verdict.checks["no job submitted twice"] = not twice
    left = [i for i, j in jobs.items() if j["ends"] > time.time()]
    verdict.checks["no job left running at the endpoint"] = not left
    verdict.checks[f"no {'model' if fleet.grouped else 'task'} had two jobs running at once"] = not overlapping_jobs(
        jobs
    )
    verdict.numbers |= {
        "tasks": results["tasks"],
        "jobs submitted (SubmitJob answered)": sum(submits.values()),
        "job names submitted twice": len(twice),
        "wall (s), ideal (s)": (round(results["wall"]), round(results["ideal"])),
        "API calls answered": {k: v for k, v in results["calls"].items() if v},
        "throttled": results["throttled"],
        "max worker slots held while jobs run": results["max_slots_held"],
        "CPU (s)": {k: round(v, 1) for k, v in results["cpu"].items()},
    }
    return results


def overlapping_jobs(jobs: dict[str, dict[str, Any]]) -> list[str]:
    """Models (a mapped task's job name, a group's model) with two jobs alive at the same time (a terminated
    job ends when it was terminated)."""
    return [
        name
        for name, same in jobs_by_model(jobs.values()).items()
        if any(a["created"] < b["ends"] and b["created"] < a["ends"] for a, b in itertools.combinations(same, 2))
    ]


def tries(fleet: Fleet) -> dict[int, int]:
    """How many task instances ended on each try number."""
    rows = fleet.sql(
        "SELECT try_number, COUNT(*) FROM task_instance WHERE dag_id = :dag AND run_id = :run GROUP BY try_number"
    )
    return {int(t): int(n) for t, n in rows}


#: The running triggerer whose heartbeat is oldest.
STALEST_TRIGGERER = (
    "SELECT id FROM job WHERE job_type = 'TriggererJob' AND state = 'running' ORDER BY latest_heartbeat LIMIT 1"
)


def triggers_per_triggerer(fleet: Fleet) -> dict[str, int]:
    rows = fleet.sql("SELECT triggerer_id, COUNT(*) FROM trigger GROUP BY triggerer_id")
    return {str(t): int(n) for t, n in rows}


# The scenarios.


def triggerer_kill(fleet: Fleet, args: argparse.Namespace, verdict: Verdict) -> None:
    """SIGKILL the triggerer's process group mid-fleet, restart it: all complete, none submitted twice.

    Mapped tasks: killed once half of them have deferred. Groups (``--dag fleet_benchmark_groups``): killed
    once half of the models have a job, while the groups' triggers still submit the others (a low
    ``--submit-rate`` makes that last); the restarted triggers find the jobs submitted, submit only the
    rest, and every group succeeds on its first try.
    """
    fleet.trigger()
    if fleet.grouped:
        log(f"waiting for {args.jobs // 2} models' SubmitJob")
        fleet.wait(lambda: _submitted(fleet) >= args.jobs // 2, 900, f"{args.jobs // 2} models submitted")
    else:
        wait_deferred(fleet, args.jobs // 2)
    deferred = fleet.task_states()["deferred"]
    fleet.kill("triggerer-0", signal.SIGKILL)
    submitted = _submitted(fleet)
    log(f"killed the triggerer (SIGKILL to its process group) holding {deferred} deferred tasks, {submitted} jobs")
    time.sleep(args.down_seconds)
    fleet.start_triggerer(0)
    restarted = time.time()
    finish(fleet, verdict)
    by_try = tries(fleet)
    if fleet.grouped:
        verdict.checks["killed mid-submission (some models had no job yet)"] = 0 < submitted < args.jobs
        verdict.checks["every group succeeded on its first try"] = by_try == {1: fleet.task_count}
    verdict.numbers |= {
        "deferred tasks when killed": deferred,
        "jobs submitted when killed": submitted,
        "seconds down": args.down_seconds,
        "tasks by try number": by_try,
        "run ended after restart (s)": round(fleet.ended_at - restarted),
    }


def _submitted(fleet: Fleet) -> int:
    """SubmitJob calls the endpoint answered."""
    return int(sum(fleet.bench("stats")["submits"].values()))


def throttle_storm(fleet: Fleet, args: argparse.Namespace, verdict: Verdict) -> None:
    """Every Batch call answered 429 for ``--storm-seconds`` while the fleet waits: no task fails."""
    fleet.trigger()
    wait_deferred(fleet, args.jobs)
    before = fleet.bench("stats")["throttled"].get("DescribeJobs", 0)
    fleet.bench("faults", {"throttle_seconds": args.storm_seconds})
    log(f"throttling storm: every Batch call answered 429 for {args.storm_seconds:.0f}s")
    storm_end = time.time() + args.storm_seconds
    time.sleep(args.storm_seconds)
    throttled = fleet.bench("stats")["throttled"].get("DescribeJobs", 0) - before
    finish(fleet, verdict)
    verdict.checks["the storm throttled DescribeJobs calls"] = throttled > 0
    verdict.checks["no task retried"] = set(tries(fleet)) == {1}
    verdict.numbers |= {
        "DescribeJobs throttled during the storm": throttled,
        "first answered DescribeJobs after the storm (s)": _first_describe_after(fleet, storm_end),
    }


def clear_deferred(fleet: Fleet, args: argparse.Namespace, verdict: Verdict) -> None:
    """Clear ``--clear`` deferred tasks, mark ``--mark`` others failed or successful, kill a few task processes.

    A clear re-runs the model: the cleared try's job is terminated and the next try submits one new job,
    never re-attaching to the old one. A mark stops it: the job is terminated and nothing is submitted.
    A task process killed after SubmitJob is retried, and that retry re-attaches to the job.
    """
    victims = list(range(args.jobs - args.kill_workers, args.jobs))
    fleet.bench("faults", {"hold_submit": {"map_indexes": victims, "seconds": 60}})
    fleet.trigger()
    killed = _kill_held_submitters(fleet, victims)
    wait_deferred(fleet, args.jobs)
    deferred = sorted(set(fleet.map_indexes("deferred")) - set(victims))
    cleared, marked = deferred[: args.clear], deferred[args.clear : args.clear + args.mark]
    marked_as = {i: ("failed" if n % 2 else "success") for n, i in enumerate(marked)}
    by_name = {job["name"]: job_id for job_id, job in fleet.bench("jobs").items()}
    first_jobs = {i: by_name[fleet.job_name(i)] for i in cleared}
    marked_jobs = {i: by_name[fleet.job_name(i)] for i in marked}
    body = {
        "dry_run": False,
        "dag_run_id": fleet.run_id,
        "task_ids": [[TASK_ID, i] for i in cleared],
        "only_failed": False,
        "reset_dag_runs": True,
    }
    acted_at = time.time()
    answer = http_json("POST", f"{fleet.api}/api/v2/dags/{fleet.args.dag}/clearTaskInstances", body)
    log(f"cleared {answer['total_entries']} deferred task instances through the REST API")
    for i, state in marked_as.items():
        url = f"{fleet.api}/api/v2/dags/{fleet.args.dag}/dagRuns/{fleet.run_id}/taskInstances/{TASK_ID}/{i}"
        http_json("PATCH", url, {"new_state": state})
    log(f"marked {len(marked)} deferred task instances failed or successful through the REST API")
    finish(
        fleet,
        verdict,
        duplicates_allowed=frozenset(fleet.job_name(i) for i in cleared),
        marked_failed=sum(1 for state in marked_as.values() if state == "failed"),
    )
    stats, jobs = fleet.bench("stats"), fleet.bench("jobs")
    terminated, submits = set(stats["terminated"]), stats["submits"]
    ended_before = [i for i, job in first_jobs.items() if jobs[job]["ends"] <= acted_at]
    old_job_stopped = [i for i, job in first_jobs.items() if job in terminated or i in ended_before]
    states = dict(fleet.sql(_MAPPED_STATES, task=TASK_ID))
    verdict.checks["every cleared task's old job was terminated (or had ended before the clear)"] = len(
        old_job_stopped
    ) == len(cleared)
    verdict.checks["every cleared task's next try submitted exactly one new job"] = all(
        submits.get(fleet.job_name(i)) == 2 for i in cleared
    )
    verdict.checks["every marked task's job was terminated"] = set(marked_jobs.values()) <= terminated
    verdict.checks["no marked task submitted again"] = all(submits.get(fleet.job_name(i)) == 1 for i in marked)
    verdict.checks["every marked task kept its mark"] = all(states.get(i) == s for i, s in marked_as.items())
    verdict.checks[f"{len(victims)} task processes killed after SubmitJob"] = len(killed) == len(victims) and all(
        killed.values()
    )
    verdict.checks["each killed task's retry re-attached (one job per name)"] = all(
        submits.get(name) == 1 for name in killed
    )
    others = terminated - set(first_jobs.values()) - set(marked_jobs.values())
    verdict.checks["no other job was terminated"] = not others
    verdict.numbers |= {
        "cleared": answer["total_entries"],
        "their old job terminated": sum(1 for job in first_jobs.values() if job in terminated),
        "their old job had ended before the clear": len(ended_before),
        "their next try re-attached to the old job": sum(1 for i in cleared if submits.get(fleet.job_name(i)) == 1),
        "marked failed, marked success": tuple(
            collections.Counter(marked_as.values())[s] for s in ("failed", "success")
        ),
        "TerminateJob by caller": collections.Counter(stats["terminated_by"].values()),
        "other jobs terminated": len(others),
        "tasks by try number": tries(fleet),
    }


_MAPPED_STATES = "SELECT map_index, state FROM task_instance WHERE dag_id = :dag AND run_id = :run AND task_id = :task"


def _kill_held_submitters(fleet: Fleet, victims: list[int], timeout: float = 600) -> dict[str, int]:
    """SIGKILL each task process whose SubmitJob the endpoint holds (``hold_submit``): job name -> pid."""
    killed: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while len(killed) < len(victims) and time.monotonic() < deadline:
        for held in fleet.bench("stats")["held"]:
            if held["job_name"] not in killed:
                killed[held["job_name"]] = _kill_socket_owner(held["port"])
                log(f"job {held['job_name']} created; SIGKILLed pid {killed[held['job_name']]} before its answer")
        time.sleep(0.2)
    return killed


def expiring_credentials(fleet: Fleet, args: argparse.Namespace, verdict: Verdict) -> None:
    """The connection assumes a role whose credentials expire every ``--credential-ttl`` s: nothing fails."""
    fleet.bench("faults", {"credential_ttl": args.credential_ttl})
    fleet.trigger()
    finish(fleet, verdict)
    stats = fleet.bench("stats")
    verdict.checks["the jobs outlived several credential lifetimes"] = (
        verdict.numbers["wall (s), ideal (s)"][1] > 2 * args.credential_ttl
    )
    verdict.checks["no task retried"] = set(tries(fleet)) == {1}
    verdict.numbers |= {
        "credential lifetime (s)": args.credential_ttl,
        "AssumeRole calls": stats["calls"].get("AssumeRole", 0),
        "calls rejected for expired or unknown credentials": stats["rejected_credentials"],
    }


def endpoint_down(fleet: Fleet, args: argparse.Namespace, verdict: Verdict) -> None:
    """Every AWS request has its connection reset for ``--down-seconds``: nothing fails, polling resumes."""
    fleet.trigger()
    wait_deferred(fleet, args.jobs)
    fleet.bench("faults", {"unreachable_seconds": args.down_seconds})
    log(f"endpoint unreachable (connections reset) for {args.down_seconds:.0f}s")
    back = time.time() + args.down_seconds
    time.sleep(args.down_seconds)
    finish(fleet, verdict)
    resets = fleet.bench("stats")["calls"].get("connection reset", 0)
    resumed = _first_describe_after(fleet, back)
    verdict.checks["requests were reset during the outage"] = resets > 0
    verdict.checks["polling resumed after the outage"] = resumed is not None
    verdict.checks["no task retried"] = set(tries(fleet)) == {1}
    verdict.numbers |= {"connections reset": resets, "first DescribeJobs after the outage (s)": resumed}


def worker_kill(fleet: Fleet, args: argparse.Namespace, verdict: Verdict) -> None:
    """SIGKILL the task process whose SubmitJob the endpoint holds: the retry re-attaches, no second job."""
    victims = list(range(args.kill_workers))
    fleet.bench("faults", {"hold_submit": {"map_indexes": victims, "seconds": 60}})
    fleet.trigger()
    killed = _kill_held_submitters(fleet, victims)
    finish(fleet, verdict)
    submits = fleet.bench("stats")["submits"]
    verdict.checks[f"{len(victims)} task processes killed after SubmitJob"] = len(killed) == len(victims) and all(
        killed.values()
    )
    verdict.checks["each killed task's retry re-attached (one job per name)"] = all(
        submits.get(name) == 1 for name in killed
    )
    verdict.numbers |= {"tasks by try number": tries(fleet), "killed pids": list(killed.values())}


def ha_triggerers(fleet: Fleet, args: argparse.Namespace, verdict: Verdict) -> None:
    """Two triggerers share the fleet; one is stopped midway: every job watched, none twice after the hand-over."""
    fleet.trigger()
    wait_deferred(fleet, args.jobs)
    time.sleep(2 * args.poll_interval)  # both triggerers have polled their jobs
    before = triggers_per_triggerer(fleet)
    sig = signal.SIGKILL if args.kill_signal == "KILL" else signal.SIGTERM
    fleet.kill("triggerer-1", sig)
    stopped = time.time()
    log(f"stopped triggerer-1 with SIG{args.kill_signal}; triggers per triggerer id before: {before}")
    fleet.wait(lambda: len(triggers_per_triggerer(fleet)) <= 1 and "None" not in triggers_per_triggerer(fleet), 300)
    after = triggers_per_triggerer(fleet)
    finish(fleet, verdict)
    describers = fleet.bench("describers")
    callers = {c: sum(1 for d in describers.values() if c in d) for c in (fleet.caller(0), fleet.caller(1))}
    overlapping = [j for j, d in describers.items() if len(d) > 1 and _overlap(*d.values())]
    late = [j for j, d in describers.items() if d.get(fleet.caller(1), [0, 0])[1] > stopped]
    verdict.checks["both triggerers held triggers before"] = len([t for t in before if t != "None"]) == 2
    verdict.checks["every job was watched (described by a triggerer)"] = len(describers) >= args.jobs
    verdict.checks["no job watched by both triggerers at once"] = not overlapping
    verdict.checks["the stopped triggerer watched nothing after it stopped"] = not late
    verdict.numbers |= {
        "triggers per triggerer id, before": before,
        "after the hand-over": after,
        "jobs described per triggerer": callers,
        "jobs described by both (one after the other)": sum(1 for d in describers.values() if len(d) > 1),
        "TerminateJob by caller": collections.Counter(fleet.bench("stats")["terminated_by"].values()),
        "signal": f"SIG{args.kill_signal}",
    }


def triggerer_stall(fleet: Fleet, args: argparse.Namespace, verdict: Verdict) -> None:
    """Two triggerers; one freezes (SIGSTOP) past Airflow's health threshold, then resumes: no job is stopped."""
    fleet.trigger()
    wait_deferred(fleet, args.jobs)
    time.sleep(2 * args.poll_interval)  # both triggerers have polled their jobs
    # Which triggerer claims what is Airflow's choice (often one claims a small fleet whole), and which
    # process has which triggerer id is not recorded: freeze triggerer-1, and if it held nothing, triggerer-0.
    for name in ("triggerer-1", "triggerer-0"):
        before = triggers_per_triggerer(fleet)
        group = fleet.processes.running[name].pid
        os.killpg(group, signal.SIGSTOP)
        log(f"froze {name} (SIGSTOP) for {args.stall_seconds:.0f}s; triggers per triggerer id: {before}")
        try:
            time.sleep(args.stall_seconds)
            during = triggers_per_triggerer(fleet)
            frozen = str(fleet.sql(STALEST_TRIGGERER)[0][0])  # the frozen one has not heartbeated since
        finally:
            os.killpg(group, signal.SIGCONT)
        log(f"resumed {name} (triggerer id {frozen}); triggers per triggerer id: {during}")
        if before.get(frozen, 0):
            break
        time.sleep(2 * args.poll_interval)  # heartbeating again before the other one freezes
    finish(fleet, verdict)
    stats = fleet.bench("stats")
    verdict.checks["the frozen triggerer held triggers before"] = before.get(frozen, 0) > 0
    verdict.checks["the frozen triggerer's triggers moved to the other"] = (
        frozen not in during and len([t for t in during if t != "None"]) == 1
    )
    verdict.checks["no job was terminated"] = not stats["terminated"]
    verdict.numbers |= {
        "triggers per triggerer id, before": before,
        "while frozen": during,
        "frozen triggerer id": frozen,
        "TerminateJob by caller": collections.Counter(stats["terminated_by"].values()),
        "tasks by try number": tries(fleet),
    }


def group_retry(fleet: Fleet, args: argparse.Namespace, verdict: Verdict) -> None:
    """``--fail-models`` of the models (10 %) fail on their first job, with no model retry within a try
    (the DAG's ``model_retries=0``) and one task retry: each group with a failed model fails its first try
    (its message counts and names them), Airflow retries it, and the second try submits exactly the
    failed models again (try 2, attempt 1), re-attaching to the others' finished jobs."""
    size = args.group_size
    count = max(1, round(args.jobs * args.fail_models))
    failing = sorted({round(k * args.jobs / count) for k in range(count)})
    labels = {i: f"model-{i:05d}" for i in failing}  # fleet_settings.MODELS
    fleet.bench("faults", {"fail_job_names": rf"--\d+-({'|'.join(labels.values())})-t1-a1$"})
    log(f"the first job of {len(failing)} models fails: {', '.join(list(labels.values())[:5])}, ...")
    fleet.trigger()

    def model(i: int) -> str:  # what airflow_fleet.model_of says of model ``i``'s jobs
        return f"{fleet.group_prefix(i // size)}{i % size}"

    finish(fleet, verdict, duplicates_allowed=frozenset(model(i) for i in failing))
    stats, jobs = fleet.bench("stats"), fleet.bench("jobs")
    per_model: collections.Counter[str] = collections.Counter()
    for name, n in stats["submits"].items():
        per_model[model_of(name)] += n
    expected = {model(i): 2 if i in labels else 1 for i in range(args.jobs)}
    second = {model_of(name) for name in stats["submits"] if not name.endswith("-t1-a1")}
    failed_jobs = sorted(job["name"] for job in jobs.values() if job["fails"])
    groups = collections.Counter(i // size for i in failing)
    by_try = tries(fleet)
    messages = {g: _first_try_failure(fleet, g) for g in groups}
    first = next(iter(messages.values()), None)
    verdict.checks[f"the {len(failing)} chosen models' first jobs failed, no other job"] = sorted(
        model_of(name) for name in failed_jobs
    ) == sorted(model(i) for i in failing) and all(name.endswith("-t1-a1") for name in failed_jobs)
    verdict.checks["SubmitJob per model: 2 for the failed models, 1 for the others"] = per_model == expected
    verdict.checks["every second job is of try 2, attempt 1"] = second == {model(i) for i in failing} and all(
        name.endswith(("-t1-a1", "-t2-a1")) for name in stats["submits"]
    )
    verdict.checks["each group with a failed model ended on try 2, the others on try 1"] = by_try == {
        t: n for t, n in ((1, fleet.task_count - len(groups)), (2, len(groups))) if n
    }
    verdict.checks["each such group's first try failed, its message counting and naming the failed models"] = all(
        _lists_failures(messages[g], k, min(size, args.jobs - g * size), {labels[i] for i in failing if i // size == g})
        for g, k in groups.items()
    )
    verdict.numbers |= {
        "models failing their first job": len(failing),
        "groups (failed on try 1)": (fleet.task_count, len(groups)),
        "SubmitJob per model (count of models)": dict(collections.Counter(per_model.values())),
        "jobs that failed at the endpoint": len(failed_jobs),
        "tasks by try number": by_try,
        "first try's message (first group), its first line": (first or "(not found)").partition(")")[0] + ")",
    }


def lost_answers(fleet: Fleet, args: argparse.Namespace, verdict: Verdict) -> None:
    """``--lose-fraction`` (5 %) of the SubmitJob answers are lost after the job was created, and ListJobs
    shows a job only ``--list-lag`` s after its creation: every model still gets exactly one job.

    ``--lose-mode alternate`` (default) answers 500 until half the models have a job, then drops the
    connection unanswered; ``500`` or ``drop`` keep one mode. The first SubmitJob of each mode loses its
    answer, so every run loses at least one in each. Per model or in groups (the trigger submits either
    way; per model the worker does with ``FLEET_BENCH_SUBMIT_FROM_TRIGGER=0``): the job is looked for by
    name, found once listed, and never sent again.
    """
    modes = ("500", "drop") if args.lose_mode == "alternate" else (args.lose_mode,)
    fleet.bench("faults", {"list_lag_seconds": args.list_lag, "lose_answers": _losing(args, modes[0])})
    log(f"SubmitJob answers lost: {args.lose_fraction:.0%} ({' then '.join(modes)}); ListJobs lags {args.list_lag}s")
    fleet.trigger()
    if len(modes) == 2:
        half = args.jobs // 2
        fleet.wait(lambda: _submitted(fleet) >= half, None, f"{half} models submitted", every=0.2)
        fleet.bench("faults", {"lose_answers": _losing(args, modes[1])})
        log(f"{_submitted(fleet)} models submitted: SubmitJob answers now lost as {modes[1]}")
    results = finish(fleet, verdict)
    stats, jobs = fleet.bench("stats"), fleet.bench("jobs")
    lost = stats["lost_answers"].get("SubmitJob", 0)
    by_mode = {mode: n.get("SubmitJob", 0) for mode, n in stats["lost_answers_by_mode"].items()}
    per_model = collections.Counter(len(same) for same in jobs_by_model(jobs.values()).values())
    found = _lost_jobs_found(fleet)
    by_try = tries(fleet)
    verdict.checks["SubmitJob answers were lost"] = lost > 0
    if len(modes) == 2:
        verdict.checks["answers lost both ways: 500 and dropped connection"] = all(by_mode.get(m) for m in modes)
    verdict.checks["one job per model at the endpoint"] = per_model == {1: args.jobs}
    verdict.checks["each job whose answer was lost was found by its lookup"] = len(found) == lost
    verdict.checks["no job was stopped (no second job to stop)"] = not stats["terminated"]
    verdict.checks["no task retried"] = by_try == {1: fleet.task_count}
    calls = results["calls"]
    verdict.numbers |= {
        "SubmitJob answers lost (by mode)": (lost, by_mode),
        "lost jobs found by their lookup": len(found),
        "SubmitJob calls (jobs created)": calls.get("SubmitJob", 0),
        "ListJobs calls (by caller)": (calls.get("ListJobs", 0), _by_caller(stats, "ListJobs")),
        "jobs per model (count of models)": dict(per_model),
        "listing lag (s), lose fraction": (args.list_lag, args.lose_fraction),
        "tasks by try number": by_try,
    }


def _losing(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """The endpoint's ``lose_answers`` switch: the first SubmitJob answer, then ``--lose-fraction`` of them."""
    seed = args.seed + (mode == "drop")
    return {"operations": ["SubmitJob"], "fraction": args.lose_fraction, "mode": mode, "seed": seed, "next": 1}


#: What a worker (``BatchHook.submit_job``) or a trigger logs when the job of a lost answer is found.
_FOUND_AFTER_LOSS = re.compile(r"[Jj]ob (\S+) (?:\(\S+\) )?was submitted(?::|) \(?its answer was lost")


def _lost_jobs_found(fleet: Fleet) -> set[str]:
    """Ids of the jobs whose SubmitJob answer was lost and that a lookup found, from every log of the run."""
    found: set[str] = set()
    for path in fleet.workdir.rglob("*.log*"):
        with contextlib.suppress(OSError):
            found |= set(_FOUND_AFTER_LOSS.findall(path.read_text(errors="replace")))
    return found


def _by_caller(stats: dict[str, Any], operation: str) -> dict[str, int]:
    """Calls of ``operation`` per caller (a triggerer's path prefix; ``worker`` for the task runs)."""
    return {caller or "worker": ops[operation] for caller, ops in stats["callers"].items() if ops.get(operation)}


def group_timeout_no_triggerer(fleet: Fleet, args: argparse.Namespace, verdict: Verdict) -> None:
    """Groups with an ``--execution-timeout`` shorter than their jobs lose their only triggerer (SIGKILL, kept
    down) once every group has deferred and its jobs run: Airflow times the deferred tasks out, and each
    group's worker run stops every job of its group.

    The scheduler's ``check_trigger_timeouts`` sets a deferred task whose ``trigger_timeout`` passed to
    scheduled with ``next_method`` ``__fail__``; the worker runs ``resume_execution``, which stops the group's
    jobs (``stop_abandoned_jobs``) before the task fails. The triggerer is killed before the triggers' own
    deadline (a little before the timeout), which would stop the jobs from the triggerer instead.
    """
    timeout = args.execution_timeout
    fleet.trigger()
    what = "every group deferred, every job submitted"
    fleet.wait(
        lambda: fleet.task_states()["deferred"] == fleet.task_count and _submitted(fleet) >= args.jobs, None, what
    )
    timeouts = _trigger_timeouts(fleet)
    first_deadline = min(timeouts.values()) - min(15.0, timeout / 10)  # deadline_for: the triggers' own stop
    kill_by = first_deadline - KILL_BEFORE_DEADLINE
    fleet.wait(lambda: _running(fleet) >= args.jobs or time.time() > kill_by, None, "the jobs to run")
    running, submitted, planned = _running(fleet), _submitted(fleet), fleet.bench("jobs")
    fleet.kill("triggerer-0", signal.SIGKILL)
    killed = time.time()
    log(
        f"killed the triggerer (kept down): {running} of {submitted} jobs running; "
        f"the first deferral times out in {min(timeouts.values()) - killed:.0f}s"
    )
    fleet.wait()
    stats, jobs = fleet.bench("stats"), fleet.bench("jobs")
    terminated = set(stats["terminated"])
    by_group: dict[int, list[float]] = collections.defaultdict(list)  # map index -> when its jobs were stopped
    group_of = {fleet.group_prefix(i): i for i in range(fleet.task_count)}
    for job_id, job in jobs.items():
        if job_id in terminated:
            by_group[group_of.get(job["name"].partition("--")[0] + "--", -1)].append(job["ends"])
    logs = {i: _task_log(fleet, i) or "" for i in range(fleet.task_count)}
    stopping = {
        i: re.search(r"Stopping (\d+) jobs of the group: the task's execution_timeout", text)
        for i, text in logs.items()
    }
    per_model = collections.Counter(len(same) for same in jobs_by_model(jobs.values()).values())
    by_try = tries(fleet)
    verdict.checks["the triggerer was killed with every job running, before any trigger's deadline"] = (
        running == submitted == args.jobs and killed < first_deadline
    )
    verdict.checks["the DAG run failed, every group task failed on its first try"] = (
        fleet.run_state() == "failed"
        and fleet.task_states() == {"failed": fleet.task_count}
        and by_try == {1: fleet.task_count}
    )
    verdict.checks["each group's log: deferral timed out, every job of the group stopped from the worker"] = all(
        match is not None and int(match[1]) == len(by_group.get(i, [])) and "TaskDeferralTimeout" in logs[i]
        for i, match in stopping.items()
    )
    verdict.checks["every job was stopped (TerminateJob reached each)"] = set(jobs) <= terminated
    verdict.checks["every stop came from a worker"] = set(stats["terminated_by"].values()) == {"worker"}
    verdict.checks["no job left running at the endpoint"] = all(job["ends"] <= time.time() for job in jobs.values())
    verdict.checks["one job per model (none submitted again)"] = per_model == {1: args.jobs}
    stopped_at = [moment for moments in by_group.values() for moment in moments]
    first_stop = [min(by_group[i]) - timeouts[i] for i in timeouts if by_group.get(i)]
    last_stop = [max(by_group[i]) - timeouts[i] for i in timeouts if by_group.get(i)]
    verdict.numbers |= {
        "groups, models": (fleet.task_count, args.jobs),
        "execution_timeout (s), planned job durations (s)": (timeout, _durations(planned)),
        "jobs running when the triggerer was killed": f"{running} of {submitted}",
        "triggerer killed, deferral timeouts (s after the trigger)": (
            round(killed - fleet.triggered_at),
            [round(t - fleet.triggered_at) for t in sorted(timeouts.values())],
        ),
        "scheduler timed deferrals out (s after the first timeout: tasks)": {
            round(moment - min(timeouts.values()), 1): count for moment, count in _timed_out_by_scheduler(fleet)
        },
        "a group's timeout to its first stop, to its last stop (s, worst group)": (
            round(max(first_stop, default=-1), 1),
            round(max(last_stop, default=-1), 1),
        ),
        "first timeout to every job stopped (s)": round(max(stopped_at, default=0.0) - min(timeouts.values()), 1),
        "TerminateJob by caller": collections.Counter(stats["terminated_by"].values()),
        "ListJobs calls (by caller)": _by_caller(stats, "ListJobs"),
        "tasks": dict(fleet.task_states()),
        "wall (s)": round(fleet.ended_at - fleet.triggered_at),
    }


#: Seconds every job outlives its group's deferral timeout: the scheduler looks for timed-out deferrals every
#: 15 s ([scheduler] trigger_timeout_check_interval), then a worker starts the task and stops the jobs.
OUTLIVE_TIMEOUT = 45.0
#: Seconds before the first trigger's deadline by which the triggerer is killed, jobs running or not.
KILL_BEFORE_DEADLINE = 10.0


def _stopped_in_time(args: argparse.Namespace) -> dict[str, Any]:
    """group-timeout-no-triggerer's ``--execution-timeout`` (default 120 s) and a ``--duration`` that fits it.

    Every job must be RUNNING (the endpoint starts a job a quarter into its duration) before the triggerer is
    killed ahead of the first trigger's deadline, and outlive the timeout by ``OUTLIVE_TIMEOUT``: a
    ``--duration`` that does not fit, with its ``--spread``, is replaced by one that does.
    """
    timeout = args.execution_timeout or 120.0
    submitted_by = 10.0 + args.jobs / (args.submit_rate or 0.9 * args.rate)  # after the first task started
    kill_by = timeout - min(15.0, timeout / 10) - KILL_BEFORE_DEADLINE  # deadline_for, less the kill's lead
    shortest = (timeout + OUTLIVE_TIMEOUT) / (1 - args.spread)
    longest = (kill_by - submitted_by) / (0.25 * (1 + args.spread))
    if shortest > longest:
        raise ValueError(
            f"no job duration fits --execution-timeout {timeout:.0f} with --spread {args.spread}: jobs must run "
            f"before {kill_by:.0f}s and outlive {timeout + OUTLIVE_TIMEOUT:.0f}s; lengthen the timeout or narrow "
            "the spread"
        )
    duration = args.duration if shortest <= args.duration <= longest else float(round((shortest + longest) / 2))
    if duration != args.duration:
        log(f"--duration {duration:.0f}: jobs that run before {kill_by:.0f}s and outlive the {timeout:.0f}s timeout")
    return {"execution_timeout": timeout, "duration": duration}


def _trigger_timeouts(fleet: Fleet) -> dict[int, float]:
    """Each deferred task's ``trigger_timeout`` (epoch seconds), by map index."""
    rows = fleet.sql(
        "SELECT map_index, trigger_timeout FROM task_instance WHERE dag_id = :dag AND run_id = :run"
        " AND trigger_timeout IS NOT NULL"
    )
    return {int(i): _epoch(moment) for i, moment in rows}


def _epoch(moment: datetime | str) -> float:
    """A metadata database timestamp (Postgres: aware; SQLite: a naive UTC string) as epoch seconds."""
    value = moment if isinstance(moment, datetime) else datetime.fromisoformat(str(moment))
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()


def _timed_out_by_scheduler(fleet: Fleet) -> list[tuple[float, int]]:
    """When the scheduler's ``check_trigger_timeouts`` timed deferred tasks out (epoch seconds), and how many."""
    path = fleet.processes.log_dir / "scheduler.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    return [
        (datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp(), int(count))
        for moment, count in re.findall(r"^(\S+) .*Timed out (\d+) deferred tasks without fired triggers", text, re.M)
    ]


def _running(fleet: Fleet) -> int:
    """Jobs RUNNING at the endpoint now."""
    now = time.time()
    return sum(1 for job in fleet.bench("jobs").values() if job["started"] <= now < job["ends"])


def _durations(jobs: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """The shortest and longest job duration, as planned before any was stopped."""
    spans = [job["ends"] - job["created"] for job in jobs.values()] or [0.0]
    return round(min(spans)), round(max(spans))


def _first_try_failure(fleet: Fleet, map_index: int) -> str | None:
    """Group ``map_index``'s first-try log from its group failure message on, if that is there."""
    text = _task_log(fleet, map_index) or ""
    match = re.search(r"\d+ of \d+ models failed \(AWS Batch jobs; allowed_failures=\d+\)", text)
    return text[match.start() :] if match else None


def _task_log(fleet: Fleet, map_index: int, attempt: int = 1) -> str | None:
    """The log of task instance ``map_index``'s try ``attempt``, if it was written."""
    for path in fleet.workdir.rglob(f"attempt={attempt}.log"):
        if path.parent.name == f"map_index={map_index}" and f"dag_id={fleet.args.dag}" in path.parts:
            return path.read_text(errors="replace")
    return None


def _lists_failures(message: str | None, failed: int, models: int, labels: set[str]) -> bool:
    """Whether a group failure message says ``failed`` of ``models`` failed and names only ``labels``,
    as many of them as it shows in full."""
    if message is None or not message.startswith(f"{failed} of {models} models failed"):
        return False
    named = set(re.findall(r"--- model (model-\d+) \(tries", message))
    return named <= labels and len(named) == min(failed, FAILURES_SHOWN)


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _first_describe_after(fleet: Fleet, moment: float) -> float | None:
    times = [t for t in fleet.bench("stats")["describe_times"]["DescribeJobs"] if t >= moment]
    return round(min(times) - moment, 1) if times else None


def _kill_socket_owner(port: int) -> int:
    """SIGKILL the process holding the local TCP socket on ``port`` (Linux ``/proc``); return its pid, or 0."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    for entry in Path("/proc").glob("[0-9]*/fd/*"):
        with contextlib.suppress(OSError):
            if os.readlink(entry) in inodes and int(entry.parts[2]) != os.getpid():
                pid = int(entry.parts[2])
                os.kill(pid, signal.SIGKILL)
                return pid
    return 0


@dataclass(frozen=True)
class Scenario:
    run: Callable[[Fleet, argparse.Namespace, Verdict], None]
    settings: dict[str, Any] = field(default_factory=dict)  # options the scenario needs, over the command line's
    groups: bool = False  # it runs in group mode too (``--dag fleet_benchmark_groups``)
    derived: Callable[[argparse.Namespace], dict[str, Any]] | None = None  # options it computes from the others


SCENARIOS = {
    "triggerer-kill": Scenario(triggerer_kill, groups=True),
    "throttle-storm": Scenario(throttle_storm),
    "clear-deferred": Scenario(clear_deferred),
    "expiring-credentials": Scenario(expiring_credentials, {"role": True}),
    "endpoint-down": Scenario(endpoint_down),
    "worker-kill": Scenario(worker_kill),
    "ha-triggerers": Scenario(ha_triggerers, {"triggerers": 2}),
    "triggerer-stall": Scenario(triggerer_stall, {"triggerers": 2}),
    "group-retry": Scenario(group_retry, {"dag": "fleet_benchmark_groups", "retries": 1}, groups=True),
    "lost-answers": Scenario(lost_answers, groups=True),
    "group-timeout-no-triggerer": Scenario(
        group_timeout_no_triggerer,
        {"dag": "fleet_benchmark_groups", "retries": 0},
        groups=True,
        derived=_stopped_in_time,
    ),
}


def run_scenario(name: str, args: argparse.Namespace) -> Verdict:
    """Run one scenario on a fresh Airflow; never raises for a failure of the system under test."""
    scenario = SCENARIOS[name]
    args = argparse.Namespace(**(vars(args) | scenario.settings))
    if scenario.derived is not None:
        args = argparse.Namespace(**(vars(args) | scenario.derived(args)))
    verdict = Verdict(name)
    log(f"scenario {name}: {args.jobs} jobs of ~{args.duration:.0f}s, {args.db}")
    try:
        if args.dag == "fleet_benchmark_groups" and not scenario.groups:
            raise ValueError(f"{name} acts on mapped tasks one by one: it does not run with --dag {args.dag}")
        with Fleet(args) as fleet:
            scenario.run(fleet, args, verdict)
    except Exception as error:
        verdict.error = f"{type(error).__name__}: {error}"
    print(verdict, flush=True)
    return verdict


def chaos_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("--scenario", required=True, choices=[*SCENARIOS, "all"])
    p.add_argument("--storm-seconds", type=float, default=120.0, help="throttle-storm: how long every call is 429")
    p.add_argument("--down-seconds", type=float, default=60.0, help="endpoint-down / triggerer-kill: outage, s")
    p.add_argument("--clear", type=int, default=100, help="clear-deferred: how many deferred tasks to clear")
    p.add_argument("--mark", type=int, default=10, help="clear-deferred: deferred tasks to mark failed/success")
    p.add_argument("--credential-ttl", type=float, default=180.0, help="expiring-credentials: lifetime, s")
    p.add_argument("--kill-workers", type=int, default=3, help="worker-kill, clear-deferred: task processes to kill")
    p.add_argument("--kill-signal", choices=("TERM", "KILL"), default="TERM", help="ha-triggerers: the signal")
    p.add_argument("--stall-seconds", type=float, default=45.0, help="triggerer-stall: how long it is frozen")
    p.add_argument("--fail-models", type=float, default=0.1, help="group-retry: models whose first job fails")
    p.add_argument("--lose-fraction", type=float, default=0.05, help="lost-answers: SubmitJob answers lost")
    p.add_argument(
        "--lose-mode",
        choices=("alternate", "500", "drop"),
        default="alternate",
        help="lost-answers: 500, dropped connection, or 500 until half the models have a job, then drop",
    )
    p.add_argument("--list-lag", type=float, default=5.0, help="lost-answers: ListJobs shows a job this late, s")
    return p


def main() -> int:
    args = chaos_parser().parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    verdicts = [run_scenario(name, args) for name in names]
    out = Path.cwd() / f"chaos-{args.scenario}-{args.jobs}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps([vars(v) | {"passed": v.passed} for v in verdicts], indent=1, default=str))
    print("\n".join(f"{v.scenario}: {'PASS' if v.passed else 'FAIL'}" for v in verdicts))
    return 0 if all(v.passed for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
