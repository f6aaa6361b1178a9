"""Name normalisation, alias resolution, supported architectures, quantize names, pull bars."""

from __future__ import annotations

import io

import pytest

from ollmlx.acquire.quantize import quant_bits
from ollmlx.architectures import supported_model_types, unsupported_reason
from ollmlx.cli.pull_view import Bar, PullView
from ollmlx.errors import StatusError
from ollmlx.store.aliases import HubRef, alias_table, resolve
from ollmlx.store.names import parse_name


@pytest.mark.parametrize(
    ("text", "repo", "revision"),
    [
        ("org/repo", "org/repo", "main"),
        ("org/repo:latest", "org/repo", "main"),
        ("org/repo:v1.0", "org/repo", "v1.0"),
        ("hf.co/org/repo", "org/repo", "main"),
        ("https://huggingface.co/org/repo:dev", "org/repo", "dev"),
    ],
)
def test_hugging_face_names_resolve_to_repo_and_revision(
    text: str, repo: str, revision: str
) -> None:
    assert resolve(parse_name(text)) == HubRef(repo, revision)


def test_spellings_of_one_model_share_one_manifest_path() -> None:
    spellings = ["org/Repo", "hf.co/org/repo:latest", "HF.CO/ORG/REPO:LATEST", "org/repo"]
    assert len({parse_name(s).parts for s in spellings}) == 1
    assert parse_name("org/x:a").parts != parse_name("org_x:a").parts


@pytest.mark.parametrize(
    ("text", "repo"),
    [
        ("llama3.2", "mlx-community/Llama-3.2-3B-Instruct-4bit"),
        ("llama3.2:1b", "mlx-community/Llama-3.2-1B-Instruct-4bit"),
        ("qwen2.5:7b", "mlx-community/Qwen2.5-7B-Instruct-4bit"),
        ("gemma3", "mlx-community/gemma-3-4b-it-4bit"),
        ("mistral", "mlx-community/Mistral-7B-Instruct-v0.3-4bit"),
        ("phi4", "mlx-community/phi-4-4bit"),
        ("deepseek-r1:8B", "mlx-community/DeepSeek-R1-0528-Qwen3-8B-4bit"),
        ("nomic-embed-text", "nomic-ai/nomic-embed-text-v1.5"),
        ("gpt-oss", "mlx-community/gpt-oss-20b-MXFP4-Q8"),
        ("gpt-oss:120b", "mlx-community/gpt-oss-120b-MXFP4-Q8"),
        ("gemma4:e2b", "mlx-community/gemma-4-e2b-it-4bit"),
        ("qwen3.5:27b", "mlx-community/Qwen3.5-27B-4bit"),
        ("qwen3-coder", "mlx-community/Qwen3-Coder-30B-A3B-Instruct-4bit"),
        ("phi4-reasoning:plus", "mlx-community/Phi-4-reasoning-plus-4bit"),
    ],
)
def test_ollama_short_names_resolve_through_the_alias_table(text: str, repo: str) -> None:
    ref = resolve(parse_name(text))
    assert (ref.repo_id, ref.revision) == (repo, "main")
    assert ref.alias == parse_name(text).display


def test_every_alias_has_a_latest_tag_and_points_at_a_repo() -> None:
    for name, tags in alias_table().items():
        assert "latest" in tags, name
        assert all(repo.count("/") == 1 for repo in tags.values()), name
        # `latest` is one of the named tags, as in Ollama's library.
        assert len(tags) == 1 or tags["latest"] in [r for t, r in tags.items() if t != "latest"]


def test_the_alias_table_covers_ollamas_most_pulled_families() -> None:
    families = {
        "gpt-oss", "llama3.1", "llama3.2", "llama3.3", "qwen3", "qwen3.5", "qwen3-coder",
        "qwen2.5", "qwen2.5-coder", "gemma3", "gemma4", "deepseek-r1", "mistral", "phi4",
        "qwq", "nomic-embed-text",
    }  # fmt: skip
    assert families <= set(alias_table())


def test_unknown_short_name_and_tag_explain_themselves() -> None:
    with pytest.raises(StatusError, match="'nope' is not a known model name"):
        resolve(parse_name("nope"))
    with pytest.raises(StatusError, match=r"'llama3.2' has no tag '9000b' \(known tags: 1b, 3b"):
        resolve(parse_name("llama3.2:9000b"))


def test_supported_architectures_come_from_mlx_lm_without_importing_mlx() -> None:
    types = supported_model_types()
    assert {"llama", "qwen2", "gemma3", "mistral"} <= types  # mistral via MODEL_REMAPPING
    assert "cache" not in types and "base" not in types
    assert unsupported_reason({"model_type": "llama"}) is None
    assert unsupported_reason({"model_type": "bert"}) is None  # served for embeddings
    assert unsupported_reason({}) == "config.json has no model_type"
    assert "unsupported architecture 'gpt_x'" in (unsupported_reason({"model_type": "gpt_x"}) or "")


@pytest.mark.parametrize(
    ("name", "bits"), [("q4_K_M", 4), ("q4_0", 4), ("Q8_0", 8), ("mlx-4bit", 4), ("mlx-8bit", 8)]
)
def test_quantize_names(name: str, bits: int) -> None:
    assert quant_bits(name) == bits


def test_unknown_quantize_name_is_a_400() -> None:
    with pytest.raises(StatusError) as err:
        quant_bits("q5_weird")
    assert err.value.status == 400


def test_progress_bar_shows_size_speed_and_time_left() -> None:
    bar = Bar("pulling ae388330251f", total=2_000_000_000, started=0.0)
    bar.update(500_000_000, now=10.0)
    assert bar.render() == (
        "pulling ae388330251f:  25% ▕████              ▏ 500 MB/2.0 GB  50 MB/s     30s"
    )
    bar.update(2_000_000_000, now=20.0)
    assert bar.render().endswith("100% ▕██████████████████▏ 2.0 GB/2.0 GB")


def test_pull_view_without_a_terminal_prints_each_status_once() -> None:
    out = io.StringIO()
    view = PullView(out, live=False)
    for part in [
        {"status": "pulling manifest"},
        {"status": "pulling abc", "digest": "sha256:abc", "total": 10},
        {"status": "pulling abc", "digest": "sha256:abc", "total": 10, "completed": 10},
        {"status": "success"},
    ]:
        view.handle(part, now=1.0)
    assert out.getvalue() == "pulling manifest\npulling abc\nsuccess\n"
