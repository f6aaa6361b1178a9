"""A store Ollama wrote, served by ollmlx: its safetensors models (float and every quantized
kind MLX runs), listed, shown and chatted with through the official client, generating the
tokens in-process mlx-lm generates; and what ollmlx writes, read back as Ollama reads it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.conftest import Server, start_server
from tests.ollama_store import KINDS, OllamaStore, mlx_lm_twin
from tests.oracle import Oracle

GREEDY = {"temperature": 0, "num_predict": 16}
HELLO = [{"role": "user", "content": "hello world"}]


@pytest.fixture(scope="module")
def ollama_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[tuple[Server, Path]]:
    """A server on a store that holds what Ollama writes: float and quantized safetensors
    models, a cloud model, and a model of a quantization MLX cannot run."""
    tmp = tmp_path_factory.mktemp("ollama-store")
    store = OllamaStore(tmp / "models")
    store.safetensors_model("tiny-float", tiny_model_dir, system="Be brief.")
    for kind in KINDS:
        store.safetensors_model(f"tiny:{kind}", tiny_model_dir, quant=kind)
    store.write_manifest(
        "gpt-oss:120b-cloud",
        {
            "model_format": "",
            "model_family": "gptoss",
            "model_families": None,
            "model_type": "116.8B",
            "file_type": "",
            "remote_host": "https://ollama.com:443",
            "remote_model": "gpt-oss:120b",
            "architecture": "",
            "os": "",
        },
        [],
    )
    odd = store.safetensors_model("tiny:odd", tiny_model_dir, quant="int4")
    _relabel_quant(store, odd, "q3_weird")
    server = start_server(tmp, OLLAMA_KEEP_ALIVE="10m", OLLAMA_MAX_LOADED_MODELS="2")
    yield server, tmp
    server.stop()


def _relabel_quant(store: OllamaStore, manifest_path: Path, kind: str) -> None:
    """Rewrite the tensor blobs of a model so their metadata names another quant_type."""
    manifest = json.loads(manifest_path.read_text())
    for layer in manifest["layers"]:
        if not layer["mediaType"].endswith(".tensor"):
            continue
        path = store.root / "blobs" / layer["digest"].replace(":", "-")
        data = path.read_bytes()
        head_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + head_len])
        if "quant_type" in (header.get("__metadata__") or {}):
            header["__metadata__"]["quant_type"] = kind
            new_head = json.dumps(header).encode()
            new_head += b" " * (-len(new_head) % 8)
            new = len(new_head).to_bytes(8, "little") + new_head + data[8 + head_len :]
            digest, size = store.blob(new)
            layer["digest"], layer["size"] = digest, size
    manifest_path.write_text(json.dumps(manifest, separators=(",", ":")) + "\n")


def test_ollamas_models_are_listed_with_ollamas_details(ollama_server) -> None:
    server, _ = ollama_server
    with server.client() as client:
        listed = {m.model: m for m in client.list().models}
    expected = {
        "tiny-float:latest",
        "gpt-oss:120b-cloud",
        "tiny:odd",
        *(f"tiny:{k}" for k in KINDS),
    }
    assert set(listed) == expected  # models ollmlx cannot run are listed too
    int4 = listed["tiny:int4"].details
    assert int4 is not None and int4.format == "safetensors" and int4.quantization_level == "int4"
    cloud = listed["gpt-oss:120b-cloud"].details
    assert cloud is not None and cloud.family == "gptoss" and cloud.parameter_size == "116.8B"
    assert listed["tiny-float:latest"].size == sum(
        layer["size"]
        for layer in [
            *_manifest(server, "tiny-float")["layers"],
            _manifest(server, "tiny-float")["config"],
        ]
    )


def _manifest(server: Server, model: str, tag: str = "latest") -> dict:
    path = server.models_dir / "manifests/registry.ollama.ai/library" / model / tag
    return json.loads(path.read_text())


def test_show_reads_the_config_files_of_an_ollama_safetensors_model(ollama_server) -> None:
    server, _ = ollama_server
    with server.client() as client:
        info = client.show("tiny-float")
    assert info.modelinfo is not None
    assert info.modelinfo["general.architecture"] == "llama"
    assert info.modelinfo["llama.embedding_length"] == 64
    assert info.capabilities == ["completion"]
    assert info.template and "add_generation_prompt" in info.template
    assert info.details is not None and info.details.family == "llama"
    raw = httpx.post(server.url + "/api/show", json={"model": "tiny-float"}).json()
    assert raw["system"] == "Be brief."


def test_a_float_ollama_model_chats_like_in_process_mlx_lm(
    ollama_server, tiny_model_dir: Path
) -> None:
    server, _ = ollama_server
    oracle = Oracle(tiny_model_dir)
    with server.client() as client:
        result = client.generate(model="tiny-float", prompt="hello world", options=GREEDY)
        chat = client.chat(model="tiny-float", messages=HELLO, options=GREEDY)
    messages = [{"role": "system", "content": "Be brief."}, *HELLO]  # the model's SYSTEM
    expected = oracle.greedy(oracle.chat_prompt(messages), 16)
    assert result.context is not None
    assert list(result.context) == [*expected.prompt, *expected.tokens]
    assert chat.message.content == expected.text


@pytest.mark.parametrize("kind", list(KINDS))
def test_quantized_ollama_blobs_run_on_mlx_like_mlx_lm(
    ollama_server, tiny_model_dir: Path, tmp_path: Path, kind: str
) -> None:
    server, _ = ollama_server
    oracle = Oracle(mlx_lm_twin(tiny_model_dir, kind, tmp_path / "twin"))
    with server.client() as client:
        result = client.generate(model=f"tiny:{kind}", prompt="hello world", options=GREEDY)
    expected = oracle.greedy(oracle.chat_prompt(HELLO), 16)
    assert result.context is not None
    assert list(result.context) == [*expected.prompt, *expected.tokens]
    folder = next(iter((server.models_dir / "ollmlx" / "models").iterdir()))
    assert folder.is_dir()


def test_a_quantization_mlx_cannot_run_is_a_400_naming_it(ollama_server) -> None:
    server, _ = ollama_server
    with server.client() as client, pytest.raises(ollama.ResponseError) as err:
        client.generate(model="tiny:odd", prompt="hi")
    assert err.value.status_code == 400
    assert err.value.error.startswith("unsupported quantization type 'q3_weird' (tensor model.")
    assert "MLX runs nvfp4, mxfp4, int4, mxfp8, int8" in err.value.error


def test_a_cloud_model_is_listed_but_not_run(ollama_server) -> None:
    server, _ = ollama_server
    with server.client() as client, pytest.raises(ollama.ResponseError) as err:
        client.chat(model="gpt-oss:120b-cloud", messages=HELLO)
    assert err.value.status_code == 400
    assert "is a cloud model" in err.value.error


def test_ollmlx_writes_manifests_ollama_reads(ollama_server, tiny_model_dir: Path) -> None:
    """What Ollama's GetModel and x/mlxrunner read: the docker manifest, a ConfigV2 config
    blob with capabilities (Ollama runs a safetensors model only with them), tensor layers
    that are safetensors files, json layers by name, settings in Ollama's media types."""
    server, _ = ollama_server
    with server.client() as client:
        client.create(
            model="mine",
            from_=str(tiny_model_dir),
            system="S",
            parameters={"temperature": 0.5, "stop": ["<x>"]},
            messages=[{"role": "user", "content": "hi"}],
        )
    raw = (server.models_dir / "manifests/registry.ollama.ai/library/mine/latest").read_bytes()
    assert raw.endswith(b"}\n") and b": " not in raw  # json.Encoder: compact, one newline
    manifest = json.loads(raw)
    assert list(manifest) == ["schemaVersion", "mediaType", "config", "layers"]
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    blob = server.models_dir / "blobs" / manifest["config"]["digest"].replace(":", "-")
    config = json.loads(blob.read_bytes())
    assert list(config)[:5] == [
        "model_format",
        "model_family",
        "model_families",
        "model_type",
        "file_type",
    ]
    assert config["model_format"] == "safetensors" and config["model_family"] == "llama"
    assert config["capabilities"] == ["completion"]
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    by_type: dict[str, list[dict]] = {}
    for layer in manifest["layers"]:
        assert list(layer)[:3] == ["mediaType", "digest", "size"]
        path = server.models_dir / "blobs" / layer["digest"].replace(":", "-")
        assert path.stat().st_size == layer["size"]
        by_type.setdefault(layer["mediaType"].rsplit(".", 1)[-1], []).append(layer)
    assert [x["name"] for x in by_type["tensor"]] == ["model.safetensors"]
    assert "config.json" in [x["name"] for x in by_type["json"]]
    params = by_type["params"][0]
    body = (server.models_dir / "blobs" / params["digest"].replace(":", "-")).read_bytes()
    # A Go map (keys sorted), with encoding/json's HTML escapes.
    assert body == b'{"stop":["\\u003cx\\u003e"],"temperature":0.5}\n'
    messages = by_type["messages"][0]
    body = (server.models_dir / "blobs" / messages["digest"].replace(":", "-")).read_bytes()
    assert body == b'[{"role":"user","content":"hi"}]\n'
    # The weights are the source's own file (a hard link), not a copy.
    weights = server.models_dir / "blobs" / by_type["tensor"][0]["digest"].replace(":", "-")
    assert weights.stat().st_ino == (tiny_model_dir / "model.safetensors").stat().st_ino
