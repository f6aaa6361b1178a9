"""The system OpenBLAS that workers (and training jobs) preload on Linux, and how."""

from __future__ import annotations

import os
import sys

# Debian/Ubuntu's OpenBLAS (libopenblas0-pthread). MLX's Linux CPU wheel bundles the
# reference BLAS; preloading OpenBLAS makes float32 matmuls ~25x faster (mlx-notes).
OPENBLAS_PATHS = tuple(
    f"/usr/lib/{arch}-linux-gnu/{sub}libopenblas.so.0"
    for arch in ("x86_64", "aarch64")
    for sub in ("openblas-pthread/", "")
)
OPENBLAS_THREAD_TIMEOUT = "4"  # OpenBLAS's minimum: 2^4 cycles of spinning


def find_openblas() -> str | None:
    """The system OpenBLAS to preload into workers, on Linux only (never macOS)."""
    if not sys.platform.startswith("linux"):
        return None
    return next((path for path in OPENBLAS_PATHS if os.path.exists(path)), None)


def with_openblas(env: dict[str, str]) -> dict[str, str]:
    """`env` with the system OpenBLAS first in LD_PRELOAD, when there is one, and its
    idle threads sleeping at once (unless the user chose `OPENBLAS_THREAD_TIMEOUT`)."""
    path = find_openblas()
    if path is None:
        return env
    preload = env.get("LD_PRELOAD", "")
    if path not in preload.split():
        env = {**env, "LD_PRELOAD": f"{path} {preload}".strip()}
    # OpenBLAS's helper threads spin after each call (2^28 cycles, ~0.1 s) before they
    # sleep: while a stream decodes, that is a core kept busy, measured at 1.8 ms of CPU
    # a token on the 256x4 model, taken from the supervisor, the clients and other
    # workers; 2^4 cycles costs prefill nothing (make bench, issue 16's note).
    return {"OPENBLAS_THREAD_TIMEOUT": OPENBLAS_THREAD_TIMEOUT, **env}
