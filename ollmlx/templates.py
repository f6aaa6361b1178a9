"""Jinja equivalents of Ollama's Go chat templates, for GGUF models that carry none of their own.

Nearly every GGUF has a Jinja `tokenizer.chat_template`; for the few that do not, only the
Go template of the manifest's `template` layer says how to build a prompt. mlx-lm renders
Jinja, so the Go template is matched to a known family in ollmlx/data/templates.json:

1. by its text (normalised: trim markers and whitespace runs ignored), against the Go
   templates each family lists (Ollama's template/*.gotmpl);
2. else by its special markers: every `required` marker of one family, and no marker outside
   that family's `required` + `optional` (so a template with tool-call or unknown tokens
   does not match).

Templates that use tools, thinking or fill-in-the-middle fields never match: their Jinja
equivalent would silently drop those parts of the prompt. No match is a TemplateError; the
caller answers 400 naming the model. A leaf module: pure Python, no MLX.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .errors import StatusError

# Fields of Ollama's template values (template/template.go Execute) that plain Jinja chat
# templates here do not reproduce.
_UNSUPPORTED_FIELDS = re.compile(
    r"\.(Tools|ToolCalls|ToolName|ToolCallID|Think|ThinkLevel|IsThinkSet|Thinking|Suffix|Images)\b"
)
# Special-token-like literals: <|x|>, <x>, </x>, [X], [/X].
_MARKER = re.compile(r"<\|[^|<>\s]+\|>|</?[A-Za-z_][A-Za-z0-9_]*>|\[/?[A-Z_]+\]")
_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.DOTALL)
BOS = "{{ bos_token }}"


class TemplateError(StatusError, ValueError):
    """The Go template matches no known family. A 400: the client's file."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message, status)


@dataclass(frozen=True)
class TemplateMatch:
    family: str
    jinja: str
    exact: bool  # matched by text, not only by markers


@functools.cache
def families() -> dict[str, dict[str, Any]]:
    text = resources.files("ollmlx").joinpath("data/templates.json").read_text()
    table = json.loads(text)["families"]
    return {name: dict(entry) for name, entry in table.items()}


def normalise(go_template: str) -> str:
    """Go template text with trim markers dropped, actions tidied and whitespace collapsed."""
    text = _ACTION.sub(lambda m: "{{" + " ".join(m[1].split()) + "}}", go_template)
    return " ".join(text.split())


def _markers(go_template: str) -> set[str]:
    # Markers inside actions (`{{ if eq .Role "user" }}`) are not prompt text: look outside.
    literal = _ACTION.sub(" ", go_template)
    return set(_MARKER.findall(literal))


def _by_text(go_template: str) -> str | None:
    wanted = normalise(go_template)
    for name, entry in families().items():
        if any(normalise(known) == wanted for known in entry.get("go_templates", [])):
            return name
    return None


def _by_markers(go_template: str) -> str | None:
    found = _markers(go_template)
    matches = [
        name
        for name, entry in families().items()
        if entry.get("fingerprint", True)
        and set(entry["required"]) <= found
        and found <= set(entry["required"]) | set(entry.get("optional", []))
    ]
    return matches[0] if len(matches) == 1 else None


def jinja_for_go_template(go_template: str, *, bos: bool = False) -> TemplateMatch:
    """The Jinja chat template equivalent to an Ollama Go template.

    bos: prefix `{{ bos_token }}`: llama.cpp (and so Ollama) adds BOS when tokenizing the
    rendered Go prompt if the vocabulary says add_bos_token; the worker encodes a rendered
    Jinja prompt without adding special tokens, so the template has to carry it.
    """
    if not go_template.strip():
        raise TemplateError("the model has no chat template")
    unsupported = sorted({m[1] for m in _UNSUPPORTED_FIELDS.finditer(go_template)})
    if unsupported:
        fields = ", ".join(f".{f}" for f in unsupported)
        raise TemplateError(
            f"the model's Go template uses {fields}, which cannot be converted to a Jinja "
            "chat template"
        )
    name = _by_text(go_template)
    exact = name is not None
    if name is None:
        name = _by_markers(go_template)
    if name is None:
        found = ", ".join(sorted(_markers(go_template))) or "none"
        raise TemplateError(
            "the model's Go template matches no known chat template family "
            f"({', '.join(families())}); special markers found: {found}"
        )
    jinja = str(families()[name]["jinja"])
    return TemplateMatch(name, BOS + jinja if bos else jinja, exact)


# An action that reads a field of Ollama's template values (`.Prompt`, `$.System`,
# `.Messages`) or closes a Go block (`{{ end }}`): Go syntax, which Jinja never writes.
_GO_ACTION = re.compile(r"\{\{-?\s*(?:[^{}]*?[\s($]\.[A-Z]\w*|\.[A-Z]\w*|end\s*-?\}\})")


def looks_like_go_template(text: str) -> bool:
    """Whether a TEMPLATE is Ollama's Go syntax (a Modelfile written for Ollama) rather
    than a Jinja chat template (`{% ... %}` blocks, lower-case variables)."""
    return "{%" not in text and _GO_ACTION.search(text) is not None
