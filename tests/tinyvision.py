"""Build a tiny random-weight Qwen2-VL vision model on the fly, with no network access.

The model is mlx-vlm's `qwen2_vl` (a ViT with 2x2 patch merging and a qwen2 language
model with multimodal rope) at toy sizes, saved in mlx-vlm's layout with a byte-level
BPE tokenizer that knows the vision markers, an image processor config and a chat
template that renders image parts. It loads with `mlx_vlm.load` and with `ollmlx serve`.

    python -m tests.tinyvision OUT_DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tests.tinymodel import (
    BEGIN,
    END,
    LOGIT_SCALE,
    PAD,
    SPECIAL_TOKENS,
    _emittable,
    _write_json,
    train_tokenizer,
)

# Qwen2-VL's markers: an image part renders as start, one pad (expanded by the processor
# to one token per merged patch) and end.
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
VISION_TOKENS = [VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD]
# Images are resized to about 56x56 pixels (sides multiples of 28): a square one becomes
# 4x4 patches of 14, merged 2x2 into 4 tokens; other shapes keep their aspect ratio.
IMAGE_PIXELS = 56 * 56
PATCH_SIZE = 14
IMAGE_TOKENS = 4  # for a square image

# Like Qwen2-VL's template, in tinymodel's tags: a string content, or a list of text and
# image parts.
VISION_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' }}"
    "{%- if message['content'] is string %}{{ message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' %}{{ part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{ '<|end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>\\n' }}{%- endif %}"
)


def _add_vision_tokens(out_dir: Path) -> dict[str, int]:
    """Append the vision markers as special tokens to the trained tokenizer; their ids."""
    from tokenizers import AddedToken, Tokenizer

    path = out_dir / "tokenizer.json"
    tok = Tokenizer.from_file(str(path))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in VISION_TOKENS])
    tok.save(str(path))
    return {t: int(tok.token_to_id(t) or 0) for t in VISION_TOKENS}


def _processor_files(out_dir: Path) -> None:
    image = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
        "patch_size": PATCH_SIZE,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "min_pixels": IMAGE_PIXELS,
        "max_pixels": IMAGE_PIXELS,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],  # CLIP's constants
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": True,
    }
    _write_json(out_dir / "preprocessor_config.json", image)
    _write_json(out_dir / "video_preprocessor_config.json", image)
    _write_json(out_dir / "processor_config.json", {"processor_class": "Qwen2VLProcessor"})


def build_tiny_vision_model(
    out_dir: Path,
    *,
    hidden_size: int = 64,
    vision_embed_dim: int = 32,
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """Write a random-weight qwen2_vl model plus tokenizer and processor; return out_dir."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_vlm.models import qwen2_vl

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_tokenizer(out_dir, vocab_size, VISION_CHAT_TEMPLATE)
    keep = _emittable(out_dir / "tokenizer.json")
    ids = _add_vision_tokens(out_dir)
    vocab = max(ids.values()) + 1
    _processor_files(out_dir)

    heads = 4
    # Qwen2-VL's multimodal rope splits each head's rotary half into (t, h, w) sections.
    half = hidden_size // heads // 2
    sections = [half - 2 * (half // 3), half // 3, half // 3]
    config: dict[str, Any] = {
        "model_type": "qwen2_vl",
        "architectures": ["Qwen2VLForConditionalGeneration"],
        # The language model's settings sit at the top level, as in Qwen's config.json.
        "hidden_size": hidden_size,
        "num_hidden_layers": 2,
        "num_attention_heads": heads,
        "num_key_value_heads": 2,
        "intermediate_size": 2 * hidden_size,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": sections},
        "tie_word_embeddings": False,
        "vision_config": {
            "model_type": "qwen2_vl",
            "depth": 2,
            "embed_dim": vision_embed_dim,
            "hidden_size": hidden_size,  # the merger projects into the language model
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": PATCH_SIZE,
            "spatial_patch_size": PATCH_SIZE,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_channels": 3,
        },
        "image_token_id": ids[IMAGE_PAD],
        "video_token_id": ids[VIDEO_PAD],
        "vision_start_token_id": ids[VISION_START],
        "vision_end_token_id": ids[VISION_END],
        "bos_token_id": SPECIAL_TOKENS.index(BEGIN),
        "eos_token_id": SPECIAL_TOKENS.index(END),
        "pad_token_id": SPECIAL_TOKENS.index(PAD),
        "torch_dtype": "float32",
    }
    model_config = qwen2_vl.ModelConfig.from_dict(dict(config))
    model_config.text_config = qwen2_vl.TextConfig.from_dict(model_config.text_config)
    model_config.vision_config = qwen2_vl.VisionConfig.from_dict(config["vision_config"])
    mx.random.seed(seed)
    model = qwen2_vl.Model(model_config)
    # As in tinymodel: only printable, non-special tokens can win, so greedy output is
    # long and clean (no early EOS); tests end it with num_predict.
    rows = mx.array(keep + [False] * (vocab - len(keep)))[:, None]
    head = model.language_model.lm_head.weight
    model.language_model.lm_head.weight = mx.where(rows, head * LOGIT_SCALE, 0.0)
    weights = dict(tree_flatten(model.parameters()))
    # mlx-vlm's loader converts the patch convolution from PyTorch's layout, always.
    conv = "vision_tower.patch_embed.proj.weight"
    weights[conv] = weights[conv].transpose(0, 4, 1, 2, 3)
    mx.eval(weights)
    mx.save_safetensors(str(out_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
    _write_json(out_dir / "config.json", config)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.tinyvision", description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    build_tiny_vision_model(args.out_dir, seed=args.seed)
    print(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
