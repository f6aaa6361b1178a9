"""Ollama's Modelfile: parse it, and write one back for /api/show.

Commands are case-insensitive; values may be "quoted" or \"\"\"triple-quoted\"\"\" across
lines; `#` starts a comment line; repeated PARAMETER keys (stop) accumulate into a list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import StatusError
from ..options import parse_parameter
from ..protocol import Message

COMMANDS = ("from", "license", "template", "system", "adapter", "draft", "parameter", "message")
ROLES = ("system", "user", "assistant")


@dataclass
class Modelfile:
    from_: str = ""
    adapter: str = ""
    draft: str = ""  # a draft model for speculative decoding (Ollama's DRAFT): name or folder
    template: str | None = None
    system: str | None = None
    license: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)


_COMMAND = re.compile(r"\s*([A-Za-z]+)[ \t]+")


def _read_value(text: str, pos: int) -> tuple[str, int]:
    """A value from `pos`: triple-quoted, double-quoted or up to the end of the line."""
    for quote in ('"""', '"'):
        if text.startswith(quote, pos):
            end = text.find(quote, pos + len(quote))
            if end < 0:
                raise StatusError("unexpected EOF", 400)
            return text[pos + len(quote) : end], end + len(quote)
    end = text.find("\n", pos)
    end = len(text) if end < 0 else end
    return text[pos:end].strip(), end


def parse_modelfile(text: str) -> Modelfile:
    text = text.lstrip("\ufeff")
    result = Modelfile()
    pos, line = 0, 1
    while pos < len(text):
        stripped = text[pos:].lstrip(" \t\r\n")
        line += text[pos : len(text) - len(stripped)].count("\n")
        pos = len(text) - len(stripped)
        if pos >= len(text):
            break
        if text.startswith("#", pos):
            end = text.find("\n", pos)
            pos = len(text) if end < 0 else end
            continue
        match = _COMMAND.match(text, pos)
        if not match or match.group(1).lower() not in COMMANDS:
            raise StatusError(
                f"(line {line}): command must be one of " + ", ".join(f'"{c}"' for c in COMMANDS),
                400,
            )
        command, pos = match.group(1).lower(), match.end()
        try:
            pos = _apply(result, command, text, pos)
        except StatusError as exc:
            raise StatusError(f"(line {line}): {exc}", 400) from None
    if not result.from_:
        raise StatusError("no FROM line", 400)
    return result


def _apply(result: Modelfile, command: str, text: str, pos: int) -> int:
    if command in ("parameter", "message"):
        key_match = re.compile(r"([A-Za-z0-9_]+)[ \t]+").match(text, pos)
        if not key_match:
            raise StatusError(f"missing value for {command}", 400)
        key, (value, pos) = key_match.group(1), _read_value(text, key_match.end())
        if command == "message":
            if key.lower() not in ROLES:
                raise StatusError(
                    'message role must be one of "system", "user", or "assistant"', 400
                )
            result.messages.append(Message(role=key.lower(), content=value))
        else:
            typed = parse_parameter(key, value)
            name = key.lower()
            if isinstance(typed, list):
                result.parameters[name] = [*result.parameters.get(name, []), *typed]
            else:
                result.parameters[name] = typed
        return pos
    value, pos = _read_value(text, pos)
    if command == "from":
        result.from_ = value
    elif command == "adapter":
        result.adapter = value
    elif command == "draft":
        result.draft = value
    elif command == "template":
        result.template = value
    elif command == "system":
        result.system = value
    elif command == "license":
        result.license.append(value)
    return pos


def _quote(value: str) -> str:
    return f'"""{value}"""' if ("\n" in value or '"' in value) else f'"{value}"'


def format_parameters(parameters: dict[str, Any]) -> str:
    """Ollama's /api/show `parameters` text: `%-30s %#v`, one line per value."""
    lines = []
    for key, value in sorted(parameters.items()):
        for item in value if isinstance(value, list) else [value]:
            shown = (
                f'"{item}"'
                if isinstance(item, str)
                else str(item).lower()
                if isinstance(item, bool)
                else str(item)
            )
            lines.append(f"{key:<30} {shown}")
    return "\n".join(lines)


def render_modelfile(
    name: str,
    source: str,
    template: str | None,
    system: str | None,
    parameters: dict[str, Any],
    messages: list[Message],
    license: list[str],
) -> str:
    """The Modelfile that /api/show reconstructs from a manifest."""
    lines = [
        '# Modelfile generated by "ollama show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {name}",
        "",
        f"FROM {source}",
    ]
    if template:
        lines.append(f"TEMPLATE {_quote(template)}")
    if system:
        lines.append(f"SYSTEM {_quote(system)}")
    for key, value in sorted(parameters.items()):
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {key} {_quote(item) if isinstance(item, str) else item}")
    for message in messages:
        lines.append(f"MESSAGE {message.role} {_quote(message.content)}")
    for text in license:
        lines.append(f"LICENSE {_quote(text)}")
    return "\n".join(lines) + "\n"
