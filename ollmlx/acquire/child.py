"""A conversion child process (`python -m ollmlx_worker.<module>`), relayed line by line.

The supervisor never imports MLX: GGUF conversion and quantization run in a child that
prints JSON status lines on stdout (stderr merged in, so a full pipe never blocks it).
"""

from __future__ import annotations

import asyncio
import collections
import sys
from collections.abc import AsyncIterator


class ChildFailed(Exception):
    """The child exited non-zero: its code, and its last `error: ...` line (else its tail)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def json_lines(module: str, *args: str) -> AsyncIterator[str]:
    """The child's `{...}` lines as they come; ChildFailed when it fails. A caller that
    stops early (its client left, the server stops) kills it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        f"ollmlx_worker.{module}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,  # one pipe: no deadlock on a full stderr
    )
    tail: collections.deque[str] = collections.deque(maxlen=5)
    try:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith("{"):
                yield line
            elif line:
                tail.append(line)
        code = await proc.wait()
        if code != 0:
            reason = next((t for t in reversed(tail) if t.startswith("error: ")), "")
            message = reason.removeprefix("error: ") or " | ".join(tail) or "conversion failed"
            raise ChildFailed(code, message)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
