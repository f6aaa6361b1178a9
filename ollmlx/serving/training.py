"""The supervisor's side of a fine-tuning job: its folder, process, memory and result.

One job runs at a time; a second request is a 503. The job program
(`python -m ollmlx_worker.training JOB.json`, MLX on its main thread) runs in its own
process and writes JSON status lines, relayed here as they come. While it runs, the job
holds its memory estimate of the budget (`Scheduler.reserve`), as a loaded model would:
first the supervisor's guess from the data's bytes, then the job's own from its tokens.

The request's life is the job's: when the consumer of `Trainer.run` goes (the client
disconnected, the server shuts down), the job is told to stop and does so at its next
iteration boundary (`training_process`). Its checkpoint stays in the job folder for a
`resume`; no result and no half-written file is left. On success the result is installed
as a new model (`Store.install_derived`) and the job folder removed.

Job folders are `<models>/ollmlx-jobs/<key>`. The key is made of the new name, the base
model's digest, and a hash of the data and of the parameters that decide what training
does, so repeating a request with `resume: true` finds its checkpoint; `iters` may grow,
and `fuse`, `quantize` and the reporting cadence may change.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import shutil
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from ..config import Settings
from ..errors import StatusError
from ..finetune_data import TrainingData
from ..finetune_plan import Job, Plan
from ..store.catalog import Store, StoredModel
from .scheduler import Scheduler
from .training_process import STOP_TIMEOUT, JobState, relay, request_stop

log = logging.getLogger("ollmlx.training")

JOBS_DIR = "ollmlx-jobs"
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


class Trainer:
    """Runs fine-tuning jobs, one at a time, against the scheduler's memory budget."""

    def __init__(self, settings: Settings, store: Store, scheduler: Scheduler) -> None:
        self._settings = settings
        self._store = store
        self._scheduler = scheduler
        self.jobs_dir = settings.models_dir / JOBS_DIR
        self._running: JobState | None = None
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
        running = self._running = JobState(req.name)  # claimed before any await
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
                job_file = job_dir / "job.json"
                use_openblas = not self._settings.no_openblas
                async with contextlib.aclosing(relay(running, job_file, use_openblas)) as lines:
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
        if self._running is not None:
            request_stop(self._running, reason)

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
