"""OpenBLAS preload: the same probe run in a worker-like child with and without it.

`python -m benchmarks.blas MODEL_DIR` prints one JSON line: float32 matmul GFLOP/s,
prompt and decode tokens/s of the model, and whether OpenBLAS is mapped in the process
(proof that MLX's CPU backend calls into the preloaded library, not only that it loaded).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RATES = ("matmul_gflops", "prefill_tps", "decode_tps")


def probe(model_dir: str, prompt_tokens: int = 256, decode_tokens: int = 32) -> dict[str, Any]:
    import mlx.core as mx
    from mlx_lm import load, stream_generate

    a, b = mx.random.normal((1024, 1024)), mx.random.normal((1024, 1024))
    mx.eval(a @ b)
    started, rounds = time.perf_counter(), 5
    for _ in range(rounds):
        mx.eval(a @ b)
    gflops = 2 * 1024**3 * rounds / (time.perf_counter() - started) / 1e9

    model, tokenizer = load(model_dir)[:2]
    prompt = [7 + i % 200 for i in range(prompt_tokens)]
    *_, last = stream_generate(model, tokenizer, prompt, max_tokens=decode_tokens)
    maps = Path(f"/proc/{os.getpid()}/maps")
    mapped = maps.exists() and "libopenblas" in maps.read_text()
    return {
        "matmul_gflops": gflops,
        "prefill_tps": float(last.prompt_tps),
        "decode_tps": float(last.generation_tps),
        "openblas_mapped": mapped,
    }


def compare(model_dir: Path) -> dict[str, Any] | None:
    """Run the probe with and without the preload; None when there is no OpenBLAS."""
    from ollmlx.serving.openblas import find_openblas, with_openblas

    if find_openblas() is None:
        return None
    plain = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    runs = {}
    for label, env in (("without", plain), ("with", with_openblas(plain))):
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.blas", str(model_dir)],
            env=env,
            capture_output=True,
            check=True,
        )
        runs[label] = json.loads(out.stdout.splitlines()[-1])
    return {
        **runs,
        "library": find_openblas(),
        "speedup": {k: runs["with"][k] / runs["without"][k] for k in RATES},
    }


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1])))
