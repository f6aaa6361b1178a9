"""The store's write lock, shared by every ollmlx server on one models folder.

Writing a manifest and deleting one (with the blobs only it named) happen under it, so a
create that reuses blobs and a delete that frees them never interleave: the create sees
its blobs still there, or the delete sees the new manifest naming them. An exclusive
`flock` on `<store>/ollmlx/store.lock`; each holder opens its own descriptor, so threads of
one server exclude each other too. Ollama does not take it; the checks after a write (see
catalog.py) cover an Ollama server on the same store.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created if missing), released when the block ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def store_lock(root: Path) -> contextlib.AbstractContextManager[None]:
    return file_lock(root / "ollmlx" / "store.lock")
