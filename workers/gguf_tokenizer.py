"""The Hugging Face tokenizer files of a GGUF model, rebuilt from its `tokenizer.*` metadata.

transformers' GGUF tokenizer mapping does the vocabulary work (`convert_gguf_tokenizer`
picks the builder from `tokenizer.ggml.model`: byte-level BPE for "gpt2", sentencepiece for
"llama", with the per-architecture fixes for gemma and phi3). That module needs no torch;
the loader around it (`reader.py`, `load_gguf_checkpoint`) does, so the metadata comes from
ollmlx.gguf_meta instead. What is added here: the BOS/EOS post-processor that llama.cpp
applies at tokenization (`tokenizer.ggml.add_bos_token`), and tokenizer_config.json.
"""

from __future__ import annotations

import json
from typing import Any

from tokenizers import Tokenizer, processors
from transformers.integrations.gguf.gguf_tokenizer_mapping import (
    GGUF_TOKENIZER_MAPPING,
    convert_gguf_tokenizer,
)

from ollmlx.gguf_meta import add_bos

_SPECIAL_IDS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
}
# Ids that end a turn besides EOS: generation stops on them too (llama.cpp llama_vocab
# is_eog: eot, eom; Ollama's gemma converters write eot_token_id 107 = <end_of_turn>).
_END_OF_TURN_IDS = ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")


class TokenizerError(ValueError):
    pass


def tokenizer_dict(metadata: dict[str, Any]) -> dict[str, Any]:
    """The metadata under the names convert_gguf_tokenizer expects."""
    renames = GGUF_TOKENIZER_MAPPING["tokenizer"]
    return {
        name: metadata[f"tokenizer.{k}"]
        for k, name in renames.items()
        if f"tokenizer.{k}" in metadata
    }


def special_tokens(metadata: dict[str, Any]) -> dict[str, str]:
    """bos/eos/unk/pad token strings of the ids the file names (absent ids are left out)."""
    tokens = metadata.get("tokenizer.ggml.tokens") or []
    out = {}
    for name, key in _SPECIAL_IDS.items():
        token_id = metadata.get(key)
        if isinstance(token_id, int) and 0 <= token_id < len(tokens):
            out[name] = tokens[token_id]
    return out


def eos_ids(metadata: dict[str, Any]) -> list[int]:
    """EOS first, then the end-of-turn ids, without repeats."""
    ids: list[int] = []
    for key in ("tokenizer.ggml.eos_token_id", *_END_OF_TURN_IDS):
        value = metadata.get(key)
        if isinstance(value, int) and value not in ids:
            ids.append(value)
    return ids


def build(architecture: str, metadata: dict[str, Any]) -> Tokenizer:
    """The backend tokenizer (tokenizer.json) the metadata describes."""
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise TokenizerError("the GGUF file has no tokenizer vocabulary (tokenizer.ggml.tokens)")
    try:
        tokenizer, _ = convert_gguf_tokenizer(architecture, tokenizer_dict(metadata))
    except (ValueError, KeyError, TypeError) as exc:
        model = metadata.get("tokenizer.ggml.model")
        raise TokenizerError(f"cannot rebuild the {model!r} tokenizer: {exc}") from exc
    tokenizer = _drop_foreign_tokens(tokenizer, tokens)
    specials = special_tokens(metadata)
    bos = specials.get("bos_token") if add_bos(metadata) else None
    eos = specials.get("eos_token") if metadata.get("tokenizer.ggml.add_eos_token") else None
    if bos or eos:
        # The builders disagree on what they add (GemmaTokenizer always adds <bos>), so the
        # post-processor is set from the file's flags, as llama.cpp's tokenizer applies them.
        single = " ".join(p for p in (bos and f"{bos}:0", "$A:0", eos and f"{eos}:0") if p)
        pair = " ".join(p for p in (single, bos and f"{bos}:1", "$B:1", eos and f"{eos}:1") if p)
        specials_used = [(t, tokenizer.token_to_id(t)) for t in (bos, eos) if t]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=sorted(set(specials_used))
        )
    elif metadata.get("tokenizer.ggml.model") == "gpt2":
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    else:
        tokenizer.post_processor = None
    return tokenizer


def _drop_foreign_tokens(tokenizer: Tokenizer, tokens: list[str]) -> Tokenizer:
    """Remove added tokens that are not the file's own (GPT2Tokenizer adds <|endoftext|> when
    the vocabulary lacks it): an id past the vocabulary would index past the embedding."""
    data = json.loads(tokenizer.to_str())
    own = [t for t in data.get("added_tokens", []) if t["id"] < len(tokens)]
    if len(own) == len(data.get("added_tokens", [])):
        return tokenizer
    data["added_tokens"] = own
    return Tokenizer.from_str(json.dumps(data))


def tokenizer_config(
    metadata: dict[str, Any], chat_template: str | None, context_length: int
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_tokens(metadata),
        "add_bos_token": add_bos(metadata),
        "add_eos_token": bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
    }
    if context_length > 0:
        config["model_max_length"] = context_length
    if chat_template:
        config["chat_template"] = chat_template
    return config
