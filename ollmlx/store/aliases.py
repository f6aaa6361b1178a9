"""Where a model name comes from on Hugging Face: `org/repo[:revision]` or an Ollama alias.

Ollama's short names (`llama3.2`, `qwen2.5:7b`) live in the `library` namespace; they map
through ollmlx/data/aliases.json to MLX conversions. Any other namespace is a Hugging Face
organisation, and the tag is the revision (`latest` means `main`).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

from ..errors import StatusError
from .names import DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG, ModelName

DEFAULT_REVISION = "main"


@dataclass(frozen=True)
class HubRef:
    repo_id: str  # "org/repo"
    revision: str  # branch, tag or commit
    alias: str = ""  # the Ollama short name it came from, if any

    def __str__(self) -> str:
        rev = "" if self.revision == DEFAULT_REVISION else f"@{self.revision}"
        return f"{self.repo_id}{rev}"


@functools.cache
def alias_table() -> dict[str, dict[str, str]]:
    text = resources.files("ollmlx").joinpath("data/aliases.json").read_text()
    table = json.loads(text)
    return {
        k.lower(): {t.lower(): r for t, r in v.items()} for k, v in table.items() if k[0] != "_"
    }


def resolve(name: ModelName) -> HubRef:
    """The Hugging Face repo and revision a parsed name pulls from."""
    if name.host != DEFAULT_HOST:
        raise StatusError(
            f"pulling from {name.host} is not supported: use a Hugging Face repo", 404
        )
    if name.namespace != DEFAULT_NAMESPACE:
        revision = DEFAULT_REVISION if name.tag.lower() == DEFAULT_TAG else name.tag
        return HubRef(f"{name.namespace}/{name.model}", revision)
    tags = alias_table().get(name.model.lower())
    if tags is None:
        raise StatusError(
            f"pull model manifest: file does not exist: {name.model!r} is not a known model "
            "name; pull a Hugging Face repo instead, e.g. mlx-community/Llama-3.2-1B-Instruct-4bit",
            404,
        )
    repo = tags.get(name.tag.lower())
    if repo is None:
        known = ", ".join(sorted(tags))
        raise StatusError(
            f"pull model manifest: file does not exist: {name.model!r} has no tag "
            f"{name.tag!r} (known tags: {known})",
            404,
        )
    return HubRef(repo, DEFAULT_REVISION, alias=name.display)
