"""Every process a command started, found by a marker in its environment, and how a stop signal ends them.

A process inherits its parent's environment, so the marker set on the driver reaches everything the driver
starts: the local Ray instance (GCS, raylet, dashboard and agents), Ray's workers, vLLM's engine processes,
DeepSpeed's; and through a job's runtime env, everything a submitted job starts on a cluster. Walking the whole
process table rather than the driver's children also finds what a dead parent left, which was reparented.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

MARK = "WRPO_TEST_PROCESS_MARK"

NODE_PROCESSES = ("gcs_server", "raylet", "dashboard", "agent", "log_monitor", "monitor.py")


def new_mark() -> str:
    return uuid.uuid4().hex[:16]


def marked(mark: str) -> list[psutil.Process]:
    procs = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(MARK) == mark:
                procs.append(p)
        except psutil.Error:
            continue
    return procs


def role(p: psutil.Process) -> str:
    """What a process is, in the words of the issue: Ray node process, Ray worker, vLLM engine process, other."""
    try:
        cmd = p.cmdline()
    except psutil.Error:
        return "gone"
    head = cmd[0] if cmd else p.name()
    line = " ".join(cmd)
    if head.startswith("VLLM::") or "EngineCore" in line:
        return "vllm"
    if head.startswith("ray::"):
        return "ray worker"
    if any(name in line for name in NODE_PROCESSES) and "ray" in line:
        return "ray node"
    if "wrpo-ray" in line or "wrpo_ray" in line or "jobs.run" in line:
        return "driver"
    return "other"


def census(procs: list[psutil.Process]) -> dict[str, int]:
    return dict(Counter(r for r in map(role, procs) if r != "gone"))


@dataclass
class Stop:
    """One run of a command and what it took to end it."""

    before: dict[str, int]
    after: dict[str, int]
    returncode: int
    driver_exit_s: float
    all_gone_s: float | None
    output: str
    leftovers: list[str] = field(default_factory=list)


class Driver:
    """A command started in its own session (so a signal can go to its whole process group), with a marker."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None):
        self.mark = new_mark()
        self.log = log
        full_env = {**os.environ, **(env or {}), MARK: self.mark}
        self._log_file = open(log, "w")  # noqa: SIM115 (closed in _settle)
        self.proc = subprocess.Popen(argv, env=full_env, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=cwd, preexec_fn=_interruptible)

    def processes(self) -> list[psutil.Process]:
        return marked(self.mark)

    def wait_for(self, ready: Callable[[list[psutil.Process]], bool], timeout: float) -> bool:
        """Polls until `ready(processes)`; False if the driver ended first or the time ran out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if ready(self.processes()):
                return True
            time.sleep(0.5)
        return False

    def stop(self, how: str, grace: float = 30.0) -> Stop:
        """Sends `how` (int-group, term, kill, term-then-kill-group, none), waits for the driver, then up to
        `grace` seconds for every marked process to end; kills what is left (so a failing test cleans up)."""
        before = census(self.processes())
        t0 = time.monotonic()
        pid = self.proc.pid
        if how == "int-group":
            os.killpg(pid, signal.SIGINT)
        elif how == "term":
            os.kill(pid, signal.SIGTERM)
        elif how == "kill":
            os.kill(pid, signal.SIGKILL)
        elif how == "term-then-kill-group":
            os.killpg(pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        elif how != "none":
            raise ValueError(how)
        try:
            returncode = self.proc.wait(timeout=600)
        except subprocess.TimeoutExpired:  # it did not stop: end it, and everything it started, before failing
            os.killpg(pid, signal.SIGKILL)
            returncode = self.proc.wait()
        driver_exit = time.monotonic() - t0
        return self._settle(before, returncode, driver_exit, t0, grace)

    def _settle(self, before, returncode, driver_exit, t0, grace) -> Stop:
        gone_at = None
        left: list[psutil.Process] = []
        while time.monotonic() - t0 < driver_exit + grace:
            left = self.processes()
            if not left:
                gone_at = time.monotonic() - t0
                break
            time.sleep(0.25)
        leftovers = [f"{p.pid} {role(p)} {' '.join(_cmdline(p))[:120]}" for p in left]
        after = census(left)
        for p in left:
            try:
                p.kill()
            except psutil.Error:
                pass
        self._log_file.close()
        return Stop(before, after, returncode, round(driver_exit, 2), gone_at and round(gone_at, 2),
                    self.log.read_text(errors="replace"), leftovers)


def _interruptible() -> None:
    """In the child: Ctrl-C acts as in a terminal's foreground command. A test run started in the background by
    a non-interactive shell inherits SIGINT ignored, and the driver would ignore the Ctrl-C the tests send."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def named(procs: list[psutil.Process], text: str) -> bool:
    return any(text in " ".join(_cmdline(p)) for p in procs)
