"""The three systems behind one interface: in-process mlx_lm, ollmlx, mlx_lm.server.

Every system answers the same chat messages greedily with a fixed token count (the
random test models never emit EOS), so the token counts match across systems.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ollama
import openai

from .procs import cpu_seconds, env_without_preload, free_port, peak_rss, stop_process, wait_http

Messages = list[dict[str, str]]


@dataclass
class Stream:
    """One streamed answer, timed from the moment the request was sent."""

    ttft: float  # seconds to the first token
    total: float  # seconds to the last token
    tokens: int
    text: str

    @property
    def decode_tps(self) -> float:
        """Tokens/s after the first token: decoding only, no prefill."""
        return (self.tokens - 1) / (self.total - self.ttft) if self.tokens > 1 else 0.0


class System(ABC):
    name: str

    @abstractmethod
    def start(self, model_dir: Path) -> None: ...

    @abstractmethod
    def stream(self, messages: Messages, max_tokens: int) -> Stream: ...

    @abstractmethod
    def cold_start(self, model_dir: Path, messages: Messages) -> float:
        """Seconds from asking an unloaded model until its first token."""

    @abstractmethod
    def peak_memory(self) -> int:
        """Peak RSS in bytes of the processes holding the model."""

    @abstractmethod
    def stop(self) -> None: ...

    def supervisor_cpu(self) -> float | None:
        """CPU seconds used so far by a supervisor process, if the system has one."""
        return None

    def token_times(
        self, messages: Messages, max_tokens: int, until: threading.Event, times: list[float]
    ) -> bool:
        """Append perf_counter() of each streamed chunk to `times` as it comes, until `until`
        is set; False for a system that cannot serve two requests at once."""
        return False

    def concurrent(self, prompts: list[Messages], max_tokens: int) -> tuple[float, int]:
        """(wall seconds, tokens generated) for all prompts streamed at once."""
        started = time.perf_counter()
        with ThreadPoolExecutor(len(prompts)) as pool:
            streams = list(pool.map(lambda m: self.stream(m, max_tokens), prompts))
        return time.perf_counter() - started, sum(s.tokens for s in streams)

    def chat_turns(
        self, history: Messages, questions: tuple[str, str], max_tokens: int
    ) -> tuple[float, float]:
        """TTFT of a first turn after `history` (cold) and of the turn after it."""
        first = [*history, {"role": "user", "content": questions[0]}]
        one = self.stream(first, max_tokens)
        answer = {"role": "assistant", "content": one.text}
        two = self.stream([*first, answer, {"role": "user", "content": questions[1]}], 4)
        return one.ttft, two.ttft


class InProcess(System):
    """mlx_lm in this very process: the limit the other two are measured against."""

    name = "in-process"

    def start(self, model_dir: Path) -> None:
        from mlx_lm import load

        self.model: Any
        self.tokenizer: Any
        self.model, self.tokenizer = load(str(model_dir))[:2]

    def encode(self, messages: Messages) -> list[int]:
        # As the worker does: render the template, then encode without adding specials.
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def stream(
        self,
        messages: Messages,
        max_tokens: int,
        prompt: list[int] | None = None,
        cache: Any = None,
    ) -> Stream:
        from mlx_lm import stream_generate

        tokens = prompt if prompt is not None else self.encode(messages)
        started, ttft, count, text = time.perf_counter(), 0.0, 0, []
        for response in stream_generate(
            self.model, self.tokenizer, tokens, max_tokens=max_tokens, prompt_cache=cache
        ):
            ttft = ttft or time.perf_counter() - started
            count += 1
            text.append(response.text)
        return Stream(ttft, time.perf_counter() - started, count, "".join(text))

    def concurrent(self, prompts: list[Messages], max_tokens: int) -> tuple[float, int]:
        if len(prompts) == 1:
            one = self.stream(prompts[0], max_tokens)
            return one.total, one.tokens
        from mlx_lm import batch_generate

        encoded = [self.encode(m) for m in prompts]
        started = time.perf_counter()
        result = batch_generate(self.model, self.tokenizer, encoded, max_tokens=max_tokens)
        return time.perf_counter() - started, int(result.stats.generation_tokens)

    def chat_turns(
        self, history: Messages, questions: tuple[str, str], max_tokens: int
    ) -> tuple[float, float]:
        """As the base, with a KV cache kept between turns and trimmed to the shared prefix."""
        from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

        cache = make_prompt_cache(self.model)
        first = [*history, {"role": "user", "content": questions[0]}]
        prompt = self.encode(first)
        one = self.stream(first, max_tokens, prompt, cache)
        seen = prompt + self.tokenizer.encode(one.text, add_special_tokens=False)
        answer = {"role": "assistant", "content": one.text}
        second = self.encode([*first, answer, {"role": "user", "content": questions[1]}])
        shared = next(
            (i for i, (a, b) in enumerate(zip(seen, second, strict=False)) if a != b), len(seen)
        )
        shared = min(shared, len(second) - 1, cache[0].offset)
        trim_prompt_cache(cache, cache[0].offset - shared)
        two = self.stream([], 4, second[shared:], cache)
        return one.ttft, two.ttft

    def cold_start(self, model_dir: Path, messages: Messages) -> float:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.coldstart", str(model_dir), json.dumps(messages)],
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        took = time.perf_counter() - started
        self._cold_peak = int(json.loads(proc.stdout.readline())["peak_rss"])
        proc.wait()
        if line.strip() != b"first":
            raise RuntimeError("cold-start child failed")
        return took

    def peak_memory(self) -> int:
        # The bench process holds more than the model; the fresh cold-start child is fair.
        return getattr(self, "_cold_peak", 0)

    def stop(self) -> None:
        self.model = self.tokenizer = None


class Ollmlx(System):
    """`ollmlx serve` through the official ollama client, model created via the API."""

    name = "ollmlx"
    model = "bench"

    def __init__(self, extra_env: dict[str, str] | None = None) -> None:
        self._extra_env = extra_env or {}

    def start(self, model_dir: Path) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="ollmlx-bench-")
        self.port = free_port()
        env = env_without_preload()  # the runner adds OpenBLAS for the worker itself
        env = {k: v for k, v in env.items() if not k.startswith(("OLLAMA_", "OLLMLX_"))}
        env.update(
            OLLAMA_HOST=f"127.0.0.1:{self.port}",
            OLLMLX_MODELS=str(Path(self._tmp.name) / "models"),
            OLLAMA_KEEP_ALIVE="30m",
            # Streams past this limit would queue: allow the largest concurrency measured.
            OLLAMA_NUM_PARALLEL="16",
            HF_HUB_OFFLINE="1",
            **self._extra_env,
        )
        self._log = open(Path(self._tmp.name) / "server.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ollmlx", "serve"], env=env, stdout=self._log, stderr=self._log
        )
        wait_http(f"http://127.0.0.1:{self.port}/", self.proc)
        # One client for all threads (httpx pools connections): making a client costs
        # ~30 ms (its SSL context), which would otherwise land in every TTFT.
        self.client = ollama.Client(host=f"http://127.0.0.1:{self.port}")
        self.client.create(model=self.model, from_=str(model_dir))

    def stream(self, messages: Messages, max_tokens: int, fmt: Any = None) -> Stream:
        """`fmt`: a JSON Schema to constrain the answer to (the constrained-decoding figure)."""
        options = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": max_tokens}
        started, ttft, tokens, text = time.perf_counter(), 0.0, 0, []
        chunks = self.client.chat(self.model, messages, stream=True, options=options, format=fmt)
        for chunk in chunks:
            if not chunk.done:
                ttft = ttft or time.perf_counter() - started
                text.append(chunk.message.content or "")
            else:
                tokens = int(chunk.eval_count or 0)
        return Stream(ttft, time.perf_counter() - started, tokens, "".join(text))

    def token_times(
        self, messages: Messages, max_tokens: int, until: threading.Event, times: list[float]
    ) -> bool:
        options = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": max_tokens}
        for _ in self.client.chat(self.model, messages, stream=True, options=options):
            times.append(time.perf_counter())
            if until.is_set():
                break  # leaving the stream closes it: the server cancels the request
        return True

    def workers(self) -> list[int]:
        import psutil

        children = psutil.Process(self.proc.pid).children(recursive=True)
        return [c.pid for c in children if "ollmlx_worker" in " ".join(c.cmdline())]

    def supervisor_cpu(self) -> float | None:
        return cpu_seconds(self.proc.pid)

    def supervisor_rss(self) -> int:
        return peak_rss(self.proc.pid)

    def peak_memory(self) -> int:
        return sum(peak_rss(pid) for pid in self.workers())

    def cold_start(self, model_dir: Path, messages: Messages) -> float:
        self.client.generate(self.model, keep_alive=0)  # unload
        deadline = time.monotonic() + 30
        while self.client.ps().models and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.stream(messages, 1).ttft

    def stop(self) -> None:
        self.client.close()
        stop_process(self.proc)
        self._log.close()
        self._tmp.cleanup()


class MlxLmServer(System):
    """`python -m mlx_lm server` (the peer) through its OpenAI API."""

    name = "mlx_lm.server"

    def _spawn(self, model_dir: Path, port: int) -> subprocess.Popen[bytes]:
        args = ["--model", str(model_dir), "--port", str(port), "--log-level", "WARNING"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlx_lm", "server", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return proc

    def start(self, model_dir: Path) -> None:
        port = free_port()
        self.proc = self._spawn(model_dir, port)
        wait_http(f"http://127.0.0.1:{port}/v1/models", self.proc)
        self.api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")

    def stream(self, messages: Messages, max_tokens: int) -> Stream:
        return _openai_stream(self.api, messages, max_tokens)

    def token_times(
        self, messages: Messages, max_tokens: int, until: threading.Event, times: list[float]
    ) -> bool:
        chunks = self.api.chat.completions.create(  # type: ignore[call-overload]
            model="default_model",
            messages=messages,
            max_tokens=max_tokens,
            temperature=0.0,
            stream=True,
        )
        for _ in chunks:
            times.append(time.perf_counter())
            if until.is_set():
                chunks.close()
                break
        return True

    def cold_start(self, model_dir: Path, messages: Messages) -> float:
        # One model per server: cold means a new server, from spawn to first token.
        port = free_port()
        # Clients first: making one costs ~30 ms that is not the server's.
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none") as api:
            started = time.perf_counter()
            proc = self._spawn(model_dir, port)
            try:
                wait_http(f"http://127.0.0.1:{port}/v1/models", proc)
                first = _openai_stream(api, messages, 1)
                return time.perf_counter() - started - (first.total - first.ttft)
            finally:
                stop_process(proc)

    def peak_memory(self) -> int:
        return peak_rss(self.proc.pid)

    def stop(self) -> None:
        self.api.close()
        stop_process(self.proc)


def _openai_stream(api: openai.OpenAI, messages: Messages, max_tokens: int) -> Stream:
    started, ttft, tokens, text = time.perf_counter(), 0.0, 0, []
    chunks = api.chat.completions.create(  # type: ignore[call-overload]
        model="default_model",
        messages=messages,
        max_tokens=max_tokens,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            ttft = ttft or time.perf_counter() - started
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return Stream(ttft, time.perf_counter() - started, tokens, "".join(text))
