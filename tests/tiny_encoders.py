"""Tiny random encoders in Hugging Face layout, built on the fly for the embedding tests.

Each folder holds what the real repo ships: config.json with the real keys,
model.safetensors with the real weight names, a tokenizer.json (trained here, offline,
with the `tokenizers` package, with the real repo's [CLS] ... [SEP] post-processor) and
sentence-transformers' modules.json, 1_Pooling/config.json and sentence_bert_config.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

CORPUS = [
    "The cat sits on the mat. A kitten is resting on a rug.",
    "Stock markets fell sharply after the announcement of new interest rates.",
    "How do I bake sourdough bread at home with a cast iron pot?",
    "Quantum computers use qubits instead of bits to search large spaces.",
    "search_query: what is the capital of France? search_document: Paris is the capital.",
    "hello world, embeddings map sentences to vectors for retrieval and clustering.",
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _finish(tokenizer: Tokenizer, folder: Path) -> int:
    """Add the [CLS] $A [SEP] template, save tokenizer.json; returns the vocabulary size."""
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    return tokenizer.get_vocab_size()


def wordpiece_tokenizer(folder: Path) -> int:
    """An uncased BERT WordPiece tokenizer (nomic-embed-text uses bert-base-uncased's)."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=SPECIALS)
    tokenizer.train_from_iterator(CORPUS, trainer)
    return _finish(tokenizer, folder)


def bpe_tokenizer(folder: Path) -> int:
    """A byte-level BPE tokenizer, as ModernBERT's (OLMo-derived) one."""
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return _finish(tokenizer, folder)


def _sentence_transformers(folder: Path, dimension: int, max_seq_length: int) -> None:
    """Mean pooling, as nomic-embed-text-v1.5 and modernbert-embed-base ship it."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    pooling = {
        "word_embedding_dimension": dimension,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    limit = {"max_seq_length": max_seq_length, "do_lower_case": False}
    (folder / "sentence_bert_config.json").write_text(json.dumps(limit))


def _random(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """Weights with enough spread that attention is sharp (so positions matter); norm
    weights near 1 and biases near 0 but not exactly, so swapping them shows."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in shapes.items():
        if "norm" in name or "_ln" in name:
            base = 1.0 if name.endswith("weight") else 0.0
            weights[name] = (base + 0.2 * rng.standard_normal(shape)).astype(np.float32)
        else:
            weights[name] = (0.3 * rng.standard_normal(shape)).astype(np.float32)
    return weights


def tiny_nomic_bert(folder: Path) -> Path:
    """nomic-embed-text-v1.5's architecture and config keys, scaled down."""
    folder.mkdir(parents=True)
    vocab = wordpiece_tokenizer(folder)
    hidden, layers, inner = 64, 2, 200  # the gated MLP rounds 200 up to 256
    config = {
        "architectures": ["NomicBertModel"],
        "model_type": "nomic_bert",
        "activation_function": "swiglu",
        "vocab_size": vocab,  # padded to a multiple of 64 by the model, as HF's
        "pad_vocab_size_multiple": 64,
        "n_embd": hidden,
        "n_head": 4,
        "n_layer": layers,
        "n_inner": inner,
        "n_positions": 8192,
        "max_trained_positions": 2048,
        "rotary_emb_fraction": 1.0,
        "rotary_emb_base": 1000,
        "rotary_emb_interleaved": False,
        "rotary_emb_scale_base": None,
        "rotary_scaling_factor": None,
        "layer_norm_epsilon": 1e-12,
        "prenorm": False,
        "qkv_proj_bias": False,
        "mlp_fc1_bias": False,
        "mlp_fc2_bias": False,
        "type_vocab_size": 2,
        "causal": False,
        "use_rms_norm": False,
        "parallel_block": False,
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config))
    _sentence_transformers(folder, hidden, 8192)
    width = 256
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (vocab + -vocab % 64, hidden),
        "embeddings.token_type_embeddings.weight": (2, hidden),
        "emb_ln.weight": (hidden,),
        "emb_ln.bias": (hidden,),
    }
    for i in range(layers):
        p = f"encoder.layers.{i}"
        shapes[f"{p}.attn.Wqkv.weight"] = (3 * hidden, hidden)
        shapes[f"{p}.attn.out_proj.weight"] = (hidden, hidden)
        shapes[f"{p}.mlp.fc11.weight"] = (width, hidden)
        shapes[f"{p}.mlp.fc12.weight"] = (width, hidden)
        shapes[f"{p}.mlp.fc2.weight"] = (hidden, width)
        for norm in ("norm1", "norm2"):
            shapes[f"{p}.{norm}.weight"] = (hidden,)
            shapes[f"{p}.{norm}.bias"] = (hidden,)
    save_file(_random(shapes, seed=1), str(folder / "model.safetensors"))
    return folder


def tiny_modernbert(folder: Path) -> Path:
    """ModernBERT's architecture (ModernBertForMaskedLM layout, `model.` prefix and an MLM
    head the encoder must skip), scaled down: 3 layers, global / local / global, a local
    window of 8 tokens (4 each side) so that longer inputs exercise it."""
    folder.mkdir(parents=True)
    vocab = bpe_tokenizer(folder)
    hidden, layers, inner = 64, 3, 96
    pad = Tokenizer.from_file(str(folder / "tokenizer.json")).token_to_id("[PAD]")
    config = {
        "architectures": ["ModernBertForMaskedLM"],
        "model_type": "modernbert",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": inner,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "hidden_activation": "gelu",
        "max_position_embeddings": 8192,
        "norm_eps": 1e-5,
        "norm_bias": False,
        "attention_bias": False,
        "mlp_bias": False,
        "classifier_bias": False,
        "decoder_bias": True,
        "global_attn_every_n_layers": 2,
        "local_attention": 8,
        "global_rope_theta": 160000.0,
        "local_rope_theta": 10000.0,
        "pad_token_id": pad,
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config))
    _sentence_transformers(folder, hidden, 8192)
    shapes: dict[str, tuple[int, ...]] = {
        "model.embeddings.tok_embeddings.weight": (vocab, hidden),
        "model.embeddings.norm.weight": (hidden,),
        "model.final_norm.weight": (hidden,),
        "head.dense.weight": (hidden, hidden),
        "head.norm.weight": (hidden,),
        "decoder.bias": (vocab,),
    }
    for i in range(layers):
        p = f"model.layers.{i}"
        if i:  # layer 0 has no attention norm
            shapes[f"{p}.attn_norm.weight"] = (hidden,)
        shapes[f"{p}.attn.Wqkv.weight"] = (3 * hidden, hidden)
        shapes[f"{p}.attn.Wo.weight"] = (hidden, hidden)
        shapes[f"{p}.mlp_norm.weight"] = (hidden,)
        shapes[f"{p}.mlp.Wi.weight"] = (2 * inner, hidden)
        shapes[f"{p}.mlp.Wo.weight"] = (hidden, inner)
    save_file(_random(shapes, seed=2), str(folder / "model.safetensors"))
    return folder
