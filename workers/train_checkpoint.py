"""Checkpoints in the job folder, written so that a crash never leaves a half one.

A checkpoint at iteration N is three files:
    NNNNNNN_adapters.safetensors  the trainable weights (mlx-lm's checkpoint name and layout)
    NNNNNNN_state.safetensors     the optimizer state (Adam's m and v, step, learning rate)
    checkpoint.json               {"iteration": N, "adapters": ..., "state": ..., "plan": ...}
Each weights file is written under a temporary name and renamed; checkpoint.json is replaced
last, so it always names a complete pair. Only the newest checkpoint is kept.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map_with_path

from ollmlx.finetune_plan import JobError, Plan

POINTER = "checkpoint.json"
TEMP_PREFIX = ".tmp-"
# What must match for a checkpoint's weights and optimizer state to fit the model again.
SHAPE_KEYS = ("method", "num_layers", "rank", "scale")


@dataclass(frozen=True)
class Checkpoint:
    iteration: int
    adapters: Path
    state: Path
    plan: dict[str, Any]


def _save(path: Path, arrays: dict[str, mx.array]) -> None:
    tmp = path.with_name(TEMP_PREFIX + path.name)
    mx.save_safetensors(str(tmp), arrays)
    os.replace(tmp, path)


def save(
    job_dir: Path, iteration: int, model: nn.Module, optimizer: optim.Optimizer, plan: Plan
) -> Path:
    adapters = job_dir / f"{iteration:07d}_adapters.safetensors"
    state = job_dir / f"{iteration:07d}_state.safetensors"
    _save(adapters, dict(tree_flatten(model.trainable_parameters())))
    _save(state, dict(tree_flatten(optimizer.state)))
    pointer = {
        "iteration": iteration,
        "adapters": adapters.name,
        "state": state.name,
        "plan": plan.as_dict(),
    }
    tmp = job_dir / (TEMP_PREFIX + POINTER)
    tmp.write_text(json.dumps(pointer, indent=2) + "\n")
    os.replace(tmp, job_dir / POINTER)
    for old in job_dir.glob("[0-9]" * 7 + "_*.safetensors"):
        if old.name not in (adapters.name, state.name):
            old.unlink(missing_ok=True)
    return adapters


def clean(job_dir: Path, keep_checkpoints: bool) -> None:
    """Remove temporary files a killed run left; and old checkpoints for a fresh start."""
    for tmp in job_dir.glob(TEMP_PREFIX + "*"):
        tmp.unlink(missing_ok=True)
    if not keep_checkpoints:
        (job_dir / POINTER).unlink(missing_ok=True)
        for old in job_dir.glob("[0-9]" * 7 + "_*.safetensors"):
            old.unlink(missing_ok=True)


def latest(job_dir: Path) -> Checkpoint | None:
    try:
        pointer = json.loads((job_dir / POINTER).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"unreadable {POINTER} in {job_dir}: {exc}") from exc
    ckpt = Checkpoint(
        int(pointer["iteration"]),
        job_dir / pointer["adapters"],
        job_dir / pointer["state"],
        dict(pointer.get("plan") or {}),
    )
    for path in (ckpt.adapters, ckpt.state):
        if not path.is_file():
            raise RuntimeError(f"checkpoint {ckpt.iteration} is missing {path.name}")
    return ckpt


def check_fits(ckpt: Checkpoint, plan: Plan) -> None:
    """A resumed job must train the same weights the checkpoint holds (a 400 if not)."""
    for key in SHAPE_KEYS:
        if key in ckpt.plan and ckpt.plan[key] != getattr(plan, key):
            raise JobError(
                f"cannot resume: the checkpoint was trained with {key} {ckpt.plan[key]},"
                f" this job asks for {getattr(plan, key)}"
            )
    if ckpt.iteration > plan.iters:
        raise JobError(
            f"cannot resume: the checkpoint is at iteration {ckpt.iteration}, past iters"
            f" {plan.iters}"
        )


def restore(
    ckpt: Checkpoint, model: nn.Module, optimizer: optim.Optimizer, learning_rate: float
) -> None:
    model.load_weights(str(ckpt.adapters), strict=False)
    saved: dict[str, mx.array] = mx.load(str(ckpt.state))  # type: ignore[assignment]
    # Build the state's tree from the model, then fill each leaf from the file by path.
    optimizer.init(model.trainable_parameters())
    paths: list[tuple[str, Any]] = tree_flatten(optimizer.state)  # type: ignore[assignment]
    missing = [path for path, _ in paths if path not in saved]
    if missing:
        raise RuntimeError(f"checkpoint {ckpt.iteration} lacks optimizer state {missing[0]}")
    optimizer.state = tree_map_with_path(lambda path, _: saved[path], optimizer.state)
    # The job's learning rate wins: resuming with another one is a fair request.
    optimizer.learning_rate = learning_rate
