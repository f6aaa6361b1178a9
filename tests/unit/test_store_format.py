"""The store's leaves without a server: JSON as Go writes it, digests, blob writes, link
names, Ollama's quantization metadata and the Go-or-Jinja template check."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlx.core as mx
import pytest

from ollmlx.errors import StatusError
from ollmlx.store.blobs import Blobs
from ollmlx.store.layout import safe_relpath
from ollmlx.store.manifest import (
    Config,
    Layer,
    decode_manifest,
    encode_config,
    encode_manifest,
    go_json,
    hex_of,
)
from ollmlx.store.tensorquant import blob_quantization
from ollmlx.templates import looks_like_go_template


@pytest.mark.parametrize(
    ("value", "go"),
    [
        # strconv.FormatFloat as encoding/json uses it (encode.go floatEncoder).
        (0.7, "0.7"),
        (1.0, "1"),
        (100.0, "100"),
        (1e16, "10000000000000000"),
        (1e-05, "0.00001"),
        (1e-07, "1e-7"),  # "clean up e-09 to e-9"
        (1e-10, "1e-10"),
        (1e21, "1e+21"),
        (-0.5, "-0.5"),
        (0.1 + 0.2, "0.30000000000000004"),
    ],
)
def test_floats_are_written_as_go_writes_them(value: float, go: str) -> None:
    assert go_json(value).decode() == go


def test_strings_get_gos_html_escapes() -> None:
    text = '<|im_start|> & "q" \\ \n\t\x01\u2028é'
    assert (
        go_json(text)
        == b'"\\u003c|im_start|\\u003e \\u0026 \\"q\\" \\\\ \\n\\t\\u0001\\u2028\xc3\xa9"'
    )
    assert json.loads(go_json(text)) == text


def test_manifests_and_configs_keep_gos_field_order() -> None:
    layer = Layer("application/vnd.ollama.image.model", "sha256:" + "a" * 64, 3, from_="m.gguf")
    config = Layer("application/vnd.docker.container.image.v1+json", "sha256:" + "b" * 64, 2)
    data = encode_manifest(config, [layer])
    assert data == (
        b'{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2'
        b'+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json",'
        b'"digest":"sha256:' + b"b" * 64 + b'","size":2},"layers":[{"mediaType":'
        b'"application/vnd.ollama.image.model","digest":"sha256:' + b"a" * 64 + b'",'
        b'"size":3,"from":"m.gguf"}]}\n'
    )
    assert decode_manifest(data).layers[0].from_ == "m.gguf"
    # ConfigV2 with its omitempty fields left out, as createConfigLayer writes it.
    assert encode_config(Config(model_format="gguf", architecture="amd64", os="linux")) == (
        b'{"model_format":"gguf","model_family":"","model_families":null,"model_type":"",'
        b'"file_type":"","architecture":"amd64","os":"linux"}\n'
    )


def test_digests_are_checked_before_they_name_a_path() -> None:
    assert hex_of("sha256:" + "A" * 64) == "a" * 64
    assert hex_of("sha256-" + "0" * 64) == "0" * 64
    for bad in ("sha256:../../etc/passwd", "sha256:" + "0" * 63, "md5:" + "0" * 64, ""):
        with pytest.raises(StatusError, match="invalid digest format"):
            hex_of(bad)
    with pytest.raises(StatusError):  # a manifest naming a path outside blobs/
        decode_manifest(
            b'{"schemaVersion":2,"mediaType":"x","config":{"mediaType":"x","digest":"../x",'
            b'"size":1},"layers":[]}'
        )


def test_a_blob_written_under_the_wrong_digest_leaves_nothing(tmp_path: Path) -> None:
    blobs = Blobs(tmp_path)
    with blobs.writer() as writer:
        writer.write(b"hello")
        with pytest.raises(StatusError, match="digest mismatch") as err:
            writer.commit("0" * 64)
    assert err.value.status == 400
    assert not list(blobs.root.iterdir()) and not list(blobs.tmp.iterdir())
    digest, size = blobs.put_bytes(b"hello")
    assert digest == "sha256:" + hashlib.sha256(b"hello").hexdigest() and size == 5
    assert blobs.put_bytes(b"hello") == (digest, 5)  # the same blob, written once


def test_layer_names_never_leave_the_folder() -> None:
    assert safe_relpath("tokenizer/vocab.json") == "tokenizer/vocab.json"
    for bad in ("../x", "/etc/passwd", "a/../../b", "a\\b", ""):
        assert safe_relpath(bad) is None
    assert safe_relpath("./x") == "x" and safe_relpath("a//b") == "a/b"  # tidied, inside


def test_ollama_quantization_metadata_and_shapes(tmp_path: Path) -> None:
    w = mx.random.normal((64, 128))
    q, scales, biases = mx.quantize(w, group_size=32, bits=4)
    path = tmp_path / "blob.safetensors"
    name = "model.layers.0.mlp.up_proj.weight"
    arrays = {name: q, f"{name}.scale": scales, f"{name}.bias": biases}
    mx.save_safetensors(str(path), arrays)  # no metadata: the kind comes from the shapes
    assert blob_quantization(path) == {
        "model.layers.0.mlp.up_proj": {"group_size": 32, "bits": 4, "mode": "affine"}
    }
    mx.save_safetensors(str(path), arrays, metadata={"quant_type": "nf4", "group_size": "32"})
    with pytest.raises(StatusError, match="unsupported quantization type 'nf4'"):
        blob_quantization(path)


@pytest.mark.parametrize(
    ("template", "go"),
    [
        ("{{ .Prompt }}", True),
        ("{{- if .System }}<|system|>{{ .System }}{{ end }}", True),
        ("{{ range $i, $m := .Messages }}{{ $m.Content }}{{ end }}", True),
        ("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}", False),
        ("{{ messages[0].content }}", False),
        ("plain text", False),
    ],
)
def test_go_templates_are_told_from_jinja(template: str, go: bool) -> None:
    assert looks_like_go_template(template) is go


def test_listing_survives_folders_another_server_prunes(tmp_path: Path) -> None:
    """A delete on another server removes emptied manifest folders while this one lists
    (regression: pathlib's glob raised FileNotFoundError for a folder that went)."""
    import threading

    from ollmlx.store.catalog import Store

    store = Store(tmp_path)
    library = tmp_path / "manifests" / "registry.ollama.ai" / "library"
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            for i in range(20):
                (library / f"m{i}" / "latest").mkdir(parents=True, exist_ok=True)
            for i in range(20):
                (library / f"m{i}" / "latest").rmdir()
                (library / f"m{i}").rmdir()

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(300):
            store.list()
    finally:
        stop.set()
        thread.join()
