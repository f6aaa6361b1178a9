"""An `ollmlx serve` of the benchmark's own, and timed streams through the ollama client
(for the speculative-decoding and KV-cache figures; systems.py drives the comparison)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ollama

from .procs import env_without_preload, free_port, stop_process, wait_http


@dataclass
class Served:
    url: str
    client: ollama.Client
    log: Path
    pid: int = 0  # the server process

    def create(self, model: str, modelfile: str) -> None:
        """/api/create from Modelfile text (the ollama client has no DRAFT field)."""
        body = {"model": model, "modelfile": modelfile, "stream": False}
        httpx.post(self.url + "/api/create", json=body, timeout=300).raise_for_status()

    def generate(self, model: str, prompt: str, tokens: int, **options: Any) -> Timed:
        """One greedy streamed answer to a raw prompt, timed from the request."""
        opts = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": tokens, **options}
        started, first, count = time.perf_counter(), 0.0, 0
        context: list[int] = []
        for chunk in self.client.generate(model, prompt, raw=False, stream=True, options=opts):
            if not chunk.done:
                first = first or time.perf_counter()
            else:
                count = int(chunk.eval_count or 0)
                context = list(chunk.context or [])
        return Timed(started, first, time.perf_counter(), count, context)

    def concurrent(self, model: str, prompts: list[str], tokens: int) -> tuple[float, int]:
        """(wall seconds from the requests to the last token, tokens) of streams at once."""
        started = time.perf_counter()
        with ThreadPoolExecutor(len(prompts)) as pool:
            runs = list(pool.map(lambda p: self.generate(model, p, tokens), prompts))
        return time.perf_counter() - started, sum(r.tokens for r in runs)


@dataclass
class Timed:
    sent: float
    first: float
    last: float
    tokens: int
    context: list[int]

    @property
    def decode_tps(self) -> float:
        """After the first token: decoding only."""
        return (self.tokens - 1) / (self.last - self.first) if self.tokens > 1 else 0.0

    @property
    def wall_tps(self) -> float:
        """From the request to the last token: what a client sees."""
        return self.tokens / (self.last - self.sent)


@contextlib.contextmanager
def serve(**env: str) -> Iterator[Served]:
    with tempfile.TemporaryDirectory(prefix="ollmlx-bench-") as tmp:
        base = {
            k: v
            for k, v in env_without_preload().items()
            if not k.startswith(("OLLAMA_", "OLLMLX_"))
        }
        port = free_port()
        base.update(
            OLLAMA_HOST=f"127.0.0.1:{port}",
            OLLMLX_MODELS=str(Path(tmp) / "models"),
            OLLAMA_KEEP_ALIVE="30m",
            OLLAMA_NUM_PARALLEL="16",
            HF_HUB_OFFLINE="1",
            **env,
        )
        log = Path(tmp) / "server.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ollmlx", "serve"], env=base, stdout=out, stderr=out
            )
            try:
                wait_http(f"http://127.0.0.1:{port}/", proc)
                url = f"http://127.0.0.1:{port}"
                yield Served(url, ollama.Client(host=url), log, proc.pid)
            finally:
                stop_process(proc)
