"""Probe sets: versioned data files (identity, general) and the MSRA NER test split, as plain samples.

A probe is data: an id, a language, the conversation without its system message (the grid adds
that), tags, and for `general` a rule that checks the answer. `index.json` beside the files names
each suite's version; a run records the version and the file's sha256.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from selfid.audit.vendors import KEYS
from selfid.errors import SelfidError
from selfid.model.chat import validate_messages
from selfid.tasks.ner import first_json_object

PROBES = Path(__file__).parent / "probes"
SUITES = ("identity", "ner", "general")
CHECKS = ("number", "contains", "regex", "json", "lines")


@dataclass(frozen=True)
class Probe:
    suite: str
    id: str
    lang: str
    messages: tuple  # user/assistant turns ending with a user turn; no system message
    tags: tuple = ()
    asked: str | None = None  # the vendor a leading question names ("Are you Claude?" -> claude)
    check: dict | None = None  # general: how to check the answer
    gold: dict | None = field(default=None, compare=False)  # ner: the gold entities


def index() -> dict:
    return json.loads((PROBES / "index.json").read_text(encoding="utf-8"))


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
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise SelfidError(f"{where}: not valid JSON ({e})") from None
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
        if asked is not None and asked not in KEYS:
            raise SelfidError(f"{where}: 'asked' must be one of {', '.join(KEYS)}")
        check = obj.get("check")
        if suite == "general" and (not isinstance(check, dict) or check.get("type") not in CHECKS):
            raise SelfidError(f"{where}: a general probe needs 'check' with a type among {', '.join(CHECKS)}")
        out.append(Probe(suite, obj["id"], obj["lang"], tuple(dict(m) for m in msgs), tuple(obj.get("tags") or ()),
                         asked, check))
    if not out:
        raise SelfidError(f"{path} holds no probes")
    return out


def write_identity_subset(path: Path, ids) -> Path:
    """A probe file holding the shipped identity probes with these ids, verbatim and in this order."""
    from selfid.io import atomic_write_text

    lines = [line for line in (PROBES / index()["identity"]["file"]).read_text(encoding="utf-8").splitlines()
             if line.strip()]
    by_id = {json.loads(line)["id"]: line for line in lines}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise SelfidError(f"the shipped identity probes lack {', '.join(missing)}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), "".join(by_id[i] + "\n" for i in ids))
    return Path(path)


def load_suite(name: str, path: Path | None = None, ner_limit: int = 100, seed: int = 0) -> list[Probe]:
    if name not in SUITES:
        raise SelfidError(f"unknown suite {name!r}: use {', '.join(SUITES)}")
    if name == "ner":
        from selfid.data import msra
        from selfid.tasks import ner

        sentences = msra.load("test", limit=ner_limit, seed=seed, max_chars=120)
        return [Probe("ner", f"msra-{i:04d}", "zh", tuple(ner.messages(s.chars)), ("ner",), gold=s.entities())
                for i, s in enumerate(sentences)]
    return read_probes(Path(path) if path else PROBES / index()[name]["file"], name)


# --- general: answers checked by rule ----------------------------------------------------------------
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def check_answer(check: dict, reply: str) -> bool:
    """Whether `reply` passes a general probe's rule."""
    kind, text = check["type"], reply.strip()
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
        body = re.sub(r"```\w*", "", text)
        return len([line for line in body.splitlines() if line.strip()]) == check["value"]
    if kind == "json":
        obj = first_json_object(text)
        return isinstance(obj, dict) and all(obj.get(k) == v for k, v in check["equals"].items())
    raise SelfidError(f"unknown check type {kind!r}")
