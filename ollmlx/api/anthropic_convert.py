"""Anthropic Messages requests -> Ollama's chat request, as Ollama's anthropic package
translates them (anthropic/anthropic.go FromMessagesRequest, convertMessage).

The chat request then takes the one path every dialect shares (check_chat, the worker's
template and parsers), so a conversation answers here exactly as on /api/chat. Nothing
here knows about HTTP responses.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any

from ..errors import StatusError
from ..protocol import Message
from .anthropic_schemas import InMessage, MessagesRequest, ThinkingConfig, Tool, ToolChoice
from .schemas import ChatRequest

log = logging.getLogger("ollmlx.api")


def chat_request(req: MessagesRequest, counting: bool = False) -> ChatRequest:
    """The chat request a Messages request asks for; `counting`: for count_tokens, where
    max_tokens is not required (Ollama's checks, in Ollama's order, otherwise)."""
    if not req.model:
        raise StatusError("model is required", 400)
    if not counting and req.max_tokens <= 0:
        raise StatusError("max_tokens is required and must be positive", 400)
    if not req.messages:
        raise StatusError("messages is required", 400)
    names = _tool_names(req.messages)
    messages = _system(req.system)
    for message in req.messages:
        messages.extend(_convert(message, names))
    options: dict[str, Any] = {}
    if not counting:
        options["num_predict"] = req.max_tokens
    for key in ("temperature", "top_p", "top_k"):
        value = getattr(req, key)
        if value is not None:
            options[key] = value
    if req.stop_sequences:
        options["stop"] = list(req.stop_sequences)
    return ChatRequest(
        model=req.model,
        messages=messages,
        tools=_tools(req.tools, req.tool_choice),
        stream=req.stream,
        options=options,
        think=_think(req.thinking, req.output_config.effort if req.output_config else ""),
    )


def _system(system: str | list[dict[str, Any]] | None) -> list[Message]:
    # Text blocks are joined as they are, without a separator, as Ollama joins them.
    if isinstance(system, list):
        system = "".join(
            b["text"] for b in system if b.get("type") == "text" and isinstance(b.get("text"), str)
        )
    return [Message(role="system", content=system)] if system else []


def _tool_names(messages: list[InMessage]) -> dict[str, str]:
    """tool_use id -> tool name: chat templates name a tool result by its tool."""
    names: dict[str, str] = {}
    for message in messages:
        if isinstance(message.content, list):
            for block in message.content:
                if block.get("type") == "tool_use" and isinstance(block.get("id"), str):
                    names[block["id"]] = str(block.get("name") or "")
    return names


def _image(source: Any) -> str:
    """A base64 image source -> the base64 payload Ollama's `images` carry (validated)."""
    if not isinstance(source, dict):
        raise StatusError("invalid image source", 400)
    if source.get("type") != "base64":
        raise StatusError(
            f"invalid image source type: {source.get('type') or ''}. "
            "Only base64 images are supported.",
            400,
        )
    data = source.get("data")
    try:
        base64.b64decode(data if isinstance(data, str) else "", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise StatusError(f"invalid base64 image data: {exc}", 400) from None
    return str(data)


def _tool_result(content: Any) -> tuple[str, list[str]]:
    """A tool_result's content: a string, or text and image blocks (others skipped)."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        return "", []
    texts: list[str] = []
    images: list[str] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "image":
            images.append(_image(block.get("source")))
    return "".join(texts), images


def _convert(message: InMessage, names: dict[str, str]) -> list[Message]:
    """One Anthropic message -> Ollama messages: its tool results become `tool` messages
    (before the user's own text, as Ollama orders them)."""
    role = message.role.lower()
    blocks: list[dict[str, Any]] = (
        [{"type": "text", "text": message.content}]
        if isinstance(message.content, str)
        else message.content
    )
    texts: list[str] = []
    images: list[str] = []
    calls: list[dict[str, Any]] = []
    thinking = ""
    results: list[Message] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            texts.append(text if isinstance(text, str) else "")
        elif kind == "image":
            images.append(_image(block.get("source")))
        elif kind == "tool_use":
            if not block.get("id"):
                raise StatusError("tool_use block missing required 'id' field", 400)
            if not block.get("name"):
                raise StatusError("tool_use block missing required 'name' field", 400)
            arguments = block.get("input")
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {
                        "name": block["name"],
                        "arguments": arguments if isinstance(arguments, dict) else {},
                    },
                }
            )
        elif kind == "tool_result":
            content, result_images = _tool_result(block.get("content"))
            name = names.get(str(block.get("tool_use_id") or "")) or None
            results.append(
                Message(role="tool", content=content, images=result_images or None, tool_name=name)
            )
        elif kind == "thinking":
            text = block.get("thinking")
            thinking = text if isinstance(text, str) else thinking
        # Other blocks (redacted_thinking, documents, server tools) are skipped, as by Ollama.
    out = results if role == "user" else []
    content = "".join(texts)
    if content or images or calls or thinking:
        out.append(
            Message(
                role=role,
                content=content,
                thinking=thinking or None,
                images=images or None,
                tool_calls=calls or None,
            )
        )
    return out if role == "user" else out + results


def _tools(tools: list[Tool] | None, choice: ToolChoice | None) -> list[dict[str, Any]] | None:
    """Tools in the chat template's format. `tool_choice: none` is honoured by not showing
    the tools; `any` and `tool` cannot be forced through a template and are ignored, as
    Ollama ignores tool_choice."""
    if not tools or (choice is not None and choice.type == "none"):
        return None
    out = []
    for tool in tools:
        if (tool.type or "").startswith("web_search"):
            # Ollama runs this server tool through ollama.com; ollmlx has no web search.
            log.warning("ignoring Anthropic server tool %r: not available here", tool.type)
            continue
        out.append(
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.input_schema or {"type": "object", "properties": {}},
                },
            }
        )
    return out or None


def _think(thinking: ThinkingConfig | None, effort: str) -> bool | str | None:
    """`thinking: enabled|disabled` -> think true|false; else output_config.effort as a
    level (xhigh as high), as Ollama maps them; budget_tokens has no equivalent."""
    if thinking is not None and thinking.type == "enabled":
        return True
    if thinking is not None and thinking.type == "disabled":
        return False
    level = effort.strip().lower()
    level = "high" if level == "xhigh" else level
    return level if level in ("high", "medium", "low", "max") else None


def estimate_input_tokens(req: MessagesRequest) -> int:
    """Ollama's estimate for message_start (anthropic.go EstimateInputTokens): a quarter
    of the characters. The exact count comes in message_delta, once the prompt is built."""
    total = _length(req.system)
    for message in req.messages:
        total += len(message.role) + _length(message.content)
    for tool in req.tools or ():
        schema = json.dumps(tool.input_schema, separators=(",", ":")) if tool.input_schema else ""
        total += len(tool.name) + len(tool.description) + len(schema)
    tokens = total // 4
    return 1 if tokens == 0 and (req.messages or req.system is not None) else tokens


def _length(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for block in content:
        if not isinstance(block, dict):
            continue
        for key in ("text", "thinking"):
            if isinstance(block.get(key), str):
                total += len(block[key])
        if block.get("type") in ("tool_use", "tool_result"):
            total += len(json.dumps(block, separators=(",", ":")))
    return total
