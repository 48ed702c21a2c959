"""Fleet benchmark, ECS: N deferrable ECS task triggers in one event loop, ours against the Amazon provider's.

The ECS counterpart of ``fleet.py``: for each implementation, a fresh fake ECS endpoint (``fake_ecs.py``,
its own process) creates N tasks, and a fresh trigger process runs N triggers the way Airflow's
triggerer does (``async for event in trigger.run()``, first event taken), each watching one task. The
endpoint counts the API calls; the trigger process measures its own CPU, peak memory and event-loop
stalls. Figures are printed side by side::

    python benchmarks/fleet_ecs.py --jobs 5000 --impl both
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fake_ecs
from fleet import CONN_ID, REGION, _http, run_fleet

IMPLS = ("ours", "official")
#: ``EcsRunTaskOperator``'s default ``waiter_max_attempts``, which it passes to ``TaskDoneTrigger``
OFFICIAL_MAX_ATTEMPTS = 1_000_000
#: What a "success" event says, per implementation: ours, that the task succeeded; the official
#: ``TaskDoneTrigger``, only that it stopped (``EcsRunTaskOperator.execute_complete`` checks exit codes).
SUCCESS_MEANS_STOPPED = {"ours": False, "official": True}


# The trigger process.


def trigger_factory(impl: str, poll_interval: int) -> Callable[[str], Any]:
    """A function building the ``impl`` trigger for one task ARN; exits with a message if not importable."""
    common = {"cluster": fake_ecs.CLUSTER, "aws_conn_id": CONN_ID, "region_name": REGION}
    if impl == "ours":
        try:
            from airflow_ml_batch.triggers.ecs import EcsTaskTrigger as Ours
        except ImportError as error:
            raise SystemExit(f"--impl ours: no EcsTaskTrigger in airflow_ml_batch.triggers.ecs: {error}") from None
        return lambda arn: Ours(task_arn=arn, poll_interval=poll_interval, **common)
    from airflow.providers.amazon.aws.triggers.ecs import TaskDoneTrigger as Official

    return lambda arn: Official(
        task_arn=arn, waiter_delay=poll_interval, waiter_max_attempts=OFFICIAL_MAX_ATTEMPTS, **common
    )


def child(args: argparse.Namespace) -> None:
    """Run the fleet of ``args.child`` triggers and write the measurements to ``args.out``."""
    make = trigger_factory(args.child, args.poll_interval)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    task_arns = _http(f"{args.endpoint}/bench/tasks", {"count": args.jobs})["taskArns"]
    cpu_before, clock = time.process_time(), time.monotonic()
    events, stall = asyncio.run(run_fleet(make, task_arns, args.cap))
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
    with fake_ecs.running(*endpoint_options) as url:
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
        result["truth"] = _http(f"{url}/bench/tasks")
    return result


def summarize(impl: str, result: dict[str, Any], poll_interval: int) -> tuple[dict[str, str], dict[str, str]]:
    """The table's rows for one implementation, and one task ARN per kind of unexpected event."""
    if "error" in result:
        return {"error": result["error"]}, {}
    events, truth, stats = result["events"], result["truth"], result["stats"]
    latencies, failed_while_running, false_success, unexpected = [], 0, 0, {}
    for arn, (at, status, message) in events.items():
        task = truth[arn]
        ended = at >= task["ends"]
        if status == "success" and (not ended or (task["fails"] and not SUCCESS_MEANS_STOPPED[impl])):
            false_success += 1
        elif status != "success" and not (task["fails"] and ended):
            failed_while_running += 1
            unexpected.setdefault(f"{status}: {message}", arn)
        else:
            latencies.append(at - task["ends"])
    answered = stats["calls"].get("DescribeTasks", 0)
    describes = answered + stats["throttled"].get("DescribeTasks", 0)
    times = stats["describe_times"]
    rounds = round((max(times) - min(times)) / poll_interval) + 1 if times else 1
    others = {op: n for op, n in stats["calls"].items() if op != "DescribeTasks"}
    p95 = statistics.quantiles(latencies, n=20)[-1] if len(latencies) > 1 else float("nan")
    rows = {
        "events / tasks": f"{len(events)} / {len(truth)}",
        "unfinished at cap": str(len(truth) - len(events)),
        "DescribeTasks requests": str(describes),
        f"  per {poll_interval} s poll interval": f"{describes / rounds:.1f}",
        "  poll rounds (calls' time span)": str(rounds),
        "  task ARNs per answered call": f"{stats['described_ids'] / max(answered, 1):.1f}",
        "  most ARNs in one call": str(stats["max_ids_per_call"]),
        "throttled requests": str(sum(stats["throttled"].values())),
        "other requests": str(sum(others.values())),
        **{f"  {op}": str(n) for op, n in sorted(others.items())},
        "failed while task ran": str(failed_while_running),
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
        f"\ntasks={args.jobs} duration={args.duration:g}s +-{args.spread:.0%} fail={args.fail_fraction:.0%} "
        f"poll={args.poll_interval}s API rate={args.rate:g}/s burst={args.burst or args.rate:g} "
        f"cap={args.cap:g}s seed={args.seed} cores={os.cpu_count()}"
    )
    summaries = {impl: summarize(impl, result, args.poll_interval) for impl, result in results.items()}
    names = list(dict.fromkeys(name for rows, _ in summaries.values() for name in rows))
    print(f"{'':34}" + "".join(f"{impl:>16}" for impl in summaries))
    for name in names:
        # a row missing from a table without error is a request count of zero
        cells = (rows.get(name, "-" if "error" in rows else "0") for rows, _ in summaries.values())
        print(f"{name:34}" + "".join(f"{cell:>16}" for cell in cells))
    for impl, (_, unexpected) in summaries.items():
        for event, arn in list(unexpected.items())[:5]:
            print(f"[{impl}] unexpected event, e.g. task {arn}: {event}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000, help="ECS tasks, one trigger each")
    parser.add_argument("--impl", choices=(*IMPLS, "both"), help="default: both if Amazon's provider imports")
    parser.add_argument("--poll-interval", type=int, default=30, help="poll_interval / waiter_delay, seconds")
    parser.add_argument("--duration", type=float, default=20.0, help="mean task duration, seconds")
    parser.add_argument("--spread", type=float, default=0.25, help="task durations vary by +- this fraction")
    parser.add_argument("--fail-fraction", type=float, default=0.05)
    parser.add_argument("--rate", type=float, default=20.0, help="endpoint's API requests/s before throttling")
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
    with tempfile.TemporaryDirectory(prefix="fleet-ecs-bench-") as workdir:
        results = {name: run_impl(name, args, Path(workdir)) for name in IMPLS if impl in (name, "both")}
    report(args, results)


if __name__ == "__main__":
    main()
