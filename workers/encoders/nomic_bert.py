"""nomic-bert (nomic-embed-text v1 / v1.5) in MLX.

A BERT with rotary position embeddings (no position table), one fused Wqkv projection,
a gated MLP (SwiGLU for nomic-embed-text: fc11(x) * silu(fc12(x))), post-LayerNorm
blocks and a LayerNorm (`emb_ln`) after the embeddings. Config keys are GPT-2 style
(`n_embd`, `n_head`, `n_layer`, `n_inner`). Variants we do not implement (prenorm,
interleaved rotary...) are refused by `ollmlx.architectures.encoder_problem`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from .common import activation, strip_prefix

# activation_function -> the gate's activation (fc11(x) * act(fc12(x))).
_GATED: dict[str, Callable[[mx.array], mx.array]] = {
    "swiglu": nn.silu,
    "geglu": nn.gelu,
    "glu": mx.sigmoid,
}


@dataclass(frozen=True)
class NomicConfig:
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    inner: int
    rotary_dims: int
    rotary_base: float
    eps: float
    activation: str
    qkv_bias: bool
    fc1_bias: bool
    fc2_bias: bool
    type_vocab_size: int
    max_tokens: int

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> NomicConfig:
        hidden = int(config["n_embd"])
        heads = int(config["n_head"])
        act = str(config.get("activation_function", "swiglu"))
        inner = config.get("n_inner")
        if act in _GATED:
            # The gated MLP defaults to 8/3 of the width and rounds up to a multiple of 256.
            width = int(inner) if inner else int(8 * hidden / 3)
            width = (width + 255) // 256 * 256
        else:
            width = int(inner) if inner else 4 * hidden
        vocab = int(config["vocab_size"])
        multiple = int(config.get("pad_vocab_size_multiple", 1) or 1)
        vocab += -vocab % multiple  # the model pads its vocabulary, so do its weights
        fraction = float(config.get("rotary_emb_fraction", 0.0) or 0.0)
        positions = int(config.get("n_positions", 0) or 0) or 2048
        # Trained at max_trained_positions (2048 for nomic-embed-text); past it the model
        # needs rotary scaling, which we do not do, so that is the limit (as Ollama's).
        trained = int(config.get("max_trained_positions", 0) or 0)
        return cls(
            vocab_size=vocab,
            hidden=hidden,
            layers=int(config["n_layer"]),
            heads=heads,
            inner=width,
            rotary_dims=int(hidden // heads * fraction),
            rotary_base=float(config.get("rotary_emb_base", 10000.0) or 10000.0),
            eps=float(config.get("layer_norm_epsilon", 1e-12)),
            activation=act,
            qkv_bias=bool(config.get("qkv_proj_bias", True)),
            fc1_bias=bool(config.get("mlp_fc1_bias", True)),
            fc2_bias=bool(config.get("mlp_fc2_bias", True)),
            type_vocab_size=int(config.get("type_vocab_size", 2) or 0),
            max_tokens=min(positions, trained) if trained else positions,
        )


class Embeddings(nn.Module):
    def __init__(self, config: NomicConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden)
        if config.type_vocab_size > 0:
            self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden)

    def __call__(self, ids: mx.array) -> mx.array:
        x = self.word_embeddings(ids)
        if "token_type_embeddings" in self:
            x = x + self.token_type_embeddings.weight[0]  # one segment: every type is 0
        return x


class Attention(nn.Module):
    def __init__(self, config: NomicConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.rotary_dims = config.rotary_dims
        self.base = config.rotary_base
        self.scale = 1.0 / math.sqrt(config.hidden // config.heads)
        self.Wqkv = nn.Linear(config.hidden, 3 * config.hidden, bias=config.qkv_bias)
        self.out_proj = nn.Linear(config.hidden, config.hidden, bias=config.qkv_bias)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        batch, length, hidden = x.shape
        # Wqkv's output is [q | k | v], each laid out head by head.
        qkv = self.Wqkv(x).reshape(batch, length, 3, self.heads, -1).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.rotary_dims > 0:
            # GPT-NeoX style (rotate halves, not interleaved pairs) on the first
            # rotary_dims of each head; positions start at 0 for every (right-padded) row.
            q = mx.fast.rope(
                q, self.rotary_dims, traditional=False, base=self.base, scale=1.0, offset=0
            )
            k = mx.fast.rope(
                k, self.rotary_dims, traditional=False, base=self.base, scale=1.0, offset=0
            )
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(batch, length, hidden))


class GatedMLP(nn.Module):
    def __init__(self, config: NomicConfig) -> None:
        super().__init__()
        self.fc11 = nn.Linear(config.hidden, config.inner, bias=config.fc1_bias)
        self.fc12 = nn.Linear(config.hidden, config.inner, bias=config.fc1_bias)
        self.fc2 = nn.Linear(config.inner, config.hidden, bias=config.fc2_bias)
        self.act: Callable[[mx.array], mx.array] = _GATED[config.activation]

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(self.fc11(x) * self.act(self.fc12(x)))  # fc12 is the gate


class MLP(nn.Module):
    def __init__(self, config: NomicConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden, config.inner, bias=config.fc1_bias)
        self.fc2 = nn.Linear(config.inner, config.hidden, bias=config.fc2_bias)
        self.act = activation(config.activation)

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, config: NomicConfig) -> None:
        super().__init__()
        self.attn = Attention(config)
        self.mlp = GatedMLP(config) if config.activation in _GATED else MLP(config)
        self.norm1 = nn.LayerNorm(config.hidden, eps=config.eps)
        self.norm2 = nn.LayerNorm(config.hidden, eps=config.eps)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        x = self.norm1(self.attn(x, mask) + x)  # post-norm, as BERT
        return self.norm2(self.mlp(x) + x)


class Encoder(nn.Module):
    def __init__(self, config: NomicConfig) -> None:
        super().__init__()
        self.layers = [Block(config) for _ in range(config.layers)]


class NomicBertModel(nn.Module):
    def __init__(self, config: NomicConfig) -> None:
        super().__init__()
        self.max_tokens = config.max_tokens
        self.embeddings = Embeddings(config)
        self.emb_ln = nn.LayerNorm(config.hidden, eps=config.eps)
        self.encoder = Encoder(config)

    def __call__(self, ids: mx.array, attention_mask: mx.array) -> mx.array:
        """Final hidden states (batch, length, hidden); `attention_mask` is 1 for tokens."""
        mask = (attention_mask > 0)[:, None, None, :]  # padded keys are never attended
        x = self.emb_ln(self.embeddings(ids))
        for layer in self.encoder.layers:
            x = layer(x, mask)
        return x


def build(config: dict[str, Any]) -> NomicBertModel:
    return NomicBertModel(NomicConfig.from_dict(config))


def rename(key: str) -> str | None:
    """HF checkpoints name the model's own tree (older ones under `bert.`); heads go."""
    key = strip_prefix(key, ("bert.", "model."))
    if key.startswith(("cls.", "pooler.", "lm_head.")) or key.endswith(
        ("position_ids", "inv_freq")
    ):
        return None
    return key
