"""Ollama's generate and chat requests -> the one internal `CompletionRequest`.

What /api/generate and /api/chat check first, in Ollama's order, and how they become a
worker's request; the /v1 dialects translate into Ollama's request and come here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import StatusError
from ..formats import check_format
from ..options import resolve_sampling
from ..protocol import CompletionRequest, Message, Sampling
from ..store.catalog import StoredModel
from ..store.modelinfo import capabilities
from .context import Context, find_model, parse_keep_alive
from .generation import memory_estimate
from .schemas import ChatRequest, GenerateRequest


def check_request_format(fmt: Any) -> Any:
    """None, "json" or a schema that compiles to a grammar; else a 400 like Ollama's."""
    problem = check_format(fmt)
    if problem:
        raise StatusError(problem, 400)
    return fmt or None


def check_images(name: str, stored: StoredModel, images: list[str] | None) -> None:
    if images and "vision" not in capabilities(stored.model_dir, stored.manifest.template):
        raise StatusError(f'"{name}" does not support images', 400)


def check_think(name: str, stored: StoredModel, think: bool | str | None) -> None:
    if think in (None, False):
        return
    if isinstance(think, str) and think not in ("low", "medium", "high"):
        raise StatusError(
            f'invalid think value: "{think}" (must be "high", "medium", "low", true, or false)', 400
        )
    if "thinking" not in capabilities(stored.model_dir, stored.manifest.template):
        raise StatusError(f'"{name}" does not support thinking', 400)
    if isinstance(think, str) and "reasoning_effort" not in _template_text(stored):
        raise StatusError(f'think value "{think}" is not supported for this model', 400)


def _template_text(stored: StoredModel) -> str:
    from ..store.modelinfo import chat_template

    return stored.manifest.template or chat_template(stored.model_dir)


@dataclass
class Checked:
    """What generate and chat both check first, in Ollama's order."""

    stored: StoredModel
    keep_alive: float | None
    format: Any
    sampling: Sampling


def check_common(
    ctx: Context, req: GenerateRequest | ChatRequest, images: list[str] | None
) -> Checked:
    if not 0 <= req.top_logprobs <= 20:
        raise StatusError("top_logprobs must be between 0 and 20", 400)
    stored = find_model(ctx, req.model)
    keep_alive = parse_keep_alive(req.keep_alive)
    if "completion" not in capabilities(stored.model_dir, stored.manifest.template):
        verb = "chat" if isinstance(req, ChatRequest) else "generate"
        raise StatusError(f'"{req.model}" does not support {verb}', 400)  # embedding-only
    check_think(req.model, stored, req.think)
    check_images(req.model, stored, images)
    return Checked(
        stored,
        keep_alive,
        check_request_format(req.format),
        resolve_sampling(ctx.settings, stored.manifest.parameters, req.options),
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
        return_context=not req.raw,
        format=checked.format,
        logprobs=req.logprobs,
        top_logprobs=req.top_logprobs,
        think=req.think,
    )


def check_chat(ctx: Context, req: ChatRequest) -> Checked:
    images = [image for m in req.messages for image in (m.images or [])]
    checked = check_common(ctx, req, images)
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
        format=checked.format,
        logprobs=req.logprobs,
        top_logprobs=req.top_logprobs,
        tools=req.tools,
        think=req.think,
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
    await ctx.scheduler.load(stored, keep_alive, memory_estimate(stored, num_ctx))
    return "load"
