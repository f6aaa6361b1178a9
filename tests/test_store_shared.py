"""Two ollmlx servers on one store: creates, copies and deletes running at once on both
never lose a model and never delete a blob a manifest still names (the store lock, the
pins of blobs about to be named, and the checks after a manifest is written)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path

from ollmlx.acquire.create import Creator
from ollmlx.acquire.create_plan import CreatePlan, CreateRequest, plan_create
from ollmlx.store.catalog import Store
from tests.conftest import Server, start_server

ROUNDS = 5


def _manifests(models: Path) -> dict[str, dict]:
    out = {}
    for path in (models / "manifests").glob("*/*/*/*"):
        out["/".join(path.parts[-4:])] = json.loads(path.read_text())
    return out


def _worker(server: Server, prefix: str, source: Path, errors: list[BaseException]) -> None:
    """Create from the folder (the same blobs as the other server's models), copy,
    create FROM the copy, delete: the weights are often named by one manifest only."""
    try:
        with server.client() as client:
            for i in range(ROUNDS):
                name = f"{prefix}{i}"
                client.create(model=name, from_=str(source), system=f"{prefix} {i}")
                client.copy(name, f"{name}-copy")
                client.create(model=f"{name}-child", from_=f"{name}-copy", parameters={"seed": i})
                client.delete(name)
                client.delete(f"{name}-copy")
                if i < ROUNDS - 1:
                    client.delete(f"{name}-child")
    except BaseException as exc:  # reported by the test's thread
        errors.append(exc)


def test_two_servers_on_one_store_lose_nothing(tmp_path: Path, tiny_model_dir: Path) -> None:
    first = start_server(tmp_path / "a")
    models = first.models_dir
    second = start_server(tmp_path / "b", OLLMLX_MODELS=str(models))
    try:
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=_worker, args=(server, prefix, tiny_model_dir, errors))
            for server, prefix in ((first, "x"), (second, "y"), (first, "z"), (second, "w"))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(240)
        assert not errors, errors
        manifests = _manifests(models)
        last = ROUNDS - 1
        assert set(manifests) == {
            f"registry.ollama.ai/library/{p}{last}-child/latest" for p in "xyzw"
        }
        for manifest in manifests.values():
            for layer in [manifest["config"], *manifest["layers"]]:
                assert (models / "blobs" / layer["digest"].replace(":", "-")).is_file()
        for server in (first, second):
            with server.client() as client:
                for p in "xy":
                    reply = client.generate(
                        model=f"{p}{last}-child", prompt="hi", options={"num_predict": 2}
                    )
                    assert reply.done
        # Nothing but what the manifests name is left (no blob of a deleted model stays).
        named = {
            layer["digest"].replace(":", "-")
            for manifest in manifests.values()
            for layer in [manifest["config"], *manifest["layers"]]
        }
        assert {p.name for p in (models / "blobs").iterdir()} == named
    finally:
        first.stop()
        second.stop()


def test_a_folder_create_survives_a_delete_that_took_its_blobs_meanwhile(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # The race the test above hit in CI, one step at a time: create A has put the
    # folder's blobs in the store (pinned) and is about to write its manifest; create B
    # of the same folder commits, and its unpin takes A's pins too (one pin file a
    # digest); deleting B then removes the blobs no manifest names. A must still end
    # with every blob it names, re-added from the folder, not "blob ... not found".
    store = Store(tmp_path / "models")

    def plan(name: str) -> CreatePlan:
        return plan_create(store, CreateRequest(model=name, from_=str(tiny_model_dir)))

    _create_while_another_commits_and_goes(store, plan)


def test_an_uploaded_blob_stays_while_a_second_create_names_it(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # The same race for blobs that exist only as uploads (`/api/blobs`, then a create with
    # `files`): there is no folder to re-add them from, so the pin must hold. Create A
    # names the uploads and is about to write its manifest; create B of the same uploads
    # commits (releasing its own hold only); deleting B must not take A's blobs.
    store = Store(tmp_path / "models")
    files = {}
    for path in sorted(tiny_model_dir.iterdir()):
        digest, _ = store.blobs.put_bytes(path.read_bytes())
        store.blobs.pin(digest)  # as POST /api/blobs does: kept for the client's create
        files[path.name] = digest

    def plan(name: str) -> CreatePlan:
        return plan_create(store, CreateRequest(model=name, files=files))

    _create_while_another_commits_and_goes(store, plan)
    assert store.delete("a")  # and once nothing names them, they go
    assert not any(store.blobs.path(d).exists() for d in files.values())


def _create_while_another_commits_and_goes(store: Store, plan: Callable[[str], CreatePlan]) -> None:
    """Create "a" up to its manifest; meanwhile create "b" of the same blobs whole and
    delete it; then "a" must end, with every blob it names in the store."""
    creator = Creator(store, None, None)  # type: ignore[arg-type]  # no pull, no GGUF

    async def race() -> list[object]:
        first = creator.run("a", plan("a"))
        async for status in first:
            if status == "writing manifest":
                break
        async for _ in creator.run("b", plan("b")):
            pass
        assert store.delete("b")
        return [status async for status in first]

    assert asyncio.run(race())[-1] == "success"
    model = store.get("a")
    assert model is not None
    for layer in model.layers:
        assert store.blobs.path(layer.digest).is_file()
