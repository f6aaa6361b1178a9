"""One model served by a group of ranks (mlx.launch, ring backend over loopback): the same
answers as one process, and a group that goes down whole when any part of it fails.

Real servers, real mlx.launch and ranks, the official client. Two ranks on 127.0.0.1
need no ssh: mlx.launch runs local entries directly. A fake `ssh` on PATH stands in for a
second machine where one is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import ollama
import psutil
import pytest

from ollmlx.store.modelinfo import estimate_memory
from tests.conftest import Server, start_server, wait_for
from tests.oracle import Oracle
from tests.tinymodel import build_tiny_model

LOOPBACK = {"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}
GREEDY = {"temperature": 0, "num_predict": 24}
QUESTION = [{"role": "user", "content": "tell me about the river"}]


def write_hostfile(path: Path, *hosts: dict) -> Path:
    path.write_text(json.dumps({"backend": "ring", "hosts": list(hosts)}))
    return path


def group_processes(server: Server) -> list[psutil.Process]:
    """mlx.launch and every rank of every group this server started."""
    found = []
    try:
        children = psutil.Process(server.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for child in children:
        try:
            line = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "mlx.launch" in line or "ollmlx_worker" in line:
            found.append(child)
    return found


def ranks(server: Server) -> dict[int, psutil.Process]:
    out = {}
    for proc in group_processes(server):
        try:
            if "ollmlx_worker" in " ".join(proc.cmdline()):
                out[int(proc.environ().get("MLX_RANK", "-1"))] = proc
        except psutil.Error:
            continue
    return out


def gone(procs: list[psutil.Process]) -> bool:
    def dead(proc: psutil.Process) -> bool:
        try:
            return proc.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    return all(dead(p) for p in procs)


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "qwen2", model_type="qwen2")


@pytest.fixture(scope="module")
def qwen2_wide_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Heads of 64 values: a KV cache of these can be quantized (the tiny ones' 16 cannot)."""
    out = tmp_path_factory.mktemp("models") / "qwen2-wide"
    return build_tiny_model(out, model_type="qwen2", hidden_size=256, num_heads=4, num_kv_heads=2)


@pytest.fixture(scope="module")
def model_dirs(tiny_model_dir: Path, qwen2_dir: Path) -> dict[str, Path]:
    return {"llama": tiny_model_dir, "qwen2": qwen2_dir}


@pytest.fixture(scope="module")
def oracles(model_dirs: dict[str, Path]) -> dict[str, Oracle]:
    return {arch: Oracle(path) for arch, path in model_dirs.items()}


@pytest.fixture(scope="module")
def group_server(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_dir: Path,
    qwen2_dir: Path,
    qwen2_wide_dir: Path,
) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("group")
    hostfile = write_hostfile(tmp / "hosts.json", LOOPBACK, LOOPBACK)
    server = start_server(tmp, OLLMLX_HOSTFILE=str(hostfile), OLLAMA_KEEP_ALIVE="10m")
    with server.client() as client:
        client.create(
            model="llama-tp", from_=str(tiny_model_dir), parameters={"distributed": "tensor"}
        )
        client.create(model="qwen-tp", from_=str(qwen2_dir), parameters={"distributed": "tensor"})
        client.create(model="qwen-pp", from_=str(qwen2_dir), parameters={"distributed": "pipeline"})
        client.create(model="qwen-one", from_=str(qwen2_dir))
        q4 = {"kv_cache_type": "q4_0"}
        wide = str(qwen2_wide_dir)
        client.create(model="wide-tp-q4", from_=wide, parameters={**q4, "distributed": "tensor"})
        client.create(model="wide-one-q4", from_=wide, parameters=q4)
        client.create(model="wide-one", from_=wide)
    yield server
    server.stop()
    assert wait_for(lambda: gone(group_processes(server)), 10)


GROUPS = [
    ("llama-tp", "llama", "tensor"),
    ("qwen-tp", "qwen2", "tensor"),
    ("qwen-pp", "qwen2", "pipeline"),
]


@pytest.mark.parametrize(("model", "arch", "parallelism"), GROUPS)
def test_a_group_answers_chat_and_generate_as_one_process_mlx_lm(
    group_server: Server,
    oracles: dict[str, Oracle],
    model_dirs: dict[str, Path],
    model: str,
    arch: str,
    parallelism: str,
) -> None:
    oracle = oracles[arch]
    prompt = oracle.chat_prompt(QUESTION)
    expected = oracle.greedy(prompt, GREEDY["num_predict"])
    with group_server.client() as client:
        generated = client.generate(model=model, prompt=QUESTION[0]["content"], options=GREEDY)
        chat = client.chat(model=model, messages=QUESTION, options=GREEDY)
    assert list(generated.context or []) == [*prompt, *expected.tokens]
    assert generated.response == expected.text
    assert chat.message.content == expected.text
    assert chat.eval_count == len(expected.tokens)
    running = {m["name"]: m for m in httpx.get(group_server.url + "/api/ps").json()["models"]}
    group = running[f"{model}:latest"]["distributed"]
    assert group["parallelism"] == parallelism
    assert group["backend"] == "ring"
    assert [(h["host"], h["rank"]) for h in group["hosts"]] == [("127.0.0.1", 0), ("127.0.0.1", 1)]
    # Each rank holds its share of the layers (embeddings and head are on every rank).
    sizes = [h["size"] for h in group["hosts"]]
    whole = (model_dirs[arch] / "model.safetensors").stat().st_size
    assert all(0 < size < whole for size in sizes)
    shown = httpx.post(group_server.url + "/api/show", json={"model": model}).json()
    assert shown["distributed"]["parallelism"] == parallelism
    assert f'distributed                    "{parallelism}"' in shown["parameters"]


@pytest.mark.parametrize("model", ["qwen-tp", "qwen-pp"])
def test_four_concurrent_streams_of_a_group_equal_one_process_greedy(
    group_server: Server, oracles: dict[str, Oracle], model: str
) -> None:
    topics = ["the city", "a quick dog", "winter mornings", "the old library teacher"]
    results: dict[str, ollama.GenerateResponse] = {}

    def ask(topic: str) -> None:
        with group_server.client() as client:
            results[topic] = client.generate(model=model, prompt=topic, options=GREEDY)

    threads = [threading.Thread(target=ask, args=(t,)) for t in topics]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for topic in topics:
        prompt = oracles["qwen2"].chat_prompt([{"role": "user", "content": topic}])
        expected = oracles["qwen2"].greedy(prompt, GREEDY["num_predict"])
        assert list(results[topic].context or []) == [*prompt, *expected.tokens], topic


def test_a_group_with_a_quantized_kv_cache_answers_as_one_process_with_it(
    group_server: Server,
) -> None:
    # Every rank quantizes its own heads' keys and values (kv_cache_type reaches them all):
    # a rank that kept float keys would answer neither as q4_0 nor as f16 does.
    # Long prompts: the quantization error grows with the keys attended to.
    words = "the city a quick dog winter mornings the old library teacher river".split()
    topics = [" ".join(words[(i + j) % len(words)] for j in range(300)) for i in range(3)]
    options = {**GREEDY, "num_predict": 64, "num_ctx": 2048}
    quantization_shows = False
    with group_server.client() as client:
        for topic in topics:
            group = client.generate(model="wide-tp-q4", prompt=topic, options=options)
            one = client.generate(model="wide-one-q4", prompt=topic, options=options)
            f16 = client.generate(model="wide-one", prompt=topic, options=options)
            assert group.context and list(group.context) == list(one.context or [])
            quantization_shows |= list(one.context or []) != list(f16.context or [])
    assert quantization_shows, "q4_0 answers as f16 does here: the test shows nothing"


def test_a_group_samples_stops_constrains_and_reuses_its_prompt_cache_as_one_process(
    group_server: Server,
) -> None:
    seeded = {"temperature": 0.9, "seed": 7, "num_predict": 24}
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
        },
        "required": ["name", "age"],
    }
    with group_server.client() as client:
        one = client.generate(model="qwen-one", prompt="hi", options=seeded)
        person = client.generate(model="qwen-one", prompt="a person", format=schema, options=GREEDY)
        for model in ("qwen-tp", "qwen-pp"):
            # A seed draws from one key on every rank: the same text as one process.
            assert (
                client.generate(model=model, prompt="hi", options=seeded).response == one.response
            )
            # Unseeded: rank 0 picks the seed every rank draws with (no disagreement).
            assert client.generate(model=model, prompt="hi", options={"num_predict": 16}).done
            stop = one.response[8:12]
            stopped = client.generate(model=model, prompt="hi", options={**seeded, "stop": [stop]})
            assert stopped.response == one.response[: one.response.index(stop)]
            assert stopped.done_reason == "stop"
            # The grammar runs on every rank, so every rank masks the same tokens.
            answer = client.generate(model=model, prompt="a person", format=schema, options=GREEDY)
            assert answer.response == person.response
            jsonschema.validate(json.loads(answer.response), schema)
    # The next turn of a chat prefills only what is new, on every rank alike.
    turn = [{"role": "user", "content": "tell me about the river"}]
    body = {"model": "qwen-pp", "messages": turn, "max_tokens": 8, "temperature": 0}
    first = httpx.post(group_server.url + "/v1/chat/completions", json=body, timeout=60).json()
    turn += [first["choices"][0]["message"], {"role": "user", "content": "and the sea"}]
    second = httpx.post(
        group_server.url + "/v1/chat/completions", json={**body, "messages": turn}, timeout=60
    ).json()
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


def test_a_group_model_does_not_embed(group_server: Server) -> None:
    with group_server.client() as client, pytest.raises(ollama.ResponseError) as raised:
        client.embed(model="qwen-tp", input="hello")
    assert raised.value.status_code == 400
    assert "distributed group" in raised.value.error


@pytest.fixture(scope="module")
def failing_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[Server]:
    """A group that is broken on purpose. Its model asks for no group: it gets one because
    it does not fit this machine's budget while half of it does (OLLMLX_DISTRIBUTED=auto)."""
    tmp = tmp_path_factory.mktemp("group-failing")
    hostfile = write_hostfile(tmp / "hosts.json", LOOPBACK, LOOPBACK)
    size = sum(p.stat().st_size for p in tiny_model_dir.iterdir())
    estimate = estimate_memory(tiny_model_dir, size, 2048)  # its trained context
    server = start_server(
        tmp,
        OLLMLX_HOSTFILE=str(hostfile),
        OLLMLX_GROUP_TIMEOUT="4s",
        OLLMLX_DISTRIBUTED="auto",
        OLLMLX_MEMORY_BUDGET=str(estimate * 3 // 4),
    )
    with server.client() as client:
        client.create(model="g", from_=str(tiny_model_dir))
    yield server
    server.stop()


def launcher_files(processes: list[psutil.Process]) -> list[Path]:
    """What the supervisor made for a group: its hostfile and its link socket's folder."""
    found = set()
    for process in processes:
        args = process.cmdline()
        if "--hostfile" in args:
            found.add(Path(args[args.index("--hostfile") + 1]))
        if "--link-socket" in args:  # every rank is given it; rank 0 listens there
            found.add(Path(args[args.index("--link-socket") + 1]).parent)
    assert len(found) == 2, found
    return sorted(found)


def stream_until_broken(server: Server, break_rank: object) -> tuple[int, str]:
    """Stream a long answer; after a few tokens `break_rank(rank 1)`; (tokens, error)."""
    long = {"temperature": 0, "num_predict": 100000}
    tokens = 0
    with server.client() as client:
        with pytest.raises(ollama.ResponseError) as raised:
            for _ in client.generate(model="g", prompt="go on", stream=True, options=long):
                tokens += 1
                if tokens == 5:
                    break_rank(ranks(server)[1])  # type: ignore[operator]
    return tokens, raised.value.error


def test_a_killed_rank_ends_the_stream_with_an_error_and_the_next_request_relaunches(
    failing_server: Server,
) -> None:
    with failing_server.client() as client:
        client.generate(model="g", prompt="", options={"num_predict": 1})
    before = group_processes(failing_server)
    assert len(before) == 3  # mlx.launch, rank 0, rank 1
    left = launcher_files(before)
    hostfile, link_folder = (
        (p for p in left if p.suffix == ".json"),
        (p for p in left if not p.suffix),
    )
    assert not any(path.exists() for path in hostfile)  # read by mlx.launch, gone once up
    assert all(path.exists() for path in link_folder)
    tokens, error = stream_until_broken(failing_server, lambda rank: rank.kill())
    assert tokens >= 5
    # The ring's own words (from the model's collectives or from lockstep's), or the
    # connection to rank 0 closing first (mlx.launch stops it as soon as rank 1 is gone).
    assert "the distributed group lost a rank" in error or "unexpectedly stopped" in error
    assert wait_for(lambda: gone(before), 30)  # every rank and the launcher, reaped
    # What the supervisor made for it goes too, though nobody called its stop.
    assert wait_for(lambda: not any(path.exists() for path in left))
    with failing_server.client() as client:
        assert (
            client.generate(model="g", prompt="again", options={"num_predict": 3}).eval_count == 3
        )
    assert len(group_processes(failing_server)) == 3


def test_a_stalled_rank_takes_the_group_down_and_the_next_request_relaunches(
    failing_server: Server,
) -> None:
    with failing_server.client() as client:
        client.generate(model="g", prompt="", options={"num_predict": 1})
    before = group_processes(failing_server)
    _, error = stream_until_broken(failing_server, lambda rank: rank.suspend())
    assert "the distributed group stalled" in error
    assert wait_for(lambda: gone(before), 30)  # the stopped rank too
    with failing_server.client() as client:
        assert (
            client.generate(model="g", prompt="again", options={"num_predict": 3}).eval_count == 3
        )


def test_killing_the_supervisor_leaves_no_rank_alive(failing_server: Server) -> None:
    # The last test of this server: it takes the server with it.
    with failing_server.client() as client:
        assert client.generate(model="g", prompt="hi", options={"num_predict": 2}).done
    (running,) = httpx.get(failing_server.url + "/api/ps").json()["models"]
    assert running["distributed"]["parallelism"] == "tensor"  # llama: shard(), no pipeline()
    group = group_processes(failing_server)
    assert len(group) == 3
    left = launcher_files(group)
    failing_server.process.send_signal(signal.SIGKILL)
    failing_server.process.wait(10)
    assert wait_for(lambda: gone(group), 20), [p.cmdline() for p in group if p.is_running()]
    # Nothing of the group is left in the temp folder, though the supervisor could not
    # clean up: the hostfile went once the group was up, the socket with rank 0.
    assert wait_for(lambda: not any(path.exists() for path in left)), left


FAKE_SSH = """#!/usr/bin/env bash
# A stand-in for ssh to another machine: runs the command here, where that "machine"
# sees the model store through FAKE_SSH_TO instead of FAKE_SSH_FROM and has its own
# environment (FAKE_SSH_FAULT). Like `ssh -tt`, it merges the command's stderr into stdout.
while [ $# -gt 0 ]; do
  case "$1" in
    -o) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
host=$1; shift
cmd="$*"
cmd=${cmd//stty -echo; /}
cmd=${cmd//$FAKE_SSH_FROM/$FAKE_SSH_TO}
export OLLMLX_TEST_FAULT="$FAKE_SSH_FAULT"
exec bash -c "$cmd" 2>&1
"""


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory: pytest.TempPathFactory, qwen2_dir: Path) -> Iterator[Server]:
    """Rank 1 on "otherhost", reached through ssh (a fake one: see FAKE_SSH), with a store
    of its own at the same path, and a test fault that only it has."""
    tmp = tmp_path_factory.mktemp("group-two-hosts")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(FAKE_SSH)
    (bin_dir / "ssh").chmod(0o755)
    far = {"ssh": "otherhost", "ips": ["127.0.0.1"]}
    hostfile = write_hostfile(tmp / "hosts.json", LOOPBACK, far)
    server = start_server(
        tmp,
        OLLMLX_HOSTFILE=str(hostfile),
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        FAKE_SSH_FROM=str(tmp / "models"),
        FAKE_SSH_TO=str(tmp / "otherhost"),
        FAKE_SSH_FAULT="advance:DISAGREE",
    )
    with server.client() as client:
        client.create(model="g", from_=str(qwen2_dir), parameters={"distributed": "pipeline"})
    # The other host's copy of the store, links and all (as `rsync -a` makes one).
    shutil.copytree(tmp / "models", tmp / "otherhost", symlinks=True)
    yield server
    group = group_processes(server)
    server.stop()
    assert wait_for(lambda: gone(group), 20)  # the "remote" rank too


def test_a_missing_model_file_on_a_host_names_the_host_and_the_file(two_hosts: Server) -> None:
    # The other host's copy of the store lacks the blob of the model's weights.
    elsewhere = two_hosts.models_dir.parent / "otherhost"
    (link,) = (elsewhere / "ollmlx" / "models").glob("*/model.safetensors")
    weights = link.parent / os.readlink(link)
    kept = weights.read_bytes()
    weights.unlink()
    with two_hosts.client() as client:
        with pytest.raises(ollama.ResponseError) as raised:
            client.generate(model="g", prompt="hi", options={"num_predict": 2})
        message = raised.value.error
        assert "host otherhost (rank 1)" in message
        assert "missing model file(s)" in message and "model.safetensors" in message
        assert "rank 0" not in message
        assert wait_for(lambda: gone(group_processes(two_hosts)), 20)
        # Copied there (as `mlx_lm.share` or rsync would): the group serves.
        weights.write_bytes(kept)
        assert wait_for(lambda: _generates(client), 30)


def test_a_rank_that_computes_other_tokens_takes_the_group_down(two_hosts: Server) -> None:
    with two_hosts.client() as client:
        assert wait_for(lambda: _generates(client), 30)
        group = group_processes(two_hosts)
        # Only rank 1 fails this request (its test fault): its events differ from rank
        # 0's, and the next step's digests say so.
        with pytest.raises(ollama.ResponseError) as raised:
            client.generate(model="g", prompt="DISAGREE", options={"num_predict": 8})
    assert "rank(s) 1 computed other tokens than rank 0" in raised.value.error
    assert wait_for(lambda: gone(group), 20)


def _generates(client: ollama.Client) -> bool:
    try:
        return client.generate(model="g", prompt="hi", options={"num_predict": 2}).done
    except ollama.ResponseError as exc:  # the start backoff after the failed one
        assert "next start attempt" in exc.error
        time.sleep(0.5)
        return False


def test_a_model_mlx_lm_cannot_split_is_refused_at_create(
    group_server: Server, tiny_model_dir: Path, tmp_path: Path
) -> None:
    phi3 = build_tiny_model(tmp_path / "phi3", model_type="phi3")
    with group_server.client() as client:
        with pytest.raises(ollama.ResponseError) as raised:
            client.create(model="p", from_=str(phi3), parameters={"distributed": "tensor"})
        assert raised.value.status_code == 400
        assert (
            raised.value.error
            == "model type 'phi3' has no tensor parallelism in mlx-lm (no shard())"
        )
        with pytest.raises(ollama.ResponseError) as raised:
            client.create(
                model="l", from_=str(tiny_model_dir), parameters={"distributed": "pipeline"}
            )
        assert raised.value.error == (
            "model type 'llama' has no pipeline parallelism in mlx-lm (no pipeline()); "
            "it supports tensor"
        )
        with pytest.raises(ollama.ResponseError) as raised:
            client.create(model="l", from_=str(tiny_model_dir), parameters={"distributed": "ring"})
        assert raised.value.error == (
            "invalid value for parameter 'distributed': 'ring' (must be tensor or pipeline)"
        )


def test_a_group_model_without_a_hostfile_is_a_clear_error(
    client: ollama.Client, qwen2_dir: Path
) -> None:
    client.create(model="needs-hosts", from_=str(qwen2_dir), parameters={"distributed": "tensor"})
    with pytest.raises(ollama.ResponseError) as raised:
        client.generate(model="needs-hosts", prompt="hi")
    assert raised.value.status_code == 400
    assert raised.value.error == (
        "model needs-hosts:latest is served by a group (PARAMETER distributed tensor) but "
        "OLLMLX_HOSTFILE is not set"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read it"),
        ("{not json", "not valid JSON"),
        (json.dumps({"hosts": [LOOPBACK]}), "a group needs at least 2 hosts, got 1"),
        (
            json.dumps([LOOPBACK, {"ssh": "b", "ips": ["10.0.0.300"]}]),
            "'10.0.0.300' is not an IP address",
        ),
        (json.dumps([LOOPBACK, {"ssh": "b"}]), 'the ring backend needs its "ips"'),
        (json.dumps([{"ssh": "far", "ips": ["10.0.0.2"]}, LOOPBACK]), "the first host is rank 0"),
        (json.dumps({"backend": "mpi", "hosts": [LOOPBACK, LOOPBACK]}), "backend must be one of"),
    ],
)
def test_a_bad_hostfile_stops_the_server_with_a_clear_error(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "hosts.json"
    if content is not None:
        path.write_text(content)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "OLLMLX_"))}
    result = subprocess.run(
        [sys.executable, "-m", "ollmlx", "serve"],
        env={**env, "OLLMLX_HOSTFILE": str(path), "OLLAMA_HOST": "127.0.0.1:1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: OLLMLX_HOSTFILE {path}")
    assert message in result.stderr
