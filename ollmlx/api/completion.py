"""Ollama's generate and chat requests -> the one internal `CompletionRequest`.

What /api/generate and /api/chat check first, in Ollama's order, and how they become a
worker's request; the /v1 dialects translate into Ollama's request and come here too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..errors import StatusError
from ..formats import check_format
from ..options import resolve_sampling
from ..protocol import CompletionRequest, Message, Sampling
from ..store.catalog import StoredModel
from ..store.modelinfo import capabilities, chat_template, read_config
from .context import Context, find_model, parse_keep_alive
from .generation import memory_estimate
from .schemas import ChatRequest, GenerateRequest

log = logging.getLogger("ollmlx.api")


def check_request_format(fmt: Any) -> Any:
    """None, "json" or a schema that compiles to a grammar; else a 400 like Ollama's."""
    problem = check_format(fmt)
    if problem:
        raise StatusError(problem, 400)
    return fmt or None


def check_images(name: str, stored: StoredModel, images: list[str] | None) -> None:
    if images and "vision" not in capabilities(stored.model_dir, stored.manifest.template):
        raise StatusError(f'"{name}" does not support images', 400)


THINK_LEVELS = ("high", "medium", "low", "max")


def check_think(name: str, stored: StoredModel, think: bool | str | None) -> bool | str | None:
    """Ollama's think checks (api/types.go ThinkValue), and the value the template gets.

    A level is accepted by every thinking model, as Ollama does since it dropped the
    template check (#14625): templates that take `reasoning_effort` get the level ("max"
    as "high", their top level, as Ollama does for harmony), the others `think: true`.
    """
    if think in (None, False):
        return think
    if isinstance(think, str) and think not in THINK_LEVELS:
        raise StatusError(
            f'invalid think value: "{think}" (must be "high", "medium", "low", "max", true, '
            "or false)",
            400,
        )
    if "thinking" not in capabilities(stored.model_dir, stored.manifest.template):
        raise StatusError(f'"{name}" does not support thinking', 400)
    if isinstance(think, str):
        if "reasoning_effort" not in _template_text(stored):
            return True
        return "high" if think == "max" else think
    return think


def _template_text(stored: StoredModel) -> str:
    return stored.manifest.template or chat_template(stored.model_dir)


def trained_context(stored: StoredModel) -> int:
    """The context length the model was trained for, from its config (0: unknown)."""
    config = read_config(stored.model_dir)
    text = config.get("text_config")
    for source in (config, text if isinstance(text, dict) else {}):
        for key in ("max_position_embeddings", "max_sequence_length", "n_positions"):
            value = source.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return 0


def model_sampling(ctx: Context, stored: StoredModel, options: dict[str, Any] | None) -> Sampling:
    """Options resolved for this model: capped at its trained context, and an automatic
    num_ctx lowered until its KV cache fits in the memory budget."""
    budget = ctx.settings.memory_budget

    def fits(num_ctx: int) -> bool:
        kv_default = ctx.settings.kv_cache_type
        return not budget or memory_estimate(stored, num_ctx, kv_default) <= budget

    params = stored.manifest.parameters
    return resolve_sampling(ctx.settings, params, options, trained_context(stored), fits)


@dataclass
class Checked:
    """What generate and chat both check first, in Ollama's order."""

    stored: StoredModel
    keep_alive: float | None
    format: Any
    sampling: Sampling
    think: bool | str | None = None  # the value for the template (see check_think)


def check_common(
    ctx: Context,
    req: GenerateRequest | ChatRequest,
    images: list[str] | None,
    relax_thinking: bool = False,
) -> Checked:
    if not 0 <= req.top_logprobs <= 20:
        raise StatusError("top_logprobs must be between 0 and 20", 400)
    stored = find_model(ctx, req.model)
    keep_alive = parse_keep_alive(req.keep_alive)
    caps = capabilities(stored.model_dir, stored.manifest.template)
    if "completion" not in caps:
        verb = "chat" if isinstance(req, ChatRequest) else "generate"
        raise StatusError(f'"{req.model}" does not support {verb}', 400)  # embedding-only
    requested = req.think
    if relax_thinking and requested not in (None, False) and "thinking" not in caps:
        # Ollama's relax_thinking (server/routes.go ChatHandler), set for Anthropic clients.
        log.warning("model %s does not support thinking, relaxing thinking to nil", req.model)
        requested = None
    think = check_think(req.model, stored, requested)
    check_images(req.model, stored, images)
    return Checked(
        stored,
        keep_alive,
        check_request_format(req.format),
        model_sampling(ctx, stored, req.options),
        think,
    )


def check_generate(ctx: Context, req: GenerateRequest) -> Checked:
    checked = check_common(ctx, req, req.images)
    if req.raw and (req.template or req.system or req.context):
        raise StatusError("raw mode does not support template, system, or context", 400)
    if req.suffix:
        raise StatusError(f"{checked.stored.name.display} does not support insert", 400)
    return checked


def generate_completion(req: GenerateRequest, checked: Checked) -> CompletionRequest:
    manifest = checked.stored.manifest
    return CompletionRequest(
        sampling=checked.sampling,
        prompt=req.prompt,
        images=req.images,
        system=req.system if req.system is not None else manifest.system,
        template=req.template or manifest.template,
        raw=req.raw,
        context=req.context,
        truncate=req.truncate is not False,
        shift=req.shift is not False,
        return_context=not req.raw,
        format=checked.format,
        logprobs=req.logprobs,
        top_logprobs=req.top_logprobs,
        think=checked.think,
    )


def check_chat(ctx: Context, req: ChatRequest, relax_thinking: bool = False) -> Checked:
    images = [image for m in req.messages for image in (m.images or [])]
    checked = check_common(ctx, req, images, relax_thinking)
    stored = checked.stored
    if req.tools and "tools" not in capabilities(stored.model_dir, stored.manifest.template):
        raise StatusError(f'"{req.model}" does not support tools', 400)
    return checked


def chat_completion(req: ChatRequest, checked: Checked) -> CompletionRequest:
    return CompletionRequest(
        sampling=checked.sampling,
        messages=model_messages(checked.stored, req.messages),
        template=checked.stored.manifest.template,
        truncate=req.truncate is not False,
        shift=req.shift is not False,
        format=checked.format,
        logprobs=req.logprobs,
        top_logprobs=req.top_logprobs,
        tools=req.tools,
        think=checked.think,
    )


def model_messages(stored: StoredModel, messages: list[Message]) -> list[Message]:
    """The Modelfile's MESSAGEs first, and its SYSTEM unless the chat brings its own."""
    manifest = stored.manifest
    prefix = list(manifest.messages)
    has_system = any(m.role == "system" for m in [*prefix, *messages[:1]])
    if manifest.system and not has_system:
        prefix.insert(0, Message(role="system", content=manifest.system))
    return [*prefix, *messages]


async def load_or_unload(
    ctx: Context, stored: StoredModel, keep_alive: float | None, num_ctx: int
) -> str:
    """An empty prompt loads the model; with keep_alive 0 it unloads it instead."""
    if keep_alive == 0:
        await ctx.scheduler.unload(stored.name.display)
        return "unload"
    estimate = memory_estimate(stored, num_ctx, ctx.settings.kv_cache_type)
    await ctx.scheduler.load(stored, keep_alive, estimate)
    ctx.num_ctx[stored.name.display] = num_ctx
    return "load"
