"""Shared pieces of the server tests: LoRA adapters on the tiny model, a scripted engine, live servers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from selfid.engine import Completion, Event

NER_SYSTEM = "你是一个命名实体识别助手。"  # the system prompt the "ner" adapter was "trained" with


def run_async(main):
    """asyncio.run(main()) in a thread of its own: playwright's sync API keeps an event loop in this one."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


def make_adapter(base_dir: Path, out: Path, seed: int, manifest: dict | None = None) -> Path:
    """A LoRA adapter with random (non-zero) weights on the tiny model, saved like `selfid train` would."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    if manifest is not None:
        (out / "selfid.json").write_text(json.dumps(manifest, ensure_ascii=False))
    return out


def ner_manifest(template_hash: str | None = None) -> dict:
    return {"train": {"system_prompt": NER_SYSTEM, "system_prompt_policy": "fixed", "template_hash": template_hash}}


class ScriptedEngine:
    """Stands in for InProcessEngine where a test needs a particular reply (or many fast ones):
    the real tokenizer and context window, and every request answered with `reply`, streamed in pieces."""

    def __init__(self, loaded, reply: str = "scripted reply", pieces: int = 3):
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.context_window = loaded.context_window
        self.max_batch_size = 32
        self.reply = reply
        self.pieces = pieces

    def adapters(self):
        return []

    def encode(self, prompt):
        return self.tokenizer(prompt, add_special_tokens=False).input_ids if isinstance(prompt, str) else list(prompt)

    def events(self, requests, prompt_tokens=None, admit=None):
        ids = self.encode(self.reply)
        size = max(1, -(-len(self.reply) // self.pieces))
        chunks = [self.reply[i:i + size] for i in range(0, len(self.reply), size)]
        for k, chunk in enumerate(chunks):
            for i, r in enumerate(requests):
                for j in range(r.params.n):
                    done = Completion(self.reply, ids, "stop") if k == len(chunks) - 1 else None
                    if r.stream or done:
                        yield Event(i, j, chunk if r.stream else "", done)


def adapter_dirs(tmp_path_factory, tiny_model_dir, tiny) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {"ner": make_adapter(tiny_model_dir, root / "ner", 1, ner_manifest(tiny.chat.template_hash)),
            "plain": make_adapter(tiny_model_dir, root / "plain", 2)}


def start(model_dir, adapters=(), decode: str | None = None, **kw):
    """A live uvicorn server on the tiny model (and adapters), decoding as `decode` says (default: the CPU's
    default, eager); returns (Background, Service)."""
    from selfid.engine import InProcessEngine
    from selfid.serve.api import Service, create_app
    from selfid.serve.models import load_served
    from selfid.serve.server import Background

    loaded, served = load_served(str(model_dir), adapters, device="cpu", dtype="float32", progress=False)
    if decode is not None:
        kw["engine"] = InProcessEngine(loaded, max_batch_size=kw.get("max_batch_size"), decode=decode)
    service = Service(loaded, served, **kw)
    return Background(create_app(service)), service


@pytest.fixture(scope="module")
def plain_server(tiny_model_dir):
    """The seed deployment: one model, no adapters, no API key."""
    bg, service = start(tiny_model_dir)
    with bg:
        yield bg, service


@pytest.fixture(scope="module")
def static_server(tiny_model_dir):
    """One model decoding from a static cache (the CPU's stand-in for CUDA-graph decoding), which counts its steps."""
    bg, service = start(tiny_model_dir, decode="static")
    with bg:
        yield bg, service


@pytest.fixture(scope="module")
def adapter_server(tmp_path_factory, tiny_model_dir, tiny):
    dirs = adapter_dirs(tmp_path_factory, tiny_model_dir, tiny)
    bg, service = start(tiny_model_dir, [f"{k}={v}" for k, v in dirs.items()])
    with bg:
        yield bg, service


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


@pytest.fixture
def serve_log():
    """What the server logs (logger selfid.serve), whatever its propagation is set to."""
    logger = logging.getLogger("selfid.serve")
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)
