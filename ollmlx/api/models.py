"""Ollama's model routes: tags, show, ps, copy, delete, create."""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from ..acquire.create import Creator
from ..acquire.create_plan import plan_create
from ..errors import StatusError
from ..serving import prompt_disk
from ..serving.group import GroupPlan, check_distributed, plan_group
from ..store import gguf
from ..store.catalog import StoredModel
from ..store.modelfile import format_parameters, render_modelfile
from ..store.modelinfo import (
    Details,
    capabilities,
    chat_template,
    count_parameters,
    quantization_level,
    read_config,
)
from ..store.names import parse_name
from ..store.spec import ModelSpec
from .completion import model_sampling
from .context import CONTEXT, Context, read_body
from .generation import memory_estimate
from .progress import PULLER, stream_progress
from .schemas import (
    CreateRequest,
    Distributed,
    GroupMember,
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
        plan = ref.worker.spec.group
        # What the worker holds (weights, draft, prompt cache: a quantized KV cache shows
        # as its smaller size); the budget counts the larger of that and the estimate.
        # A group: this machine's share plus what the other hosts hold.
        size = ref.held_bytes + sum(ref.worker.rank_memory[1:])
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
                distributed=_distributed(plan, ref.worker.rank_memory) if plan else None,
            )
        )
    return _json({"models": running})


def _distributed(plan: GroupPlan, rank_memory: list[int]) -> Distributed:
    sizes = [*rank_memory, *[0] * plan.size][: plan.size]
    hosts = [
        GroupMember(host, rank, size)
        for rank, (host, size) in enumerate(zip(plan.hosts, sizes, strict=True))
    ]
    return Distributed(plan.parallelism, plan.backend, hosts)


def _show_distributed(ctx: Context, stored: StoredModel) -> Distributed | None:
    """How the model is (or would be, at its default context) served by a group."""
    asked = stored.manifest.parameters.get("distributed")
    try:
        num_ctx = model_sampling(ctx, stored, None).num_ctx
        plan = plan_group(ctx.settings, stored, memory_estimate(stored, num_ctx))
    except StatusError:
        plan = None
    if plan is not None:
        return _distributed(plan, [])
    return Distributed(asked, "") if asked else None  # asked for, but not servable here


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


def stored_info(stored: StoredModel) -> dict[str, Any]:
    """model_info: a GGUF's own metadata (as Ollama shows it), else facts of config.json."""
    if stored.gguf is not None:
        return gguf.model_info(gguf.header(stored.gguf)) if stored.gguf.is_file() else {}
    return model_info(stored.model_dir)


def _source_info(manifest: ModelSpec) -> dict[str, str]:
    """Where a pulled model came from: what an Ollama name resolved to, and the commit."""
    if not manifest.repo:
        return {}
    return {
        "general.source.huggingface.repository": manifest.repo,
        "general.source.huggingface.commit": manifest.revision,
    }


def shown_template(stored: StoredModel) -> str:
    """The template /api/show reports: Ollama's Go one if the manifest has it (as Ollama
    shows it), else ollmlx's Jinja TEMPLATE, else the model's own chat template."""
    spec = stored.manifest
    return spec.go_template or spec.template or chat_template(stored.model_dir)


def _shown_details(details: Details, info: dict[str, Any], stored: StoredModel) -> Details:
    """Ollama's GetModelInfo fills a safetensors model's empty details from config.json
    (x/create writes no family or size into the config)."""
    if stored.format != "safetensors" or stored.problem:
        return details
    shown = msgspec.structs.replace(details)
    shown.family = shown.family or str(info.get("general.architecture") or "")
    shown.families = shown.families or ([shown.family] if shown.family else None)
    count = int(info.get("general.parameter_count") or 0)
    if not shown.parameter_size and count:
        shown.parameter_size = gguf.human_number(count)
    if not shown.quantization_level:
        shown.quantization_level = quantization_level(read_config(stored.model_dir))
    return shown


async def show(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    req = await read_body(request, model_decoder)
    name = req.model or req.name
    if not name:
        raise StatusError("model is required", 400)
    stored = await asyncio.to_thread(ctx.store.get, name)
    if stored is None:
        raise StatusError(f"model '{name}' not found", 404)
    manifest = stored.manifest
    template = shown_template(stored)
    info = await asyncio.to_thread(stored_info, stored)
    details = _shown_details(manifest.details, info, stored)
    return _json(
        ShowResponse(
            modelfile=render_modelfile(
                stored.name.display,
                manifest.source,
                template,
                manifest.system,
                manifest.parameters,
                manifest.messages,
                manifest.license,
            ),
            details=details,
            model_info={**info, **_source_info(manifest), **manifest.info},
            modified_at=stored.modified_at.astimezone(),
            capabilities=capabilities(stored.model_dir, manifest.template),
            parameters=format_parameters(manifest.parameters),
            template=template,
            system=manifest.system or "",
            license="\n".join(manifest.license),
            messages=manifest.messages or None,
            distributed=_show_distributed(ctx, stored),
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
    if await asyncio.to_thread(ctx.store.copy, req.source, req.destination) is None:
        raise StatusError(f'model "{req.source}" not found', 404)
    return web.Response(status=200)


async def delete(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    req = await read_body(request, model_decoder)
    name = req.model or req.name
    try:
        stored = await asyncio.to_thread(ctx.store.get, name)
    except StatusError as exc:
        if exc.status != 400:
            raise
        raise StatusError(f'name "{name}" is invalid', 400) from None
    if stored is None:
        raise StatusError(f"model '{name}' not found", 404)
    # Running answers finish on the loaded weights (open files outlive their names);
    # new requests find no model.
    await ctx.scheduler.retire(stored.name.display, "deleted")
    await asyncio.to_thread(ctx.store.delete, name)
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
    plan = await asyncio.to_thread(plan_create, ctx.store, req)
    weights_dir = plan.source_dir or (plan.base.model_dir if plan.base else None)
    check_distributed(ctx.settings, weights_dir, plan.parameters.get("distributed"))
    creator = Creator(ctx.store, request.app[PULLER], ctx.converter)
    return await stream_progress(request, creator.run(name, plan), stream=req.stream is not False)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/tags", tags)
    router.add_get("/api/ps", ps)
    router.add_post("/api/show", show)
    router.add_post("/api/copy", copy)
    router.add_delete("/api/delete", delete)
    router.add_post("/api/create", create)
