"""Worker processes for real: spawn, health, secret, cancellation, orphan exit, load errors."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import psutil
import pytest

from ollmlx.protocol import (
    SECRET_ENV,
    SECRET_HEADER,
    CompletionRequest,
    Message,
    Sampling,
    StreamAs,
    encoder,
)
from ollmlx.serving.link import LinkBroken, WorkerLink
from tests.conftest import Server, start_server, wait_for


class Worker:
    """A worker started by hand, the way the supervisor starts one (without a socket
    path: its completion link is a loopback port, the fallback where there are no Unix
    sockets)."""

    def __init__(self, model_dir: Path) -> None:
        self.secret = "test-secret"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ollmlx_worker", "--model-dir", str(model_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, SECRET_ENV: self.secret},
        )
        assert self.proc.stdout is not None
        hello = json.loads(self.proc.stdout.readline())
        self.port: int = hello["port"]
        self.link: int = hello["link"]

    def health(self) -> dict:
        url = f"http://127.0.0.1:{self.port}/health"
        return httpx.get(url, headers={SECRET_HEADER: self.secret}).json()

    def complete(self, request: CompletionRequest, secret: str | None = None) -> list[dict]:
        """Every line of one request's stream, through the supervisor's link."""

        async def run() -> list[bytes]:
            link = await WorkerLink.open(self.link, secret or self.secret, 10)
            stream = link.send(encoder.encode(request))
            lines: list[bytes] = []
            try:
                ends = (b'{"type":"done"', b'{"type":"error"', b"!")
                while not lines or not lines[-1].startswith(ends):
                    lines += await asyncio.wait_for(stream.take(), 60)
            finally:
                link.close()
            return lines

        return [json.loads(line) for line in asyncio.run(run())]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe:
                pipe.close()


@pytest.fixture
def worker(tiny_model_dir: Path) -> Iterator[Worker]:
    """A worker started by hand, still loading."""
    worker = Worker(tiny_model_dir)
    yield worker
    worker.stop()


@pytest.fixture
def by_hand(worker: Worker) -> Worker:
    """A worker started by hand, loaded."""
    assert wait_for(lambda: worker.health()["status"] == "ok", timeout=60)
    return worker


def test_worker_health_goes_from_loading_to_ok(worker: Worker) -> None:
    statuses: list[str] = []

    def status() -> str:
        statuses.append(worker.health()["status"])
        return statuses[-1]

    assert wait_for(lambda: status() == "ok", timeout=60)
    assert set(statuses) <= {"loading", "ok"}
    body = worker.health()
    assert body["memory_bytes"] > 0
    assert body["context_length"] == 2048


def test_worker_refuses_requests_without_the_secret(worker: Worker) -> None:
    response = httpx.get(f"http://127.0.0.1:{worker.port}/health")
    assert response.status_code == 401
    headers = {SECRET_HEADER: "guess"}
    response = httpx.get(f"http://127.0.0.1:{worker.port}/health", headers=headers)
    assert response.status_code == 401


def test_the_link_refuses_a_connection_without_the_secret(by_hand: Worker) -> None:
    request = CompletionRequest(prompt="hi", sampling=Sampling(temperature=0, num_predict=2))
    with pytest.raises(LinkBroken):
        by_hand.complete(request, secret="guess")
    assert by_hand.complete(request)[-1]["eval_count"] == 2  # with it: answered


def test_worker_binds_loopback_only(worker: Worker) -> None:
    listening = [
        c.laddr
        for c in psutil.Process(worker.proc.pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    ]
    # Its HTTP port and its link's port (no socket path given), both on loopback.
    assert {addr.port for addr in listening} == {worker.port, worker.link}
    assert all(addr.ip == "127.0.0.1" for addr in listening)


def link_socket(worker: psutil.Process) -> Path:
    """Where the supervisor told a worker to put its completion link."""
    args = worker.cmdline()
    return Path(args[args.index("--link-socket") + 1])


def test_a_socket_path_too_long_for_the_platform_takes_a_loopback_port(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # A Unix socket's path has a limit (104 bytes on macOS); under a longer temporary
    # folder the link falls back to a TCP port on 127.0.0.1, as where there are none.
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    server = start_server(tmp_path / "srv", TMPDIR=str(deep))
    try:
        with server.client() as client:
            client.create(model="tiny", from_=str(tiny_model_dir))
            options = {"num_predict": 5, "temperature": 0}
            streamed = list(
                client.generate(model="tiny", prompt="hi", options=options, stream=True)
            )
            assert streamed[-1].done and streamed[-1].eval_count == 5
            (worker,) = server.workers()
            assert "--link-socket" not in worker.cmdline()
            listening = [
                c.laddr for c in worker.net_connections("tcp") if c.status == psutil.CONN_LISTEN
            ]
            assert len(listening) == 2  # its HTTP port and its link
            assert all(addr.ip == "127.0.0.1" for addr in listening)
    finally:
        server.stop()


def test_worker_exits_when_the_supervisor_is_killed(fresh_server: Server) -> None:
    with fresh_server.client() as client:
        client.generate(model="tiny", prompt="")
    workers = fresh_server.workers()
    assert len(workers) == 1
    path = link_socket(workers[0])
    assert path.is_socket() and path.parent.stat().st_mode & 0o777 == 0o700
    fresh_server.process.send_signal(signal.SIGKILL)
    fresh_server.process.wait()
    _gone, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, "a worker outlived its supervisor"
    assert not path.parent.exists()  # the orphan took its socket with it


def test_the_link_socket_goes_with_its_worker(fresh_server: Server) -> None:
    with fresh_server.client() as client:
        client.generate(model="tiny", prompt="", options={"num_predict": 1})
        (worker,) = fresh_server.workers()
        path = link_socket(worker)
        assert path.is_socket()
        worker.kill()  # it cannot clean up: the supervisor does, when it reaps it
        assert wait_for(lambda: not fresh_server.workers() and not path.parent.exists())
        assert client.generate(model="tiny", prompt="", options={"num_predict": 1}).done
        (again,) = fresh_server.workers()
        second = link_socket(again)
        assert second != path and second.is_socket()
        client.generate(model="tiny", prompt="", keep_alive=0)  # unloaded: SIGTERM
        assert wait_for(lambda: not fresh_server.workers() and not second.parent.exists())


def test_concurrent_first_requests_start_one_worker(fresh_server: Server) -> None:
    results: list[int] = []

    def ask() -> None:
        with fresh_server.client() as client:
            results.append(
                client.generate(model="tiny", prompt="hi", options={"num_predict": 3}).eval_count
                or 0
            )

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [3, 3, 3, 3]
    assert fresh_server.log().count("spawned worker") == 1
    assert len(fresh_server.workers()) == 1


def test_client_disconnect_stops_generation(tmp_path: Path, tiny_model_dir: Path) -> None:
    server = start_server(tmp_path, OLLAMA_DEBUG="1")
    try:
        with server.client() as client:
            client.create(model="tiny", from_=str(tiny_model_dir))
            client.generate(model="tiny", prompt="")
        options = {"num_predict": 4000, "temperature": 0}
        body = {"model": "tiny", "prompt": "go on forever", "options": options}
        with httpx.stream("POST", server.url + "/api/generate", json=body) as response:
            lines = response.iter_lines()
            read = [next(lines) for _ in range(5)]
        assert len(read) == 5
        pattern = re.compile(r"request cancelled by the client after (\d+) tokens")
        assert wait_for(lambda: pattern.search(server.log()) is not None, timeout=30)
        match = pattern.search(server.log())
        assert match is not None and int(match.group(1)) < 1000
        # The worker is free again: the next request is answered in full.
        with server.client() as client:
            assert client.generate(model="tiny", prompt="hi", options={"num_predict": 3}).done
    finally:
        server.stop()


def test_health_polling_is_logged(tmp_path: Path, tiny_model_dir: Path) -> None:
    server = start_server(tmp_path, OLLAMA_DEBUG="1")
    try:
        with server.client() as client:
            client.create(model="tiny", from_=str(tiny_model_dir))
            client.generate(model="tiny", prompt="")
        log = server.log()
        assert re.search(r"worker tiny:latest (not ready|status=loading) \(attempt 1\)", log)
        assert re.search(r"worker pid=\d+ for tiny:latest ready in \d+\.\d+s", log)
    finally:
        server.stop()


def test_a_model_that_fails_to_load_reports_the_worker_error(fresh_server: Server) -> None:
    with fresh_server.client() as client:
        manifest = fresh_server.models_dir / "manifests/registry.ollama.ai/library/tiny/latest"
        layers = json.loads(manifest.read_text())["layers"]
        (tensor,) = [x for x in layers if x.get("name") == "model.safetensors"]
        weights = fresh_server.models_dir / "blobs" / tensor["digest"].replace(":", "-")
        weights.unlink()  # the store hard-links its files: never write through the link
        weights.write_bytes(b"not a safetensors file")
        with pytest.raises(ollama.ResponseError) as err:
            client.generate(model="tiny", prompt="hi")
        assert err.value.status_code == 500
        assert "error loading model" in err.value.error
        assert not fresh_server.workers()
        # The server itself keeps serving.
        assert client.list().models


def test_worker_writes_finished_client_lines_when_asked(by_hand: Worker) -> None:
    """With `stream_as`, token lines are the client's own (the supervisor passes them on
    untouched); the final event stays internal. The text is the same either way."""

    def lines(stream_as: StreamAs | None) -> list[dict]:
        request = CompletionRequest(
            sampling=Sampling(temperature=0, num_predict=6),
            messages=[Message(role="user", content="hello")],
            stream_as=stream_as,
        )
        return by_hand.complete(request)

    ready = lines(StreamAs(model="tiny:latest", chat=True))
    events = lines(None)
    *tokens, done = ready
    assert all(t["model"] == "tiny:latest" and t["done"] is False for t in tokens)
    assert all(t["message"]["role"] == "assistant" and "type" not in t for t in tokens)
    assert all(t["created_at"].endswith("Z") for t in tokens)
    assert done["type"] == "done" and done["eval_count"] == 6
    assert "".join(t["message"]["content"] for t in tokens) == "".join(
        e["text"] for e in events if e["type"] == "token"
    )


def test_an_idle_worker_gives_mlxs_freed_buffers_back(by_hand: Worker) -> None:
    """After a long request, MLX's buffer cache is emptied once the worker idles: an idle
    model holds its weights and its prompt cache, not the buffers of its last prefill."""
    loaded = by_hand.health()
    request = CompletionRequest(
        prompt="a long prompt " * 500, sampling=Sampling(temperature=0, num_predict=8)
    )
    lines = by_hand.complete(request)
    assert lines[-1]["type"] == "done"

    def idle() -> dict:
        return by_hand.health()

    # Not at once: a request within CLEAR_CACHE_AFTER reuses the buffers (emptied at every
    # idle moment, each request's first step allocated them afresh).
    assert idle()["cache_bytes"] > 0
    assert wait_for(lambda: idle()["cache_bytes"] == 0)
    held = idle()
    # What it holds now: the weights plus the request's KV cache kept by the prompt cache
    # (2 layers x 2 heads x 16 x 2 x 4 bytes = 512 bytes a token here), nothing more.
    assert held["active_bytes"] >= loaded["active_bytes"]
    assert held["active_bytes"] - loaded["active_bytes"] < 4 * 512 * 1024
