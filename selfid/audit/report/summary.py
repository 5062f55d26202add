"""summary.json: every number a report shows, derived from a run directory alone."""

from __future__ import annotations

import json
from pathlib import Path

from selfid.audit.stats import bootstrap_f1, rate
from selfid.errors import SelfidError
from selfid.tasks.ner import prf

EXAMPLES_PER_CELL = 4


def load_run(run_dir: Path) -> tuple[dict, list[dict], dict | None]:
    """(run.json, generation records, margin or None) of a run directory."""
    from selfid.audit.run import LOG, read_log

    run_dir = Path(run_dir)
    meta_path = run_dir / "run.json"
    if not meta_path.is_file():
        raise SelfidError(f"{run_dir} is not an audit run folder (no run.json): point at a folder `selfid audit --out` made")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    margin_path = run_dir / "margin.json"
    margin = json.loads(margin_path.read_text(encoding="utf-8")) if margin_path.is_file() else None
    return meta, read_log(run_dir / LOG), margin


def label(meta: dict) -> str:
    t = meta.get("target", {})
    if t.get("backend") == "http":
        return f"{t.get('model')} @ {t.get('base_url')}"
    name = str(t.get("model"))
    if t.get("adapter"):
        name += f" + {Path(t['adapter']).name}"
    return name


def _example(r: dict) -> dict:
    return {"probe": r["probe"], "lang": r["lang"], "prompt": r["messages"][-1]["content"],
            "turns": len([m for m in r["messages"] if m["role"] == "user"]), "sample": r["sample"],
            "reply": r["reply"], "claims": r["claims"], "foreign": r["foreign"], "persona": r.get("persona")}


def _pick_examples(records: list[dict]) -> list[dict]:
    """Foreign claims first (one per prompt), then own claims, then replies claiming nothing."""
    chosen, seen = [], set()
    for want in (lambda r: bool(r["foreign"]), lambda r: r["own"], lambda r: not r["claims"]):
        for r in records:
            if len(chosen) >= EXAMPLES_PER_CELL:
                return chosen
            if want(r) and r["probe"] not in seen:
                chosen.append(_example(r))
                seen.add(r["probe"])
    return chosen


def _identity_cell(records: list[dict]) -> dict:
    scored = [r for r in records if r["detector"] != "unscored"]
    n = len(scored)
    vendors: dict[str, int] = {}
    for r in scored:
        for v in r["foreign"]:
            vendors[v] = vendors.get(v, 0) + 1
    by_lang = {lang: rate(sum(bool(r["foreign"]) for r in scored if r["lang"] == lang),
                          sum(r["lang"] == lang for r in scored)) for lang in ("zh", "en")}
    by_tag: dict[str, list[int]] = {}
    for r in scored:
        for tag in r["tags"] or ["untagged"]:
            kn = by_tag.setdefault(tag, [0, 0])
            kn[0] += bool(r["foreign"])
            kn[1] += 1
    return {
        "prompts": len({r["probe"] for r in records}),
        "samples_per_prompt": max((r["sample"] for r in records), default=-1) + 1,
        "foreign": rate(sum(bool(r["foreign"]) for r in scored), n),
        "own": rate(sum(bool(r["own"]) for r in scored), n),
        "persona": rate(sum(bool(r.get("persona")) for r in scored), n),
        "unscored": len(records) - n,
        "judged": sum(r["detector"] == "judge" for r in records),
        "by_vendor": {v: rate(k, n) for v, k in sorted(vendors.items(), key=lambda kv: -kv[1])},
        "by_lang": by_lang,
        "by_tag": {t: rate(k, n_) for t, (k, n_) in by_tag.items()},  # in probe-file order
        "examples": _pick_examples(scored),
    }


def _ner(records: list[dict], seed: int) -> dict:
    n = len(records)
    score = prf(*(sum(r[k] for r in records) for k in ("tp", "fp", "fn")))
    lo, hi = bootstrap_f1([(r["tp"], r["fp"], r["fn"]) for r in records], seed=seed)
    return {"n": n, "parse": rate(sum(r["parsed"] for r in records), n), "precision": score["precision"],
            "recall": score["recall"], "f1": score["f1"], "f1_ci95": [lo, hi], "tp": score["tp"], "fp": score["fp"],
            "fn": score["fn"], "foreign": rate(sum(bool(r["foreign"]) for r in records), n)}


def _general(records: list[dict]) -> dict:
    n = len(records)
    return {"pass": rate(sum(r["pass"] for r in records), n),
            "failed": sorted({r["probe"] for r in records if not r["pass"]}),
            "foreign": rate(sum(bool(r["foreign"]) for r in records), n)}


def summarize(run_dir: Path, loaded: tuple[dict, list[dict], dict | None] | None = None) -> dict:
    """The summary of a run; `loaded`: what `load_run(run_dir)` already returned, so it is not read twice."""
    meta, records, margin = loaded if loaded is not None else load_run(run_dir)
    params = meta["params"]
    systems = [s["key"] for s in meta["systems"]]
    temps = params["temperatures"]
    by_suite: dict[str, list[dict]] = {}
    for r in records:
        by_suite.setdefault(r["suite"], []).append(r)
    out = {
        "run": {
            "label": label(meta), "created": meta.get("created"), "target": meta["target"], "own": meta["own"],
            "own_source": meta.get("own_source"), "systems": meta["systems"], "params": params,
            "training_system_prompt": meta.get("training_system_prompt"), "suites": meta.get("suites"),
            "judge": meta.get("judge"), "notes": meta.get("notes", []), "endpoint": meta.get("endpoint"),
            "template_hash": meta["target"].get("template_hash"),
            "generations": len(records), "planned": meta.get("planned"),
            "complete": meta.get("planned") is None or len(records) >= meta["planned"],
        },
    }
    ident = by_suite.get("identity", [])
    if "identity" in params["suites"]:
        cells = []
        for s in systems:
            for t in temps:
                group = [r for r in ident if r["system"] == s and r["temperature"] == t]
                if group:
                    cells.append({"system": s, "temperature": t, **_identity_cell(group)})
        pooled = {s: _identity_cell([r for r in ident if r["system"] == s]) for s in systems
                  if any(r["system"] == s for r in ident)}
        for cell in pooled.values():
            cell.pop("examples")
        out["identity"] = {"cells": cells, "by_system": pooled, "margin": margin}
    if "ner" in params["suites"]:
        out["ner"] = {s: _ner(g, params["seed"]) for s in systems
                      if (g := [r for r in by_suite.get("ner", []) if r["system"] == s])}
    if "general" in params["suites"]:
        out["general"] = {s: _general(g) for s in systems
                          if (g := [r for r in by_suite.get("general", []) if r["system"] == s])}
    return out
