"""Sentence embeddings: tokenise, batch, run the model, pool, normalise.

Encoders (`encoders/`: BERT family, nomic-bert, ModernBERT) pool as their
sentence-transformers config says (`1_Pooling/config.json`: mean or CLS); decoders (any
mlx-lm model, Qwen3-Embedding) pool the last token's final hidden state. Inputs are sorted
by length and run in padded batches, so N inputs cost a few forward passes, not N. Engine
thread only.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ollmlx.errors import StatusError
from ollmlx.protocol import EmbedRequest, EmbedResponse

log = logging.getLogger("ollmlx.worker")

MAX_BATCH = 64  # sequences per forward pass
TOKEN_BUDGET = 16384  # padded tokens (sequences x longest) per forward pass


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    trailing_special: int  # special tokens at the end ([SEP], EOS) kept when truncating


def _sentence_transformers(model_dir: Path) -> tuple[str, bool]:
    """(pooling mode, normalise) from sentence-transformers' files.

    Without those files: mean pooling, normalised (Ollama's defaults for BERT).
    """
    modules: list[dict[str, Any]] = []
    try:
        modules = json.loads((model_dir / "modules.json").read_text())
    except (OSError, ValueError):
        pass
    normalize = not modules or any(m.get("type", "").endswith("Normalize") for m in modules)
    folder = next((m.get("path", "") for m in modules if m.get("type", "").endswith("Pooling")), "")
    pooling = "mean"
    try:
        config = json.loads((model_dir / (folder or "1_Pooling") / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    for mode in ("cls_token", "lasttoken", "max_tokens", "mean_tokens"):
        if config.get(f"pooling_mode_{mode}"):
            pooling = {"cls_token": "cls", "lasttoken": "last", "max_tokens": "max"}.get(
                mode, "mean"
            )
            break
    return pooling, normalize


def _max_seq_length(model_dir: Path) -> int:
    try:
        return int(
            json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _fast_tokenizer(model_dir: Path, hf_tokenizer: Any = None) -> Any:
    """A private `tokenizers.Tokenizer` with no truncation or padding of its own."""
    from tokenizers import Tokenizer

    if hf_tokenizer is not None and getattr(hf_tokenizer, "backend_tokenizer", None) is not None:
        tokenizer = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    elif (model_dir / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    else:
        from transformers import AutoTokenizer

        auto = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        tokenizer = Tokenizer.from_str(auto.backend_tokenizer.to_str())
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


class Embedder:
    """Turns an EmbedRequest into vectors with one loaded model."""

    def __init__(
        self,
        tokenizer: Any,
        forward: Callable[[Any, Any], Any],
        max_tokens: int,
        pooling: str,
        normalize: bool,
        pad_id: int = 0,
    ) -> None:
        self._tokenizer = tokenizer
        self.forward = forward  # (ids, mask) -> hidden states (batch, length, hidden)
        self.max_tokens = max_tokens
        self.pooling = pooling
        self.model_normalizes = normalize
        self._pad_id = pad_id
        self.forward_passes = 0  # since the worker started

    @classmethod
    def for_encoder(cls, model_dir: Path, config: dict[str, Any]) -> Embedder:
        from .encoders import load_encoder

        model = load_encoder(model_dir, config)
        pooling, normalize = _sentence_transformers(model_dir)
        limit = int(model.max_tokens)
        limit = min(limit, _max_seq_length(model_dir) or limit)
        pad = int(config.get("pad_token_id", 0) or 0)
        return cls(_fast_tokenizer(model_dir), model, limit, pooling, normalize, pad)

    @classmethod
    def for_decoder(cls, model_dir: Path, model: Any, tokenizer: Any, limit: int) -> Embedder:
        inner = getattr(model, "model", None)
        if inner is None:
            raise StatusError("this model does not support embeddings", 400)
        _, normalize = _sentence_transformers(model_dir)

        def forward(ids: Any, mask: Any) -> Any:
            # Right padding under a causal mask: real tokens never see the pads.
            return inner(ids)

        hf = getattr(tokenizer, "_tokenizer", tokenizer)
        pad = getattr(hf, "pad_token_id", None)
        pad = pad if pad is not None else getattr(tokenizer, "eos_token_id", 0) or 0
        has_modules = (model_dir / "modules.json").is_file()
        return cls(
            _fast_tokenizer(model_dir, hf),
            forward,
            limit or 1 << 30,
            "last",
            normalize and has_modules,
            int(pad),
        )

    def embed(self, request: EmbedRequest) -> EmbedResponse:
        import mlx.core as mx
        import numpy as np

        started = time.perf_counter_ns()
        limit = min(self.max_tokens, request.num_ctx) if request.num_ctx > 0 else self.max_tokens
        sequences = [self._fit(e, limit, request.truncate) for e in self._encode(request.inputs)]
        vectors: list[Any] = [None] * len(sequences)
        passes = 0
        for group in _groups(sequences):
            longest = max(len(sequences[i]) for i in group)
            ids = np.full((len(group), longest), self._pad_id, dtype=np.int32)
            mask = np.zeros((len(group), longest), dtype=np.int32)
            for row, index in enumerate(group):
                ids[row, : len(sequences[index])] = sequences[index]
                mask[row, : len(sequences[index])] = 1
            mask_mx = mx.array(mask)
            hidden = self.forward(mx.array(ids), mask_mx)
            pooled = _pool(hidden, mask_mx, self.pooling).astype(mx.float32)
            if self.model_normalizes:
                pooled = _l2(pooled)
            mx.eval(pooled)
            passes += 1
            for row, vector in zip(group, np.array(pooled), strict=True):
                vectors[row] = vector
        self.forward_passes += passes
        out = np.stack(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)
        if request.normalize:
            out = _l2_np(out)
        if 0 < request.dimensions < out.shape[1]:
            out = _l2_np(out[:, : request.dimensions])
        tokens = sum(len(s) for s in sequences)
        log.info(
            "embedded %d input(s), %d tokens, in %d forward pass(es), %.1f ms",
            len(sequences),
            tokens,
            passes,
            (time.perf_counter_ns() - started) / 1e6,
        )
        return EmbedResponse(
            data=out.astype("<f4").tobytes(),
            count=len(sequences),
            dimensions=int(out.shape[1]) if len(sequences) else 0,
            prompt_eval_count=tokens,
            prompt_eval_duration=time.perf_counter_ns() - started,
            forward_passes=passes,
        )

    def _encode(self, texts: list[str]) -> list[Encoded]:
        encoded = []
        for encoding in self._tokenizer.encode_batch(texts):
            special = list(encoding.special_tokens_mask)
            trailing = 0
            while trailing < len(special) and special[len(special) - 1 - trailing]:
                trailing += 1
            encoded.append(Encoded(list(encoding.ids), min(trailing, 1)))
        return encoded

    def _fit(self, encoded: Encoded, limit: int, truncate: bool) -> list[int]:
        ids = encoded.ids
        if not ids:
            raise StatusError("cannot embed an empty input with this model", 400)
        if len(ids) <= limit:
            return ids
        if not truncate:
            raise StatusError("the input length exceeds the context length", 400)
        keep = encoded.trailing_special if limit > encoded.trailing_special else 0
        return ids[: limit - keep] + (ids[-keep:] if keep else [])


def _groups(sequences: list[list[int]]) -> list[list[int]]:
    """Indices in batches of similar length, within MAX_BATCH and TOKEN_BUDGET."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    groups: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = len(sequences[index])  # sorted: the newest is the longest
        if current and (len(current) >= MAX_BATCH or (len(current) + 1) * longest > TOKEN_BUDGET):
            groups.append(current)
            current = []
        current.append(index)
    if current:
        groups.append(current)
    return groups


def _pool(hidden: Any, mask: Any, mode: str) -> Any:
    import mlx.core as mx

    weights = mask[..., None].astype(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "last":
        last = mask.sum(axis=1) - 1
        return mx.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    if mode == "max":
        return mx.where(weights > 0, hidden, mx.array(-mx.inf, hidden.dtype)).max(axis=1)
    summed = (hidden.astype(mx.float32) * weights.astype(mx.float32)).sum(axis=1)
    return summed / mx.maximum(weights.astype(mx.float32).sum(axis=1), 1e-9)


def _l2(x: Any) -> Any:
    import mlx.core as mx

    return x / mx.maximum(mx.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _l2_np(x: Any) -> Any:
    import numpy as np

    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
