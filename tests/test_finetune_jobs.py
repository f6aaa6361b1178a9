"""A fine-tuning job's life on a real server: a client that leaves cancels it and leaves
nothing, resume continues from the checkpoint, one job at a time, other models keep
serving, idle models make room, a job that can never fit is refused, shutdown stops it."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from ollmlx.finetune_memory import estimate_memory, format_bytes, seq_len_guess, weights_bytes
from ollmlx.finetune_plan import parse_job, resolve
from tests.conftest import Server, start_server, wait_for
from tests.finetune_helpers import body, finetune, job_folders, of, stream_lines
from tests.training_helpers import TEXTS, no_leftovers

LONG = dict(method="lora", rank=4, iters=100_000, learning_rate=5e-4, report_every=1)


@pytest.fixture(scope="module")
def job_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, other_model_dir: Path
) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("jobs"), OLLAMA_KEEP_ALIVE="10m")
    with srv.client() as client:
        client.create(model="tiny", from_=str(tiny_model_dir))
        client.create(model="other", from_=str(other_model_dir))
    yield srv
    srv.stop()


def job_processes(server: Server) -> list[psutil.Process]:
    return [w for w in server.workers() if "ollmlx_worker.training" in " ".join(w.cmdline())]


def logged(server: Server, pattern: str, timeout: float = 30) -> re.Match[str]:
    """The first log line matching `pattern`, waiting for it up to `timeout`."""
    assert wait_for(lambda: re.search(pattern, server.log()), timeout), server.log()[-3000:]
    match = re.search(pattern, server.log())
    assert match is not None
    return match


def post(server: Server, request: dict) -> tuple[int, str]:
    response = httpx.post(server.url + "/api/finetune", json=request, timeout=60)
    return response.status_code, response.json().get("error", "")


def test_a_client_that_leaves_cancels_the_job_and_resume_continues(job_server: Server):
    request = body("resumed", **{**LONG, "iters": 200, "save_every": 10})
    with httpx.stream(
        "POST", job_server.url + "/api/finetune", json=request, timeout=60
    ) as response:
        assert response.status_code == 200
        for line in stream_lines(response):
            if line["status"] == "training" and line["iteration"] >= 12:
                break
    left = time.monotonic()
    cancelled = logged(
        job_server,
        r"fine-tuning job for resumed:latest cancelled at iteration (\d+) \(exit code 130\);"
        r" its checkpoint at iteration (\d+) stays for resume",
    )
    assert time.monotonic() - left < 10  # it stops at its next iteration; 2 cores are slow
    stopped, saved = int(cancelled[1]), int(cancelled[2])
    assert saved % 10 == 0 and 10 <= saved <= stopped < 200
    assert not job_processes(job_server)
    with job_server.client() as client:
        assert "resumed:latest" not in [m.model for m in client.list().models]
    # No model, no result, no half file: only the checkpoint, for a resume.
    (folder,) = job_folders(job_server)
    assert json.loads((folder / "checkpoint.json").read_text())["iteration"] == saved
    assert not (folder / "output").exists()
    assert no_leftovers(job_server.models_dir) == []

    lines = finetune(job_server, {**request, "resume": True})
    training = of(lines, "training")
    assert training[0]["iteration"] == saved + 1 and training[-1]["iteration"] == 200
    assert lines[-1]["resumed_from"] == saved and lines[-1]["iterations"] == 200
    assert job_folders(job_server) == []
    with job_server.client() as client:
        assert client.show("resumed").modelinfo["ollmlx.finetune.iterations"] == 200


def test_one_job_at_a_time_while_other_models_keep_serving(job_server: Server):
    request = body("long", **LONG, save_every=10**6)
    with httpx.stream("POST", job_server.url + "/api/finetune", json=request, timeout=60) as r:
        lines = stream_lines(r)
        first = next(line for line in lines if line["status"] == "training")
        status, error = post(job_server, body("second", iters=5))
        assert status == 503
        assert re.fullmatch(
            r"a fine-tuning job is already running \(long:latest, iteration \d+ of 100000\);"
            r" one job runs at a time: try again when it ends",
            error,
        ), error
        with job_server.client() as client:
            answer = client.generate(model="other", prompt="hi", options={"num_predict": 5})
            assert answer.eval_count == 5
        # The job trained on meanwhile.
        later = next(line for line in lines if line["status"] == "training")
        assert later["iteration"] > first["iteration"]
    logged(
        job_server,
        r"fine-tuning job for long:latest cancelled at iteration \d+ .*; no checkpoint kept",
    )
    assert job_folders(job_server) == []  # cancelled before any checkpoint: nothing kept
    # The one slot is free again: the next job is checked, not turned away.
    assert post(job_server, body("second", batch_size=9)) == (
        400,
        "batch_size 9 is more than the 4 training records",
    )


def test_a_client_that_gives_up_on_an_unstreamed_job_cancels_it(job_server: Server):
    request = body("patient", **LONG, save_every=10**6, stream=False)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(job_server.url + "/api/finetune", json=request, timeout=4)
    logged(job_server, r"fine-tuning job for patient:latest cancelled at iteration \d+")
    assert not job_processes(job_server) and job_folders(job_server) == []
    with job_server.client() as client:
        assert "patient:latest" not in [m.model for m in client.list().models]


def supervisor_estimate(model_dir: Path, **fields: object) -> int:
    """What the server reserves for a job on TEXTS (its guess of the token counts)."""
    job = parse_job({"model": "", "job_dir": "", "output": "", **fields})
    plan = resolve(job, n_layers=2, n_train=len(TEXTS), formats=["text"])
    config = json.loads((model_dir / "config.json").read_text())
    seq_len = seq_len_guess(max(len(t.encode()) for t in TEXTS), plan.max_seq_length)
    return estimate_memory(config, plan, weights_bytes(model_dir), seq_len).total


def test_a_job_that_can_never_fit_is_refused_naming_both_figures(
    tmp_path: Path, tiny_model_dir: Path
):
    server = start_server(tmp_path, OLLMLX_MEMORY_BUDGET="4M")
    try:
        with server.client() as client:
            client.create(model="tiny", from_=str(tiny_model_dir))
        estimate = supervisor_estimate(tiny_model_dir, method="full")
        assert estimate > 4 << 20
        assert post(server, body("big", method="full")) == (
            400,
            f"the fine-tuning job for big:latest needs about {format_bytes(estimate)} of"
            " memory but the memory budget is 4.0 MiB (OLLMLX_MEMORY_BUDGET)",
        )
        assert "fine-tuning job pid" not in server.log() and job_folders(server) == []
    finally:
        server.stop()


def test_idle_models_are_evicted_to_make_room_for_a_job(
    job_server: Server, tmp_path: Path, tiny_model_dir: Path
):
    with job_server.client() as client:
        client.generate(model="tiny", prompt="hi", options={"num_predict": 1})
        loaded = next(m for m in client.ps().models if m.model == "tiny:latest").size
    assert loaded
    estimate = supervisor_estimate(tiny_model_dir, method="lora")
    # Room for the job or the model, not both.
    server = start_server(tmp_path, OLLMLX_MEMORY_BUDGET=str(estimate + loaded - 1))
    try:
        with server.client() as client:
            client.create(model="tiny", from_=str(tiny_model_dir))
            client.generate(model="tiny", prompt="hi", options={"num_predict": 1})
            lines = finetune(server, body("roomy", method="lora", iters=5))
            assert lines[-1]["status"] == "success"
            log = server.log()
            evicted = log.index(
                "unloading tiny:latest: evicted to make room for the fine-tuning job for"
                " roomy:latest"
            )
            assert evicted < log.index("spawned fine-tuning job")
            # Once the job has counted its tokens, its own estimate replaces the guess.
            held = format_bytes(of(lines, "data")[0]["memory_estimate"])
            guess = format_bytes(estimate)
            assert f"held by the fine-tuning job for roomy:latest: {held}, was {guess}" in log
            # After the job the model loads again.
            assert client.generate(model="roomy", prompt="hi", options={"num_predict": 2}).done
    finally:
        server.stop()


def test_shutdown_stops_a_job_and_keeps_its_checkpoint(tmp_path: Path, tiny_model_dir: Path):
    server = start_server(tmp_path)
    try:
        with server.client() as client:
            client.create(model="tiny", from_=str(tiny_model_dir))
        request = body("stopped", **{**LONG, "save_every": 5})
        with httpx.stream(
            "POST", server.url + "/api/finetune", json=request, timeout=60
        ) as response:
            lines = stream_lines(response)
            next(line for line in lines if line["status"] == "checkpoint")
            since = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            last = list(lines)[-1]
        assert re.fullmatch(
            r"the fine-tuning job stopped at iteration \d+ \(the server is shutting down\);"
            r" repeat the request with resume: true to continue from iteration \d+",
            last["error"],
        ), last
        assert server.process.wait(30) == 0
        assert time.monotonic() - since < 8  # well within the grace period's 10 s
        (folder,) = job_folders(server)
        assert (folder / "checkpoint.json").is_file() and not (folder / "output").exists()
    finally:
        server.stop()
