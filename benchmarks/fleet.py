"""Fleet benchmark: N deferrable AWS Batch or ECS triggers in one event loop, ours against the Amazon provider's.

For each implementation, a fresh AWS-shaped endpoint (``python -m airflow_ml_batch.testing.endpoint``, its
own process) creates N jobs (Batch) or tasks (ECS), and a fresh trigger process runs N triggers the way Airflow's
triggerer does (``async for event in trigger.run()``, first event taken), each watching one of them.
The endpoint counts the API calls; the trigger process measures its own CPU, peak memory and event-loop
stalls. Figures are printed side by side::

    python benchmarks/fleet.py --jobs 5000 --impl both
    python benchmarks/fleet.py --service ecs --jobs 5000 --impl both

``--job-logs always`` (ours alone) ends each successful job's task on the triggerer after copying its
CloudWatch log into the task log, through the process's one GetLogEvents pacer, against an endpoint that
throttles GetLogEvents beyond ``--logs-rate`` (AWS's quota: 10 to 25 per second per account and Region)::

    python benchmarks/fleet.py --jobs 5000 --duration 40 --spread 0.5 --impl ours --job-logs always
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import gc
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow_ml_batch.testing.endpoint import EndpointClient, running
from airflow_ml_batch.testing.endpoint.ecs import CLUSTER

CONN_ID = "aws_bench"
REGION = "eu-west-1"
IMPLS = ("ours", "official")
TICK = 0.01  # the stall detector's period, seconds
#: a loop iteration longer than this is a long stall: its garbage collections and the code running are noted
LONG_STALL = 0.05


@dataclasses.dataclass(frozen=True)
class Service:
    """What differs between the Batch and the ECS fleet: endpoint, names, the triggers compared."""

    noun: str  # "job" or "task": the endpoint's ``<noun>s`` control route, and the table's words
    id_words: str  # "job ids" or "task ARNs"
    describe: str  # the polling operation
    rate: float  # the endpoint's default requests/s: about the service's rate for that operation
    #: Per implementation: a "success" event says only that the job stopped, not that it succeeded
    #: (``EcsRunTaskOperator.execute_complete`` checks exit codes after the official ECS trigger).
    success_means_stopped: dict[str, bool]


SERVICES = {
    "batch": Service("job", "job ids", "DescribeJobs", 50.0, {"ours": False, "official": False}),
    "ecs": Service("task", "task ARNs", "DescribeTasks", 20.0, {"ours": False, "official": True}),
}
#: ``EcsRunTaskOperator``'s default ``waiter_max_attempts``, which it passes to ``TaskDoneTrigger``
OFFICIAL_ECS_MAX_ATTEMPTS = 1_000_000


# The trigger process.


def trigger_factory(service: str, impl: str, poll_interval: float, job_logs: str | None = None) -> Callable[[str], Any]:
    """A function building the ``impl`` trigger for one job id (Batch) or task ARN (ECS); ``job_logs`` (ours):
    end successful tasks on the triggerer, copying their logs as ``job_logs`` says."""
    common: dict[str, Any] = {"aws_conn_id": CONN_ID, "region_name": REGION}
    if service == "ecs":
        common["cluster"] = CLUSTER
        if impl == "ours":
            from airflow_ml_batch.triggers.ecs import EcsTaskTrigger

            common.update(_job_logs(job_logs))
            return lambda arn: EcsTaskTrigger(task_arn=arn, poll_interval=poll_interval, **common)
        from airflow.providers.amazon.aws.triggers.ecs import TaskDoneTrigger

        return lambda arn: TaskDoneTrigger(
            task_arn=arn, waiter_delay=poll_interval, waiter_max_attempts=OFFICIAL_ECS_MAX_ATTEMPTS, **common
        )
    if impl == "ours":
        from airflow_ml_batch.triggers.batch import BatchJobTrigger

        common.update(_job_logs(job_logs))
        return lambda job_id: BatchJobTrigger(job_id=job_id, poll_interval=poll_interval, **common)
    from airflow.providers.amazon.aws.triggers.batch import BatchJobTrigger as Official

    # waiter_max_attempts keeps the trigger's default (720)
    return lambda job_id: Official(job_id=job_id, waiter_delay=poll_interval, **common)


def _job_logs(job_logs: str | None) -> dict[str, Any]:
    """Our triggers' settings for ``--job-logs``: a success ends on the triggerer, which copies its log."""
    return {} if job_logs is None else {"job_logs": job_logs, "end_from_trigger": True}


async def watch(trigger: Any, job_id: str, events: dict[str, tuple[float, str, str]]) -> None:
    """Take the trigger's first event (or exception), as the triggerer does for a deferred task."""
    run = trigger.run()
    try:
        async for event in run:
            ended = getattr(event, "task_instance_state", None)  # a TaskSuccessEvent (end_from_trigger)
            if ended is not None:
                events[job_id] = (time.time(), "success" if str(ended) == "success" else str(ended), "")
                return
            payload = event.payload
            events[job_id] = (time.time(), str(payload.get("status")), str(payload.get("message", ""))[:300])
            return
        events[job_id] = (time.time(), "no event", "")
    except Exception as error:
        events[job_id] = (time.time(), "raised", f"{type(error).__name__}: {error}"[:300])
    finally:
        await run.aclose()


class StallCauses:
    """What the event loop did during its long stalls: the garbage collector's pauses (``gc.callbacks``), and
    where the main thread was, sampled from a watchdog thread while the loop has not ticked for ``LONG_STALL``.

    A full collection holds the GIL, so the watchdog cannot sample during it: its time comes from the callbacks.
    """

    def __init__(self) -> None:
        self.collections: list[tuple[float, float, int]] = []  # (start, seconds, generation)
        self.stalls: list[tuple[float, float]] = []  # (start, seconds), the long ones
        self.samples: collections.Counter[str] = collections.Counter()
        self.census: dict[str, Any] | None = None
        #: when the census began: a stall that includes it is the census's own, and not counted
        self.ignore_from = float("inf")
        self.last_tick = time.monotonic()
        self._gc_start = 0.0
        self._main = threading.get_ident()
        self._stop = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> StallCauses:
        gc.callbacks.append(self._gc)
        self._watchdog.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self._gc)
        self._stop.set()
        self._watchdog.join()

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.monotonic()
        else:
            self.collections.append((self._gc_start, time.monotonic() - self._gc_start, info["generation"]))

    def _watch(self) -> None:
        while not self._stop.wait(TICK):
            if time.monotonic() - self.last_tick < LONG_STALL:
                continue
            frame = sys._current_frames().get(self._main)
            if frame is not None:
                self.samples[where(frame)] += 1

    def summary(self) -> dict[str, Any]:
        """The collections by generation (count, longest, total) and what the longest stalls spent where."""
        by_generation = {
            str(generation): [len(pauses), max(pauses, default=0.0), sum(pauses)]
            for generation in (0, 1, 2)
            for pauses in [[seconds for _, seconds, gen in self.collections if gen == generation]]
        }
        longest = sorted(self.stalls, key=lambda stall: -stall[1])[:10]
        return {
            "gc": by_generation,
            "long_stalls": len(self.stalls),
            "longest": [[seconds, self._gc_within(start, seconds)] for start, seconds in longest],
            "gc_in_long_stalls": sum(self._gc_within(start, seconds) for start, seconds in self.stalls),
            "long_stall_seconds": sum(seconds for _, seconds in self.stalls),
            "samples": self.samples.most_common(8),
            "census": self.census,
        }

    def _gc_within(self, start: float, seconds: float) -> float:
        """Seconds of garbage collection within the stall from ``start``, ``seconds`` long."""
        end = start + seconds
        return sum(max(0.0, min(end, at + pause) - max(start, at)) for at, pause, _ in self.collections)


def tracked_objects() -> collections.Counter[str]:
    """The objects the garbage collector tracks, by type, after a full collection."""
    gc.collect()
    return collections.Counter(type(thing).__qualname__ for thing in gc.get_objects())


def object_census(before: collections.Counter[str], jobs: int) -> dict[str, Any]:
    """The objects the garbage collector tracks: all of them, and by type those added per job since ``before``."""
    now = tracked_objects()
    added = now - before
    return {
        "tracked": sum(now.values()),
        "before": sum(before.values()),
        "per_job": [(name, n / jobs) for name, n in added.most_common(20)],
    }


def where(frame: Any) -> str:
    """The innermost three frames of the main thread, outside the standard library's selectors and the loop."""
    stack = [entry for entry in traceback.extract_stack(frame) if "selectors.py" not in entry.filename]
    return " < ".join(f"{Path(entry.filename).name}:{entry.name}:{entry.lineno}" for entry in reversed(stack[-3:]))


async def stall_detector(stop: asyncio.Event, causes: StallCauses) -> float:
    """Longest delay beyond ``TICK`` of a ``TICK``-second sleep, until ``stop`` is set; long ones into ``causes``."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    while not stop.is_set():
        before = loop.time()
        causes.last_tick = before
        await asyncio.sleep(TICK)
        late = loop.time() - before - TICK
        causes.last_tick = loop.time()
        if before <= causes.ignore_from <= causes.last_tick:  # the census stalled the loop, not the triggers
            causes.ignore_from = float("inf")
            continue
        if late >= LONG_STALL:
            causes.stalls.append((before + TICK, late))
        worst = max(worst, late)
    return worst


async def run_fleet(
    make: Callable[[str], Any], job_ids: list[str], cap: float, causes: StallCauses, count_objects: float = 0.0
) -> tuple[dict[str, tuple[float, str, str]], float, dict[str, int]]:
    """Run one trigger per job until all fired or ``cap`` seconds passed; return events, worst stall and the
    counters of the process's GetLogEvents pacer. ``count_objects``: that many seconds after the last trigger
    started, count the objects the garbage collector tracks, by type (it stalls the loop meanwhile)."""
    events: dict[str, tuple[float, str, str]] = {}
    stop = asyncio.Event()
    detector = asyncio.create_task(stall_detector(stop, causes))
    before = tracked_objects() if count_objects else collections.Counter()
    tasks = []
    for job_id in job_ids:  # one trigger per event-loop iteration, as Airflow's triggerer creates them
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(watch(make(job_id), job_id, events)))
    if count_objects:
        await asyncio.sleep(count_objects)
        causes.ignore_from = time.monotonic()
        causes.census = object_census(before, len(job_ids))
    _, pending = await asyncio.wait(tasks, timeout=cap)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=60)
    stop.set()
    from airflow_ml_batch.triggers.logs import LogReadPacer

    pacer = LogReadPacer.of_loop()
    reads = {"calls": pacer.calls, "throttled": pacer.throttled, "not_copied": pacer.not_copied}
    return events, await detector, reads


def child(args: argparse.Namespace) -> None:
    """Run the fleet of ``args.child`` triggers and write the measurements to ``args.out``."""
    service = SERVICES[args.service]
    slow = trigger_factory(args.service, args.child, args.poll_interval, args.job_logs)
    fast = trigger_factory(args.service, args.child, args.fast_interval, args.job_logs)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    count = args.jobs + args.fast_jobs
    ids = EndpointClient(args.endpoint).control(f"{service.noun}s", {"count": count, "name_prefix": "bench"})["ids"]
    fast_ids = set(ids[args.jobs :])
    cpu_before, clock = time.process_time(), time.monotonic()
    with StallCauses() as causes:
        events, stall, reads = asyncio.run(
            run_fleet(lambda i: (fast if i in fast_ids else slow)(i), ids, args.cap, causes, args.count_objects)
        )
    result = {
        "wall": time.monotonic() - clock,
        "cpu": time.process_time() - cpu_before,
        "rss_before_mb": rss_before / 1024,
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "stall": stall,
        "stall_causes": causes.summary(),
        "gc_frozen": gc.get_freeze_count(),
        "events": events,
        "log_reads": reads,
    }
    Path(args.out).write_text(json.dumps(result))


# The orchestrating process.


def run_impl(impl: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start an endpoint and a trigger process for ``impl``; return the measurements, or an error."""
    service = SERVICES[args.service]
    endpoint_options = [
        *("--duration", str(args.duration), "--spread", str(args.spread), "--fail-fraction", str(args.fail_fraction)),
        *(f"--{args.service}-rate", str(args.rate), f"--{args.service}-burst", str(args.burst)),
        *("--long-fraction", str(args.long_fraction), "--long-factor", str(args.long_factor)),
        *("--seed", str(args.seed), "--max-seconds", str(args.cap + 600)),
        *(("--logs-rate", str(args.logs_rate)) if args.job_logs else ()),
    ]
    with running(*endpoint_options) as endpoint:
        url = endpoint.url
        home = workdir / impl
        home.mkdir()
        env = os.environ | {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": args.log_level,
            "AWS_EC2_METADATA_DISABLED": "true",
            f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(
                {
                    "conn_type": "aws",
                    "login": "bench",
                    "password": "bench-secret",
                    "extra": {"region_name": REGION, "endpoint_url": url},
                }
            ),
        }
        out = home / "result.json"
        command = [
            *(sys.executable, str(Path(__file__).resolve()), "--child", impl, "--endpoint", url),
            *("--service", args.service, "--out", str(out), "--jobs", str(args.jobs)),
            *("--poll-interval", str(args.poll_interval), "--cap", str(args.cap)),
            *("--fast-jobs", str(args.fast_jobs), "--fast-interval", str(args.fast_interval)),
            *(("--job-logs", args.job_logs) if args.job_logs else ()),
            *("--count-objects", str(args.count_objects)),
        ]
        print(f"[{impl}] {args.jobs} {args.service} triggers against {url} ...", file=sys.stderr, flush=True)
        load = os.getloadavg()[0]
        try:
            code = subprocess.run(command, env=env, timeout=args.cap + 300, check=False).returncode
        except subprocess.TimeoutExpired:
            return {"error": "trigger process did not stop in time"}
        if code != 0 or not out.exists():
            return {"error": f"trigger process exited with {code}"}
        result = json.loads(out.read_text()) | {"load": load}
        result["stats"] = endpoint.stats()
        result["truth"] = endpoint.control(f"{service.noun}s")
    return result


def summarize(
    service: Service, impl: str, result: dict[str, Any], poll_interval: int
) -> tuple[dict[str, str], dict[str, str]]:
    """The table's rows for one implementation, and one job id (task ARN) per kind of unexpected event."""
    if "error" in result:
        return {"error": result["error"]}, {}
    events, truth, stats = result["events"], result["truth"], result["stats"]
    latencies, failed_while_running, false_success, unexpected = [], 0, 0, {}
    for key, (at, status, message) in events.items():
        job = truth[key]
        ended = at >= job["ends"]
        if status == "success" and (not ended or (job["fails"] and not service.success_means_stopped[impl])):
            false_success += 1
        elif status != "success" and not (job["fails"] and ended):
            failed_while_running += 1
            unexpected.setdefault(f"{status}: {message}", key)
        else:
            latencies.append(at - job["ends"])
    answered = stats["calls"].get(service.describe, 0)
    described = stats["described_ids"][service.describe]
    describes = answered + stats["throttled"].get(service.describe, 0)
    times = stats["describe_times"][service.describe]
    rounds = round((max(times) - min(times)) / poll_interval) + 1 if times else 1
    others = {op: n for op, n in stats["calls"].items() if op != service.describe}
    p95 = statistics.quantiles(latencies, n=20)[-1] if len(latencies) > 1 else float("nan")
    reads = result.get("log_reads") or {}
    copies = job_log_rows(result, truth) if stats["calls"].get("GetLogEvents") or reads.get("calls") else {}
    rows = {
        f"events / {service.noun}s": f"{len(events)} / {len(truth)}",
        "unfinished at cap": str(len(truth) - len(events)),
        f"{service.describe} requests": str(describes),
        f"  per {poll_interval} s poll interval": f"{describes / rounds:.1f}",
        "  poll rounds (calls' time span)": str(rounds),
        f"  {service.id_words} per answered call": f"{described / max(answered, 1):.1f}",
        f"  {service.id_words} described per second": f"{described / max(result['wall'], 1e-9):.1f}",
        f"  most {service.id_words} in one call": str(stats["max_ids_per_call"][service.describe]),
        "throttled requests": str(sum(stats["throttled"].values())),
        "other requests": str(sum(others.values())),
        **{f"  {op}": str(n) for op, n in sorted(others.items())},
        f"failed while {service.noun} ran": str(failed_while_running),
        "false successes": str(false_success),
        "detection latency median (s)": f"{statistics.median(latencies):.1f}" if latencies else "-",
        "detection latency p95 (s)": f"{p95:.1f}",
        "CPU (s)": f"{result['cpu']:.1f}",
        "peak RSS (MB)": f"{result['rss_peak_mb']:.0f}",
        "  RSS before triggers (MB)": f"{result['rss_before_mb']:.0f}",
        **copies,
        "longest event-loop stall (ms)": f"{result['stall'] * 1000:.0f}",
        **stall_rows(result),
        "wall (s)": f"{result['wall']:.1f}",
        "machine load at start (1 min avg)": f"{result['load']:.1f}",
    }
    return rows, unexpected


def stall_rows(result: dict[str, Any]) -> dict[str, str]:
    """Where the event loop's long stalls went: the garbage collector's pauses by generation, and in the stalls."""
    causes = result.get("stall_causes")
    if not causes:
        return {}
    rows = {f"  stalls >= {LONG_STALL * 1000:.0f} ms": str(causes["long_stalls"])}
    if causes["longest"]:
        in_gc = causes["longest"][0][1]
        rows["  longest: of it in gc (ms)"] = f"{in_gc * 1000:.0f}"
    rows["  all long stalls: in gc (ms)"] = f"{causes['gc_in_long_stalls'] * 1000:.0f}"
    rows["  all long stalls (ms)"] = f"{causes['long_stall_seconds'] * 1000:.0f}"
    for generation, (count, longest, total) in causes["gc"].items():
        rows[f"gc gen {generation}: runs, longest ms, total s"] = f"{count}, {longest * 1000:.0f}, {total:.1f}"
    rows["objects frozen (gc.freeze)"] = str(result.get("gc_frozen", 0))
    return rows


def job_log_rows(result: dict[str, Any], truth: dict[str, Any]) -> dict[str, str]:
    """``--job-logs``: the GetLogEvents calls (answered, throttled), the logs given up, and how long the copies of
    the successful jobs' logs took: from the first such job's end to the last of their events."""
    stats, reads = result["stats"], result.get("log_reads") or {}
    copied = [(key, at) for key, (at, status, _) in result["events"].items() if status == "success"]
    ends = [truth[key]["ends"] for key, _ in copied]
    span = max(at for _, at in copied) - min(ends) if copied else float("nan")
    return {
        "GetLogEvents answered": str(stats["calls"].get("GetLogEvents", 0)),
        "  throttled": str(stats["throttled"].get("GetLogEvents", 0)),
        "  turns the pacer gave": str(reads.get("calls", "-")),
        "logs copied on the triggerer": str(len(copied) - int(reads.get("not_copied", 0))),
        "logs not copied (one warning each)": str(reads.get("not_copied", "-")),
        "copy span: first end to last (s)": f"{span:.1f}",
        "  jobs' end span (s)": f"{max(ends) - min(ends):.1f}" if ends else "-",
    }


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    service = SERVICES[args.service]
    print(
        f"\n{args.service} {service.noun}s={args.jobs} duration={args.duration:g}s +-{args.spread:.0%} "
        f"fail={args.fail_fraction:.0%} "
        + (f"long tail={args.long_fraction:.0%} x{args.long_factor:g} " if args.long_fraction else "")
        + f"poll={args.poll_interval}s API rate={args.rate:g}/s "
        f"burst={args.burst or args.rate:g} cap={args.cap:g}s seed={args.seed} cores={os.cpu_count()}"
        + (f" + {args.fast_jobs} polled every {args.fast_interval:g}s" if args.fast_jobs else "")
        + (f" job_logs={args.job_logs} GetLogEvents rate={args.logs_rate:g}/s" if args.job_logs else "")
    )
    summaries = {impl: summarize(service, impl, result, args.poll_interval) for impl, result in results.items()}
    names = list(dict.fromkeys(name for rows, _ in summaries.values() for name in rows))
    print(f"{'':34}" + "".join(f"{impl:>16}" for impl in summaries))
    for name in names:
        # a row missing from a table without error is a request count of zero
        cells = (rows.get(name, "-" if "error" in rows else "0") for rows, _ in summaries.values())
        print(f"{name:34}" + "".join(f"{cell:>16}" for cell in cells))
    for impl, result in results.items():
        causes = result.get("stall_causes") or {}
        for seconds, in_gc in causes.get("longest", [])[:5]:
            print(f"[{impl}] long stall {seconds * 1000:.0f} ms, {in_gc * 1000:.0f} ms of it in gc")
        if causes.get("census"):
            census = causes["census"]
            per_job = ", ".join(f"{name} {n:.2f}" for name, n in census["per_job"])
            print(
                f"[{impl}] objects the gc tracks: {census['before']} before the triggers, {census['tracked']} "
                f"{args.count_objects:g}s after the last one started; added per job: {per_job}"
            )
        for place, count in causes.get("samples", []):
            print(f"[{impl}] main thread during long stalls, {count} samples of {TICK * 1000:.0f} ms: {place}")
    for impl, (_, unexpected) in summaries.items():
        for event, key in list(unexpected.items())[:5]:
            print(f"[{impl}] unexpected event, e.g. {service.noun} {key}: {event}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service", choices=SERVICES, default="batch", help="AWS Batch jobs or ECS tasks")
    parser.add_argument("--jobs", type=int, default=5000, help="jobs (ECS: tasks), one trigger each")
    parser.add_argument("--impl", choices=(*IMPLS, "both"), help="default: both if Amazon's provider imports")
    parser.add_argument("--poll-interval", type=int, default=30, help="poll_interval / waiter_delay, seconds")
    parser.add_argument("--fast-jobs", type=int, default=0, help="more jobs, polled every --fast-interval")
    parser.add_argument("--fast-interval", type=float, default=5.0, help="poll interval of --fast-jobs, seconds")
    parser.add_argument("--duration", type=float, default=20.0, help="mean job duration, seconds")
    parser.add_argument("--spread", type=float, default=0.25, help="job durations vary by +- this fraction")
    parser.add_argument("--fail-fraction", type=float, default=0.05)
    parser.add_argument("--long-fraction", type=float, default=0.0, help="fraction of jobs in a long tail (0: none)")
    parser.add_argument("--long-factor", type=float, default=10.0, help="a long-tail job lasts this many x --duration")
    parser.add_argument(
        "--rate", type=float, help="endpoint's API requests/s before throttling (default: Batch 50, ECS 20)"
    )
    parser.add_argument("--burst", type=float, default=0.0, help="endpoint's token bucket (default: --rate)")
    parser.add_argument(
        "--job-logs",
        choices=("never", "on_failure", "always"),
        help="ours only: successes end on the triggerer, which copies their logs as job_logs says",
    )
    parser.add_argument(
        "--logs-rate", type=float, default=25.0, help="with --job-logs: the endpoint's GetLogEvents/s before throttling"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cap", type=float, default=900.0, help="wall-clock cap per implementation, seconds")
    parser.add_argument(
        "--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="Airflow's"
    )
    parser.add_argument(
        "--count-objects",
        type=float,
        default=0.0,
        help="this many seconds after the last trigger started, count the objects the garbage collector tracks "
        "(stalls the loop; 0: never)",
    )
    parser.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.rate = args.rate or SERVICES[args.service].rate
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        child(args)
        return
    impl = args.impl or (
        "both" if importlib.util.find_spec("airflow.providers.amazon") and not args.job_logs else "ours"
    )
    if args.job_logs and impl != "ours":
        raise SystemExit("--job-logs measures ours alone (the official triggers copy no log): use --impl ours")
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as workdir:
        results = {name: run_impl(name, args, Path(workdir)) for name in IMPLS if impl in (name, "both")}
    report(args, results)


if __name__ == "__main__":
    main()
