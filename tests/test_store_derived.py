"""Store.install_derived: a fine-tuned model made from a base, as training installs it."""

from __future__ import annotations

from pathlib import Path

from ollmlx.store.catalog import Store
from ollmlx.store.manifest import ADAPTER
from ollmlx.store.modelinfo import describe
from ollmlx.store.spec import ModelSpec


def _base(store: Store, model_dir: Path, **fields: object) -> object:
    layers = store.add_dir(model_dir)
    return store.write("base", layers, ModelSpec(details=describe(model_dir), **fields))


def test_an_adapter_goes_on_top_of_the_base_and_facts_show(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    store = Store(tmp_path / "models")
    base = _base(store, tiny_model_dir, system="be nice")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapters.safetensors").write_bytes(b"x")
    derived = store.install_derived(
        "tuned", base, adapter=adapter, info={"training.final_train_loss": 0.5}
    )
    assert derived.model_dir == base.model_dir  # the base's weights, not a copy
    assert derived.adapter_dir is not None
    assert (derived.adapter_dir / "adapter_config.json").read_text() == "{}"
    assert [layer.name for layer in derived.layers if layer.mediaType == ADAPTER] == [
        "adapter/adapter_config.json",
        "adapter/adapters.safetensors",
    ]
    assert derived.manifest.system == "be nice"
    assert derived.manifest.info == {"training.final_train_loss": 0.5}
    assert derived.manifest.source == "base:latest"
    # Deleting the fine-tune leaves the base whole, and its adapter blobs go.
    assert store.delete("tuned")
    assert store.get("base") is not None
    assert not any(store.blobs.exists(x.digest) for x in derived.layers if x.mediaType == ADAPTER)


def test_fused_weights_replace_the_base(tmp_path: Path, tiny_model_dir: Path) -> None:
    store = Store(tmp_path / "models")
    base = _base(store, tiny_model_dir)
    derived = store.install_derived("fused", base, weights=tiny_model_dir)
    assert derived.adapter_dir is None
    assert derived.manifest.details.parent_model == "base:latest"
    assert store.get("base") is not None
