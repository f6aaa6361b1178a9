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
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ollmlx.gguf_meta import GGUFError, GGUFHeader, read_header
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

    from .gguf_write import write_model  # MLX and numpy load here, not on import

    out.parent.mkdir(parents=True, exist_ok=True)
    # Next to out_dir, so the final rename stays on one file system.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        write_model(info.header, tmp, chat_template, progress, shard_bytes)
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
    except Exception as exc:  # a bug, or a file shaped in a way nothing here foresaw
        traceback.print_exc()
        print(f"error: conversion failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
