"""`python -m ollmlx_worker.training JOB.json`: one fine-tuning job, spawned by the supervisor.

The job file is `ollmlx.finetune_plan.Job` as JSON; the data are the already-checked
`train.jsonl` (and `valid.jsonl`) in its `job_dir`. Training is mlx-lm's trainer, on the
main thread (the only thread that touches MLX). Stdout carries one JSON object a line:

    {"status": "loading base"}
    {"status": "data", "train": N, "valid": M, "truncated": K, ...}
    {"status": "validating", "iteration": 0, "val_loss": ...}
    {"status": "training", "iteration": i, "total": T, "train_loss": ..., ...}
    {"status": "checkpoint", "iteration": i}
    {"status": "writing adapter"} | {"status": "fusing"} {"status": "writing model"}
    {"status": "success", "result": "adapter" | "model", "output": ..., ...}
or, last, {"status": "cancelled", "iteration": i} (exit 130) or {"status": "error", ...}
(exit 2 for a bad job or record: answer 400; exit 1 otherwise). Errors also go to
stderr as `error: <message>`; everything else on stderr is log.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from ollmlx.finetune_data import DataError, TrainingData, load_training_data
from ollmlx.finetune_memory import estimate_memory, format_bytes, weights_bytes
from ollmlx.finetune_plan import (
    EXIT_BAD_REQUEST,
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    Job,
    JobError,
    Plan,
    is_quantized,
    layer_count,
    parse_job,
    resolve,
)

from .train_control import Cancelled, Control, Status
from .train_data import BadRecord, Tokenized, tokenize

NEVER = 2**62  # a step count the trainer never reaches: its own evals and saves stay off


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise JobError(f"{path} does not exist") from None
    except ValueError as exc:
        raise JobError(f"{path} is not valid JSON: {exc}") from None


class Training:
    def __init__(self, job: Job, status: Status, control: Control) -> None:
        self.job, self.status, self.control = job, status, control
        self.job_dir = Path(job.job_dir)
        self.output = Path(job.output)
        self.model_dir = Path(job.model)
        self.started = time.monotonic()
        self.train_loss: float | None = None
        self.val_loss: float | None = None
        self.trained_tokens = 0
        self.peak_memory = 0

    # --- before any MLX ------------------------------------------------------------------

    def _check(self) -> tuple[TrainingData, dict[str, Any], dict[str, Any] | None]:
        if not (self.model_dir / "config.json").is_file():
            raise JobError(f"base model {self.model_dir} has no config.json")
        if self.output.exists():
            raise JobError(f"output {self.output} already exists")
        valid = self.job_dir / "valid.jsonl"
        data = load_training_data(self.job_dir / "train.jsonl", valid if valid.exists() else None)
        config = _read_json(self.model_dir / "config.json")
        adapter = None
        if self.job.adapter:
            adapter = _read_json(Path(self.job.adapter) / "adapter_config.json")
        return data, config, adapter

    def _plan(
        self,
        data: TrainingData,
        config: dict[str, Any],
        adapter: dict[str, Any] | None,
        n_layers: int,
    ) -> Plan:
        formats = [data.train.format] + ([data.valid.format] if data.valid else [])
        return resolve(
            self.job,
            n_layers=n_layers,
            n_train=len(data.train),
            formats=formats,
            model_quantized=is_quantized(config),
            adapter_config=adapter,
        )

    # --- the job -------------------------------------------------------------------------

    def run(self) -> None:
        from . import train_checkpoint

        data, config, adapter = self._check()
        declared = layer_count(config)
        if declared is not None:
            self._plan(data, config, adapter, declared)  # fail before a long load
        train_checkpoint.clean(self.job_dir, keep_checkpoints=self.job.resume)

        self.status.emit("loading base")
        with self.control.exit_at_once():
            model, tokenizer, config = self._load()
            plan = self._plan(data, config, adapter, len(model.layers))
            train = self._tokenize("train", data, tokenizer, plan)
            valid = self._tokenize("valid", data, tokenizer, plan) if data.valid else None
        estimate = estimate_memory(
            config, plan, weights_bytes(self.model_dir), seq_len=train.longest
        )
        self.status.emit(
            "data",
            train=len(train.samples),
            valid=len(valid.samples) if valid else 0,
            truncated=train.truncated + (valid.truncated if valid else 0),
            train_tokens=train.tokens,
            longest=max(train.longest, valid.longest if valid else 0),
            unaligned=train.unaligned + (valid.unaligned if valid else 0),
            iters=plan.iters,
            memory_estimate=estimate.total,
        )
        limit = self.job.memory_limit
        if limit is not None and estimate.total > limit:
            raise JobError(
                f"the job needs about {format_bytes(estimate.total)} of memory;"
                f" {format_bytes(limit)} is available"
            )
        optimizer, start = self._prepare(model, plan)
        if start == 0 and valid:
            self._validate(model, valid, plan, 0)
        if start < plan.iters:
            self._train(model, optimizer, train, valid, plan, start)
        elif valid:
            self._validate(model, valid, plan, plan.iters)
        result = self._write(model, tokenizer, config, plan)
        self.status.emit(
            "success",
            result=plan.result,
            output=str(self.output),
            base=str(self.model_dir),
            iterations=plan.iters,
            resumed_from=start,
            train_loss=self.train_loss,
            val_loss=self.val_loss,
            trained_tokens=self.trained_tokens,
            peak_memory=self.peak_memory,
            memory_estimate=estimate.total,
            elapsed=round(time.monotonic() - self.started, 3),
            parameters=plan.as_dict(),
            **result,
        )

    def _load(self) -> tuple[Any, Any, dict[str, Any]]:
        from mlx_lm.utils import load

        from .train_output import fuse_adapters

        # A full fine-tune starts from the base with its adapter folded in; a LoRA job
        # continues the adapter itself (loaded in _prepare).
        fold = self.job.adapter if self.job.method == "full" else None
        model, tokenizer, config = load(str(self.model_dir), adapter_path=fold, return_config=True)  # type: ignore[misc]
        if fold:
            fuse_adapters(model)
        return model, tokenizer, config

    def _tokenize(self, split: str, data: TrainingData, tokenizer: Any, plan: Plan) -> Tokenized:
        dataset = data.train if split == "train" else data.valid
        assert dataset is not None
        return tokenize(
            split,
            dataset.records,
            dataset.format,
            tokenizer,
            mask_prompt=plan.mask_prompt,
            max_seq_length=plan.max_seq_length,
        )

    def _prepare(self, model: Any, plan: Plan) -> tuple[Any, int]:
        import mlx.core as mx
        import mlx.optimizers as optim
        import numpy as np
        from mlx_lm.tuner.utils import linear_to_lora_layers

        from . import train_checkpoint

        np.random.seed(plan.seed)
        mx.random.seed(plan.seed)  # the LoRA initialisation, then dropout
        model.freeze()
        if plan.method == "full":
            for layer in model.layers[-plan.num_layers :]:
                layer.unfreeze()
        else:
            linear_to_lora_layers(
                model, plan.num_layers, plan.lora_parameters(), use_dora=plan.method == "dora"
            )
            if plan.continues_adapter:
                assert self.job.adapter is not None
                weights = Path(self.job.adapter) / "adapters.safetensors"
                model.load_weights(str(weights), strict=False)
        optimizer = optim.Adam(learning_rate=plan.learning_rate)
        start = 0
        if self.job.resume:
            ckpt = train_checkpoint.latest(self.job_dir)
            if ckpt is not None:
                train_checkpoint.check_fits(ckpt, plan)
                train_checkpoint.restore(ckpt, model, optimizer, plan.learning_rate)
                start = ckpt.iteration
                mx.random.seed(plan.seed + start)  # as an unbroken run reseeds there
        self.control.iteration = start
        return optimizer, start

    def _train(
        self,
        model: Any,
        optimizer: Any,
        train: Tokenized,
        valid: Tokenized | None,
        plan: Plan,
        start: int,
    ) -> None:
        from mlx_lm.cli_ui import make_console
        from mlx_lm.tuner.trainer import TrainingArgs
        from mlx_lm.tuner.trainer import train as mlx_train

        from .train_loop import Finished, Reporter, replayed_batches

        # mlx-lm's progress table would print on every step: our status lines replace it.
        make_console().file = open(os.devnull, "w")
        args = TrainingArgs(
            batch_size=plan.batch_size,
            iters=plan.iters - start,
            steps_per_report=1,  # a callback each step: our boundary for reports,
            steps_per_eval=NEVER,  # validations, checkpoints and cancellation
            steps_per_save=NEVER,
            max_seq_length=plan.max_seq_length,
            adapter_file=str(self.job_dir / ".tmp-unused.safetensors"),
            grad_checkpoint=plan.grad_checkpoint,
        )
        reporter = Reporter(self, model, optimizer, valid, plan, start)
        try:
            mlx_train(
                model=model,
                optimizer=optimizer,
                train_dataset=train.samples,
                val_dataset=None,
                args=args,
                iterate_batches=replayed_batches(plan.seed, start),
                training_callback=reporter,
            )
        except Finished:
            pass

    def _validate(self, model: Any, valid: Tokenized, plan: Plan, iteration: int) -> None:
        from .train_loop import validation_loss

        self.val_loss = validation_loss(model, valid, plan, self.control.check)
        self.status.emit("validating", iteration=iteration, val_loss=self.val_loss)

    def _write(
        self, model: Any, tokenizer: Any, config: dict[str, Any], plan: Plan
    ) -> dict[str, Any]:
        from .train_output import adapter_config, staged, write_adapter, write_model

        self.control.check()
        with staged(self.output) as folder:
            if plan.result == "adapter":
                self.status.emit("writing adapter")
                return {"adapter_config": write_adapter(folder, model, plan)}
            if plan.method != "full":
                self.status.emit("fusing")
            self.status.emit("writing model")
            written = write_model(
                folder, model, tokenizer, config, self.model_dir, plan.quantize, plan.group_size
            )
            self.control.check()
            extra: dict[str, Any] = {"quantization": written.get("quantization")}
            if plan.method != "full":
                extra["adapter_config"] = adapter_config(plan)
            return extra


def _fail(status: Status, message: str, code: int, **fields: Any) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    status.emit("error", error=message, code=code, **fields)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m ollmlx_worker.training JOB.json", file=sys.stderr)
        return EXIT_FAILED
    # Nothing here may download: a missing local path must not become a Hub lookup.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    status = Status()
    control = Control(status)
    control.watch(os.getppid())
    try:
        job = parse_job(Path(argv[0]).read_bytes())
        Training(job, status, control).run()
        return EXIT_OK
    except Cancelled:
        status.emit("cancelled", iteration=control.iteration, reason=control.reason)
        return EXIT_CANCELLED
    except BadRecord as exc:
        where = f"{exc.split}.jsonl line {exc.index + 1}"
        _fail(status, f"{where}: {exc}", 400, split=exc.split, record=exc.index)
        return EXIT_BAD_REQUEST
    except (JobError, DataError) as exc:
        _fail(status, str(exc), 400)
        return EXIT_BAD_REQUEST
    except Exception as exc:
        traceback.print_exc()
        _fail(status, str(exc) or type(exc).__name__, 500)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
