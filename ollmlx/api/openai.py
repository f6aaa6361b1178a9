"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models.

Each request is translated into Ollama's native request (openai_convert), checked and run
by the same code as /api/chat and /api/generate; only the output dialect differs: SSE
`data:` lines of OpenAI chunks instead of NDJSON.
"""

from __future__ import annotations

import random
import time
from typing import Any

import msgspec
from aiohttp import web

from ..errors import StatusError
from ..protocol import DoneEvent, TokenEvent, TokenLogprob
from ..store.catalog import StoredModel
from .completion import (
    chat_completion,
    check_chat,
    check_generate,
    generate_completion,
)
from .context import CONTEXT, openai_error_body, read_body
from .generation import run_completion
from .openai_convert import chat_request, generate_request, require_model, tool_call
from .openai_schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionChoice,
    CompletionLogprobs,
    ContentLogprob,
    Delta,
    ModelCard,
    ModelList,
    OutToolCall,
    PromptTokensDetails,
    TextCompletion,
    TopLogprob,
    Usage,
    chat_decoder,
    completion_decoder,
)

FINGERPRINT = "fp_ollama"  # what Ollama sends; clients only log it
encoder = msgspec.json.Encoder()


def sse(obj: Any) -> bytes:
    return b"data: " + encoder.encode(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}-{random.randrange(1_000_000_000)}"


def usage(done: DoneEvent) -> Usage:
    """OpenAI's usage; `cached_tokens` (OpenAI's own field) says what the cache served."""
    details = PromptTokensDetails(done.cached_count) if done.cached_count else None
    total = done.prompt_eval_count + done.eval_count
    return Usage(done.prompt_eval_count, done.eval_count, total, details)


def tool_calls(calls: list[dict[str, Any]] | None) -> list[OutToolCall] | None:
    return [tool_call(call, i) for i, call in enumerate(calls)] if calls else None


def chat_logprobs(entries: list[TokenLogprob] | None) -> ChoiceLogprobs | None:
    if not entries:
        return None
    return ChoiceLogprobs(
        [
            ContentLogprob(
                e.token,
                e.logprob,
                e.bytes,
                [TopLogprob(t.token, t.logprob, t.bytes) for t in e.top_logprobs or ()],
            )
            for e in entries
        ]
    )


class ChatStream:
    """chat.completion(.chunk) objects; a tool call turns finish_reason into "tool_calls"."""

    content_type = "text/event-stream"

    def __init__(self, model: str, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.id = new_id("chatcmpl")
        self.created = int(time.time())
        self.first = True
        self.tool_call_sent = False

    def _chunk(self, delta: Delta, finish: str | None, logprobs: ChoiceLogprobs | None) -> Any:
        choice = ChunkChoice(0, delta, finish, logprobs)
        return ChatCompletionChunk(
            self.id, "chat.completion.chunk", self.created, self.model, FINGERPRINT, [choice]
        )

    def token(self, event: TokenEvent) -> bytes:
        empty = not (event.text or event.thinking or event.tool_calls or event.logprobs)
        if empty and not self.first:
            return b""  # held back while a stop string may be starting: nothing to say
        self.first = False
        self.tool_call_sent = self.tool_call_sent or bool(event.tool_calls)
        thinking = event.thinking or None
        delta = Delta(
            role="assistant",
            content=event.text,
            reasoning=thinking,
            reasoning_content=thinking,
            tool_calls=tool_calls(event.tool_calls),
        )
        return sse(self._chunk(delta, None, chat_logprobs(event.logprobs)))

    def done(self, event: DoneEvent, total: int, load: int) -> bytes:
        reason = "tool_calls" if self.tool_call_sent else event.done_reason
        out = sse(self._chunk(Delta(role="assistant", content=""), reason, None))
        if self.include_usage:
            final = ChatCompletionChunk(
                self.id, "chat.completion.chunk", self.created, self.model, FINGERPRINT, []
            )
            final.usage = usage(event)
            out += sse(final)
        return out + SSE_DONE

    def error(self, message: str) -> bytes:
        return sse(openai_error_body(500, message))

    def whole(self, event: TokenEvent, done: DoneEvent, total: int, load: int) -> bytes:
        calls = tool_calls(event.tool_calls)
        thinking = event.thinking or None
        message = AssistantMessage("assistant", event.text, thinking, thinking, calls)
        reason = "tool_calls" if calls else done.done_reason
        choice = Choice(0, message, reason, chat_logprobs(event.logprobs))
        return encoder.encode(
            ChatCompletion(
                self.id,
                "chat.completion",
                self.created,
                self.model,
                FINGERPRINT,
                [choice],
                usage(done),
            )
        )


class CompletionStream:
    """text_completion objects, with legacy logprobs (parallel lists per token)."""

    content_type = "text/event-stream"

    def __init__(self, model: str, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.id = new_id("cmpl")
        self.created = int(time.time())
        self.offset = 0  # characters of text sent so far: the logprobs' text_offset

    def _completion(self, choices: list[CompletionChoice]) -> TextCompletion:
        return TextCompletion(
            self.id, "text_completion", self.created, self.model, FINGERPRINT, choices
        )

    def _logprobs(self, entries: list[TokenLogprob] | None) -> CompletionLogprobs | None:
        if not entries:
            return None
        offsets = []
        for e in entries:
            offsets.append(self.offset)
            self.offset += len(e.token)
        top = [{t.token: t.logprob for t in e.top_logprobs or ()} for e in entries]
        tokens = [e.token for e in entries]
        return CompletionLogprobs(tokens, [e.logprob for e in entries], top, offsets)

    def token(self, event: TokenEvent) -> bytes:
        if not (event.text or event.logprobs):
            return b""
        choice = CompletionChoice(event.text, 0, None, self._logprobs(event.logprobs))
        return sse(self._completion([choice]))

    def done(self, event: DoneEvent, total: int, load: int) -> bytes:
        out = sse(self._completion([CompletionChoice("", 0, event.done_reason, None)]))
        if self.include_usage:
            final = self._completion([])
            final.usage = usage(event)
            out += sse(final)
        return out + SSE_DONE

    def error(self, message: str) -> bytes:
        return sse(openai_error_body(500, message))

    def whole(self, event: TokenEvent, done: DoneEvent, total: int, load: int) -> bytes:
        choice = CompletionChoice(event.text, 0, done.done_reason, self._logprobs(event.logprobs))
        body = self._completion([choice])
        body.usage = usage(done)
        return encoder.encode(body)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    started = time.perf_counter_ns()
    body = await read_body(request, chat_decoder)
    req = chat_request(body)
    require_model(ctx, req.model)
    checked = check_chat(ctx, req)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    dialect = ChatStream(req.model, include_usage)
    completion = chat_completion(req, checked)
    return await run_completion(
        request, ctx, checked.stored, completion, checked.keep_alive, body.stream, dialect, started
    )


async def completions(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    started = time.perf_counter_ns()
    body = await read_body(request, completion_decoder)
    req = generate_request(body)
    require_model(ctx, req.model)
    checked = check_generate(ctx, req)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    dialect = CompletionStream(req.model, include_usage)
    completion = generate_completion(req, checked)
    return await run_completion(
        request, ctx, checked.stored, completion, checked.keep_alive, body.stream, dialect, started
    )


def _card(name: str, stored: StoredModel) -> ModelCard:
    # Ollama's owned_by is the name's namespace: "library" for plain names.
    created = int(stored.modified_at.timestamp())
    return ModelCard(name, "model", created, stored.name.namespace)


async def list_models(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    stored = sorted(ctx.store.list(), key=lambda m: m.modified_at, reverse=True)
    cards = [_card(m.name.display, m) for m in stored]
    return web.Response(
        body=encoder.encode(ModelList("list", cards)), content_type="application/json"
    )


async def retrieve_model(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    name = request.match_info["model"]
    stored = ctx.store.get(name)
    if stored is None:
        raise StatusError(f"model '{name}' not found", 404)  # Ollama's /api/show wording
    # The id is the name as asked for, as Ollama echoes it.
    card = _card(name, stored)
    return web.Response(body=encoder.encode(card), content_type="application/json")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/v1/chat/completions", chat_completions)
    router.add_post("/v1/completions", completions)
    router.add_get("/v1/models", list_models)
    router.add_get("/v1/models/{model:.+}", retrieve_model)
