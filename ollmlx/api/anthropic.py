"""Anthropic's Messages API: POST /v1/messages and /v1/messages/count_tokens.

A Messages request is translated into Ollama's chat request (anthropic_convert), checked
and run by the same code as /api/chat; only the output dialect differs: a `message`
object, or Anthropic's SSE events (`event:` + `data:` lines), as Ollama writes them
(anthropic/anthropic.go StreamConverter, middleware/anthropic.go).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from typing import Any

import msgspec
from aiohttp import web

from ..errors import StatusError
from ..protocol import DoneEvent, ErrorEvent, TokenEvent
from .anthropic_convert import chat_request, estimate_input_tokens
from .anthropic_schemas import messages_decoder
from .completion import chat_completion, check_chat
from .context import CONTEXT, anthropic_error_body, read_body
from .generation import memory_estimate, run_completion

encoder = msgspec.json.Encoder()


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"  # Ollama's generateID: 12 random bytes


def event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + encoder.encode(data) + b"\n\n"


def stop_reason(done: DoneEvent, used_tools: bool) -> str:
    """Ollama's done_reason -> Anthropic's stop_reason (anthropic.go mapStopReason), with
    stop_sequence when the worker says a stop string ended the answer."""
    if used_tools:
        return "tool_use"
    if done.done_reason == "length":
        return "max_tokens"
    if done.stop_sequence:
        return "stop_sequence"
    return "end_turn" if done.done_reason == "stop" else "stop_sequence"


def usage(done: DoneEvent) -> dict[str, int]:
    return {"input_tokens": done.prompt_eval_count, "output_tokens": done.eval_count}


def tool_use(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function", {})
    return {
        "type": "tool_use",
        "id": call.get("id") or new_id("toolu"),
        "name": function.get("name", ""),
        "input": function.get("arguments") or {},
    }


class MessageStream:
    """Worker events -> a Messages answer. Blocks (thinking, text, tool_use) are opened
    and closed in order and never interleave: a new kind of output closes the open one."""

    content_type = "text/event-stream"

    def __init__(self, model: str, estimated_input: int) -> None:
        self.model = model
        self.id = new_id("msg")
        self.estimated_input = estimated_input
        self.started = False
        self.open = ""  # the kind of the open block: "thinking", "text" or ""
        self.index = 0  # the index of the next block
        self.used_tools = False

    def _message(self, content: list[dict[str, Any]], done: DoneEvent | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop_reason(done, self.used_tools) if done else None,
            "stop_sequence": (done.stop_sequence or None) if done else None,
            "usage": usage(done)
            if done
            else {"input_tokens": self.estimated_input, "output_tokens": 0},
        }

    def _start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        start = event(
            "message_start", {"type": "message_start", "message": self._message([], None)}
        )
        return start + event("ping", {"type": "ping"})

    def _close(self) -> bytes:
        if not self.open:
            return b""
        self.open = ""
        self.index += 1
        return event("content_block_stop", {"type": "content_block_stop", "index": self.index - 1})

    def _delta(self, kind: str, text: str) -> bytes:
        out = b""
        if self.open != kind:
            out += self._close()
            self.open = kind
            block = {"type": kind, kind: ""}
            if kind == "thinking":
                block["signature"] = ""
            out += event(
                "content_block_start",
                {"type": "content_block_start", "index": self.index, "content_block": block},
            )
        delta = {"type": f"{kind}_delta", kind: text}
        data = {"type": "content_block_delta", "index": self.index, "delta": delta}
        return out + event("content_block_delta", data)

    def _tool_use(self, call: dict[str, Any]) -> bytes:
        self.used_tools = True
        block = tool_use(call)
        arguments = json.dumps(block["input"], separators=(",", ":"), ensure_ascii=False)
        index = self.index
        self.index += 1
        return (
            event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {**block, "input": {}},
                },
            )
            + event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": arguments},
                },
            )
            + event("content_block_stop", {"type": "content_block_stop", "index": index})
        )

    def token(self, token: TokenEvent) -> bytes:
        out = self._start()
        if token.thinking:
            out += self._delta("thinking", token.thinking)
        if token.text:
            out += self._delta("text", token.text)
        if token.tool_calls:
            out += self._close()
            for call in token.tool_calls:
                out += self._tool_use(call)
        return out

    def done(self, done: DoneEvent, total: int, load: int) -> bytes:
        delta = {
            "type": "message_delta",
            "delta": {
                "stop_reason": stop_reason(done, self.used_tools),
                "stop_sequence": done.stop_sequence or None,
            },
            "usage": usage(done),
        }
        return (
            self._start()
            + self._close()
            + event("message_delta", delta)
            + event("message_stop", {"type": "message_stop"})
        )

    def error(self, message: str) -> bytes:
        body = anthropic_error_body(500, message)
        return event("error", {"type": "error", "error": body["error"]})

    def whole(self, token: TokenEvent, done: DoneEvent, total: int, load: int) -> bytes:
        content: list[dict[str, Any]] = []
        if token.thinking:
            content.append({"type": "thinking", "thinking": token.thinking, "signature": ""})
        if token.text:
            content.append({"type": "text", "text": token.text})
        for call in token.tool_calls or ():
            content.append(tool_use(call))
        self.used_tools = bool(token.tool_calls)
        return encoder.encode(self._message(content, done))


async def messages(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    started = time.perf_counter_ns()
    body = await read_body(request, messages_decoder)
    req = chat_request(body)
    # A thinking request to a model without thinking is answered without it (Ollama's
    # relax_thinking for Anthropic clients such as Claude Code), not refused.
    checked = check_chat(ctx, req, relax_thinking=True)
    completion = chat_completion(req, checked)
    dialect = MessageStream(body.model, estimate_input_tokens(body))
    return await run_completion(
        request, ctx, checked.stored, completion, checked.keep_alive, body.stream, dialect, started
    )


async def count_tokens(request: web.Request) -> web.Response:
    """The prompt tokens the same Messages request would use, counted by the model's own
    template and tokenizer in its worker (a request that generates nothing). The whole
    prompt is counted: nothing is dropped to fit a context, so an over-long conversation
    shows as such. Ollama has no such route."""
    ctx = request.app[CONTEXT]
    body = await read_body(request, messages_decoder)
    req = chat_request(body, counting=True)
    checked = check_chat(ctx, req, relax_thinking=True)
    completion = chat_completion(req, checked)
    # Nothing generated, nothing dropped: the worker answers with the prompt's length.
    completion.sampling = msgspec.structs.replace(
        checked.sampling, num_predict=0, num_ctx=ctx.settings.max_num_ctx
    )
    estimate = memory_estimate(checked.stored, checked.sampling.num_ctx, ctx.settings.kv_cache_type)
    async with (
        ctx.scheduler.use(checked.stored, checked.keep_alive, estimate) as lease,
        contextlib.aclosing(lease.worker.stream(completion)) as items,
    ):
        async for item in items:
            if isinstance(item, ErrorEvent):
                raise StatusError(item.error, item.status)
            if isinstance(item, DoneEvent):
                return web.json_response({"input_tokens": item.prompt_eval_count})
    raise StatusError("the model's worker ended without counting", 500)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/v1/messages", messages)
    router.add_post("/v1/messages/count_tokens", count_tokens)
