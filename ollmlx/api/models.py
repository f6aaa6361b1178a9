"""Ollama's model routes: tags, show, ps, copy, delete, create."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from aiohttp import web

from ..acquire.pull import Progress, Puller
from ..acquire.quantize import convert, quant_bits
from ..errors import StatusError
from ..options import check_option
from ..serving import prompt_disk
from ..store.aliases import resolve
from ..store.catalog import Manifest, StoredModel
from ..store.modelfile import format_parameters, parse_modelfile, render_modelfile
from ..store.modelinfo import (
    cached_json,
    capabilities,
    chat_template,
    check_model_dir,
    count_parameters,
    describe,
    read_config,
)
from ..store.names import parse_name
from .completion import model_sampling
from .context import CONTEXT, Context, read_body
from .progress import PULLER, stream_progress
from .schemas import (
    CreateRequest,
    ListedModel,
    RunningModel,
    ShowResponse,
    copy_decoder,
    create_decoder,
    encoder,
    model_decoder,
)

log = logging.getLogger("ollmlx.api")

# Go's longest duration: what Ollama shows as the expiry of a model kept forever.
FOREVER = timedelta(seconds=(2**63 - 1) / 1e9)
_MODEL_INFO_KEYS = {
    "max_position_embeddings": "context_length",
    "hidden_size": "embedding_length",
    "num_hidden_layers": "block_count",
    "num_attention_heads": "attention.head_count",
    "num_key_value_heads": "attention.head_count_kv",
    "intermediate_size": "feed_forward_length",
    "vocab_size": "vocab_size",
    "rope_theta": "rope.freq_base",
    "rms_norm_eps": "attention.layer_norm_rms_epsilon",
}


def _json(obj: Any) -> web.Response:
    return web.Response(body=encoder.encode(obj), content_type="application/json")


async def tags(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    listed = [
        ListedModel(
            name=m.name.display,
            model=m.name.display,
            modified_at=m.modified_at.astimezone(),
            size=m.manifest.size,
            digest=m.digest,
            details=m.manifest.details,
        )
        for m in ctx.store.list()
    ]
    listed.sort(key=lambda m: m.modified_at, reverse=True)
    return _json({"models": listed})


async def ps(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    now = datetime.now(timezone.utc).astimezone()
    running = []
    for ref in ctx.scheduler.loaded():
        name = ref.model.name.display
        num_ctx = ctx.num_ctx.get(name) or model_sampling(ctx, ref.model, None).num_ctx
        expires = (
            now + FOREVER
            if math.isinf(ref.expires_at)
            else datetime.fromtimestamp(ref.expires_at, timezone.utc).astimezone()
        )
        # What the worker holds (weights, draft, prompt cache: a quantized KV cache shows
        # as its smaller size); the budget counts the larger of that and the estimate.
        size = ref.held_bytes
        running.append(
            RunningModel(
                name=ref.model.name.display,
                model=ref.model.name.display,
                size=size,
                digest=ref.model.digest,
                details=ref.model.manifest.details,
                expires_at=expires,
                # Metal's unified memory or CUDA: all of it is the GPU's; MLX on the CPU: none
                # (`ollama ps` then says 100% CPU).
                size_vram=0 if ctx.settings.backend == "cpu" else size,
                context_length=num_ctx,
            )
        )
    return _json({"models": running})


def model_info(model_dir: Path) -> dict[str, Any]:
    config = read_config(model_dir)
    arch = str(config.get("model_type", ""))
    info: dict[str, Any] = {
        "general.architecture": arch,
        "general.parameter_count": count_parameters(model_dir, config),
    }
    for key, value in config.items():
        if isinstance(value, int | float | str | bool):
            info[f"{arch}.{_MODEL_INFO_KEYS.get(key, key)}"] = value
    return info


def _source_info(manifest: Manifest) -> dict[str, str]:
    """Where a pulled model came from: what an Ollama name resolved to, and the commit."""
    if not manifest.repo:
        return {}
    return {
        "general.source.huggingface.repository": manifest.repo,
        "general.source.huggingface.commit": manifest.revision,
    }


async def show(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    req = await read_body(request, model_decoder)
    name = req.model or req.name
    if not name:
        raise StatusError("model is required", 400)
    stored = ctx.store.get(name)
    if stored is None:
        raise StatusError(f"model '{name}' not found", 404)
    manifest = stored.manifest
    return _json(
        ShowResponse(
            modelfile=render_modelfile(
                stored.name.display,
                manifest.source,
                manifest.template,
                manifest.system,
                manifest.parameters,
                manifest.messages,
                manifest.license,
            ),
            details=manifest.details,
            model_info={**model_info(stored.model_dir), **_source_info(manifest), **manifest.info},
            modified_at=stored.modified_at.astimezone(),
            capabilities=capabilities(stored.model_dir, manifest.template),
            parameters=format_parameters(manifest.parameters),
            template=manifest.template or chat_template(stored.model_dir),
            system=manifest.system or "",
            license="\n".join(manifest.license),
            messages=manifest.messages or None,
        )
    )


async def copy(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    req = await read_body(request, copy_decoder)
    for label, value in (("source", req.source), ("destination", req.destination)):
        try:
            parse_name(value)
        except StatusError:
            raise StatusError(f'{label} "{value}" is invalid', 400) from None
    if ctx.store.copy(req.source, req.destination) is None:
        raise StatusError(f'model "{req.source}" not found', 404)
    return web.Response(status=200)


async def delete(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    req = await read_body(request, model_decoder)
    name = req.model or req.name
    try:
        stored = ctx.store.get(name)
    except StatusError:
        raise StatusError(f'name "{name}" is invalid', 400) from None
    if stored is None:
        raise StatusError(f"model '{name}' not found", 404)
    # Running answers finish on the loaded weights (open files outlive their names);
    # new requests find no model.
    await ctx.scheduler.retire(stored.name.display, "deleted")
    ctx.store.delete(name)
    log.info("deleted %s", stored.name.display)
    await asyncio.to_thread(prompt_disk.collect, ctx.settings.models_dir, ctx.store.list())
    return web.Response(status=200)


async def create(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    req: CreateRequest = await read_body(request, create_decoder)
    name = req.model or req.name
    try:
        parse_name(name)
    except StatusError:
        raise StatusError("invalid model name", 400) from None
    plan = _plan_create(ctx, req)
    events = _run_create(ctx, request.app[PULLER], name, plan)
    return await stream_progress(request, events, stream=req.stream is not False)


class _CreatePlan:
    """What /api/create will write, checked before any byte of the answer is sent."""

    def __init__(self, req: CreateRequest) -> None:
        self.req = req
        self.source_dir: Path | None = None
        self.adapter_dir: Path | None = None
        self.base: StoredModel | None = None
        self.pull: str = ""  # a FROM model to pull from Hugging Face first
        self.bits = 0  # quantize to this many bits
        self.draft_dir: Path | None = None  # a DRAFT folder to install
        self.draft_digest = ""  # or a stored model's weights, used as they are
        self.parameters: dict[str, Any] = {}


def _merge_modelfile(req: CreateRequest) -> None:
    """Fold an old client's `modelfile` text into the request; the request's fields win."""
    try:
        parsed = parse_modelfile(req.modelfile)
    except StatusError as exc:
        raise StatusError(str(exc), 400) from None
    req.from_ = req.from_ or parsed.from_
    req.template = req.template if req.template is not None else parsed.template
    req.system = req.system if req.system is not None else parsed.system
    req.license = req.license or parsed.license or None
    req.parameters = {**parsed.parameters, **(req.parameters or {})}
    req.messages = req.messages or parsed.messages or None
    if parsed.adapter:
        req.adapters = {"adapter": parsed.adapter}
    req.draft = req.draft or parsed.draft or None


def _plan_create(ctx: Context, req: CreateRequest) -> _CreatePlan:
    plan = _CreatePlan(req)
    if req.modelfile:
        _merge_modelfile(req)
    if not req.from_:
        raise StatusError("neither 'from' or 'files' was specified", 400)
    if req.quantize:
        try:
            plan.bits = quant_bits(req.quantize)
        except StatusError as exc:
            raise StatusError(str(exc), exc.status) from None
    source = Path(req.from_).expanduser()
    if source.is_absolute() or req.from_.startswith((".", "~")):
        problem = check_model_dir(source)
        if problem:
            raise StatusError(problem, 400)
        plan.source_dir = source.resolve()
    else:
        plan.base = ctx.store.get(req.from_)
        if plan.base is None:
            if not _pullable(req.from_):
                raise StatusError(f"model '{req.from_}' not found", 404)
            plan.pull = req.from_
    weights_dir = plan.source_dir or (plan.base.model_dir if plan.base else None)
    if plan.bits and weights_dir is not None:
        _check_quantizable(weights_dir)
    for adapter in (req.adapters or {}).values():
        path = Path(adapter).expanduser()
        if not (path / "adapter_config.json").is_file():
            raise StatusError(f"adapter {adapter} has no adapter_config.json", 400)
        plan.adapter_dir = path.resolve()
    if req.draft:
        _plan_draft(ctx, plan, req.draft, weights_dir)
    try:
        plan.parameters = {k: check_option(k, v) for k, v in (req.parameters or {}).items()}
    except (StatusError, KeyError) as exc:
        raise StatusError(str(exc).strip('"'), 400) from None
    return plan


def _plan_draft(ctx: Context, plan: _CreatePlan, draft: str, target: Path | None) -> None:
    """DRAFT: a model folder or a stored model, whose vocabulary must be the target's (the
    target verifies the draft's token ids)."""
    source = Path(draft).expanduser()
    if source.is_absolute() or draft.startswith((".", "~")):
        problem = check_model_dir(source)
        if problem:
            raise StatusError(f"draft: {problem}", 400)
        plan.draft_dir = draft_dir = source.resolve()
    else:
        stored = ctx.store.get(draft)
        if stored is None:
            raise StatusError(f"draft model '{draft}' not found", 404)
        plan.draft_digest, draft_dir = stored.manifest.weights, stored.model_dir
    if target is not None and _vocabulary(target) != _vocabulary(draft_dir):
        raise StatusError("the draft model's vocabulary does not match the model's", 400)


def _vocabulary(model_dir: Path) -> Any:
    """What a draft must share with its model: the tokenizer's vocabulary (a model's
    vocab_size may be padded past it, as Qwen2.5 7B's is and 0.5B's is not)."""
    tokenizer = cached_json(model_dir / "tokenizer.json")
    vocab = (tokenizer or {}).get("model", {}).get("vocab") if isinstance(tokenizer, dict) else None
    return vocab if vocab else read_config(model_dir).get("vocab_size")


def _pullable(text: str) -> bool:
    try:
        resolve(parse_name(text))
    except StatusError:
        return False
    return True


def _check_quantizable(model_dir: Path) -> None:
    config = read_config(model_dir)
    if config.get("quantization") or config.get("quantization_config"):
        raise StatusError("quantization is only supported for F16 and F32 models", 400)


def _base_manifest(base: StoredModel) -> Manifest:
    fields = {f: getattr(base.manifest, f) for f in base.manifest.__struct_fields__}
    manifest = Manifest(**fields)
    manifest.source = base.name.display
    return manifest


def _apply_request(manifest: Manifest, plan: _CreatePlan) -> None:
    """What the request sets replaces what the base model had."""
    req = plan.req
    manifest.parameters = {**manifest.parameters, **plan.parameters}
    if req.template is not None:
        manifest.template = req.template or None
    if req.system is not None:
        manifest.system = req.system or None
    if req.license:
        manifest.license = [req.license] if isinstance(req.license, str) else list(req.license)
    if req.messages:
        manifest.messages = list(req.messages)


async def _run_create(
    ctx: Context, puller: Puller, name: str, plan: _CreatePlan
) -> AsyncIterator[Progress | str]:
    """Pull or install the weights (blocking work in threads), then write the manifest."""
    if plan.pull:
        async for event in puller.pull(plan.pull):
            if event.status != "success":
                yield event
        plan.base = ctx.store.get(plan.pull)
        if plan.base is None:
            raise StatusError(f"model '{plan.pull}' vanished after pulling it", 500)
        if plan.bits:
            _check_quantizable(plan.base.model_dir)
    if plan.base is not None:
        manifest = _base_manifest(plan.base)
    else:
        assert plan.source_dir is not None
        manifest = Manifest(weights="", source=str(plan.source_dir))
    if plan.bits:
        async for status in _quantize(ctx, plan, manifest):
            yield status
    elif plan.source_dir is not None:
        yield "copying model files"
        digest, size = await asyncio.to_thread(ctx.store.install_weights, plan.source_dir)
        manifest.weights, manifest.size = digest, size
        manifest.details = await asyncio.to_thread(describe, plan.source_dir)
        yield f"creating new layer {digest.replace('-', ':')}"
    else:
        yield f"using existing layer {manifest.weights.replace('-', ':')}"
    if plan.adapter_dir is not None:
        adapter, _ = await asyncio.to_thread(ctx.store.install_weights, plan.adapter_dir)
        manifest.adapter = adapter
        yield f"creating new layer {adapter.replace('-', ':')}"
    if plan.draft_dir is not None:
        manifest.draft, _ = await asyncio.to_thread(ctx.store.install_weights, plan.draft_dir)
        yield f"creating new layer {manifest.draft.replace('-', ':')}"
    elif plan.draft_digest:
        manifest.draft = plan.draft_digest
        yield f"using existing layer {manifest.draft.replace('-', ':')}"
    _apply_request(manifest, plan)
    yield "writing manifest"
    await asyncio.to_thread(ctx.store.write, name, manifest)
    log.info("created %s", parse_name(name).display)
    yield "success"


async def _quantize(ctx: Context, plan: _CreatePlan, manifest: Manifest) -> AsyncIterator[str]:
    """Convert in a child process into scratch space, then install the result."""
    source = plan.source_dir or (plan.base.model_dir if plan.base else None)
    assert source is not None and plan.req.quantize
    level = manifest.details.quantization_level or describe(source).quantization_level
    yield f"quantizing {level or 'F16'} model to {plan.req.quantize.upper()}"
    with ctx.store.scratch() as scratch:
        out = scratch / "model"
        async for status in convert(source, out, plan.bits):
            yield status
        digest, size = await asyncio.to_thread(ctx.store.install_weights, out)
        details = await asyncio.to_thread(describe, out)
    details.parent_model = manifest.source
    manifest.weights, manifest.size, manifest.details = digest, size, details
    manifest.repo = manifest.revision = ""
    yield f"creating new layer {digest.replace('-', ':')}"


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/tags", tags)
    router.add_get("/api/ps", ps)
    router.add_post("/api/show", show)
    router.add_post("/api/copy", copy)
    router.add_delete("/api/delete", delete)
    router.add_post("/api/create", create)
