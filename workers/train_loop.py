"""The pieces handed to mlx-lm's trainer: batches, the per-step callback, validation.

The trainer runs with a report every step, so its callback sees each iteration boundary;
there, on the job's absolute iteration count (which a resumed run continues), it reports,
validates, checkpoints and checks for cancellation. The trainer's own schedules count from
its own start and would restart after a resume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import numpy as np
from mlx_lm.tuner.callbacks import TrainingCallback
from mlx_lm.tuner.trainer import evaluate, iterate_batches

from ollmlx.finetune_plan import Plan

from .train_data import Tokenized

if TYPE_CHECKING:
    from .training import Training

BatchFn = Callable[..., Iterator[Any]]


class Finished(Exception):
    """Raised after the last step's report: skips the trainer's own final save (a copy of
    every trainable weight, as big as the model for a full fine-tune); we write the result."""


def replayed_batches(seed: int, skip: int) -> BatchFn:
    """mlx-lm's batches in the order of seed `seed`, less the first `skip` already trained:
    a resumed run sees the batches an unbroken run would have seen."""

    def batches(**kwargs: Any) -> Iterator[Any]:
        kwargs["seed"] = seed
        stream = iterate_batches(**kwargs)
        for _ in range(skip):
            next(stream)
        yield from stream

    return batches


def _isolated_batches(**kwargs: Any) -> Iterator[Any]:
    """Validation batches that leave numpy's global generator (the training order) alone."""
    stream = iterate_batches(**kwargs)
    while True:
        saved = np.random.get_state()
        try:
            item = next(stream)
        except StopIteration:
            return
        finally:
            np.random.set_state(saved)
        yield item


def validation_loss(model: Any, valid: Tokenized, plan: Plan, check: Callable[[], None]) -> float:
    loss = evaluate(
        model=model,
        dataset=valid.samples,
        batch_size=min(plan.batch_size, len(valid.samples)),
        num_batches=plan.val_batches,
        max_seq_length=plan.max_seq_length,
        iterate_batches=_isolated_batches,
        progress_callback=check,  # a cancel stops a long validation between batches
    )
    model.train()
    return float(loss)


class Reporter(TrainingCallback):
    def __init__(
        self,
        job: Training,
        model: Any,
        optimizer: Any,
        valid: Tokenized | None,
        plan: Plan,
        start: int,
    ) -> None:
        self.job, self.model, self.optimizer = job, model, optimizer
        self.valid, self.plan, self.start = valid, plan, start
        self._seen_tokens = 0  # the trainer's running count, within this run
        self._reset()

    def _reset(self) -> None:
        self._loss = 0.0
        self._steps = 0
        self._tokens = 0
        self._seconds = 0.0

    def on_train_loss_report(self, train_info: dict[str, Any]) -> None:
        from . import train_checkpoint

        plan, job = self.plan, self.job
        it = self.start + int(train_info["iteration"])
        tokens = int(train_info["trained_tokens"]) - self._seen_tokens
        self._seen_tokens = int(train_info["trained_tokens"])
        self._loss += float(train_info["train_loss"])
        self._steps += 1
        self._tokens += tokens
        self._seconds += tokens / max(float(train_info["tokens_per_second"]), 1e-9)
        job.trained_tokens += tokens
        job.peak_memory = max(job.peak_memory, mx.get_peak_memory())
        job.control.iteration = it

        if it % plan.report_every == 0 or it == plan.iters:
            job.train_loss = self._loss / self._steps
            job.status.emit(
                "training",
                iteration=it,
                total=plan.iters,
                train_loss=job.train_loss,
                learning_rate=float(train_info["learning_rate"]),
                tokens_per_second=round(self._tokens / max(self._seconds, 1e-9), 1),
                iterations_per_second=round(self._steps / max(self._seconds, 1e-9), 3),
                trained_tokens=job.trained_tokens,
                peak_memory=job.peak_memory,
            )
            self._reset()
        job.control.check()
        if self.valid and (it % plan.val_every == 0 or it == plan.iters):
            job._validate(self.model, self.valid, plan, it)
        if it % plan.save_every == 0:
            train_checkpoint.save(job.job_dir, it, self.model, self.optimizer, plan)
            # Reseed dropout here, as a run resumed from this checkpoint does.
            mx.random.seed(plan.seed + it)
            job.status.emit("checkpoint", iteration=it)
        job.control.check()
        if it == plan.iters:
            raise Finished
