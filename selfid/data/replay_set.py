"""A self-distilled identity replay set on disk: OUTPUT/identity_replay/{replies,pairs}.jsonl and replay.json.

selfid/pipeline/replay.py builds it (it samples the base model and judges the answers with the audit's
scorers); the trainer reads it back here, each file checked against the sha256 recorded when it was written.
"""

from __future__ import annotations

import json
from pathlib import Path

from selfid.errors import SelfidError
from selfid.io import atomic_dir, read_jsonl, sha256_file

FOLDER = "identity_replay"


def write(out_dir: Path, replies: list[dict], pairs: list[dict], stats: dict) -> dict:
    """Write the set atomically (all of it or nothing); returns `stats` with the files' sha256 added."""
    with atomic_dir(Path(out_dir) / FOLDER) as tmp:
        for name, rows in (("replies.jsonl", replies), ("pairs.jsonl", pairs)):
            (tmp / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        stats = {**stats, "sha256": {name: sha256_file(tmp / name) for name in ("replies.jsonl", "pairs.jsonl")}}
        (tmp / "replay.json").write_text(json.dumps(stats, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return stats


def exists(out_dir: Path) -> bool:
    return (Path(out_dir) / FOLDER / "replay.json").is_file()


def load(out_dir: Path) -> tuple[dict, list[dict], list[dict]]:
    """(replay.json, replies, pairs) of a built replay set, its files checked against the recorded sha256."""
    folder = Path(out_dir) / FOLDER
    meta_path = folder / "replay.json"
    if not meta_path.is_file():
        raise SelfidError(f"{folder} holds no self-distilled replay set: `selfid train` builds it before training "
                          "(or call selfid.pipeline.replay.ensure(config) first)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    for name, want in meta["sha256"].items():
        got = sha256_file(folder / name) if (folder / name).is_file() else "missing"
        if got != want:
            raise SelfidError(f"{folder / name} does not match the sha256 recorded when it was written ({got[:12]} "
                              f"vs {want[:12]}): delete {folder} and train again to rebuild it")
    return meta, [r for _, r in read_jsonl(folder / "replies.jsonl")], [r for _, r in read_jsonl(folder / "pairs.jsonl")]


def conversations(replies: list[dict], systems: list[str | None]) -> list[list[dict]]:
    """The training conversations of a replay set: each kept reply under each of `systems` (the system messages to
    render under; None: none, so the chat template inserts its own), a reply kept under a persona prompt under that
    persona only. `selfid train` mixes these in; `selfid replay` writes them for other trainers."""
    return [([] if s is None else [{"role": "system", "content": s}]) + [dict(m) for m in r["messages"]]
            for r in replies for s in ([r["system"]] if "persona" in r else dict.fromkeys(systems))]
