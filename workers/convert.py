"""Quantize a model directory with mlx-lm, in a child process of the supervisor.

    python -m ollmlx_worker.convert SRC DST --bits 4 [--group-size 64]

The supervisor never imports MLX, and conversion is heavy: it runs here. Progress goes to
stdout as one JSON object per line (`{"status": ...}`); everything mlx-lm prints goes to
stderr, whose tail becomes the error message when the exit status is not 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path


def _status(text: str) -> None:
    print(json.dumps({"status": text}), flush=True)


def convert(src: Path, dst: Path, bits: int, group_size: int) -> None:
    from mlx_lm.utils import load, quantize_model, save

    if dst.exists():  # mlx-lm refuses to write into an existing directory, and so do we
        raise ValueError(f"{dst} already exists")
    _status("loading model")
    with contextlib.redirect_stdout(sys.stderr):
        model, tokenizer, config = load(str(src), lazy=True, return_config=True)  # type: ignore[misc]
    if config.get("quantization") or config.get("quantization_config"):
        raise ValueError("quantization is only supported for F16 and F32 models")
    _status(f"quantizing to {bits}-bit, group size {group_size}")
    with contextlib.redirect_stdout(sys.stderr):
        model, config = quantize_model(model, config, group_size, bits)
    _status("writing quantized weights")
    with contextlib.redirect_stdout(sys.stderr):
        save(dst, src, model, tokenizer, config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ollmlx_worker.convert")
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--bits", type=int, required=True, choices=(2, 3, 4, 5, 6, 8))
    parser.add_argument("--group-size", type=int, default=64, choices=(32, 64, 128))
    args = parser.parse_args(argv)
    try:
        convert(args.src, args.dst, args.bits, args.group_size)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
