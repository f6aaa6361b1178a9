"""Keep-alive, the loaded-model limit, the memory budget and the request queue, for real."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import ollama
import pytest

from tests.conftest import Server, start_server, wait_for


def loaded(server: Server) -> list[str]:
    with server.client() as client:
        return [m.model for m in client.ps().models]


@pytest.fixture
def make_server(tmp_path: Path, tiny_model_dir: Path) -> Iterator:
    """Start a server with the given settings and models `a`, `b`, `c` (same weights)."""
    servers: list[Server] = []

    def make(**env: str) -> Server:
        server = start_server(tmp_path / f"s{len(servers)}", **env)
        servers.append(server)
        with server.client() as client:
            client.create(model="a", from_=str(tiny_model_dir))
            client.copy("a", "b")
            client.copy("a", "c")
        return server

    yield make
    for server in servers:
        server.stop()


def test_max_loaded_models_evicts_least_recently_used(make_server) -> None:
    server = make_server(OLLAMA_MAX_LOADED_MODELS="2")
    with server.client() as client:
        for name in ("a", "b"):
            client.generate(model=name, prompt="")
        assert sorted(loaded(server)) == ["a:latest", "b:latest"]
        client.generate(model="a", prompt="hi", options={"num_predict": 1})  # a is now newer
        client.generate(model="c", prompt="")
    assert sorted(loaded(server)) == ["a:latest", "c:latest"]
    assert "unloading b:latest: evicted to make room" in server.log()
    assert len(server.workers()) == 2


def test_memory_budget_that_fits_one_model(make_server, tiny_model_dir: Path) -> None:
    server = make_server(OLLMLX_MEMORY_BUDGET="1M", OLLAMA_CONTEXT_LENGTH="1024")
    with server.client() as client:
        client.generate(model="a", prompt="")
        client.generate(model="b", prompt="")
    assert loaded(server) == ["b:latest"]
    assert len(server.workers()) == 1


def test_model_that_can_never_fit_fails_at_once_naming_both_figures(make_server) -> None:
    server = make_server(OLLMLX_MEMORY_BUDGET="100K")
    with server.client() as client, pytest.raises(ollama.ResponseError) as err:
        client.generate(model="a", prompt="hi")
    assert err.value.status_code == 500
    assert re.search(r"needs about [\d.]+ MiB but the memory budget is 100.0 KiB", err.value.error)
    assert not server.workers()


def test_keep_alive_zero_unloads_after_request(server: Server) -> None:
    with server.client() as client:
        client.copy("tiny", "brief")
        client.generate(model="brief", prompt="hi", keep_alive=0, options={"num_predict": 2})
    assert wait_for(lambda: "brief:latest" not in loaded(server), timeout=10)


def test_keep_alive_expiry(server: Server) -> None:
    with server.client() as client:
        client.copy("tiny", "short-lived")
        client.generate(model="short-lived", prompt="", keep_alive="1s")
    assert wait_for(lambda: "short-lived:latest" not in loaded(server), timeout=15)
    assert "unloading short-lived:latest: keep_alive 1s expired" in server.log()


def test_negative_keep_alive_keeps_forever_and_a_new_request_resets_the_timer(
    server: Server,
) -> None:
    with server.client() as client:
        client.copy("tiny", "kept")
        client.generate(model="kept", prompt="", keep_alive=-1)
        forever = {m.model: m for m in client.ps().models}["kept:latest"].expires_at
        assert forever is not None
        assert forever > datetime.now(timezone.utc) + timedelta(days=365 * 100)
        client.generate(model="kept", prompt="", keep_alive="1h")
        first = {m.model: m for m in client.ps().models}["kept:latest"].expires_at
        client.generate(model="kept", prompt="", keep_alive="2h")
        second = {m.model: m for m in client.ps().models}["kept:latest"].expires_at
        assert first is not None and second is not None
        assert second - first > timedelta(minutes=50)
        client.generate(model="kept", prompt="", keep_alive=0)  # unloads
    assert "kept:latest" not in loaded(server)


def test_ps_orders_longest_remaining_first(server: Server) -> None:
    with server.client() as client:
        client.copy("tiny", "soon")
        client.copy("tiny", "later")
        client.generate(model="later", prompt="", keep_alive="2h")
        client.generate(model="soon", prompt="", keep_alive="1h")
        names = [m.model for m in client.ps().models]
        assert names.index("later:latest") < names.index("soon:latest")
        for name in ("soon", "later"):
            client.generate(model=name, prompt="", keep_alive=0)


def test_full_queue_answers_503(tmp_path: Path, tiny_model_dir: Path) -> None:
    server = start_server(tmp_path, OLLAMA_MAX_QUEUE="1", OLLAMA_NUM_PARALLEL="1", OLLAMA_DEBUG="1")
    try:
        with server.client() as client:
            client.create(model="tiny", from_=str(tiny_model_dir))
            client.generate(model="tiny", prompt="")
        body = {"model": "tiny", "prompt": "long", "options": {"num_predict": 3000}}
        with httpx.stream("POST", server.url + "/api/generate", json=body) as busy:
            busy_lines = busy.iter_lines()  # keep a reference: a dropped iterator closes
            next(busy_lines)  # the only slot is taken
            waiting = threading.Thread(
                target=lambda: httpx.post(
                    server.url + "/api/generate",
                    json={**body, "options": {"num_predict": 1}},
                    timeout=120,
                )
            )
            waiting.start()
            assert wait_for(lambda: "waits for a free slot (1 pending)" in server.log())
            rejected = httpx.post(server.url + "/api/generate", json=body)
            assert rejected.status_code == 503
            assert rejected.json() == {
                "error": "server busy, please try again.  maximum pending requests exceeded"
            }
        waiting.join(120)
    finally:
        server.stop()


def test_load_waits_for_a_busy_model_to_finish(make_server) -> None:
    server = make_server(OLLAMA_MAX_LOADED_MODELS="1")
    with server.client() as client:
        client.generate(model="a", prompt="")
    body = {"model": "a", "prompt": "long", "options": {"num_predict": 400}}
    with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=60) as busy:
        busy_lines = busy.iter_lines()
        next(busy_lines)
        results: list[dict] = []
        waiting = threading.Thread(
            target=lambda: results.append(
                httpx.post(
                    server.url + "/api/generate",
                    json={
                        "model": "b",
                        "prompt": "hi",
                        "stream": False,
                        "options": {"num_predict": 2},
                    },
                    timeout=120,
                ).json()
            )
        )
        waiting.start()
        assert wait_for(
            lambda: "waiting for a busy model to finish before loading b:latest" in server.log()
        )
        rest = [line for line in busy_lines if line]
        assert '"done":true' in rest[-1]  # the busy stream was not cut short
    waiting.join(120)
    assert results and results[0]["eval_count"] == 2
    assert loaded(server) == ["b:latest"]


def test_num_parallel_limits_requests_running_at_once(make_server) -> None:
    server = make_server(OLLAMA_NUM_PARALLEL="2", OLLAMA_DEBUG="1")
    with server.client() as client:
        client.generate(model="a", prompt="")
    body = {"model": "a", "prompt": "long", "options": {"num_predict": 3000}}
    with (
        httpx.stream("POST", server.url + "/api/generate", json=body, timeout=60) as first,
        httpx.stream("POST", server.url + "/api/generate", json=body, timeout=60) as second,
    ):
        first_lines, second_lines = first.iter_lines(), second.iter_lines()
        # Both stream at the same time: neither waited for a slot...
        assert next(first_lines) and next(second_lines)
        assert "waits for a free slot" not in server.log()
        # ...and a third one waits while both slots are taken.
        third = threading.Thread(
            target=lambda: httpx.post(
                server.url + "/api/generate",
                json={**body, "options": {"num_predict": 1}},
                timeout=120,
            )
        )
        third.start()
        assert wait_for(lambda: "waits for a free slot" in server.log())
    third.join(120)
