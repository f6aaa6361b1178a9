"""Continuous batching in the worker: concurrent requests, each as if it ran alone."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import Server, start_server, wait_for

PROMPTS = [f"prompt number {i} about {'rivers ' * i}" for i in range(8)]


def generate(server: Server, prompt: str, **options: object) -> dict:
    body = {
        "model": "tiny",
        "prompt": prompt,
        "stream": False,
        "options": {"temperature": 0, "num_predict": 40, **options},
    }
    response = httpx.post(server.url + "/api/generate", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_concurrent_greedy_outputs_equal_sequential_ones(server: Server) -> None:
    sequential = [generate(server, p)["context"] for p in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        concurrent = list(pool.map(lambda p: generate(server, p)["context"], PROMPTS))
    assert concurrent == sequential


def test_per_request_options_hold_inside_a_batch(server: Server) -> None:
    seeded = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 7}
    alone = generate(server, "seeded", **seeded)["context"]
    stop_alone = generate(server, PROMPTS[1])["response"]
    stop = stop_alone[10:13]
    jobs = [
        lambda: generate(server, "seeded", **seeded)["context"],
        lambda: generate(server, PROMPTS[1], stop=[stop]),
        lambda: generate(server, PROMPTS[2], num_predict=5),
        lambda: generate(server, PROMPTS[3], num_predict=60),
    ]
    with ThreadPoolExecutor(len(jobs)) as pool:
        seeded_result, stopped, short, long = [f.result() for f in [pool.submit(j) for j in jobs]]
    assert seeded_result == alone  # its own PRNG key: the batch does not change it
    assert stopped["response"] == stop_alone[: stop_alone.index(stop)]
    assert stopped["done_reason"] == "stop"
    assert short["eval_count"] == 5 and short["done_reason"] == "length"
    assert long["eval_count"] == 60


def test_a_new_request_joins_a_running_batch(tmp_path: Path, tiny_model_dir: Path) -> None:
    server = start_server(tmp_path, OLLAMA_DEBUG="1")
    try:
        with server.client() as client:
            client.create(model="tiny", from_=str(tiny_model_dir))
            client.generate(model="tiny", prompt="")
        body = {"model": "tiny", "prompt": "long", "options": {"num_predict": 3000}}
        with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=60) as long:
            long_lines = long.iter_lines()
            next(long_lines)
            # Answered in full while the long stream is still running.
            short = generate(server, "short", num_predict=3)
            assert short["eval_count"] == 3
            more = json.loads(next(long_lines))
            assert more["done"] is False
        assert "waits for a free slot" not in server.log()
        assert wait_for(lambda: "cancelled by the client" in server.log())
    finally:
        server.stop()
