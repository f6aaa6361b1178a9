"""/api/create with quantize and FROM a Hugging Face repo; copy, delete, list, show."""

from __future__ import annotations

from pathlib import Path

import ollama
import pytest

from tests.conftest import Server, wait_for
from tests.fakehub import REPO, FakeHub

pytest_plugins = ("tests.hub_fixtures",)


def _details(client: ollama.Client, name: str) -> ollama.ListResponse.Model:
    return {m.model: m for m in client.list().models}[name]


def test_quantize_q4_0_and_q8_0_convert_and_serve(fresh_server: Server) -> None:
    with fresh_server.client() as c:
        statuses = [
            s.status for s in c.create(model="tiny-q4", from_="tiny", quantize="q4_0", stream=True)
        ]
        assert statuses[0] == "quantizing F32 model to Q4_0"
        assert statuses[-2:] == ["writing manifest", "success"]
        assert any(s and s.startswith("creating new layer sha256:") for s in statuses)
        assert c.create(model="tiny-q8", from_="tiny", quantize="q8_0").status == "success"
        base = _details(c, "tiny:latest")
        q4, q8 = _details(c, "tiny-q4:latest"), _details(c, "tiny-q8:latest")
        assert q4.details is not None and q8.details is not None and base.details is not None
        assert (q4.details.quantization_level, q8.details.quantization_level) == ("Q4", "Q8")
        assert q4.details.parameter_size == base.details.parameter_size
        assert q4.details.format == "safetensors" and q4.details.parent_model == "tiny:latest"
        assert (q4.size or 0) < (q8.size or 0) < (base.size or 0)
        info = c.show("tiny-q4")
        assert info.details is not None and info.details.quantization_level == "Q4"
        reply = c.generate(model="tiny-q4", prompt="hi", options={"num_predict": 3})
        assert reply.done and reply.eval_count == 3


def test_quantize_errors(fresh_server: Server) -> None:
    with fresh_server.client() as c:
        with pytest.raises(ollama.ResponseError) as err:
            c.create(model="bad", from_="tiny", quantize="q3_weird")
        assert err.value.status_code == 400
        assert err.value.error.startswith("unsupported quantization type q3_weird")
        c.create(model="tiny-q4", from_="tiny", quantize="mlx-4bit")
        with pytest.raises(ollama.ResponseError) as err:
            c.create(model="again", from_="tiny-q4", quantize="q8_0")
        assert err.value.status_code == 400
        assert err.value.error == "quantization is only supported for F16 and F32 models"
        assert "again:latest" not in {m.model for m in c.list().models}


def test_create_from_a_hugging_face_repo_pulls_it_first(hub_server: Server, hub: FakeHub) -> None:
    with hub_server.client() as c:
        parts = list(c.create(model="pirate", from_=REPO, system="Arr.", stream=True))
        statuses = [p.status for p in parts]
        assert statuses[0] == "pulling manifest"
        assert "verifying sha256 digest" in statuses
        assert statuses[-2:] == ["writing manifest", "success"]
        assert {m.model for m in c.list().models} == {"pirate:latest", "org/tiny:latest"}
        info = c.show("pirate")
        assert info.modelfile is not None and "FROM org/tiny:latest\n" in info.modelfile
        assert 'SYSTEM "Arr."' in info.modelfile
    assert len(hub.served("model.safetensors")) == 1


def test_create_from_local_dir_with_quantize(fresh_server: Server, tiny_model_dir: Path) -> None:
    with fresh_server.client() as c:
        c.create(model="local-q8", from_=str(tiny_model_dir), quantize="q8_0")
        details = _details(c, "local-q8:latest").details
        assert details is not None and details.quantization_level == "Q8"


def test_copy_then_delete_a_loaded_model_unloads_it(fresh_server: Server) -> None:
    with fresh_server.client() as c:
        c.copy("tiny", "user/copy:v1")
        listed = {m.model: m for m in c.list().models}
        assert listed["user/copy:v1"].digest == listed["tiny:latest"].digest
        c.generate(model="user/copy:v1", prompt="hi", options={"num_predict": 1})
        assert [m.model for m in c.ps().models] == ["user/copy:v1"]
        assert c.delete("user/copy:v1").status == "success"
        assert c.ps().models == []
        assert wait_for(lambda: fresh_server.workers() == [])
        assert {m.model for m in c.list().models} == {"tiny:latest"}
        with pytest.raises(ollama.ResponseError) as err:
            c.delete("user/copy:v1")
        assert err.value.status_code == 404
