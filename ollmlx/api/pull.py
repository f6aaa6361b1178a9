"""POST /api/pull: a model from Hugging Face, with Ollama's progress lines."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import msgspec
from aiohttp import web

from ..acquire.gguf import Converter
from ..acquire.pull import Progress, Puller
from ..errors import StatusError
from ..store.catalog import StoredModel
from ..store.names import parse_name
from .context import CONTEXT, read_body
from .progress import PULLER, stream_progress

log = logging.getLogger("ollmlx.api")


class PullRequest(msgspec.Struct):
    model: str = ""
    name: str = ""  # deprecated spelling of `model`
    insecure: bool = False  # accepted for Ollama compatibility; the Hub is always https
    stream: bool | None = None


_pull_decoder = msgspec.json.Decoder(PullRequest)


async def pull(request: web.Request) -> web.StreamResponse:
    req: PullRequest = await read_body(request, _pull_decoder)
    name = req.model or req.name
    try:
        parse_name(name)
    except StatusError:
        raise StatusError("invalid model name", 400) from None
    ctx = request.app[CONTEXT]
    local = await asyncio.to_thread(ctx.store.get, name)
    if local is not None and local.format == "gguf":
        events = _prepare_gguf(ctx.converter, local)
    else:
        events = request.app[PULLER].pull(name)
    return await stream_progress(request, events, stream=req.stream is not False)


async def _prepare_gguf(converter: Converter, stored: StoredModel) -> AsyncIterator[Progress]:
    """A GGUF model in the store (Ollama's): ollmlx pulls from Hugging Face, not from
    Ollama's registry, so "pulling" it converts it for MLX, its manifest left as it is."""
    yield Progress("pulling manifest")
    stored.check_runnable()
    if stored.gguf is not None and not stored.converted:
        async for event in converter.events(stored.name.display, stored.gguf):
            if event.status != "success":
                yield event
    log.info("%s is a GGUF model of the store; it is ready for MLX", stored.name.display)
    yield Progress("success")


def setup(app: web.Application) -> None:
    """Register /api/pull and the puller that lives as long as the app."""

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        puller = app[PULLER] = Puller(app[CONTEXT].store)
        yield
        await puller.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/api/pull", pull)
