"""summary.json: every number a report shows, derived from a run directory alone (re-scored on every read)."""

from __future__ import annotations

import json
from pathlib import Path

from selfid.audit import scorers
from selfid.audit.probes import IDENTITY_SUITES
from selfid.audit.stats import bootstrap_f1, clustered_mean, clustered_rate, rate
from selfid.errors import SelfidError
from selfid.tasks.ner import prf

EXAMPLES_PER_KIND = 2
# per-reply verdicts that become a rate in every cell: (summary key, record key, what counts)
METRICS = (("foreign", "foreign", bool), ("own_affirmation", "own_affirmed", bool),
           ("self_denial", "self_denial", bool), ("yes_to_other", "yes_to_other", bool), ("task_done", "task_done", bool),
           ("persona_kept", "persona_kept", bool), ("identity_after_task", "identity_after_task", bool), ("copy", "copy", bool))
# the examples a report shows per cell, by what went wrong (or right)
FLAGS = (("foreign claim", lambda r: bool(r["foreign"])), ("self-denial", lambda r: r.get("self_denial") is True),
         ("yes to another vendor", lambda r: r.get("yes_to_other") is True),
         ("task not done", lambda r: r.get("task_done") is False), ("persona dropped", lambda r: r.get("persona_kept") is False),
         ("task output instead of an answer", lambda r: r.get("identity_after_task") is False),
         ("training reply copied", lambda r: r.get("copy") is True), ("own identity", lambda r: r.get("own_affirmed") is True))


def load_run(run_dir: Path) -> tuple[dict, list[dict], dict | None]:
    """(run.json, generation records with their verdicts from the current scorers, margin or None)."""
    from selfid.audit.run import LOG, read_log

    run_dir = Path(run_dir)
    meta_path = run_dir / "run.json"
    if not meta_path.is_file():
        raise SelfidError(f"{run_dir} is not an audit run folder (no run.json): point at a folder `selfid audit --out` made")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    margin_path = run_dir / "margin.json"
    margin = json.loads(margin_path.read_text(encoding="utf-8")) if margin_path.is_file() else None
    ctx = scorers.context_for(meta, run_dir)
    return meta, [scorers.score(r, ctx) for r in read_log(run_dir / LOG)], margin


def label(meta: dict) -> str:
    t = meta.get("target", {})
    if t.get("backend") == "http":
        return f"{t.get('model')} @ {t.get('base_url')}"
    name = str(t.get("model"))
    if t.get("adapter"):
        name += f" + {Path(t['adapter']).name}"
    return name


def _example(r: dict, why: str) -> dict:
    return {"why": why, "probe": r["probe"], "lang": r["lang"], "prompt": r["messages"][-1]["content"],
            "turns": len([m for m in r["messages"] if m["role"] == "user"]), "sample": r["sample"],
            "reply": r["reply"], "claims": r["claims"], "foreign": r["foreign"], "persona": r.get("persona_name")}


def _pick_examples(records: list[dict]) -> list[dict]:
    """Up to EXAMPLES_PER_KIND replies (of different prompts) for each flag a cell shows."""
    out = []
    for why, flagged in FLAGS:
        seen: set[str] = set()
        for r in records:
            if len(seen) >= EXAMPLES_PER_KIND:
                break
            if flagged(r) and r["probe"] not in seen:
                out.append(_example(r, why))
                seen.add(r["probe"])
    return out


def by_prompt(records: list[dict], key: str) -> dict[str, tuple[int, int]]:
    """{probe: (replies where the verdict `key` holds, replies that have the verdict)}."""
    out: dict[str, list[int]] = {}
    for r in records:
        v = r.get(key)
        if v is None:
            continue
        kn = out.setdefault(r["probe"], [0, 0])
        kn[0] += bool(v)
        kn[1] += 1
    return {p: (k, n) for p, (k, n) in out.items()}


def copies_of(records: list[dict], recitation: "scorers.Recitation") -> dict:
    """How many identity replies of `records` repeat one of `recitation`'s replies (near-)verbatim, clustered by prompt:
    with one adapter's training replies and the base model's records, the base model's own rate of "copies" (its
    voice matching them), the yardstick for the adapter's."""
    ident = [r for r in records if r["suite"] in IDENTITY_SUITES]
    hits: dict[str, list[int]] = {}
    for r in ident:
        kn = hits.setdefault(r["probe"], [0, 0])
        kn[0] += recitation.copied(r["reply"])
        kn[1] += 1
    return clustered_rate([tuple(kn) for kn in hits.values()])


def distinct_per_prompt(records: list[dict]) -> dict[str, tuple[int, int]]:
    """{probe: (distinct replies, samples)} over the sampled (T > 0) replies of each prompt."""
    texts: dict[str, list[str]] = {}
    for r in records:
        if r["temperature"] > 0:
            texts.setdefault(r["probe"], []).append(scorers.normalise(r["reply"]))
    return {p: (len(set(ts)), len(ts)) for p, ts in texts.items() if len(ts) > 1}


def identity_cell(records: list[dict], examples: bool = True) -> dict:
    """Every metric of one cell (or of a pooled group of cells), clustered by prompt."""
    scored = [r for r in records if r.get("detector") != "unscored"]
    out: dict = {"prompts": len({r["probe"] for r in records}),
                 "samples_per_prompt": max((r["sample"] for r in records), default=-1) + 1}
    for name, key, _ in METRICS:
        out[name] = clustered_rate(list(by_prompt(scored, key).values()))
    out["own"] = clustered_rate(list(by_prompt(scored, "own").values()))
    out["persona"] = clustered_rate([(sum(bool(r.get("persona_name")) for r in rs), len(rs))
                                     for rs in _group(scored).values()])
    distinct = distinct_per_prompt(records)
    out["distinct"] = {**clustered_mean([d / n for d, n in distinct.values()]),
                       "replies_per_prompt": (sum(d for d, _ in distinct.values()) / len(distinct)) if distinct else None,
                       "samples_per_prompt": (sum(n for _, n in distinct.values()) / len(distinct)) if distinct else None}
    vendors: dict[str, int] = {}
    for r in scored:
        for v in r["foreign"]:
            vendors[v] = vendors.get(v, 0) + 1
    groups = _group(scored)
    out["by_vendor"] = {v: clustered_rate([(sum(v in r["foreign"] for r in rs), len(rs)) for rs in groups.values()])
                        for v, _ in sorted(vendors.items(), key=lambda kv: -kv[1])}
    out["by_lang"] = {lang: clustered_rate(list(by_prompt([r for r in scored if r["lang"] == lang], "foreign").values()))
                      for lang in ("zh", "en")}
    tags = list(dict.fromkeys(t for r in scored for t in (r["tags"] or ["untagged"])))
    out["by_tag"] = {t: clustered_rate(list(by_prompt([r for r in scored if t in (r["tags"] or ["untagged"])],
                                                      "foreign").values())) for t in tags}
    out["unscored"] = len(records) - len(scored)
    out["judged"] = sum(r.get("detector") == "judge" for r in records)
    if examples:
        out["examples"] = _pick_examples(scored)
    return out


def _group(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records:
        out.setdefault(r["probe"], []).append(r)
    return out


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
            "scorer": {"version": scorers.VERSION, "recitation": _recitation_source(meta, run_dir)},
        },
    }
    for suite in IDENTITY_SUITES:
        if suite not in params["suites"]:
            continue
        ident = by_suite.get(suite, [])
        cells = []
        for s in systems:
            for t in temps:
                group = [r for r in ident if r["system"] == s and r["temperature"] == t]
                if group:
                    cells.append({"system": s, "temperature": t, **identity_cell(group)})
        pooled = {}
        for s in systems:
            group = [r for r in ident if r["system"] == s]
            if group:  # per-prompt foreign counts: what a paired test between runs or system prompts needs
                pooled[s] = {**identity_cell(group, examples=False),
                             "per_prompt": {p: list(kn) for p, kn in by_prompt(
                                 [r for r in group if r.get("detector") != "unscored"], "foreign").items()}}
        out[suite] = {"cells": cells, "by_system": pooled, "margin": margin}
    if "ner" in params["suites"]:
        out["ner"] = {s: _ner(g, params["seed"]) for s in systems
                      if (g := [r for r in by_suite.get("ner", []) if r["system"] == s])}
    if "general" in params["suites"]:
        out["general"] = {s: _general(g) for s in systems
                          if (g := [r for r in by_suite.get("general", []) if r["system"] == s])}
    return out


def _recitation_source(meta: dict, run_dir: Path | None) -> str | None:
    rec = scorers.recitation_for(meta, run_dir)
    return rec.source if rec else None
