"""Ollama's model routes: tags, show, ps, copy, delete, create."""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from aiohttp import web

from ..modelfile import ModelfileError, format_parameters, parse_modelfile, render_modelfile
from ..modelinfo import (
    capabilities,
    chat_template,
    check_model_dir,
    count_parameters,
    describe,
    read_config,
)
from ..names import InvalidName, parse_name
from ..options import OptionError, check_option
from ..store import Manifest, StoredModel
from .app import CONTEXT, ApiError, Context
from .native import read_body
from .schemas import (
    CreateRequest,
    ListedModel,
    RunningModel,
    ShowResponse,
    Status,
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
        expires = (
            now + FOREVER
            if math.isinf(ref.expires_at)
            else datetime.fromtimestamp(ref.expires_at, timezone.utc).astimezone()
        )
        running.append(
            RunningModel(
                name=ref.model.name.display,
                model=ref.model.name.display,
                size=ref.memory_bytes,
                digest=ref.model.digest,
                details=ref.model.manifest.details,
                expires_at=expires,
                size_vram=ref.memory_bytes,  # unified memory: all of it is the GPU's
                context_length=ctx.settings.context_length,
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


async def show(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    req = await read_body(request, model_decoder)
    name = req.model or req.name
    if not name:
        raise ApiError(400, "model is required")
    stored = ctx.store.get(name)
    if stored is None:
        raise ApiError(404, f"model '{name}' not found")
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
            model_info=model_info(stored.model_dir),
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
        except InvalidName:
            raise ApiError(400, f'{label} "{value}" is invalid') from None
    if ctx.store.copy(req.source, req.destination) is None:
        raise ApiError(404, f'model "{req.source}" not found')
    return web.Response(status=200)


async def delete(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    req = await read_body(request, model_decoder)
    name = req.model or req.name
    try:
        stored = ctx.store.get(name)
    except InvalidName:
        raise ApiError(400, f'name "{name}" is invalid') from None
    if stored is None:
        raise ApiError(404, f"model '{name}' not found")
    await ctx.scheduler.unload(stored.name.display)  # never delete weights in use
    ctx.store.delete(name)
    log.info("deleted %s", stored.name.display)
    return web.Response(status=200)


async def create(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    req: CreateRequest = await read_body(request, create_decoder)
    name = req.model or req.name
    try:
        parse_name(name)
    except InvalidName:
        raise ApiError(400, "invalid model name") from None
    plan = _plan_create(ctx, req)
    if req.stream is False:
        async for _ in _run_create(ctx, name, plan):
            pass
        return _json(Status("success"))
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    try:
        async for status in _run_create(ctx, name, plan):
            await response.write(encoder.encode(Status(status)) + b"\n")
        await response.write(encoder.encode(Status("success")) + b"\n")
    except (OSError, ValueError) as exc:
        log.warning("create %s failed: %s", name, exc)
        await response.write(encoder.encode({"error": str(exc)}) + b"\n")
    await response.write_eof()
    return response


class _CreatePlan:
    """What /api/create will write, checked before any byte of the answer is sent."""

    def __init__(self) -> None:
        self.source_dir: Path | None = None
        self.adapter_dir: Path | None = None
        self.base: StoredModel | None = None
        self.manifest = Manifest(weights="")


def _plan_create(ctx: Context, req: CreateRequest) -> _CreatePlan:
    plan = _CreatePlan()
    manifest = plan.manifest
    if req.modelfile:
        try:
            parsed = parse_modelfile(req.modelfile)
        except ModelfileError as exc:
            raise ApiError(400, str(exc)) from None
        req.from_ = req.from_ or parsed.from_
        req.template = req.template if req.template is not None else parsed.template
        req.system = req.system if req.system is not None else parsed.system
        req.license = req.license or parsed.license or None
        req.parameters = {**parsed.parameters, **(req.parameters or {})}
        req.messages = req.messages or parsed.messages or None
        if parsed.adapter:
            req.adapters = {"adapter": parsed.adapter}
    if not req.from_:
        raise ApiError(400, "neither 'from' or 'files' was specified")
    if req.quantize:
        raise ApiError(400, "quantize is not supported yet")
    source = Path(req.from_).expanduser()
    if source.is_absolute() or req.from_.startswith((".", "~")):
        problem = check_model_dir(source)
        if problem:
            raise ApiError(400, problem)
        plan.source_dir = source.resolve()
        manifest.source = str(plan.source_dir)
    else:
        base = ctx.store.get(req.from_)
        if base is None:
            raise ApiError(404, f"model '{req.from_}' not found")
        plan.base = base
        manifest = plan.manifest = Manifest(
            **{f: getattr(base.manifest, f) for f in base.manifest.__struct_fields__}
        )
        manifest.source = base.name.display
    for adapter in (req.adapters or {}).values():
        path = Path(adapter).expanduser()
        if not (path / "adapter_config.json").is_file():
            raise ApiError(400, f"adapter {adapter} has no adapter_config.json")
        plan.adapter_dir = path.resolve()
    try:
        typed = {k: check_option(k, v) for k, v in (req.parameters or {}).items()}
    except (OptionError, KeyError) as exc:
        raise ApiError(400, str(exc).strip('"')) from None
    manifest.parameters = {**manifest.parameters, **typed}
    if req.template is not None:
        manifest.template = req.template or None
    if req.system is not None:
        manifest.system = req.system or None
    if req.license:
        manifest.license = [req.license] if isinstance(req.license, str) else list(req.license)
    if req.messages:
        manifest.messages = list(req.messages)
    return plan


async def _run_create(ctx: Context, name: str, plan: _CreatePlan) -> Any:
    """Install weights (in a thread: hashing is blocking), then write the manifest."""
    manifest = plan.manifest
    if plan.source_dir is not None:
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
    yield "writing manifest"
    await asyncio.to_thread(ctx.store.write, name, manifest)
    log.info("created %s", parse_name(name).display)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/tags", tags)
    router.add_get("/api/ps", ps)
    router.add_post("/api/show", show)
    router.add_post("/api/copy", copy)
    router.add_delete("/api/delete", delete)
    router.add_post("/api/create", create)
