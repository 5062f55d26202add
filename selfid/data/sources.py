"""Turn a config's data source into samples: the built-in MSRA NER source, or an alpaca/messages file."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from selfid.data import msra
from selfid.data.readers import TrainingConversation, read_file
from selfid.errors import SelfidError
from selfid.io import sha256_file
from selfid.tasks import ner


def msra_samples(limit: int | None = None, seed: int = 0, max_chars: int | None = None) -> list[TrainingConversation]:
    """MSRA training sentences as NER conversations: the task prompt and the JSON answer."""
    return [TrainingConversation(({"role": "user", "content": ner.prompt(s.chars)},
                                  {"role": "assistant", "content": ner.answer(s.entities())}), source="msra")
            for s in msra.load("train", limit=limit, seed=seed, max_chars=max_chars)]


def load_source(src) -> tuple[list[TrainingConversation], dict]:
    """(samples, a description for the manifest: where they came from, a content hash, counts)."""
    if src.source == "msra":
        samples = msra_samples(src.limit, src.seed, src.max_chars)
        path = msra.msra_path()
        info = {"source": "msra", "path": str(path), "sha256": sha256_file(path), "split": "train"}
    else:
        path = Path(src.source).expanduser()
        if not path.exists():
            raise SelfidError(f"data source {src.source!r} is neither 'msra' nor an existing file")
        samples = read_file(path, src.format)
        available = len(samples)
        if src.limit is not None and src.limit < len(samples):
            samples = random.Random(src.seed).sample(samples, src.limit)
        info = {"source": str(path), "format": src.format, "sha256": sha256_file(path), "available": available}
    info.update({"limit": src.limit, "seed": src.seed, "weight": src.weight, "fraction": src.fraction,
                 "loaded": len(samples), "content_sha256": samples_hash(samples)})
    return samples, info


def samples_hash(samples) -> str:
    """A hash of the conversations themselves (order included), so two runs can tell they saw the same data."""
    h = hashlib.sha256()
    for s in samples:
        for m in s.messages:
            h.update(m["role"].encode())
            h.update(b"\x1f")
            h.update(m["content"].encode("utf-8"))
            h.update(b"\x1e")
        h.update(b"\x1d")
    return h.hexdigest()
