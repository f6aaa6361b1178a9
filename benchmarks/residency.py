"""Issue 16's prompt-cache disk tier and idle-memory figures, through ollmlx only.

- TTFT of a request sharing a 2k-token prefix: cold (nothing cached), an in-memory hit,
  and after the worker restarted (the prefix read back from `OLLMLX_PROMPT_CACHE_DISK`).
- Each worker's resident memory and MLX buffer cache after a 4k-token request and once
  idle, against the weights' size, with what `/api/ps` reports.

Both use the benchmark's own server (served.py) and a model with an 8k context.
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from ollmlx.protocol import SECRET_ENV, SECRET_HEADER

from .measures import WORDS
from .served import Served, serve

PREFIX_WORDS = 1100  # ~2k tokens with the benchmark models' tokenizer (1.8 a word)
REQUEST_WORDS = 2200  # ~4k tokens
REPEATS = 3


def _words(seed: int, count: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(count))


def _prefix(seed: int) -> str:
    return _words(seed, PREFIX_WORDS)


def _ttft(served: Served, prefix: str, question: str) -> float:
    """Seconds to the first token of a one-token chat whose system prompt is `prefix`."""
    body = {
        "model": "bench",
        "messages": [{"role": "system", "content": prefix}, {"role": "user", "content": question}],
        "options": {"temperature": 0, "num_predict": 1, "num_ctx": 8192},
    }
    started = time.perf_counter()
    with httpx.stream("POST", served.url + "/api/chat", json=body, timeout=300) as response:
        for _ in response.iter_lines():
            return time.perf_counter() - started
    raise RuntimeError("no answer")


def _unload(served: Served) -> None:
    served.client.generate(model="bench", prompt="", keep_alive=0)
    deadline = time.monotonic() + 60
    while served.client.ps().models and time.monotonic() < deadline:
        time.sleep(0.05)


def prefix_ttft(model_dir: Path) -> dict[str, float]:
    """Median TTFT (s) of a 2k-token shared prefix: cold, memory hit, disk after restart."""
    cold, memory, disk = [], [], []
    with serve(OLLMLX_PROMPT_CACHE_DISK="2G") as served:
        served.client.create(model="bench", from_=str(model_dir))
        _ttft(served, "warm up", "hi")
        for seed in range(REPEATS):
            prefix = _prefix(seed)
            cold.append(_ttft(served, prefix, "first question"))
            memory.append(_ttft(served, prefix, "second question"))
            _unload(served)  # the worker writes its long prefixes to disk as it stops
            _ttft(served, "load again", "hi")  # the model is back, without the prefix
            disk.append(_ttft(served, prefix, "third question"))
    return {
        "cold": statistics.median(cold),
        "memory": statistics.median(memory),
        "disk": statistics.median(disk),
    }


def _worker(served: Served) -> psutil.Process:
    children = psutil.Process(served.pid).children()
    (worker,) = [c for c in children if "ollmlx_worker" in " ".join(c.cmdline())]
    return worker


def _health(worker: psutil.Process) -> dict[str, Any]:
    """The worker's own /health (its secret is in its environment, as the supervisor
    gave it): what MLX holds, active and cached."""
    secret = worker.environ()[SECRET_ENV]
    port = next(c.laddr.port for c in worker.net_connections("tcp") if c.status == "LISTEN")
    url = f"http://127.0.0.1:{port}/health"
    return httpx.get(url, headers={SECRET_HEADER: secret}, timeout=10).json()


def idle_memory(model_dir: Path, weights_bytes: int) -> dict[str, Any]:
    """Resident memory and MLX cache after a 4k-token request, and once idle."""
    with serve() as served:
        served.client.create(model="bench", from_=str(model_dir))
        served.client.generate(model="bench", prompt="", keep_alive="30m")
        worker = _worker(served)
        prompt = _words(99, REQUEST_WORDS)
        served.client.generate(
            model="bench", prompt=prompt, options={"num_predict": 16, "num_ctx": 8192}
        )
        after = {"rss": worker.memory_info().rss, **_health(worker)}
        deadline = time.monotonic() + 30
        health = _health(worker)
        while health["cache_bytes"] and time.monotonic() < deadline:
            time.sleep(0.1)
            health = _health(worker)
        time.sleep(4)  # one more health check by the supervisor, so /api/ps is current
        idle = {"rss": worker.memory_info().rss, **_health(worker)}
        (running,) = served.client.ps().models
    return {"weights": weights_bytes, "after": after, "idle": idle, "ps_size": running.size}


def report(ttft: dict[str, float], memory: dict[str, Any]) -> str:
    mib = 1 << 20
    lines = [
        "prompt-cache disk tier: TTFT of a request sharing a 2k-token prefix (median of 3)",
        f"  cold prefill           {ttft['cold'] * 1e3:8.1f} ms",
        f"  in-memory hit          {ttft['memory'] * 1e3:8.1f} ms"
        f"   ({ttft['memory'] / ttft['cold']:.0%} of cold)",
        f"  from disk after restart{ttft['disk'] * 1e3:8.1f} ms"
        f"   ({ttft['disk'] / ttft['cold']:.0%} of cold)",
        "idle memory of a worker (weights "
        f"{memory['weights'] / mib:.1f} MiB): after a 4k-token request / once idle",
    ]
    lines.append(f"  {'MLX peak during it':<22} {memory['after']['peak_bytes'] / mib:8.1f} MiB")
    for label, key in (("resident (RSS)", "rss"), ("MLX active", "active_bytes")):
        after, idle = memory["after"][key] / mib, memory["idle"][key] / mib
        lines.append(f"  {label:<22} {after:8.1f} / {idle:8.1f} MiB")
    lines.append(
        f"  {'MLX buffer cache':<22} {memory['after']['cache_bytes'] / mib:8.1f} / "
        f"{memory['idle']['cache_bytes'] / mib:8.1f} MiB"
    )
    lines.append(f"  /api/ps size (idle)    {memory['ps_size'] / mib:8.1f} MiB")
    return "\n".join(lines)


def measure(tmp: Path, say: Any = print) -> dict[str, Any]:
    """Both parts on a random llama 256 wide and 4 deep with an 8k context."""
    from tests.tinymodel import build_tiny_model

    model_dir = build_tiny_model(
        tmp / "residency-model",
        hidden_size=256,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=1024,
        vocab_size=4096,
        max_position_embeddings=8192,
    )
    weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    say("prompt-cache disk tier")
    ttft = prefix_ttft(model_dir)
    say("idle memory")
    return {"ttft": ttft, "memory": idle_memory(model_dir, weights)}


def report_of(figures: dict[str, Any]) -> str:
    return report(figures["ttft"], figures["memory"])
