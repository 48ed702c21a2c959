"""The endpoint: one aiohttp server on 127.0.0.1 for Batch, ECS, CloudWatch Logs and STS.

Requests are told apart as AWS clients send them: Batch by its REST path (``POST /v1/describejobs``),
ECS and Logs by ``X-Amz-Target`` (JSON 1.1), STS by the form's ``Action`` (query protocol). Paths may
start with a caller prefix (``/<caller>/v1/describejobs``): an ``endpoint_url`` ending in ``/<caller>``
tells which process asked. Control routes (not AWS) live under ``/_endpoint/``.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from .batch import Batch
from .core import CREATING_OPERATIONS, EXPIRED_TOKEN, AwsError, Call, Faults, Runner, Timeline, TokenBucket
from .ecs import Ecs
from .logs import Logs
from .sts import Sts

TARGETS = {"AmazonEC2ContainerServiceV20141113": "ecs", "Logs_20140328": "logs"}
JSON_11 = "application/x-amz-json-1.1"
#: What a rate limit or the throttle switch answers, per service: HTTP status, error code, message.
THROTTLED = {
    "batch": (429, "TooManyRequestsException", "Too Many Requests"),
    "ecs": (400, "ThrottlingException", "Rate exceeded"),
    "logs": (400, "ThrottlingException", "Rate exceeded"),
}
#: The services the ``throttle_seconds`` and ``server_error_seconds`` switches act on (Logs only has its limit).
SWITCHED = ("batch", "ecs")
#: The operations whose ids per call the endpoint counts.
DESCRIBES = {"DescribeJobs": "jobs", "DescribeTasks": "tasks"}
_CREDENTIAL = re.compile(r"Credential=([^/]*)/[^/]+/([^/]+)/")

Operation = Callable[[Call], Any]


class AnswerDropped(Exception):
    """Raised by :meth:`Endpoint.answer` for a call that was done and whose answer is lost with its connection."""


@dataclass
class DescribeStats:
    """Every request of one Describe operation (throttled or not), and the ids the answered ones asked for."""

    times: list[float] = field(default_factory=list)
    ids: int = 0
    max_ids: int = 0


class Endpoint:
    """State, script and counters of the endpoint; in-process as a context manager, ``url`` once started.

    ``runner`` decides how submitted jobs and started tasks run (e.g. :class:`~.core.WallClockRunner`);
    without one they keep the states a test scripts.
    """

    def __init__(self, runner: Runner | None = None, keep_requests: bool = True) -> None:
        self.lock = threading.RLock()
        self.faults = Faults()
        self.batch = Batch(self.lock, runner, self.faults)
        self.ecs = Ecs(self.lock, runner, self.faults)
        self.sts = Sts(self.faults)
        self.logs = Logs([self.batch.log_stream, self.ecs.log_stream])
        #: per operation: the function answering it (wrap one to script a sequence of answers)
        self.operations: dict[str, Operation] = {
            **self.batch.operations(),
            **self.ecs.operations(),
            **self.logs.operations(),
            **self.sts.operations(),
        }
        #: per service (``"batch"``, ``"ecs"``, ``"logs"``): a token bucket; over it, requests are throttled
        self.rate_limits: dict[str, TokenBucket] = {}
        #: calls answered per operation, by the service or by a scripted failure (:meth:`fail_next`)
        self.calls: Counter[str] = Counter()
        #: calls refused by a rate limit or the throttle switch, per operation
        self.throttled: Counter[str] = Counter()
        #: calls answered per ``(caller, operation)``
        self.callers: Counter[tuple[str, str]] = Counter()
        #: calls done whose answer was lost (``faults.lose_answers``), per ``(operation, mode)``
        self.lost_answers: Counter[tuple[str, str]] = Counter()
        self.keep_requests = keep_requests
        #: ``(operation, request body)`` of every answered call, if ``keep_requests``
        self.requests: list[tuple[str, dict[str, Any]]] = []
        #: ``(operation, region the request was signed for)`` of every answered call, if ``keep_requests``
        self.regions: list[tuple[str, str]] = []
        self.describes = {operation: DescribeStats() for operation in DESCRIBES}
        self.failures: dict[str, list[tuple[int, str]]] = {}
        self.held: list[dict[str, Any]] = []  # SubmitJob calls held back: job name and id, client port
        self.url = ""
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None

    # -- scripting ---------------------------------------------------------------------------------------

    def limit(self, service: str, rate: float, burst: float = 0.0) -> None:
        """Throttle ``service`` (``"batch"``, ``"ecs"`` or ``"logs"``: GetLogEvents, ``ThrottlingException``)
        beyond ``rate`` requests/s, bursts of ``burst``."""
        self.rate_limits[service] = TokenBucket(rate, burst or rate)

    def fail_next(
        self, operation: str, times: int = 1, status: int = 429, code: str = "TooManyRequestsException"
    ) -> None:
        """Answer the next ``times`` calls of ``operation`` (e.g. ``DescribeJobs``) with an error."""
        with self.lock:
            self.failures.setdefault(operation, []).extend([(status, code)] * times)

    def lose_answers(
        self,
        operations: Collection[str] = CREATING_OPERATIONS,
        fraction: float = 0.0,
        next: int = 0,
        mode: str = "500",
        seed: int = 0,
    ) -> None:
        """Do the calls of ``operations``, then lose the answers of the ``next`` ones and of a seeded ``fraction``
        of the others: ``mode`` ``"500"`` answers a 500 ``ServerException``, ``"drop"`` drops the connection
        (see :class:`~airflow_ml_batch.testing.endpoint.core.LostAnswers`; ``faults.lose_answers = None``
        switches it off)."""
        settings = {"operations": operations, "fraction": fraction, "next": next, "mode": mode, "seed": seed}
        with self.lock:
            self.faults.update({"lose_answers": settings})

    def stats(self) -> dict[str, Any]:
        """The counters, as ``GET /_endpoint/stats`` returns them."""
        with self.lock:
            callers: dict[str, dict[str, int]] = {}
            for (caller, operation), n in self.callers.items():
                callers.setdefault(caller, {})[operation] = n
            lost: Counter[str] = Counter()
            lost_by_mode: dict[str, dict[str, int]] = {}
            for (operation, mode), n in self.lost_answers.items():
                lost[operation] += n
                lost_by_mode.setdefault(mode, {})[operation] = n
            return {
                "calls": dict(self.calls),
                "throttled": dict(self.throttled),
                "callers": callers,
                "describe_times": {op: s.times for op, s in self.describes.items()},
                "described_ids": {op: s.ids for op, s in self.describes.items()},
                "max_ids_per_call": {op: s.max_ids for op, s in self.describes.items()},
                "submits": dict(self.batch.submits),
                "terminated": self.batch.terminated,
                "terminated_by": self.batch.terminated_by,
                "held": self.held,
                "rejected_credentials": self.sts.rejected_credentials,
                "lost_answers": dict(lost),
                "lost_answers_by_mode": lost_by_mode,
            }

    def runs(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every runner-driven job (``kind`` ``"jobs"``) or task (``"tasks"``): name and timeline."""
        with self.lock:
            service = self.batch if kind == "jobs" else self.ecs
            records = self.batch.jobs if kind == "jobs" else self.ecs.tasks
            return {
                key: {
                    "name": records[key].get("jobName") or records[key].get("startedBy", ""),
                    "created": run.created,
                    "started": run.started,
                    "exits": run.exits,
                    "ends": run.ends,
                    "fails": run.exit_code() != 0,
                }
                for key, run in service.runs.items()
            }

    # -- answering ---------------------------------------------------------------------------------------

    def answer(self, call: Call) -> tuple[int, Any]:
        """Answer one call: ``(HTTP status, answer)``, where an error answer is an
        :class:`~airflow_ml_batch.testing.endpoint.core.AwsError`; :class:`AnswerDropped` when the call was done
        and its answer is to be dropped with the connection (``faults.lose_answers``)."""
        with self.lock:
            describe = self.describes.get(call.operation)
            if describe is not None:
                describe.times.append(time.time())
            if call.service != "sts" and not self.sts.accepts(call.access_key):
                return 403 if call.service == "batch" else 400, AwsError(0, "ExpiredTokenException", EXPIRED_TOKEN)
            throttled = THROTTLED.get(call.service)
            bucket = self.rate_limits.get(call.service)
            switched = call.service in SWITCHED
            if throttled and (
                (switched and time.time() < self.faults.throttle_until) or (bucket is not None and not bucket.take())
            ):
                self.throttled[call.operation] += 1
                return throttled[0], AwsError(*throttled)
            self.calls[call.operation] += 1
            self.callers[(call.caller, call.operation)] += 1
            if self.keep_requests:
                self.requests.append((call.operation, call.body))
                self.regions.append((call.operation, call.region))
            if describe is not None:
                ids = len(call.body.get(DESCRIBES[call.operation]) or [])
                describe.ids += ids
                describe.max_ids = max(describe.max_ids, ids)
            pending = self.failures.get(call.operation)
            if pending:
                status, code = pending.pop(0)
                return status, AwsError(status, code, f"{code} (injected)")
            if switched and time.time() < self.faults.server_errors_until:
                return 500, AwsError(500, "ServerException", "Internal Server Error")
            try:
                answer = self.operations[call.operation](call)
            except AwsError as error:
                return error.status, error
            if call.operation == "SubmitJob" and self.faults.fails_job(answer["jobName"]):
                run = self.batch.runs.get(answer["jobId"])
                if isinstance(run, Timeline):  # a wall-clock run; a process's exit code is its own
                    run.fails = True
            lose = self.faults.lose_answers
            # Only a call that did its work loses its answer: not one refused above, nor a RunTask that started
            # no task (its failures are its answer).
            started_nothing = isinstance(answer, dict) and answer.get("tasks") == []
            if lose is not None and not started_nothing and lose.loses(call.operation):
                self.lost_answers[(call.operation, lose.mode)] += 1
                if lose.mode == "drop":
                    raise AnswerDropped(call.operation)
                return 500, AwsError(500, "ServerException", "Internal Server Error")
            return 200, answer

    async def handle(self, request: web.Request) -> web.Response:
        """Any AWS request: find the service and operation, answer it in the service's protocol."""
        parts = request.path.strip("/").split("/")
        authorization = _CREDENTIAL.search(request.headers.get("Authorization", ""))
        key, region = authorization.groups() if authorization else ("", "")
        target = request.headers.get("X-Amz-Target", "")
        if len(parts) >= 2 and parts[-2] == "v1":
            service, caller = "batch", "/".join(parts[:-2])
            operation = _BATCH_PATHS.get(parts[-1], parts[-1])
            body = json.loads(await request.text() or "{}")
        elif target:
            prefix, _, operation = target.partition(".")
            service, caller = TARGETS.get(prefix, prefix), "/".join(parts)
            body = json.loads(await request.text() or "{}")
        else:
            form = parse_qs(await request.text())
            service, caller = "sts", "/".join(parts)
            operation = form.get("Action", [""])[0]
            body = {name: values[0] for name, values in form.items()}
        if operation not in self.operations:
            return _render(service, 400, AwsError(400, "UnknownOperationException", f"{operation} is not served"))
        call = Call(service, operation, body, caller=caller, region=region, access_key=key)
        try:
            status, answer = self.answer(call)
        except AnswerDropped:  # done; the client gets its connection reset, as from ``unreachable``
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError from None
        held = (
            operation == "SubmitJob"
            and (body.get("tags") or {}).get("airflow:map_index") in self.faults.hold_map_indexes
        )
        if held and status == 200:  # the job exists; the answer comes late (the client may be gone by then)
            peer = request.transport.get_extra_info("peername") if request.transport else None
            with self.lock:
                self.held.append({"job_name": answer["jobName"], "job_id": answer["jobId"], "port": peer and peer[1]})
            await asyncio.sleep(self.faults.hold_seconds)
        return _render(service, status, answer)

    def app(self) -> web.Application:
        """The aiohttp application: the control routes, then every AWS request."""

        async def control(request: web.Request) -> web.Response:
            name = request.match_info["name"]
            body = await request.json() if request.method == "POST" else {}
            with self.lock:
                if name in ("jobs", "tasks") and request.method == "POST":
                    prefix, count = body.get("name_prefix", "job" if name == "jobs" else "task"), int(body["count"])
                    start = self.batch.run_job if name == "jobs" else self.ecs.run_task
                    return web.json_response({"ids": [start(f"{prefix}-{i}") for i in range(count)]})
                if name in ("jobs", "tasks"):
                    return web.json_response(self.runs(name))
                if name == "stats":
                    return web.json_response(self.stats())
                if name == "describers":
                    return web.json_response(self.batch.describers)
                if name == "faults":
                    self.faults.update(body)
                    return web.json_response({"ok": True})
                if name == "fail-next":
                    self.fail_next(**body)
                    return web.json_response({"ok": True})
            raise web.HTTPNotFound()

        @web.middleware
        async def unreachable(request: web.Request, handler: Any) -> web.StreamResponse:
            """While the endpoint is "unreachable", AWS requests get their connection reset, unanswered."""
            if time.time() < self.faults.unreachable_until and not request.path.startswith("/_endpoint/"):
                with self.lock:
                    self.calls["connection reset"] += 1
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError  # aiohttp drops the request without writing to the dead transport
            response: web.StreamResponse = await handler(request)
            return response

        app = web.Application(middlewares=[unreachable], client_max_size=64 * 2**20)
        app.router.add_route("*", "/_endpoint/{name}", control)
        app.router.add_post("/{tail:.*}", self.handle)
        return app

    # -- serving -----------------------------------------------------------------------------------------

    async def serve(
        self, port: int = 0, ready: Callable[[int], None] | None = None, seconds: float = float("inf")
    ) -> None:
        """Serve on 127.0.0.1:``port`` (0: a free one) for ``seconds`` or until stopped; ``ready(port)`` once up."""
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
        await site.start()
        self._stopped = asyncio.Event()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        if ready is not None:
            ready(runner.addresses[0][1])
        try:
            await asyncio.wait_for(self._stopped.wait(), None if seconds == float("inf") else seconds)
        except asyncio.TimeoutError:
            pass
        finally:
            await runner.cleanup()

    def __enter__(self) -> Endpoint:
        started = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.serve(ready=lambda _: started.set()))
            self._loop.close()

        self._thread = threading.Thread(target=run, name="aws-endpoint", daemon=True)
        self._thread.start()
        if not started.wait(30):
            raise RuntimeError("the endpoint did not start listening")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(30)


_BATCH_PATHS = {
    "submitjob": "SubmitJob",
    "describejobs": "DescribeJobs",
    "listjobs": "ListJobs",
    "terminatejob": "TerminateJob",
}


def _render(service: str, status: int, answer: Any) -> web.Response:
    """``answer`` (a dict, STS's XML, or an :class:`~airflow_ml_batch.testing.endpoint.core.AwsError`) in the
    wire format of ``service``."""
    if service == "sts":
        if isinstance(answer, AwsError):
            xml = (
                f"<ErrorResponse><Error><Type>Sender</Type><Code>{answer.code}</Code><Message>{answer.message}"
                "</Message></Error><RequestId>local</RequestId></ErrorResponse>"
            )
            return web.Response(status=status, text=xml, content_type="text/xml")
        return web.Response(status=status, text=answer, content_type="text/xml")
    content_type = "application/json" if service == "batch" else JSON_11
    if isinstance(answer, AwsError):
        body = {"__type": answer.code, "message": answer.message, **answer.fields}
        return web.Response(
            status=status, text=json.dumps(body), content_type=content_type, headers={"x-amzn-ErrorType": answer.code}
        )
    return web.Response(status=status, text=json.dumps(answer), content_type=content_type)
