"""Ollama's generation routes: /, /api/version, /api/generate, /api/chat."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from .. import __version__
from ..config import parse_duration
from ..formats import check_format
from ..modelinfo import capabilities
from ..options import resolve_sampling
from ..protocol import (
    CompletionRequest,
    DoneEvent,
    Message,
    Sampling,
    StreamAs,
    TokenEvent,
)
from ..store import StoredModel
from .app import CONTEXT, ApiError, Context
from .generation import memory_estimate, run_completion
from .schemas import (
    ChatChunk,
    ChatRequest,
    GenerateChunk,
    GenerateRequest,
    OutMessage,
    chat_chunk,
    chat_decoder,
    encoder,
    generate_chunk,
    generate_decoder,
    now_rfc3339,
)

log = logging.getLogger("ollmlx.api")

# Builds one Ollama chunk from (token event or None, final event or None, durations).
ChunkMaker = Callable[[TokenEvent | None, DoneEvent | None, int, int], Any]


class Ndjson:
    """Ollama's dialect: one chunk per line, built by the route's `make`."""

    content_type = "application/x-ndjson"

    def __init__(self, make: ChunkMaker) -> None:
        self.make = make
        self.buffer = bytearray()  # reused: one encode per token without a new allocation

    def _line(self, chunk: Any) -> bytes:
        encoder.encode_into(chunk, self.buffer)
        self.buffer.extend(b"\n")
        return bytes(self.buffer)

    def token(self, event: TokenEvent) -> bytes:
        return self._line(self.make(event, None, 0, 0))

    def done(self, event: DoneEvent, total: int, load: int) -> bytes:
        return self._line(self.make(None, event, total, load))

    def error(self, message: str) -> bytes:
        return encoder.encode({"error": message}) + b"\n"

    def whole(self, event: TokenEvent, done: DoneEvent, total: int, load: int) -> bytes:
        return encoder.encode(self.make(event, done, total, load))


async def root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": __version__})


async def read_body(request: web.Request, decoder: msgspec.json.Decoder[Any]) -> Any:
    body = await request.read()
    if not body.strip():
        raise ApiError(400, "missing request body")
    return decoder.decode(body)


def find_model(ctx: Context, name: str) -> StoredModel:
    if not name:
        raise ApiError(400, "model is required")
    stored = ctx.store.get(name)
    if stored is None:
        raise ApiError(404, f"model '{name}' not found")
    return stored


def parse_keep_alive(value: float | str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise ApiError(400, f"invalid keep_alive duration: {value!r}") from None
    return -1.0 if seconds < 0 else seconds


def check_request_format(fmt: Any) -> Any:
    """None, "json" or a schema that compiles to a grammar; else a 400 like Ollama's."""
    problem = check_format(fmt)
    if problem:
        raise ApiError(400, problem)
    return fmt or None


def check_images(name: str, stored: StoredModel, images: list[str] | None) -> None:
    if images and "vision" not in capabilities(stored.model_dir, stored.manifest.template):
        raise ApiError(400, f'"{name}" does not support images')


def check_think(name: str, stored: StoredModel, think: bool | str | None) -> None:
    if think in (None, False):
        return
    if isinstance(think, str) and think not in ("low", "medium", "high"):
        raise ApiError(
            400, f'invalid think value: "{think}" (must be "high", "medium", "low", true, or false)'
        )
    if "thinking" not in capabilities(stored.model_dir, stored.manifest.template):
        raise ApiError(400, f'"{name}" does not support thinking')
    if isinstance(think, str) and "reasoning_effort" not in _template_text(stored):
        raise ApiError(400, f'think value "{think}" is not supported for this model')


def _template_text(stored: StoredModel) -> str:
    from ..modelinfo import chat_template

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
        raise ApiError(400, "top_logprobs must be between 0 and 20")
    stored = find_model(ctx, req.model)
    keep_alive = parse_keep_alive(req.keep_alive)
    if "completion" not in capabilities(stored.model_dir, stored.manifest.template):
        verb = "chat" if isinstance(req, ChatRequest) else "generate"
        raise ApiError(400, f'"{req.model}" does not support {verb}')  # embedding-only
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
        raise ApiError(400, "raw mode does not support template, system, or context")
    if req.suffix:
        raise ApiError(400, f"{checked.stored.name.display} does not support insert")
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


async def generate(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    started = time.perf_counter_ns()
    req: GenerateRequest = await read_body(request, generate_decoder)
    checked = check_generate(ctx, req)
    stored, keep_alive, sampling = checked.stored, checked.keep_alive, checked.sampling

    def make(event: TokenEvent | None, done: DoneEvent | None, total: int, load: int) -> Any:
        chunk = generate_chunk(req.model, event)
        return _finish(chunk, done, total, load) if done else chunk

    if not req.prompt and not req.images:
        reason = await load_or_unload(ctx, stored, keep_alive, sampling.num_ctx)
        return web.json_response(
            GenerateChunk(req.model, now_rfc3339(), "", True, done_reason=reason),
            dumps=_dumps,
        )
    completion = generate_completion(req, checked)
    streaming = req.stream is not False
    if streaming:  # token lines come ready-made from the worker and pass through as they are
        completion.stream_as = StreamAs(req.model, chat=False)
    return await run_completion(
        request, ctx, stored, completion, keep_alive, streaming, Ndjson(make), started
    )


def check_chat(ctx: Context, req: ChatRequest) -> Checked:
    images = [image for m in req.messages for image in (m.images or [])]
    checked = check_common(ctx, req, images)
    stored = checked.stored
    if req.tools and "tools" not in capabilities(stored.model_dir, stored.manifest.template):
        raise ApiError(400, f'"{req.model}" does not support tools')
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


async def chat(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    started = time.perf_counter_ns()
    req: ChatRequest = await read_body(request, chat_decoder)
    checked = check_chat(ctx, req)
    stored, keep_alive, sampling = checked.stored, checked.keep_alive, checked.sampling

    def make(event: TokenEvent | None, done: DoneEvent | None, total: int, load: int) -> Any:
        chunk = chat_chunk(req.model, event)
        return _finish(chunk, done, total, load) if done else chunk

    if not req.messages:
        reason = await load_or_unload(ctx, stored, keep_alive, sampling.num_ctx)
        empty = OutMessage(role="assistant", content="")
        return web.json_response(
            ChatChunk(req.model, now_rfc3339(), empty, True, done_reason=reason), dumps=_dumps
        )
    completion = chat_completion(req, checked)
    streaming = req.stream is not False
    if streaming:
        completion.stream_as = StreamAs(req.model, chat=True)
    return await run_completion(
        request, ctx, stored, completion, keep_alive, streaming, Ndjson(make), started
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


def _finish(chunk: Any, done: DoneEvent, total: int, load: int) -> Any:
    chunk.done = True
    chunk.done_reason = done.done_reason
    chunk.total_duration = total
    chunk.load_duration = load
    chunk.prompt_eval_count = done.prompt_eval_count
    chunk.prompt_eval_duration = done.prompt_eval_duration
    chunk.eval_count = done.eval_count
    chunk.eval_duration = done.eval_duration
    if hasattr(chunk, "context"):
        chunk.context = done.context
    return chunk


def _dumps(obj: Any) -> str:
    return encoder.encode(obj).decode()


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/", root)  # aiohttp answers HEAD for GET routes
    router.add_get("/api/version", version)
    router.add_post("/api/generate", generate)
    router.add_post("/api/chat", chat)
