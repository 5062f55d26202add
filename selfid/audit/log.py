"""An audit run folder as files: the generations log, run.json and margin.json; their one reader and one writer.

The grid runner (run.py) writes them and the reports (report/summary.py) read them, and neither imports the
other: both import this module, as inspect_ai keeps its log apart from its runner and its viewer.

    run.json           the run's parameters, model, system prompts, probe sets (`read_meta`)
    generations.jsonl  one JSON line per generation, appended as each finishes (`Log`, `read_log`); a finished
                       run may keep it gzipped beside (generations.jsonl.gz)
    margin.json        the identity margin per system prompt (`read_margin`)

Runs made before the one system-prompt vocabulary named the template's own system prompt "default"; every
reader here gives today's name, "template" (`RENAMED`), so old runs read, resume and compare like new ones.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

from selfid.errors import SelfidError
from selfid.io import jsonl_lines

LOG = "generations.jsonl"
META = "run.json"
MARGIN = "margin.json"
# system prompts' names in runs made before the one vocabulary -> today's (selfid/system_prompt.py)
RENAMED = {"default": "template"}


def system_name(key: str) -> str:
    """Today's name of a system prompt named `key` in a run's results."""
    return RENAMED.get(key, key)


# --- generations.jsonl ----------------------------------------------------------------------------------

def migrate_record(rec: dict) -> dict:
    """A logged generation with today's system prompt name (its `system` and the part of its `key` naming it)."""
    name = rec.get("system")
    if name not in RENAMED:
        return rec
    parts = str(rec.get("key", "")).split("|")
    if len(parts) > 2 and parts[2] == name:
        parts[2] = RENAMED[name]
    return {**rec, "system": RENAMED[name], "key": "|".join(parts)}


def read_log(path: Path, repair: bool = False) -> list[dict]:
    """Records of a generations log. A last line cut short by a kill is dropped (and cut off when `repair`).

    Where `path` is absent, its gzipped copy (`path` + ".gz", as finished runs are kept) is read instead;
    not when `repair`, which is for a log about to be appended to: that is always the plain file."""
    path = Path(path)
    if path.is_file():
        data = path.read_bytes()
        good = data.rfind(b"\n") + 1
        if good < len(data) and repair:
            with open(path, "r+b") as f:
                f.truncate(good)
        text = data[:good].decode("utf-8")
    else:
        gz = path.with_name(path.name + ".gz")
        if repair or not gz.is_file():
            return []
        try:
            with gzip.open(gz, "rt", encoding="utf-8") as f:
                text = f.read()
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise SelfidError(f"cannot read {gz} ({e}): the log is damaged or unreadable") from None
        text, path = text[:text.rfind("\n") + 1], gz
    out = []
    for lineno, line in jsonl_lines(text):
        try:
            rec = json.loads(line)
        except ValueError:
            raise SelfidError(f"{path}:{lineno} is not valid JSON: the log was edited or damaged; "
                              "move it away and start a new run") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("key"), str):
            raise SelfidError(f"{path}:{lineno} is not a logged generation (no key): the log was edited or damaged; "
                              "move it away and start a new run")
        out.append(migrate_record(rec))
    return out


class Log:
    """Append-only JSONL: one complete line per write, flushed at once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.f = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> str:
        """Append one record; returns its line (without the newline), as `read_log` will parse it."""
        line = json.dumps(record, ensure_ascii=False)
        self.f.write(line + "\n")
        self.f.flush()
        return line

    def close(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


# --- run.json and margin.json ---------------------------------------------------------------------------

def migrate_meta(meta: dict) -> dict:
    """A run.json's contents with today's system prompt names (a new dict; the file is not changed)."""
    meta = json.loads(json.dumps(meta))  # a deep copy
    params = meta.get("params") or {}
    for s in (*params.get("systems", ()), *meta.get("systems", ())):
        s["key"] = system_name(s["key"])
    if params.get("task_systems"):
        params["task_systems"] = [system_name(k) for k in params["task_systems"]]
    head = "the ner and general suites run greedy, once under each of: "
    meta["notes"] = [head + ", ".join(system_name(k) for k in n[len(head):].split(", ")) if n.startswith(head) else n
                     for n in meta.get("notes", [])]
    endpoint = meta.get("endpoint")
    if endpoint:
        handling = endpoint.get("system_prompts") or {}
        if "conditions" in handling:
            handling["conditions"] = {system_name(k): {**c, "same_as": c.get("same_as") and system_name(c["same_as"])}
                                      for k, c in handling["conditions"].items()}
        endpoint["duplicates"] = {system_name(k): system_name(v) for k, v in (endpoint.get("duplicates") or {}).items()}
        endpoint["ignored"] = [_renamed_in(x) for x in endpoint.get("ignored", [])]
    return meta


def _renamed_in(text: str) -> str:
    for old, new in RENAMED.items():
        text = text.replace(f"the {old!r} system prompt", f"the {new!r} system prompt")
    return text


def read_meta(run_dir: Path) -> dict:
    """run.json of an audit run folder, in today's vocabulary."""
    path = Path(run_dir) / META
    if not path.is_file():
        raise SelfidError(f"{run_dir} is not an audit run folder (no run.json): point at a folder `selfid audit --out` made")
    try:  # an unreadable file is the CLI's one line for any path (selfid.cli.path_error)
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise SelfidError(f"{path} is damaged (not a JSON object): restore it from a copy, or audit again into a new "
                          "--out")
    return migrate_meta(meta)


def read_margin(run_dir: Path) -> dict | None:
    """margin.json of a run folder (the identity margin per system prompt), or None where the run has none."""
    path = Path(run_dir) / MARGIN
    if not path.is_file():
        return None
    return {system_name(k): v for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
