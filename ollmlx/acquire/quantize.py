"""Quantization for /api/create: Ollama's type names, and the conversion child process.

The conversion itself runs in `python -m ollmlx_worker.convert` (the supervisor never
imports MLX); this module starts it, relays its status lines and reports its failure.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

from ..errors import StatusError
from .child import ChildFailed, json_lines

# Ollama's names map to the nearest MLX affine quantization (group size 64).
QUANT_BITS = {
    "q4_k_m": 4,
    "q4_k_s": 4,
    "q4_0": 4,
    "q4_1": 4,
    "q8_0": 8,
    "mlx-4bit": 4,
    "mlx-8bit": 8,
}
GROUP_SIZE = 64


def quant_bits(text: str) -> int:
    bits = QUANT_BITS.get(text.strip().lower())
    if bits is None:
        known = ", ".join(QUANT_BITS)
        raise StatusError(f"unsupported quantization type {text} (supported: {known})", 400)
    return bits


def _status_of(line: str) -> str | None:
    """The status of a `{"status": ...}` line from the child; None for anything else."""
    with contextlib.suppress(ValueError, TypeError, KeyError):
        return str(json.loads(line)["status"])
    return None


async def convert(src: Path, dst: Path, bits: int) -> AsyncIterator[str]:
    """Quantize `src` into the new directory `dst`, yielding status lines as they come."""
    args = (str(src), str(dst), "--bits", str(bits), "--group-size", str(GROUP_SIZE))
    try:
        async for line in json_lines("convert", *args):
            status = _status_of(line)
            if status is not None:
                yield status
    except ChildFailed as exc:
        code = 400 if "only supported for" in exc.message else 500
        raise StatusError(exc.message, code) from None
