"""A fine-tuning job: its file schema, its defaults, and the checks both sides run.

A leaf module (no MLX): the supervisor parses a request into a `Job`, calls `resolve`
with the base model's config and the checked data to answer a bad request with a 400
at once, estimates the job's memory (`finetune_memory.estimate_memory`), writes the job
file, and spawns `python -m ollmlx_worker.training JOB.json`, which runs the same checks.

Unset values (None) take mlx-lm's `lora.py` defaults, fitted to the model and data:
`num_layers` 16 (at most the model's depth), `batch_size` 4 (at most the record count),
`rank` 8, `scale` 20, `dropout` 0, `iters` 1000. A base adapter that training continues
fixes method, rank, scale, dropout and layers: a job may repeat them but not change them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import msgspec

from .errors import StatusError

Method = Literal["lora", "dora", "full"]

# Exit statuses of the job program.
EXIT_OK = 0
EXIT_FAILED = 1  # anything else; the last `error: ...` line on stderr says why (a 500)
EXIT_BAD_REQUEST = 2  # the job or its data cannot be trained: answer 400 with the message
EXIT_CANCELLED = 130  # SIGTERM/SIGINT, stdin closed or parent gone; checkpoints are kept

QUANT_BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)

# mlx-lm `lora.py` CONFIG_DEFAULTS.
DEFAULT_ITERS = 1000
DEFAULT_BATCH_SIZE = 4
DEFAULT_NUM_LAYERS = 16
DEFAULT_RANK = 8
DEFAULT_SCALE = 20.0
DEFAULT_DROPOUT = 0.0


class JobError(StatusError, ValueError):
    """A job that cannot run as asked; `status` is the HTTP code to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message, status)


class Job(msgspec.Struct, kw_only=True):
    """The job file (JSON) the supervisor writes. Paths are absolute."""

    model: str  # base model directory (config.json, weights, tokenizer)
    job_dir: str  # holds train.jsonl (+ valid.jsonl) and the checkpoints
    output: str  # the result folder; must not exist; appears whole or not at all
    adapter: str | None = None  # a base adapter folder (adapter_config.json + weights)
    method: Method | None = None  # default lora (or the base adapter's)
    iters: int | None = None  # total optimizer steps; or:
    epochs: float | None = None  # passes over the training set (iters computed)
    learning_rate: float = 1e-5
    batch_size: int | None = None
    rank: int | None = None
    scale: float | None = None  # mlx-lm's LoRA `scale` (the update is scaled by it, not /rank)
    dropout: float | None = None
    num_layers: int | None = None  # the last N blocks are trained; -1: all
    max_seq_length: int = 2048
    mask_prompt: bool = False  # learn only the completion / the last assistant message
    seed: int = 0
    val_every: int = 200  # steps between validations (mlx-lm steps_per_eval)
    val_batches: int = 25  # batches per validation; -1: the whole validation set
    save_every: int = 100  # steps between checkpoints
    report_every: int = 10  # steps between training reports
    fuse: bool = False  # lora/dora: write a whole model with the adapter fused in
    quantize: int | None = None  # bits, for a fused or full result
    group_size: int = 64
    grad_checkpoint: bool = False
    resume: bool = False  # continue from the last checkpoint in job_dir
    # Bytes the job may use: the worker refuses (exit 2) before training when its estimate,
    # made with the real token counts, is above it. None: no check.
    memory_limit: int | None = None


_decoder = msgspec.json.Decoder(Job)


def parse_job(data: bytes | dict[str, Any]) -> Job:
    """A job from the job file's bytes or a dict, with types and ranges checked."""
    try:
        if isinstance(data, dict):
            job = msgspec.convert(data, Job)
        else:
            job = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise JobError(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise JobError(f"job file is not valid JSON: {exc}") from None
    _check_ranges(job)
    return job


def _check_ranges(job: Job) -> None:
    positive = {
        "iters": job.iters,
        "batch_size": job.batch_size,
        "rank": job.rank,
        "max_seq_length": job.max_seq_length,
        "val_every": job.val_every,
        "save_every": job.save_every,
        "report_every": job.report_every,
    }
    for name, value in positive.items():
        if value is not None and value < 1:
            raise JobError(f"{name} must be at least 1, got {value}")
    if job.iters is not None and job.epochs is not None:
        raise JobError("give iters or epochs, not both")
    if job.epochs is not None and not (0 < job.epochs <= 10_000):
        raise JobError(f"epochs must be above 0, got {job.epochs}")
    if not (0 < job.learning_rate < 1) or not math.isfinite(job.learning_rate):
        raise JobError(f"learning_rate must be between 0 and 1, got {job.learning_rate}")
    if job.scale is not None and not (math.isfinite(job.scale) and job.scale > 0):
        raise JobError(f"scale must be above 0, got {job.scale}")
    if job.dropout is not None and not (0 <= job.dropout < 1):
        raise JobError(f"dropout must be in [0, 1), got {job.dropout}")
    if job.num_layers is not None and job.num_layers != -1 and job.num_layers < 1:
        raise JobError(f"num_layers must be at least 1 (or -1 for all), got {job.num_layers}")
    if job.val_batches != -1 and job.val_batches < 1:
        raise JobError(f"val_batches must be at least 1 (or -1 for all), got {job.val_batches}")
    if job.quantize is not None and job.quantize not in QUANT_BITS:
        raise JobError(f"quantize must be one of {QUANT_BITS} bits, got {job.quantize}")
    if job.group_size not in GROUP_SIZES:
        raise JobError(f"group_size must be one of {GROUP_SIZES}, got {job.group_size}")
    if job.memory_limit is not None and job.memory_limit < 1:
        raise JobError(f"memory_limit must be at least 1 byte, got {job.memory_limit}")
    if job.seed < 0 or job.seed >= 2**32:
        raise JobError(f"seed must be in [0, 2**32), got {job.seed}")


@dataclass(frozen=True)
class Plan:
    """A job with every value decided: what the worker trains and reports back."""

    method: Method
    iters: int
    batch_size: int
    num_layers: int  # blocks trained, counted from the top (always a count, never -1)
    rank: int
    scale: float
    dropout: float
    learning_rate: float
    max_seq_length: int
    mask_prompt: bool
    seed: int
    val_every: int
    val_batches: int
    save_every: int
    report_every: int
    fuse: bool
    quantize: int | None
    group_size: int
    grad_checkpoint: bool
    continues_adapter: bool  # the base adapter's weights are the starting point

    @property
    def result(self) -> Literal["adapter", "model"]:
        """What the output folder holds: an mlx-lm adapter, or a whole model."""
        return "model" if self.method == "full" or self.fuse else "adapter"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lora_parameters(self) -> dict[str, Any]:
        return {"rank": self.rank, "scale": self.scale, "dropout": self.dropout}


def layer_count(config: dict[str, Any]) -> int | None:
    """The number of transformer blocks a model config declares (None if it names none)."""
    for cfg in (config, config.get("text_config") or {}):
        for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
            if isinstance(cfg.get(key), int):
                return int(cfg[key])
    return None


def is_quantized(config: dict[str, Any]) -> bool:
    return bool(config.get("quantization") or config.get("quantization_config"))


def resolve(
    job: Job,
    *,
    n_layers: int,
    n_train: int,
    formats: Iterable[str],
    model_quantized: bool = False,
    adapter_config: dict[str, Any] | None = None,
) -> Plan:
    """Decide every value of `job` for a model of `n_layers` blocks and its checked data.

    `formats` are the data's record formats (train's, and valid's if any). Raises
    JobError (400) for a job that cannot run: more layers or a larger batch than
    there are, full fine-tuning of quantized weights, quantizing an unfused adapter,
    prompt masking of text records, a continued adapter with other parameters.
    """
    if n_train < 1:
        raise JobError("the training set is empty")
    if job.mask_prompt and "text" in set(formats):
        raise JobError("mask_prompt needs chat or completions records (text has no prompt)")
    method: Method = job.method or "lora"
    base = _base_adapter(adapter_config) if adapter_config is not None else None
    if base is not None and base["num_layers"] < 0:
        base["num_layers"] = n_layers  # mlx-lm's -1: every layer
    continues = base is not None and method != "full"
    if base is not None and continues:
        if job.method is None:
            method = base["method"]
        elif job.method != base["method"]:
            raise JobError(
                f"the base adapter is {base['method']}; training continues it, so method"
                f" must be {base['method']} (or full, which fuses it first), not {job.method}"
            )
    if method == "full" and model_quantized:
        raise JobError("full fine-tuning needs unquantized weights; use lora or dora")
    if job.quantize is not None and method != "full" and not job.fuse:
        raise JobError("quantize applies to a whole model: set fuse (or method full)")

    def pick(name: str, asked: Any, default: Any) -> Any:
        if not continues or base is None:
            return default if asked is None else asked
        if asked is not None and asked != base[name]:
            raise JobError(
                f"the base adapter has {name} {base[name]}; training continues it, so"
                f" {name} cannot be {asked}"
            )
        return base[name]

    if job.num_layers is None:
        asked_layers = None
    else:
        asked_layers = n_layers if job.num_layers == -1 else job.num_layers
    if asked_layers is not None and asked_layers > n_layers:
        raise JobError(f"num_layers {asked_layers} is more than the model's {n_layers} layers")
    num_layers = pick("num_layers", asked_layers, min(DEFAULT_NUM_LAYERS, n_layers))
    if num_layers > n_layers:
        raise JobError(f"the base adapter trains {num_layers} layers; the model has {n_layers}")
    rank = pick("rank", job.rank, DEFAULT_RANK)
    scale = pick("scale", job.scale, DEFAULT_SCALE)
    dropout = pick("dropout", job.dropout, DEFAULT_DROPOUT)

    if job.batch_size is not None and job.batch_size > n_train:
        raise JobError(f"batch_size {job.batch_size} is more than the {n_train} training records")
    batch_size = job.batch_size or min(DEFAULT_BATCH_SIZE, n_train)
    if job.epochs is not None:
        # mlx-lm's batches drop the remainder: a pass has n_train // batch_size steps.
        iters = max(1, math.ceil(job.epochs * (n_train // batch_size)))
    else:
        iters = job.iters or DEFAULT_ITERS

    return Plan(
        method=method,
        iters=iters,
        batch_size=batch_size,
        num_layers=num_layers,
        rank=rank,
        scale=float(scale),
        dropout=float(dropout),
        learning_rate=job.learning_rate,
        max_seq_length=job.max_seq_length,
        mask_prompt=job.mask_prompt,
        seed=job.seed,
        val_every=job.val_every,
        val_batches=job.val_batches,
        save_every=job.save_every,
        report_every=job.report_every,
        fuse=job.fuse or method == "full",
        quantize=job.quantize,
        group_size=job.group_size,
        grad_checkpoint=job.grad_checkpoint,
        continues_adapter=continues,
    )


def _base_adapter(config: dict[str, Any]) -> dict[str, Any]:
    """The parameters a base adapter's adapter_config.json fixes (mlx-lm's layout)."""
    method = config.get("fine_tune_type", "lora")
    lora = config.get("lora_parameters") or {}
    if method not in ("lora", "dora") or not isinstance(config.get("num_layers"), int):
        raise JobError(f"the base adapter is not a LoRA or DoRA adapter (type {method})")
    if "keys" in lora:
        # Our adapters adapt every linear layer of a block; a chosen subset is not ours.
        raise JobError("the base adapter adapts a chosen set of layers (keys): not supported")
    return {
        "method": method,
        "num_layers": config["num_layers"],
        "rank": lora.get("rank", DEFAULT_RANK),
        "scale": float(lora.get("scale", DEFAULT_SCALE)),
        "dropout": float(lora.get("dropout", DEFAULT_DROPOUT)),
    }
