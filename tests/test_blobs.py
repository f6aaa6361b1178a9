"""/api/blobs and /api/create with `files` and `adapters`, as Ollama's official Python
client sends them (create_blob, then create(files=...)): uploads streamed to disk while
hashed, past the request-body limit; a wrong digest or a full disk leaves nothing."""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlx.core as mx
import ollama
import pytest
from gguf import GGMLQuantizationType as Q

from tests.conftest import Server, start_server
from tests.gguf_fixtures import write_gguf
from tests.oracle import Oracle

GREEDY = {"temperature": 0, "num_predict": 12}
HELLO = [{"role": "user", "content": "hello world"}]


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def blob_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # A 1 MiB body limit: uploads are larger and must not be bound by it.
    server = start_server(tmp_path_factory.mktemp("blobs"), OLLMLX_MAX_BODY="1M")
    yield server
    server.stop()


def _blob_files(server: Server) -> list[str]:
    return sorted(p.name for p in (server.models_dir / "blobs").iterdir())


def test_head_and_post_answer_as_ollama(blob_server: Server) -> None:
    data = b"a small blob"
    digest = _digest(data)
    url = f"{blob_server.url}/api/blobs/{digest}"
    assert httpx.head(url).status_code == 404
    assert httpx.post(url, content=data).status_code == 201
    assert httpx.head(url).status_code == 200
    assert httpx.post(url, content=data).status_code == 200  # already there
    blob = blob_server.models_dir / "blobs" / digest.replace(":", "-")
    assert blob.read_bytes() == data
    bad = httpx.post(f"{blob_server.url}/api/blobs/sha256:123", content=data)
    assert bad.status_code == 400 and bad.json() == {"error": "invalid digest format"}


def test_a_blob_with_a_wrong_digest_leaves_nothing(blob_server: Server) -> None:
    before = _blob_files(blob_server)
    claimed = _digest(b"something else")
    response = httpx.post(f"{blob_server.url}/api/blobs/{claimed}", content=b"the real bytes")
    assert response.status_code == 400
    assert response.json() == {
        "error": f'digest mismatch, expected "{claimed}", got "{_digest(b"the real bytes")}"'
    }
    assert _blob_files(blob_server) == before
    assert not list((blob_server.models_dir / "ollmlx" / "tmp").iterdir())


def test_uploads_are_not_bound_by_the_request_body_limit(blob_server: Server, tmp_path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (3 << 12))  # 3 MiB, over the 1 MiB limit
    with blob_server.client() as client:
        digest = client.create_blob(big)
    blob = blob_server.models_dir / "blobs" / digest.replace(":", "-")
    assert blob.read_bytes() == big.read_bytes()
    # Everything else still is.
    response = httpx.post(f"{blob_server.url}/api/generate", content=b"x" * (2 << 20))
    assert response.status_code == 413


def test_a_full_disk_is_a_clear_error_before_any_byte_is_written(blob_server: Server) -> None:
    digest = _digest(b"never sent")
    request = (
        f"POST /api/blobs/{digest} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Length: {1 << 60}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", blob_server.port), timeout=10) as sock:
        sock.sendall(request)
        answer = sock.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 507")
    assert "not enough disk space in " in answer and f"{1 << 60} bytes needed" in answer
    assert not list((blob_server.models_dir / "ollmlx" / "tmp").iterdir())


def _upload(client: ollama.Client, folder: Path) -> dict[str, str]:
    """What Ollama's CLI does for a model folder: each file a blob, by relative path."""
    return {
        p.relative_to(folder).as_posix(): client.create_blob(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def make_adapter(model_dir: Path, out: Path) -> Path:
    """An mlx-lm LoRA adapter with random (non-zero) weights for the tiny model."""
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model, _ = load(str(model_dir))
    params = {"rank": 4, "scale": 10.0, "dropout": 0.0}
    linear_to_lora_layers(model, 2, params)
    mx.random.seed(3)
    weights = {
        k: mx.random.normal(v.shape) * 0.5
        for k, v in tree_flatten(model.parameters())
        if k.endswith(("lora_a", "lora_b"))
    }
    out.mkdir(parents=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), weights)
    config = {"fine_tune_type": "lora", "num_layers": 2, "lora_parameters": params}
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def test_create_from_uploaded_files_and_adapters(
    blob_server: Server, tiny_model_dir: Path, tmp_path: Path
) -> None:
    with blob_server.client() as client:
        files = _upload(client, tiny_model_dir)
        statuses = [p.status for p in client.create(model="uploaded", files=files, stream=True)]
        assert statuses[-2:] == ["writing manifest", "success"]
        result = client.generate(model="uploaded", prompt="hello world", options=GREEDY)
        adapter = make_adapter(tiny_model_dir, tmp_path / "adapter")
        adapters = _upload(client, adapter)
        client.create(model="uploaded-lora", from_="uploaded", adapters=adapters)
        tuned = client.generate(model="uploaded-lora", prompt="hello world", options=GREEDY)
    expected = Oracle(tiny_model_dir).greedy(Oracle(tiny_model_dir).chat_prompt(HELLO), 12)
    assert result.context is not None and list(result.context) == [
        *expected.prompt,
        *expected.tokens,
    ]
    with_adapter = Oracle(tiny_model_dir, adapter)
    want = with_adapter.greedy(with_adapter.chat_prompt(HELLO), 12)
    assert want.tokens != expected.tokens  # the adapter changes the answer
    assert tuned.context is not None and list(tuned.context)[len(want.prompt) :] == want.tokens
    # The uploaded blobs are the layers themselves: nothing was copied.
    manifest = blob_server.models_dir / "manifests/registry.ollama.ai/library/uploaded/latest"
    named = {x.get("name"): x["digest"] for x in json.loads(manifest.read_text())["layers"]}
    assert named["model.safetensors"] == files["model.safetensors"]


def test_create_from_an_uploaded_gguf(blob_server: Server, tmp_path: Path) -> None:
    from tests.tinymodel import build_tiny_model

    source = build_tiny_model(tmp_path / "llama", seed=11)
    path = write_gguf(source, tmp_path / "tiny.gguf", Q.F32)
    with blob_server.client() as client:
        digest = client.create_blob(path)
        parts = list(client.create(model="from-gguf", files={"tiny.gguf": digest}, stream=True))
        result = client.generate(model="from-gguf", prompt="hello world", options=GREEDY)
        details = {m.model: m.details for m in client.list().models}["from-gguf:latest"]
    statuses = [p.status for p in parts]
    assert statuses[0] == "parsing GGUF"
    assert f"using existing layer {digest}" in statuses
    assert "converting gguf" in statuses and statuses[-2:] == ["writing manifest", "success"]
    assert details is not None and (details.format, details.family) == ("gguf", "llama")
    oracle = Oracle(source)
    expected = oracle.greedy(oracle.chat_prompt(HELLO), 12)
    assert result.context is not None
    assert list(result.context) == [*expected.prompt, *expected.tokens]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"files": {"../x.safetensors": "sha256:" + "0" * 64}}, "file path must be relative"),
        ({"files": {"model.safetensors": "nope"}}, "invalid digest format"),
        ({"files": {"model.safetensors": "sha256:" + "0" * 64}}, "not found"),
        ({"from": "tiny-missing-model-x"}, "model 'tiny-missing-model-x' not found"),
        ({}, "neither 'from' or 'files' was specified"),
    ],
)
def test_create_refuses_bad_files_with_a_4xx(blob_server: Server, body, message) -> None:
    response = httpx.post(f"{blob_server.url}/api/create", json={"model": "bad", **body})
    assert 400 <= response.status_code < 500
    assert message in response.json()["error"]
    with blob_server.client() as client:
        assert "bad:latest" not in {m.model for m in client.list().models}


def test_create_refuses_unknown_files_and_gguf_adapters(
    blob_server: Server, tiny_model_dir: Path
) -> None:
    text = _digest(b"just text")
    httpx.post(f"{blob_server.url}/api/blobs/{text}", content=b"just text")
    response = httpx.post(
        f"{blob_server.url}/api/create", json={"model": "bad", "files": {"notes.txt": text}}
    )
    assert response.status_code == 400 and response.json()["error"] == "unknown type"
    lora = b"GGUF" + bytes(60)
    digest = _digest(lora)
    httpx.post(f"{blob_server.url}/api/blobs/{digest}", content=lora)
    response = httpx.post(
        f"{blob_server.url}/api/create",
        json={"model": "bad", "from": str(tiny_model_dir), "adapters": {"lora.gguf": digest}},
    )
    assert response.status_code == 400
    assert response.json()["error"] == "GGUF (LoRA) adapters are not supported by ollmlx"
