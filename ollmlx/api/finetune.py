"""POST /api/finetune: train a new model from a stored one, with pull-style progress lines.

Everything is checked before the job starts (names, values, every record of the data, the
memory estimate), so a bad request is a 4xx with a real status; the job itself runs in
`serving.training`. The request's life is the job's: a client that leaves cancels it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from ..acquire.quantize import quant_bits
from ..errors import StatusError
from ..finetune_data import MAX_FILE_BYTES, DataError, Source, TrainingData, load_training_data
from ..finetune_memory import estimate_memory, seq_len_guess, weights_bytes
from ..finetune_plan import JobError, Plan, is_quantized, layer_count, parse_job, resolve
from ..serving.training import Trainer, TrainingBusy, TrainingRequest
from ..store.catalog import StoredModel
from ..store.modelinfo import cached_json, read_config
from ..store.names import parse_name
from .context import CONTEXT, Context, find_model, read_body
from .progress import stream_progress

TRAINER = web.AppKey("trainer", Trainer)
BLOB_DIGEST = re.compile(r"sha256[:-]([0-9a-f]{64})")


class FinetuneRequest(msgspec.Struct):
    model: str = ""  # the new model's name
    from_: str = msgspec.field(default="", name="from")  # the stored base model
    data: Any = None  # records, a path (JSONL file or folder) or a blob digest
    valid: Any = None
    method: str | None = None  # lora | dora | full
    iters: int | None = None
    epochs: float | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    rank: int | None = None
    alpha: float | None = None  # mlx-lm's LoRA `scale`
    dropout: float | None = None
    num_layers: int | None = None
    max_seq_length: int | None = None
    mask_prompt: bool | None = None
    seed: int | None = None
    val_every: int | None = None
    val_batches: int | None = None
    save_every: int | None = None
    report_every: int | None = None
    grad_checkpoint: bool | None = None
    fuse: bool = False
    quantize: int | str | None = None  # bits (4, 8) or an Ollama type (q4_K_M, q8_0)
    group_size: int | None = None
    stream: bool | None = None
    resume: bool = False


class FinetuneStatus(msgspec.Struct, omit_defaults=True):
    """One progress line: `status` and the fields of its kind (see the README)."""

    status: str
    # data: the checked and tokenized records
    train: int | None = None
    valid: int | None = None
    truncated: int | None = None
    train_tokens: int | None = None
    longest: int | None = None
    iters: int | None = None
    memory_estimate: int | None = None
    # training, validating, checkpoint
    iteration: int | None = None
    total: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    iterations_per_second: float | None = None
    trained_tokens: int | None = None
    peak_memory: int | None = None
    # success
    model: str | None = None
    result: str | None = None  # "adapter" (on the base's weights) or "model" (fused/full)
    iterations: int | None = None
    resumed_from: int | None = None
    elapsed: float | None = None


_decoder = msgspec.json.Decoder(FinetuneRequest)
# Request fields that are Job fields of the same name.
_JOB_FIELDS = (
    "method",
    "iters",
    "epochs",
    "learning_rate",
    "batch_size",
    "rank",
    "dropout",
    "num_layers",
    "max_seq_length",
    "mask_prompt",
    "seed",
    "val_every",
    "val_batches",
    "save_every",
    "report_every",
    "grad_checkpoint",
    "group_size",
    "fuse",
    "resume",
)


async def finetune(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    trainer = request.app[TRAINER]
    req: FinetuneRequest = await read_body(request, _decoder)
    if not req.model:
        raise StatusError("model is required: the new model's name", 400)
    try:
        name = parse_name(req.model).display
    except StatusError:
        raise StatusError("invalid model name", 400) from None
    if not req.from_:
        raise StatusError('"from" is required: the model to fine-tune', 400)
    base = find_model(ctx, req.from_)
    if trainer.busy:  # checked again when the job starts; this spares reading the data
        raise TrainingBusy(trainer.busy)
    training = await asyncio.to_thread(_check, ctx, req, name, base)
    events = trainer.run(training)
    return await stream_progress(request, _statuses(events), stream=req.stream is not False)


def _check(ctx: Context, req: FinetuneRequest, name: str, base: StoredModel) -> TrainingRequest:
    """The request as a job: every value and record checked (in a thread: data can be big)."""
    fields = {f: getattr(req, f) for f in _JOB_FIELDS if getattr(req, f) is not None}
    if req.alpha is not None:
        fields["scale"] = req.alpha
    if req.quantize is not None:
        fields["quantize"] = _bits(req.quantize)
    adapter = str(base.adapter_dir) if base.adapter_dir else None
    # job_dir and output are the trainer's to choose.
    job = parse_job({"model": str(base.model_dir), "job_dir": "", "output": "", **fields})
    job = msgspec.structs.replace(job, adapter=adapter)
    if req.data is None:
        raise StatusError(
            "data is required: a list of records, a path to a JSONL file or a folder with"
            " train.jsonl, or a blob digest (sha256:...)",
            400,
        )
    valid = _source(ctx, req.valid, "valid") if req.valid is not None else None
    data = load_training_data(_source(ctx, req.data, "data"), valid)
    config = read_config(base.model_dir)
    plan = _plan(job, config, data, base)
    longest = max(data.train.longest, data.valid.longest if data.valid else 0)
    try:
        estimate = estimate_memory(
            config,
            plan,
            weights_bytes(base.model_dir) + _adapter_bytes(base),
            seq_len=seq_len_guess(longest, plan.max_seq_length),
        )
    except ValueError as exc:
        raise StatusError(f"cannot fine-tune {base.name.display}: {exc}", 400) from None
    return TrainingRequest(name, base, job, plan, data, estimate.total)


def _plan(job: Any, config: dict[str, Any], data: TrainingData, base: StoredModel) -> Plan:
    n_layers = layer_count(config)
    if n_layers is None:
        raise JobError(f"cannot fine-tune {base.name.display}: its config names no layer count")
    adapter_config = None
    if base.adapter_dir is not None:
        adapter_config = cached_json(base.adapter_dir / "adapter_config.json")
        if not isinstance(adapter_config, dict):
            raise JobError(f"the adapter of {base.name.display} has no adapter_config.json")
    formats = [data.train.format] + ([data.valid.format] if data.valid else [])
    return resolve(
        job,
        n_layers=n_layers,
        n_train=len(data.train),
        formats=formats,
        model_quantized=is_quantized(config),
        adapter_config=adapter_config,
    )


def _bits(value: int | str) -> int:
    """`quantize` as bits: a number, or one of Ollama's type names (q4_K_M: 4)."""
    if isinstance(value, int):
        return value  # parse_job checks the range
    return quant_bits(value)


def _source(ctx: Context, value: Any, field: str) -> Source:
    """`data`/`valid` as finetune_data reads it: records, a path, or a blob's bytes."""
    if isinstance(value, list):
        return value
    if not isinstance(value, str) or not value:
        raise DataError(f"{field} must be a list of records, a path on the server or a blob digest")
    match = BLOB_DIGEST.fullmatch(value)
    if match:
        return _blob(ctx, value, match.group(1))
    path = Path(value).expanduser()
    if not path.is_absolute():
        raise DataError(f"{field}: the path {value} must be absolute (it is on the server)")
    return path


def _blob(ctx: Context, digest: str, hexdigest: str) -> bytes:
    """An upload of /api/blobs, where Ollama's store layout keeps it."""
    path = ctx.settings.models_dir / "blobs" / f"sha256-{hexdigest}"
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise DataError(f"blob {digest} is larger than {MAX_FILE_BYTES} bytes")
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"blob {digest} not found (upload it with POST /api/blobs)") from None


def _adapter_bytes(base: StoredModel) -> int:
    if base.adapter_dir is None:
        return 0
    return sum(p.stat().st_size for p in base.adapter_dir.glob("*.safetensors"))


async def _statuses(
    events: AsyncGenerator[dict[str, Any], None],
) -> AsyncGenerator[FinetuneStatus, None]:
    """The job's lines in the route's shape (unknown fields dropped)."""
    async with contextlib.aclosing(events):
        async for line in events:
            yield msgspec.convert(line, FinetuneStatus, strict=False)


def setup(app: web.Application) -> None:
    """Register /api/finetune and the trainer that lives as long as the app."""

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        ctx = app[CONTEXT]
        trainer = app[TRAINER] = Trainer(ctx.settings, ctx.store, ctx.scheduler)
        yield
        await trainer.close()

    async def stop_jobs(app: web.Application) -> None:
        # Before the grace period for requests in flight: a job would hold it to the end.
        app[TRAINER].cancel("the server is shutting down")

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.insert(0, stop_jobs)
    app.router.add_post("/api/finetune", finetune)
