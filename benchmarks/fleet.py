"""Fleet benchmark: N deferrable AWS Batch triggers in one event loop, ours against the Amazon provider's.

For each implementation, a fresh fake Batch endpoint (``fake_batch.py``, its own process) creates N
jobs, and a fresh trigger process runs N triggers the way Airflow's triggerer does (``async for event
in trigger.run()``, first event taken), each watching one job. The endpoint counts the API calls; the
trigger process measures its own CPU, peak memory and event-loop stalls. Figures are printed side by
side::

    python benchmarks/fleet.py --jobs 5000 --impl both
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fake_batch

CONN_ID = "aws_bench"
REGION = "eu-west-1"
IMPLS = ("ours", "official")
TICK = 0.01  # the stall detector's period, seconds


def _http(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=60) as response:
        return json.load(response)


# The trigger process.


def trigger_factory(impl: str, poll_interval: int) -> Callable[[str], Any]:
    """A function building the ``impl`` trigger for one job id; exits with a message if not importable."""
    common = {"aws_conn_id": CONN_ID, "region_name": REGION}
    if impl == "ours":
        try:
            from airflow_ml_batch.triggers.batch import BatchJobTrigger as Ours
        except ImportError as error:
            message = f"--impl ours: no BatchJobTrigger in airflow_ml_batch.triggers.batch: {error}"
            raise SystemExit(message) from None
        return lambda job_id: Ours(job_id=job_id, poll_interval=poll_interval, **common)
    from airflow.providers.amazon.aws.triggers.batch import BatchJobTrigger as Official

    # waiter_max_attempts keeps the trigger's default (720)
    return lambda job_id: Official(job_id=job_id, waiter_delay=poll_interval, **common)


async def watch(trigger: Any, job_id: str, events: dict[str, tuple[float, str, str]]) -> None:
    """Take the trigger's first event (or exception), as the triggerer does for a deferred task."""
    run = trigger.run()
    try:
        async for event in run:
            payload = event.payload
            events[job_id] = (time.time(), str(payload.get("status")), str(payload.get("message", ""))[:300])
            return
        events[job_id] = (time.time(), "no event", "")
    except Exception as error:
        events[job_id] = (time.time(), "raised", f"{type(error).__name__}: {error}"[:300])
    finally:
        await run.aclose()


async def stall_detector(stop: asyncio.Event) -> float:
    """Longest delay beyond ``TICK`` of a ``TICK``-second sleep, until ``stop`` is set."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(TICK)
        worst = max(worst, loop.time() - before - TICK)
    return worst


async def run_fleet(
    make: Callable[[str], Any], job_ids: list[str], cap: float
) -> tuple[dict[str, tuple[float, str, str]], float]:
    """Run one trigger per job until all fired or ``cap`` seconds passed; return events and worst stall."""
    events: dict[str, tuple[float, str, str]] = {}
    stop = asyncio.Event()
    detector = asyncio.create_task(stall_detector(stop))
    tasks = [asyncio.create_task(watch(make(job_id), job_id, events)) for job_id in job_ids]
    _, pending = await asyncio.wait(tasks, timeout=cap)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=60)
    stop.set()
    return events, await detector


def child(args: argparse.Namespace) -> None:
    """Run the fleet of ``args.child`` triggers and write the measurements to ``args.out``."""
    make = trigger_factory(args.child, args.poll_interval)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    job_ids = _http(f"{args.endpoint}/bench/jobs", {"count": args.jobs})["jobIds"]
    cpu_before, clock = time.process_time(), time.monotonic()
    events, stall = asyncio.run(run_fleet(make, job_ids, args.cap))
    result = {
        "wall": time.monotonic() - clock,
        "cpu": time.process_time() - cpu_before,
        "rss_before_mb": rss_before / 1024,
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "stall": stall,
        "events": events,
    }
    Path(args.out).write_text(json.dumps(result))


# The orchestrating process.


def run_impl(impl: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start an endpoint and a trigger process for ``impl``; return the measurements, or an error."""
    endpoint_options = [
        *("--duration", str(args.duration), "--spread", str(args.spread)),
        *("--fail-fraction", str(args.fail_fraction), "--rate", str(args.rate), "--burst", str(args.burst)),
        *("--seed", str(args.seed), "--max-seconds", str(args.cap + 600)),
    ]
    with fake_batch.running(*endpoint_options) as url:
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
            *("--out", str(out), "--jobs", str(args.jobs), "--poll-interval", str(args.poll_interval)),
            *("--cap", str(args.cap)),
        ]
        print(f"[{impl}] {args.jobs} triggers against {url} ...", file=sys.stderr, flush=True)
        load = os.getloadavg()[0]
        try:
            code = subprocess.run(command, env=env, timeout=args.cap + 300, check=False).returncode
        except subprocess.TimeoutExpired:
            return {"error": "trigger process did not stop in time"}
        if code != 0 or not out.exists():
            return {"error": f"trigger process exited with {code}"}
        result = json.loads(out.read_text()) | {"load": load}
        result["stats"] = _http(f"{url}/bench/stats")
        result["truth"] = _http(f"{url}/bench/jobs")
    return result


def summarize(result: dict[str, Any], poll_interval: int) -> tuple[dict[str, str], dict[str, str]]:
    """The table's rows for one implementation, and one job id per kind of unexpected event."""
    if "error" in result:
        return {"error": result["error"]}, {}
    events, truth, stats = result["events"], result["truth"], result["stats"]
    latencies, failed_while_running, false_success, unexpected = [], 0, 0, {}
    for job_id, (at, status, message) in events.items():
        job = truth[job_id]
        ended = at >= job["ends"]
        if status == "success" and (job["fails"] or not ended):
            false_success += 1
        elif status != "success" and not (job["fails"] and ended):
            failed_while_running += 1
            unexpected.setdefault(f"{status}: {message}", job_id)
        else:
            latencies.append(at - job["ends"])
    describes = stats["calls"].get("DescribeJobs", 0) + stats["throttled"].get("DescribeJobs", 0)
    times = stats["describe_times"]
    rounds = round((max(times) - min(times)) / poll_interval) + 1 if times else 1
    answered = stats["calls"].get("DescribeJobs", 0)
    others = {op: n for op, n in stats["calls"].items() if op != "DescribeJobs"}
    p95 = statistics.quantiles(latencies, n=20)[-1] if len(latencies) > 1 else float("nan")
    rows = {
        "events / jobs": f"{len(events)} / {len(truth)}",
        "unfinished at cap": str(len(truth) - len(events)),
        "DescribeJobs requests": str(describes),
        f"  per {poll_interval} s poll interval": f"{describes / rounds:.1f}",
        "  poll rounds (calls' time span)": str(rounds),
        "  job ids per answered call": f"{stats['described_ids'] / max(answered, 1):.1f}",
        "  most ids in one call": str(stats["max_ids_per_call"]),
        "throttled requests (429)": str(sum(stats["throttled"].values())),
        "other requests": " ".join(f"{op}={n}" for op, n in others.items()) or "0",
        "failed while job ran": str(failed_while_running),
        "false successes": str(false_success),
        "detection latency median (s)": f"{statistics.median(latencies):.1f}" if latencies else "-",
        "detection latency p95 (s)": f"{p95:.1f}",
        "CPU (s)": f"{result['cpu']:.1f}",
        "peak RSS (MB)": f"{result['rss_peak_mb']:.0f}",
        "  RSS before triggers (MB)": f"{result['rss_before_mb']:.0f}",
        "longest event-loop stall (ms)": f"{result['stall'] * 1000:.0f}",
        "wall (s)": f"{result['wall']:.1f}",
        "machine load at start (1 min avg)": f"{result['load']:.1f}",
    }
    return rows, unexpected


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    print(
        f"\njobs={args.jobs} duration={args.duration:g}s +-{args.spread:.0%} fail={args.fail_fraction:.0%} "
        f"poll={args.poll_interval}s API rate={args.rate:g}/s burst={args.burst or args.rate:g} "
        f"cap={args.cap:g}s seed={args.seed} cores={os.cpu_count()}"
    )
    summaries = {impl: summarize(result, args.poll_interval) for impl, result in results.items()}
    names = list(dict.fromkeys(name for rows, _ in summaries.values() for name in rows))
    print(f"{'':34}" + "".join(f"{impl:>16}" for impl in summaries))
    for name in names:
        print(f"{name:34}" + "".join(f"{rows.get(name, '-'):>16}" for rows, _ in summaries.values()))
    for impl, (_, unexpected) in summaries.items():
        for event, job_id in list(unexpected.items())[:5]:
            print(f"[{impl}] unexpected event, e.g. job {job_id}: {event}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000, help="jobs, one trigger each")
    parser.add_argument("--impl", choices=(*IMPLS, "both"), help="default: both if Amazon's provider imports")
    parser.add_argument("--poll-interval", type=int, default=30, help="poll_interval / waiter_delay, seconds")
    parser.add_argument("--duration", type=float, default=20.0, help="mean job duration, seconds")
    parser.add_argument("--spread", type=float, default=0.25, help="job durations vary by +- this fraction")
    parser.add_argument("--fail-fraction", type=float, default=0.05)
    parser.add_argument("--rate", type=float, default=50.0, help="endpoint's API requests/s before 429s")
    parser.add_argument("--burst", type=float, default=0.0, help="endpoint's token bucket (default: --rate)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cap", type=float, default=900.0, help="wall-clock cap per implementation, seconds")
    parser.add_argument(
        "--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="Airflow's"
    )
    parser.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.child:
        child(args)
        return
    impl = args.impl or ("both" if importlib.util.find_spec("airflow.providers.amazon") else "ours")
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as workdir:
        results = {name: run_impl(name, args, Path(workdir)) for name in IMPLS if impl in (name, "both")}
    report(args, results)


if __name__ == "__main__":
    main()
