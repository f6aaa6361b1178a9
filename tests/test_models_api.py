"""/api/tags, show, ps, copy, delete, create and version through the official client."""

from __future__ import annotations

from pathlib import Path

import httpx
import ollama
import pytest

import ollmlx
from ollmlx.config import OLLAMA_API_VERSION, detect_backend
from tests.conftest import Server


def test_root_and_version(server: Server, client: ollama.Client) -> None:
    response = httpx.get(server.url + "/")
    assert response.status_code == 200 and response.text == "Ollama is running"
    assert httpx.get(server.url + "/api/version").json() == {
        "version": OLLAMA_API_VERSION,  # the Ollama release whose API is implemented
        "ollmlx_version": ollmlx.__version__,
    }


def test_head_is_answered_where_ollama_answers_it(server: Server) -> None:
    # server/routes.go: r.HEAD("/"), r.HEAD("/api/version"), r.HEAD("/api/tags").
    for path in ("/", "/api/version", "/api/tags"):
        response = httpx.head(server.url + path)
        assert response.status_code == 200, path
        assert response.content == b""


def test_status_is_ollamas_with_the_cloud_off(server: Server) -> None:
    response = httpx.get(server.url + "/api/status")
    assert response.status_code == 200
    assert response.json() == {"cloud": {"disabled": True, "source": "config"}}


def test_unknown_routes_answer_json_errors(server: Server, client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.push("tiny")  # Ollama's registry: not a route here
    assert err.value.status_code == 404
    assert err.value.error == "404 page not found"
    response = httpx.get(server.url + "/api/nothing")
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {"error": "404 page not found"}
    response = httpx.get(server.url + "/api/generate")
    assert response.status_code == 405
    assert response.json() == {"error": "405 method not allowed"}
    response = httpx.post(server.url + "/v1/nothing", json={})
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "404 page not found",
            "type": "not_found_error",
            "param": None,
            "code": None,
        }
    }
    response = httpx.post(server.url + "/v1/messages/nothing", json={})
    assert response.status_code == 404
    body = response.json()
    assert body["error"] == {"type": "not_found_error", "message": "404 page not found"}


def test_list_shows_created_model_with_details(client: ollama.Client) -> None:
    models = {m.model: m for m in client.list().models}
    tiny = models["tiny:latest"]
    assert tiny.size and tiny.size > 0
    assert tiny.digest and len(tiny.digest) == 64
    assert tiny.details is not None
    assert tiny.details.format == "safetensors"
    assert tiny.details.family == "llama"
    assert tiny.details.parameter_size == "139.6K"
    assert tiny.details.quantization_level == "F32"


def test_show_returns_template_details_and_model_info(client: ollama.Client) -> None:
    info = client.show("tiny")
    assert info.details is not None and info.details.family == "llama"
    assert info.modelinfo is not None
    assert info.modelinfo["general.architecture"] == "llama"
    assert info.modelinfo["llama.embedding_length"] == 64
    assert info.capabilities == ["completion"]
    assert info.template and "add_generation_prompt" in info.template
    assert info.modelfile and "FROM " in info.modelfile


def test_create_with_system_template_and_parameters(server: Server, client: ollama.Client) -> None:
    template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    statuses = [
        s.status
        for s in client.create(
            model="custom:v1",
            from_="tiny",
            system="You are a pirate.",
            template=template,
            parameters={"temperature": 0.2, "stop": ["<|end|>", "END"]},
            stream=True,
        )
    ]
    assert statuses[-2:] == ["writing manifest", "success"]
    info = client.show("custom:v1")
    # The official client's ShowResponse has no `system` field: read the raw body.
    raw = httpx.post(server.url + "/api/show", json={"model": "custom:v1"}).json()
    assert raw["system"] == "You are a pirate."
    assert info.template == template
    assert info.parameters is not None
    assert 'stop                           "<|end|>"' in info.parameters
    assert "temperature                    0.2" in info.parameters
    assert "SYSTEM" in (info.modelfile or "")
    client.delete("custom:v1")


def test_create_from_missing_directory_is_400(client: ollama.Client, tmp_path: Path) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.create(model="broken", from_=str(tmp_path / "missing"))
    assert err.value.status_code == 400
    assert "not a directory" in err.value.error
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ollama.ResponseError) as err:
        client.create(model="broken", from_=str(empty))
    assert "config.json" in err.value.error
    assert "broken:latest" not in [m.model for m in client.list().models]


def test_copy_and_delete(client: ollama.Client) -> None:
    assert client.copy("tiny", "tiny-copy:latest").status == "success"
    listed = [m.model for m in client.list().models]
    assert "tiny-copy:latest" in listed
    assert client.generate(model="tiny-copy", prompt="hi", options={"num_predict": 2}).done
    assert client.delete("tiny-copy").status == "success"
    assert "tiny-copy:latest" not in [m.model for m in client.list().models]
    assert "tiny:latest" in [m.model for m in client.list().models]  # shared weights survive


def test_copy_and_delete_errors(server: Server, client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.copy("missing", "other")
    assert err.value.status_code == 404
    assert err.value.error == 'model "missing" not found'
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("missing")
    assert err.value.status_code == 404
    assert err.value.error == "model 'missing' not found"
    response = httpx.post(server.url + "/api/copy", json={"source": "tiny", "destination": "../x"})
    assert response.status_code == 400
    assert response.json() == {"error": 'destination "../x" is invalid'}


def test_names_are_case_insensitive(client: ollama.Client) -> None:
    client.copy("tiny", "Mixed:Case")
    listed = [m.model for m in client.list().models]
    assert "mixed:case" in listed
    assert client.show("MIXED:CASE").details is not None
    client.copy("tiny", "mixed:CASE")  # the same model: overwritten, not duplicated
    assert [m.model for m in client.list().models].count("mixed:case") == 1
    client.delete("mixed:case")


def test_ps_lists_loaded_model(client: ollama.Client) -> None:
    client.generate(model="tiny", prompt="", keep_alive="10m")
    running = {m.model: m for m in client.ps().models}
    tiny = running["tiny:latest"]
    assert tiny.size and tiny.size > 0
    # All of it in (unified) GPU memory on Metal or CUDA, none when MLX runs on the CPU.
    assert tiny.size_vram == (0 if detect_backend() == "cpu" else tiny.size)
    # The default context (4096 below 23 GiB of GPU memory), capped at the tiny model's
    # trained context.
    assert tiny.context_length == 2048
    assert tiny.expires_at is not None
    assert tiny.digest == {m.model: m for m in client.list().models}["tiny:latest"].digest


def test_delete_of_loaded_model_unloads_it(client: ollama.Client, server: Server) -> None:
    client.copy("tiny", "doomed")
    client.generate(model="doomed", prompt="")
    assert "doomed:latest" in [m.model for m in client.ps().models]
    client.delete("doomed")
    assert "doomed:latest" not in [m.model for m in client.ps().models]
