"""Per-architecture facts for GGUF -> MLX: tensor names, value transforms, what is refused.

Pure Python (no MLX, no numpy): what a file needs and whether it can be converted is decided
from its header alone, before any tensor is read.

Where the facts come from:
- Tensor names: gguf-py's tensor_mapping.py and Ollama's convert/convert_*.go
  `Replacements()` (the HF -> GGUF direction; this module is its inverse).
- Q/K rows: llama.cpp's convert_hf_to_gguf.py `LlamaModel.permute` (and Ollama's
  convert_llama.go `repack`) reorder the Q and K rows of the llama architecture for ggml's
  "normal" (interleaved) RoPE; the qwen, gemma and phi3 architectures use NEOX RoPE in
  llama.cpp (llama_model_rope_type) and keep Hugging Face's order.
- Norm offsets: convert_hf_to_gguf.py `GemmaModel`/`Gemma2Model.modify_tensors` and
  `Gemma3Model.norm_shift` (Ollama's convert_gemma.go `addOne`) store every `*norm.weight`
  of gemma, gemma2 and gemma3 as w + 1; mlx-lm's Gemma RMSNorm computes with 1 + w.
- config.json (hyper-parameters, their defaults): workers/gguf_config.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ollmlx.gguf_meta import GGUFHeader

from . import gguf_config
from .gguf_config import TensorReader, Unsupported

# How each ggml kind converts (workers/gguf_tensors.py does it):
# - float kinds stay float;
# - affine kinds keep their integers as MLX affine triplets of these bits (group size 32);
# - the others are dequantized with gguf-py and re-quantized at REQUANT_BITS (group size 32):
#   the smallest width whose re-quantization error stays under ~5% RMS on random blocks, and
#   8 bits for Q6_K, which the K-quant mixes give to their most sensitive tensors (output,
#   half of ffn_down and attn_v), where 6 bits would double its own error. Measured errors:
#   tests/test_gguf.py. Q8_K, Q8_1 and Q1_0 are absent: gguf-py cannot dequantize them (and
#   llama.cpp uses Q8_K/Q8_1 only for activations), so files holding them are refused.
FLOAT_KINDS = frozenset({"F32", "F16", "BF16", "F64"})
AFFINE_BITS = {"Q4_0": 4, "Q4_1": 4, "Q5_0": 5, "Q5_1": 5, "Q8_0": 8, "Q4_K": 4, "Q5_K": 5}
REQUANT_BITS = {
    "Q2_K": 3,
    "Q3_K": 5,
    "Q6_K": 8,
    "IQ1_S": 4,
    "IQ1_M": 5,
    "IQ2_XXS": 5,
    "IQ2_XS": 5,
    "IQ2_S": 5,
    "IQ3_XXS": 5,
    "IQ3_S": 5,
    "IQ4_NL": 5,
    "IQ4_XS": 5,
    "TQ1_0": 5,
    "TQ2_0": 2,
    "MXFP4": 5,
    "NVFP4": 5,
}
RUNNABLE_KINDS = FLOAT_KINDS | set(AFFINE_BITS) | set(REQUANT_BITS)

GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# Tensors that become config.json values rather than weights.
CONSUMED = frozenset({"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"})
_BLOCK = re.compile(r"blk\.(\d+)\.([a-z0-9_]+)\.(weight|bias)")

_ATTENTION = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
}
_MLP = {"ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_LLAMA_BLOCK = {
    **_ATTENTION,
    **_MLP,
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_QK_NORM = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
# Gemma 2/3 have four norms per block (Ollama convert_gemma2.go Replacements).
_GEMMA2_BLOCK = {
    **_ATTENTION,
    **_MLP,
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_PHI3_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_qkv": "self_attn.qkv_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    # phi3 keeps gate and up fused in one `ffn_up` (Ollama convert_phi3.go: gate_up_proj).
    "ffn_up": "mlp.gate_up_proj",
    "ffn_down": "mlp.down_proj",
}


@dataclass(frozen=True)
class Arch:
    model_type: str  # mlx-lm's model module
    hf_class: str
    block: dict[str, str]
    settings: Callable[[GGUFHeader, TensorReader], dict[str, Any]]
    permute_qk: bool = False
    norm_shift: float = 0.0
    skip_prefixes: tuple[str, ...] = ()
    required: tuple[str, ...] = field(default=())  # tensors of block 0 the model needs

    def config(self, h: GGUFHeader, read: TensorReader) -> dict[str, Any]:
        """config.json (read=None only checks that the header can make one)."""
        return {
            "model_type": self.model_type,
            "architectures": [self.hf_class],
            **self.settings(h, read),
        }


ARCHS: dict[str, Arch] = {
    "llama": Arch("llama", "LlamaForCausalLM", _LLAMA_BLOCK, gguf_config.llama, permute_qk=True),
    "qwen2": Arch(
        "qwen2", "Qwen2ForCausalLM", _LLAMA_BLOCK, gguf_config.qwen2, required=("attn_q.bias",)
    ),
    "qwen3": Arch("qwen3", "Qwen3ForCausalLM", {**_LLAMA_BLOCK, **_QK_NORM}, gguf_config.qwen3),
    "gemma": Arch("gemma", "GemmaForCausalLM", _LLAMA_BLOCK, gguf_config.gemma, norm_shift=1.0),
    "gemma2": Arch(
        "gemma2", "Gemma2ForCausalLM", _GEMMA2_BLOCK, gguf_config.gemma2, norm_shift=1.0
    ),
    "gemma3": Arch(
        "gemma3_text",
        "Gemma3ForCausalLM",
        {**_GEMMA2_BLOCK, **_QK_NORM},
        gguf_config.gemma3,
        norm_shift=1.0,
        # Vision tower and projector of the multimodal files: the text model is converted.
        skip_prefixes=("v.", "mm."),
    ),
    "phi3": Arch(
        "phi3", "Phi3ForCausalLM", _PHI3_BLOCK, gguf_config.phi3, required=("attn_qkv.weight",)
    ),
}


def hf_name(arch: Arch, name: str) -> str | None:
    """The mlx-lm weight name of a GGUF tensor; None for tensors that are not weights."""
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    if name in CONSUMED or name.startswith(arch.skip_prefixes):
        return None
    match = _BLOCK.fullmatch(name)
    if match is None or match[2] not in arch.block:
        return None if name.endswith(".attn_rot_embd") else _unknown(arch, name)
    return f"model.layers.{match[1]}.{arch.block[match[2]]}.{match[3]}"


def _unknown(arch: Arch, name: str) -> str:
    raise Unsupported(f"tensor {name} is not part of a {arch.model_type} model")


def block_part(name: str) -> str | None:
    """`attn_q` for `blk.3.attn_q.weight`."""
    match = _BLOCK.fullmatch(name)
    return match[2] if match else None


def problem(h: GGUFHeader) -> str | None:
    """Why the file cannot be converted (architecture, tensor kinds, names), or None."""
    name = h.architecture
    arch = ARCHS.get(name)
    if arch is None:
        known = ", ".join(sorted(ARCHS))
        return f"GGUF architecture {name or '(none)'!r} is not converted yet (supported: {known})"
    try:
        # Only the tensors that become weights count (a vision tower is skipped whole).
        weights = [t for t in h.tensors if hf_name(arch, t.name) is not None]
    except Unsupported as exc:
        return str(exc)
    bad = sorted({t.type_name for t in weights} - RUNNABLE_KINDS)
    if bad:
        return f"tensor type {', '.join(bad)} cannot be run by MLX (gguf-py cannot dequantize it)"
    for t in weights:
        if len(t.shape) > 2:
            return f"tensor {t.name} has {len(t.shape)} dimensions (experts are not supported)"
    try:
        for part in arch.required:
            if h.tensor(f"blk.0.{part}") is None:
                return f"{name} file without blk.0.{part} is not supported"
        arch.config(h, None)
    except Unsupported as exc:
        return str(exc)
    if not isinstance(h.metadata.get("tokenizer.ggml.model"), str):
        return "the GGUF file has no tokenizer (tokenizer.ggml.model)"
    return None
