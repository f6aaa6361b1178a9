"""What every route shares: the app's context, error shapes and request helpers.

Routes import from here (never from app.py), so imports point one way:
app.py -> routes -> context.py -> store/serving.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

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
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)


CONTEXT = web.AppKey("context", Context)


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


# OpenAI's error types by status, as Ollama's openai.NewError picks them.
OPENAI_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error"}


def openai_error_body(status: int, message: str) -> dict[str, dict[str, str | None]]:
    kind = OPENAI_ERROR_TYPES.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def error_for(request: web.Request, status: int, message: str) -> web.Response:
    """Each dialect's error shape: /v1 routes get OpenAI's, the others Ollama's."""
    if request.path.startswith("/v1/"):
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
