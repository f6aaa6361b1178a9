"""What every route shares: the app's context, error shapes and request helpers.

Routes import from here (never from app.py), so imports point one way:
app.py -> routes -> context.py -> store/serving.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from ..acquire.gguf import Converter
from ..config import Settings, parse_duration
from ..errors import StatusError
from ..serving.scheduler import Scheduler
from ..store.catalog import Store, StoredModel


@dataclass
class Context:
    """What every handler needs, created once per app."""

    settings: Settings
    store: Store
    scheduler: Scheduler
    session: aiohttp.ClientSession
    converter: Converter
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    # The num_ctx of each model's latest request: the context /api/ps shows in use.
    num_ctx: dict[str, int] = field(default_factory=dict)


CONTEXT = web.AppKey("context", Context)


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


# OpenAI's error types by status, as Ollama's openai.NewError picks them.
OPENAI_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error"}
# Anthropic's error types by status, as Ollama's anthropic.NewError picks them (plus 413,
# Anthropic's request_too_large). A full queue (503) answers Anthropic's 529 "overloaded".
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
ANTHROPIC_STATUS = {503: 529}


def openai_error_body(status: int, message: str) -> dict[str, dict[str, str | None]]:
    kind = OPENAI_ERROR_TYPES.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    kind = ANTHROPIC_ERROR_TYPES.get(status, "api_error")
    return {
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": f"req_{secrets.token_hex(12)}",
    }


def dialect_of(path: str) -> str:
    """Which API a path belongs to: "anthropic" (/v1/messages), "openai" (/v1) or "ollama"."""
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "anthropic"
    return "openai" if path.startswith("/v1/") else "ollama"


def error_for(request: web.Request, status: int, message: str) -> web.Response:
    """The one place errors take each dialect's shape: Anthropic's on /v1/messages,
    OpenAI's on the other /v1 routes, Ollama's `{"error": ...}` everywhere else."""
    dialect = dialect_of(request.path)
    if dialect == "anthropic":
        body = anthropic_error_body(status, message)
        return web.json_response(body, status=ANTHROPIC_STATUS.get(status, status))
    if dialect == "openai":
        return web.json_response(openai_error_body(status, message), status=status)
    return error_response(status, message)


async def read_body(request: web.Request, decoder: msgspec.json.Decoder[Any]) -> Any:
    body = await request.read()
    if not body.strip():
        raise StatusError("missing request body", 400)
    return decoder.decode(body)


def find_model(ctx: Context, name: str) -> StoredModel:
    if not name:
        raise StatusError("model is required", 400)
    stored = ctx.store.get(name)
    if stored is None:
        raise StatusError(f"model '{name}' not found", 404)
    return stored


def parse_keep_alive(value: float | str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise StatusError(f"invalid keep_alive duration: {value!r}", 400) from None
    return -1.0 if seconds < 0 or math.isinf(seconds) else seconds
