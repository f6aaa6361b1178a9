"""OpenAI requests -> Ollama's native requests, as Ollama's openai middleware translates them.

The native request then takes the one path every dialect shares (check, CompletionRequest,
worker). Nothing here knows about HTTP responses.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from ..errors import StatusError
from ..protocol import Message
from .context import Context
from .openai_schemas import (
    ChatCompletionRequest,
    ChatMessage,
    InToolCall,
    OutFunction,
    OutToolCall,
    Reasoning,
    ResponseFormat,
    TextCompletionRequest,
)
from .schemas import ChatRequest, GenerateRequest

_IMAGE_TYPES = ("jpeg", "jpg", "png", "webp")
# OpenAI's reasoning efforts -> Ollama's think (openai/openai.go thinkFromReasoningEffort):
# tiers past either end of Ollama's scale are clamped to the nearest one, not refused.
EFFORTS: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}


def require_model(ctx: Context, name: str) -> None:
    """Ollama's scheduler wording for an unknown model on the OpenAI routes."""
    if not name:
        raise StatusError("model is required", 400)
    if ctx.store.get(name) is None:
        raise StatusError(f"model {json.dumps(name)} not found, try pulling it first", 404)


def decode_image_url(url: str) -> str:
    """A base64 data URL -> the base64 payload Ollama's `images` carry (validated)."""
    if url.startswith(("http://", "https://")):
        raise StatusError(
            "image URLs are not currently supported, please use base64 encoded data instead", 400
        )
    prefixes = ["data:;base64,", *(f"data:image/{kind};base64," for kind in _IMAGE_TYPES)]
    prefix = next((p for p in prefixes if url.startswith(p)), None)
    if prefix is None:
        raise StatusError("invalid image input", 400)
    data = url[len(prefix) :]
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise StatusError("invalid image input", 400) from None
    return data


def _content_parts(parts: list[Any]) -> tuple[str, list[str]]:
    """Text and image parts -> (text, images): one message, as the chat template wants it."""
    texts: list[str] = []
    images: list[str] = []
    for part in parts:
        if not isinstance(part, dict):
            raise StatusError("invalid message format", 400)
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise StatusError("invalid message format", 400)
            images.append(decode_image_url(url))
        else:
            raise StatusError("invalid message format", 400)
    return "\n".join(texts), images


def tool_arguments(arguments: str | dict[str, Any]) -> dict[str, Any]:
    """OpenAI sends arguments as JSON text; templates want the object."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        raise StatusError("invalid tool call arguments", 400) from None
    if not isinstance(value, dict):
        raise StatusError("invalid tool call arguments", 400)
    return value


def _tool_calls(calls: list[InToolCall]) -> list[dict[str, Any]]:
    return [
        {
            "id": call.id,
            "type": "function",
            "function": {
                "name": call.function.name,
                "arguments": tool_arguments(call.function.arguments),
            },
        }
        for call in calls
    ]


def _name_for_call_id(messages: list[ChatMessage], call_id: str) -> str | None:
    # Backwards: with duplicate ids the latest call wins, as in Ollama.
    for message in reversed(messages):
        for call in message.tool_calls or ():
            if call.id == call_id:
                return call.function.name
    return None


def chat_messages(messages: list[ChatMessage]) -> list[Message]:
    out = []
    for m in messages:
        images: list[str] = []
        if isinstance(m.content, str):
            content = m.content
        elif isinstance(m.content, list):
            content, images = _content_parts(m.content)
        elif m.tool_calls:
            content = ""  # content is optional only beside tool calls
        else:
            raise StatusError("invalid message content type: null", 400)
        tool_name = None
        if m.role.lower() == "tool":
            tool_name = m.name or (_name_for_call_id(messages, m.tool_call_id or "") or None)
        out.append(
            Message(
                role=m.role,
                content=content,
                thinking=m.reasoning or m.reasoning_content or None,
                images=images or None,
                tool_calls=_tool_calls(m.tool_calls) if m.tool_calls else None,
                tool_name=tool_name,
            )
        )
    return out


def sampling_options(
    req: ChatCompletionRequest | TextCompletionRequest, max_tokens: int | None
) -> dict[str, Any]:
    """OpenAI's defaults differ from Ollama's: temperature and top_p are 1.0 when unset."""
    options: dict[str, Any] = {
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
    }
    if req.stop is not None:
        options["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    for key in ("seed", "frequency_penalty", "presence_penalty"):
        value = getattr(req, key)
        if value is not None:
            options[key] = value
    return options


def response_format(fmt: ResponseFormat | None) -> Any:
    """`json_object` -> "json", `json_schema` -> its schema; other types: free text."""
    if fmt is None:
        return None
    kind = fmt.type.strip().lower()
    if kind == "json_object":
        return "json"
    if kind == "json_schema" and fmt.json_schema is not None:
        return fmt.json_schema.schema
    return None


def think_value(effort: str | None) -> bool | str | None:
    """`reasoning_effort` -> Ollama's think: "none" turns it off, a level passes through."""
    if not effort:
        return None
    if effort not in EFFORTS:
        raise StatusError(
            f'invalid reasoning value: "{effort}" (must be "minimal", "low", "medium", '
            '"high", "xhigh", "ultra", "max", or "none")',
            400,
        )
    return EFFORTS[effort]


def chat_request(req: ChatCompletionRequest) -> ChatRequest:
    if not req.messages:
        raise StatusError("[] is too short - 'messages'", 400)
    effort = (req.reasoning or Reasoning()).effort or req.reasoning_effort
    max_tokens = (
        req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    )
    return ChatRequest(
        model=req.model,
        messages=chat_messages(req.messages),
        tools=req.tools,
        stream=req.stream,
        format=response_format(req.response_format),
        options=sampling_options(req, max_tokens),
        think=think_value(effort),
        logprobs=bool(req.logprobs),
        top_logprobs=req.top_logprobs,
    )


def generate_request(req: TextCompletionRequest) -> GenerateRequest:
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise StatusError("only a single prompt string is supported", 400)
        prompt = prompt[0]
    top = max(req.logprobs or 0, 0)
    return GenerateRequest(
        model=req.model,
        prompt=prompt,
        suffix=req.suffix,
        stream=req.stream,
        options=sampling_options(req, req.max_tokens),
        logprobs=top > 0,
        top_logprobs=top,
    )


def tool_call(call: dict[str, Any], position: int) -> OutToolCall:
    """A worker tool call (arguments as an object) -> OpenAI's (arguments as JSON text)."""
    function = call["function"]
    return OutToolCall(
        id=call.get("id", ""),
        index=int(function.get("index", position)),
        type="function",
        function=OutFunction(
            name=function["name"],
            # Compact, as Go's json.Marshal writes it in Ollama.
            arguments=json.dumps(
                function.get("arguments", {}), separators=(",", ":"), ensure_ascii=False
            ),
        ),
    )
