"""Embedding routes: /api/embed, legacy /api/embeddings and OpenAI's /v1/embeddings.

All three lease the model's worker and send it one `EmbedRequest` holding every input
(the worker batches them). Vectors come back as little-endian float32 bytes, which
/v1's base64 format passes through as they are.
"""

from __future__ import annotations

import base64
import logging
import sys
import time
from array import array
from typing import Any

import msgspec
from aiohttp import web

from ..errors import StatusError
from ..protocol import EmbedRequest, EmbedResponse
from ..serving.group import plan_group
from ..store.catalog import StoredModel
from ..store.modelinfo import estimate_memory
from .completion import model_sampling
from .context import CONTEXT, Context, find_model, parse_keep_alive, read_body

log = logging.getLogger("ollmlx.api")


class EmbedApiRequest(msgspec.Struct):
    model: str = ""
    input: Any = None  # a string or a list of strings; checked by hand for Ollama's message
    truncate: bool | None = None
    dimensions: int | None = None
    keep_alive: float | str | None = None
    options: dict[str, Any] | None = None


class EmbedApiResponse(msgspec.Struct, omit_defaults=True):
    model: str
    embeddings: list[list[float]]
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0


class LegacyRequest(msgspec.Struct):
    model: str = ""
    prompt: str = ""
    keep_alive: float | str | None = None
    options: dict[str, Any] | None = None


class OpenAIEmbedRequest(msgspec.Struct):
    model: str = ""
    input: Any = None
    encoding_format: str | None = None
    dimensions: int | None = None
    user: str | None = None


_embed_decoder = msgspec.json.Decoder(EmbedApiRequest)
_legacy_decoder = msgspec.json.Decoder(LegacyRequest)
_openai_decoder = msgspec.json.Decoder(OpenAIEmbedRequest)
_encoder = msgspec.json.Encoder()


def _inputs(value: Any) -> list[str]:
    """Ollama's rule: a string (empty: none), or a list of strings; else 400."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise StatusError("invalid input type", 400)


def _rows(result: EmbedResponse) -> list[list[float]]:
    values = array("f")
    values.frombytes(result.data)
    if sys.byteorder == "big":
        values.byteswap()  # the wire format is little-endian
    width = result.dimensions
    return [values[i * width : (i + 1) * width].tolist() for i in range(result.count)]


async def _embed(
    ctx: Context,
    stored: StoredModel,
    inputs: list[str],
    *,
    options: dict[str, Any] | None = None,
    keep_alive: float | None = None,
    truncate: bool = True,
    normalize: bool = True,
    dimensions: int = 0,
) -> tuple[EmbedResponse | None, int]:
    """Lease the worker and embed; None when there is nothing to embed (a load only)."""
    # As for generation: the default context capped at the model's and fitted to memory.
    sampling = model_sampling(ctx, stored, options)
    estimate = estimate_memory(stored.model_dir, stored.manifest.size, sampling.num_ctx)
    request = EmbedRequest(
        inputs=inputs,
        truncate=truncate,
        num_ctx=sampling.num_ctx,
        normalize=normalize,
        dimensions=max(dimensions, 0),
    )
    if inputs and plan_group(ctx.settings, stored, estimate) is not None:
        # Its ranks step only in lockstep with generation; embedding is not broadcast.
        raise StatusError(
            f'"{stored.name.display}" is served by a distributed group, which does not embed',
            400,
        )
    async with ctx.scheduler.use(stored, keep_alive, estimate) as lease:
        result = await lease.worker.embed(request) if inputs else None
    if result is not None:
        log.debug(
            "embedded %d input(s) with %s: %d tokens, %d forward pass(es)",
            result.count,
            stored.name.display,
            result.prompt_eval_count,
            result.forward_passes,
        )
    return result, lease.load_duration


async def embed(request: web.Request) -> web.Response:
    """POST /api/embed: L2-normalised vectors, one per input."""
    ctx = request.app[CONTEXT]
    started = time.perf_counter_ns()
    req: EmbedApiRequest = await read_body(request, _embed_decoder)
    inputs = _inputs(req.input)
    stored = find_model(ctx, req.model)
    result, load = await _embed(
        ctx,
        stored,
        inputs,
        options=req.options,
        keep_alive=parse_keep_alive(req.keep_alive),
        truncate=req.truncate is not False,
        dimensions=req.dimensions or 0,
    )
    if result is None:
        body = EmbedApiResponse(model=req.model, embeddings=[])
    else:
        body = EmbedApiResponse(
            model=req.model,
            embeddings=_rows(result),
            total_duration=time.perf_counter_ns() - started,
            load_duration=load,
            prompt_eval_count=result.prompt_eval_count,
        )
    return web.Response(body=_encoder.encode(body), content_type="application/json")


async def embeddings(request: web.Request) -> web.Response:
    """POST /api/embeddings (legacy): the model's own vector, not normalised again."""
    ctx = request.app[CONTEXT]
    req: LegacyRequest = await read_body(request, _legacy_decoder)
    stored = find_model(ctx, req.model)
    prompt = [req.prompt] if req.prompt else []
    result, _ = await _embed(
        ctx,
        stored,
        prompt,
        options=req.options,
        keep_alive=parse_keep_alive(req.keep_alive),
        normalize=False,
    )
    vector = _rows(result)[0] if result is not None else []
    return web.Response(
        body=_encoder.encode({"embedding": vector}), content_type="application/json"
    )


# -- OpenAI --------------------------------------------------------------------------


async def openai_embeddings(request: web.Request) -> web.Response:
    """POST /v1/embeddings: `encoding_format` float (default) or base64 float32."""
    ctx = request.app[CONTEXT]
    req: OpenAIEmbedRequest = await read_body(request, _openai_decoder)
    if req.input is None or req.input == []:
        raise StatusError("invalid input", 400)
    inputs = [req.input] if isinstance(req.input, str) else _inputs(req.input)
    fmt = (req.encoding_format or "float").lower()
    if fmt not in ("float", "base64"):
        raise StatusError(
            f"invalid encoding_format {req.encoding_format!r}: use 'float' or 'base64'", 400
        )
    stored = find_model(ctx, req.model)
    result, _ = await _embed(ctx, stored, inputs, dimensions=req.dimensions or 0)
    assert result is not None
    if fmt == "base64":  # the worker's little-endian float32 rows, as they are
        width = result.dimensions * 4
        rows: list[Any] = [
            base64.b64encode(result.data[i * width : (i + 1) * width]).decode()
            for i in range(result.count)
        ]
    else:
        rows = _rows(result)
    data = [{"object": "embedding", "embedding": row, "index": i} for i, row in enumerate(rows)]
    usage = {"prompt_tokens": result.prompt_eval_count, "total_tokens": result.prompt_eval_count}
    body = {"object": "list", "data": data, "model": req.model, "usage": usage}
    return web.Response(body=_encoder.encode(body), content_type="application/json")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/api/embed", embed)
    router.add_post("/api/embeddings", embeddings)
    router.add_post("/v1/embeddings", openai_embeddings)  # errors: OpenAI shape (app.py)
