"""The fine-tuning job program as a child process: spawn, relay, stop, and why it failed.

`python -m ollmlx_worker.training JOB.json` writes one JSON status line a line on stdout
(its protocol is in workers/training.py); stderr is its log, whose tail explains a crash.
It stops at its next iteration boundary when its stdin closes or it gets SIGTERM, and
exits 0 (done), 1 (failed), 2 (bad job or record: a 400) or 130 (cancelled).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import StatusError
from ..finetune_memory import format_bytes
from ..finetune_plan import EXIT_CANCELLED
from .openblas import with_openblas

log = logging.getLogger("ollmlx.training")

# A stopped job ends at its next iteration boundary; one that takes longer is killed.
STOP_TIMEOUT = 60.0
LINE_LIMIT = 1 << 20  # bytes of one status line (asyncio's default is 64 KiB)
# The job's status lines that go on to the client as they come.
RELAYED = frozenset(
    {
        "loading base",
        "data",
        "validating",
        "training",
        "checkpoint",
        "writing adapter",
        "fusing",
        "writing model",
    }
)


@dataclass
class JobState:
    """One job in progress, as its status lines tell it."""

    name: str  # the model it makes
    proc: asyncio.subprocess.Process | None = None
    iteration: int = 0
    total: int = 0
    checkpoint: int = 0  # the iteration of its last checkpoint (0: none yet)
    stop_reason: str = ""  # set when the server (not the client) stopped it
    cancelled: bool = False  # its reader left, so it was stopped

    def describe(self) -> str:
        if self.total:
            return f"{self.name}, iteration {self.iteration} of {self.total}"
        return f"{self.name}, starting"


async def relay(
    state: JobState, job_file: Path, use_openblas: bool = True
) -> AsyncGenerator[dict[str, Any], None]:
    """Run the job of `job_file`: its status lines as they come, the last its success.

    A job that fails raises StatusError with its message (400 for a bad job or record).
    Closing this iterator early stops the job and waits until it has exited.
    """
    proc = state.proc = await _spawn(state.name, job_file, use_openblas)
    tail: collections.deque[str] = collections.deque(maxlen=20)
    reader = asyncio.ensure_future(_read_stderr(proc, tail, state.name))
    started = time.monotonic()
    last: dict[str, Any] = {}
    try:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = _parse(raw)
            if line is None:
                continue
            last = line
            _track(state, line)
            if line["status"] in RELAYED:
                yield line
        code = await proc.wait()
    finally:
        if proc.returncode is None:  # the reader left: stop the job, wait for it
            await asyncio.shield(asyncio.ensure_future(_stop(state)))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), 1.0)
        reader.cancel()
    if code == 0 and last.get("status") == "success":
        log.info(
            "fine-tuning job for %s finished %d iterations in %.1fs (peak memory %s)",
            state.name,
            state.total,
            time.monotonic() - started,
            format_bytes(int(last.get("peak_memory") or 0)),
        )
        yield last
        return
    raise _failure(state, code, last, tail)


def request_stop(state: JobState, reason: str) -> None:
    """Ask a running job to stop (the server shuts down); `relay` then raises a 503."""
    proc = state.proc
    if proc is None or proc.returncode is not None:
        return
    state.stop_reason = reason
    log.info("stopping the fine-tuning job for %s: %s", state.name, reason)
    _signal_stop(proc)


async def _spawn(name: str, job_file: Path, use_openblas: bool) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    if use_openblas:
        env = with_openblas(env)
    # Own session: a terminal's Ctrl-C reaches the supervisor, which stops the job in
    # order. The stdin pipe stays open: closing it is how the job is told to stop.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ollmlx_worker.training",
        str(job_file),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
        limit=LINE_LIMIT,
    )
    log.info("spawned fine-tuning job pid=%d for %s", proc.pid, name)
    return proc


async def _stop(state: JobState) -> None:
    """Cancel the job, read its last lines, and kill it if it does not stop in time."""
    proc = state.proc
    assert proc is not None and proc.stdout is not None
    _signal_stop(proc)

    async def drain() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:  # read on: a full pipe would block its last line
            line = _parse(raw)
            if line is not None:
                _track(state, line)
        await proc.wait()

    try:
        await asyncio.wait_for(drain(), STOP_TIMEOUT)
    except asyncio.TimeoutError:
        log.warning("fine-tuning job pid=%d ignored the cancel; killing it", proc.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    state.cancelled = True


def _parse(raw: bytes) -> dict[str, Any] | None:
    """One status line from the job; None for anything that is not one."""
    try:
        line = json.loads(raw)
    except ValueError:
        return None
    return line if isinstance(line, dict) and isinstance(line.get("status"), str) else None


def _track(state: JobState, line: dict[str, Any]) -> None:
    status = line["status"]
    if status == "data":
        state.total = int(line.get("iters") or 0)
    elif status == "training":
        state.iteration = int(line.get("iteration") or 0)
        state.total = int(line.get("total") or state.total)
    elif status == "checkpoint":
        state.checkpoint = int(line.get("iteration") or 0)
    elif status == "cancelled":
        state.iteration = int(line.get("iteration") or state.iteration)


def _failure(
    state: JobState, code: int, last: dict[str, Any], tail: collections.deque[str]
) -> StatusError:
    """Why a job ended without a result, as the error its request answers with."""
    resume = (
        f"; repeat the request with resume: true to continue from iteration {state.checkpoint}"
        if state.checkpoint
        else ""
    )
    if last.get("status") == "error":
        error = StatusError(str(last.get("error")), int(last.get("code") or 500))
    elif code == EXIT_CANCELLED or last.get("status") == "cancelled":
        reason = state.stop_reason or str(last.get("reason") or "cancelled")
        error = StatusError(
            f"the fine-tuning job stopped at iteration {state.iteration} ({reason}){resume}",
            503 if state.stop_reason else 500,
        )
    elif code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        hint = " (out of memory?)" if code == -signal.SIGKILL else ""
        error = StatusError(f"the fine-tuning job was killed by {name}{hint}{resume}")
    else:
        said = " | ".join(list(tail)[-3:])
        error = StatusError(f"the fine-tuning job exited with code {code}: {said or 'no output'}")
    level = logging.INFO if error.status < 500 else logging.WARNING  # 4xx: the request's fault
    log.log(level, "fine-tuning job for %s failed: %s", state.name, error.message)
    return error


def _signal_stop(proc: asyncio.subprocess.Process) -> None:
    """Both of the job's cancel signals: its stdin closes, and SIGTERM."""
    if proc.stdin is not None and not proc.stdin.is_closing():
        proc.stdin.close()
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)


async def _read_stderr(
    proc: asyncio.subprocess.Process, tail: collections.deque[str], name: str
) -> None:
    assert proc.stderr is not None
    while raw := await proc.stderr.readline():
        text = raw.decode(errors="replace").rstrip()
        tail.append(text)
        log.debug("[finetune %s] %s", name, text)
