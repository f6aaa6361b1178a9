"""The per-token bench's verdicts: each ratio is the median of its rounds' own ratios
(a round's turns are seconds apart; runs on shared cores differ far more)."""

from __future__ import annotations

from typing import Any

from benchmarks.pertoken import ratios, targets


def _row(wall_1: list[float], wall_8: list[float], ttft: list[float]) -> dict[str, Any]:
    rounds = {"wall_1": wall_1, "decode_1": wall_1, "wall_8": wall_8, "ttft_ms": ttft}
    row: dict[str, Any] = {k: sorted(v)[len(v) // 2] for k, v in rounds.items()}
    return {**row, "rounds": rounds}


def test_a_ratio_is_the_median_of_the_rounds_ratios_not_a_ratio_of_medians() -> None:
    # Round 3 ran on a busy machine for ollmlx only: paired, it is one bad round of three;
    # medians taken apart (100 / 200) would call the whole run 0.5.
    base = _row([100.0, 300.0, 200.0], [1000.0, 400.0, 3000.0], [5.0, 9.0, 4.0])
    ours = _row([90.0, 297.0, 100.0], [900.0, 360.0, 2700.0], [7.0, 12.0, 5.0])
    peer = _row([1.0, 1.0, 1.0], [450.0, 180.0, 1350.0], [1.0, 1.0, 1.0])
    shape = {"in-process": base, "ollmlx": ours, "mlx_lm.server": peer}
    got = ratios(shape)
    assert (got["single_wall"], got["single_wall_low"], got["single_wall_high"]) == (
        0.9,
        0.5,
        0.99,
    )
    assert got["streams_vs_batch_generate"] == got["streams_vs_batch_generate_low"] == 0.9
    assert got["streams_vs_mlx_lm_server"] == 2.0
    extra = (got["ttft_extra_ms"], got["ttft_extra_ms_low"], got["ttft_extra_ms_high"])
    assert extra == (2.0, 1.0, 3.0)
    verdicts = {name: ok for name, ok, _ in targets({"256x4": shape})}
    assert verdicts == {
        "256x4: single stream >= 0.97 of in-process (wall)": False,
        "256x4: 8 streams >= 0.85 of batch_generate (wall)": True,
    }


def test_a_result_saved_without_rounds_gives_the_ratio_of_its_medians() -> None:
    base = {"wall_1": 100.0, "decode_1": 100.0, "wall_8": 400.0, "ttft_ms": 5.0}
    ours = {"wall_1": 95.0, "decode_1": 96.0, "wall_8": 360.0, "ttft_ms": 8.0}
    got = ratios({"in-process": base, "ollmlx": ours, "mlx_lm.server": base})
    assert got["single_wall"] == got["single_wall_low"] == 0.95
    assert got["streams_vs_batch_generate"] == 0.9
    assert got["ttft_extra_ms"] == 3.0
