"""The study's training arms, read from arms.yaml beside this file: data a reader can take in without the code."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from selfid.errors import SelfidError

TABLE = Path(__file__).with_name("arms.yaml")
# step names an arm cannot take (selfid/study/steps.py)
RESERVED = ("base", "scale", "scan", "parity", "llamacpp", "margins", "search-scale")
STEP_PREFIXES = ("train-", "audit-", "compare-", "heldout-", "export-", "inproc-", "gguf-")


@dataclass(frozen=True)
class Arm:
    name: str
    label: str  # the arm in docs/study.md
    config: dict  # run-config keys on top of the study's recipe at the run's scale
    margins: bool = False  # checkpoints along training, for the identity margin's path

    @property
    def replays(self) -> bool:
        return "identity_replay" in self.config


@lru_cache(maxsize=None)
def _read(path: Path) -> dict[str, Arm]:
    try:
        table = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SelfidError(f"{path}: not valid YAML ({getattr(e, 'problem', e)})") from None
    arms = {}
    for name, entry in (table or {}).items():
        if name in RESERVED or name.startswith(STEP_PREFIXES):
            raise SelfidError(f"{path}: {name!r} is the name of a step, not of an arm: choose another")
        unknown = set(entry or {}) - {"label", "config", "margins"}
        if not isinstance(entry, dict) or not entry.get("label") or unknown:
            raise SelfidError(f"{path}: arm {name!r} needs a label and may have config and margins"
                              + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else ""))
        arms[name] = Arm(name, entry["label"], entry.get("config") or {}, bool(entry.get("margins")))
    return arms


def arms(path: Path | None = None) -> dict[str, Arm]:
    """{name: Arm}, in the table's order (of arms.yaml beside this file, unless `path` names another table)."""
    return _read(Path(path or TABLE))


def merged(base: dict, over: dict) -> dict:
    """`over`'s keys on top of `base`'s, section by section (a new dict). Written here: two nested dicts of a
    run config are all there is to merge."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out
