"""A target and a draft model that agree often, for speculative decoding (no download).

The target is a random tiny llama whose layers past the first `draft_layers` are made
near-identity (their attention and MLP outputs scaled by `damping`, so they only nudge
the residual stream); the draft is the target's first `draft_layers` layers with the same
embeddings, final norm and head. Greedy tokens of the two then agree most of the time,
and less the larger `damping` is: the acceptance rate is a dial.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.tinymodel import build_tiny_model

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def build_draft_pair(
    target_dir: Path,
    draft_dir: Path,
    *,
    draft_layers: int = 1,
    damping: float = 0.05,
    **shape: int,
) -> tuple[Path, Path]:
    """Write the target (built by build_tiny_model with `shape`) and its draft."""
    import mlx.core as mx

    build_tiny_model(target_dir, **shape)
    weights_path = target_dir / "model.safetensors"
    weights = mx.load(str(weights_path))
    for name in list(weights):
        parts = name.split(".")
        if parts[:2] == ["model", "layers"] and int(parts[2]) >= draft_layers:
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                weights[name] = weights[name] * damping
    mx.save_safetensors(str(weights_path), weights, metadata={"format": "mlx"})

    draft_dir.mkdir(parents=True, exist_ok=True)
    kept = {
        name: value
        for name, value in weights.items()
        if not name.startswith("model.layers.") or int(name.split(".")[2]) < draft_layers
    }
    mx.save_safetensors(str(draft_dir / "model.safetensors"), kept, metadata={"format": "mlx"})
    config = json.loads((target_dir / "config.json").read_text())
    config["num_hidden_layers"] = draft_layers
    (draft_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in TOKENIZER_FILES:
        shutil.copy2(target_dir / name, draft_dir / name)
    return target_dir, draft_dir
