"""A broken worker never takes the server down: crashes, hangs, start failures, OOM."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import httpx
import ollama
import pytest

from tests.conftest import Server, start_server, wait_for

LONG = {"num_predict": 3000, "temperature": 0}


def test_worker_killed_mid_stream_gives_an_error_line_then_recovers(fresh_server: Server) -> None:
    with fresh_server.client() as client:
        client.generate(model="tiny", prompt="")
    (worker,) = fresh_server.workers()
    body = {"model": "tiny", "prompt": "long", "options": LONG}
    with httpx.stream("POST", fresh_server.url + "/api/generate", json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        next(lines)
        os.kill(worker.pid, signal.SIGKILL)
        rest = [json.loads(line) for line in lines if line]
    assert "error" in rest[-1]
    assert rest[-1]["error"].startswith("model runner has unexpectedly stopped")
    assert wait_for(lambda: not fresh_server.workers())  # reaped, not a zombie
    assert "exited unexpectedly with code -9" in fresh_server.log()
    with fresh_server.client() as client:
        result = client.generate(model="tiny", prompt="again", options={"num_predict": 3})
    assert result.eval_count == 3
    assert len(fresh_server.workers()) == 1


def test_crash_of_one_model_leaves_others_serving(fresh_server: Server) -> None:
    with fresh_server.client() as client:
        client.copy("tiny", "other")
        client.generate(model="tiny", prompt="")
        client.generate(model="other", prompt="")
        assert {m.model for m in client.ps().models} == {"tiny:latest", "other:latest"}
        victim = fresh_server.workers()[0]
        victim.kill()
        victim.wait(10)
        survivors = fresh_server.workers()
        assert len(survivors) == 1
        for name in ("tiny", "other"):
            assert client.generate(model=name, prompt="hi", options={"num_predict": 2}).done


def test_hung_worker_is_killed_and_replaced(tmp_path: Path, tiny_model_dir: Path) -> None:
    server = start_server(tmp_path, OLLMLX_HEALTH_INTERVAL="0.3", OLLMLX_HEALTH_TIMEOUT="1")
    try:
        with server.client() as client:
            client.create(model="tiny", from_=str(tiny_model_dir))
            client.generate(model="tiny", prompt="")
            (worker,) = server.workers()
            worker.suspend()  # SIGSTOP: alive, but answers nothing
            # Noticed within the health timeout plus one interval, and killed.
            assert wait_for(lambda: not worker.is_running(), timeout=10)
            assert "no answer to its health check within 1s; killing it" in server.log()
            result = client.generate(model="tiny", prompt="hi", options={"num_predict": 2})
            assert result.eval_count == 2
            (replacement,) = server.workers()
            assert replacement.pid != worker.pid
    finally:
        server.stop()


def test_worker_that_fails_at_start_is_retried_with_backoff(
    fresh_server: Server, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # A model whose weights do not fit its config: the worker fails while loading it.
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "hidden_size": 32}))
    with fresh_server.client() as client:
        client.create(model="broken", from_=str(broken))
    errors = []
    with fresh_server.client() as client:
        for _ in range(3):
            with pytest.raises(ollama.ResponseError) as err:
                client.generate(model="broken", prompt="hi")
            errors.append(err.value.error)
        # The healthy model is unaffected.
        assert client.generate(model="tiny", prompt="hi", options={"num_predict": 2}).done
    assert errors[0].startswith("error loading model: ")
    assert all("next start attempt in" in e for e in errors[1:])
    assert fresh_server.log().count("failed to start (1 in a row)") == 1
    assert fresh_server.log().count("failed to start") == 1  # no tight respawn loop


def test_request_that_cannot_fit_in_memory_is_answered_with_an_error(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    server = start_server(tmp_path, OLLMLX_WORKER_MEMORY_LIMIT="1M")
    try:
        with server.client() as client:
            client.create(model="tiny", from_=str(tiny_model_dir))
            with pytest.raises(ollama.ResponseError) as err:
                client.generate(
                    model="tiny", prompt="hi", options={"num_ctx": 16384, "num_predict": 8000}
                )
            assert err.value.status_code == 500
            assert err.value.error.startswith("out of memory: this request needs about")
            # The same worker still answers requests that fit.
            result = client.generate(model="tiny", prompt="hi", options={"num_predict": 4})
            assert result.eval_count == 4
            assert len(server.workers()) == 1
    finally:
        server.stop()


def test_worker_dying_at_start_reports_its_stderr(tmp_path: Path, tiny_model_dir: Path) -> None:
    # A sitecustomize that kills worker interpreters at start-up (the server's own is spared).
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if 'OLLMLX_WORKER_SECRET' in os.environ:  # only workers get one\n"
        "    sys.stderr.write('boom: the worker cannot start\\n')\n"
        "    sys.stderr.flush()\n"
        "    os._exit(3)\n"
    )
    server = start_server(tmp_path, PYTHONPATH=str(hooks))
    try:
        with server.client() as client:
            client.create(model="tiny", from_=str(tiny_model_dir))
            with pytest.raises(ollama.ResponseError) as err:
                client.generate(model="tiny", prompt="hi")
            assert err.value.status_code == 500
            assert "exited with code 3" in err.value.error
            assert "boom: the worker cannot start" in err.value.error
            with pytest.raises(ollama.ResponseError) as err:
                client.generate(model="tiny", prompt="hi")
            assert "next start attempt in" in err.value.error
        assert server.log().count("spawned worker") == 1
    finally:
        server.stop()


def test_worker_killed_mid_openai_stream_raises_in_the_client(fresh_server: Server) -> None:
    import openai

    with fresh_server.client() as client:
        client.generate(model="tiny", prompt="")
    (worker,) = fresh_server.workers()
    oai = openai.OpenAI(base_url=fresh_server.url + "/v1", api_key="ollmlx", max_retries=0)
    stream = oai.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "long"}],
        max_tokens=3000,
        temperature=0,
        stream=True,
    )
    chunks = iter(stream)
    next(chunks)
    os.kill(worker.pid, signal.SIGKILL)
    with pytest.raises(openai.APIError, match="model runner has unexpectedly stopped"):
        for _ in chunks:
            pass
    assert wait_for(lambda: not fresh_server.workers())
    answer = oai.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "again"}], max_tokens=3
    )
    assert answer.usage is not None and answer.usage.completion_tokens == 3
