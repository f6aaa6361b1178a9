"""Client errors mixed into the traffic, each with the status it must get.

Out-of-range options, token ids outside the vocabulary, formats that are no schema,
malformed and deeply nested JSON, bodies over the limit, wrong types, unknown models,
and unknown fields (ignored: 200, as Ollama does). Most go as raw HTTP (no client would
send them); three go through the official clients. All target the STEADY model, which
chaos never strikes: a 5xx here is never excused.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .outcomes import ERROR, OK, REJECTED, Outcome, timed
from .plan import EMBEDDER, STEADY
from .session import Session

USER: Any = [{"role": "user", "content": "hi"}]
SMALL = {"num_predict": 2}
MIB = 1 << 20


def _gen(**fields: Any) -> dict[str, Any]:
    return {"model": STEADY, "prompt": "hi", "stream": False, "options": SMALL, **fields}


def _opts(**options: Any) -> dict[str, Any]:
    return _gen(options={**SMALL, **options})


@functools.cache
def _deep() -> bytes:
    return b'{"model": "steady", "format": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001


@functools.cache
def _sized(size: int) -> bytes:
    """A valid generate body of about `size` bytes (the bulk in a field nobody reads)."""
    return json.dumps(_gen(padding="x" * size)).encode()


@dataclass(frozen=True)
class Bad:
    name: str
    path: str
    body: Callable[[], bytes]
    expected: tuple[int, ...] = (400,)


def _json(obj: dict[str, Any]) -> Callable[[], bytes]:
    data = json.dumps(obj).encode()
    return lambda: data


def _raw(data: bytes) -> Callable[[], bytes]:
    return lambda: data


CHAT = {"model": STEADY, "messages": USER, "stream": False, "options": SMALL}
OPENAI_CHAT = {"model": STEADY, "messages": USER, "max_tokens": 2}

RAW: list[Bad] = [
    Bad("option.min_p", "/api/generate", _json(_opts(min_p=2))),
    Bad("option.top_k_2^70", "/api/generate", _json(_opts(top_k=2**70))),
    Bad("option.seed_2^70", "/api/chat", _json({**CHAT, "options": {**SMALL, "seed": 2**70}})),
    Bad("option.repeat_penalty", "/api/generate", _json(_opts(repeat_penalty=-1))),
    Bad("option.num_ctx_0", "/api/generate", _json(_opts(num_ctx=0))),
    Bad("option.num_predict_huge", "/api/generate", _json(_opts(num_predict=10**9))),
    Bad("option.type", "/api/generate", _json(_opts(temperature="hot"))),
    Bad("tokens.outside_vocabulary", "/api/generate", _json(_gen(context=[-1, 10**9, 5]))),
    Bad("tokens.2^63", "/api/generate", _json(_gen(context=[2**63]))),
    Bad("format.recursive_ref", "/api/generate", _json(_gen(format={"$ref": "#"}))),
    Bad("format.xml", "/api/chat", _json({**CHAT, "format": "xml"})),
    Bad(
        "format.openai_schema",
        "/v1/chat/completions",
        _json(
            {
                **OPENAI_CHAT,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object", "$ref": "#"}},
                },
            }
        ),
    ),
    Bad("template.syntax", "/api/generate", _json(_gen(template="{% if %}"))),
    Bad("keep_alive.word", "/api/generate", _json(_gen(keep_alive="forever"))),
    Bad("think.level", "/api/generate", _json(_gen(think="extreme"))),
    Bad("top_logprobs.99", "/api/generate", _json(_gen(logprobs=True, top_logprobs=99))),
    Bad("raw.with_template", "/api/generate", _json(_gen(raw=True, template="x"))),
    Bad("images.no_vision", "/api/generate", _json(_gen(images=["aGk="]))),
    Bad("json.malformed", "/api/chat", _raw(b'{"model": "steady", "messages": [')),
    Bad("json.malformed_openai", "/v1/chat/completions", _raw(b'{"model": ')),
    Bad("json.malformed_anthropic", "/v1/messages", _raw(b'{"model"')),
    Bad("json.not_json", "/api/embed", _raw(b"hello")),
    Bad("json.empty", "/api/generate", _raw(b"")),
    Bad("json.nested_100k", "/api/generate", _deep),
    Bad("body.over_limit", "/api/generate", lambda: _sized(5 * MIB), (413,)),
    Bad("body.over_limit_openai", "/v1/chat/completions", lambda: _sized(5 * MIB), (413,)),
    Bad("body.near_limit", "/api/generate", lambda: _sized(3 * MIB), (200,)),
    Bad("type.messages", "/api/chat", _json({**CHAT, "messages": "hi"})),
    Bad("type.stream", "/api/generate", _json(_gen(stream="yes"))),
    Bad("type.embed_input", "/api/embed", _json({"model": EMBEDDER, "input": 5})),
    Bad(
        "type.encoding_format",
        "/v1/embeddings",
        _json({"model": EMBEDDER, "input": "x", "encoding_format": "hex"}),
    ),
    Bad("model.unknown", "/api/generate", _json(_gen(model="no-such-model")), (404,)),
    Bad("model.invalid_name", "/api/show", _json({"model": "a:b:c!"})),
    Bad("anthropic.no_max_tokens", "/v1/messages", _json({"model": STEADY, "messages": USER})),
    Bad(
        "unknown.fields",
        "/api/generate",
        _json(_gen(bogus={"x": [1]}, options={**SMALL, "nonsense": True})),
        (200,),
    ),
    Bad("unknown.fields_openai", "/v1/chat/completions", _json({**OPENAI_CHAT, "x": 1}), (200,)),
]


async def send_raw(s: Session, bad: Bad) -> Outcome:
    """One raw client error; the outcome says whether it got its expected status."""

    async def request() -> None:
        response = await s.http.post(
            bad.path, content=bad.body(), headers={"Content-Type": "application/json"}
        )
        seen.append(response.status_code)
        if response.status_code != 200:
            messages.append(_error_text(response.text))

    seen: list[int] = []
    messages: list[str] = []
    outcome = await timed("bad." + bad.name, STEADY, request, s.plan.request_timeout, bad.expected)
    if seen:
        outcome.status = seen[0]
        outcome.message = messages[0] if messages else ""
        outcome.result = REJECTED if seen[0] in bad.expected else ERROR
    return outcome


def _error_text(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return f"not JSON: {text[:80]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("message") if isinstance(error, dict) else error)


async def _through_clients(s: Session) -> Outcome:
    """One of three client errors sent by the official clients (each must raise a 400)."""
    which = s.rng.choice(["ollama", "openai", "anthropic"])

    async def request() -> None:
        if which == "ollama":
            await s.ollama.generate(STEADY, "hi", options={**SMALL, "min_p": 2})
        elif which == "openai":
            await s.openai.chat.completions.create(
                model=STEADY, messages=USER, max_tokens=2, logprobs=True, top_logprobs=99
            )
        else:
            await s.anthropic.messages.create(model=STEADY, max_tokens=0, messages=USER)

    outcome = await timed(f"bad.{which}_client", STEADY, request, s.plan.request_timeout, (400,))
    if outcome.status == 400:
        outcome.result = REJECTED
    elif outcome.result == OK:
        outcome.result = ERROR  # accepted: not what a client error must get
    return outcome


async def bad_request(s: Session) -> Outcome:
    if s.rng.random() < 0.15:
        return await _through_clients(s)
    return await send_raw(s, s.rng.choice(RAW))
