"""Blocking Hugging Face Hub calls for a pull: list, check, download, verify.

Everything here runs in a thread (never on the event loop). huggingface_hub reads
HF_ENDPOINT, HF_TOKEN, HF_HOME and HF_HUB_OFFLINE itself; its cache is where files land,
so a model already in that cache is never downloaded again.
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..architectures import unsupported_reason
from ..errors import StatusError
from ..store.aliases import HubRef

# Files mlx-lm needs (its own download list, minus *.py: remote code is never run).
ALLOW_PATTERNS = (
    "*.json",
    "model*.safetensors",
    "tokenizer.model",
    "*.tiktoken",
    "tiktoken.model",
    "*.txt",
    "*.jsonl",
    "*.jinja",
)
WEIGHTS_PATTERN = "model*.safetensors"
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Progress, and resuming after a dropped connection, go by whole chunks: 256 KiB instead
# of the default 10 MiB keeps bars moving and loses less on a cut.
constants.DOWNLOAD_CHUNK_SIZE = 256 << 10
# One INFO line per HTTP request is noise in the server log.
logging.getLogger("httpx2").setLevel(logging.WARNING)
log = logging.getLogger("ollmlx.hub")


class Cancelled(Exception):
    """Every client of a pull went away: stop at the next chunk."""


@dataclass
class RemoteFile:
    name: str
    size: int
    sha256: str = ""  # known up front for LFS files; computed after download otherwise
    path: Path | None = None  # set once the file is in the local cache

    @property
    def is_weights(self) -> bool:
        return fnmatch.fnmatch(self.name, WEIGHTS_PATTERN)


@dataclass
class Plan:
    ref: HubRef
    commit: str
    files: list[RemoteFile] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def is_offline() -> bool:
    return constants.is_offline_mode()


SEARCH_AUTHOR = "mlx-community"  # where MLX conversions of the popular models live
SEARCH_LIMIT = 5


def _search_terms(model: str) -> list[str]:
    """The name as typed, and with a hyphen where letters meet digits: Ollama writes
    "gemma4" and "llama3.2" where the hub writes "gemma-4" and "Llama-3.2"."""
    hyphenated = re.sub(r"(?<=[a-z])(?=\d)", "-", model.lower())
    return [model] if hyphenated == model.lower() else [model, hyphenated]


def search_candidates(model: str, tag: str) -> list[str]:
    """MLX repos a name the alias table does not know may mean, most downloaded first
    (those naming the tag, e.g. "27b", before the others); [] offline or on any error."""
    if is_offline():
        return []
    found: list[str] = []
    for term in _search_terms(model):
        try:
            listed = HfApi().list_models(
                author=SEARCH_AUTHOR, search=term, sort="downloads", limit=20
            )
            found += [m.id for m in listed if m.id not in found]
        except Exception as exc:  # a suggestion is a nicety: the 404 stands without it
            log.debug("hub search for %r failed: %s", term, exc)
    wanted = tag.lower()
    if wanted and wanted != "latest":
        found.sort(key=lambda repo: wanted not in repo.lower())  # stable: downloads within
    return found[:SEARCH_LIMIT]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _wanted(name: str) -> bool:
    return "/" not in name and any(fnmatch.fnmatch(name, p) for p in ALLOW_PATTERNS)


def _hub_error(ref: HubRef, exc: Exception) -> StatusError:
    endpoint = constants.ENDPOINT
    if isinstance(exc, GatedRepoError):
        return StatusError(
            f"{ref.repo_id} is gated: accept its terms on the Hub and set HF_TOKEN", 403
        )
    if isinstance(exc, RevisionNotFoundError):
        return StatusError(
            f"pull model manifest: revision {ref.revision!r} of {ref.repo_id} not found", 404
        )
    if isinstance(exc, RepositoryNotFoundError):
        return StatusError(
            f"pull model manifest: file does not exist: {ref.repo_id} not found at {endpoint}", 404
        )
    if isinstance(exc, HfHubHTTPError):
        return StatusError(f"pull model manifest: {endpoint} answered: {exc}", 502)
    return StatusError(f"pull model manifest: could not reach {endpoint}: {exc}", 502)


def _check(plan: Plan) -> None:
    """Refuse what mlx-lm cannot run, before any weights are fetched."""
    names = {f.name for f in plan.files}
    if "config.json" not in names:
        raise StatusError(
            f"{plan.ref.repo_id} has no config.json: it is not a model ollmlx can run", 400
        )
    if not any(f.is_weights for f in plan.files):
        raise StatusError(
            f"{plan.ref.repo_id} has no safetensors weights (model*.safetensors): ollmlx runs "
            "MLX/safetensors models; try an mlx-community conversion",
            400,
        )


def plan_pull(ref: HubRef) -> Plan:
    """List the repo's files and fetch the small ones; check the architecture."""
    if is_offline():
        return _plan_offline(ref)
    try:
        info = HfApi().model_info(ref.repo_id, revision=ref.revision, files_metadata=True)
    except Exception as exc:
        raise _hub_error(ref, exc) from None
    plan = Plan(ref, info.sha or ref.revision)
    for sibling in info.siblings or []:
        if _wanted(sibling.rfilename):
            lfs = sibling.lfs
            plan.files.append(
                RemoteFile(sibling.rfilename, int(sibling.size or 0), lfs.sha256 if lfs else "")
            )
    _check(plan)
    _remember_revision(plan)
    for remote in plan.files:
        if not remote.is_weights:
            remote.path = download(plan, remote, lambda _: None, threading.Event())
            remote.sha256 = remote.sha256 or sha256_file(remote.path)
    _read_config(plan)
    return plan


def _repo_cache(repo_id: str) -> Path:
    return Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"


def _remember_revision(plan: Plan) -> None:
    """Files are fetched by commit; record which commit `main` was, for offline use later."""
    if plan.ref.revision == plan.commit:
        return
    ref_file = _repo_cache(plan.ref.repo_id) / "refs" / plan.ref.revision
    ref_file.parent.mkdir(parents=True, exist_ok=True)
    ref_file.write_text(plan.commit)


def _plan_offline(ref: HubRef) -> Plan:
    try:
        folder = Path(
            snapshot_download(
                ref.repo_id,
                revision=ref.revision,
                allow_patterns=list(ALLOW_PATTERNS),
                local_files_only=True,
            )
        )
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise StatusError(
            f"{ref} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
            "unset it (or pull while online) to download it",
            404,
        ) from None
    plan = Plan(ref, folder.name)
    for path in sorted(folder.iterdir()):
        if path.is_file() and _wanted(path.name):
            blob = path.resolve().name  # LFS blobs are named by their sha256
            sha = blob if _SHA256.fullmatch(blob) else ""
            plan.files.append(RemoteFile(path.name, path.stat().st_size, sha, path))
    _check(plan)
    _read_config(plan)
    return plan


def _read_config(plan: Plan) -> None:
    config_file = next(f for f in plan.files if f.name == "config.json")
    assert config_file.path is not None
    try:
        plan.config = json.loads(config_file.path.read_text())
    except ValueError:
        raise StatusError(f"{plan.ref.repo_id}: config.json is not valid JSON", 400) from None
    reason = unsupported_reason(plan.config)
    if reason:
        raise StatusError(f"{plan.ref.repo_id}: {reason}", 400)


def cached_path(plan: Plan, remote: RemoteFile) -> Path | None:
    if remote.path is not None:
        return remote.path
    pointer = _repo_cache(plan.ref.repo_id) / "snapshots" / plan.commit / remote.name
    return pointer if pointer.exists() else None


def check_disk_space(plan: Plan, store_dir: Path) -> None:
    """Fail before downloading when the missing files cannot fit."""
    missing = sum(f.size for f in plan.files if cached_path(plan, f) is None)
    total = sum(f.size for f in plan.files)
    needs = [(Path(constants.HF_HUB_CACHE), missing)]
    if _device(store_dir) != _device(Path(constants.HF_HUB_CACHE)):
        needs.append((store_dir, total))  # no hard links across filesystems: a full copy
    for folder, needed in needs:
        free = shutil.disk_usage(_existing(folder)).free
        if needed > free:
            raise StatusError(
                f"not enough disk space to pull {plan.ref}: needs {needed / 1e9:.2f} GB, "
                f"{free / 1e9:.2f} GB free in {_existing(folder)}",
                507,
            )


def _existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _device(folder: Path) -> int:
    return os.stat(_existing(folder)).st_dev


class _Progress:
    """Stands in for tqdm inside huggingface_hub: reports bytes, honours cancellation."""

    def __init__(self, sink: Callable[[int], None], cancel: threading.Event, **kwargs: Any) -> None:
        self.sink, self.cancel = sink, cancel
        self.n = int(kwargs.get("initial") or 0)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        if self.cancel.is_set():
            raise Cancelled()
        self.n += n
        self.sink(self.n)


def download(
    plan: Plan, remote: RemoteFile, sink: Callable[[int], None], cancel: threading.Event
) -> Path:
    """One file into the HF cache (resuming within the call after a dropped connection)."""
    # huggingface_hub accepts any callable here (it only calls it with tqdm's kwargs).
    progress: Any = functools.partial(_Progress, sink, cancel)
    try:
        path = hf_hub_download(
            plan.ref.repo_id,
            remote.name,
            revision=plan.commit,
            tqdm_class=progress,
        )
    except Cancelled:
        raise
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StatusError(
                f"no space left on device while downloading {remote.name}", 507
            ) from None
        raise StatusError(f"downloading {remote.name} failed: {_first_line(exc)}", 502) from None
    except Exception as exc:
        raise StatusError(
            f"lost connection while downloading {remote.name}: {_first_line(exc)}", 502
        ) from None
    return Path(path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def discard(path: Path) -> None:
    """Drop a bad file from the HF cache (blob and snapshot link), so it is fetched again."""
    blob = path.resolve()
    for item in (path, blob):
        item.unlink(missing_ok=True)
