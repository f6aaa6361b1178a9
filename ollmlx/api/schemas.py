"""Ollama's request and response shapes, as msgspec Structs.

Unknown request fields are ignored (real clients send extra ones); response fields that
Ollama omits when empty are omitted here too (`omit_defaults`).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import msgspec

from ..modelinfo import Details
from ..protocol import Message, StreamAs, TokenEvent, TokenLogprob


class GenerateRequest(msgspec.Struct):
    model: str = ""
    prompt: str = ""
    suffix: str = ""
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    stream: bool | None = None
    raw: bool = False
    format: Any = None
    keep_alive: float | str | None = None
    images: list[str] | None = None
    options: dict[str, Any] | None = None
    think: bool | str | None = None
    truncate: bool | None = None
    logprobs: bool = False
    top_logprobs: int = 0


class ChatRequest(msgspec.Struct):
    model: str = ""
    messages: list[Message] = msgspec.field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    stream: bool | None = None
    format: Any = None
    keep_alive: float | str | None = None
    options: dict[str, Any] | None = None
    think: bool | str | None = None
    truncate: bool | None = None
    logprobs: bool = False
    top_logprobs: int = 0


class ModelRequest(msgspec.Struct):
    """/api/show and /api/delete: `model`, or the deprecated `name`."""

    model: str = ""
    name: str = ""
    verbose: bool = False


class CopyRequest(msgspec.Struct):
    source: str = ""
    destination: str = ""


class CreateRequest(msgspec.Struct, rename={"from_": "from"}):
    model: str = ""
    name: str = ""  # deprecated spelling of `model`
    from_: str = ""
    modelfile: str = ""  # older clients send the Modelfile text itself
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    license: str | list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    quantize: str | None = None
    stream: bool | None = None


class GenerateChunk(msgspec.Struct, omit_defaults=True):
    model: str
    created_at: str
    response: str
    done: bool
    thinking: str | None = None
    done_reason: str | None = None
    context: list[int] | None = None
    logprobs: list[TokenLogprob] | None = None
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0


class OutMessage(msgspec.Struct, omit_defaults=True):
    """An assistant message in a response: `role` and `content` are always present."""

    role: str
    content: str
    thinking: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChunk(msgspec.Struct, omit_defaults=True):
    model: str
    created_at: str
    message: OutMessage
    done: bool
    done_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0


class ListedModel(msgspec.Struct):
    name: str
    model: str
    modified_at: datetime
    size: int
    digest: str
    details: Details


class RunningModel(msgspec.Struct):
    name: str
    model: str
    size: int
    digest: str
    details: Details
    expires_at: datetime
    size_vram: int
    context_length: int


class ShowResponse(msgspec.Struct, omit_defaults=True):
    modelfile: str
    details: Details
    model_info: dict[str, Any]
    modified_at: datetime
    capabilities: list[str] = msgspec.field(default_factory=list)
    parameters: str = ""
    template: str = ""
    system: str = ""
    license: str = ""
    messages: list[Message] | None = None


class Status(msgspec.Struct, omit_defaults=True):
    status: str
    digest: str = ""
    total: int = 0
    completed: int = 0


def now_rfc3339() -> str:
    """UTC with nanoseconds, trailing zeros trimmed, as Go's RFC3339Nano writes it."""
    ns = time.time_ns()
    seconds, frac = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    digits = f"{frac:09d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"


encoder = msgspec.json.Encoder()
generate_decoder = msgspec.json.Decoder(GenerateRequest)
chat_decoder = msgspec.json.Decoder(ChatRequest)
model_decoder = msgspec.json.Decoder(ModelRequest)
copy_decoder = msgspec.json.Decoder(CopyRequest)
create_decoder = msgspec.json.Decoder(CreateRequest)


def generate_chunk(model: str, event: TokenEvent | None) -> GenerateChunk:
    """/api/generate's chunk for one token event (None: an empty one, for the final chunk)."""
    return GenerateChunk(
        model=model,
        created_at=now_rfc3339(),
        response=event.text if event else "",
        done=False,
        thinking=(event.thinking or None) if event else None,
        logprobs=event.logprobs if event else None,
    )


def chat_chunk(model: str, event: TokenEvent | None) -> ChatChunk:
    """/api/chat's chunk for one token event (None: an empty one, for the final chunk)."""
    message = OutMessage(
        role="assistant",
        content=event.text if event else "",
        thinking=(event.thinking or None) if event else None,
        tool_calls=event.tool_calls if event else None,
    )
    return ChatChunk(
        model=model,
        created_at=now_rfc3339(),
        message=message,
        done=False,
        logprobs=event.logprobs if event else None,
    )


def token_chunk(stream_as: StreamAs, event: TokenEvent) -> GenerateChunk | ChatChunk:
    """The finished line a worker writes for a token when asked to (`stream_as`)."""
    return (chat_chunk if stream_as.chat else generate_chunk)(stream_as.model, event)
