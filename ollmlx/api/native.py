"""Ollama's generation routes: /, /api/version, /api/generate, /api/chat."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .. import __version__
from ..config import OLLAMA_API_VERSION
from ..protocol import (
    DoneEvent,
    StreamAs,
    TokenEvent,
)
from .completion import (
    chat_completion,
    check_chat,
    check_generate,
    generate_completion,
    load_or_unload,
)
from .context import CONTEXT, read_body
from .generation import run_completion
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
    # Clients compare `version` with Ollama's releases; ollmlx's own is a field of its own.
    return web.json_response({"version": OLLAMA_API_VERSION, "ollmlx_version": __version__})


async def status(request: web.Request) -> web.Response:
    """Ollama's /api/status (server/routes.go StatusHandler): ollmlx has no cloud at all,
    so it is always disabled; "both" when OLLAMA_NO_CLOUD says so as well."""
    source = "both" if request.app[CONTEXT].settings.no_cloud else "config"
    return web.json_response({"cloud": {"disabled": True, "source": source}})


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
    # aiohttp answers HEAD for GET routes, as Ollama does on /, /api/version and /api/tags.
    router.add_get("/", root)
    router.add_get("/api/version", version)
    router.add_get("/api/status", status)
    router.add_post("/api/generate", generate)
    router.add_post("/api/chat", chat)
