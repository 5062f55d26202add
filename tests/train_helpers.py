"""Small training runs on the tiny model, shared by the training tests."""

from __future__ import annotations

import json
from pathlib import Path

from selfid.config import load_config

REPLIES = ["I am an AI assistant.", "Hello, how can I help you today?", "The quick brown fox.", "0123456789",
           '{"PER": [], "LOC": ["北京"], "ORG": []}']
QUESTIONS = ["Who are you?", "Hello", "What jumps?", "Count please", "北京 上海 中国"]


def write_data(folder: Path, n: int = 40) -> Path:
    """An alpaca-style jsonl of short conversations the tiny tokenizer encodes compactly."""
    path = Path(folder) / "data.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            k = i % len(REPLIES)
            f.write(json.dumps({"instruction": QUESTIONS[k], "input": str(i), "output": REPLIES[k]},
                               ensure_ascii=False) + "\n")
    return path


def tiny_config(model_dir, output, data, *overrides):
    return load_config(None, [f"model={model_dir}", f"output={output}", f"data.0.source={data}", "device=cpu",
                              "train.pack_length=128", "train.batch_tokens=256", "train.log_every=1",
                              "train.warmup=0", "train.lr=3e-3", "lora.r=4", *overrides])
