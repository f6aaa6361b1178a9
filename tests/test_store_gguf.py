"""GGUF models in a store Ollama wrote (its `model` layer): converted to MLX on first use,
once, and served; listed and shown as Ollama shows them; their params, system and Go
template layers applied; refused with a 400 naming what cannot be converted."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gguf
import httpx
import numpy as np
import ollama
import pytest
from gguf import GGMLQuantizationType as Q

from ollmlx.templates import families
from tests.conftest import Server, server_env, start_server
from tests.gguf_fixtures import tiny_gguf, write_gguf
from tests.ollama_store import OllamaStore, human_number
from tests.oracle import Oracle
from tests.tinymodel import build_tiny_model

GREEDY = {"temperature": 0, "num_predict": 12}
HELLO = [{"role": "user", "content": "hello world"}]
CHATML = families()["chatml"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("gguf-sources")
    llama = build_tiny_model(tmp / "llama")
    qwen = build_tiny_model(tmp / "qwen2", model_type="qwen2")
    # F16 is exact for a float16 source (tests/test_gguf.py).
    qwen16 = build_tiny_model(tmp / "qwen2-16", model_type="qwen2", dtype="float16")
    files = {
        "llama": llama,
        "qwen2": qwen,
        "qwen2-16": qwen16,
        "llama.f32": write_gguf(llama, tmp / "llama-f32.gguf", Q.F32),
        "qwen2.q8": write_gguf(qwen, tmp / "qwen2-q8.gguf", Q.Q8_0),
        "llama.q4": write_gguf(llama, tmp / "llama-q4.gguf", Q.Q4_0),
        "qwen2.bare": write_gguf(qwen, tmp / "qwen2-bare.gguf", Q.F32, chat_template=False),
        "qwen2.f16": write_gguf(qwen16, tmp / "model.gguf", Q.F16),
    }
    zeros = np.zeros((4, 32), dtype=np.float32)
    files["mamba"] = tiny_gguf(tmp / "mamba.gguf", "mamba", {"token_embd.weight": (zeros, Q.F32)})
    blocks = np.zeros((4, 292), dtype=np.uint8)
    files["q8k"] = tiny_gguf(tmp / "q8k.gguf", "llama", {"token_embd.weight": (blocks, Q.Q8_K)})
    return files


@pytest.fixture(scope="module")
def gguf_server(
    tmp_path_factory: pytest.TempPathFactory, sources: dict[str, Path]
) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("gguf-store")
    store = OllamaStore(tmp / "models")
    store.gguf_model(
        "llama-f32", sources["llama.f32"], system="Be brief.", params={"num_predict": 12}
    )
    store.gguf_model("qwen-q8", sources["qwen2.q8"])
    # The tiny models never end an answer: `ollmlx run` needs a bound.
    store.gguf_model("llama-q4", sources["llama.q4"], params={"num_predict": 8})
    store.gguf_model("qwen-go", sources["qwen2.bare"], template=CHATML["go_templates"][0])
    store.gguf_model("qwen-odd", sources["qwen2.bare"], template="### Q:\n{{ .Prompt }}\n")
    store.gguf_model("mamba", sources["mamba"])
    store.gguf_model("q8k", sources["q8k"])
    server = start_server(tmp, OLLAMA_KEEP_ALIVE="10m", OLLAMA_MAX_LOADED_MODELS="2")
    yield server
    server.stop()


def _manifest(server: Server, model: str) -> Path:
    return server.models_dir / "manifests/registry.ollama.ai/library" / model / "latest"


def _gguf_hex(server: Server, model: str) -> str:
    manifest = json.loads(_manifest(server, model).read_text())
    (layer,) = [x for x in manifest["layers"] if x["mediaType"].endswith(".model")]
    return layer["digest"].removeprefix("sha256:")


def test_gguf_models_are_listed_as_ollama_lists_them(gguf_server: Server, sources) -> None:
    with gguf_server.client() as client:
        listed = {m.model: m.details for m in client.list().models}
    assert set(listed) == {
        f"{m}:latest"
        for m in ("llama-f32", "qwen-q8", "llama-q4", "qwen-go", "qwen-odd", "mamba", "q8k")
    }
    llama = listed["llama-f32:latest"]
    assert llama is not None and (llama.format, llama.family) == ("gguf", "llama")
    assert llama.families == ["llama"] and llama.quantization_level == "F32"
    params = sum(t.n_elements for t in gguf.GGUFReader(str(sources["llama.f32"])).tensors)
    assert llama.parameter_size == human_number(params)
    qwen = listed["qwen-q8:latest"]
    assert qwen is not None and (qwen.family, qwen.quantization_level) == ("qwen2", "Q8_0")


def test_show_of_a_gguf_model_reports_its_metadata(gguf_server: Server) -> None:
    with gguf_server.client() as client:
        info = client.show("llama-f32")
    assert info.modelinfo is not None
    assert info.modelinfo["general.architecture"] == "llama"
    assert info.modelinfo["llama.embedding_length"] == 64
    assert info.modelinfo["tokenizer.ggml.tokens"] == []  # long arrays left out, as Ollama does
    assert "tokenizer.chat_template" not in info.modelinfo
    assert info.template and "add_generation_prompt" in info.template  # the GGUF's Jinja
    assert info.capabilities == ["completion"]
    assert info.details is not None and info.details.format == "gguf"


def test_a_float_gguf_converts_once_on_first_use_and_chats_like_its_source(
    gguf_server: Server, sources
) -> None:
    before = _manifest(gguf_server, "llama-f32").read_bytes()
    with gguf_server.client() as client:
        first = client.generate(model="llama-f32", prompt="hello world", options={"temperature": 0})
        again = client.chat(model="llama-f32", messages=HELLO, options={"temperature": 0})
    oracle = Oracle(sources["llama"])
    system = [{"role": "system", "content": "Be brief."}, *HELLO]  # the SYSTEM layer
    expected = oracle.greedy(oracle.chat_prompt(system), 12)  # num_predict from PARAMS
    assert first.context is not None
    assert list(first.context) == [*expected.prompt, *expected.tokens]
    assert again.message.content == expected.text
    log = gguf_server.log()
    assert log.count("converting GGUF of llama-f32:latest to MLX") == 1
    cache = gguf_server.models_dir / "ollmlx" / "gguf" / _gguf_hex(gguf_server, "llama-f32")
    assert (cache / "model" / "config.json").is_file()
    assert _manifest(gguf_server, "llama-f32").read_bytes() == before  # never rewritten


def test_pull_of_a_gguf_model_converts_it_with_progress(gguf_server: Server) -> None:
    with gguf_server.client() as client:
        parts = list(client.pull("qwen-q8", stream=True))
    statuses = [p.status for p in parts]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    converting = [p for p in parts if p.status == "converting gguf"]
    assert converting and converting[-1].completed == converting[-1].total > 0
    assert converting[-1].digest == "sha256:" + _gguf_hex(gguf_server, "qwen-q8")
    with gguf_server.client() as client:  # done: a second pull has nothing to convert
        assert [p.status for p in client.pull("qwen-q8", stream=True)] == [
            "pulling manifest",
            "success",
        ]


def test_a_quantized_gguf_serves_what_its_conversion_computes(gguf_server: Server) -> None:
    cache = gguf_server.models_dir / "ollmlx" / "gguf" / _gguf_hex(gguf_server, "qwen-q8")
    with gguf_server.client() as client:
        result = client.generate(model="qwen-q8", prompt="hello world", options=GREEDY)
    oracle = Oracle(cache / "model")  # in-process mlx-lm on the converted folder
    expected = oracle.greedy(oracle.chat_prompt(HELLO), 12)
    assert result.context is not None
    assert list(result.context) == [*expected.prompt, *expected.tokens]
    config = json.loads((cache / "model" / "config.json").read_text())
    assert config["quantization"]["bits"] == 8  # Q8_0 kept as 8-bit blocks


def test_a_go_template_only_gguf_uses_its_familys_jinja(gguf_server: Server, sources) -> None:
    with gguf_server.client() as client:
        result = client.generate(model="qwen-go", prompt="Hi", options=GREEDY)
        info = client.show("qwen-go")
    assert info.template == CHATML["go_templates"][0]  # shown as Ollama stored it
    oracle = Oracle(sources["qwen2"])
    text = oracle.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}],
        chat_template=CHATML["jinja"],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    prompt = list(oracle.tokenizer.encode(text, add_special_tokens=False))
    assert result.context is not None and list(result.context[: len(prompt)]) == prompt


def test_an_unknown_go_template_is_a_400_naming_the_model(gguf_server: Server) -> None:
    with gguf_server.client() as client, pytest.raises(ollama.ResponseError) as err:
        client.chat(model="qwen-odd", messages=HELLO)
    assert err.value.status_code == 400
    assert err.value.error.startswith('model "qwen-odd:latest": the model\'s Go template')


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("mamba", "GGUF architecture 'mamba' is not converted yet (supported: "),
        ("q8k", "tensor type Q8_K cannot be run by MLX"),
    ],
)
def test_what_cannot_convert_is_a_400_before_any_work(
    gguf_server: Server, model: str, message: str
) -> None:
    with gguf_server.client() as client:
        for _ in range(2):  # the second answer comes from what the first learned
            with pytest.raises(ollama.ResponseError) as err:
                client.generate(model=model, prompt="hi")
            assert err.value.status_code == 400
            assert err.value.error.startswith(message)
        assert f"{model}:latest" in {m.model for m in client.list().models}
    cache = gguf_server.models_dir / "ollmlx" / "gguf" / _gguf_hex(gguf_server, model)
    assert not (cache / "model").exists()
    response = httpx.post(gguf_server.url + "/api/pull", json={"model": model})
    assert response.status_code == 400 and response.json()["error"].startswith(message)


def test_create_from_a_gguf_file_with_a_modelfile(gguf_server: Server, sources, tmp_path) -> None:
    folder = sources["qwen2.f16"].parent
    modelfile = folder / "Modelfile"
    modelfile.write_text('FROM ./model.gguf\nSYSTEM "Be kind."\nPARAMETER temperature 0\n')
    env = server_env(tmp_path, gguf_server.port)
    cli = [sys.executable, "-m", "ollmlx", "create", "kind", "-f", str(modelfile)]
    done = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with gguf_server.client() as client:
        details = {m.model: m.details for m in client.list().models}["kind:latest"]
        assert details is not None and (details.format, details.quantization_level) == (
            "gguf",
            "F16",
        )
        result = client.chat(model="kind", messages=HELLO, options={"num_predict": 8})
    oracle = Oracle(sources["qwen2-16"])
    messages = [{"role": "system", "content": "Be kind."}, *HELLO]
    expected = oracle.greedy(oracle.chat_prompt(messages), 8)
    assert result.message.content == expected.text
    hex_digest = _gguf_hex(gguf_server, "kind")
    blob = gguf_server.models_dir / "blobs" / f"sha256-{hex_digest}"
    assert blob.stat().st_ino == sources["qwen2.f16"].stat().st_ino  # linked, not copied
    cache = gguf_server.models_dir / "ollmlx" / "gguf" / hex_digest
    assert (cache / "model").is_dir()
    with gguf_server.client() as client:
        client.delete("kind")
    assert not cache.exists() and not blob.exists()  # no manifest uses that GGUF any more


def test_ollmlx_run_shows_the_conversion_of_a_gguf_on_first_use(
    gguf_server: Server, tmp_path: Path
) -> None:
    env = server_env(tmp_path, gguf_server.port)
    cli = [sys.executable, "-m", "ollmlx", "run", "llama-q4", "hello world"]
    runs = [
        subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        for _ in range(2)
    ]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    assert "converting GGUF to MLX" in runs[0].stderr and runs[0].stdout.strip()
    assert "converting" not in runs[1].stderr  # once
