"""The error types shared by the supervisor and the workers. A leaf module.

StatusError: a request fails for a known reason; the HTTP layer turns it into each
dialect's error shape (Ollama, OpenAI, Anthropic) in one place. ConfigError: a setting
(environment variable, hostfile) that cannot be parsed.
"""

from __future__ import annotations


class StatusError(Exception):
    """A failure and the HTTP status it answers with: 4xx for the client's mistake."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __repr__(self) -> str:
        return f"StatusError({self.message!r}, {self.status})"


class ConfigError(ValueError):
    """A setting that cannot be parsed; the message names the variable."""
