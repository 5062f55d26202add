"""summary.json: every number a report shows, derived from a run directory alone (re-scored on every read)."""

from __future__ import annotations

from pathlib import Path

from selfid.audit import scorers
from selfid.audit.log import LOG, read_log, read_margin, read_meta
from selfid.audit.probes import IDENTITY_SUITES
from selfid.audit.report.tally import Tally
from selfid.audit.scorers import METRICS, Scored
from selfid.audit.stats import bootstrap_f1, clustered_mean, clustered_rate, rate
from selfid.tasks.ner import prf

EXAMPLES_PER_KIND = 2
# the examples a report shows per cell, by what went wrong (or right)
FLAGS = (("foreign claim", lambda v: bool(v.foreign)), ("self-denial", lambda v: v.self_denial is True),
         ("yes to another vendor", lambda v: v.yes_to_other is True),
         ("task not done", lambda v: v.task_done is False), ("persona dropped", lambda v: v.persona_kept is False),
         ("task output instead of an answer", lambda v: v.identity_after_task is False),
         ("training reply copied", lambda v: v.copy is True), ("own identity", lambda v: v.own_affirmation is True))


def load_run(run_dir: Path) -> tuple[dict, list[Scored], dict | None]:
    """(run.json, every logged generation with today's verdict on it, margin or None), in today's vocabulary."""
    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    ctx = scorers.context_for(meta, run_dir)
    return meta, [scorers.score(r, ctx) for r in read_log(run_dir / LOG)], read_margin(run_dir)


def label(meta: dict) -> str:
    t = meta.get("target", {})
    if t.get("backend") == "http":
        return f"{t.get('model')} @ {t.get('base_url')}"
    name = str(t.get("model"))
    if t.get("adapter"):
        name += f" + {Path(t['adapter']).name}"
    return name


def _example(r: Scored, why: str) -> dict:
    return {"why": why, "probe": r.probe, "lang": r.lang, "prompt": r.messages[-1]["content"],
            "turns": len([m for m in r.messages if m["role"] == "user"]), "sample": r.sample,
            "reply": r.reply, "claims": list(r.verdict.claims), "foreign": list(r.verdict.foreign),
            "persona": r.verdict.persona_name}


def _pick_examples(records: list[Scored]) -> list[dict]:
    """Up to EXAMPLES_PER_KIND replies (of different prompts) for each flag a cell shows."""
    out = []
    for why, flagged in FLAGS:
        seen: set[str] = set()
        for r in records:
            if len(seen) >= EXAMPLES_PER_KIND:
                break
            if flagged(r.verdict) and r.probe not in seen:
                out.append(_example(r, why))
                seen.add(r.probe)
    return out


def by_prompt(records: list[Scored], metric: str) -> dict[str, tuple[int, int]]:
    """{probe: (replies where the verdict on `metric` holds, replies a rate of it counts)} (Verdict.counts)."""
    out: dict[str, list[int]] = {}
    for r in records:
        v = r.verdict.counts(metric)
        if v is None:
            continue
        kn = out.setdefault(r.probe, [0, 0])
        kn[0] += bool(v)
        kn[1] += 1
    return {p: (k, n) for p, (k, n) in out.items()}


def copies_of(records: list[Scored], recitation: "scorers.Recitation") -> dict:
    """How many identity replies of `records` repeat one of `recitation`'s replies (near-)verbatim, clustered by prompt:
    with one adapter's training replies and the base model's records, the base model's own rate of "copies" (its
    voice matching them), the yardstick for the adapter's."""
    hits: dict[str, list[int]] = {}
    for r in records:
        if r.suite in IDENTITY_SUITES:
            kn = hits.setdefault(r.probe, [0, 0])
            kn[0] += recitation.copied(r.reply)
            kn[1] += 1
    return clustered_rate([tuple(kn) for kn in hits.values()])


def distinct_per_prompt(records: list[Scored]) -> dict[str, tuple[int, int]]:
    """{probe: (distinct replies, samples)} over the sampled (T > 0) replies of each prompt."""
    texts: dict[str, list[str]] = {}
    for r in records:
        if r.temperature > 0:
            texts.setdefault(r.probe, []).append(scorers.normalise(r.reply))
    return {p: (len(set(ts)), len(ts)) for p, ts in texts.items() if len(ts) > 1}


def identity_cell(records: list[Scored], examples: bool = True, tally: Tally | None = None) -> dict:
    """Every metric of one cell (or of a pooled group of cells), clustered by prompt. `tally`: the records' columns,
    when the caller has them (a view of its suite's Tally); the tallies are by_prompt's, vendor_rate's and
    distinct_per_prompt's of the records, counted from the columns."""
    t = tally if tally is not None else Tally(records)
    scored_rows = t.where(t.column(t.scored))
    out: dict = {"prompts": len({r.probe for r in records}),
                 "samples_per_prompt": max((r.sample for r in records), default=-1) + 1}
    for name in (*METRICS, "own"):
        out[name] = clustered_rate(list(t.by_prompt(name).values()))
    out["persona"] = clustered_rate(t.per_prompt(t.column(t.persona)))
    distinct = t.distinct()
    out["distinct"] = {**clustered_mean([d / n for d, n in distinct.values()]),
                       "replies_per_prompt": (sum(d for d, _ in distinct.values()) / len(distinct)) if distinct else None,
                       "samples_per_prompt": (sum(n for _, n in distinct.values()) / len(distinct)) if distinct else None}
    foreign = [t.foreign[i] for i in t.rows.tolist()]
    vendors: dict[str, int] = {}
    for claimed in foreign:
        for v in claimed:
            vendors[v] = vendors.get(v, 0) + 1
    out["by_vendor"] = {v: clustered_rate(t.per_prompt([v in f for f in foreign]))
                        for v, _ in sorted(vendors.items(), key=lambda kv: -kv[1])}
    lang = t.column(t.lang)
    out["by_lang"] = {code: clustered_rate(list(t.where(lang == code).by_prompt("foreign").values())) for code in ("zh", "en")}
    tagged = [t.tags[i] for i in scored_rows.rows.tolist()]
    tags = list(dict.fromkeys(x for ts in tagged for x in ts))
    view_tags = [t.tags[i] for i in t.rows.tolist()]
    out["by_tag"] = {x: clustered_rate(list(t.where([x in ts for ts in view_tags]).by_prompt("foreign").values()))
                     for x in tags}
    out["unscored"] = len(records) - len(scored_rows)
    out["judged"] = sum(r.verdict.detector == "judge" for r in records)
    if examples:
        out["examples"] = _pick_examples(scored_rows.items())
    return out


def vendor_rate(records: list[Scored], vendor: str) -> dict:
    """How often the replies claim `vendor` as their own, clustered by prompt."""
    return clustered_rate([(sum(vendor in r.verdict.foreign for r in rs), len(rs))
                           for rs in group_by_prompt([r for r in records if r.verdict.scored]).values()])


def group_by_prompt(records: list[Scored]) -> dict[str, list[Scored]]:
    out: dict[str, list[Scored]] = {}
    for r in records:
        out.setdefault(r.probe, []).append(r)
    return out


def _ner(records: list[Scored], seed: int) -> dict:
    n = len(records)
    vs = [r.verdict for r in records]
    score = prf(sum(v.tp for v in vs), sum(v.fp for v in vs), sum(v.fn for v in vs))
    lo, hi = bootstrap_f1([(v.tp, v.fp, v.fn) for v in vs], seed=seed)
    return {"n": n, "parse": rate(sum(v.parsed for v in vs), n), "precision": score["precision"],
            "recall": score["recall"], "f1": score["f1"], "f1_ci95": [lo, hi], "tp": score["tp"], "fp": score["fp"],
            "fn": score["fn"], "foreign": rate(sum(bool(v.foreign) for v in vs), n)}


def _general(records: list[Scored]) -> dict:
    n = len(records)
    return {"pass": rate(sum(r.verdict.passed for r in records), n),
            "failed": sorted({r.probe for r in records if not r.verdict.passed}),
            "foreign": rate(sum(bool(r.verdict.foreign) for r in records), n)}


def summarize(run_dir: Path, loaded: tuple[dict, list[Scored], dict | None] | None = None) -> dict:
    """The summary of a run; `loaded`: what `load_run(run_dir)` already returned, so it is not read twice."""
    meta, records, margin = loaded if loaded is not None else load_run(run_dir)
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
            "scorer": {"version": scorers.VERSION, "recitation": _recitation_source(meta, run_dir)},
        },
    }
    for suite in IDENTITY_SUITES:
        if suite not in params["suites"]:
            continue
        ident = by_suite.get(suite, [])
        tally = Tally(ident)  # every record's verdicts read once; each cell below is a view of it
        rows: dict[tuple, list[int]] = {}
        for i, r in enumerate(ident):
            rows.setdefault((r.system, r.temperature), []).append(i)
            rows.setdefault((r.system,), []).append(i)
        cells = []
        for s in systems:
            for t in temps:
                if (s, t) in rows:
                    view = tally.subset(rows[s, t])
                    cells.append({"system": s, "temperature": t, **identity_cell(view.items(), tally=view)})
        pooled = {}
        for s in systems:
            if (s,) in rows:  # per-prompt foreign counts: what a paired test between runs or system prompts needs
                view = tally.subset(rows[s,])
                pooled[s] = {**identity_cell(view.items(), examples=False, tally=view),
                             "per_prompt": {p: list(kn) for p, kn in view.by_prompt("foreign").items()}}
        out[suite] = {"cells": cells, "by_system": pooled, "overall": identity_cell(ident, examples=False, tally=tally),
                      "margin": margin}
    if "ner" in params["suites"]:
        out["ner"] = {s: _ner(g, params["seed"]) for s in systems
                      if (g := [r for r in by_suite.get("ner", []) if r.system == s])}
    if "general" in params["suites"]:
        out["general"] = {s: _general(g) for s in systems
                          if (g := [r for r in by_suite.get("general", []) if r.system == s])}
    return out


def _recitation_source(meta: dict, run_dir: Path | None) -> str | None:
    rec = scorers.recitation_for(meta, run_dir)
    return rec.source if rec else None
