"""`python -m benchmarks.coldstart MODEL_DIR PROMPT_JSON`: the in-process cold start.

A fresh interpreter imports mlx_lm, loads the model and prints `first` as soon as the
first token exists; then one JSON line with its peak memory. The parent times the
spawn-to-`first` interval, so interpreter start-up counts, as it does for a worker.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    model_dir, messages = sys.argv[1], json.loads(sys.argv[2])
    from mlx_lm import load, stream_generate

    model, tokenizer = load(model_dir)[:2]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = tokenizer.encode(text, add_special_tokens=False)
    for _ in stream_generate(model, tokenizer, prompt, max_tokens=1):
        print("first", flush=True)
    import resource

    # ru_maxrss is KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss": peak if sys.platform == "darwin" else peak * 1024}))


if __name__ == "__main__":
    main()
