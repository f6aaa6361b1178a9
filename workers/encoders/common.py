"""What the encoder architectures share: activations and loading Hugging Face weights."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn


def activation(name: str) -> Callable[[mx.array], mx.array]:
    """Hugging Face's ACT2FN names; plain "gelu" is the exact (erf) form."""
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return nn.gelu_approx
    if name == "relu":
        return nn.relu
    if name in ("silu", "swish"):
        return nn.silu
    return nn.gelu


def load_weights(model: nn.Module, model_dir: Path, rename: Callable[[str], str | None]) -> None:
    """Load every safetensors file of `model_dir` into `model`, keys mapped by `rename`.

    Keys the model does not have (heads, buffers) are skipped; a missing one is an error
    here rather than random output later. Weights are evaluated, so I/O errors show now.
    """
    from mlx.utils import tree_flatten

    expected: dict[str, Any] = dict(tree_flatten(model.parameters()))
    weights: dict[str, mx.array] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        for key, value in mx.load(str(path)).items():  # type: ignore[union-attr]
            name = rename(key)
            if name is not None and name in expected:
                weights[name] = value
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise ValueError(f"{model_dir} lacks encoder weights: {', '.join(missing[:5])}")
    model.load_weights(list(weights.items()))
    model.eval()
    mx.eval(model.parameters())


def strip_prefix(key: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key
