"""The store's old layout (ollmlx's own manifests, `weights/sha256-*/` folders) becomes
Ollama's format once, at start, one log line per model, nothing lost and nothing copied;
a migration that fails leaves the old layout as it was."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx

from tests.conftest import start_server
from tests.oracle import Oracle

GREEDY = {"temperature": 0, "num_predict": 10}
HELLO = [{"role": "user", "content": "hello world"}]


def _old_weights(models: Path, source: Path, digest: str) -> None:
    """A weights folder as the old store installed it: hard links of the source's files."""
    folder = models / "weights" / digest
    folder.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file():
            os.link(path, folder / path.name)


def _old_manifest(models: Path, name: str, **fields: object) -> Path:
    path = models / "manifests" / "registry.ollama.ai" / "library" / name / "latest"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(json.dumps(fields).encode())
    return path


def _old_store(models: Path, tiny_model_dir: Path) -> None:
    _old_weights(models, tiny_model_dir, "sha256-" + "a" * 64)
    details = {"format": "safetensors", "family": "llama", "parameter_size": "139.6K"}
    common = {"weights": "sha256-" + "a" * 64, "details": details, "size": 1}
    _old_manifest(
        models,
        "old",
        **common,
        source="org/tiny",
        repo="org/tiny",
        revision="c0ffee",
        system="Old system.",
        parameters={"num_predict": 10},
        messages=[{"role": "user", "content": "earlier"}],
        info={"training.final_train_loss": 0.25},
    )
    _old_manifest(models, "old-copy", **common)


def test_an_old_store_is_migrated_once_with_nothing_lost(tmp_path: Path, tiny_model_dir: Path):
    models = tmp_path / "models"
    _old_store(models, tiny_model_dir)
    server = start_server(tmp_path)
    try:
        log = server.log()
        assert log.count("migrated old:latest to Ollama's manifest format") == 1
        assert log.count("migrated old-copy:latest to Ollama's manifest format") == 1
        assert not (models / "weights").exists()
        with server.client() as client:
            assert {m.model for m in client.list().models} == {"old:latest", "old-copy:latest"}
            info = client.show("old")
            chat = client.chat(model="old", messages=HELLO, options={"temperature": 0})
        raw = httpx.post(server.url + "/api/show", json={"model": "old"}).json()
        assert raw["system"] == "Old system."
        assert info.modelinfo is not None
        assert info.modelinfo["general.source.huggingface.repository"] == "org/tiny"
        assert info.modelinfo["general.source.huggingface.commit"] == "c0ffee"
        assert info.modelinfo["training.final_train_loss"] == 0.25
        assert info.parameters is not None and "num_predict" in info.parameters
        oracle = Oracle(tiny_model_dir)
        messages = [{"role": "system", "content": "Old system."}, *raw_messages(raw), *HELLO]
        assert chat.message.content == oracle.greedy(oracle.chat_prompt(messages), 10).text
        # The weights are the same files (hard links), not copies.
        manifest = json.loads(
            (models / "manifests/registry.ollama.ai/library/old/latest").read_text()
        )
        (tensor,) = [x for x in manifest["layers"] if x["mediaType"].endswith(".tensor")]
        blob = models / "blobs" / tensor["digest"].replace(":", "-")
        assert blob.stat().st_ino == (tiny_model_dir / "model.safetensors").stat().st_ino
    finally:
        server.stop()
    again = start_server(tmp_path)  # once: nothing left to migrate
    try:
        assert "to Ollama's manifest format" not in again.log()
        with again.client() as client:
            assert len(client.list().models) == 2
    finally:
        again.stop()


def raw_messages(show: dict) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in show.get("messages") or []]


def test_a_failed_migration_leaves_the_old_layout_untouched(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    models = tmp_path / "models"
    _old_store(models, tiny_model_dir)
    # Sorted last: the models before it have their blobs made before this one fails.
    _old_manifest(models, "zz-broken", weights="sha256-" + "b" * 64)
    before = {p: p.read_bytes() for p in models.rglob("*") if p.is_file()}
    server = start_server(tmp_path)
    try:
        assert "migrating the store to Ollama's format failed at " in server.log()
        assert "the old layout is left as it was" in server.log()
        assert "migrated old" not in server.log()
    finally:
        server.stop()
    after = {p: p.read_bytes() for p in models.rglob("*") if p.is_file()}
    old = {p: data for p, data in after.items() if "ollmlx" not in p.parts}
    assert old == {p: data for p, data in before.items()}  # blobs made for it went again
    assert not list((models / "blobs").iterdir())
