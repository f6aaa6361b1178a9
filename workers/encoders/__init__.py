"""Encoder models for /api/embed, written directly in MLX, one module per architecture.

Which model types exist is decided once, in `ollmlx.architectures.ENCODER_TYPES` (the
supervisor reads it without MLX to accept pulls and report `embedding`); this package
maps each of those types to the module that builds it. Engine thread only.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import mlx.nn as nn

from ollmlx.architectures import ENCODER_TYPES, encoder_problem

from . import bert, modernbert, nomic_bert
from .common import load_weights

# Each module has `build(config) -> nn.Module` (called as model(ids, mask) -> hidden
# states, with a `max_tokens` attribute) and `rename(key) -> str | None`.
ARCHITECTURES: dict[str, ModuleType] = {
    "bert": bert,
    "roberta": bert,
    "xlm-roberta": bert,
    "xlm_roberta": bert,
    "nomic_bert": nomic_bert,
    "modernbert": modernbert,
}
if set(ARCHITECTURES) != ENCODER_TYPES:  # the two lists must not drift apart
    raise RuntimeError(f"encoder modules {sorted(ARCHITECTURES)} != {sorted(ENCODER_TYPES)}")


def load_encoder(model_dir: Path, config: dict[str, Any]) -> nn.Module:
    """The encoder for `config.json`, its weights loaded from `model_dir`."""
    model_type = str(config.get("model_type") or "")
    if model_type not in ARCHITECTURES:
        raise ValueError(f"{model_type!r} is not an encoder ollmlx can run")
    problem = encoder_problem(config)
    if problem:
        raise ValueError(problem)
    module = ARCHITECTURES[model_type]
    model: nn.Module = module.build(config)
    load_weights(model, model_dir, module.rename)
    return model
