"""Convert a GGUF model file (Ollama's `model` layer) into an MLX model directory.

    python -m ollmlx_worker.gguf SRC.gguf DST_DIR [--go-template FILE] [--check]

Like workers/convert.py, this runs in a child process of the supervisor: progress goes to
stdout as JSON lines (`{"status": "converting gguf", "completed": n, "total": m}`), the
reason for a failure to stderr as `error: ...`. Exit status 0 on success, 2 when the file
cannot be converted (unsupported architecture or tensor type, no chat template: a 400), 1
for anything else. `--check` only inspects: it prints the file's facts as one JSON line.

The output is what mlx-lm loads: config.json (model_type, per-module quantization),
model.safetensors (or shards and an index), tokenizer.json, tokenizer_config.json (with the
chat template) and generation_config.json. It is written into a temporary directory next to
DST_DIR and renamed at the end, so a failure leaves nothing at DST_DIR.

Importing this module is cheap: MLX, numpy and transformers load only when converting.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ollmlx.gguf_meta import GGUFError, GGUFHeader, TensorInfo, read_header
from ollmlx.templates import TemplateError, jinja_for_go_template

from . import gguf_arch
from .gguf_arch import ARCHS, Unsupported

Progress = Callable[[int, int], None]
# Metadata arrays longer than this (the vocabulary) are not read to inspect a file.
HEADER_ARRAY_LIMIT = 1024
# mlx-lm's own shard size (mlx_lm.utils MAX_FILE_SIZE_GB).
SHARD_BYTES = 5 << 30


class ConversionError(Exception):
    """The conversion failed; `unsupported` marks a file this converter refuses (a 400)."""

    def __init__(self, message: str, *, unsupported: bool = False) -> None:
        super().__init__(message)
        self.unsupported = unsupported


@dataclass(frozen=True)
class GGUFInfo:
    path: str
    architecture: str
    model_type: str | None  # mlx-lm model type when the architecture is converted
    parameter_count: int
    file_type: str  # Ollama's quantization level name: Q4_0, Q8_0, F16, Q4_K_M, ...
    context_length: int
    chat_template: str | None
    tensor_types: dict[str, int]
    embedding_length: int
    block_count: int
    has_vision: bool  # vision tensors in the file (not converted: text only)
    header: GGUFHeader = dataclasses.field(repr=False, compare=False)

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts (no header, no template text)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del out["header"]
        out["chat_template"] = self.chat_template is not None
        return out


def inspect(path: str | os.PathLike[str]) -> GGUFInfo:
    """The facts of a GGUF file, from its header (tokenizer arrays left unread)."""
    header = read_header(path, array_limit=HEADER_ARRAY_LIMIT)
    arch = ARCHS.get(header.architecture)

    def number(key: str) -> int:
        value = header.arch_value(key, 0)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return GGUFInfo(
        path=str(path),
        architecture=header.architecture,
        model_type=arch.model_type if arch else None,
        parameter_count=header.parameter_count,
        file_type=header.file_type,
        context_length=header.context_length,
        chat_template=header.chat_template,
        tensor_types=header.tensor_types,
        embedding_length=number("embedding_length"),
        block_count=number("block_count"),
        has_vision=any(t.name.startswith(("v.", "mm.")) for t in header.tensors),
        header=header,
    )


def check_supported(info: GGUFInfo) -> str | None:
    """Why the file cannot be converted (naming the architecture or tensor type), or None."""
    return gguf_arch.problem(info.header)


def resolve_chat_template(info: GGUFInfo, go_template: str | None) -> str | None:
    """The file's own Jinja template; else the Jinja equivalent of the Go template; else None.

    Raises ConversionError(unsupported) when a Go template is given but matches no family.
    """
    if info.chat_template:
        return info.chat_template
    if not go_template or not go_template.strip():
        return None
    from .gguf_tokenizer import add_bos

    try:
        match = jinja_for_go_template(go_template, bos=add_bos(info.header.metadata))
    except TemplateError as exc:
        raise ConversionError(str(exc), unsupported=True) from exc
    return match.jinja


# --- conversion ----------------------------------------------------------------------------


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


class _Writer:
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
        import mlx.core as mx

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
    import mlx.core as mx

    from . import gguf_tensors

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
        raise ConversionError(f"tensor {t.name} has values that do not fit {dtype}")
    return out


def _unpermute(out: Any, heads: int) -> Any:
    """Undo LlamaModel.permute on rows (weights, biases, or a quantized triplet's rows)."""
    import mlx.core as mx

    from .gguf_tensors import Quantized

    def rows(a: mx.array) -> mx.array:
        n = a.shape[0]
        rest = tuple(a.shape[1:])
        # GGUF row (h, j, k) holds HF row (h, k, j): reshape (heads, n/heads/2, 2) and swap.
        return a.reshape((heads, n // heads // 2, 2, *rest)).swapaxes(1, 2).reshape((n, *rest))

    if isinstance(out, Quantized):
        return Quantized(rows(out.weight), rows(out.scales), rows(out.biases), out.bits)
    return rows(out)


def _read_floats(mm: Any, header: GGUFHeader) -> Callable[[str], list[float]]:
    from . import gguf_tensors

    def read(name: str) -> list[float]:
        t = header.tensor(name)
        if t is None:
            raise Unsupported(f"the GGUF file has no {name}")
        import mlx.core as mx

        values = gguf_tensors.to_float(_raw_rows(mm, header, t), t.type_name, mx.float32)
        return [float(v) for v in values.reshape(-1).tolist()]

    return read


def _write_model(
    header: GGUFHeader,
    out: Path,
    chat_template: str | None,
    progress: Progress | None,
    shard_bytes: int,
) -> None:
    import mlx.core as mx
    import numpy as np

    from . import gguf_tokenizer
    from .gguf_tensors import GROUP_SIZE, Quantized

    arch = ARCHS[header.architecture]
    mm = np.memmap(header.path, dtype=np.uint8, mode="r")
    config = arch.config(header, _read_floats(mm, header))
    dtype_name = _model_dtype(header.tensors)
    dtype = getattr(mx, dtype_name)

    # The tokenizer first: a file whose vocabulary cannot be rebuilt fails before the weights.
    full = read_header(header.path)
    tokenizer = gguf_tokenizer.build(header.architecture, full.metadata)
    tokenizer.save(str(out / "tokenizer.json"))
    tok_config = gguf_tokenizer.tokenizer_config(
        full.metadata, chat_template, config.get("max_position_embeddings", 0)
    )
    _write_json(out / "tokenizer_config.json", tok_config)
    if eos := gguf_tokenizer.eos_ids(full.metadata):
        generation = {"eos_token_id": eos if len(eos) > 1 else eos[0]}
        if "bos_token_id" in config:
            generation["bos_token_id"] = config["bos_token_id"]
        _write_json(out / "generation_config.json", generation)

    todo = [(t, name) for t in header.tensors if (name := gguf_arch.hf_name(arch, t.name))]
    writer = _Writer(out, shard_bytes)
    per_module: dict[str, Any] = {}
    bits_seen: dict[int, int] = {}
    parameters = 0
    for done, (t, name) in enumerate(todo, start=1):
        converted = _convert_tensor(mm, header, arch, t, dtype)
        parameters += t.n_elements
        module = name.removesuffix(".weight")
        if isinstance(converted, Quantized):
            writer.add(name, converted.weight)
            writer.add(f"{module}.scales", converted.scales)
            writer.add(f"{module}.biases", converted.biases)
            spec = {"group_size": GROUP_SIZE, "bits": converted.bits, "mode": "affine"}
            per_module[module] = spec
            bits_seen[converted.bits] = bits_seen.get(converted.bits, 0) + 1
        else:
            writer.add(name, converted)
            if len(t.shape) == 2 and name.endswith(".weight"):
                per_module[module] = False  # a float Linear/Embedding in a quantized model
        if progress is not None:
            progress(done, len(todo))
    writer.finish(parameters)

    config["torch_dtype"] = dtype_name
    if bits_seen:
        # The most common width as the default; every module is also named explicitly
        # (mlx_lm.utils.load_model's class_predicate reads per-module entries first).
        default_bits = max(bits_seen, key=lambda b: bits_seen[b])
        quantization = {"group_size": GROUP_SIZE, "bits": default_bits, "mode": "affine"}
        quantization.update(dict(sorted(per_module.items())))
        config["quantization"] = quantization
        config["quantization_config"] = quantization
    _write_json(out / "config.json", config)


def convert(
    gguf_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    progress: Progress | None = None,
    *,
    go_template: str | None = None,
    shard_bytes: int = SHARD_BYTES,
) -> Path:
    """Convert the GGUF file into the new directory out_dir (atomically); return out_dir.

    progress(completed_tensors, total_tensors) is called after each tensor.
    Raises ConversionError (unsupported=True for files this converter refuses).
    """
    out = Path(out_dir)
    if out.exists():
        raise ConversionError(f"{out} already exists")
    try:
        info = inspect(gguf_path)
    except GGUFError as exc:
        raise ConversionError(str(exc)) from exc
    if (reason := check_supported(info)) is not None:
        raise ConversionError(reason, unsupported=True)
    chat_template = resolve_chat_template(info, go_template)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _write_model(info.header, tmp, chat_template, progress, shard_bytes)
        os.rename(tmp, out)
    except Unsupported as exc:
        raise ConversionError(str(exc), unsupported=True) from exc
    except (GGUFError, ValueError, OSError) as exc:
        raise ConversionError(str(exc)) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


# --- child-process entry point -------------------------------------------------------------


def _print(obj: dict[str, Any], stream: Any = None) -> None:
    print(json.dumps(obj), file=stream or sys.stdout, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ollmlx_worker.gguf")
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path, nargs="?")
    parser.add_argument("--go-template", type=Path, help="Ollama Go template (template layer)")
    parser.add_argument("--check", action="store_true", help="only inspect: print facts")
    args = parser.parse_args(argv)
    try:
        if args.check:
            info = inspect(args.src)
            reason = check_supported(info)
            _print({**info.summary(), "problem": reason})
            if reason is not None:
                print(f"error: {reason}", file=sys.stderr)
                return 2
            return 0
        if args.dst is None:
            parser.error("DST_DIR is required unless --check")
        go = args.go_template.read_text() if args.go_template else None
        stdout = sys.stdout

        def report(done: int, total: int) -> None:
            _print({"status": "converting gguf", "completed": done, "total": total}, stdout)

        _print({"status": "converting gguf"})
        # Libraries that print (tqdm, warnings) must not mix into the JSON lines.
        with contextlib.redirect_stdout(sys.stderr):
            convert(args.src, args.dst, progress=report, go_template=go)
        _print({"status": "success"})
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if exc.unsupported else 1
    except (GGUFError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
