"""Ollama `format` values -> llguidance grammars, and their validation.

Shared by the supervisor (a bad schema is a 400 before any worker is involved) and the
worker (which constrains decoding with the grammar). No MLX here.
"""

from __future__ import annotations

import json
from typing import Any

import llguidance

# "json" means a JSON object, as in Ollama (llama.cpp's json grammar starts at object).
JSON_OBJECT: dict[str, Any] = {"type": "object"}
# Compact JSON: no runs of whitespace that a model could extend without end.
GRAMMAR_OPTIONS = {"whitespace_flexible": False}


def grammar_for(fmt: Any) -> str:
    """The llguidance grammar for an Ollama `format` value ("json" or a schema)."""
    schema = JSON_OBJECT if fmt == "json" else fmt
    return llguidance.LLMatcher.grammar_from_json_schema(
        json.dumps(schema), defaults=GRAMMAR_OPTIONS
    )


def check_format(fmt: Any) -> str | None:
    """Why `fmt` is not a usable format, or None. Needs no tokenizer (supervisor side)."""
    if fmt in (None, "", "json"):
        return None
    if not isinstance(fmt, dict):
        return f'invalid format: {json.dumps(fmt)}; expected "json" or a valid JSON Schema object'
    try:
        grammar = grammar_for(fmt)
    except (ValueError, TypeError) as exc:
        return f"invalid JSON schema in format: {exc}"
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        return f"invalid JSON schema in format: {'; '.join(messages)}"
    return None
