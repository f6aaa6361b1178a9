"""Ollama's quantized tensor blobs, read from their safetensors headers (no MLX needed).

Ollama's MLX engine stores a quantized weight `W` as `W` (packed uint32), `W.scale` and, for
the affine kinds, `W.bias`; the kind is the blob's `__metadata__` `quant_type`/`group_size`,
or `<W>.quant_type`/`<W>.group_size` per tensor, or inferred from the shapes
(x/mlxrunner/model/root.go readBlobTensorQuantInfo, inferQuantTypeFromShapes). The kinds and
their defaults are x/quant/quant.go's. mlx-lm names the same arrays `<module>.scales` and
`<module>.biases` and reads the kind from config.json's `quantization`: this module builds
that entry, and refuses a kind MLX cannot run (a 400 naming it) before any worker starts.
The key renaming itself happens where the tensors load (workers/ollama_tensors.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import StatusError
from .files import safetensors_header

# x/quant/quant.go byType: group size, bits, MLX mode.
KINDS: dict[str, tuple[int, int, str]] = {
    "nvfp4": (16, 4, "nvfp4"),
    "mxfp4": (32, 4, "mxfp4"),
    "int4": (64, 4, "affine"),
    "mxfp8": (32, 8, "mxfp8"),
    "int8": (64, 8, "affine"),
}
# x/quant/quant.go Canonical: the aliases Ollama accepts.
_ALIASES = {"fp4": "int4", "q4": "int4", "fp8": "int8", "q8": "int8"}


def canonical(quant_type: str) -> str | None:
    name = quant_type.strip().lower()
    name = _ALIASES.get(name, name)
    return name if name in KINDS else None


def _common_group(size: int) -> bool:
    return size in (16, 32, 64, 128)


def _infer(weight_cols: int, scale_cols: int, hint: str) -> tuple[str, int] | None:
    """inferQuantTypeFromShapes: the kind from the packed weight and scale widths."""
    if weight_cols <= 0 or scale_cols <= 0:
        return None
    group4, group8 = weight_cols * 8 // scale_cols, weight_cols * 4 // scale_cols
    if group4 == 32:
        return "int4", 32
    if group8 == 64:
        return "int8", 64
    if group4 == 64 and group8 == 32:
        if "8" in hint:
            return "int8", 32
        if "4" in hint:
            return "int4", 64
    if _common_group(group4) and not _common_group(group8):
        return "int4", group4
    if _common_group(group8) and not _common_group(group4):
        return "int8", group8
    return None


def _last_dim(info: Any) -> int:
    shape = info.get("shape") if isinstance(info, dict) else None
    return int(shape[-1]) if isinstance(shape, list) and shape else 0


def module_of(tensor: str) -> str:
    """mlx-lm's module path of a weight: `...q_proj.weight` -> `...q_proj`."""
    return tensor.removesuffix(".weight")


def blob_quantization(path: Path) -> dict[str, dict[str, Any]]:
    """{module: {group_size, bits, mode}} for each quantized weight of one tensor blob."""
    header = safetensors_header(path)
    raw_meta = header.get("__metadata__")
    meta = raw_meta if isinstance(raw_meta, dict) else {}
    blob_kind = str(meta.get("quant_type", "") or "")
    blob_group = str(meta.get("group_size", "") or "")
    found: dict[str, dict[str, Any]] = {}
    for name, info in header.items():
        if name == "__metadata__" or name.endswith((".scale", ".bias")):
            continue
        if f"{name}.scale" not in header:
            continue  # not quantized (or not in Ollama's naming)
        kind = str(meta.get(f"{name}.quant_type", "") or blob_kind)
        group_text = str(meta.get(f"{name}.group_size", "") or blob_group)
        canon = canonical(kind) if kind else None
        if kind and canon is None:
            raise StatusError(
                f"unsupported quantization type {kind!r} (tensor {name}): MLX runs "
                f"{', '.join(KINDS)}",
                400,
            )
        group = int(group_text) if group_text.isdigit() else 0
        if canon is None or (group == 0 and KINDS[canon][2] == "affine"):
            inferred = _infer(_last_dim(info), _last_dim(header[f"{name}.scale"]), kind)
            if inferred is None and canon is None:
                raise StatusError(f"cannot tell how tensor {name} is quantized", 400)
            if inferred is not None:
                canon = canon or inferred[0]
                group = group or inferred[1]
        assert canon is not None
        default_group, bits, mode = KINDS[canon]
        found[module_of(name)] = {"group_size": group or default_group, "bits": bits, "mode": mode}
    return found


def quantization_config(blobs: Iterable[Path]) -> dict[str, Any] | None:
    """config.json's `quantization` for a model of Ollama tensor blobs; None if unquantized.

    The most common kind is the default; every quantized module is named too, as mlx-lm's
    class_predicate reads per-module entries first (mlx_lm.utils.load_model)."""
    per_module: dict[str, dict[str, Any]] = {}
    for path in blobs:
        per_module.update(blob_quantization(path))
    if not per_module:
        return None
    kinds = Counter(tuple(sorted(spec.items())) for spec in per_module.values())
    default = dict(kinds.most_common(1)[0][0])
    return {**default, **dict(sorted(per_module.items()))}


def uses_ollama_names(path: Path) -> bool:
    """Whether a tensor blob keeps a quantized weight's companions as `W.scale`/`W.bias`."""
    header = safetensors_header(path)
    return any(n.endswith(".scale") and n.removesuffix(".scale") in header for n in header)
