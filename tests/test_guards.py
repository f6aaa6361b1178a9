"""Guard rails: CORS allow-list, the DNS-rebinding Host check, and bounded input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.conftest import Server, start_server


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    server = start_server(
        tmp_path_factory.mktemp("guarded"),
        OLLAMA_ORIGINS="https://app.example.com,https://*.trusted.dev",
        OLLMLX_MAX_BODY="64K",
    )
    with server.client() as client:
        client.create(model="tiny", from_=str(tiny_model_dir))
    yield server
    server.stop()


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost:3000",
        "http://127.0.0.1:8080",
        "https://localhost",
        "app://obsidian.md",
        "vscode-webview://abc",
        "https://app.example.com",
        "https://chat.trusted.dev",
    ],
)
def test_allowed_origins_get_cors_headers(guarded: Server, origin: str) -> None:
    preflight = httpx.options(
        guarded.url + "/api/chat",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == origin
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    response = httpx.get(guarded.url + "/api/tags", headers={"Origin": origin})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == origin


def test_streamed_responses_carry_cors_headers(guarded: Server) -> None:
    body = {"model": "tiny", "prompt": "hi", "options": {"num_predict": 2}}
    origin = "http://localhost:5173"
    with httpx.stream(
        "POST", guarded.url + "/api/generate", json=body, headers={"Origin": origin}
    ) as response:
        assert response.headers["Access-Control-Allow-Origin"] == origin
        assert response.headers["Content-Type"] == "application/x-ndjson"


@pytest.mark.parametrize("origin", ["https://evil.example.org", "http://app.example.com"])
def test_other_origins_are_refused(guarded: Server, origin: str) -> None:
    preflight = httpx.options(
        guarded.url + "/api/chat",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 403
    assert "Access-Control-Allow-Origin" not in preflight.headers
    response = httpx.post(
        guarded.url + "/api/generate", json={"model": "tiny"}, headers={"Origin": origin}
    )
    assert response.status_code == 403


@pytest.mark.parametrize("host", ["evil.example.com", "attacker.com:11434", "8.8.8.8"])
def test_foreign_host_header_is_403(guarded: Server, host: str) -> None:
    response = httpx.get(guarded.url + "/api/tags", headers={"Host": host})
    assert response.status_code == 403


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:11434", "127.0.0.1:1", "[::1]:80", "mac.local", "x.localhost"]
)
def test_local_host_headers_are_allowed(guarded: Server, host: str) -> None:
    response = httpx.get(guarded.url + "/api/tags", headers={"Host": host})
    assert response.status_code == 200


def test_request_body_over_the_limit_is_413(guarded: Server) -> None:
    body = {"model": "tiny", "prompt": "x" * 100_000}
    response = httpx.post(guarded.url + "/api/generate", json=body)
    assert response.status_code == 413
    assert response.json() == {"error": "request body too large (limit 65536 bytes)"}


def test_num_predict_and_num_ctx_are_bounded(guarded: Server) -> None:
    with guarded.client() as client:
        with pytest.raises(ollama.ResponseError) as err:
            client.generate(model="tiny", prompt="hi", options={"num_ctx": 10**9})
        assert err.value.status_code == 400
        assert err.value.error == "num_ctx must be between 1 and 1048576"
        with pytest.raises(ollama.ResponseError) as err:
            client.generate(model="tiny", prompt="hi", options={"num_predict": 10**9})
        assert err.value.status_code == 400
        assert err.value.error == "num_predict must be at most 131072"
