"""PNG plots: aggregate tokens/s against concurrency, and the warm TTFT distribution."""

from __future__ import annotations

from pathlib import Path

from .measures import Result


def draw(model: str, results: list[Result], out_dir: Path) -> list[Path]:
    """Two PNGs per model; none (with a note) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on CI or over SSH
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: pip install -e '.[bench]' for plots")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        levels = sorted(r.aggregate_tps)
        ax.plot(levels, [r.aggregate_tps[n] for n in levels], marker="o", label=r.system)
    ax.set(
        xlabel="concurrent streams",
        ylabel="aggregate tokens/s",
        title=f"Throughput vs concurrency ({model})",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    paths.append(out_dir / f"{model}-throughput.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.boxplot(
        [[t * 1e3 for t in r.ttft] for r in results],
        tick_labels=[r.system for r in results],
        showfliers=True,
    )
    ax.set(ylabel="time to first token (ms)", title=f"Warm TTFT distribution ({model})")
    ax.grid(alpha=0.3, axis="y")
    paths.append(out_dir / f"{model}-ttft.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths
