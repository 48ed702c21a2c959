"""Runs that are local processes: a job's stdout is its CloudWatch log, its exit code its outcome."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .core import EXITED

INF = float("inf")
#: ``command(kind, name, request)``: the argv that stands in for the container of a job or task.
Command = Callable[[str, str, dict[str, Any]], list[str]]


@dataclass
class ProcessRun:
    """One job or task as a local process; RUNNABLE (PROVISIONING) until a slot frees up."""

    argv: list[str]
    created: float = field(default_factory=time.time)
    started: float = INF
    exits: float = INF
    ends: float = INF
    reason: str = EXITED
    stop_code: str = "EssentialContainerExited"
    lines: list[str] = field(default_factory=list)
    returncode: int | None = None
    process: subprocess.Popen[str] | None = None
    stopped: bool = False
    container: dict[str, Any] = field(default_factory=dict)
    earlier_attempts: list[dict[str, Any]] = field(default_factory=list)

    def exit_code(self) -> int | None:
        return self.returncode

    def stop(self, now: float, reason: str) -> None:
        if now >= self.exits:
            return
        self.stopped, self.reason, self.stop_code = True, reason, "UserInitiated"
        if self.process is None:  # never started: it ends now, without an exit code
            self.exits = self.ends = now
        else:
            self.process.terminate()

    def log_lines(self) -> list[str]:
        return list(self.lines)

    def run(self) -> None:
        """Run the process to its end (in a runner's worker thread), keeping what it prints."""
        if self.stopped:
            return
        self.process = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.started = time.time()
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
        self.returncode = self.process.wait()
        self.exits = self.ends = time.time()


class ProcessRunner:
    """Runs each job or task as ``command(kind, name, request)``, at most ``concurrency`` at once.

    Pass it as the endpoint's runner: ``Endpoint(ProcessRunner(command, concurrency=2))``.
    """

    def __init__(self, command: Command, concurrency: int = 2) -> None:
        self.command = command
        self._queue: queue.Queue[ProcessRun] = queue.Queue()
        for number in range(concurrency):
            threading.Thread(target=self._work, name=f"process-runner-{number}", daemon=True).start()

    def start(self, kind: str, name: str, request: dict[str, Any]) -> ProcessRun:
        run = ProcessRun(self.command(kind, name, request))
        self._queue.put(run)
        return run

    def _work(self) -> None:
        while True:
            self._queue.get().run()
