"""Speculative decoding in `make bench`: one model with a draft against the same model
without, through ollmlx (official client, real worker), 1 and 4 streams, in one run.

The pair is built here (tests/draftmodel.py): a random float32 llama whose layers past
the first are near-identity, and a draft made of its first layer and its head, so the
draft agrees with the target most of the time. Acceptance comes from the worker's own
count (its debug log line per answer).
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

from .served import Served, serve

SHAPE = {"hidden_size": 1024, "num_layers": 12, "num_heads": 16, "num_kv_heads": 8}
DAMPING = 0.003  # the later layers' weight on the residual stream: sets the acceptance
DRAFTS = 4  # draft_num_predict (Ollama's default)
PROMPTS = [
    "Tell me about the river",
    "Why does the robot paint at night?",
    "Describe the old library",
    "What did the teacher find in the garden?",
]
STATS = re.compile(r"speculative decoding: (\d+) tokens in (\d+) rounds, (\d+) of (\d+) drafts")


def build_pair(tmp: Path) -> tuple[Path, Path]:
    from tests.draftmodel import build_draft_pair

    return build_draft_pair(
        tmp / "spec-target", tmp / "spec-draft", damping=DAMPING, vocab_size=2048, **SHAPE
    )


def _answers(log: Path) -> list[tuple[int, ...]]:
    """(tokens, rounds, accepted, drafted) of each answer the worker decoded with the draft."""
    return [tuple(map(int, m.groups())) for m in STATS.finditer(log.read_text())]


def _acceptance(found: list[tuple[int, ...]]) -> dict[str, float]:
    tokens, rounds, accepted, drafted = (sum(f[i] for f in found) for i in range(4))
    return {
        "acceptance": accepted / drafted if drafted else 0.0,
        "tokens_per_round": tokens / rounds if rounds else 0.0,
    }


def measure(tmp: Path, tokens: int = 128, repeats: int = 3, say: Any = print) -> dict[str, Any]:
    target, draft = build_pair(tmp)
    with serve(OLLAMA_DEBUG="1") as served:
        served.client.create(model="plain", from_=str(target))
        modelfile = f"FROM {target}\nDRAFT {draft}\nPARAMETER draft_num_predict {DRAFTS}\n"
        served.create("spec", modelfile)
        for model in ("plain", "spec"):  # load and warm up
            served.generate(model, PROMPTS[0], 8)
        figures = _rounds(served, tokens, repeats, say)
        plain = served.generate("plain", PROMPTS[1], tokens).context
        spec = served.generate("spec", PROMPTS[1], tokens).context
        figures["identical"] = plain == spec
    figures["speedup_1"] = figures["spec"]["decode_1"] / figures["plain"]["decode_1"]
    figures["speedup_1_wall"] = figures["spec"]["wall_1"] / figures["plain"]["wall_1"]
    figures["speedup_4"] = figures["spec"]["aggregate_4"] / figures["plain"]["aggregate_4"]
    return figures


def _rounds(served: Served, tokens: int, repeats: int, say: Any) -> dict[str, Any]:
    """Each round takes both models in turn, so the machine's drift touches both alike."""
    samples: dict[str, dict[str, list[float]]] = {
        m: {"decode_1": [], "wall_1": [], "aggregate_4": []} for m in ("plain", "spec")
    }
    single: list[tuple[int, ...]] = []
    batched: list[tuple[int, ...]] = []
    for r in range(repeats):
        say(f"speculative decoding: round {r + 1} of {repeats}")
        for model in ("plain", "spec"):
            seen = len(_answers(served.log))
            one = served.generate(model, PROMPTS[r % len(PROMPTS)], tokens)
            samples[model]["decode_1"].append(one.decode_tps)
            samples[model]["wall_1"].append(one.wall_tps)
            single += _answers(served.log)[seen:]
            seen = len(_answers(served.log))
            wall, count = served.concurrent(model, PROMPTS, tokens)
            samples[model]["aggregate_4"].append(count / wall)
            batched += _answers(served.log)[seen:]
    figures: dict[str, Any] = {
        model: {name: statistics.median(values) for name, values in figures.items()}
        for model, figures in samples.items()
    }
    figures.update(_acceptance(single))
    figures["batched"] = _acceptance(batched)
    return figures


def report(figures: dict[str, Any]) -> str:
    plain, spec = figures["plain"], figures["spec"]
    rows = [
        "speculative decoding (ollmlx, greedy, draft = the target's first layer and head):",
        f"  {'':28}{'without draft':>15}{'with draft':>12}{'ratio':>8}",
        _row("decode tok/s, 1 stream", plain["decode_1"], spec["decode_1"]),
        _row("wall tok/s, 1 stream", plain["wall_1"], spec["wall_1"]),
        _row("aggregate tok/s, 4 streams", plain["aggregate_4"], spec["aggregate_4"]),
        f"  acceptance {figures['acceptance']:.0%} of drafts, "
        f"{figures['tokens_per_round']:.2f} tokens per round (k={DRAFTS}); 4 streams: "
        f"{figures['batched']['acceptance']:.0%} each, "
        f"{figures['batched']['tokens_per_round']:.2f} tokens per round per stream (the "
        "batch advances by its smallest accepted count)",
        f"  greedy output identical with and without the draft: {figures['identical']}",
        _target(figures),
    ]
    return "\n".join(rows)


def _row(name: str, without: float, with_draft: float) -> str:
    return f"  {name:28}{without:>15.1f}{with_draft:>12.1f}{with_draft / without:>7.2f}x"


def _target(figures: dict[str, Any]) -> str:
    met = figures["speedup_1"] >= 1.5 and figures["acceptance"] > 0.8
    return (
        f"  target: >= 1.5x single-stream decode at acceptance > 80%: "
        f"{'met' if met else 'NOT met'} ({figures['speedup_1']:.2f}x at "
        f"{figures['acceptance']:.0%})"
    )
