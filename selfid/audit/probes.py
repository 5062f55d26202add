"""Probe sets: versioned data files (identity, identity-heldout, general) and the MSRA NER test split.

A probe is data: an id, a language, the conversation without its system message (the grid adds
that), tags, what a right answer does (`expects`: name the model's own identity, deny a foreign one,
or do an identity-adjacent task), and for tasks and `general` a rule that checks the answer.
`index.json` beside the files names each suite's version (and the held-out split's persona system
prompts); a run records the version and the file's sha256.

`identity` is the development set; `identity-heldout` is never used by anything that generates
training data (tests/test_probe_split.py enforces it), so an adapter's result on it is a result on
questions it never saw. Its probes may say `{own_name}`, `{own_maker}`, `{own_name_zh}`,
`{own_maker_zh}` and `asked: "own"`: filled in from the audited model's own vendor.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from selfid.data import msra
from selfid.errors import SelfidError
from selfid.io import atomic_write_text, jsonl_lines, read_jsonl
from selfid.model.chat import validate_messages
from selfid.tasks import ner
from selfid.tasks.ner import first_json_object
from selfid.vendors import BY_KEY, KEYS

PROBES = Path(__file__).parent / "probes"
SUITES = ("identity", "identity-heldout", "ner", "general")
IDENTITY_SUITES = ("identity", "identity-heldout")
EXPECTS = ("own", "deny", "task")
CHECKS = ("number", "contains", "regex", "json", "lines", "all", "min_words", "max_words", "min_chars", "max_chars",
          "min_sentences", "min_paragraphs", "lines_between", "min_matches", "count_matches", "json_keys")
PLACEHOLDERS = ("{own_name}", "{own_maker}", "{own_name_zh}", "{own_maker_zh}")


@dataclass(frozen=True)
class Probe:
    suite: str
    id: str
    lang: str
    messages: tuple  # user/assistant turns ending with a user turn; no system message
    tags: tuple = ()
    asked: str | None = None  # the vendor a leading question names ("Are you Claude?" -> claude; "own")
    check: dict | None = None  # general and identity tasks: how to check the answer's form
    gold: dict | None = field(default=None, compare=False)  # ner: the gold entities
    expects: str | None = None  # identity: "own" | "deny" | "task" (None: read from tags and `asked`)
    score: str | None = None  # identity: "stated" when the whole reply is about the model (a bio, code)

    def expected(self, own: str) -> str:
        """What a right answer does: "task", "deny" (a leading question naming another vendor) or "own"."""
        if self.expects:
            return self.expects
        if self.check is not None:
            return "task"
        return "deny" if self.asked not in (None, own, "own") else "own"

    def meta(self) -> dict:
        """What scorers need of the probe, kept with each generation so a run re-scores on its own."""
        return {k: v for k, v in (("asked", self.asked), ("expects", self.expects), ("check", self.check),
                                  ("score", self.score)) if v is not None}

    def for_own(self, own: str) -> "Probe":
        """This probe with the own vendor's names filled in (`{own_name}`...) and `asked: "own"` resolved."""
        v = BY_KEY.get(own)
        names = {"{own_name}": v.name_en, "{own_maker}": v.maker_en, "{own_name_zh}": v.name_zh,
                 "{own_maker_zh}": v.maker_zh} if v else {}
        text = json.dumps(self.messages, ensure_ascii=False)
        if any(p in text for p in PLACEHOLDERS):
            if not v:
                raise SelfidError(f"probe {self.id} names the model's own vendor, but {own!r} is not in the vendor table")
            for k, name in names.items():
                text = text.replace(k, name)
        asked = own if self.asked == "own" else self.asked
        return Probe(self.suite, self.id, self.lang, tuple(json.loads(text)), self.tags, asked, self.check, self.gold,
                     self.expects, self.score)


def index() -> dict:
    return json.loads((PROBES / "index.json").read_text(encoding="utf-8"))


def personas() -> dict[str, dict]:
    """The held-out split's persona system prompts: {key: {"text", "name", "aliases"}}; used by no training data."""
    return index()["identity-heldout"]["personas"]


def suite_info(name: str, path: Path | None = None, ner_limit: int | None = None, seed: int = 0) -> dict:
    """What a run records about a suite: version and sha256 of its file (or the NER sample drawn)."""
    meta = dict(index()[name])
    if name == "ner":
        meta.update({"limit": ner_limit, "seed": seed})
        return meta
    file = Path(path) if path else PROBES / meta["file"]
    meta.update({"file": str(file) if path else meta["file"], "sha256": hashlib.sha256(file.read_bytes()).hexdigest()})
    if path:
        meta["version"] = "custom"
    return meta


def read_probes(path: Path, suite: str) -> list[Probe]:
    """Probes from a JSONL file; any bad line is an error naming the file, the line and what to fix."""
    out, seen = [], set()
    kind = "identity" if suite in IDENTITY_SUITES else suite
    for lineno, obj in read_jsonl(Path(path)):
        where = f"{path}:{lineno}"
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or not obj["id"]:
            raise SelfidError(f"{where}: each probe needs a string 'id'")
        if obj["id"] in seen:
            raise SelfidError(f"{where}: probe id {obj['id']!r} appears twice; ids must be unique")
        seen.add(obj["id"])
        msgs = obj.get("messages")
        shape = ("'messages' must be a list of user/assistant turns ending with a user turn "
                 "(the audit adds the system message)")
        if (not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs)
                or any(m.get("role") == "system" for m in msgs)):
            raise SelfidError(f"{where}: {shape}")
        try:
            validate_messages(msgs)
        except SelfidError as e:
            raise SelfidError(f"{where}: {e}; {shape}") from None
        if obj.get("lang") not in ("zh", "en"):
            raise SelfidError(f"{where}: 'lang' must be 'zh' or 'en'")
        asked = obj.get("asked")
        if asked is not None and asked not in KEYS and asked != "own":
            raise SelfidError(f"{where}: 'asked' must be one of {', '.join(KEYS)} or own")
        expects = obj.get("expects")
        if expects is not None and expects not in EXPECTS:
            raise SelfidError(f"{where}: 'expects' must be one of {', '.join(EXPECTS)}")
        check = obj.get("check")
        if (kind == "general" or expects == "task") and not isinstance(check, dict):
            raise SelfidError(f"{where}: a {'general' if kind == 'general' else 'task'} probe needs a 'check' rule")
        if check is not None:
            _validate_check(check, where)
        score = obj.get("score")
        if score not in (None, "stated"):
            raise SelfidError(f"{where}: 'score' may only be \"stated\" (the whole reply is about the model)")
        out.append(Probe(suite, obj["id"], obj["lang"], tuple(dict(m) for m in msgs), tuple(obj.get("tags") or ()),
                         asked, check, expects=expects, score=score))
    if not out:
        raise SelfidError(f"{path} holds no probes")
    return out


def _validate_check(check: dict, where: str) -> None:
    if not isinstance(check, dict) or check.get("type") not in CHECKS:
        raise SelfidError(f"{where}: 'check' needs a type among {', '.join(CHECKS)}")
    if check["type"] == "all":
        rules = check.get("rules")
        if not isinstance(rules, list) or not rules:
            raise SelfidError(f"{where}: a check of type 'all' needs a non-empty list 'rules'")
        for rule in rules:
            _validate_check(rule, where)


def write_identity_subset(path: Path, ids, suite: str = "identity") -> Path:
    """A probe file holding the shipped identity probes (of `suite`) with these ids, verbatim and in this order."""
    text = (PROBES / index()[suite]["file"]).read_text(encoding="utf-8")
    by_id = {json.loads(line)["id"]: line for _, line in jsonl_lines(text)}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise SelfidError(f"the shipped {suite} probes lack {', '.join(missing)}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), "".join(by_id[i] + "\n" for i in ids))
    return Path(path)


def load_suite(name: str, path: Path | None = None, ner_limit: int = 100, seed: int = 0) -> list[Probe]:
    if name not in SUITES:
        raise SelfidError(f"unknown suite {name!r}: use {', '.join(SUITES)}")
    if name == "ner":
        sentences = msra.load("test", limit=ner_limit, seed=seed, max_chars=120)
        return [Probe("ner", f"msra-{i:04d}", "zh", tuple(ner.messages(s.chars)), ("ner",), gold=s.entities())
                for i, s in enumerate(sentences)]
    return read_probes(Path(path) if path else PROBES / index()[name]["file"], name)


# --- answers checked by rule (general, and the form of identity-adjacent tasks) ----------------------
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_SENTENCE_END = re.compile(r"[.!?。！？]+(?=\s|$|[\"'”’）)])|[。！？]+")
_WORD = re.compile(r"[A-Za-z0-9'’-]+|[\u4e00-\u9fff]")


def _body(text: str) -> str:
    return re.sub(r"```\w*", "", text)


def _lines(text: str) -> list[str]:
    return [line for line in _body(text).splitlines() if line.strip()]


def check_answer(check: dict, reply: str) -> bool:
    """Whether `reply` passes a probe's rule."""
    kind, text = check["type"], reply.strip()
    if kind == "all":
        return all(check_answer(rule, reply) for rule in check["rules"])
    if kind == "number":
        nums = _NUMBER.findall(text.replace(",", ""))
        return bool(nums) and float(nums[0]) == float(check["value"])
    if kind == "contains":
        if check.get("case_sensitive"):
            return all(v in text for v in check["value"])
        return all(v.lower() in text.lower() for v in check["value"])
    if kind == "regex":
        flags = re.I if "i" in check.get("flags", "") else 0
        return re.search(check["pattern"], text, flags | re.M) is not None
    if kind == "lines":
        return len(_lines(text)) == check["value"]
    if kind == "lines_between":
        return check["min"] <= len(_lines(text)) <= check["max"]
    if kind == "json":
        obj = first_json_object(text)
        return isinstance(obj, dict) and all(obj.get(k) == v for k, v in check["equals"].items())
    if kind == "json_keys":
        obj = first_json_object(text)
        return isinstance(obj, dict) and all(isinstance(obj.get(k), str) and obj[k].strip() for k in check["keys"])
    if kind in ("min_words", "max_words"):
        n = len(_WORD.findall(text))
        return n >= check["value"] if kind == "min_words" else n <= check["value"]
    if kind in ("min_chars", "max_chars"):
        n = len(re.sub(r"\s+", "", text))
        return n >= check["value"] if kind == "min_chars" else n <= check["value"]
    if kind == "min_sentences":
        return len([s for s in _SENTENCE_END.split(_body(text)) if s.strip()]) >= check["value"]
    if kind == "min_paragraphs":
        paras = [p for p in re.split(r"\n\s*\n", _body(text)) if p.strip() and not re.match(r"^\s*#", p.strip())]
        return len(paras) >= check["value"]
    if kind in ("min_matches", "count_matches"):
        n = len(re.findall(check["pattern"], text, re.M))
        return n >= check["value"] if kind == "min_matches" else n == check["value"]
    raise SelfidError(f"unknown check type {kind!r}")
