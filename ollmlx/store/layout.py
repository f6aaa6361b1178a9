"""The folders mlx-lm loads, made of links into `blobs/`: no weight is ever copied.

A safetensors manifest's `tensor`, `json` and file layers become a directory of symbolic
links under `<store>/ollmlx/models/<key>/`, named as mlx-lm expects (`config.json`,
`model*.safetensors`, the tokenizer files), where the key is a digest of the links. Two
manifests with the same files (a copy, a new SYSTEM) share one folder. Built once, in a
temporary folder renamed into place; a folder no manifest maps to is removed by the
store's garbage collection.

Ollama names its tensor layers by tensor (`model.layers.0.mlp.up_proj.weight`, or a group
prefix for stacked experts); ollmlx names each whole safetensors file by its path. Both
load: Ollama's runner reads every tensor layer and keys tensors by their names inside
(x/mlxrunner/runner.go loadTensorsFromManifest). When Ollama's quantized names appear,
config.json is written (the blob's, plus mlx-lm's `quantization`) instead of linked, and a
marker tells the worker to rename the keys (workers/ollama_tensors.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .files import read_json
from .manifest import ADAPTER, FILE, JSON, TENSOR, Layer
from .tensorquant import quantization_config, uses_ollama_names

# The marker a worker looks for (workers/ollama_tensors.py reads the same name).
OLLAMA_TENSORS_MARKER = "ollmlx-ollama-tensors.json"
_VERSION = "1"  # bump when what a folder holds changes: old folders are rebuilt


def safe_relpath(name: str) -> str | None:
    """`name` as a relative path inside a folder, or None if it could leave it."""
    if not name or "\\" in name or name.startswith("/"):
        return None
    parts = PurePosixPath(name).parts
    if not parts or any(p in ("", ".", "..") for p in parts):
        return None
    return "/".join(parts)


@dataclass
class Plan:
    """What one model folder holds: link name -> blob path, and generated small files."""

    links: dict[str, Path] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    problem: str = ""  # why the folder cannot be made (a tensor kind MLX cannot run)

    def key(self) -> str:
        digest = hashlib.sha256(f"v{_VERSION}\n".encode())
        for name in sorted(self.links):
            digest.update(f"L {name} {self.links[name].name}\n".encode())
        for name in sorted(self.files):
            digest.update(f"F {name} {hashlib.sha256(self.files[name]).hexdigest()}\n".encode())
        return digest.hexdigest()


def _is_draft(name: str) -> bool:
    # Ollama keeps a speculative-decoding draft beside the model under `draft/` names.
    return name.startswith(("draft/", "draft."))


def model_plan(layers: list[Layer], blob_path: Any) -> Plan:
    """The links of a safetensors model (tensor, json and file layers)."""
    plan = Plan()
    ollama_tensors: list[Path] = []
    for layer in layers:
        if layer.mediaType not in (TENSOR, JSON, FILE) or _is_draft(layer.name):
            continue
        path: Path = blob_path(layer.digest)
        rel = safe_relpath(layer.name)
        if layer.mediaType == TENSOR and (rel is None or not rel.endswith(".safetensors")):
            # One of Ollama's per-tensor blobs: any name mlx-lm's `model*.safetensors` finds.
            plan.links[f"model-ollama-{len(ollama_tensors) + 1:05d}.safetensors"] = path
            ollama_tensors.append(path)
        elif rel is not None:
            plan.links[rel] = path
    renamed = [p for p in ollama_tensors if p.is_file() and uses_ollama_names(p)]
    if renamed and "config.json" in plan.links:
        config = read_json(plan.links.pop("config.json"))
        if (quantization := quantization_config(renamed)) is not None:
            config["quantization"] = quantization
        plan.files["config.json"] = json.dumps(config, indent=2).encode()
        plan.files[OLLAMA_TENSORS_MARKER] = b'{"names": "ollama"}\n'
    return plan


def draft_plan(layers: list[Layer], blob_path: Any) -> Plan | None:
    """A speculative-decoding draft's folder: the model's files Ollama keeps under
    `draft/` names (ollmlx writes them so too), linked as mlx-lm expects them."""
    plan = Plan()
    for layer in layers:
        if layer.mediaType not in (TENSOR, JSON, FILE) or not layer.name.startswith("draft/"):
            continue
        rel = safe_relpath(layer.name)
        if rel is not None:
            plan.links[rel.removeprefix("draft/")] = blob_path(layer.digest)
    return plan if "config.json" in plan.links else None


def adapter_plan(layers: list[Layer], blob_path: Any) -> Plan | None:
    """An mlx-lm adapter folder from the `adapter` layers ollmlx writes (named by file)."""
    plan = Plan()
    for layer in layers:
        if layer.mediaType != ADAPTER:
            continue
        rel = safe_relpath(layer.name)
        if rel is None:
            return None  # a GGUF LoRA (Ollama's unnamed adapter layer): not ours to load
        plan.links[rel.removeprefix("adapter/")] = blob_path(layer.digest)
    return plan if plan.links else None


def build(folder: Path, plan: Plan) -> Path:
    """`<folder>/<key>`, made from `plan` unless it is there already (atomically)."""
    target = folder / plan.key()
    if target.is_dir():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
    try:
        for name, blob in plan.links.items():
            link = tmp / name
            link.parent.mkdir(parents=True, exist_ok=True)
            # Relative: the store can move (or be mounted elsewhere) as a whole.
            link.symlink_to(os.path.relpath(blob, link.parent))
        for name, data in plan.files.items():
            (tmp / name).write_bytes(data)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # another server built the same folder first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def remove_unused(folder: Path, keep: set[str]) -> None:
    """Folders no manifest maps to any more, and leftovers of builds that crashed (a build
    in progress elsewhere is younger than an hour and stays)."""
    if not folder.is_dir():
        return
    stale = time.time() - 3600
    for entry in folder.iterdir():
        if entry.name.startswith(".tmp-"):
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < stale:
                    shutil.rmtree(entry, ignore_errors=True)
        elif entry.name not in keep:
            shutil.rmtree(entry, ignore_errors=True)
