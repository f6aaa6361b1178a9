"""The internal request and stream types spoken between the supervisor and a worker.

Every public dialect (/api/generate, /api/chat, /v1/...) is translated at the edge into
one `CompletionRequest`; the worker answers with a stream of `TokenEvent` lines and one
final `DoneEvent` (or an `ErrorEvent`). This module must stay free of MLX imports.
"""

from __future__ import annotations

from typing import Any

import msgspec

SECRET_HEADER = "X-Ollmlx-Secret"
SECRET_ENV = "OLLMLX_WORKER_SECRET"


class Sampling(msgspec.Struct, omit_defaults=True):
    """Resolved sampling options: every field has its final value (no Ollama nulls)."""

    temperature: float = 0.8
    top_p: float = 0.9
    top_k: int = 40
    min_p: float = 0.0
    seed: int | None = None
    num_predict: int = -1  # -1: until the context is full
    stop: list[str] = msgspec.field(default_factory=list)
    repeat_penalty: float = 1.0  # Ollama's DefaultOptions (api/types.go; old docs say 1.1)
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    num_ctx: int = 4096
    num_keep: int = 4  # tokens a context shift always keeps (Ollama's DefaultOptions)


class Message(msgspec.Struct, omit_defaults=True):
    role: str
    content: str = ""
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None


class StreamAs(msgspec.Struct):
    """Ask the worker to write each token as a finished Ollama NDJSON line for `model`
    (`/api/chat`'s shape if `chat`, else `/api/generate`'s): the supervisor passes those
    bytes through untouched. Only the final event still goes through the supervisor."""

    model: str
    chat: bool


class CompletionRequest(msgspec.Struct, omit_defaults=True):
    """One generation. Exactly one of `messages` (chat) or `prompt` (generate) is set."""

    sampling: Sampling = msgspec.field(default_factory=Sampling)
    messages: list[Message] | None = None
    prompt: str | None = None
    # /api/generate's images (base64), for its one user turn; chat images are per message.
    images: list[str] | None = None
    system: str | None = None
    # A Jinja chat template overriding the tokenizer's (Modelfile TEMPLATE / request).
    template: str | None = None
    raw: bool = False
    # Token ids of an earlier /api/generate exchange, continued by this prompt.
    context: list[int] | None = None
    # True: drop the oldest tokens to fit num_ctx; False: fail when the prompt is too long.
    truncate: bool = True
    # True: a full context slides (the oldest tokens after num_keep go); False: the prompt
    # must fit, and generation ends at the context's end with done_reason "length".
    shift: bool = True
    return_context: bool = False
    # None, "json" or a JSON Schema: decoding is constrained to it.
    format: Any = None
    logprobs: bool = False
    top_logprobs: int = 0
    # Tools in the chat template's format ({"type": "function", "function": {...}}).
    tools: list[dict[str, Any]] | None = None
    # None: the template's default; False: thinking off; True or "low"/"medium"/"high".
    think: bool | str | None = None
    stream_as: StreamAs | None = None


class TokenLogprob(msgspec.Struct, omit_defaults=True):
    """Ollama's per-token logprob: the token, its log probability, its UTF-8 bytes."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TokenLogprob] | None = None


class TokenEvent(msgspec.Struct, omit_defaults=True, tag="token"):
    """Text decoded since the last event; empty while a stop string may be starting."""

    text: str
    token: int
    logprobs: list[TokenLogprob] | None = None
    thinking: str = ""
    tool_calls: list[dict[str, Any]] | None = None


class DoneEvent(msgspec.Struct, omit_defaults=True, tag="done"):
    done_reason: str  # "stop" | "length"
    prompt_eval_count: int  # the whole prompt, as Ollama counts it
    prompt_eval_duration: int  # nanoseconds
    eval_count: int
    eval_duration: int  # nanoseconds
    context: list[int] | None = None
    # Prompt tokens served from the prompt cache (OpenAI's usage.cached_tokens).
    cached_count: int = 0
    stop_sequence: str = ""  # the stop string that ended the answer, if one did


class ErrorEvent(msgspec.Struct, tag="error"):
    error: str
    status: int = 500


WorkerEvent = TokenEvent | DoneEvent | ErrorEvent
# Every event line starts with its tag; any other line is a finished client line.
EVENT_PREFIX = b'{"type":'

# The completion link: one connection from the supervisor to a worker (a Unix socket where
# the platform has one) carries every completion stream. Frames, supervisor to worker:
#   b"A <secret>\n" once, first; b"R <id> <length>\n" and that many bytes of a
#   CompletionRequest's JSON; b"C <id>\n" when its client left.
# Worker to supervisor, one line per line of a stream, every stream's lines of one decode
# step in one write: b"<id> <event or client line>\n", or b"<id> !<status> <JSON string>\n"
# when a request is refused before it starts (503: this worker takes no more work).
REFUSED_PREFIX = b"!"


class Health(msgspec.Struct):
    status: str  # "loading" | "ok" | "error"
    memory_bytes: int = 0
    context_length: int = 0
    error: str | None = None
    progress: float = 0.0  # load progress 0..1, resets the supervisor's stall timer
    # What MLX holds now: arrays in use, and freed buffers it keeps for reuse.
    active_bytes: int = 0
    cache_bytes: int = 0
    # A group's rank 0: bytes of weights each rank holds, by rank (one process: empty).
    rank_memory: list[int] = msgspec.field(default_factory=list)
    peak_bytes: int = 0  # the most MLX held at once since the worker started


class EmbedRequest(msgspec.Struct, omit_defaults=True):
    """Embed each input; /api/embed and /v1/embeddings normalise, legacy /api/embeddings not."""

    inputs: list[str]
    truncate: bool = True  # False: an input longer than the limit is a 400
    num_ctx: int = 0  # token limit per input besides the model's own; 0: the model's
    normalize: bool = True
    dimensions: int = 0  # > 0: keep the first N values, then normalise again (Ollama)


class EmbedResponse(msgspec.Struct):
    """Vectors as little-endian float32 rows (`count` x `dimensions`), base64 in JSON."""

    data: bytes
    count: int
    dimensions: int
    prompt_eval_count: int
    prompt_eval_duration: int  # nanoseconds
    forward_passes: int  # model calls this request took (inputs are batched)


encoder = msgspec.json.Encoder()
event_decoder = msgspec.json.Decoder(WorkerEvent)
request_decoder = msgspec.json.Decoder(CompletionRequest)
health_decoder = msgspec.json.Decoder(Health)
embed_request_decoder = msgspec.json.Decoder(EmbedRequest)
embed_response_decoder = msgspec.json.Decoder(EmbedResponse)
