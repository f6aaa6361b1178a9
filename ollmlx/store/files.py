"""Reading a model's files safely: regular files only, sizes checked before reading.

A path given by a client (`/api/create` FROM a folder) may name a FIFO, a device or a
file whose header lies about its size; opening such a thing must fail at once with a 400,
never block a thread forever or allocate what a header claims.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import StatusError

MAX_JSON_BYTES = 64 << 20  # config and tokenizer files; tokenizer.json can be tens of MB
MAX_HEADER_BYTES = 100 << 20  # the safetensors format's own limit for its JSON header


def is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading; a FIFO or device is refused without blocking on it."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer returns at once instead of hanging.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise StatusError(f"{path}: {exc.strerror}", 400) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StatusError(f"{path} is not a regular file", 400)
    return os.fdopen(fd, "rb")


def read_small(path: Path, limit: int = MAX_JSON_BYTES) -> bytes:
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise StatusError(f"{path} is too large ({size} bytes, at most {limit})", 400)
        return f.read(limit + 1)[:limit]


def read_json(path: Path) -> Any:
    try:
        return json.loads(read_small(path))
    except ValueError as exc:
        raise StatusError(f"{path} is not valid JSON: {exc}", 400) from None


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, its claimed length checked first."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        if len(prefix) < 8:
            raise StatusError(f"{path} is not a safetensors file (too short)", 400)
        (length,) = struct.unpack("<Q", prefix)
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise StatusError(
                f"{path} has an invalid safetensors header (claims {length} bytes "
                f"in a {size}-byte file)",
                400,
            )
        try:
            header = json.loads(f.read(length))
        except ValueError as exc:
            raise StatusError(f"{path} has an invalid safetensors header: {exc}", 400) from None
    if not isinstance(header, dict):
        raise StatusError(f"{path} has an invalid safetensors header", 400)
    return header
