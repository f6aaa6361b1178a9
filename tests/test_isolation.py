"""One client never breaks a model for the others (issue 11), end to end with real workers.

Each test is the regression test of one defect found by fuzzing, chaos and a soak: a bad
value fails its own request with a 400 and the same worker serves the next one; unloads
and deletes never cut another client's stream; limits hold on every hop.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.conftest import Server, start_server, wait_for

LONG = {"num_predict": 400, "temperature": 0}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("isolation"), OLLAMA_KEEP_ALIVE="10m")
    with server.client() as client:
        client.create(model="tiny", from_=str(tiny_model_dir))
    yield server
    server.stop()


def generate(server: Server, **body: object) -> httpx.Response:
    payload = {"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 3}}
    payload.update(body)
    return httpx.post(server.url + "/api/generate", json=payload, timeout=60)


def worker_pid(server: Server) -> int:
    (worker,) = server.workers()
    return worker.pid


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_p": 2}, "min_p must be between 0 and 1"),
        ({"seed": 2**70}, 'option "seed" is out of range'),
        ({"top_k": 2**70}, 'option "top_k" is out of range'),
        ({"repeat_penalty": -1}, "repeat_penalty must not be negative"),
    ],
)
def test_bad_sampling_values_fail_alone_and_the_worker_serves_on(
    shared: Server, options: dict, message: str
) -> None:
    generate(shared)
    pid = worker_pid(shared)
    bad = generate(shared, options={"num_predict": 3, **options})
    assert bad.status_code == 400
    assert message in bad.json()["error"]
    after = generate(shared)
    assert after.status_code == 200 and after.json()["eval_count"] == 3
    assert worker_pid(shared) == pid


def test_top_k_beyond_the_vocabulary_only_turns_the_filter_off(shared: Server) -> None:
    reply = generate(shared, options={"num_predict": 3, "top_k": 1e12, "seed": 1})
    assert reply.status_code == 200 and reply.json()["eval_count"] == 3


@pytest.mark.parametrize("context", [[-1, 1000000000, 5], [2**63], [0, 512]])
def test_token_ids_outside_the_vocabulary_are_400(shared: Server, context: list[int]) -> None:
    generate(shared)
    pid = worker_pid(shared)
    bad = generate(shared, context=context)
    assert bad.status_code == 400
    assert "outside the vocabulary" in bad.json()["error"]
    assert generate(shared).status_code == 200
    assert worker_pid(shared) == pid  # no crash, no restart


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"format": {"$ref": "#"}}, "invalid JSON schema in format"),
        ({"template": "{% if %}"}, "template error"),
        ({"template": "{{ raise_exception('no') }}"}, "template error"),
        ({"keep_alive": "99999999999h"}, "invalid keep_alive duration"),
    ],
)
def test_client_mistakes_are_400_not_500(shared: Server, body: dict, message: str) -> None:
    bad = generate(shared, **body)
    assert bad.status_code == 400
    assert message in bad.json()["error"]
    assert generate(shared).status_code == 200


def test_json_nested_100k_deep_is_a_json_400(shared: Server) -> None:
    deep = '{"model": "tiny", "format": ' + '{"a": ' * 100_000 + "1" + "}" * 100_000 + "}"
    reply = httpx.post(shared.url + "/api/generate", content=deep, timeout=30)
    assert reply.status_code == 400
    assert reply.headers["Content-Type"].startswith("application/json")
    assert "nested too deeply" in reply.json()["error"]


def test_a_huge_keep_alive_keeps_ps_working(shared: Server) -> None:
    assert generate(shared, keep_alive=1e300).status_code == 200
    ps = httpx.get(shared.url + "/api/ps")
    assert ps.status_code == 200
    (model,) = ps.json()["models"]
    assert int(model["expires_at"][:4]) > 2300  # Go's longest duration from now: forever
    generate(shared, keep_alive="10m")


def test_a_body_over_one_mib_reaches_the_worker(shared: Server) -> None:
    # aiohttp's default 1 MiB limit used to sit on the worker hop (any image over ~750 KB).
    prompt = "word " * 250_000  # 1.25 MB
    reply = generate(shared, prompt=prompt, options={"num_predict": 1, "num_ctx": 256})
    assert reply.status_code == 200, reply.text
    assert reply.json()["done"] is True


def stream_lines(server: Server, body: dict) -> Iterator[dict]:
    with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line:
                yield json.loads(line)


@pytest.mark.parametrize("how", ["keep_alive_0", "stop", "delete"])
def test_unload_and_delete_never_cut_another_clients_stream(
    fresh_server: Server, tmp_path: Path, how: str
) -> None:
    with fresh_server.client() as client:
        client.copy("tiny", "victim")
    body = {"model": "victim", "prompt": "tell a long story", "options": LONG}
    lines = stream_lines(fresh_server, body)
    first = next(lines)
    assert first["done"] is False
    if how == "keep_alive_0":
        assert generate(fresh_server, model="victim", prompt="", keep_alive=0).status_code == 200
    elif how == "stop":
        env = {**os.environ, "OLLAMA_HOST": fresh_server.host}
        import subprocess
        import sys

        subprocess.run([sys.executable, "-m", "ollmlx", "stop", "victim"], env=env, check=True)
    else:
        deleted = httpx.request(
            "DELETE", fresh_server.url + "/api/delete", json={"model": "victim"}
        )
        assert deleted.status_code == 200
        # delete refuses new requests at once
        assert generate(fresh_server, model="victim").status_code == 404
    rest = list(lines)
    assert "error" not in rest[-1]
    assert rest[-1]["done"] is True and rest[-1]["eval_count"] == LONG["num_predict"]
    # ...and the model goes once its last request ended.
    with fresh_server.client() as client:
        assert wait_for(lambda: not [m for m in client.ps().models if m.model == "victim:latest"])


def test_a_stop_that_hangs_never_delays_another_model(fresh_server: Server) -> None:
    with fresh_server.client() as client:
        client.copy("tiny", "other")
        client.generate(model="tiny", prompt="")
        client.generate(model="other", prompt="")
        assert len(fresh_server.workers()) == 2
        tiny_pid = _pid_of(fresh_server, "tiny:latest")
        stuck = next(w for w in fresh_server.workers() if w.pid == tiny_pid)
        stuck.suspend()  # SIGTERM stays pending: its stop takes the full 5 s, then SIGKILL
        assert client.generate(model="tiny", prompt="", keep_alive=0).done_reason == "unload"
        result = client.generate(model="other", prompt="hi", options={"num_predict": 2})
        assert result.eval_count == 2
        # other answered while tiny's worker was still being stopped.
        assert stuck.is_running() and stuck.status() == "stopped"
    assert wait_for(lambda: not stuck.is_running(), timeout=15)


def _pid_of(server: Server, name: str) -> int:
    for line in server.log().splitlines():
        if "spawned worker pid=" in line and line.endswith(f"for {name}"):
            return int(line.split("pid=")[1].split()[0])
    raise AssertionError(f"no worker spawned for {name}")


def test_an_unload_during_the_load_is_not_a_failed_start(fresh_server: Server) -> None:
    # A client that gives up while the model loads leaves a load with no request; an
    # unload then stops it, and that must not count as a failed start.
    with pytest.raises(httpx.TimeoutException):
        httpx.post(
            fresh_server.url + "/api/generate", json={"model": "tiny", "prompt": ""}, timeout=0.2
        )
    assert wait_for(lambda: fresh_server.workers())
    generate(fresh_server, prompt="", keep_alive=0)
    reply = generate(fresh_server)
    assert reply.status_code == 200, reply.text
    assert "failed to start" not in fresh_server.log()


def test_requests_queued_on_a_dead_worker_go_to_its_replacement(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    server = start_server(tmp_path, OLLAMA_NUM_PARALLEL="1", OLLAMA_DEBUG="1")
    try:
        with server.client() as client:
            client.create(model="tiny", from_=str(tiny_model_dir))
            client.generate(model="tiny", prompt="")
        (worker,) = server.workers()
        results: list[httpx.Response] = []
        body = {"model": "tiny", "prompt": "tell a long story", "options": LONG}
        lines = stream_lines(server, body)
        next(lines)  # the only slot is taken
        queued = threading.Thread(target=lambda: results.append(generate(server)))
        queued.start()
        assert wait_for(lambda: "waits for a free slot" in server.log())
        os.kill(worker.pid, signal.SIGKILL)
        rest = list(lines)
        assert "error" in rest[-1]  # the running request is lost, and says so
        queued.join(60)
        (reply,) = results
        assert reply.status_code == 200, reply.text  # the queued one was served
        assert reply.json()["eval_count"] == 3
        (replacement,) = server.workers()
        assert replacement.pid != worker.pid
    finally:
        server.stop()


def test_a_stream_on_a_stopped_worker_ends_with_an_error_line(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    server = start_server(tmp_path, OLLMLX_HEALTH_INTERVAL="0.5", OLLMLX_HEALTH_TIMEOUT="1")
    try:
        with server.client() as client:
            client.create(model="tiny", from_=str(tiny_model_dir))
            client.generate(model="tiny", prompt="")
        (worker,) = server.workers()
        # Two streams on the one link of the worker: each ends with its error line.
        streams = [
            stream_lines(server, {"model": "tiny", "prompt": p, "options": LONG})
            for p in ("go", "run")
        ]
        for lines in streams:
            next(lines)
        worker.suspend()
        for lines in streams:
            rest = list(lines)  # never hangs: the worker is asked, and it is silent
            assert "error" in rest[-1]
            assert rest[-1]["error"].startswith("model runner has unexpectedly stopped")
        assert generate(server).status_code == 200  # a replacement serves the next one
    finally:
        server.stop()


def test_a_client_that_stops_reading_never_stalls_another_stream(shared: Server) -> None:
    # Every stream of a worker shares one link: the stream of a client that reads nothing
    # is held for it in the supervisor, and the other streams flow on; once it reads, it
    # gets every token.
    options = {"num_predict": 3000, "temperature": 0, "num_ctx": 4096}
    body = json.dumps({"model": "tiny", "prompt": "go", "options": options}).encode()
    stalled = socket.create_connection(("127.0.0.1", shared.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(
        b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    try:
        time.sleep(1.0)  # its stream runs, and its socket fills
        other = generate(shared, options={"num_predict": 50, "temperature": 0})
        assert other.status_code == 200 and other.json()["eval_count"] == 50
        stalled.settimeout(60)
        received = bytearray()
        while chunk := stalled.recv(1 << 16):
            received += chunk
    finally:
        stalled.close()
    head, _, chunked = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    lines = [json.loads(line) for line in _unchunk(chunked).splitlines() if line]
    assert lines[-1]["done"] and lines[-1]["eval_count"] == 3000
    assert len(lines) == 3001


def _unchunk(data: bytes) -> bytes:
    body = bytearray()
    while True:
        size, _, data = data.partition(b"\r\n")
        if int(size, 16) == 0:
            return bytes(body)
        body += data[: int(size, 16)]
        data = data[int(size, 16) + 2 :]


def test_a_quiet_but_healthy_stream_is_checked_and_goes_on(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # A long prefill keeps the stream quiet for many health intervals: each time the
    # supervisor asks the worker whether it lives, and the answer "ok" lets the stream
    # go on, with every token and the same worker.
    server = start_server(tmp_path, OLLMLX_HEALTH_INTERVAL="0.01", OLLMLX_HEALTH_TIMEOUT="1")
    try:
        with server.client() as client:
            client.create(model="tiny", from_=str(tiny_model_dir))
            client.generate(model="tiny", prompt="")
            (worker,) = server.workers()
            prompt = " ".join(["the quick robot paints a window"] * 300)
            options = {"num_predict": 40, "temperature": 0, "num_ctx": 2048}
            chunks = list(
                client.generate(model="tiny", prompt=prompt, options=options, stream=True)
            )
            assert chunks[-1].done and chunks[-1].eval_count == 40
            # The whole context prefilled: ~110 ms on the 2-core CI machine, ~10 checks.
            assert chunks[-1].prompt_eval_count > 1000
            assert "".join(c.response for c in chunks)
            (same,) = server.workers()
            assert same.pid == worker.pid
    finally:
        server.stop()


def test_create_from_a_fifo_is_400_and_never_blocks_the_server(
    fresh_server: Server, tmp_path: Path, tiny_model_dir: Path
) -> None:
    source = tmp_path / "fifo-model"
    source.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (source / name).write_bytes((tiny_model_dir / name).read_bytes())
    os.mkfifo(source / "model.safetensors")
    replies: list[httpx.Response] = []

    def create() -> None:
        body = {"model": "fifo", "from": str(source), "stream": False}
        replies.append(httpx.post(fresh_server.url + "/api/create", json=body, timeout=30))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [r.status_code for r in replies] == [400] * 8
    assert "is not a regular file" in replies[0].json()["error"]
    with fresh_server.client() as client:  # the thread pool is still free
        client.create(model="fine", from_=str(tiny_model_dir))
        assert "fine:latest" in [m.model for m in client.list().models]


def test_a_safetensors_header_that_lies_is_400(fresh_server: Server, tmp_path: Path) -> None:
    source = tmp_path / "liar"
    source.mkdir()
    (source / "config.json").write_text('{"model_type": "llama"}')
    (source / "model.safetensors").write_bytes((2**62).to_bytes(8, "little") + b"{}")
    body = {"model": "liar", "from": str(source), "stream": False}
    reply = httpx.post(fresh_server.url + "/api/create", json=body, timeout=30)
    assert reply.status_code == 400
    assert "invalid safetensors header" in reply.json()["error"]


def test_a_graceful_worker_stop_exits_0_without_an_abort(fresh_server: Server) -> None:
    with fresh_server.client() as client:
        for _ in range(3):
            client.generate(model="tiny", prompt="hi", options={"num_predict": 2})
            client.generate(model="tiny", prompt="", keep_alive=0)
            assert wait_for(lambda: not fresh_server.workers())
    # The process is gone a moment before the supervisor logs its exit code.
    assert wait_for(lambda: fresh_server.log().count("(exit code 0)") == 3)
    log = fresh_server.log()
    assert "Fatal Python error" not in log and "terminate called" not in log


def test_sigterm_gives_running_requests_an_error_line_and_exits_0(fresh_server: Server) -> None:
    with fresh_server.client() as client:
        client.generate(model="tiny", prompt="")
    (worker,) = fresh_server.workers()
    lines = stream_lines(fresh_server, {"model": "tiny", "prompt": "go", "options": LONG})
    next(lines)
    os.kill(worker.pid, signal.SIGTERM)  # not the supervisor's doing
    rest = list(lines)
    assert rest[-1]["error"].startswith("the model runner is stopping")
    assert wait_for(lambda: "exited unexpectedly with code 0" in fresh_server.log())
    assert "Fatal Python error" not in fresh_server.log()


def test_a_10000_turn_chat_is_truncated_without_stalling_other_streams(
    shared: Server,
) -> None:
    messages = [{"role": "system", "content": "be brief"}]
    for i in range(5000):
        messages.append({"role": "user", "content": f"question number {i}"})
        messages.append({"role": "assistant", "content": f"answer number {i}"})
    messages.append({"role": "user", "content": "last question"})
    with shared.client() as client:
        client.generate(model="tiny", prompt="")
        lines = stream_lines(shared, {"model": "tiny", "prompt": "story", "options": LONG})
        next(lines)
        stamps: list[float] = []
        done = threading.Event()

        def read_stream() -> None:
            for _ in lines:
                stamps.append(time.monotonic())
            done.set()

        reader = threading.Thread(target=read_stream)
        reader.start()
        started = time.monotonic()
        reply = client.chat(
            model="tiny", messages=messages, options={"num_ctx": 512, "num_predict": 2}
        )
        finished = time.monotonic()
        reader.join(120)
    assert reply.done and reply.prompt_eval_count is not None
    assert reply.prompt_eval_count <= 512
    # The other stream kept getting tokens while the long chat's prompt was built.
    during = [s for s in stamps if started <= s <= finished]
    assert len(during) >= 2 or finished - started < 0.5


def test_fault_in_one_sequence_ends_it_alone(tmp_path: Path, tiny_model_dir: Path) -> None:
    server = start_server(tmp_path, OLLMLX_TEST_FAULT="advance:POISON")
    try:
        with server.client() as client:
            client.create(model="tiny", from_=str(tiny_model_dir))
            client.generate(model="tiny", prompt="")
        pid = worker_pid(server)
        healthy = stream_lines(server, {"model": "tiny", "prompt": "story", "options": LONG})
        next(healthy)
        poisoned = generate(server, prompt="POISON now")  # fails on its first token
        assert poisoned.status_code == 500
        assert poisoned.json()["error"] == "InjectedFault: injected fault in advance"
        rest = list(healthy)
        assert rest[-1]["done"] is True and rest[-1]["eval_count"] == LONG["num_predict"]
        assert generate(server).status_code == 200
        assert worker_pid(server) == pid  # the same worker: only the sequence failed
    finally:
        server.stop()


def test_a_dead_engine_thread_is_replaced(tmp_path: Path, tiny_model_dir: Path) -> None:
    server = start_server(tmp_path, OLLMLX_TEST_FAULT="engine:POISON")
    try:
        with server.client() as client:
            client.create(model="tiny", from_=str(tiny_model_dir))
            client.generate(model="tiny", prompt="")
            pid = worker_pid(server)
            with pytest.raises(ollama.ResponseError) as failed:
                client.generate(model="tiny", prompt="POISON")
            assert "model runner failed: InjectedFault" in str(failed.value)
            # /health now says error: the next request is served by a replacement.
            result = client.generate(model="tiny", prompt="hi", options={"num_predict": 2})
            assert result.eval_count == 2
        assert worker_pid(server) != pid
    finally:
        server.stop()
