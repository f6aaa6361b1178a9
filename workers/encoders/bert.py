"""A BERT-family encoder (bert, roberta, xlm-roberta) written directly in MLX.

Only what sentence embeddings need: token + position + type embeddings, post-LayerNorm
encoder layers with a padding mask, and the final hidden states. Pooling lives in
`workers/embedding.py`. Weight names follow Hugging Face's, so a checkpoint loads as it
is. Call everything here from the engine thread only (Metal streams are thread-local).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from .common import activation, strip_prefix

_PREFIXES = ("bert.", "roberta.", "model.")


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    position_offset: int = 0

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> BertConfig:
        model_type = str(config.get("model_type", "bert"))
        # RoBERTa-style models number positions from pad_token_id + 1 (Hugging Face's
        # create_position_ids_from_input_ids).
        offset = 0
        if model_type != "bert":
            offset = int(config.get("pad_token_id", 1) or 0) + 1
        return cls(
            vocab_size=int(config["vocab_size"]),
            hidden_size=int(config["hidden_size"]),
            num_hidden_layers=int(config["num_hidden_layers"]),
            num_attention_heads=int(config["num_attention_heads"]),
            intermediate_size=int(config["intermediate_size"]),
            max_position_embeddings=int(config.get("max_position_embeddings", 512)),
            type_vocab_size=int(config.get("type_vocab_size", 2) or 1),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
            hidden_act=str(config.get("hidden_act", "gelu")),
            position_offset=offset,
        )

    @property
    def max_tokens(self) -> int:
        """The longest input the position table can hold."""
        return self.max_position_embeddings - self.position_offset


class Embeddings(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.offset = config.position_offset
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, ids: mx.array) -> mx.array:
        positions = mx.arange(ids.shape[1]) + self.offset
        # One segment only: every token has type 0, as sentence-transformers sends.
        x = (
            self.word_embeddings(ids)
            + self.position_embeddings(positions)[None]
            + self.token_type_embeddings.weight[0]
        )
        return self.LayerNorm(x)


class Attention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.scale = 1.0 / math.sqrt(config.hidden_size // self.heads)
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        batch, length, hidden = x.shape

        def split(t: mx.array) -> mx.array:
            return t.reshape(batch, length, self.heads, -1).transpose(0, 2, 1, 3)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return out.transpose(0, 2, 1, 3).reshape(batch, length, hidden)


class DenseNorm(nn.Module):
    """Linear, then LayerNorm of (output + residual): BERT's post-LN sub-layer end."""

    def __init__(self, inputs: int, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(inputs, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        return self.LayerNorm(self.dense(x) + residual)


class AttentionBlock(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        # Hugging Face names this `self`; the loader renames it (see _rename).
        self.attn = Attention(config)
        self.output = DenseNorm(config.hidden_size, config)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        return self.output(self.attn(x, mask), x)


class Intermediate(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def __call__(self, x: mx.array) -> mx.array:
        return self.act(self.dense(x))


class Layer(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = AttentionBlock(config)
        self.intermediate = Intermediate(config)
        self.output = DenseNorm(config.intermediate_size, config)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = [Layer(config) for _ in range(config.num_hidden_layers)]


class BertModel(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.max_tokens = config.max_tokens
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)

    def __call__(self, ids: mx.array, attention_mask: mx.array) -> mx.array:
        """Final hidden states (batch, length, hidden); `attention_mask` is 1 for tokens."""
        # (batch, 1, 1, length): padded keys get no attention from any query.
        mask = (attention_mask > 0)[:, None, None, :]
        x = self.embeddings(ids)
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x


def build(config: dict[str, Any]) -> BertModel:
    return BertModel(BertConfig.from_dict(config))


def rename(key: str) -> str | None:
    """A checkpoint key as our module tree names it; None for what we do not use."""
    key = strip_prefix(key, _PREFIXES)
    if key.startswith(("pooler.", "cls.", "lm_head.")) or key.endswith("position_ids"):
        return None  # classification heads and HF buffers
    return key.replace(".attention.self.", ".attention.attn.")
