"""Content-addressed blobs, `blobs/sha256-<hex>`, written atomically.

Every write goes to a temporary file under `<store>/ollmlx/tmp/` (same file system, and out
of the `blobs/` folder whose odd names Ollama's PruneLayers deletes), is hashed as it is
written, and is renamed into place only once its digest is known and checked: a blob name
never holds anything but its content. Files are hard-linked where they can be (a pulled or
local model is not copied a second time), copied otherwise.

A blob that a client uploads before the create that names it is "pinned" for an hour: a
delete by any ollmlx server on the store leaves it alone meanwhile (Ollama's own prune gives
new blobs the same hour, server/images.go layerPruneGracePeriod).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from ..errors import StatusError
from .files import open_regular
from .manifest import hex_of

CHUNK = 1 << 20
PIN_SECONDS = 3600.0
# The pins of the create running in this context (`holding`): its own, so that another
# create's commit, which releases the shared pin of each blob it names, leaves them.
_HOLDS: contextvars.ContextVar[list[Path] | None] = contextvars.ContextVar(
    "ollmlx_blob_holds", default=None
)


@contextlib.contextmanager
def holding() -> Iterator[None]:
    """Every pin taken inside (also on threads it starts) is this operation's own hold,
    released when it ends: its manifest then names the blobs, or it failed."""
    holds: list[Path] = []
    token = _HOLDS.set(holds)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):  # ended from another context (a closed stream)
            _HOLDS.reset(token)
        for path in holds:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


STALE_TMP_SECONDS = 24 * 3600.0


def digest_of(hex_digest: str) -> str:
    return f"sha256:{hex_digest}"


def out_of_space(needed: int, folder: Path) -> StatusError:
    free = shutil.disk_usage(folder).free
    return StatusError(
        f"not enough disk space in {folder}: {needed} bytes needed, {free} bytes free", 507
    )


class BlobWriter:
    """One blob being written: `write` chunks, then `commit` (or leave: nothing stays)."""

    def __init__(self, blobs: Blobs, expected_size: int | None = None) -> None:
        self._blobs = blobs
        if expected_size is not None and expected_size > shutil.disk_usage(blobs.tmp).free:
            raise out_of_space(expected_size, blobs.root)
        fd, name = tempfile.mkstemp(prefix="blob-", dir=blobs.tmp)
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        try:
            self._file.write(chunk)
        except OSError as exc:
            self.abort()
            if exc.errno == errno.ENOSPC:
                raise out_of_space(self.size + len(chunk), self._blobs.root) from None
            raise
        self._hash.update(chunk)
        self.size += len(chunk)

    def commit(self, expected_hex: str | None = None) -> tuple[str, bool]:
        """Move the finished file into place; (digest, created). A digest other than the
        one expected is a 400 and leaves nothing behind."""
        try:
            self._file.close()
        except OSError as exc:
            self.abort()
            if exc.errno == errno.ENOSPC:
                raise out_of_space(self.size, self._blobs.root) from None
            raise
        got = self._hash.hexdigest()
        if expected_hex is not None and got != expected_hex:
            self.abort()
            # Ollama's CreateBlobHandler wording.
            raise StatusError(
                f'digest mismatch, expected "sha256:{expected_hex}", got "sha256:{got}"', 400
            )
        return digest_of(got), self._blobs._place(self.path, got)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


class Blobs:
    def __init__(self, root: Path) -> None:
        self.root = root / "blobs"
        self.tmp = root / "ollmlx" / "tmp"
        self.pins = root / "ollmlx" / "pins"
        for folder in (self.root, self.tmp, self.pins):
            folder.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / f"sha256-{hex_of(digest)}"

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def touch(self, digest: str) -> bool:
        """Refresh a blob's time (Ollama's touchLayer): a blob about to be named by a new
        manifest is not "old and unused" to a prune running meanwhile. False if absent."""
        try:
            os.utime(self.path(digest))
        except FileNotFoundError:
            return False
        return True

    @contextlib.contextmanager
    def writer(self, expected_size: int | None = None) -> Iterator[BlobWriter]:
        writer = BlobWriter(self, expected_size)
        try:
            yield writer
        finally:
            writer.abort()  # after a commit the temporary name is already gone

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        with self.writer(len(data)) as writer:
            writer.write(data)
            digest, _ = writer.commit()
        return digest, len(data)

    def put_file(self, source: Path, known_hex: str | None = None) -> tuple[str, int, bool]:
        """A file as a blob: hard-linked when the file system allows, else copied while
        hashed. `known_hex`: a digest already verified (a pull) is not computed again.
        Returns (digest, size, created)."""
        if known_hex is not None and self.touch(digest_of(known_hex)):
            return digest_of(known_hex), self.path(digest_of(known_hex)).stat().st_size, False
        fd, name = tempfile.mkstemp(prefix="link-", dir=self.tmp)
        os.close(fd)
        tmp = Path(name)
        try:
            try:
                tmp.unlink()
                os.link(source, tmp)
            except OSError:
                return self._copy(source, known_hex)
            # Hash what the blob holds (the linked inode), not what the name held before.
            got = known_hex or _hash_file(tmp)
            size = tmp.stat().st_size
            return digest_of(got), size, self._place(tmp, got)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _copy(self, source: Path, known_hex: str | None) -> tuple[str, int, bool]:
        with open_regular(source) as f, self.writer(os.fstat(f.fileno()).st_size) as writer:
            while chunk := f.read(CHUNK):
                writer.write(chunk)
            digest, created = writer.commit(known_hex)
        return digest, writer.size, created

    def _place(self, tmp: Path, hex_digest: str) -> bool:
        """Rename `tmp` to its blob name unless that blob exists; True if this created it."""
        target = self.root / f"sha256-{hex_digest}"
        if target.is_file():
            os.utime(target)
            tmp.unlink()
            return False
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        return True

    def remove(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(digest).unlink()

    # -- pins: uploaded blobs a create has not named yet -----------------------------------

    def pin(self, digest: str) -> None:
        """Keep `digest` until a manifest names it: inside `holding`, a hold of that
        operation's own; else (an upload) the blob's shared pin, which the create that
        names the blob releases (`unpin`), or an hour."""
        holds = _HOLDS.get()
        if holds is None:
            (self.pins / f"sha256-{hex_of(digest)}").touch()
            return
        path = self.pins / f"sha256-{hex_of(digest)}.{uuid.uuid4().hex}"
        path.touch()
        holds.append(path)

    def unpin(self, digest: str) -> None:
        """The shared pin goes; holds stay with their operations."""
        with contextlib.suppress(FileNotFoundError):
            (self.pins / f"sha256-{hex_of(digest)}").unlink()

    def pinned(self, digest: str) -> bool:
        now = time.time()
        for path in self.pins.glob(f"sha256-{hex_of(digest)}*"):
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime < PIN_SECONDS:
                    return True
        return False

    def clean(self) -> None:
        """Temporary files of writes that never finished (a crash), and expired pins."""
        now = time.time()
        for folder, age in ((self.tmp, STALE_TMP_SECONDS), (self.pins, PIN_SECONDS)):
            for path in folder.iterdir():
                with contextlib.suppress(OSError):
                    if now - path.lstat().st_mtime > age:
                        if path.is_dir() and not path.is_symlink():
                            shutil.rmtree(path, ignore_errors=True)
                        else:
                            path.unlink()


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
