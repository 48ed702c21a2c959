"""The runner whose jobs and tasks are local processes standing in for their containers.

Each Batch job runs its job definition's :class:`Image` (an entrypoint on this machine) with the job's
``containerOverrides`` command as arguments and environment as the process's; what it prints (stdout and
stderr) is the job's CloudWatch log stream, its exit code the job's outcome. At most ``slots`` jobs run at
once; the others wait RUNNABLE, oldest first. A job that succeeds stays RUNNING for at least its ``hold``
seconds (its expected duration, compressed), so a fleet's durations look like a real one's::

    runner = ContainerRunner({"forecast": Image("forecast:1", (sys.executable, "model.py"))}, slots=4)
    with Endpoint(runner) as aws:
        ...

Given a ``command(kind, name, request)`` instead of images, every job and every ECS task runs as the argv it
returns, in this process's environment: ``ContainerRunner(command=command, slots=2)``.

A job of ``reclaims`` loses its first attempt's host 40 % into its hold, as in a Spot reclaim; its
``retryStrategy`` (attempts, ``evaluateOnExit``) decides, as Batch does, whether it goes back to the queue.
"""

from __future__ import annotations

import fnmatch
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from subprocess import DEVNULL, PIPE, STDOUT
from typing import Any

from .core import EXITED, AwsError, ms

INF = float("inf")
#: A container's exit code when its process was killed (as Docker reports SIGKILL).
KILLED = 137
#: ``command(kind, name, request)``: the argv that stands in for the container of a job or task.
Command = Callable[[str, str, dict[str, Any]], list[str]]


def host_terminated(rng: random.Random) -> str:
    """The status reason of an attempt whose Spot instance was reclaimed."""
    return f"Host EC2 (instance i-{rng.getrandbits(68):017x}) terminated."


@dataclass(frozen=True)
class Image:
    """What a job definition's container runs here: the image's name (as DescribeJobs shows it), its
    entrypoint, working directory and environment (the job definition's)."""

    uri: str
    entrypoint: tuple[str, ...]
    cwd: str | None = None
    environment: Mapping[str, str] = field(default_factory=dict)


def retries(strategy: Mapping[str, Any], attempt: int, status_reason: str, reason: str, exit_code: int | None) -> bool:
    """Whether Batch runs another attempt after ``attempt`` (1-based) failed, by the job's ``retryStrategy``:
    the first ``evaluateOnExit`` entry that matches decides, and none matching means retry."""
    if attempt >= int(strategy.get("attempts") or 1):
        return False
    for rule in strategy.get("evaluateOnExit") or []:
        checks = (
            (rule.get("onStatusReason"), status_reason),
            (rule.get("onReason"), reason),
            (rule.get("onExitCode"), "" if exit_code is None else str(exit_code)),
        )
        if all(pattern is None or fnmatch.fnmatchcase(value, pattern) for pattern, value in checks):
            return str(rule.get("action", "")).upper() == "RETRY"
    return True


class ContainerRun:
    """One job or task: its attempts as processes, its timeline (the :class:`~.core.Run` the endpoint renders)."""

    def __init__(
        self,
        command: list[str],
        environment: dict[str, str],
        container: dict[str, Any],
        cwd: str | None,
        hold: float,
        strategy: Mapping[str, Any],
        reclaim: str | None,
        lock: threading.RLock,
    ) -> None:
        self.lock = lock  # the runner's: its scheduler and TerminateJob change runs one at a time
        self.created = time.time()
        self.started = self.exits = self.ends = INF
        self.reason, self.stop_code = EXITED, "EssentialContainerExited"
        self.container = container
        self.earlier_attempts: list[dict[str, Any]] = []
        self.command, self.environment, self.cwd = command, environment, cwd
        self.hold, self.strategy = hold, strategy
        self.reclaim = reclaim  # the status reason of a first attempt lost to a Spot reclaim
        self.code: int | None = None
        self.lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    # -- the Run protocol --------------------------------------------------------------------------------

    def exit_code(self) -> int | None:
        return self.code

    def stop(self, now: float, reason: str) -> None:
        """TerminateJob: kill the attempt's process, if any; the job FAILED with ``reason``."""
        with self.lock:
            if now >= self.ends:
                return
            if self.process is not None:
                self._kill()
            if self.started <= now:  # the container runs (or stands for the rest of the job's duration)
                self.code = KILLED
            else:
                self.started = INF
            self.exits = self.ends = now
            self.reason, self.stop_code = reason, "UserInitiated"

    def log_lines(self) -> list[str]:
        return list(self.lines)

    # -- what the runner does ------------------------------------------------------------------------------

    @property
    def waiting(self) -> bool:
        return self.started == INF and self.ends == INF

    def holds_slot(self, now: float) -> bool:
        return self.process is not None or (self.started <= now < self.ends)

    def launch(self, now: float) -> None:
        """Start the next attempt's process now."""
        self.started = now
        self.process = subprocess.Popen(
            self.command, env=self.environment, cwd=self.cwd, stdin=DEVNULL, stdout=PIPE, stderr=STDOUT, text=True
        )
        self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        self._reader.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line.rstrip("\n"))

    def _kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self._finish_reading()

    def _finish_reading(self) -> None:
        if self._reader is not None:
            self._reader.join(5)
        self.process = None

    def tick(self, now: float) -> None:
        """Follow the attempt: a Spot reclaim (40 % into its hold), its process's exit, a retry."""
        if now < self.started or now >= self.ends:
            return
        if self.reclaim and not self.earlier_attempts and now >= self.started + 0.4 * self.hold:
            if self.process is not None:
                self._kill()
            self.code, self.exits, self.ends = None, INF, INF
            self._failed(now, self.reclaim, "", None)
            return
        code = None if self.process is None else self.process.poll()
        if code is None:
            return
        self._finish_reading()
        if code == 0:
            self.code = 0
            self.exits = self.ends = max(now, self.started + self.hold)
        else:
            self._failed(now, EXITED, "", code)

    def _failed(self, now: float, status_reason: str, reason: str, code: int | None) -> None:
        attempt = len(self.earlier_attempts) + 1
        if not retries(self.strategy, attempt, status_reason, reason, code):
            self.code, self.reason = code, status_reason
            self.exits = self.ends = now
            return
        container = {"exitCode": code, "reason": reason} if code is not None else {"reason": status_reason}
        self.earlier_attempts.append(
            {"container": container, "startedAt": ms(self.started), "stoppedAt": ms(now), "statusReason": status_reason}
        )
        self.lines.append(f"(attempt {attempt} ended: {status_reason})")
        self.started = INF  # back in the queue


@dataclass
class ContainerRunner:
    """Runs each Batch job as a local process of its job definition's :class:`Image`, ``slots`` at once.

    :param images: by job definition name.
    :param command: instead of ``images``: the argv of each job and each task, from its kind (``"job"`` or
        ``"task"``), name and request; the process gets this process's environment (or ``base_environment``).
    :param holds: by ``MODEL_ID``: the seconds a job that succeeds stays RUNNING at least (default
        ``default_hold``).
    :param reclaims: the ``MODEL_ID`` of jobs whose first attempt loses its host (a Spot reclaim).
    :param base_environment: what every process gets besides the job's environment (default: ``PATH``).
    """

    images: Mapping[str, Image] = field(default_factory=dict)
    command: Command | None = None
    slots: int = 4
    holds: Mapping[str, float] = field(default_factory=dict)
    default_hold: float = 0.0
    reclaims: frozenset[str] = frozenset()
    base_environment: Mapping[str, str] | None = None
    seed: int = 0
    runs: list[ContainerRun] = field(default_factory=list, init=False)
    random: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)
        self.lock = threading.RLock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._schedule, name="container-runner", daemon=True)
        self.thread.start()

    def start(self, kind: str, name: str, request: dict[str, Any]) -> ContainerRun:
        if self.command is None:  # the job definition's image, with the job's environment and PATH only
            argv, variables, container, cwd = self._image_process(kind, request)
            base: Mapping[str, str] = {"PATH": os.environ.get("PATH", "")}
        else:  # the process that command() names, in this process's environment
            argv, variables, container, cwd = self.command(kind, name, request), {}, {}, None
            base = os.environ
        model = variables.get("MODEL_ID", "")
        run = ContainerRun(
            command=argv,
            environment={**(base if self.base_environment is None else self.base_environment), **variables},
            container=container,
            cwd=cwd,
            hold=self.holds.get(model, self.default_hold),
            strategy=request.get("retryStrategy") or {},
            reclaim=host_terminated(self.random) if model in self.reclaims else None,
            lock=self.lock,
        )
        with self.lock:
            self.runs.append(run)
        return run

    def _image_process(
        self, kind: str, request: dict[str, Any]
    ) -> tuple[list[str], dict[str, str], dict[str, Any], str | None]:
        """A job's argv, environment, container (as DescribeJobs shows it) and directory, by its image."""
        if kind != "job":
            raise AwsError(400, "UnsupportedFeatureException", "this endpoint runs only Batch jobs as processes")
        definition = str(request.get("jobDefinition", "")).rsplit("/", 1)[-1].partition(":")[0]
        image = self.images.get(definition)
        if image is None:
            raise AwsError(400, "ClientException", f"Job definition {definition} not found")
        overrides = request.get("containerOverrides") or {}
        variables = {**image.environment, **{e["name"]: e["value"] for e in overrides.get("environment") or []}}
        command = [str(part) for part in overrides.get("command") or []]
        container = {
            "image": image.uri,
            "command": command,
            "environment": [{"name": k, "value": v} for k, v in variables.items()],
            "resourceRequirements": list(overrides.get("resourceRequirements") or []),
        }
        return [*image.entrypoint, *command], variables, container, image.cwd

    def _schedule(self) -> None:
        while not self.stopped.wait(0.1):
            self.step(time.time())

    def step(self, now: float) -> None:
        """Follow the running processes, then start the oldest waiting jobs while slots are free."""
        with self.lock:
            for run in self.runs:
                run.tick(now)
            busy = sum(1 for run in self.runs if run.holds_slot(now))
            for run in self.runs:
                if busy >= self.slots:
                    break
                if run.waiting:
                    run.launch(now)
                    busy += 1
            self.runs = [run for run in self.runs if run.ends == INF or now - run.ends < 60]  # the rest ended

    def close(self) -> None:
        """Stop scheduling and kill every process still running."""
        self.stopped.set()
        self.thread.join(5)
        with self.lock:
            for run in self.runs:
                if run.process is not None:
                    run.stop(time.time(), "the endpoint stopped")

    def __enter__(self) -> ContainerRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
