"""Ollama `format` values -> llguidance grammars, and their validation.

Shared by the supervisor (a bad schema is a 400 before any worker is involved) and the
worker (which constrains decoding with the grammar). No MLX here.
"""

from __future__ import annotations

import functools
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


# Deeper schemas than any real one would only exercise recursion in the grammar compiler.
MAX_SCHEMA_DEPTH = 64


def depth(value: Any) -> int:
    """How deeply JSON containers nest in `value` (iteratively: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def check_format(fmt: Any) -> str | None:
    """Why `fmt` is not a usable format, or None. Needs no tokenizer (supervisor side)."""
    if fmt in (None, "", "json"):
        return None
    if not isinstance(fmt, dict):
        text = json.dumps(fmt)[:200]
        return f'invalid format: {text}; expected "json" or a valid JSON Schema object'
    if depth(fmt) > MAX_SCHEMA_DEPTH:
        return f"invalid JSON schema in format: nested deeper than {MAX_SCHEMA_DEPTH} levels"
    try:
        grammar = grammar_for(fmt)
    except (ValueError, TypeError, RecursionError) as exc:
        return f"invalid JSON schema in format: {exc}"
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        return f"invalid JSON schema in format: {'; '.join(messages)}"
    # Some schemas compile yet admit no JSON at all (`{"$ref": "#"}` recurses forever):
    # the first token mask shows it, and a byte-level vocabulary is enough to ask.
    matcher = llguidance.LLMatcher(_byte_tokenizer(), grammar)
    if not matcher.is_error():
        matcher.compute_bitmask()
    if matcher.is_error():
        reason = matcher.get_error().splitlines()[0] if matcher.get_error() else "no valid JSON"
        return f"invalid JSON schema in format: it admits no JSON value ({reason})"
    return None


class _Bytes:
    """A vocabulary of the 256 bytes plus an end token, for checking grammars only."""

    eos_token_id = 256
    bos_token_id = None
    tokens = [bytes([i]) for i in range(256)] + [b"</s>"]
    special_token_ids = [256]

    def __call__(self, text: bytes) -> list[int]:
        return list(text)


@functools.cache
def _byte_tokenizer() -> llguidance.LLTokenizer:
    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Bytes()))
