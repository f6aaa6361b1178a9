"""Build tiny random-weight mlx-lm (llama) models on the fly, with no network access.

The models are meant for tests and for trying the server: they load like any mlx-lm
checkpoint, have a real byte-level BPE tokenizer and a chat template, and generate
(meaningless) text quickly on CPU.

    python -m tests.tinymodel OUT_DIR [--params N]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BEGIN, END, PAD = "<|begin|>", "<|end|>", "<pad>"
SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"
# Order fixes the ids: <|begin|>=0, <|end|>=1, <pad>=2, <|system|>=3, <|user|>=4, <|assistant|>=5.
SPECIAL_TOKENS = [BEGIN, END, PAD, SYSTEM, USER, ASSISTANT]

# Whitespace control matters: the rendered prompt must be stable, so every tag is explicit.
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>\\n' }}{%- endif %}"
)

# Multiplier for the lm_head rows of emittable tokens (see build_tiny_model).
LOGIT_SCALE = 8.0

_WORDS = """the a an this that every some many few small large quick slow bright dark old new
cat dog bird fish river mountain city village garden forest ocean library teacher student
engineer doctor farmer painter robot computer window kitchen morning evening winter summer
runs walks reads writes builds paints sings watches finds carries opens closes remembers
quietly happily slowly carefully suddenly often never always together alone is was will
over under near behind beside across through around between with without because while
café naïve résumé über façade jalapeño smörgåsbord déjà vu""".split()
_SYLLABLES = "ka lo mi ra ven tor sel quin bar dun fel gri hol jas mek nor pil rus tan vex".split()
_SYMBOLS = ["✓", "→", "★", "€", "½", "°", "日本", "中文", "😀", "🚀"]


def _corpus() -> list[str]:
    """A fixed, varied pseudo-English corpus: enough distinct words for ~4k BPE merges."""
    # A private Random keeps the corpus independent of the model seed and of global state.
    rng = random.Random(20261101)
    lines = []
    for _ in range(4000):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(5, 12))]
        # Made-up names and numbers add distinct pre-tokens, so larger vocabularies fill up.
        name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))).capitalize()
        words.insert(rng.randint(0, len(words)), name)
        sentence = " ".join(words).capitalize()
        end = rng.choice([".", "!", "?", ";", ","])
        extra = rng.choice([str(rng.randint(0, 99999)), rng.choice(_SYMBOLS), "", "(yes)"])
        lines.append(f"{sentence}{end} {extra}".rstrip())
    return lines


def train_tokenizer(
    out_dir: Path,
    vocab_size: int,
    chat_template: str | None = None,
    model_max_length: int = 2048,
) -> int:
    """Train and save a byte-level BPE tokenizer; return its real vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # ByteLevel on both ends makes every string (any unicode) round-trip exactly.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        # The full byte alphabet up front, so no byte is ever out of vocabulary.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.save(str(out_dir / "tokenizer.json"))

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BEGIN,
        "eos_token": END,
        "pad_token": PAD,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": chat_template if chat_template is not None else DEFAULT_CHAT_TEMPLATE,
    }
    _write_json(out_dir / "tokenizer_config.json", config)
    _write_json(
        out_dir / "special_tokens_map.json",
        {"bos_token": BEGIN, "eos_token": END, "pad_token": PAD},
    )
    return tok.get_vocab_size()


def _emittable(tokenizer_json: Path) -> list[bool]:
    """Per id: may the model emit it (not special, decodes to printable UTF-8 or newline)?"""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    result = []
    for i in range(tok.get_vocab_size()):
        token = tok.id_to_token(i)
        # Byte tokens that are only part of a UTF-8 character decode to U+FFFD.
        text = tok.decoder.decode([token])
        printable = "\ufffd" not in text and all(c.isprintable() or c == "\n" for c in text)
        result.append(token not in SPECIAL_TOKENS and printable)
    return result


def _write_json(path: Path, obj: dict) -> None:
    # Sorted keys and a fixed indent keep the files byte-identical across builds.
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


_HF_CLASS = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
}


def _llama_extras(hidden_size: int, num_heads: int) -> dict[str, Any]:
    return {}


def _qwen2_extras(hidden_size: int, num_heads: int) -> dict[str, Any]:
    return {"rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6}


def _qwen3_extras(hidden_size: int, num_heads: int) -> dict[str, Any]:
    return {"head_dim": hidden_size // num_heads, **_qwen2_extras(hidden_size, num_heads)}


def _gemma2_extras(hidden_size: int, num_heads: int) -> dict[str, Any]:
    head_dim = hidden_size // num_heads
    return {
        "tie_word_embeddings": True,
        "head_dim": head_dim,
        "query_pre_attn_scalar": head_dim,
        "rms_norm_eps": 1e-6,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "sliding_window": 512,
        "hidden_activation": "gelu_pytorch_tanh",
    }


def _phi3_extras(hidden_size: int, num_heads: int) -> dict[str, Any]:
    return {"original_max_position_embeddings": 2048, "rope_scaling": None}


def _gemma3_extras(hidden_size: int, num_heads: int) -> dict[str, Any]:
    head_dim = hidden_size // num_heads
    return {
        "tie_word_embeddings": True,
        "head_dim": head_dim,
        "query_pre_attn_scalar": head_dim,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0,
        "sliding_window": 512,
        # mlx-lm needs a global layer among the first `pattern` layers (two here).
        "sliding_window_pattern": 2,
        "hidden_activation": "gelu_pytorch_tanh",
    }


# Per model type: config keys that differ from the llama defaults above.
_ARCH_CONFIG: dict[str, Callable[[int, int], dict[str, Any]]] = {
    "llama": _llama_extras,
    "qwen2": _qwen2_extras,
    "qwen3": _qwen3_extras,
    "gemma2": _gemma2_extras,
    "gemma3_text": _gemma3_extras,
    "phi3": _phi3_extras,
}


def _shape_gemma_norms(model: Any) -> None:
    """Random Gemma norm weights (scaled by 1 + w, zero at init) so a wrong offset shows, and
    large post-norms: tied embeddings otherwise dominate the residual stream and greedy
    decoding repeats the last token forever."""
    import mlx.core as mx

    def noise(norm: Any, base: float = 0.0) -> None:
        norm.weight = base + 0.5 * mx.random.normal(norm.weight.shape)

    for layer in model.model.layers:
        noise(layer.input_layernorm)
        noise(layer.pre_feedforward_layernorm)
        if hasattr(layer.self_attn, "q_norm"):  # gemma3
            noise(layer.self_attn.q_norm)
            noise(layer.self_attn.k_norm)
        noise(layer.post_attention_layernorm, 64.0)
        noise(layer.post_feedforward_layernorm, 64.0)
    noise(model.model.norm)


def build_tiny_model(
    out_dir: Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vocab_size: int = 512,
    max_position_embeddings: int = 2048,
    seed: int = 0,
    chat_template: str | None = None,
    dtype: str = "float32",
    model_type: str = "llama",
) -> Path:
    """Write a random-weight model plus tokenizer to out_dir; return out_dir.

    model_type: "llama" (the default), or for tests of other architectures "qwen2" (q/k/v
    biases), "qwen3" (q/k norms), "phi3" (fused q/k/v and gate/up), "gemma2" or
    "gemma3_text" (tied embeddings, as Gemma always is, and random norm weights).
    """
    import importlib

    import mlx.core as mx
    from mlx_lm.utils import save_config, save_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    real_vocab = train_tokenizer(out_dir, vocab_size, chat_template, max_position_embeddings)

    config = {
        "model_type": model_type,
        "architectures": [_HF_CLASS[model_type]],
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "intermediate_size": intermediate_size,
        # The tokenizer's real size: if the corpus cannot fill vocab_size, the model shrinks,
        # so the model can never emit an id the tokenizer cannot decode.
        "vocab_size": real_vocab,
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        # Untied, so silencing special tokens in lm_head leaves their input embeddings intact.
        "tie_word_embeddings": False,
        "bos_token_id": SPECIAL_TOKENS.index(BEGIN),
        "eos_token_id": SPECIAL_TOKENS.index(END),
        "pad_token_id": SPECIAL_TOKENS.index(PAD),
        "torch_dtype": dtype,
    }
    config.update(_ARCH_CONFIG[model_type](hidden_size, num_heads))
    module = importlib.import_module(f"mlx_lm.models.{model_type}")
    args = module.ModelArgs.from_dict(config)
    # Weights are drawn from MLX's global generator while the modules are built.
    mx.random.seed(seed)
    model = module.Model(args)
    # Shape the output layer so generation is clean and long (see _emittable):
    # - rows of specials (EOS included) and of tokens that are not printable UTF-8 are zeroed,
    #   so their logit is exactly 0;
    # - the other rows are scaled up, spreading their logits (std ~0.55 -> ~4.4), so the
    #   greedy pick is almost surely > 0 and even temperature-1 sampling picks a zeroed
    #   token about once in 10^4 steps.
    # So neither greedy decoding nor sampling stops early or emits control tokens or broken
    # bytes; tests that need an end use num_predict or stop strings.
    keep = mx.array(_emittable(out_dir / "tokenizer.json"))[:, None]
    if config["tie_word_embeddings"]:
        if "lm_head" in model:  # gemma3_text builds one and drops it when the file has none
            model.pop("lm_head")
            model.tie_word_embeddings = True
        # Tied: the rows are the input embeddings too (silenced tokens embed to zero).
        embed = model.model.embed_tokens
        embed.weight = mx.where(keep, embed.weight * LOGIT_SCALE, mx.zeros_like(embed.weight))
    else:
        head = model.lm_head.weight
        model.lm_head.weight = mx.where(keep, head * LOGIT_SCALE, mx.zeros_like(head))
    if model_type in ("gemma2", "gemma3_text"):
        _shape_gemma_norms(model)
    model.set_dtype(getattr(mx, dtype))
    mx.eval(model.parameters())

    save_model(out_dir, model)
    # save_config takes the file path (not the directory) and drops a few keys in place.
    save_config(dict(config), out_dir / "config.json")
    return out_dir


def _shape_for(params: int, vocab: int) -> dict[str, int]:
    """Pick hidden size and depth (64-wide heads, GQA 2:1) to reach about `params`."""
    best: dict[str, int] = {}
    # Multiples of 128 keep the head count even, so GQA 2:1 applies.
    for hidden in range(128, 8193, 128):
        inter = max(64, round(hidden * 8 / 3 / 64) * 64)
        # q and o are h*h each, k and v h*h/2 each; the MLP has three h*inter matrices.
        per_layer = 3 * hidden * hidden + 3 * hidden * inter + 2 * hidden
        layers = max(1, round((params - 2 * vocab * hidden) / per_layer))
        best = {"hidden_size": hidden, "intermediate_size": inter, "num_layers": layers}
        # Stop at the first width whose depth looks like a real model (depth <= width/48).
        if layers <= max(2, hidden // 48):
            break
    heads = max(1, best["hidden_size"] // 64)
    best["num_heads"] = heads
    best["num_kv_heads"] = max(1, heads // 2) if heads % 2 == 0 else heads
    return best


def count_parameters(out_dir: Path) -> int:
    """Parameters stored in a model directory written by save_model."""
    index = json.loads((Path(out_dir) / "model.safetensors.index.json").read_text())
    return int(index["metadata"]["total_parameters"])


def build_model_of_size(
    out_dir: Path, params: int, *, seed: int = 0, dtype: str = "float32"
) -> Path:
    """Write a random llama model of roughly `params` parameters (vocabulary about 4k)."""
    vocab = 4096 if params >= 2_000_000 else 512
    shape = _shape_for(params, vocab)
    return build_tiny_model(out_dir, vocab_size=vocab, seed=seed, dtype=dtype, **shape)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.tinymodel", description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--params", type=int, default=None, help="target parameter count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ns = parser.parse_args(argv)
    start = time.perf_counter()
    if ns.params is None:
        build_tiny_model(ns.out_dir, seed=ns.seed, dtype=ns.dtype)
    else:
        build_model_of_size(ns.out_dir, ns.params, seed=ns.seed, dtype=ns.dtype)
    took = time.perf_counter() - start
    print(f"wrote {ns.out_dir} ({count_parameters(ns.out_dir):,} parameters) in {took:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
