"""The server's guard rails: CORS (Ollama's allow-list), the Host check, body size.

The Host check stops DNS-rebinding attacks: a web page whose name resolves to 127.0.0.1
must not drive a server bound to loopback.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket

from aiohttp import web

from ..config import Settings
from .context import error_for

DEFAULT_ORIGINS = (
    "http://localhost",
    "https://localhost",
    "http://localhost:*",
    "https://localhost:*",
    "http://127.0.0.1",
    "https://127.0.0.1",
    "http://127.0.0.1:*",
    "https://127.0.0.1:*",
    "http://0.0.0.0",
    "https://0.0.0.0",
    "http://0.0.0.0:*",
    "https://0.0.0.0:*",
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
)
ALLOWED_HEADERS = (
    "Authorization, Content-Type, User-Agent, Accept, X-Requested-With, "
    "X-Stainless-Lang, X-Stainless-Package-Version, X-Stainless-OS, X-Stainless-Arch, "
    "X-Stainless-Runtime, X-Stainless-Runtime-Version, X-Stainless-Async, "
    "X-Stainless-Retry-Count, X-Stainless-Timeout"
)
ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"


def origin_allowed(origin: str, extra: tuple[str, ...]) -> bool:
    patterns = (*extra, *DEFAULT_ORIGINS)
    return any(p == "*" or fnmatch.fnmatchcase(origin, p) for p in patterns)


def _is_loopback_bind(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(header: str) -> bool:
    """Ollama's rule: loopback or private addresses, localhost, this machine's name,
    and .localhost/.local/.internal names."""
    if not header:
        return True
    host = header
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.lower().rstrip(".")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return address.is_loopback or address.is_private or address.is_unspecified
    if host in ("localhost", socket.gethostname().lower()):
        return True
    return host.endswith((".localhost", ".local", ".internal"))


def make_guards(settings: Settings) -> list[web.middleware]:
    check_host = _is_loopback_bind(settings.host)

    @web.middleware
    async def guard(request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:
        if check_host and not host_allowed(request.headers.get("Host", "")):
            return error_for(request, 403, "forbidden host")
        origin = request.headers.get("Origin")
        allowed = origin is not None and origin_allowed(origin, settings.origins)
        if request.method == "OPTIONS" and origin is not None:
            if not allowed:
                return error_for(request, 403, "origin not allowed")
            return web.Response(status=204, headers=_cors_headers(origin, preflight=True))
        if allowed and origin is not None:
            # Set before the handler prepares a streaming response.
            request["cors_origin"] = origin
        if origin is not None and not allowed:
            return error_for(request, 403, "origin not allowed")
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            limit = settings.max_body_bytes
            return error_for(request, 413, f"request body too large (limit {limit} bytes)")

    return [guard]


def _cors_headers(origin: str, preflight: bool = False) -> dict[str, str]:
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if preflight:
        headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
        headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
        headers["Access-Control-Max-Age"] = "43200"
    return headers


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: CORS headers on every response, streams included."""
    origin = request.get("cors_origin")
    if origin:
        response.headers.update(_cors_headers(origin))
