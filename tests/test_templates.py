"""ollmlx/templates.py: Ollama's Go chat templates -> their Jinja equivalents, or a clear error.

The expected prompts are Ollama's own: template/testdata/<name>.gotmpl/<case> in
ollama/ollama, the outputs its template tests assert for its template/*.gotmpl files.
"""

from __future__ import annotations

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ollmlx.templates import BOS, TemplateError, families, jinja_for_go_template, normalise

# Ollama's expected outputs (template/testdata), keyed by ollmlx family and case.
OLLAMA_RENDERED = {
    "llama3": {
        "user": (
            "<|start_header_id|>user<|end_header_id|>\n"
            "\n"
            "Hello, how are you?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
            "\n"
        ),
        "user-assistant-user": (
            "<|start_header_id|>user<|end_header_id|>\n"
            "\n"
            "Hello, how are you?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
            "\n"
            "I'm doing great. How can I help you"
            " today?<|eot_id|><|start_header_id|>user<|end_header_id|>\n"
            "\n"
            "I'd like to show off how chat templating"
            " works!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
            "\n"
        ),
        "system-user-assistant-user": (
            "<|start_header_id|>system<|end_header_id|>\n"
            "\n"
            "You are a helpful"
            " assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>\n"
            "\n"
            "Hello, how are you?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
            "\n"
            "I'm doing great. How can I help you"
            " today?<|eot_id|><|start_header_id|>user<|end_header_id|>\n"
            "\n"
            "I'd like to show off how chat templating"
            " works!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
            "\n"
        ),
    },
    "chatml": {
        "user": ("<|im_start|>user\nHello, how are you?<|im_end|>\n<|im_start|>assistant\n"),
        "user-assistant-user": (
            "<|im_start|>user\n"
            "Hello, how are you?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "I'm doing great. How can I help you today?<|im_end|>\n"
            "<|im_start|>user\n"
            "I'd like to show off how chat templating works!<|im_end|>\n"
            "<|im_start|>assistant\n"
        ),
        "system-user-assistant-user": (
            "<|im_start|>system\n"
            "You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\n"
            "Hello, how are you?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "I'm doing great. How can I help you today?<|im_end|>\n"
            "<|im_start|>user\n"
            "I'd like to show off how chat templating works!<|im_end|>\n"
            "<|im_start|>assistant\n"
        ),
    },
    "phi3": {
        "user": ("<|user|>\nHello, how are you?<|end|>\n<|assistant|>\n"),
        "user-assistant-user": (
            "<|user|>\n"
            "Hello, how are you?<|end|>\n"
            "<|assistant|>\n"
            "I'm doing great. How can I help you today?<|end|>\n"
            "<|user|>\n"
            "I'd like to show off how chat templating works!<|end|>\n"
            "<|assistant|>\n"
        ),
        "system-user-assistant-user": (
            "<|system|>\n"
            "You are a helpful assistant.<|end|>\n"
            "<|user|>\n"
            "Hello, how are you?<|end|>\n"
            "<|assistant|>\n"
            "I'm doing great. How can I help you today?<|end|>\n"
            "<|user|>\n"
            "I'd like to show off how chat templating works!<|end|>\n"
            "<|assistant|>\n"
        ),
    },
    "gemma": {
        "user": ("<start_of_turn>user\nHello, how are you?<end_of_turn>\n<start_of_turn>model\n"),
        "user-assistant-user": (
            "<start_of_turn>user\n"
            "Hello, how are you?<end_of_turn>\n"
            "<start_of_turn>model\n"
            "I'm doing great. How can I help you today?<end_of_turn>\n"
            "<start_of_turn>user\n"
            "I'd like to show off how chat templating works!<end_of_turn>\n"
            "<start_of_turn>model\n"
        ),
        "system-user-assistant-user": (
            "<start_of_turn>user\n"
            "You are a helpful assistant.\n"
            "Hello, how are you?<end_of_turn>\n"
            "<start_of_turn>model\n"
            "I'm doing great. How can I help you today?<end_of_turn>\n"
            "<start_of_turn>user\n"
            "I'd like to show off how chat templating works!<end_of_turn>\n"
            "<start_of_turn>model\n"
        ),
    },
    "gemma3": {
        "user": ("<start_of_turn>user\nHello, how are you?<end_of_turn>\n<start_of_turn>model\n\n"),
        "user-assistant-user": (
            "<start_of_turn>user\n"
            "Hello, how are you?<end_of_turn>\n"
            "<start_of_turn>model\n"
            "I'm doing great. How can I help you today?<end_of_turn>\n"
            "<start_of_turn>user\n"
            "I'd like to show off how chat templating works!<end_of_turn>\n"
            "<start_of_turn>model\n"
            "\n"
        ),
        "system-user-assistant-user": (
            "<start_of_turn>user\n"
            "You are a helpful assistant.\n"
            "\n"
            "Hello, how are you?<end_of_turn>\n"
            "<start_of_turn>model\n"
            "I'm doing great. How can I help you today?<end_of_turn>\n"
            "<start_of_turn>user\n"
            "I'd like to show off how chat templating works!<end_of_turn>\n"
            "<start_of_turn>model\n"
            "\n"
        ),
    },
    "mistral": {
        "user": "[INST] Hello, how are you?[/INST]",
        "user-assistant-user": (
            "[INST] Hello, how are you?[/INST] I'm doing great. How can I help you"
            " today?</s>[INST] I'd like to show off how chat templating works![/INST]"
        ),
        "system-user-assistant-user": (
            "[INST] You are a helpful assistant.\n"
            "\n"
            "Hello, how are you?[/INST] I'm doing great. How can I help you"
            " today?</s>[INST] I'd like to show off how chat templating works![/INST]"
        ),
    },
}

CASES = {
    "user": [{"role": "user", "content": "Hello, how are you?"}],
    "user-assistant-user": [
        {"role": "user", "content": "Hello, how are you?"},
        {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
        {"role": "user", "content": "I'd like to show off how chat templating works!"},
    ],
}
CASES["system-user-assistant-user"] = [
    {"role": "system", "content": "You are a helpful assistant."},
    *CASES["user-assistant-user"],
]

# Ollama's library llama3 template of 2024 (the .System/.Prompt/.Response form): not in the
# table's texts, so it must match by its markers.
LEGACY_LLAMA3 = """{{ if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>{{ end }}{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>

{{ .Prompt }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>

{{ .Response }}<|eot_id|>"""

TOOLS_CHATML = """{{- if .Tools }}<|im_start|>system
{{ range .Tools }}{{ . }}{{ end }}<|im_end|>
{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""

ALPACA = """{{ if .System }}{{ .System }}

{{ end }}{{ if .Prompt }}### Instruction:
{{ .Prompt }}

{{ end }}### Response:
{{ .Response }}"""


def render(jinja: str, messages: list[dict[str, str]], **extra: str) -> str:
    # transformers renders chat templates with exactly this environment.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(jinja).render(messages=messages, add_generation_prompt=True, **extra)


@pytest.mark.parametrize("family", sorted(OLLAMA_RENDERED))
def test_ollama_go_templates_map_to_jinja_that_renders_the_same_prompt(family: str) -> None:
    for go in families()[family]["go_templates"]:
        match = jinja_for_go_template(go)
        assert (match.family, match.exact) == (family, True)
        for case, messages in CASES.items():
            assert render(match.jinja, messages) == OLLAMA_RENDERED[family][case], case


def test_whitespace_and_trim_markers_do_not_defeat_the_text_match() -> None:
    go = families()["chatml"]["go_templates"][0]
    reformatted = go.replace("{{- range .Messages }}", "{{-   range   .Messages   }}")
    assert normalise(reformatted) == normalise(go)
    assert jinja_for_go_template(reformatted).exact


def test_a_template_of_a_known_family_matches_by_its_markers() -> None:
    match = jinja_for_go_template(LEGACY_LLAMA3)
    assert (match.family, match.exact) == ("llama3", False)
    prompt = render(match.jinja, CASES["system-user-assistant-user"])
    assert prompt == OLLAMA_RENDERED["llama3"]["system-user-assistant-user"]


def test_bos_is_prefixed_when_the_tokenizer_adds_it() -> None:
    go = families()["mistral"]["go_templates"][0]
    match = jinja_for_go_template(go, bos=True)
    assert match.jinja.startswith(BOS)
    expected = OLLAMA_RENDERED["mistral"]["user"]
    assert render(match.jinja, CASES["user"], bos_token="<s>") == "<s>" + expected


def test_a_template_using_tools_is_an_error_not_a_prompt_without_tools() -> None:
    with pytest.raises(TemplateError, match=r"\.Tools"):
        jinja_for_go_template(TOOLS_CHATML)


def test_an_unknown_template_is_an_error() -> None:
    with pytest.raises(TemplateError, match="matches no known chat template family"):
        jinja_for_go_template(ALPACA)


def test_markers_of_two_families_match_neither() -> None:
    mixed = families()["chatml"]["go_templates"][0] + "<start_of_turn>"
    with pytest.raises(TemplateError, match="<start_of_turn>"):
        jinja_for_go_template(mixed)


def test_an_empty_template_is_an_error() -> None:
    with pytest.raises(TemplateError, match="no chat template"):
        jinja_for_go_template("  \n")
