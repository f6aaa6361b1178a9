"""Issue 16's per-token figures: what the serving path costs on small, fast models.

Side by side in one run (OpenBLAS for every system, official clients, 128-token greedy
streams, ollmlx with `repeat_penalty 1.0`), on a random llama 256 wide and 4 deep and
on one 1024 wide and 8 deep: a single stream (wall time from request to last token, and
decoding only) and 8 streams at once (tokens over the wall time from the first request
to the last token), ollmlx against in-process `stream_generate` / `batch_generate` and
against `mlx_lm.server`, and against the thinnest server there can be (`thinserver.py`:
the official client reading in-process generation): what the client alone costs. Every
system takes its turn in each round; medians of rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .measures import SETTLE, prompt
from .systems import InProcess, MlxLmServer, Ollmlx, System
from .thinserver import ThinServer

SHAPES: dict[str, dict[str, int]] = {
    "256x4": {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2,
              "intermediate_size": 1024, "vocab_size": 4096},
    "1024x8": {"hidden_size": 1024, "num_layers": 8, "num_heads": 16, "num_kv_heads": 4,
               "intermediate_size": 2816, "vocab_size": 4096},
}  # fmt: skip
TOKENS = 128
STREAMS = 8
TTFT_SAMPLES = 6  # one-token requests a round, each system in turn
# Issue 16's targets, on the 256 x 4 model.
SINGLE_TARGET, STREAMS_TARGET = 0.97, 0.85


def measure(
    tmp: Path, repeats: int = 3, say: Callable[[str], None] = print, no_openblas: bool = False
) -> dict[str, Any]:
    extra = {"OLLMLX_NO_OPENBLAS": "1"} if no_openblas else {}
    figures: dict[str, Any] = {}
    for shape, dims in SHAPES.items():
        from tests.tinymodel import build_tiny_model

        model_dir = build_tiny_model(tmp / f"pertoken-{shape}", seed=5, **dims)
        systems: list[System] = [InProcess(), Ollmlx(extra), MlxLmServer(), ThinServer()]
        for system in systems:
            say(f"{shape}: starting {system.name}")
            system.start(model_dir)
            system.stream(prompt(1), 8)  # warm up
        try:
            figures[shape] = _rounds(systems, repeats, lambda w, s=shape: say(f"{s}: {w}"))
        finally:
            for system in systems:
                system.stop()
    return figures


def _rounds(
    systems: list[System], repeats: int, say: Callable[[str], None]
) -> dict[str, dict[str, float]]:
    samples: dict[str, dict[str, list[float]]] = {
        s.name: {"wall_1": [], "decode_1": [], "ms_per_token": [], "wall_8": [], "ttft_ms": []}
        for s in systems
    }
    for r in range(repeats):
        say(f"round {r + 1} of {repeats}")
        for system in systems:
            time.sleep(SETTLE)
            one = system.stream(prompt(100 + r), TOKENS)
            mine = samples[system.name]
            mine["wall_1"].append(one.tokens / one.total)
            mine["decode_1"].append(one.decode_tps)
            mine["ms_per_token"].append(1e3 / one.decode_tps if one.decode_tps else 0.0)
            time.sleep(SETTLE)
            prompts = [prompt(1000 * (r + 1) + i) for i in range(STREAMS)]
            wall, count = system.concurrent(prompts, TOKENS)
            mine["wall_8"].append(count / wall)
        for i in range(TTFT_SAMPLES):  # warm TTFT, interleaved: request to first token
            for system in systems:
                time.sleep(SETTLE)
                first = system.stream(prompt(5000 * (r + 1) + i), 1)
                samples[system.name]["ttft_ms"].append(first.ttft * 1e3)
    return {
        name: {key: statistics.median(values) for key, values in figures.items()}
        for name, figures in samples.items()
    }


def ratios(shape: dict[str, dict[str, float]]) -> dict[str, float]:
    ours, base, peer = shape["ollmlx"], shape["in-process"], shape["mlx_lm.server"]
    got = {
        "single_wall": ours["wall_1"] / base["wall_1"],
        "single_decode": ours["decode_1"] / base["decode_1"],
        "streams_vs_batch_generate": ours["wall_8"] / base["wall_8"],
        "streams_vs_mlx_lm_server": ours["wall_8"] / peer["wall_8"],
    }
    if "ttft_ms" in ours:
        got["ttft_extra_ms"] = ours["ttft_ms"] - base["ttft_ms"]
    thin = shape.get(ThinServer.name)
    if thin is not None:  # the ceiling: only the official client between it and in-process
        got["thin_single_wall"] = thin["wall_1"] / base["wall_1"]
        got["thin_streams"] = thin["wall_8"] / base["wall_8"]
        if "ttft_ms" in thin:
            got["thin_ttft_extra_ms"] = thin["ttft_ms"] - base["ttft_ms"]
    return got


def targets(figures: dict[str, Any]) -> list[tuple[str, bool, str]]:
    if "256x4" not in figures:
        return []
    got = ratios(figures["256x4"])
    return [
        (
            f"256x4: single stream >= {SINGLE_TARGET:.2f} of in-process (wall)",
            got["single_wall"] >= SINGLE_TARGET,
            f"{got['single_wall']:.2f}",
        ),
        (
            f"256x4: {STREAMS} streams >= {STREAMS_TARGET:.2f} of batch_generate (wall)",
            got["streams_vs_batch_generate"] >= STREAMS_TARGET,
            f"{got['streams_vs_batch_generate']:.2f}",
        ),
    ]


def report(figures: dict[str, Any]) -> str:
    lines = [
        f"per-token overhead: {TOKENS}-token greedy streams, tok/s (median of rounds); "
        "wall = request to last token, decode = after the first token"
    ]
    for shape, by_system in figures.items():
        ms = by_system["in-process"]["ms_per_token"]
        lines.append(f"  {shape} (in-process {ms:.2f} ms a token)")
        lines.append(
            f"    {'system':<16} {'1 wall':>9} {'1 decode':>9} {f'{STREAMS} streams wall':>16}"
        )
        for name, row in by_system.items():
            lines.append(
                f"    {name:<16} {row['wall_1']:9.1f} {row['decode_1']:9.1f} {row['wall_8']:16.1f}"
            )
        got = ratios(by_system)
        lines.append(
            f"    ollmlx single / in-process: {got['single_wall']:.2f} wall, "
            f"{got['single_decode']:.2f} decode; {STREAMS} streams / batch_generate: "
            f"{got['streams_vs_batch_generate']:.2f}; / mlx_lm.server: "
            f"{got['streams_vs_mlx_lm_server']:.2f}"
        )
        if "thin_single_wall" in got:
            lines.append(
                f"    thinnest server (in-process generation, one socket write a token, the "
                f"official client) / in-process: {got['thin_single_wall']:.2f} single wall, "
                f"{got['thin_streams']:.2f} at {STREAMS} streams: what the client costs"
            )
        if "ttft_extra_ms" in got:
            base = by_system["in-process"]["ttft_ms"]
            thin = got.get("thin_ttft_extra_ms")
            lines.append(
                f"    warm TTFT (median of {TTFT_SAMPLES} a round): in-process {base:.1f} ms "
                f"(prefill and first token only), ollmlx {got['ttft_extra_ms']:+.1f} ms"
                + (
                    f", thinnest server {thin:+.1f} ms (its template, tokenizer and the "
                    "official client: the floor of any server)"
                    if thin is not None
                    else ""
                )
            )
    return "\n".join(lines)
