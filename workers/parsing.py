"""Split a model's streamed text into content, thinking and tool calls.

The markers come from the tokenizer (mlx-lm infers `<think>`/`</think>` from the
vocabulary and the tool-call markers and parser from the chat template). Text that could
be the start of a marker is held back, so no markup ever reaches `content`, not even
split across tokens.
"""

from __future__ import annotations

import json
import logging
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("ollmlx.worker")

CONTENT, THINKING, TOOL = "content", "thinking", "tool"


@dataclass
class Parsed:
    content: str = ""
    thinking: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.thinking or self.tool_calls)


def _call_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "call_" + "".join(secrets.choice(alphabet) for _ in range(8))


class ResponseParser:
    def __init__(
        self,
        think: tuple[str, str] | None,
        tool: tuple[str, str] | None,
        tool_parser: Callable[..., Any] | None,
        tools: list[dict[str, Any]] | None,
        start_thinking: bool,
        keep_thinking: bool,
    ) -> None:
        self._think = think
        self._tool = tool if tools else None  # no tools offered: markup stays text
        self._tool_parser = tool_parser
        self._tools = tools
        self._keep_thinking = keep_thinking
        self._state = THINKING if (think and start_thinking) else CONTENT
        self._pending = ""
        self._tool_text = ""
        self._calls = 0

    def _edges(self) -> list[tuple[str, str]]:
        """(marker, next state) pairs that can end the current state."""
        edges = []
        if self._state == CONTENT:
            if self._think:
                edges.append((self._think[0], THINKING))
            if self._tool:
                edges.append((self._tool[0], TOOL))
        elif self._state == THINKING and self._think:
            edges.append((self._think[1], CONTENT))
            if self._tool:
                edges.append((self._tool[0], TOOL))
        elif self._state == TOOL and self._tool:
            edges.append((self._tool[1], CONTENT))
        return edges

    def feed(self, text: str) -> Parsed:
        if self._think is None and self._tool is None and not self._pending:
            return Parsed(content=text)  # no markers to look for: the common case
        out = Parsed()
        self._pending += text
        while self._pending:
            edges = self._edges()
            hits = [(self._pending.find(m), m, nxt) for m, nxt in edges]
            hits = [h for h in hits if h[0] >= 0]
            if hits:
                index, marker, nxt = min(hits)
                self._emit(out, self._pending[:index])
                self._pending = self._pending[index + len(marker) :]
                self._switch(out, nxt)
                continue
            keep = _partial_suffix(self._pending, [m for m, _ in edges])
            cut = len(self._pending) - keep
            self._emit(out, self._pending[:cut])
            self._pending = self._pending[cut:]
            break
        return out

    def flush(self) -> Parsed:
        """At the end: held-back text, and a tool call left open by the model."""
        out = Parsed()
        self._emit(out, self._pending)
        self._pending = ""
        if self._state == TOOL and self._tool_text.strip():
            self._finish_tool_call(out)
        return out

    def _emit(self, out: Parsed, text: str) -> None:
        if not text:
            return
        if self._state == CONTENT:
            out.content += text
        elif self._state == THINKING:
            if self._keep_thinking:
                out.thinking += text
        else:
            self._tool_text += text

    def _switch(self, out: Parsed, state: str) -> None:
        if self._state == TOOL:
            self._finish_tool_call(out)
        if state == CONTENT and self._state == THINKING and not out.content:
            self._pending = self._pending.lstrip("\n")  # the answer starts after the newline
        self._state = state

    def _finish_tool_call(self, out: Parsed) -> None:
        text, self._tool_text = self._tool_text, ""
        try:
            parsed = self._tool_parser(text, self._tools) if self._tool_parser else None
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            log.warning("could not parse a tool call (%s); returning it as text", exc)
            parsed = None
        if not parsed:
            assert self._tool is not None
            out.content += f"{self._tool[0]}{text}{self._tool[1]}"
            return
        for call in parsed if isinstance(parsed, list) else [parsed]:
            arguments = call.get("arguments", {})
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except json.JSONDecodeError:
                    arguments = {"value": arguments}
            out.tool_calls.append(
                {
                    "id": _call_id(),
                    "function": {
                        "index": self._calls,
                        "name": call["name"],
                        "arguments": arguments,
                    },
                }
            )
            self._calls += 1


def _partial_suffix(text: str, markers: list[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a marker."""
    longest = max((len(m) for m in markers), default=0)
    for size in range(min(len(text), longest - 1), 0, -1):
        if any(m.startswith(text[-size:]) for m in markers):
            return size
    return 0
