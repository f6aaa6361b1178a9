"""The supervisor's side of a fine-tuning job: its folder, process, memory and result.

One job runs at a time; a second request is a 503. The job program
(`python -m ollmlx_worker.training JOB.json`, MLX on its main thread) runs in its own
process and writes JSON status lines, relayed here as they come. While it runs, the job
holds its memory estimate of the budget (`Scheduler.reserve`), as a loaded model would:
first the supervisor's guess from the data's bytes, then the job's own from its tokens.

The request's life is the job's: when the consumer of `Trainer.run` goes (the client
disconnected, the server shuts down), the job is told to stop (stdin closed, SIGTERM) and
does so at its next iteration boundary. Its checkpoint stays in the job folder for a
`resume`; no result and no half-written file is left. On success the result is installed
as a new model (`Store.install_derived`) and the job folder removed.

Job folders are `<models>/ollmlx-jobs/<key>`. The key is made of the new name, the base
model's digest, and a hash of the data and of the parameters that decide what training
does, so repeating a request with `resume: true` finds its checkpoint; `iters` may grow,
and `fuse`, `quantize` and the reporting cadence may change.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from ..config import Settings
from ..errors import StatusError
from ..finetune_data import TrainingData
from ..finetune_memory import format_bytes
from ..finetune_plan import EXIT_CANCELLED, Job, Plan
from ..store.catalog import Store, StoredModel
from .runner import with_openblas
from .scheduler import Scheduler

log = logging.getLogger("ollmlx.training")

JOBS_DIR = "ollmlx-jobs"
# A stopped job ends at its next iteration boundary; one that takes longer is killed.
STOP_TIMEOUT = 60.0
LINE_LIMIT = 1 << 20  # bytes of one status line (asyncio's default is 64 KiB)
# Plan values that decide what a checkpoint holds and how training continues from it.
KEY_FIELDS = (
    "method",
    "batch_size",
    "num_layers",
    "rank",
    "scale",
    "dropout",
    "learning_rate",
    "max_seq_length",
    "mask_prompt",
    "seed",
    "continues_adapter",
)
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


class TrainingBusy(StatusError):
    def __init__(self, running: str) -> None:
        super().__init__(
            f"a fine-tuning job is already running ({running}); one job runs at a time:"
            " try again when it ends",
            503,
        )


@dataclass(frozen=True)
class TrainingRequest:
    """A checked fine-tuning request: everything the job needs but its folder."""

    name: str  # the new model's display name
    base: StoredModel
    job: Job  # every value but job_dir and output, which the trainer fills in
    plan: Plan  # the job's values resolved against the base model and the data
    data: TrainingData
    estimate: int  # peak bytes the supervisor expects (finetune_memory.estimate_memory)


def job_key(req: TrainingRequest) -> str:
    """The job folder's name: the same for a repeated request, so `resume` finds it."""
    digest = hashlib.sha256()
    digest.update(f"{req.name}\0{req.base.digest}\0".encode())
    for dataset in (req.data.train, req.data.valid):
        digest.update(hashlib.sha256(dataset.to_jsonl()).digest() if dataset else b"-")
    params = {key: getattr(req.plan, key) for key in KEY_FIELDS}
    digest.update(json.dumps(params, sort_keys=True).encode())
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", req.name).strip("-.")[:64] or "job"
    return f"{stem}-{digest.hexdigest()[:16]}"


def show_info(req: TrainingRequest, success: dict[str, Any]) -> dict[str, Any]:
    """What /api/show's model_info says about how the model was trained."""
    plan = req.plan
    info: dict[str, Any] = {
        "base": req.base.name.display,
        "method": plan.method,
        "result": success.get("result"),
        "iterations": success.get("iterations"),
        "batch_size": plan.batch_size,
        "learning_rate": plan.learning_rate,
        "num_layers": plan.num_layers,
        "max_seq_length": plan.max_seq_length,
        "mask_prompt": plan.mask_prompt,
        "seed": plan.seed,
        "train_records": len(req.data.train),
        "valid_records": len(req.data.valid) if req.data.valid else 0,
        "trained_tokens": success.get("trained_tokens"),
        "train_loss": success.get("train_loss"),
        "val_loss": success.get("val_loss"),
    }
    if plan.method != "full":
        info.update(rank=plan.rank, alpha=plan.scale, dropout=plan.dropout, fused=plan.fuse)
    if plan.quantize is not None:
        info["quantize"] = plan.quantize
    return {f"ollmlx.finetune.{k}": v for k, v in info.items() if v is not None}


@dataclass
class _Running:
    """The one job in progress."""

    name: str
    proc: asyncio.subprocess.Process | None = None
    iteration: int = 0
    total: int = 0
    checkpoint: int = 0  # the iteration of its last checkpoint (0: none yet)
    stop_reason: str = ""  # set when the server (not the job) decided it must stop
    cancelled: bool = False  # its consumer left and the job was stopped

    def describe(self) -> str:
        if self.total:
            return f"{self.name}, iteration {self.iteration} of {self.total}"
        return f"{self.name}, starting"


class Trainer:
    """Runs fine-tuning jobs, one at a time, against the scheduler's memory budget."""

    def __init__(self, settings: Settings, store: Store, scheduler: Scheduler) -> None:
        self._settings = settings
        self._store = store
        self._scheduler = scheduler
        self.jobs_dir = settings.models_dir / JOBS_DIR
        self._running: _Running | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def busy(self) -> str | None:
        """What the running job is doing, or None when there is none."""
        return self._running.describe() if self._running else None

    async def run(self, req: TrainingRequest) -> AsyncGenerator[dict[str, Any], None]:
        """Train, relaying the job's status lines, then install the model; the last line
        is `{"status": "success", ...}`. A failure raises StatusError (400: the job or its
        data cannot be trained). Closing this iterator cancels the job."""
        if self._running is not None:
            raise TrainingBusy(self._running.describe())
        running = self._running = _Running(req.name)  # claimed before any await
        self._idle.clear()
        job_dir: Path | None = None
        install: asyncio.Future[None] | None = None
        try:
            name = f"the fine-tuning job for {req.name}"
            async with self._scheduler.reserve(name, req.estimate) as held:
                job = await asyncio.to_thread(self._prepare, req)
                job_dir = Path(job.job_dir)
                if job.resume:
                    running.checkpoint = _saved_iteration(job_dir)
                success: dict[str, Any] = {}
                async with contextlib.aclosing(self._train(running, job)) as lines:
                    async for line in lines:
                        if line["status"] == "success":
                            success = line
                            continue
                        if line["status"] == "data" and line.get("memory_estimate"):
                            # The job's estimate counts real tokens; the reservation guessed.
                            await self._scheduler.resize(held, int(line["memory_estimate"]))
                        yield line
            yield {"status": "writing manifest"}
            # Shielded: training is done, so a client leaving now does not undo it.
            install = asyncio.ensure_future(self._install(req, job, success))
            await asyncio.shield(install)
            yield {
                "status": "success",
                "model": req.name,
                **{k: success.get(k) for k in _SUMMARY},
            }
        finally:
            if install is not None and not install.done():
                await asyncio.wait([install])  # the folder goes only once it is installed
            if job_dir is not None:
                installed = install is not None and install.done() and not install.exception()
                await asyncio.to_thread(_clean, job_dir, installed)
            self._running = None
            self._idle.set()
            if running.cancelled:  # logged once the folder is clean and the slot free
                log.info(
                    "fine-tuning job for %s cancelled at iteration %d (exit code %s); %s",
                    running.name,
                    running.iteration,
                    running.proc.returncode if running.proc else None,
                    f"its checkpoint at iteration {running.checkpoint} stays for resume"
                    if running.checkpoint
                    else "no checkpoint kept",
                )

    def cancel(self, reason: str) -> None:
        """Stop the running job (the server shuts down); its stream ends with an error."""
        running = self._running
        if running is None or running.proc is None or running.proc.returncode is not None:
            return
        running.stop_reason = reason
        log.info("stopping the fine-tuning job for %s: %s", running.name, reason)
        _signal_stop(running.proc)

    async def close(self) -> None:
        """App cleanup: cancel the running job and wait until it is gone."""
        self.cancel("the server is shutting down")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), STOP_TIMEOUT + 5)

    # -- steps ---------------------------------------------------------------------------

    def _prepare(self, req: TrainingRequest) -> Job:
        """The job folder with the checked data and the job file (in a thread)."""
        job_dir = self.jobs_dir / job_key(req)
        job_dir.mkdir(parents=True, exist_ok=True)
        output = job_dir / "output"
        shutil.rmtree(output, ignore_errors=True)  # a result an earlier run never installed
        _remove_partials(job_dir)
        req.data.write(job_dir)
        job = msgspec.structs.replace(
            req.job,
            job_dir=str(job_dir),
            output=str(output),
            # The job checks its own estimate (made with the real token counts) against
            # the whole budget: a job that can never fit stops before training.
            memory_limit=self._settings.memory_budget,
        )
        (job_dir / "job.json").write_bytes(msgspec.json.encode(job))
        return job

    async def _spawn(self, job: Job, name: str) -> asyncio.subprocess.Process:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        if not self._settings.no_openblas:
            env = with_openblas(env)
        # Own session: a terminal's Ctrl-C reaches the supervisor, which stops the job in
        # order. The stdin pipe stays open: closing it is how the job is told to stop.
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ollmlx_worker.training",
            str(Path(job.job_dir) / "job.json"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
            limit=LINE_LIMIT,
        )
        log.info("spawned fine-tuning job pid=%d for %s", proc.pid, name)
        return proc

    async def _train(self, running: _Running, job: Job) -> AsyncGenerator[dict[str, Any], None]:
        """The job's status lines as they come, the last one its success."""
        proc = running.proc = await self._spawn(job, running.name)
        tail: collections.deque[str] = collections.deque(maxlen=20)
        reader = asyncio.ensure_future(_read_stderr(proc, tail, running.name))
        started = time.monotonic()
        last: dict[str, Any] = {}
        try:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = _parse(raw)
                if line is None:
                    continue
                last = line
                _track(running, line)
                if line["status"] in RELAYED:
                    yield line
            code = await proc.wait()
        finally:
            if proc.returncode is None:  # the consumer left: stop the job, wait for it
                await asyncio.shield(asyncio.ensure_future(self._stop(running)))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), 1.0)
            reader.cancel()
        if code == 0 and last.get("status") == "success":
            log.info(
                "fine-tuning job for %s finished %d iterations in %.1fs (peak memory %s)",
                running.name,
                running.total,
                time.monotonic() - started,
                format_bytes(int(last.get("peak_memory") or 0)),
            )
            yield last
            return
        raise _failure(running, code, last, tail)

    async def _stop(self, running: _Running) -> None:
        """Cancel the job, read its last lines, and kill it if it does not stop in time."""
        proc = running.proc
        assert proc is not None and proc.stdout is not None
        _signal_stop(proc)

        async def drain() -> None:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = _parse(raw)
                if line is not None:
                    _track(running, line)
            await proc.wait()

        try:
            await asyncio.wait_for(drain(), STOP_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("fine-tuning job pid=%d ignored the cancel; killing it", proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        running.cancelled = True

    async def _install(self, req: TrainingRequest, job: Job, success: dict[str, Any]) -> None:
        output = Path(job.output)
        kind = {"weights": output} if success.get("result") == "model" else {"adapter": output}
        stored = await asyncio.to_thread(
            self._store.install_derived, req.name, req.base, info=show_info(req, success), **kind
        )
        log.info(
            "installed fine-tuned model %s (%s on %s)",
            stored.name.display,
            "weights" if "weights" in kind else "an adapter",
            req.base.name.display,
        )


_SUMMARY = (
    "result",
    "iterations",
    "resumed_from",
    "train_loss",
    "val_loss",
    "trained_tokens",
    "peak_memory",
    "memory_estimate",  # the job's, with the real token counts (the reservation's is a guess)
    "elapsed",
)


def _parse(raw: bytes) -> dict[str, Any] | None:
    """One status line from the job; None for anything that is not one."""
    try:
        line = json.loads(raw)
    except ValueError:
        return None
    return line if isinstance(line, dict) and isinstance(line.get("status"), str) else None


def _track(running: _Running, line: dict[str, Any]) -> None:
    status = line["status"]
    if status == "data":
        running.total = int(line.get("iters") or 0)
    elif status == "training":
        running.iteration = int(line.get("iteration") or 0)
        running.total = int(line.get("total") or running.total)
    elif status == "checkpoint":
        running.checkpoint = int(line.get("iteration") or 0)
    elif status == "cancelled":
        running.iteration = int(line.get("iteration") or running.iteration)


def _failure(
    running: _Running, code: int, last: dict[str, Any], tail: collections.deque[str]
) -> StatusError:
    """Why a job ended without a result, as the error its request answers with."""
    resume = (
        f"; repeat the request with resume: true to continue from iteration {running.checkpoint}"
        if running.checkpoint
        else ""
    )
    if last.get("status") == "error":
        error = StatusError(str(last.get("error")), int(last.get("code") or 500))
    elif code == EXIT_CANCELLED or last.get("status") == "cancelled":
        reason = running.stop_reason or str(last.get("reason") or "cancelled")
        error = StatusError(
            f"the fine-tuning job stopped at iteration {running.iteration} ({reason}){resume}",
            503 if running.stop_reason else 500,
        )
    elif code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        hint = " (out of memory?)" if code == -signal.SIGKILL else ""
        error = StatusError(f"the fine-tuning job was killed by {name}{hint}{resume}")
    else:
        said = " | ".join(list(tail)[-3:])
        error = StatusError(f"the fine-tuning job exited with code {code}: {said or 'no output'}")
    level = logging.INFO if error.status < 500 else logging.WARNING  # 4xx: the request's fault
    log.log(level, "fine-tuning job for %s failed: %s", running.name, error.message)
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


def _saved_iteration(job_dir: Path) -> int:
    """The iteration of the checkpoint an earlier run left (0: none)."""
    try:
        return int(json.loads((job_dir / "checkpoint.json").read_text())["iteration"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _remove_partials(job_dir: Path) -> None:
    """Staging folders a killed job left (`.output.partial-<pid>`)."""
    for partial in job_dir.glob(".output.partial-*"):
        shutil.rmtree(partial, ignore_errors=True)


def _clean(job_dir: Path, installed: bool) -> None:
    """After a job: no result or half file stays, and the folder only while it holds a
    checkpoint to resume from (never once installed: the new model is the result)."""
    if installed or not (job_dir / "checkpoint.json").exists():
        shutil.rmtree(job_dir, ignore_errors=True)
        return
    shutil.rmtree(job_dir / "output", ignore_errors=True)
    _remove_partials(job_dir)
