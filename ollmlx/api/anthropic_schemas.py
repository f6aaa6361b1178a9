"""Anthropic's Messages request shapes, as msgspec Structs (anthropic/anthropic.go in Ollama).

Unknown fields are ignored, as Ollama does; content blocks stay plain dicts because their
fields depend on their `type` and unknown types are skipped, not refused.
"""

from __future__ import annotations

from typing import Any

import msgspec


class InMessage(msgspec.Struct):
    role: str = ""
    # A string, or content blocks: text, image, tool_use, tool_result, thinking, ...
    content: str | list[dict[str, Any]] = ""


class Tool(msgspec.Struct):
    name: str = ""
    description: str = ""
    input_schema: dict[str, Any] | None = None
    # None or "custom" for the client's own tools; Anthropic's server tools have a type
    # such as "web_search_20250305".
    type: str | None = None


class ToolChoice(msgspec.Struct):
    type: str = "auto"  # auto | any | tool | none
    name: str = ""
    disable_parallel_tool_use: bool = False


class ThinkingConfig(msgspec.Struct):
    type: str = ""  # enabled | disabled (| adaptive)
    budget_tokens: int = 0


class OutputConfig(msgspec.Struct):
    effort: str = ""


class MessagesRequest(msgspec.Struct):
    """POST /v1/messages and /v1/messages/count_tokens (which needs no max_tokens)."""

    model: str = ""
    max_tokens: int = 0
    messages: list[InMessage] = msgspec.field(default_factory=list)
    system: str | list[dict[str, Any]] | None = None
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: list[str] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None
    metadata: Any = None  # ignored


messages_decoder = msgspec.json.Decoder(MessagesRequest)
