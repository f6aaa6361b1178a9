"""Turn a CompletionRequest into prompt token ids with the model's own chat template."""

from __future__ import annotations

import collections.abc
from collections.abc import Callable
from typing import Any, TypeVar

import jinja2

from ollmlx.errors import StatusError
from ollmlx.protocol import CompletionRequest, Message


def _message_dict(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = message.tool_calls
    if message.tool_name:
        out["name"] = message.tool_name
    if message.thinking:
        out["reasoning_content"] = message.thinking
    return out


def has_chat_template(tokenizer: Any, override: str | None = None) -> bool:
    builtin = getattr(tokenizer, "_chat_template", None)  # mlx-lm's own template callables
    return bool(override or builtin or getattr(tokenizer, "chat_template", None))


def template_options(request: CompletionRequest) -> dict[str, Any]:
    """Keyword arguments for the chat template: tools and the thinking switch."""
    options: dict[str, Any] = {}
    if request.tools:
        options["tools"] = request.tools
    if isinstance(request.think, bool):
        options["enable_thinking"] = request.think
    elif isinstance(request.think, str):
        options["reasoning_effort"] = request.think
    return options


def render_chat(
    tokenizer: Any,
    messages: list[Message],
    template: str | None,
    options: dict[str, Any] | None = None,
) -> str:
    if not has_chat_template(tokenizer, template):
        # No template at all: a plain transcript is better than refusing to answer.
        lines = [f"{m.role}: {m.content}" for m in messages]
        return "\n".join([*lines, "assistant:"])
    conversation = [_message_dict(m) for m in messages]
    try:
        return _apply_template(tokenizer, conversation, template, options or {})
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError) as exc:
        # A broken TEMPLATE, or a template that refuses these messages (raise_exception).
        raise StatusError(f"template error: {type(exc).__name__}: {exc}", 400) from None


def _apply_template(
    tokenizer: Any,
    conversation: list[dict[str, Any]],
    template: str | None,
    options: dict[str, Any],
) -> str:
    if template:
        # An override goes straight to the Hugging Face tokenizer's Jinja renderer.
        hf_tokenizer = getattr(tokenizer, "_tokenizer", tokenizer)
        rendered = hf_tokenizer.apply_chat_template(
            conversation,
            chat_template=template,
            tokenize=False,
            add_generation_prompt=True,
            **options,
        )
    else:
        rendered = tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True, **options
        )
    return str(rendered)


def encode_text(tokenizer: Any, text: str, templated: bool) -> list[int]:
    """Token ids of `text`; a rendered template already carries its special tokens."""
    if templated:
        return list(tokenizer.encode(text, add_special_tokens=False))
    bos = getattr(tokenizer, "bos_token", None)
    add_special = bos is None or not text.startswith(bos)
    return list(tokenizer.encode(text, add_special_tokens=add_special))


def chat_messages(request: CompletionRequest) -> list[Message]:
    """Messages for the template: chat as given, generate as [system?, user]."""
    if request.messages is not None:
        return request.messages
    messages = [Message(role="system", content=request.system)] if request.system else []
    return [*messages, Message(role="user", content=request.prompt or "")]


def shift_window(tokens: list[int], num_ctx: int, num_keep: int, bos_id: int | None) -> list[int]:
    """A prompt too long for the context, cut as Ollama cuts it (llm/llama_server.go,
    contextShiftPromptLimit): the first `num_keep` tokens (and the BOS) stay, then about
    half of the rest of the context is freed so generation has room."""
    keep = num_keep + (1 if bos_id is not None and tokens and tokens[0] == bos_id else 0)
    keep = max(0, min(keep, num_ctx - 1))
    limit = num_ctx - max((num_ctx - keep) // 2, 1)
    discard = len(tokens) - limit
    return [*tokens[:keep], *tokens[keep + discard :]]


Sized = TypeVar("Sized", bound=collections.abc.Sized)


def fit_messages(
    messages: list[Message], encode: Callable[[list[Message]], Sized], limit: int
) -> Sized:
    """Drop the oldest turns (never a system message, never the last) until the prompt
    fits `limit`, as Ollama's chatPrompt does, rendering only a few times.

    The whole chat is rendered once; when it is too long, the number of recent turns
    kept grows 1, 2, 4, ... until one does not fit, then a binary search finds the most
    that do. Each probe renders only what it keeps, so a 10,000-turn chat costs one
    full render plus a few small ones instead of one render per dropped turn.
    """
    whole = encode(messages)
    if len(whole) <= limit:
        return whole
    last = len(messages) - 1
    droppable = [i for i in range(last) if messages[i].role != "system"]

    def keeping(count: int) -> list[Message]:
        # Droppable turns are in order: keeping the last `count` keeps those from `start`.
        start = droppable[len(droppable) - count] if count else last
        return [m for i, m in enumerate(messages) if i >= start or m.role == "system"]

    best = encode(keeping(0))
    if len(best) > limit or not droppable:
        return best  # even the system messages and the last turn are too long
    good, bad = 0, len(droppable)  # keeping `good` fits; keeping `bad` does not
    probe = 1
    while probe < bad:
        prompt = encode(keeping(probe))
        if len(prompt) > limit:
            bad = probe
            break
        good, best = probe, prompt
        probe *= 2
    while bad - good > 1:
        middle = (good + bad) // 2
        prompt = encode(keeping(middle))
        if len(prompt) > limit:
            bad = middle
        else:
            good, best = middle, prompt
    return best


def check_token_ids(tokens: list[int], vocab_size: int) -> None:
    """Token ids from a client (`context`) must exist in the model's vocabulary."""
    if not vocab_size:
        return
    for token in tokens:
        if not 0 <= token < vocab_size:
            raise StatusError(
                f"invalid context: token id {token} is outside the vocabulary (0-{vocab_size - 1})",
                400,
            )


PROMPT_TOO_LONG = (
    "the prompt is longer than the context length currently available to the model; "
    "shorten the prompt, adjust the context length in settings, or use a model with a "
    "longer context length"
)


def build_prompt(tokenizer: Any, request: CompletionRequest, vocab_size: int = 0) -> list[int]:
    """Prompt token ids within num_ctx.

    Too long: an error when `truncate` is off; else the oldest turns go (down to a size
    that leaves room to answer: num_predict tokens, at most half the context), then,
    when even that is longer than the context, the oldest tokens after `num_keep`
    (or an error when `shift` is off), as Ollama does.
    """
    num_ctx, num_predict = request.sampling.num_ctx, request.sampling.num_predict
    reserve = min(num_predict if num_predict > 0 else num_ctx // 4, num_ctx // 2)
    limit = max(num_ctx - max(reserve, 1), 1)
    templated = has_chat_template(tokenizer, request.template)
    options = template_options(request)
    if request.context:
        check_token_ids(request.context, vocab_size)

    def render(messages: list[Message]) -> list[int]:
        text = render_chat(tokenizer, messages, request.template, options)
        return encode_text(tokenizer, text, templated)

    messages = chat_messages(request)
    if request.raw:
        tokens = encode_text(tokenizer, request.prompt or "", templated=False)
    elif request.truncate and request.messages is not None:
        # Chat: whole old turns go first; the context of /api/generate comes on top.
        tokens = fit_messages(messages, render, limit - len(request.context or ()))
    else:
        tokens = render(messages)
    if request.context:
        tokens = [*request.context, *tokens]
    if len(tokens) > num_ctx - 1:
        if not request.truncate:
            raise StatusError("the input length exceeds the context length", 400)
        if not request.shift:  # Ollama's wording (llm/llama_server.go)
            raise StatusError(PROMPT_TOO_LONG, 400)
        bos = getattr(tokenizer, "bos_token_id", None)
        tokens = shift_window(tokens, num_ctx, request.sampling.num_keep, bos)
    if not tokens:
        raise StatusError("the prompt is empty after tokenization", 400)
    return tokens


def starts_in_thinking(tokenizer: Any, prompt: list[int]) -> bool:
    """Does the rendered prompt open a thinking block (e.g. DeepSeek-R1's `<think>\n`)?"""
    start = getattr(tokenizer, "think_start", None)
    if not start:
        return False
    tail = tokenizer.decode(prompt[-8:])
    return tail.rstrip().endswith(start)
