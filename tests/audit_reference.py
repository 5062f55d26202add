"""The reference path of an audit's post-generation work: the summary as main computed it before issue 24.

Plain Python passes per metric and cell, Python's own random for the NER bootstrap, no memo of verdicts: the code of
selfid/audit/report/summary.py at main 0b695a9, kept here verbatim (bar these names) so that tests/test_audit_golden.py
can hold today's fast path to it value for value, and bench/audit_post.py can time one against the other.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from selfid import vendors
from selfid.audit import detect, scorers, stats
from selfid.audit.log import LOG, read_log, read_margin, read_meta
from selfid.audit.probes import IDENTITY_SUITES
from selfid.audit.report import summary
from selfid.audit.report.summary import _pick_examples, by_prompt, distinct_per_prompt, group_by_prompt, label, vendor_rate
from selfid.audit.scorers import METRICS, Scored
from selfid.audit.stats import bootstrap_f1_plain, clustered_mean, clustered_rate, rate
from selfid.tasks.ner import prf


def load_run(run_dir: Path) -> tuple[dict, list[Scored], dict | None]:
    """summary.load_run with no memo of verdicts (each reply, sentence and question goes through the rules)."""
    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    ctx = scorers.context_for(meta, run_dir)
    ctx.memo = None
    with uncached():
        return meta, [scorers.score(r, ctx) for r in read_log(run_dir / LOG)], read_margin(run_dir)


@contextlib.contextmanager
def uncached():
    """selfid.audit.detect without its caches of sentences' and questions' verdicts, nor vendors' of mentions and
    stats' of Wilson intervals (main had none)."""
    saved = (detect._sentence_claims_once, detect._about_once, detect._leading_once, detect._asks_maker_once,
             vendors._mentions_once, stats._wilson)
    detect._sentence_claims_once = lambda s, about: tuple(map(frozenset, detect._sentence_claims(s, about)))
    detect._about_once, detect._leading_once = detect.about_this_assistant, detect.leading_vendor
    detect._asks_maker_once = detect.asks_maker_or_model
    vendors._mentions_once = getattr(vendors._mentions_once, "__wrapped__", vendors._mentions_once)
    stats._wilson = getattr(stats._wilson, "__wrapped__", stats._wilson)
    try:
        yield
    finally:
        (detect._sentence_claims_once, detect._about_once, detect._leading_once, detect._asks_maker_once,
         vendors._mentions_once, stats._wilson) = saved


def cold() -> None:
    """Empty detect's caches, as a fresh process starts (each audit scores its replies once)."""
    for cached in (detect._sentence_claims_once, detect._about_once, detect._leading_once, detect._asks_maker_once,
                   vendors._mentions_once, stats._wilson):
        cached.cache_clear()


def identity_cell(records: list[Scored], examples: bool = True) -> dict:
    """Every metric of one cell (or of a pooled group of cells), clustered by prompt."""
    scored = [r for r in records if r.verdict.scored]
    out: dict = {"prompts": len({r.probe for r in records}),
                 "samples_per_prompt": max((r.sample for r in records), default=-1) + 1}
    for name in METRICS:
        out[name] = clustered_rate(list(by_prompt(scored, name).values()))
    out["own"] = clustered_rate(list(by_prompt(scored, "own").values()))
    out["persona"] = clustered_rate([(sum(bool(r.verdict.persona_name) for r in rs), len(rs))
                                     for rs in group_by_prompt(scored).values()])
    distinct = distinct_per_prompt(records)
    out["distinct"] = {**clustered_mean([d / n for d, n in distinct.values()]),
                       "replies_per_prompt": (sum(d for d, _ in distinct.values()) / len(distinct)) if distinct else None,
                       "samples_per_prompt": (sum(n for _, n in distinct.values()) / len(distinct)) if distinct else None}
    vendors: dict[str, int] = {}
    for r in scored:
        for v in r.verdict.foreign:
            vendors[v] = vendors.get(v, 0) + 1
    out["by_vendor"] = {v: vendor_rate(scored, v) for v, _ in sorted(vendors.items(), key=lambda kv: -kv[1])}
    out["by_lang"] = {lang: clustered_rate(list(by_prompt([r for r in scored if r.lang == lang], "foreign").values()))
                      for lang in ("zh", "en")}
    tags = list(dict.fromkeys(t for r in scored for t in (r.tags or ["untagged"])))
    out["by_tag"] = {t: clustered_rate(list(by_prompt([r for r in scored if t in (r.tags or ["untagged"])],
                                                      "foreign").values())) for t in tags}
    out["unscored"] = len(records) - len(scored)
    out["judged"] = sum(r.verdict.detector == "judge" for r in records)
    if examples:
        out["examples"] = _pick_examples(scored)
    return out


def _ner(records: list[Scored], seed: int) -> dict:
    n = len(records)
    vs = [r.verdict for r in records]
    score = prf(sum(v.tp for v in vs), sum(v.fp for v in vs), sum(v.fn for v in vs))
    lo, hi = bootstrap_f1_plain([(v.tp, v.fp, v.fn) for v in vs], seed=seed)
    return {"n": n, "parse": rate(sum(v.parsed for v in vs), n), "precision": score["precision"],
            "recall": score["recall"], "f1": score["f1"], "f1_ci95": [lo, hi], "tp": score["tp"], "fp": score["fp"],
            "fn": score["fn"], "foreign": rate(sum(bool(v.foreign) for v in vs), n)}


def _general(records: list[Scored]) -> dict:
    n = len(records)
    return {"pass": rate(sum(r.verdict.passed for r in records), n),
            "failed": sorted({r.probe for r in records if not r.verdict.passed}),
            "foreign": rate(sum(bool(r.verdict.foreign) for r in records), n)}


def summarize(run_dir: Path) -> dict:
    """summary.json of a run as main computed it before issue 24."""
    with uncached():
        return _summarize(run_dir)


def _summarize(run_dir: Path) -> dict:
    meta, records, margin = load_run(run_dir)
    params = meta["params"]
    systems = [s["key"] for s in meta["systems"]]
    temps = params["temperatures"]
    by_suite: dict[str, list[dict]] = {}
    for r in records:
        by_suite.setdefault(r.suite, []).append(r)
    out = {
        "run": {
            "label": label(meta), "created": meta.get("created"), "target": meta["target"], "own": meta["own"],
            "own_source": meta.get("own_source"), "systems": meta["systems"], "params": params,
            "training_system_prompt": meta.get("training_system_prompt"), "suites": meta.get("suites"),
            "judge": meta.get("judge"), "notes": meta.get("notes", []), "endpoint": meta.get("endpoint"),
            "template_hash": meta["target"].get("template_hash"),
            "generations": len(records), "planned": meta.get("planned"),
            "complete": meta.get("planned") is None or len(records) >= meta["planned"],
            "scorer": {"version": scorers.VERSION, "recitation": summary._recitation_source(meta, run_dir)},
        },
    }
    for suite in IDENTITY_SUITES:
        if suite not in params["suites"]:
            continue
        ident = by_suite.get(suite, [])
        cells = []
        for s in systems:
            for t in temps:
                group = [r for r in ident if r.system == s and r.temperature == t]
                if group:
                    cells.append({"system": s, "temperature": t, **identity_cell(group)})
        pooled = {}
        for s in systems:
            group = [r for r in ident if r.system == s]
            if group:  # per-prompt foreign counts: what a paired test between runs or system prompts needs
                pooled[s] = {**identity_cell(group, examples=False),
                             "per_prompt": {p: list(kn) for p, kn in by_prompt(group, "foreign").items()}}
        out[suite] = {"cells": cells, "by_system": pooled, "overall": identity_cell(ident, examples=False),
                      "margin": margin}
    if "ner" in params["suites"]:
        out["ner"] = {s: _ner(g, params["seed"]) for s in systems
                      if (g := [r for r in by_suite.get("ner", []) if r.system == s])}
    if "general" in params["suites"]:
        out["general"] = {s: _general(g) for s in systems
                          if (g := [r for r in by_suite.get("general", []) if r.system == s])}
    return out
