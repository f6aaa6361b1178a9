"""Quantization for /api/create: Ollama's type names, and the conversion child process.

The conversion itself runs in `python -m ollmlx_worker.convert` (the supervisor never
imports MLX); this module starts it, relays its status lines and reports its failure.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from ..errors import StatusError

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
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ollmlx_worker.convert",
        str(src),
        str(dst),
        "--bits",
        str(bits),
        "--group-size",
        str(GROUP_SIZE),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,  # one pipe: no deadlock on a full stderr
    )
    tail: collections.deque[str] = collections.deque(maxlen=5)
    try:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            status = _status_of(line)
            if status is not None:
                yield status
            elif line:
                tail.append(line)
        if await proc.wait() != 0:
            reason = next((t for t in reversed(tail) if t.startswith("error: ")), "")
            message = reason.removeprefix("error: ") or " | ".join(tail) or "conversion failed"
            code = 400 if "only supported for" in message else 500
            raise StatusError(message, code)
    finally:
        if proc.returncode is None:  # the client went away: stop the conversion
            proc.kill()
            await proc.wait()
