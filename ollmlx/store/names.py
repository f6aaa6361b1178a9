"""Model names, normalised in one place: `[host/][namespace/]model[:tag]`.

Matching is case-insensitive, as in Ollama, so one model is never stored twice under two
spellings. Every part is checked against a strict pattern: a name can never walk out of
the model store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import StatusError

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
# Hugging Face's hosts name the same repos as `org/repo`: fold them, so `hf.co/org/x` and
# `org/x` are one model in the store, not two copies.
HF_HOSTS = frozenset({"hf.co", "huggingface.co", "www.huggingface.co"})

_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def display(self) -> str:
        """The short form Ollama shows: `tiny:latest`, `user/tiny:v1`, `host/ns/x:latest`."""
        if self.host != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def parts(self) -> tuple[str, str, str, str]:
        """Lower-cased path parts of the manifest inside the store."""
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())


def parse_name(text: str) -> ModelName:
    """Parse and validate a model name; raise StatusError with a readable reason."""
    raw = text.strip()
    if not raw:
        raise StatusError("model name is empty", 400)
    if raw.startswith(("http://", "https://")):
        raw = raw.split("://", 1)[1]
    base, tag = raw, DEFAULT_TAG
    last = raw.rsplit("/", 1)[-1]
    if ":" in last:
        base, tag = raw[: len(raw) - len(last)] + last.split(":", 1)[0], last.split(":", 1)[1]
    pieces = base.split("/")
    if len(pieces) > 3:
        raise StatusError(f"invalid model name {text!r}: too many '/' parts", 400)
    host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
    if len(pieces) == 3:
        host, namespace, model = pieces
    elif len(pieces) == 2:
        namespace, model = pieces
    else:
        (model,) = pieces
    checks = ((host, _HOST), (namespace, _PART), (model, _PART), (tag, _TAG))
    for part, pattern in checks:
        if not pattern.fullmatch(part) or part in (".", "..") or ".." in part:
            raise StatusError(f"invalid model name {text!r}", 400)
    if host.lower() in HF_HOSTS:
        host = DEFAULT_HOST
    return ModelName(host, namespace, model, tag)
