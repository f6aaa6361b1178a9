"""/api/pull and `ollmlx pull` against a fake Hugging Face Hub, through real servers."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import ollama
import pytest

from tests.conftest import Server, start_server, wait_for
from tests.fakehub import REPO, FakeHub, hub_env

pytest_plugins = ("tests.hub_fixtures",)

WEIGHTS = "model.safetensors"


def _weights_sha(hub: FakeHub) -> str:
    return hashlib.sha256(hub.repos[REPO].files[WEIGHTS]).hexdigest()


def _names(server: Server) -> list[str]:
    with server.client() as c:
        return sorted(m.model or "" for m in c.list().models)


def test_pull_streams_ollama_statuses_and_installs(hub_server: Server, hub: FakeHub) -> None:
    with hub_server.client() as c:
        parts = list(c.pull(REPO, stream=True))
        statuses = [p.status for p in parts]
        assert statuses[0] == "pulling manifest"
        assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
        sha = _weights_sha(hub)
        weights = [p for p in parts if p.digest == f"sha256:{sha}"]
        assert weights[0].status == f"pulling {sha[:12]}"
        assert weights[-1].total == weights[-1].completed == len(hub.repos[REPO].files[WEIGHTS])
        # Every file is reported under its real sha256 digest.
        digests = {p.digest for p in parts if p.digest}
        expected = {
            f"sha256:{hashlib.sha256(d).hexdigest()}" for d in hub.repos[REPO].files.values()
        }
        assert digests == expected
        model = {m.model: m for m in c.list().models}["org/tiny:latest"]
        assert model.details is not None and model.details.family == "llama"
        assert model.details.format == "safetensors"
        info = c.show(REPO)
        assert info.modelinfo is not None
        assert info.modelinfo["general.source.huggingface.repository"] == REPO
        assert info.modelinfo["general.source.huggingface.commit"] == hub.repos[REPO].commit
        reply = c.generate(model="hf.co/org/tiny", prompt="hi", options={"num_predict": 2})
        assert reply.done


def test_pull_of_a_cached_model_downloads_nothing(hub_server: Server, hub: FakeHub) -> None:
    with hub_server.client() as c:
        c.pull(REPO)
        c.delete(REPO)
        assert _names(hub_server) == []
        served = len(hub.served(WEIGHTS))
        assert c.pull("hf.co/org/tiny:latest").status == "success"
        assert len(hub.served(WEIGHTS)) == served == 1
        assert _names(hub_server) == ["org/tiny:latest"]


def test_interrupted_download_resumes_with_a_range_request(
    hub_server: Server, hub: FakeHub
) -> None:
    hub.cut_once.add(WEIGHTS)
    with hub_server.client() as c:
        assert c.pull(REPO).status == "success"
    first, second = hub.served(WEIGHTS)
    assert first.range == "" and 0 < first.bytes_sent < len(hub.repos[REPO].files[WEIGHTS])
    # The retry asks only for what is missing (whole chunks are kept).
    assert second.range.startswith("bytes=") and second.range != "bytes=0-"
    resumed_at = int(second.range[6:].split("-")[0])
    assert 0 < resumed_at <= first.bytes_sent
    assert _names(hub_server) == ["org/tiny:latest"]


def test_two_concurrent_pulls_download_once(hub_server: Server, hub: FakeHub) -> None:
    hub.hold_weights()
    results: dict[str, str] = {}

    def pull(name: str) -> None:
        with hub_server.client() as c:
            results[name] = c.pull(name).status or ""

    first = threading.Thread(target=pull, args=(REPO,))
    first.start()
    assert wait_for(lambda: len(hub.served(WEIGHTS)) == 1)
    # The second client joins the running job: its stream replays the job's progress.
    with hub_server.client() as c:
        stream = c.pull("hf.co/org/tiny", stream=True)
        assert next(stream).status == "pulling manifest"
        assert next(stream).digest
        hub.release()
        assert [p.status for p in stream][-1] == "success"
    first.join(30)
    assert results == {REPO: "success"}
    assert len(hub.served(WEIGHTS)) == 1
    assert _names(hub_server) == ["org/tiny:latest"]


def test_corrupted_file_fails_verification_and_leaves_store_unchanged(
    hub_server: Server, hub: FakeHub
) -> None:
    hub.corrupt.add(WEIGHTS)
    with hub_server.client() as c, pytest.raises(ollama.ResponseError) as err:
        list(c.pull(REPO, stream=True))
    sha = _weights_sha(hub)
    assert err.value.error.startswith(
        f"digest mismatch, file must be downloaded again: want sha256:{sha}, got sha256:"
    )
    assert _names(hub_server) == []
    assert not list((hub_server.models_dir / "blobs").iterdir())
    # The bad blob left the HF cache: a later pull fetches and installs the good file.
    hub.corrupt.clear()
    with hub_server.client() as c:
        assert c.pull(REPO).status == "success"
    assert len(hub.served(WEIGHTS)) == 2


def test_lost_connection_gives_clear_error_and_consistent_store(
    hub_server: Server, hub: FakeHub, tmp_path: Path
) -> None:
    hub.cut_always.add(WEIGHTS)
    with hub_server.client() as c, pytest.raises(ollama.ResponseError) as err:
        c.pull(REPO)
    assert err.value.error.startswith(f"downloading {WEIGHTS} failed")
    assert err.value.status_code == 502
    assert _names(hub_server) == []
    assert not list((tmp_path / "hf").rglob("*.incomplete"))


def test_unsupported_architecture_is_rejected_before_weights(
    hub_server: Server, hub: FakeHub, tiny_model_dir: Path
) -> None:
    hub.add_repo("org/odd", tiny_model_dir, model_type="not_a_real_arch")
    with hub_server.client() as c, pytest.raises(ollama.ResponseError) as err:
        c.pull("org/odd")
    assert err.value.status_code == 400
    assert err.value.error == (
        "org/odd: unsupported architecture 'not_a_real_arch': mlx-lm has no model of this type"
    )
    assert [r for r in hub.requests if r.filename == WEIGHTS] == []


def test_repo_without_safetensors_is_rejected(hub_server: Server, hub: FakeHub) -> None:
    files = {"config.json": b'{"model_type": "llama"}', "pytorch_model.bin": b"x" * 10}
    hub.add_files("org/torch", files)
    with hub_server.client() as c, pytest.raises(ollama.ResponseError) as err:
        c.pull("org/torch")
    assert err.value.status_code == 400
    assert "has no safetensors weights" in err.value.error
    assert hub.served("pytorch_model.bin") == []


def test_unknown_repo_and_unknown_short_name_are_404(hub_server: Server) -> None:
    with hub_server.client() as c:
        with pytest.raises(ollama.ResponseError) as err:
            c.pull("org/missing")
        assert err.value.status_code == 404
        assert err.value.error.startswith("pull model manifest: file does not exist")
        with pytest.raises(ollama.ResponseError) as err:
            c.pull("no-such-model")
        assert err.value.status_code == 404
        assert "'no-such-model' is not a known model name" in err.value.error
    response = httpx.post(hub_server.url + "/api/pull", json={"model": "a/"})
    assert response.status_code == 400
    assert response.json() == {"error": "invalid model name"}


def test_unknown_short_name_is_answered_with_mlx_community_candidates(
    hub_server: Server, hub: FakeHub, tiny_model_dir: Path
) -> None:
    hub.listed.update(
        {
            "mlx-community/Qwen9-27B-4bit": 900,
            "mlx-community/Qwen9-35B-A3B-4bit": 1200,
            "mlx-community/Qwen2.5-7B-Instruct-4bit": 5000,  # not a match
            "someone/Qwen9-27B-4bit": 99999,  # not mlx-community
        }
    )
    with hub_server.client() as c:
        with pytest.raises(ollama.ResponseError) as err:
            c.pull("qwen9:27b")
        # Repos naming the tag come first, then by downloads.
        assert err.value.status_code == 404
        assert err.value.error == (
            "pull model manifest: file does not exist: 'qwen9' is not a known model name; "
            "did you mean mlx-community/Qwen9-27B-4bit, mlx-community/Qwen9-35B-A3B-4bit? "
            "Pull one by its name, e.g. ollmlx pull mlx-community/Qwen9-27B-4bit"
        )
        searches = [r.filename for r in hub.requests if r.repo == "(list)"]
        assert searches == ["qwen9", "qwen-9"]  # as typed, then the hub's spelling
        # A candidate found only under the hub's spelling ("tiny-9"), and pullable as named.
        hub.add_repo("mlx-community/Tiny-9-4bit", tiny_model_dir)
        with pytest.raises(ollama.ResponseError) as err:
            c.pull("tiny9")
        assert "did you mean mlx-community/Tiny-9-4bit?" in err.value.error
        assert c.pull("mlx-community/Tiny-9-4bit").status == "success"


def test_not_enough_disk_space_fails_before_downloading(hub_server: Server, hub: FakeHub) -> None:
    hub.repos[REPO].sizes[WEIGHTS] = 1 << 60  # an exabyte: no disk has room
    with hub_server.client() as c, pytest.raises(ollama.ResponseError) as err:
        c.pull(REPO)
    assert err.value.error.startswith(f"not enough disk space to pull {REPO}: needs ")
    assert hub.served(WEIGHTS) == []


def test_short_name_resolves_through_the_alias_table(
    hub_server: Server, hub: FakeHub, tiny_model_dir: Path
) -> None:
    hub.add_repo("mlx-community/Llama-3.2-1B-Instruct-4bit", tiny_model_dir)
    with hub_server.client() as c:
        assert c.pull("llama3.2:1b").status == "success"
        info = c.show("llama3.2:1b")
        assert info.modelinfo is not None
        repo = info.modelinfo["general.source.huggingface.repository"]
        assert repo == "mlx-community/Llama-3.2-1B-Instruct-4bit"
        assert (
            info.modelfile and "FROM mlx-community/Llama-3.2-1B-Instruct-4bit\n" in info.modelfile
        )
    assert _names(hub_server) == ["llama3.2:1b"]


def test_offline_mode_uses_the_cache_and_explains_a_miss(
    hub_server: Server, hub: FakeHub, tmp_path: Path
) -> None:
    with hub_server.client() as c:
        c.pull(REPO)
    hub_server.stop()
    offline = start_server(tmp_path / "offline", **hub_env(hub, tmp_path / "hf", offline=True))
    try:
        requests = len(hub.requests)
        with offline.client() as c:
            assert c.pull(REPO).status == "success"
            with pytest.raises(ollama.ResponseError) as err:
                c.pull("org/other")
        assert err.value.status_code == 404
        assert err.value.error == (
            "org/other is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
            "unset it (or pull while online) to download it"
        )
        assert len(hub.requests) == requests  # offline means offline
        assert _names(offline) == ["org/tiny:latest"]
    finally:
        offline.stop()


def test_cli_pull_prints_progress_and_success(hub_server: Server) -> None:
    env = {**os.environ, "OLLAMA_HOST": hub_server.host}
    done = subprocess.run(
        [sys.executable, "-m", "ollmlx", "pull", REPO],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == "pulling manifest"
    assert lines[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    failed = subprocess.run(
        [sys.executable, "-m", "ollmlx", "pull", "org/missing"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode == 1
    assert failed.stderr.startswith("Error: pull model manifest: file does not exist")
