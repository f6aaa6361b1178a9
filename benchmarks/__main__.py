"""`python -m benchmarks [--quick] [--model tiny|100m|all]`: issue 6's benchmark.

Runs in-process mlx_lm (the limit), ollmlx (official ollama client over HTTP) and
mlx_lm.server (OpenAI API) on the same random-weight models and prompts, one after the
other in this process tree; prints a table with ratios against in-process, checks the
targets, compares OpenBLAS with MLX's bundled BLAS, writes JSON and PNG plots.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ollmlx.serving.openblas import find_openblas, with_openblas

from . import blas, group, plots, report
from .measures import Plan, measure_all
from .systems import InProcess, MlxLmServer, Ollmlx, System

RESULTS = Path(__file__).resolve().parent / "results"
QUICK = Plan(
    decode_tokens=32, ttft_samples=6, concurrency=(1, 4, 8), stream_tokens=16, warmups=1, repeats=1
)
SIZES = {"tiny": 0, "100m": 100_000_000}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples; tiny model only")
    parser.add_argument("--model", choices=[*SIZES, "all"], default=None)
    parser.add_argument(
        "--systems", default="in-process,ollmlx,mlx_lm.server", help="comma-separated"
    )
    parser.add_argument(
        "--no-openblas", action="store_true", help="all systems on MLX's bundled BLAS"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--no-group", action="store_true", help="skip the 2-rank group row (benchmarks/group.py)"
    )
    parser.add_argument(
        "--speculative", action="store_true", help="only the speculative-decoding figures"
    )
    parser.add_argument("--kv-cache", action="store_true", help="only the KV-cache figures")
    parser.add_argument(
        "--per-token", action="store_true", help="only the per-token figures (256x4, 1024x8)"
    )
    parser.add_argument(
        "--residency", action="store_true", help="only the disk-tier TTFT and idle memory"
    )
    return parser.parse_args(argv)


def ensure_openblas(args: argparse.Namespace) -> None:
    """Re-run under the OpenBLAS preload that ollmlx workers get, so the limit is fair."""
    path = find_openblas()
    if args.no_openblas or path is None or path in os.environ.get("LD_PRELOAD", "").split():
        return
    env = with_openblas(dict(os.environ))
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks", *sys.argv[1:]], env)


def build_model(kind: str, tmp: Path) -> Path:
    from tests.tinymodel import build_model_of_size, build_tiny_model

    out = tmp / kind
    return build_tiny_model(out) if not SIZES[kind] else build_model_of_size(out, SIZES[kind])


def make_systems(names: list[str], no_openblas: bool) -> list[System]:
    extra = {"OLLMLX_NO_OPENBLAS": "1"} if no_openblas else {}
    known: dict[str, System] = {
        "in-process": InProcess(),
        "ollmlx": Ollmlx(extra),
        "mlx_lm.server": MlxLmServer(),
    }
    # In-process first: every other figure is a ratio against it.
    return [known["in-process"], *(known[n] for n in names if n != "in-process")]


EXTRAS = ("per_token", "residency", "speculative", "kv_cache")


def run_extra(name: str, tmp: Path, started: float) -> dict[str, Any]:
    """Issue 16's figures: each part measures and reports on its own."""
    from . import kvcache, pertoken, residency, speculative

    def say(what: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {what} ...", flush=True)

    figures: dict[str, Any]
    if name == "per_token":
        figures = pertoken.measure(tmp, say=say)
        text = pertoken.report(figures)
        checks = pertoken.targets(figures)
        text += "\ntargets (ollmlx vs in-process, same run):\n" + report.format_targets(checks)
        figures["targets"] = [{"target": n, "met": ok, "value": v} for n, ok, v in checks]
    elif name == "residency":
        figures = residency.measure(tmp, say=say)
        text = residency.report_of(figures)
    else:
        module = {"speculative": speculative, "kv_cache": kvcache}[name]
        figures = module.measure(tmp, say=say)
        text = module.report(figures)
    print()
    print(text)
    print()
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_openblas(args)
    plan = QUICK if args.quick else Plan()
    model = args.model or ("tiny" if args.quick else "all")
    kinds = list(SIZES) if model == "all" else [model]
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs: dict[str, Any] = {"plan": plan.__dict__, "openblas": not args.no_openblas}
    started = time.perf_counter()
    # A full run starts with issue 16's figures (per-token overhead, disk tier and idle
    # memory, speculative decoding, KV cache); each flag runs that part alone.
    extras = [name for name in EXTRAS if getattr(args, name)]
    if extras:
        kinds = []
    elif not args.quick and args.model is None:  # `--model X` measures that model only
        extras = list(EXTRAS)
    with tempfile.TemporaryDirectory(prefix="ollmlx-bench-models-") as tmp:
        for name in extras:
            runs[name] = run_extra(name, Path(tmp), started)
        for seed, kind in enumerate(kinds, start=1):
            model_dir = build_model(kind, Path(tmp))

            def say(what: str, kind: str = kind) -> None:
                print(f"[{time.perf_counter() - started:6.0f}s] {kind}: {what} ...", flush=True)

            systems = make_systems(names, args.no_openblas)
            results = measure_all(systems, model_dir, plan, seed, say)
            print()
            print(report.table(kind, results, plan.concurrency))
            checks = report.targets(results)
            print("targets (ollmlx vs in-process, same run):")
            print(report.format_targets(checks))
            runs[kind] = {
                "results": [r.as_dict() for r in results],
                "targets": [{"target": t, "met": ok, "value": v} for t, ok, v in checks],
            }
            if kind != "tiny" and not args.no_openblas:
                runs[kind]["openblas"] = blas.compare(model_dir)
                print(report.format_blas(runs[kind]["openblas"]))
            for path in plots.draw(kind, results, args.out):
                print(f"plot: {path}")
            if "ollmlx" in names and not args.no_group:
                say("2-rank group")
                runs[kind]["group"] = group.measure(model_dir, quick=args.quick)
                print(group.table(kind, runs[kind]["group"]))
            print()
    out = args.out / f"bench-{stamp}.json"
    report.write_json(out, runs)
    print(f"results: {out} ({time.perf_counter() - started:.0f}s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
