"""`python -m benchmarks.soak [--duration 300] [--clients 16] [--seed 11] [--json FILE]`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from .plan import SoakPlan
from .run import run_soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of traffic")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", type=Path, help="write every outcome and snapshot here")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (server log)")
    args = parser.parse_args(argv)
    if not 10 <= args.duration <= 540:
        parser.error("--duration must be between 10 and 540 seconds (the run stays under 10 min)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "openai", "anthropic"):  # a line per request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    plan = SoakPlan(duration=args.duration, clients=args.clients, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="ollmlx-soak-") as tmp:
        workdir = args.keep or Path(tmp)
        report = run_soak(plan, workdir)
    print(report.render())
    if args.json:
        data = {
            "plan": asdict(plan),
            "outcomes": [asdict(o) for o in report.outcomes],
            "chaos": [asdict(e) for e in report.events],
            "start": asdict(report.start),
            "end": asdict(report.end),
            "failures": report.failures(),
        }
        args.json.write_text(json.dumps(data, indent=1, default=str))
    return 1 if report.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
