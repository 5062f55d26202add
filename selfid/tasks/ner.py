"""Chinese NER as a chat task: the prompt, the JSON answer format, a tolerant parser, entity-level scores.

Shared by training (targets), `selfid eval-ner` and the audit's `ner` suite. An entity is a
(type, text) pair; a sentence's gold set is its unique pairs, so scores are entity-level micro
precision/recall/F1 over pairs, plus the rate of replies that parse at all.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from selfid.model.chat import conversation

TYPES = ("PER", "LOC", "ORG")
INSTRUCTION = (
    "请从下面的句子中抽取所有的人名(PER)、地名(LOC)和机构名(ORG)。"
    '只输出一个JSON对象，格式为 {"PER": [...], "LOC": [...], "ORG": [...]}，没有的类别给空列表。\n'
    "句子：{sentence}"
)


@dataclass(frozen=True)
class Sentence:
    chars: str
    tags: tuple[str, ...]

    def entities(self) -> dict[str, list[str]]:
        return entities_from_bio(self.chars, self.tags)


def entities_from_bio(chars: str, tags) -> dict[str, list[str]]:
    """Spans from BIO tags, each type's entities unique and in order of first appearance.

    An I- tag that does not continue an entity of its type starts one (the common lenient reading).
    """
    out: dict[str, list[str]] = {t: [] for t in TYPES}
    spans: list[tuple[str, int, int]] = []
    for i, tag in enumerate(tags):
        kind, _, etype = tag.partition("-")
        if kind == "B" or (kind == "I" and not (spans and spans[-1][0] == etype and spans[-1][2] == i)):
            spans.append((etype, i, i + 1))
        elif kind == "I":
            spans[-1] = (etype, spans[-1][1], i + 1)
    for etype, a, b in spans:
        if etype in out and chars[a:b] not in out[etype]:
            out[etype].append(chars[a:b])
    return out


def prompt(sentence: str) -> str:
    return INSTRUCTION.replace("{sentence}", sentence)  # the instruction holds literal JSON braces


def messages(sentence: str, system: str | None = None) -> list[dict]:
    return conversation(prompt(sentence), system)


def answer(entities: dict[str, list[str]]) -> str:
    """The target reply: compact JSON with the three keys in a fixed order."""
    return json.dumps({t: list(entities.get(t, [])) for t in TYPES}, ensure_ascii=False)


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def first_json_object(text: str) -> dict | None:
    """The JSON object a reply holds: inside its first ``` fence when it has one, read from the first '{'
    (text after the object is ignored); None when there is no '{' or what follows it is not valid JSON."""
    m = _FENCE.search(text)
    if m:
        text = m.group(1)
    start = text.find("{")
    if start < 0:
        return None
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError:
        return None
    return obj


def parse(reply: str) -> dict[str, list[str]] | None:
    """The entities in a reply, or None when it holds no readable JSON object of the right shape."""
    obj = first_json_object(reply)
    if not isinstance(obj, dict) or not set(obj) & set(TYPES):
        return None
    out = {}
    for t in TYPES:
        vals = obj.get(t, [])
        if isinstance(vals, str):
            vals = [vals]
        if not isinstance(vals, list):
            return None
        out[t] = [v.strip() for v in vals if isinstance(v, str) and v.strip()]
    return out


def prf(tp: int, fp: int, fn: int) -> dict:
    """Precision, recall and F1 of entity counts (each 0.0 when undefined), with the counts.

    F1 is 2tp / (2tp + fp + fn): the harmonic mean of precision and recall, computed in one division.
    """
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {"precision": p, "recall": r, "f1": f, "tp": tp, "fp": fp, "fn": fn}


@dataclass
class NerScore:
    n: int = 0
    parsed: int = 0
    tp: dict = field(default_factory=lambda: {t: 0 for t in TYPES})
    fp: dict = field(default_factory=lambda: {t: 0 for t in TYPES})
    fn: dict = field(default_factory=lambda: {t: 0 for t in TYPES})

    def add(self, gold: dict[str, list[str]], reply: str) -> dict | None:
        """Score one reply against its gold entities; an unparseable reply counts as predicting nothing."""
        pred = parse(reply)
        self.n += 1
        self.parsed += pred is not None
        for t in TYPES:
            g, p = set(gold.get(t, [])), set((pred or {}).get(t, []))
            self.tp[t] += len(g & p)
            self.fp[t] += len(p - g)
            self.fn[t] += len(g - p)
        return pred

    def summary(self) -> dict:
        per_type = {t: prf(self.tp[t], self.fp[t], self.fn[t]) for t in TYPES}
        overall = prf(sum(self.tp.values()), sum(self.fp.values()), sum(self.fn.values()))
        return {"n": self.n, "parse_rate": self.parsed / self.n if self.n else 0.0, "overall": overall,
                "per_type": per_type}
