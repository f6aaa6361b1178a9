"""The group row of `make bench`: one model on a 2-rank loopback group against one process.

One `ollmlx serve` with a hostfile of two 127.0.0.1 entries holds the same weights three
ways: one process, a tensor-parallel group and a pipeline-parallel one. The weights are a
qwen2 twin of the bench's llama model (same shape): llama has no `pipeline()` in mlx-lm.
Each is driven through the official client, greedily, and the group's figures are printed
as ratios against one process measured in the same run.

On one machine a group can only be slower: both ranks share its cores, and every decode
step adds collectives over loopback TCP. How many: tensor parallelism sums each layer's
attention and MLP outputs (2 `all_sum` per layer), pipeline parallelism hands the
activations from stage to stage (`send`/`recv` per boundary) and gathers the last one
(`all_gather`); lockstep adds one `all_sum` header per step. The latency of one small
`all_sum` here (measured under mlx.launch by this module) times those counts is the
floor a group pays per token; the rest is the compute the ranks no longer share.

    python -m benchmarks.group [--model tiny|100m]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import ollama

from .procs import env_without_preload, free_port, stop_process, wait_http

HOSTS = {"backend": "ring", "hosts": [{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}] * 2}
DECODE_TOKENS, STREAM_TOKENS, STREAMS, REPEATS = 128, 64, 8, 3
QUESTION = [{"role": "user", "content": "What next?"}]


def qwen2_twin(model_dir: Path, out: Path) -> Path:
    """A random qwen2 model of the shape of `model_dir`'s (it has both shard() and pipeline())."""
    from tests.tinymodel import build_tiny_model

    config = json.loads((model_dir / "config.json").read_text())
    return build_tiny_model(
        out,
        hidden_size=config["hidden_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        num_kv_heads=config["num_key_value_heads"],
        intermediate_size=config["intermediate_size"],
        vocab_size=config["vocab_size"],
        model_type="qwen2",
    )


def measure(model_dir: Path, quick: bool = False) -> dict[str, Any]:
    """Decode tok/s and the 8-stream aggregate of one process and of each group."""
    repeats = 1 if quick else REPEATS
    decode = 32 if quick else DECODE_TOKENS
    with tempfile.TemporaryDirectory(prefix="ollmlx-bench-group-") as tmp:
        model_dir = qwen2_twin(model_dir, Path(tmp) / "qwen2")
        config = json.loads((model_dir / "config.json").read_text())
        layers = int(config.get("num_hidden_layers", 0))
        hostfile = Path(tmp) / "hosts.json"
        hostfile.write_text(json.dumps(HOSTS))
        server = _Server(Path(tmp), hostfile)
        try:
            kinds = {"one process": None, "tensor": "tensor", "pipeline": "pipeline"}
            results: dict[str, Any] = {}
            for label, parallelism in kinds.items():
                name = label.replace(" ", "-")
                params = {"distributed": parallelism} if parallelism else None
                try:
                    server.client.create(model=name, from_=str(model_dir), parameters=params)
                except ollama.ResponseError as exc:  # e.g. llama has no pipeline()
                    results[label] = {"skipped": exc.error}
                    continue
                server.stream(name, 4)  # load and warm up
                results[label] = {
                    "decode_tps": statistics.median(
                        server.stream(name, decode) for _ in range(repeats)
                    ),
                    "aggregate_tps": statistics.median(
                        server.aggregate(name, STREAMS, STREAM_TOKENS) for _ in range(repeats)
                    ),
                    "rank_weights": server.rank_weights(name),
                }
                server.client.generate(model=name, keep_alive=0)  # one model's cores at a time
        finally:
            server.stop()
    latency = collective_latency(int(config.get("hidden_size", 64)))
    return {
        "layers": layers,
        "all_sum_us": latency,
        "collectives_per_step": {"tensor": 2 * layers + 1, "pipeline": 2 + 1},
        "results": results,
    }


def table(kind: str, figures: dict[str, Any]) -> str:
    results = figures["results"]
    base = results["one process"]
    lines = [
        f"{kind}: 2-rank loopback group vs one process (ratios against one process)",
        f"  {'':<12} {'decode tok/s':>18} {f'{STREAMS}-stream tok/s':>20}  weights per rank",
    ]
    for label, result in results.items():
        if "skipped" in result:
            lines.append(f"  {label:<12} skipped: {result['skipped']}")
            continue
        ratio = [result[k] / base[k] for k in ("decode_tps", "aggregate_tps")]
        weights = result["rank_weights"]
        share = " / ".join(f"{w / 2**20:.1f} MiB" for w in weights) if weights else "-"
        lines.append(
            f"  {label:<12} {result['decode_tps']:>9.1f} ({ratio[0]:>4.2f}x) "
            f"{result['aggregate_tps']:>11.1f} ({ratio[1]:>4.2f}x)  {share}"
        )
    per = figures["collectives_per_step"]
    lines.append(
        f"  where the time goes: one small all_sum over loopback takes "
        f"{figures['all_sum_us']:.0f} us; a decode step makes {per['tensor']} collectives "
        f"with tensor parallelism (2 per layer x {figures['layers']} layers + 1 lockstep "
        f"header), about {per['pipeline']} with pipeline (send/recv, all_gather, header)"
    )
    return "\n".join(lines)


class _Server:
    def __init__(self, tmp: Path, hostfile: Path) -> None:
        self.port = free_port()
        env = {
            k: v
            for k, v in env_without_preload().items()
            if not k.startswith(("OLLAMA_", "OLLMLX_"))
        }
        env.update(
            OLLAMA_HOST=f"127.0.0.1:{self.port}",
            OLLMLX_MODELS=str(tmp / "models"),
            OLLMLX_HOSTFILE=str(hostfile),
            OLLAMA_NUM_PARALLEL=str(STREAMS),
            OLLAMA_KEEP_ALIVE="30m",
            HF_HUB_OFFLINE="1",
        )
        self._log = open(tmp / "server.log", "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ollmlx", "serve"], env=env, stdout=self._log, stderr=self._log
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_http(self.url + "/", self.proc)
        self.client = ollama.Client(host=self.url, timeout=600)

    def stream(self, model: str, tokens: int) -> float:
        """Decode tok/s of one stream: (tokens - 1) over first token to last."""
        options = {"temperature": 0, "num_predict": tokens}
        first = last = 0.0
        count = 0
        for chunk in self.client.chat(model, QUESTION, stream=True, options=options):
            now = time.perf_counter()
            if not chunk.done:
                first = first or now
                last = now
            else:
                count = int(chunk.eval_count or 0)
        return (count - 1) / (last - first) if count > 1 and last > first else 0.0

    def aggregate(self, model: str, streams: int, tokens: int) -> float:
        """Tokens/s of `streams` answers at once, over the wall time of all of them."""
        options = {"temperature": 0, "num_predict": tokens}

        def one(i: int) -> int:
            messages = [{"role": "user", "content": f"Question {i}: what next?"}]
            return int(self.client.chat(model, messages, options=options).eval_count or 0)

        started = time.perf_counter()
        with ThreadPoolExecutor(streams) as pool:
            total = sum(pool.map(one, range(streams)))
        return total / (time.perf_counter() - started)

    def rank_weights(self, model: str) -> list[int]:
        for running in httpx.get(self.url + "/api/ps").json()["models"]:
            if running["name"] == f"{model}:latest" and running.get("distributed"):
                return [h.get("size", 0) for h in running["distributed"]["hosts"]]
        return []

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


def collective_latency(hidden: int, iterations: int = 500) -> float:
    """Microseconds of one all_sum of a decode step's activations ([1, hidden] float32)
    between two ranks over loopback, under mlx.launch (the fastest of 5 rounds)."""
    with tempfile.TemporaryDirectory(prefix="ollmlx-bench-ring-") as tmp:
        hostfile = Path(tmp) / "hosts.json"
        hostfile.write_text(json.dumps(HOSTS))
        launcher = Path(sys.executable).parent / "mlx.launch"
        child = [sys.executable, "-m", "benchmarks.group", "--child", str(hidden), str(iterations)]
        launch = [sys.executable, str(launcher), "--hostfile", str(hostfile)]
        out = subprocess.run(
            [*launch, "--starting-port", str(free_port()), "--", *child],
            capture_output=True,
            text=True,
            timeout=300,
            env=env_without_preload(),
        )
    for line in out.stdout.splitlines():
        if line.startswith("all_sum_us "):
            return float(line.split()[1])  # the fastest round
    raise RuntimeError(f"collective benchmark failed: {out.stderr[-2000:]}")


def _child(hidden: int, iterations: int) -> None:
    import mlx.core as mx

    group = mx.distributed.init(strict=True, backend="ring")
    x = mx.ones((1, hidden))
    for _ in range(20):
        mx.eval(mx.distributed.all_sum(x, group=group))
    # Rounds, and the fastest one: on a shared machine a round can wait on other
    # processes for whole time slices; the fastest is the link's own cost.
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(iterations // 5):
            mx.eval(mx.distributed.all_sum(x, group=group))
        rounds.append((time.perf_counter() - started) / (iterations // 5) * 1e6)
    if group.rank() == 0:
        print(f"all_sum_us {min(rounds):.1f} {statistics.median(rounds):.1f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.group", description=__doc__)
    parser.add_argument("--model", choices=("tiny", "100m"), default="tiny")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    from .__main__ import build_model

    with tempfile.TemporaryDirectory(prefix="ollmlx-bench-models-") as tmp:
        model_dir = build_model(args.model, Path(tmp))
        print(table(args.model, measure(model_dir, args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
