"""The figures of issue 6, each measured the same way on every system."""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .systems import Messages, Ollmlx, System

# Constrained decoding is measured on answers this schema forces to be long: a random
# model would otherwise close the JSON after a few tokens.
LONG_JSON = {
    "type": "array",
    "items": {"type": "string", "maxLength": 6},
    "minItems": 200,
}

QUESTION = {"role": "user", "content": "What next?"}
# A pause before each system's turn in a round: BLAS threads spin for a while after
# their last call (OpenBLAS ~0.1 s), and would slow down whichever system comes next.
SETTLE = 0.3

WORDS = """the a small large quick slow bright dark old new cat dog bird river mountain city
garden forest ocean teacher student engineer robot window morning evening runs walks reads
writes builds paints finds opens quietly happily slowly often never always over under near
with without because while""".split()


@dataclass(frozen=True)
class Plan:
    """How much to measure: modest counts keep a full run near ten minutes on 2 cores."""

    decode_tokens: int = 128
    ttft_samples: int = 12
    concurrency: tuple[int, ...] = (1, 4, 8, 16)
    # Long enough that decoding, not the prefill of the first step, sets the rate.
    stream_tokens: int = 64
    history_tokens: int = 1000
    warmups: int = 2
    # Throughput figures are medians of this many runs: on a shared machine one run can
    # be tens of percent off, which swamps the differences being measured.
    repeats: int = 3


@dataclass
class Result:
    system: str
    decode_tps: float = 0.0
    wall_tps: float = 0.0  # the same streams: tokens / (request to last token)
    constrained_decode_tps: float = 0.0  # ollmlx only: with a JSON Schema `format`
    ttft: list[float] = field(default_factory=list)
    aggregate_tps: dict[int, float] = field(default_factory=dict)
    supervisor_cpu_per_token: dict[int, float] = field(default_factory=dict)
    cold_turn_ttft: float = 0.0
    # A stream running while a long prompt joins: its longest wait for a token, and the
    # joining prompt's TTFT (servers only). Chunked prefill keeps the first well below.
    join_stall: float = 0.0
    join_ttft: float = 0.0
    second_turn_ttft: float = 0.0
    cold_start: float = 0.0
    peak_memory: int = 0
    supervisor_rss: int = 0

    @property
    def ttft_p50(self) -> float:
        return percentile(self.ttft, 50)

    @property
    def ttft_p95(self) -> float:
        return percentile(self.ttft, 95)

    def as_dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "decode_tps": self.decode_tps,
            "wall_tps": self.wall_tps,
            "constrained_decode_tps": self.constrained_decode_tps,
            "ttft_s": self.ttft,
            "ttft_p50_s": self.ttft_p50,
            "ttft_p95_s": self.ttft_p95,
            "aggregate_tps": self.aggregate_tps,
            "supervisor_cpu_s_per_token": self.supervisor_cpu_per_token,
            "cold_turn_ttft_s": self.cold_turn_ttft,
            "join_stall_s": self.join_stall,
            "join_ttft_s": self.join_ttft,
            "second_turn_ttft_s": self.second_turn_ttft,
            "cold_start_s": self.cold_start,
            "peak_memory_bytes": self.peak_memory,
            "supervisor_rss_bytes": self.supervisor_rss,
        }


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    # Nearest rank: with a dozen samples, interpolation would invent precision.
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def prompt(i: int, words: int = 12) -> Messages:
    """A short, distinct chat prompt: different texts keep prompt caches from helping."""
    rng = random.Random(i)
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return [{"role": "user", "content": f"Request {i}: {text}"}]


def history(tokens: int, seed: int) -> Messages:
    """A chat history of about `tokens` tokens (a word is ~1.3 tokens here), unique per seed."""
    rng = random.Random(seed)
    words = [rng.choice(WORDS) for _ in range(int(tokens / 1.3))]
    half = len(words) // 2
    return [
        {"role": "system", "content": f"Session {seed}."},
        {"role": "user", "content": " ".join(words[:half])},
        {"role": "assistant", "content": " ".join(words[half:])},
    ]


def measure_all(
    systems: list[System], model_dir: Path, plan: Plan, seed: int, say: Callable[[str], None]
) -> list[Result]:
    """Every figure for every system on one model; `seed` makes this run's prompts unique.

    All systems are up at once and each round measures every system once, in turn: the
    machine's drift over a run then hits all of them alike and the ratios stay fair.
    """
    results = [Result(system.name) for system in systems]
    pairs = list(zip(systems, results, strict=True))
    base = seed * 1000
    running: list[System] = []
    try:
        for system in systems:
            say(f"starting {system.name}")
            system.start(model_dir)
            running.append(system)
            for i in range(plan.warmups):
                system.stream(prompt(base + i), 8)
        say("decode, TTFT")
        _decode(pairs, plan, base)
        for i in range(plan.ttft_samples):
            for system, result in pairs:
                time.sleep(SETTLE)
                result.ttft.append(system.stream(prompt(base + 20 + i), 1).ttft)
        for n in plan.concurrency:
            say(f"{n} concurrent streams")
            _concurrency(pairs, plan, base, n)
        say("chat turns, a long prompt joining, memory, cold starts")
        for system, result in pairs:
            result.cold_turn_ttft, result.second_turn_ttft = system.chat_turns(
                history(plan.history_tokens, seed), ("What next?", "And then?"), 8
            )
            result.join_stall, result.join_ttft = stall_during_join(system, plan, seed)
            result.peak_memory = system.peak_memory()
            if isinstance(system, Ollmlx):
                result.supervisor_rss = system.supervisor_rss()
        for system, result in pairs:
            result.cold_start = statistics.median(
                system.cold_start(model_dir, prompt(base + 990 + r)) for r in range(plan.repeats)
            )
            if not result.peak_memory:  # in-process: known only after the cold-start child
                result.peak_memory = system.peak_memory()
    finally:
        for system in running:
            system.stop()
    return results


def _decode(pairs: list[tuple[System, Result]], plan: Plan, base: int) -> None:
    """Single-stream decode rates (and, for ollmlx, under a JSON Schema), medians of rounds."""
    for system, _ in pairs:
        if isinstance(system, Ollmlx):
            system.stream(prompt(base + 39), 8, LONG_JSON)  # builds the grammar tokenizer once
    free: dict[str, list[float]] = {r.system: [] for _, r in pairs}
    wall: dict[str, list[float]] = {r.system: [] for _, r in pairs}
    constrained: list[float] = []
    for r in range(plan.repeats):
        for system, result in pairs:
            time.sleep(SETTLE)
            answer = system.stream(prompt(base + 10 + r), plan.decode_tokens)
            free[result.system].append(answer.decode_tps)
            wall[result.system].append(answer.tokens / answer.total)
            if isinstance(system, Ollmlx):
                answer = system.stream(prompt(base + 40 + r), plan.decode_tokens, LONG_JSON)
                constrained.append(answer.decode_tps)
    for system, result in pairs:
        result.decode_tps = statistics.median(free[result.system])
        result.wall_tps = statistics.median(wall[result.system])
        if isinstance(system, Ollmlx):
            result.constrained_decode_tps = statistics.median(constrained)


def _concurrency(pairs: list[tuple[System, Result]], plan: Plan, base: int, n: int) -> None:
    """Aggregate tokens/s of n streams at once (median of rounds), supervisor CPU/token."""
    rates: dict[str, list[float]] = {r.system: [] for _, r in pairs}
    cpu: dict[str, float] = {r.system: 0.0 for _, r in pairs}
    tokens: dict[str, int] = {r.system: 0 for _, r in pairs}
    for r in range(plan.repeats):
        for system, result in pairs:
            time.sleep(SETTLE)
            prompts = [prompt(base + 10_000 * r + 100 * n + i) for i in range(n)]
            cpu_before = system.supervisor_cpu()
            wall, count = system.concurrent(prompts, plan.stream_tokens)
            cpu_after = system.supervisor_cpu()
            rates[result.system].append(count / wall)
            tokens[result.system] += count
            if cpu_before is not None and cpu_after is not None:
                cpu[result.system] += cpu_after - cpu_before
    for system, result in pairs:
        result.aggregate_tps[n] = statistics.median(rates[result.system])
        if system.supervisor_cpu() is not None and tokens[result.system]:
            result.supervisor_cpu_per_token[n] = cpu[result.system] / tokens[result.system]


def stall_during_join(system: System, plan: Plan, seed: int) -> tuple[float, float]:
    """(longest gap between a running stream's tokens, TTFT of the joining request) while
    a request with a 2x-history-length prompt joins. (0, 0) for in-process."""
    until, times = threading.Event(), []

    def run() -> None:
        # Longer than the joining prefill lasts; the stream is left once that is timed.
        system.token_times(prompt(seed * 1000 + 500), 3000, until, times)

    runner = threading.Thread(target=run)
    runner.start()
    deadline = time.monotonic() + 120
    while len(times) < 3 and runner.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)  # wait for the running stream's first tokens
    if not runner.is_alive():  # in-process: no server to run two requests at once
        runner.join()
        return 0.0, 0.0
    joined = time.perf_counter()
    ttft = system.stream([*history(2 * plan.history_tokens, seed + 77), QUESTION], 1).ttft
    until.set()
    runner.join()
    window = [t for t in times if t >= joined]
    gaps = [b - a for a, b in zip([joined, *window], window, strict=False)]
    return max(gaps, default=0.0), ttft
