"""Writing a job's result: an mlx-lm adapter folder or a whole (fused) model folder.

Everything is written into a temporary sibling of the output folder, renamed into place at
the end: the output either appears whole or not at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from ollmlx.finetune_plan import Plan

ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def staging_dir(output: Path) -> Path:
    return output.with_name(f".{output.name}.partial-{os.getpid()}")


@contextlib.contextmanager
def staged(output: Path) -> Iterator[Path]:
    """A fresh temporary folder next to `output`, renamed to it if the block succeeds."""
    if output.exists():
        raise FileExistsError(f"output {output} already exists")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(output)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        os.rename(tmp, output)  # atomic on one filesystem; fails if output appeared
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def adapter_config(plan: Plan) -> dict[str, Any]:
    """adapter_config.json as mlx-lm's `load_adapters` reads it, plus how it was trained."""
    return {
        "fine_tune_type": plan.method,
        "num_layers": plan.num_layers,
        "lora_parameters": plan.lora_parameters(),
        "iters": plan.iters,
        "batch_size": plan.batch_size,
        "learning_rate": plan.learning_rate,
        "max_seq_length": plan.max_seq_length,
        "mask_prompt": plan.mask_prompt,
        "seed": plan.seed,
    }


def write_adapter(folder: Path, model: nn.Module, plan: Plan) -> dict[str, Any]:
    mx.save_safetensors(
        str(folder / ADAPTER_WEIGHTS), dict(tree_flatten(model.trainable_parameters()))
    )
    config = adapter_config(plan)
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=4) + "\n")
    return config


def fuse_adapters(model: nn.Module, dequantize: bool = False) -> None:
    """Fold every LoRA/DoRA layer into its base layer (mlx-lm's `fuse.py`)."""
    fused = [
        (n, m.fuse(dequantize=dequantize)) for n, m in model.named_modules() if hasattr(m, "fuse")
    ]
    if fused:
        model.update_modules(tree_unflatten(fused))


def write_model(
    folder: Path,
    model: nn.Module,
    tokenizer: Any,
    config: dict[str, Any],
    base_dir: Path,
    quantize: int | None,
    group_size: int,
) -> dict[str, Any]:
    """A complete model folder (config, weights, tokenizer) that `mlx_lm.load` reads."""
    from mlx_lm.utils import dequantize_model, quantize_model, save

    config = dict(config)
    quantized = bool(config.get("quantization") or config.get("quantization_config"))
    fuse_adapters(model, dequantize=quantize is not None and quantized)
    if quantize is not None:
        if quantized:
            model = dequantize_model(model)
            config.pop("quantization", None)
            config.pop("quantization_config", None)
        model, config = quantize_model(model, config, group_size, quantize)
    save(folder, base_dir, model, tokenizer, config, donate_model=False)
    return config
