"""Defects the fuzz test (tests/test_fuzz.py) found, end to end with a real server."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Server


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/api/tags", {"GET", "HEAD"}),
        ("GET", "/api/generate", {"POST"}),
        ("POST", "/api/delete", {"DELETE"}),
        ("DELETE", "/v1/chat/completions", {"POST"}),
    ],
)
def test_a_method_a_route_lacks_is_405_with_an_allow_header(
    server: Server, method: str, path: str, allowed: set[str]
) -> None:
    # RFC 9110 15.5.6: a 405 must say which methods the route has (schemathesis'
    # allow_header_conformance); the JSON error body stays the dialect's own.
    reply = httpx.request(method, server.url + path)
    assert reply.status_code == 405
    assert set(reply.headers["Allow"].split(", ")) == allowed
    body = reply.json()
    error = body["error"]["message"] if path.startswith("/v1/") else body["error"]
    assert error == "405 method not allowed"
