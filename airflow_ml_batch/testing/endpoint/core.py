"""What every service of the endpoint shares: errors, calls, rate limits, fault switches and job runs."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

REGION = "eu-west-1"
ACCOUNT = "123456789012"
EXITED = "Essential container in task exited"
EXPIRED_TOKEN = "The security token included in the request is expired"


class AwsError(Exception):
    """An error answer: HTTP ``status``, AWS error ``code`` and ``message``, rendered in the service's protocol;
    ``fields``: the error's modelled members besides the message (e.g. ECS ``resourceIds``)."""

    def __init__(self, status: int, code: str, message: str, fields: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.fields = dict(fields or {})


@dataclass
class Call:
    """One API request as the services see it."""

    service: str  # "batch", "ecs", "logs" or "sts"
    operation: str  # e.g. "DescribeJobs"
    body: dict[str, Any]
    caller: str = ""  # the path prefix of ``endpoint_url`` (``http://127.0.0.1:port/<caller>``), if any
    region: str = ""  # the region the request was signed for
    access_key: str = ""


def ms(seconds: float) -> int:
    """Epoch seconds as the epoch milliseconds Batch sends."""
    return int(seconds * 1000)


@dataclass
class TokenBucket:
    """``rate`` requests per second, bursts of up to ``capacity``."""

    rate: float
    capacity: float
    tokens: float = field(init=False)
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.capacity

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


#: The operations whose answers :class:`LostAnswers` loses unless told others: the ones that create a job or task.
CREATING_OPERATIONS = ("SubmitJob", "RunTask")
#: How an answer is lost: a 500 ``ServerException`` after the work was done, or the connection dropped unanswered.
LOSS_MODES = ("500", "drop")


@dataclass
class LostAnswers:
    """Calls of ``operations`` that are done (the job or task exists) and whose answer is then lost.

    The ``next`` such calls lose theirs; after them, each loses it with probability ``fraction``, drawn from a
    ``random.Random(seed)`` (the same calls lose their answers in every run with the same seed). ``mode``
    ``"500"`` answers HTTP 500 ``ServerException``; ``"drop"`` aborts the connection without an answer.
    """

    operations: Collection[str] = CREATING_OPERATIONS
    fraction: float = 0.0
    next: int = 0
    mode: str = "500"
    seed: int = 0
    random: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.operations = frozenset([self.operations] if isinstance(self.operations, str) else self.operations)
        self.fraction, self.next, self.mode = float(self.fraction), int(self.next), str(self.mode)
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction must be between 0 and 1, not {self.fraction}")
        if self.next < 0:
            raise ValueError(f"next must not be negative, not {self.next}")
        if self.mode not in LOSS_MODES:
            raise ValueError(f"mode must be one of {LOSS_MODES}, not {self.mode!r}")
        self.random = random.Random(self.seed)

    def loses(self, operation: str) -> bool:
        """Whether the answer to a done call of ``operation`` is lost (counts down ``next``, then draws)."""
        if operation not in self.operations:
            return False
        if self.next:
            self.next -= 1
            return True
        return self.random.random() < self.fraction


@dataclass
class Faults:
    """Fault switches; times are epoch seconds."""

    throttle_until: float = 0.0  # every Batch and ECS call is throttled until then
    unreachable_until: float = 0.0  # every AWS request has its connection reset until then
    server_errors_until: float = 0.0  # every Batch and ECS call is answered 500 until then
    hold_map_indexes: set[str] = field(default_factory=set)  # SubmitJob of these tasks answers late
    hold_seconds: float = 0.0
    credential_ttl: float = 0.0  # > 0: AssumeRole credentials expire after this long, and are checked
    fail_job_names: str = ""  # a regular expression: a Batch job whose name it is found in is scripted to fail
    lose_answers: LostAnswers | None = None  # calls that are done, then answered 500 or dropped unanswered
    list_lag_seconds: float = 0.0  # ListJobs and ListTasks list a job (task) this long after its creation

    def update(self, body: dict[str, Any]) -> None:
        """Switch faults on: ``throttle_seconds``, ``unreachable_seconds``, ``server_error_seconds`` (from
        now), ``hold_submit`` (``{"map_indexes", "seconds"}``), ``credential_ttl``, ``fail_job_names`` (a
        regular expression: each job SubmitJob starts from then on whose name it is found in fails at its
        end, as a ``--fail-fraction`` failure does; ``""`` or ``None`` switches it off).

        ``lose_answers``: ``{"operations": ["SubmitJob", "RunTask"], "fraction": 0.05, "next": 0, "mode":
        "500", "seed": 0}`` (each key optional, see :class:`LostAnswers`; ``None`` switches it off).
        ``list_lag_seconds``: ListJobs and ListTasks leave out jobs and tasks younger than this, as AWS's
        eventually consistent listings do (Describe calls see them at once; ``0`` switches it off)."""
        now = time.time()
        if "throttle_seconds" in body:
            self.throttle_until = now + float(body["throttle_seconds"])
        if "unreachable_seconds" in body:
            self.unreachable_until = now + float(body["unreachable_seconds"])
        if "server_error_seconds" in body:
            self.server_errors_until = now + float(body["server_error_seconds"])
        if "hold_submit" in body:
            self.hold_map_indexes = {str(i) for i in body["hold_submit"]["map_indexes"]}
            self.hold_seconds = float(body["hold_submit"]["seconds"])
        if "credential_ttl" in body:
            self.credential_ttl = float(body["credential_ttl"])
        if "fail_job_names" in body:
            pattern = str(body["fail_job_names"] or "")
            re.compile(pattern)  # a bad expression fails the switch, not each SubmitJob
            self.fail_job_names = pattern
        if "lose_answers" in body:
            settings = body["lose_answers"]
            self.lose_answers = None if settings is None else LostAnswers(**settings)
        if "list_lag_seconds" in body:
            self.list_lag_seconds = float(body["list_lag_seconds"] or 0.0)

    def fails_job(self, name: str) -> bool:
        """Whether a job named ``name`` is scripted to fail (``fail_job_names``)."""
        return bool(self.fail_job_names) and re.search(self.fail_job_names, name) is not None


# -- how a job or task runs -------------------------------------------------------------------------------


class Run(Protocol):
    """How one Batch job or ECS task runs: its timeline (epoch seconds, ``inf`` while not known) and outcome.

    The endpoint renders states, timestamps, exit codes and log streams from it on every Describe call.
    ``exits`` is when the container exited (ECS: DEPROVISIONING until ``ends``, STOPPED after). A Batch
    job whose ``started`` is ``inf`` (not placed yet, or back in the queue for another attempt) is RUNNABLE.
    """

    created: float
    started: float
    exits: float
    ends: float
    reason: str
    stop_code: str
    #: what DescribeJobs shows of the container besides its exit code and log stream (image, environment, ...)
    container: dict[str, Any]
    #: Batch ``attempts`` entries of the runs before the current one (its retry strategy's attempts)
    earlier_attempts: list[dict[str, Any]]

    def exit_code(self) -> int | None:
        """The container's exit code once it exited (``None``: stopped before it started)."""

    def stop(self, now: float, reason: str) -> None:
        """TerminateJob / StopTask: end the run now with ``reason``."""

    def log_lines(self) -> list[str]:
        """What the container printed so far: its CloudWatch log stream."""


class Runner(Protocol):
    """Decides how each submitted job (``kind`` ``"job"``) or started task (``"task"``) runs.

    ``request`` is the SubmitJob (RunTask) request. :class:`WallClockRunner` scripts runs on the clock;
    :class:`~airflow_ml_batch.testing.endpoint.container_runner.ContainerRunner` runs local processes: their
    output as the log, their exit code as the outcome.
    """

    def start(self, kind: str, name: str, request: dict[str, Any]) -> Run: ...


@dataclass
class Timeline:
    """A run scripted on the wall clock: it starts, exits and ends at set times and fails or succeeds."""

    created: float
    started: float
    exits: float
    ends: float
    fails: bool
    reason: str = EXITED
    stop_code: str = "EssentialContainerExited"
    drain: float = 0.0  # how long a stopped run takes to end (ECS: DEPROVISIONING)
    container: dict[str, Any] = field(default_factory=dict)
    earlier_attempts: list[dict[str, Any]] = field(default_factory=list)

    def exit_code(self) -> int | None:
        if self.started == float("inf"):
            return None
        return 1 if self.fails else 0

    def stop(self, now: float, reason: str) -> None:
        if now >= self.exits:
            return
        self.exits, self.ends, self.fails = now, now + self.drain, True
        self.reason, self.stop_code = reason, "UserInitiated"
        if now < self.started:
            self.started = float("inf")

    def log_lines(self) -> list[str]:
        return ["model run", "Traceback: ValueError: bad input"] if self.fails else ["model run"]


def environment_of(request: dict[str, Any]) -> dict[str, str]:
    """The container environment a SubmitJob or RunTask request sets (every container's, for ECS)."""
    overrides = [request.get("containerOverrides") or {}]
    overrides += (request.get("overrides") or {}).get("containerOverrides") or []
    return {e["name"]: str(e.get("value", "")) for o in overrides for e in o.get("environment") or []}


@dataclass
class WallClockRunner:
    """Runs last ``duration`` seconds +- ``spread`` (a fraction), and ``fail_fraction`` of them fail.

    A long tail: ``long_fraction`` of the runs last ``long_factor`` times as long (e.g. ``0.05`` and ``9.0``:
    one run in twenty takes nine times the duration). It is off by default; which runs are long is drawn
    from a second random stream of the same ``seed``, so a run with the tail has the same durations and
    failures as one without it, save the long runs' length. With ``long_env``, the request says instead:
    a job (task) whose container environment sets that variable to ``1`` is long (a DAG that knows its
    long models, as a user who runs the longest expected jobs first).

    The container starts a quarter into the run; an ECS container exits at 90 % (then DEPROVISIONING).
    """

    duration: float = 20.0
    spread: float = 0.25
    fail_fraction: float = 0.0
    seed: int = 0
    long_fraction: float = 0.0
    long_factor: float = 10.0
    long_env: str | None = None
    long_random: random.Random = field(init=False)  # which runs are long
    random: random.Random = field(init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.long_fraction <= 1.0:
            raise ValueError(f"long_fraction must be between 0 and 1, not {self.long_fraction}")
        if self.long_factor <= 0:
            raise ValueError(f"long_factor must be positive, not {self.long_factor}")
        self.random = random.Random(self.seed)
        self.long_random = random.Random(f"long tail {self.seed}")

    def start(self, kind: str, name: str, request: dict[str, Any]) -> Timeline:
        now = time.time()
        duration = self.duration * self.random.uniform(1 - self.spread, 1 + self.spread)
        fails = self.random.random() < self.fail_fraction
        if self.long_env is not None:
            if environment_of(request).get(self.long_env) == "1":
                duration *= self.long_factor
        elif self.long_fraction and self.long_random.random() < self.long_fraction:
            duration *= self.long_factor
        task = kind == "task"
        return Timeline(
            created=now,
            started=now + 0.25 * duration,
            exits=now + (0.9 if task else 1.0) * duration,
            ends=now + duration,
            fails=fails,
            drain=2.0 if task else 0.0,
        )
