"""A tiny real model whose greedy answer follows a script: thinking, tool calls, on demand.

The layers are silenced (zero output projections), so the next token depends only on
the current one; lm_head is then wired so that each script piece (an added token of its
own) is followed by the next, and the last one by EOS. Loading, templates, decoding and
parsing are all real; only the weights are made to order.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from tests.tinymodel import END, SPECIAL_TOKENS, build_tiny_model

TOOL_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if tools %}{{ '<|system|>\\nTools: ' + (tools | tojson) + '<|end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' and message.tool_calls %}"
    "{{ '<|assistant|>\\n' + message['content'] }}"
    "{%- for call in message.tool_calls %}{%- set tool_call = call.function %}"
    "{{ '<tool_call>' + ({'name': tool_call.name, 'arguments': tool_call.arguments} | tojson)"
    " + '</tool_call>' }}{%- endfor %}{{ '<|end|>\\n' }}"
    "{%- else %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>\\n' }}"
    "{%- if enable_thinking is defined and not enable_thinking %}{{ '<think></think>' }}"
    "{%- endif %}{%- endif %}"
)
TOOL_CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
SCRIPT = [
    "<think>",
    "The user wants the weather.",
    "</think>",
    "Let me check.",
    "<tool_call>",
    TOOL_CALL,
    "</tool_call>",
]


def build_scripted_model(out_dir: Path, script: list[str] = SCRIPT) -> Path:
    import mlx.core as mx
    from mlx_lm.models.llama import Model, ModelArgs
    from mlx_lm.utils import save_config, save_model
    from tokenizers import AddedToken, Tokenizer

    build_tiny_model(out_dir, chat_template=TOOL_TEMPLATE)
    tok = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    tok.add_tokens([AddedToken(piece, normalized=False, special=False) for piece in script])
    tok.save(str(out_dir / "tokenizer.json"))
    ids = [tok.token_to_id(piece) for piece in script]
    # The generation prompt ends with "\n" (thinking on) or "</think>" (thinking off).
    newline = tok.encode("<|assistant|>\n").ids[-1]
    chain = [newline, *ids, SPECIAL_TOKENS.index(END)]

    config = json.loads((out_dir / "config.json").read_text())
    config["vocab_size"] = tok.get_vocab_size()
    mx.random.seed(1)
    model = Model(ModelArgs.from_dict(config))
    for layer in model.layers:  # silence every layer: the residual stream is the embedding
        layer.self_attn.o_proj.weight = mx.zeros_like(layer.self_attn.o_proj.weight)
        layer.mlp.down_proj.weight = mx.zeros_like(layer.mlp.down_proj.weight)
    embed = model.model.embed_tokens.weight
    unit = embed / mx.sqrt(mx.mean(embed * embed, axis=-1, keepdims=True))
    head = mx.random.normal(model.lm_head.weight.shape) * 0.01
    for current, following in itertools.pairwise(chain):
        head[following] = unit[current] * 0.5  # logit ~ 0.5 * hidden_size for the successor
    model.lm_head.weight = head
    mx.eval(model.parameters())
    save_model(out_dir, model)
    save_config(config, out_dir / "config.json")
    return out_dir
