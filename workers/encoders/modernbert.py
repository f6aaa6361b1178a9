"""ModernBERT (answerdotai/ModernBERT, modernbert-embed, gte-modernbert) in MLX.

Pre-LayerNorm blocks (the first block has no attention norm), a fused Wqkv, rotary
position embeddings, a GeGLU MLP (Wi gives [input | gate]: act(input) * gate), no
biases by default, and attention that alternates: every `global_attn_every_n_layers`-th
layer (from layer 0) is global, the others see only a window of `local_attention / 2`
tokens to each side and use their own rotary base. A final LayerNorm ends the stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from .common import activation, strip_prefix


@dataclass(frozen=True)
class ModernBertConfig:
    vocab_size: int
    hidden: int
    inner: int
    layers: int
    heads: int
    eps: float
    norm_bias: bool
    attention_bias: bool
    mlp_bias: bool
    activation: str
    global_base: float
    local_base: float
    window: int  # tokens each side a local layer sees: local_attention // 2
    sliding: tuple[bool, ...]  # per layer: local (sliding window) attention
    max_tokens: int

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> ModernBertConfig:
        layers = int(config["num_hidden_layers"])
        every = int(config.get("global_attn_every_n_layers", 3) or 1)
        types = config.get("layer_types")  # newer transformers spell the pattern out
        if isinstance(types, list) and len(types) == layers:
            sliding = tuple(t == "sliding_attention" for t in types)
        else:
            sliding = tuple(i % every != 0 for i in range(layers))
        global_base = float(config.get("global_rope_theta", 160000.0) or 160000.0)
        return cls(
            vocab_size=int(config["vocab_size"]),
            hidden=int(config["hidden_size"]),
            inner=int(config["intermediate_size"]),
            layers=layers,
            heads=int(config["num_attention_heads"]),
            eps=float(config.get("norm_eps", 1e-5)),
            norm_bias=bool(config.get("norm_bias", False)),
            attention_bias=bool(config.get("attention_bias", False)),
            mlp_bias=bool(config.get("mlp_bias", False)),
            activation=str(config.get("hidden_activation", "gelu")),
            global_base=global_base,
            local_base=float(config.get("local_rope_theta") or global_base),
            window=int(config.get("local_attention", 128)) // 2,
            sliding=sliding,
            max_tokens=int(config.get("max_position_embeddings", 8192)),
        )


def _norm(config: ModernBertConfig) -> nn.LayerNorm:
    return nn.LayerNorm(config.hidden, eps=config.eps, bias=config.norm_bias)


class Embeddings(nn.Module):
    def __init__(self, config: ModernBertConfig) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden)
        self.norm = _norm(config)

    def __call__(self, ids: mx.array) -> mx.array:
        return self.norm(self.tok_embeddings(ids))


class Attention(nn.Module):
    def __init__(self, config: ModernBertConfig, sliding: bool) -> None:
        super().__init__()
        self.heads = config.heads
        self.head_dim = config.hidden // config.heads
        self.sliding = sliding
        self.base = config.local_base if sliding else config.global_base
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.Wqkv = nn.Linear(config.hidden, 3 * config.hidden, bias=config.attention_bias)
        self.Wo = nn.Linear(config.hidden, config.hidden, bias=config.attention_bias)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        batch, length, hidden = x.shape
        qkv = self.Wqkv(x).reshape(batch, length, 3, self.heads, -1).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        # Rotate halves (not interleaved pairs) over the whole head.
        q = mx.fast.rope(q, self.head_dim, traditional=False, base=self.base, scale=1.0, offset=0)
        k = mx.fast.rope(k, self.head_dim, traditional=False, base=self.base, scale=1.0, offset=0)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return self.Wo(out.transpose(0, 2, 1, 3).reshape(batch, length, hidden))


class MLP(nn.Module):
    def __init__(self, config: ModernBertConfig) -> None:
        super().__init__()
        self.Wi = nn.Linear(config.hidden, 2 * config.inner, bias=config.mlp_bias)
        self.Wo = nn.Linear(config.inner, config.hidden, bias=config.mlp_bias)
        self.act = activation(config.activation)

    def __call__(self, x: mx.array) -> mx.array:
        value, gate = mx.split(self.Wi(x), 2, axis=-1)
        return self.Wo(self.act(value) * gate)


class Layer(nn.Module):
    def __init__(self, config: ModernBertConfig, index: int) -> None:
        super().__init__()
        self.first = index == 0
        if not self.first:  # the embeddings' norm already normalises layer 0's input
            self.attn_norm = _norm(config)
        self.attn = Attention(config, config.sliding[index])
        self.mlp_norm = _norm(config)
        self.mlp = MLP(config)

    def __call__(self, x: mx.array, global_mask: mx.array, local_mask: mx.array) -> mx.array:
        h = x if self.first else self.attn_norm(x)
        x = x + self.attn(h, local_mask if self.attn.sliding else global_mask)
        return x + self.mlp(self.mlp_norm(x))


class ModernBertModel(nn.Module):
    def __init__(self, config: ModernBertConfig) -> None:
        super().__init__()
        self.window = config.window
        self.max_tokens = config.max_tokens
        self.embeddings = Embeddings(config)
        self.layers = [Layer(config, i) for i in range(config.layers)]
        self.final_norm = _norm(config)

    def __call__(self, ids: mx.array, attention_mask: mx.array) -> mx.array:
        """Final hidden states (batch, length, hidden); `attention_mask` is 1 for tokens."""
        positions = mx.arange(ids.shape[1])
        distance = mx.abs(positions[:, None] - positions[None, :])
        # Padded keys are never attended. A padded query may still see itself, so that
        # no row is fully masked (a NaN there would reach real rows through 0 * NaN).
        keys = (attention_mask > 0)[:, None, None, :] | (distance == 0)[None, None]
        local = keys & (distance <= self.window)[None, None]
        x = self.embeddings(ids)
        for layer in self.layers:
            x = layer(x, keys, local)
        return self.final_norm(x)


def build(config: dict[str, Any]) -> ModernBertModel:
    return ModernBertModel(ModernBertConfig.from_dict(config))


def rename(key: str) -> str | None:
    """ModernBertModel keys as they are; ModernBertForMaskedLM's under `model.`; no heads."""
    if key.startswith(("head.", "decoder.", "classifier.", "drop.")):
        return None
    return strip_prefix(key, ("model.",))
