"""A small blocking client for the CLI: JSON requests and NDJSON streams to OLLAMA_HOST."""

from __future__ import annotations

import http.client
import json
from collections.abc import Generator
from typing import Any

from ..config import Settings


class ClientError(Exception):
    """A readable one-line error for the terminal; `status` is the HTTP code, if any."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Client:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.settings.host, self.settings.port, timeout=None)

    def _send(self, method: str, path: str, body: Any | None) -> tuple[Any, Any]:
        conn = self._connection()
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
        except ConnectionRefusedError:
            raise ClientError(
                f"could not connect to ollmlx at {self.settings.base_url}: "
                "is the server running? (start it with `ollmlx serve`)"
            ) from None
        if response.status >= 400:
            raise ClientError(_error_text(response.read()), response.status)
        return conn, response

    def request(self, method: str, path: str, body: Any | None = None) -> Any:
        conn, response = self._send(method, path, body)
        try:
            data = response.read()
        finally:
            conn.close()
        return json.loads(data) if data.strip() else None

    def stream(self, path: str, body: Any) -> Generator[dict[str, Any], None, None]:
        """Each NDJSON line as a dict; an `{"error"}` line raises ClientError."""
        conn, response = self._send("POST", path, body)
        try:
            while line := response.readline():
                if not line.strip():
                    continue
                part = json.loads(line)
                if "error" in part:
                    raise ClientError(str(part["error"]))
                yield part
        finally:
            conn.close()


def _error_text(data: bytes) -> str:
    try:
        return str(json.loads(data)["error"])
    except (ValueError, KeyError, TypeError):
        return data.decode(errors="replace").strip() or "request failed"
