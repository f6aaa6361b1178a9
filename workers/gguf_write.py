"""Write the MLX model directory of a GGUF file: weights in shards, config, tokenizer files.

The heavy half of workers/gguf.py (MLX, numpy, transformers' tokenizer mapping), called once
the file has been checked. Tensors are read from a memory map one at a time, converted
(workers/gguf_tensors.py) with the architecture's fixes (workers/gguf_arch.py: Q/K rows,
norm offsets), and written in safetensors shards of about `shard_bytes`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from ollmlx.gguf_meta import GGUFHeader, TensorInfo, read_header

from . import gguf_arch, gguf_tensors, gguf_tokenizer
from .gguf_arch import ARCHS, Unsupported
from .gguf_tensors import GROUP_SIZE, Quantized

Progress = Callable[[int, int], None]


def _model_dtype(tensors: list[TensorInfo]) -> str:
    """float32 for an all-F32 file, bfloat16 for a BF16 one, else float16.

    Quantized files get float16: their scales are f16 in the file, and MLX promotes mixed
    dtypes to float32, so one dtype everywhere keeps every layer at half precision.
    """
    kinds = {t.type_name for t in tensors if len(t.shape) == 2}
    if kinds <= {"F32", "F64"}:
        return "float32"
    if kinds <= {"F32", "F64", "BF16"}:
        return "bfloat16"
    return "float16"


class _Shards:
    """Collects converted arrays and writes them as safetensors shards of ~SHARD_BYTES."""

    def __init__(self, out: Path, shard_bytes: int) -> None:
        self.out = out
        self.shard_bytes = shard_bytes
        self.pending: dict[str, Any] = {}
        self.pending_bytes = 0
        self.shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, array: Any) -> None:
        if self.pending and self.pending_bytes + array.nbytes > self.shard_bytes:
            self.flush()
        self.pending[name] = array
        self.pending_bytes += array.nbytes
        self.total_bytes += array.nbytes

    def flush(self) -> None:
        if not self.pending:
            return
        path = self.out / f"shard-{len(self.shards):05d}.safetensors"
        mx.save_safetensors(str(path), self.pending, metadata={"format": "mlx"})
        self.shards.append((path, sorted(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def finish(self, total_parameters: int) -> None:
        self.flush()
        n = len(self.shards)
        weight_map = {}
        for i, (path, names) in enumerate(self.shards, start=1):
            final = "model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"
            path.rename(self.out / final)
            weight_map.update(dict.fromkeys(names, final))
        index = {
            "metadata": {"total_size": self.total_bytes, "total_parameters": total_parameters},
            "weight_map": dict(sorted(weight_map.items())),
        }
        _write_json(self.out / "model.safetensors.index.json", index)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _raw_rows(mm: Any, header: GGUFHeader, t: TensorInfo) -> Any:
    """The tensor's bytes as (rows, row_bytes) from the memory-mapped file (no copy)."""
    start = header.data_offset + t.offset
    rows = t.n_elements // t.shape[0]
    return mm[start : start + t.n_bytes].reshape(rows, t.n_bytes // rows)


def _convert_tensor(
    mm: Any, header: GGUFHeader, arch: gguf_arch.Arch, t: TensorInfo, dtype: Any
) -> Any:
    """One tensor -> an MLX array or a Quantized triplet, with the architecture's fixes."""
    raw = _raw_rows(mm, header, t)
    shape = tuple(reversed(t.shape))  # ggml lists the row length first
    if arch.norm_shift and t.name.endswith("norm.weight"):
        # Shift in float32, then cast: w + 1 is stored, mlx-lm's Gemma RMSNorm wants w.
        values = gguf_tensors.to_float(raw, t.type_name, mx.float32).reshape(shape)
        out: Any = (values - arch.norm_shift).astype(dtype)
    else:
        # MLX quantizes along rows in groups of 32: other row lengths stay float.
        quantize = len(shape) == 2 and shape[1] % gguf_tensors.GROUP_SIZE == 0
        out = gguf_tensors.convert_matrix(raw, t.type_name, dtype, quantize)
        if isinstance(out, mx.array):
            out = out.reshape(shape)
    part = gguf_arch.block_part(t.name)
    if arch.permute_qk and part in ("attn_q", "attn_k"):
        key = "attention.head_count" if part == "attn_q" else "attention.head_count_kv"
        heads = header.arch_value(key) or header.arch_value("attention.head_count")
        out = _unpermute(out, int(heads))
    if isinstance(out, mx.array) and not mx.all(mx.isfinite(out)).item():
        raise ValueError(f"tensor {t.name} has values that do not fit {dtype}")
    return out


def _unpermute(out: Any, heads: int) -> Any:
    """Undo LlamaModel.permute on rows (weights, biases, or a quantized triplet's rows)."""

    def rows(a: mx.array) -> mx.array:
        n = a.shape[0]
        rest = tuple(a.shape[1:])
        # GGUF row (h, j, k) holds HF row (h, k, j): reshape (heads, n/heads/2, 2) and swap.
        return a.reshape((heads, n // heads // 2, 2, *rest)).swapaxes(1, 2).reshape((n, *rest))

    if isinstance(out, Quantized):
        return Quantized(rows(out.weight), rows(out.scales), rows(out.biases), out.bits)
    return rows(out)


def _read_floats(mm: Any, header: GGUFHeader) -> Callable[[str], list[float]]:
    """A reader of the small tensors that hold settings (rope factors) for the config."""

    def read(name: str) -> list[float]:
        t = header.tensor(name)
        if t is None:
            raise Unsupported(f"the GGUF file has no {name}")
        values = gguf_tensors.to_float(_raw_rows(mm, header, t), t.type_name, mx.float32)
        return [float(v) for v in np.array(values).reshape(-1)]

    return read


def _write_tokenizer(
    header: GGUFHeader, out: Path, chat_template: str | None, config: dict[str, Any]
) -> None:
    """tokenizer.json, tokenizer_config.json and generation_config.json (the stop ids)."""
    metadata = read_header(header.path).metadata  # with the vocabulary arrays this time
    tokenizer = gguf_tokenizer.build(header.architecture, metadata)
    tokenizer.save(str(out / "tokenizer.json"))
    context = config.get("max_position_embeddings", 0)
    _write_json(
        out / "tokenizer_config.json",
        gguf_tokenizer.tokenizer_config(metadata, chat_template, context),
    )
    if eos := gguf_tokenizer.eos_ids(metadata):
        generation: dict[str, Any] = {"eos_token_id": eos if len(eos) > 1 else eos[0]}
        if "bos_token_id" in config:
            generation["bos_token_id"] = config["bos_token_id"]
        _write_json(out / "generation_config.json", generation)


def _quantization(per_module: dict[str, Any]) -> dict[str, Any] | None:
    """config.json's quantization: the most common width as the default, and every Linear or
    Embedding named (mlx_lm.utils.load_model's class_predicate reads those entries first)."""
    bits = [spec["bits"] for spec in per_module.values() if spec]
    if not bits:
        return None
    default = max(set(bits), key=bits.count)
    quantization: dict[str, Any] = {"group_size": GROUP_SIZE, "bits": default, "mode": "affine"}
    quantization.update(sorted(per_module.items()))
    return quantization


def write_model(
    header: GGUFHeader,
    out: Path,
    chat_template: str | None,
    progress: Progress | None,
    shard_bytes: int,
) -> None:
    """Write the model directory into `out` (an empty directory)."""
    arch = ARCHS[header.architecture]
    mm = np.memmap(header.path, dtype=np.uint8, mode="r")
    config = arch.config(header, _read_floats(mm, header))
    config["torch_dtype"] = dtype_name = _model_dtype(header.tensors)
    dtype = getattr(mx, dtype_name)
    # The tokenizer first: a file whose vocabulary cannot be rebuilt fails before the weights.
    _write_tokenizer(header, out, chat_template, config)

    todo = [(t, name) for t in header.tensors if (name := gguf_arch.hf_name(arch, t.name))]
    shards = _Shards(out, shard_bytes)
    per_module: dict[str, Any] = {}
    for done, (t, name) in enumerate(todo, start=1):
        converted = _convert_tensor(mm, header, arch, t, dtype)
        module = name.removesuffix(".weight")
        if isinstance(converted, Quantized):
            shards.add(name, converted.weight)
            shards.add(f"{module}.scales", converted.scales)
            shards.add(f"{module}.biases", converted.biases)
            per_module[module] = {
                "group_size": GROUP_SIZE,
                "bits": converted.bits,
                "mode": "affine",
            }
        else:
            shards.add(name, converted)
            if len(t.shape) == 2 and name.endswith(".weight"):
                per_module[module] = False  # a float Linear/Embedding in a quantized model
        if progress is not None:
            progress(done, len(todo))
    shards.finish(sum(t.n_elements for t, _ in todo))

    if (quantization := _quantization(per_module)) is not None:
        config["quantization"] = config["quantization_config"] = quantization
    _write_json(out / "config.json", config)
