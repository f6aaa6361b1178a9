"""The printed table, the targets of issue 6, and the JSON file.

Every figure is shown with its ratio against in-process mlx_lm measured in the same
run: absolute times drift on shared machines, ratios much less.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .measures import Result

WIDTH = 27  # one system's column: value, unit, (ratio)
Row = tuple[str, Callable[[Result], float | None], str]


def rows(levels: tuple[int, ...]) -> list[Row]:
    """(label, getter, unit) per line of the table."""
    table: list[Row] = [
        ("decode tok/s, 1 stream", lambda r: r.decode_tps, "tok/s"),
        ("wall tok/s, 1 stream", lambda r: r.wall_tps or None, "tok/s"),
        ("decode tok/s, JSON Schema", lambda r: r.constrained_decode_tps or None, "tok/s"),
        ("warm TTFT p50", lambda r: r.ttft_p50 * 1e3, "ms"),
        ("warm TTFT p95", lambda r: r.ttft_p95 * 1e3, "ms"),
    ]
    for n in levels:
        table.append((f"aggregate tok/s, {n} streams", _level(n), "tok/s"))
    table += [
        ("8 streams / 1 stream", _scaling, "x"),
        ("TTFT cold turn (1k history)", lambda r: r.cold_turn_ttft * 1e3, "ms"),
        ("TTFT second turn", lambda r: r.second_turn_ttft * 1e3, "ms"),
        ("second / cold turn", _turn_ratio, "%"),
        ("longest stall while 2k prompt joins", lambda r: r.join_stall * 1e3 or None, "ms"),
        ("TTFT of the joining 2k prompt", lambda r: r.join_ttft * 1e3 or None, "ms"),
        ("cold start to first token", lambda r: r.cold_start * 1e3, "ms"),
        ("supervisor CPU per token", _cpu_per_token, "ms"),
        ("peak memory (model procs)", lambda r: r.peak_memory / 2**20, "MiB"),
        ("supervisor peak RSS", lambda r: (r.supervisor_rss / 2**20) or None, "MiB"),
    ]
    return table


def _level(n: int) -> Callable[[Result], float | None]:
    return lambda r: r.aggregate_tps.get(n)


def _scaling(r: Result) -> float | None:
    one, eight = r.aggregate_tps.get(1), r.aggregate_tps.get(8)
    return eight / one if one and eight else None


def _turn_ratio(r: Result) -> float | None:
    return 100 * r.second_turn_ttft / r.cold_turn_ttft if r.cold_turn_ttft else None


def _cpu_per_token(r: Result) -> float | None:
    values = list(r.supervisor_cpu_per_token.values())
    return 1e3 * sum(values) / len(values) if values else None


def table(model: str, results: list[Result], levels: tuple[int, ...]) -> str:
    """Columns: each system's value, with `(x.xx)` = value / in-process value."""
    base = results[0]
    head = f"{'model ' + model:<32}" + "".join(f"{r.system:>{WIDTH}}" for r in results)
    lines = [head, "-" * len(head)]
    for label, get, unit in rows(levels):
        cells = []
        for r in results:
            value, ref = get(r), get(base)
            if value is None:
                cells.append("-")
                continue
            ratio = f" ({value / ref:5.2f})" if ref and r is not base else " " * 8
            cells.append(f"{value:.1f} {unit:<5}{ratio}")
        lines.append(f"{label:<32}" + "".join(f"{c:>{WIDTH}}" for c in cells))
    return "\n".join(lines)


def targets(results: list[Result]) -> list[tuple[str, bool, str]]:
    """Issue 6's (and 16's) targets for ollmlx, as (target, met, the figures behind it)."""
    by = {r.system: r for r in results}
    base, ours, peer = by["in-process"], by.get("ollmlx"), by.get("mlx_lm.server")
    if ours is None:
        return []
    out = []
    ratio = ours.decode_tps / base.decode_tps
    out.append(("single stream >= 98% of in-process", ratio >= 0.98, f"{ratio:.1%}"))
    if ours.constrained_decode_tps:
        kept = ours.constrained_decode_tps / ours.decode_tps
        out.append(("JSON Schema decoding >= 90% of free decoding", kept >= 0.9, f"{kept:.1%}"))
        # Issue 16's, stricter:
        out.append(("JSON Schema decoding >= 95% of free (issue 16)", kept >= 0.95, f"{kept:.1%}"))
    extra = (ours.ttft_p50 - base.ttft_p50) * 1e3
    out.append(("warm TTFT p50 <= in-process + 5 ms", extra <= 5, f"{extra:+.1f} ms"))
    out.append(("warm TTFT p50 <= in-process + 2 ms (issue 16)", extra <= 2, f"{extra:+.1f} ms"))
    scale = _scaling(ours)
    if scale is not None:
        out.append(("8 streams >= 3.5x single", scale >= 3.5, f"{scale:.2f}x"))
    if peer is not None and 8 in ours.aggregate_tps and 8 in peer.aggregate_tps:
        vs = ours.aggregate_tps[8] / peer.aggregate_tps[8]
        out.append(("8 streams >= mlx_lm.server", vs >= 1.0, f"{vs:.2f}x of it"))
    turn = _turn_ratio(ours)
    if turn is not None:
        out.append(("second-turn TTFT <= 25% of cold", turn <= 25, f"{turn:.0f}%"))
    if ours.join_ttft:
        share = ours.join_stall / ours.join_ttft
        out.append(("a 2k prefill stalls running streams < 50% of it", share < 0.5, f"{share:.0%}"))
    cold = (ours.cold_start - base.cold_start) * 1e3
    out.append(("cold start <= in-process + 300 ms", cold <= 300, f"{cold:+.0f} ms"))
    return out


def format_targets(checks: list[tuple[str, bool, str]]) -> str:
    return "\n".join(f"  [{'ok' if ok else 'MISS'}] {name}: {why}" for name, ok, why in checks)


def format_blas(blas: dict[str, Any] | None) -> str:
    if blas is None:
        return "OpenBLAS preload: no system OpenBLAS found (apt-get install libopenblas0-pthread)"
    w, wo, s = blas["with"], blas["without"], blas["speedup"]
    return "\n".join(
        [
            f"OpenBLAS preload ({blas['library']}; mapped in process: {w['openblas_mapped']}):",
            f"  {'':<22}{'without':>10}{'with':>10}{'speed-up':>10}",
            *(
                f"  {label:<22}{wo[key]:>10.1f}{w[key]:>10.1f}{s[key]:>9.1f}x"
                for label, key in (
                    ("matmul 1024 GFLOP/s", "matmul_gflops"),
                    ("prefill tok/s", "prefill_tps"),
                    ("decode tok/s", "decode_tps"),
                )
            ),
        ]
    )


def write_json(path: Path, runs: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "processor": platform.processor()}
    path.write_text(json.dumps({"meta": meta, **runs}, indent=2, default=str) + "\n")
