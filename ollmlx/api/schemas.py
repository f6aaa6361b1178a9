"""Ollama's request and response shapes, as msgspec Structs.

Unknown request fields are ignored (real clients send extra ones); response fields that
Ollama omits when empty are omitted here too (`omit_defaults`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from ..acquire.create_plan import CreateRequest
from ..protocol import Message
from ..store.modelinfo import Details
from ..wire import (  # noqa: F401  (re-exported: the routes' shapes in one place)
    ChatChunk,
    GenerateChunk,
    OutMessage,
    chat_chunk,
    generate_chunk,
    now_rfc3339,
)


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
    shift: bool | None = None
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
    shift: bool | None = None
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


class ListedModel(msgspec.Struct):
    name: str
    model: str
    modified_at: datetime
    size: int
    digest: str
    details: Details


class GroupMember(msgspec.Struct, omit_defaults=True):
    """One host of a model served by a group: its rank, and the weights it holds."""

    host: str
    rank: int
    size: int = 0


class Distributed(msgspec.Struct, omit_defaults=True):
    """ollmlx only (clients ignore it): a model served by a group of hosts."""

    parallelism: str  # "tensor" | "pipeline"
    backend: str  # mlx.launch's: "ring", "jaccl", "jaccl-ring"
    hosts: list[GroupMember] = msgspec.field(default_factory=list)


class RunningModel(msgspec.Struct, omit_defaults=True):
    name: str
    model: str
    size: int
    digest: str
    details: Details
    expires_at: datetime
    size_vram: int
    context_length: int
    distributed: Distributed | None = None


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
    distributed: Distributed | None = None


class Status(msgspec.Struct, omit_defaults=True):
    status: str
    digest: str = ""
    total: int = 0
    completed: int = 0


encoder = msgspec.json.Encoder()
generate_decoder = msgspec.json.Decoder(GenerateRequest)
chat_decoder = msgspec.json.Decoder(ChatRequest)
model_decoder = msgspec.json.Decoder(ModelRequest)
copy_decoder = msgspec.json.Decoder(CopyRequest)
create_decoder = msgspec.json.Decoder(CreateRequest)
