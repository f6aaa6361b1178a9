"""Bad input gets Ollama's status code and message, through the official client and raw HTTP."""

from __future__ import annotations

import httpx
import ollama
import pytest

from tests.conftest import Server


def test_unknown_model_is_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="nope", prompt="hi")
    assert err.value.status_code == 404
    assert err.value.error == "model 'nope' not found"
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as err:
        client.show("nope")
    assert err.value.status_code == 404


def test_missing_model_field_is_400(server: Server) -> None:
    for path in ("/api/generate", "/api/chat", "/api/show"):
        response = httpx.post(server.url + path, json={"prompt": "hi"})
        assert response.status_code == 400, path
        assert response.json() == {"error": "model is required"}


def test_bad_option_type_is_400(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="tiny", prompt="hi", options={"num_predict": "many"})
    assert err.value.status_code == 400
    assert err.value.error == 'option "num_predict" must be of type integer'
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="tiny", prompt="hi", options={"temperature": "hot"})
    assert err.value.error == 'option "temperature" must be of type float32'
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="tiny", prompt="hi", options={"stop": [1, 2]})
    assert err.value.error == 'option "stop" must be of an array of strings'


def test_unknown_option_is_ignored_and_logged(server: Server, client: ollama.Client) -> None:
    result = client.generate(
        model="tiny", prompt="hi", options={"num_predict": 2, "made_up_option": 1}
    )
    assert result.eval_count == 2
    assert "invalid option provided: made_up_option" in server.log()


def test_malformed_json_is_400(server: Server) -> None:
    response = httpx.post(
        server.url + "/api/generate",
        content=b'{"model": "tiny", "prompt": ',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert "error" in response.json()


def test_missing_body_is_400(server: Server) -> None:
    response = httpx.post(server.url + "/api/chat")
    assert response.status_code == 400
    assert response.json() == {"error": "missing request body"}


def test_wrong_field_type_is_400(server: Server) -> None:
    response = httpx.post(server.url + "/api/generate", json={"model": "tiny", "prompt": 5})
    assert response.status_code == 400
    assert "prompt" in response.json()["error"]


def test_raw_with_system_is_400(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="tiny", prompt="hi", raw=True, system="be nice")
    assert err.value.status_code == 400
    assert err.value.error == "raw mode does not support template, system, or context"


def test_top_logprobs_out_of_range_is_400(server: Server) -> None:
    body = {"model": "tiny", "prompt": "hi", "top_logprobs": 21}
    response = httpx.post(server.url + "/api/generate", json=body)
    assert response.status_code == 400
    assert response.json() == {"error": "top_logprobs must be between 0 and 20"}


def test_prompt_over_context_without_truncate_is_400(server: Server) -> None:
    body = {
        "model": "tiny",
        "prompt": "word " * 300,
        "truncate": False,
        "options": {"num_ctx": 32},
        "stream": False,
    }
    response = httpx.post(server.url + "/api/generate", json=body)
    assert response.status_code == 400
    assert response.json() == {"error": "the input length exceeds the context length"}


def test_think_on_a_model_without_thinking_is_400(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="tiny", messages=[{"role": "user", "content": "hi"}], think=True)
    assert err.value.status_code == 400
    assert err.value.error == '"tiny" does not support thinking'


def test_invalid_keep_alive_is_400(server: Server) -> None:
    body = {"model": "tiny", "prompt": "hi", "keep_alive": "soon"}
    response = httpx.post(server.url + "/api/generate", json=body)
    assert response.status_code == 400
    assert "keep_alive" in response.json()["error"]


def test_path_traversal_in_model_name_is_400(server: Server) -> None:
    for name in ("../../etc/passwd", "a/../../b", "x:../../y", "foo/bar/baz/qux"):
        response = httpx.post(server.url + "/api/show", json={"model": name})
        assert response.status_code == 400, name
        assert "invalid model name" in response.json()["error"]


def test_images_on_a_text_model_are_400(client: ollama.Client) -> None:
    pixel = (  # a 1x1 PNG
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9a"
        "wAAAABJRU5ErkJggg=="
    )
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="tiny", prompt="what is this?", images=[pixel])
    assert err.value.status_code == 400
    assert err.value.error == '"tiny" does not support images'
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="tiny", messages=[{"role": "user", "content": "?", "images": [pixel]}])
    assert err.value.status_code == 400
