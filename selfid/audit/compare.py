"""`selfid compare RUN_A RUN_B --out DIR`: what changed between two audit runs (say base and tuned).

Per identity cell (system prompt x temperature) and per metric (foreign claims, own-affirmation,
self-denial, task done, persona kept), the two rates and a test paired by prompt: both runs asked
the same prompts, so each prompt's rate in B is compared with its rate in A (mean difference with a
t interval over prompts, prompts up and down, Wilcoxon signed-rank p), and the p-values of one
metric's cells are corrected with Holm's method. Distinct replies per prompt (recitation) are shown
as B's share of A's. Per prompt: which prompts went from the model's own identity to a foreign one. When B's identity training replies
are known (an adapter trained with identity replay), how often B's replies repeat one of them beside how often A's do
(for A the base model: its own voice matching them, the yardstick for B's copies).
NER and general deltas, and the identity margin's shift. Works on any two run folders; it warns
where they are not comparable (another template, other system prompts, another scorer version).
"""

from __future__ import annotations

from pathlib import Path

from selfid.audit.log import META
from selfid.audit.probes import IDENTITY_SUITES
from selfid.audit.report.html import write_html
from selfid.audit.report.summary import by_prompt, copies_of, distinct_per_prompt, load_run, summarize
from selfid.audit.scorers import METRICS, Scored, recitation_for
from selfid.audit.stats import holm, paired_prompts, two_proportions
from selfid.errors import SelfidError
from selfid.io import atomic_write_json, check_out_folder

PAIRED = [name for name in METRICS if name != "copy"]  # copy needs training data A (the base) has none of


def _groups(records: list[Scored], suite: str) -> dict[tuple, list[Scored]]:
    out: dict[tuple, list[Scored]] = {}
    for r in records:
        if r.suite == suite and r.verdict.scored:
            out.setdefault((r.system, r.temperature), []).append(r)
    return out


def _by_prompt(records: list[Scored], suite: str) -> dict[tuple, dict]:
    out: dict[tuple, dict] = {}
    for r in records:
        if r.suite != suite or not r.verdict.scored:
            continue
        g = out.setdefault((r.probe, r.system, r.temperature),
                           {"n": 0, "own": 0, "foreign": 0, "prompt": r.messages[-1]["content"], "example": None,
                            "lang": r.lang})
        g["n"] += 1
        g["own"] += r.verdict.own
        g["foreign"] += bool(r.verdict.foreign)
        if r.verdict.foreign and g["example"] is None:
            g["example"] = r.reply
    return out


def flips(records_a: list[Scored], records_b: list[Scored], suite: str = "identity") -> tuple[list[dict], int]:
    """Prompts A answered with its own identity and no foreign claim, where B made a foreign claim;
    and how many went the other way."""
    a, b = _by_prompt(records_a, suite), _by_prompt(records_b, suite)
    out, back = [], 0
    for key in sorted(a.keys() & b.keys()):
        ga, gb = a[key], b[key]
        if ga["foreign"] == 0 and ga["own"] > 0 and gb["foreign"] > 0:
            out.append({"suite": suite, "probe": key[0], "system": key[1], "temperature": key[2], "lang": ga["lang"],
                        "prompt": ga["prompt"], "a": {k: ga[k] for k in ("n", "own", "foreign")},
                        "b": {k: gb[k] for k in ("n", "own", "foreign", "example")}})
        elif gb["foreign"] == 0 and gb["own"] > 0 and ga["foreign"] > 0:
            back += 1
    out.sort(key=lambda f: (-f["b"]["foreign"] / f["b"]["n"], f["probe"]))
    return out, back


def _warnings(ma: dict, mb: dict, sa: dict, sb: dict) -> list[str]:
    out = []
    ta, tb = ma["target"].get("template_hash"), mb["target"].get("template_hash")
    if ta and tb and ta != tb:
        out.append(f"the chat templates differ (A {ta}, B {tb}): the same system key may render differently")
    ea = {s["key"]: s["effective"] for s in ma["systems"]}
    eb = {s["key"]: s["effective"] for s in mb["systems"]}
    for k in ea.keys() & eb.keys():
        if ea[k] != eb[k]:
            out.append(f"system prompt {k!r} differs: A saw {ea[k]!r}, B saw {eb[k]!r}")
    if ma["own"] != mb["own"]:
        out.append(f"the runs count different vendors as own (A {ma['own']}, B {mb['own']})")
    for name, s in (("A", sa), ("B", sb)):
        if not s["run"].get("complete", True):
            out.append(f"run {name} is incomplete ({s['run']['generations']} of {s['run']['planned']} generations)")
    pa, pb = ma["params"], mb["params"]
    for k in ("samples", "seed", "max_new_tokens"):
        if pa.get(k) != pb.get(k):
            out.append(f"{k} differs (A {pa.get(k)}, B {pb.get(k)})")
    return out


def _metric(ra: list[Scored], rb: list[Scored], name: str, sa_cell: dict, sb_cell: dict) -> dict:
    return {"a": sa_cell[name], "b": sb_cell[name], "paired": paired_prompts(by_prompt(ra, name), by_prompt(rb, name))}


def _distinct(ra: list[Scored], rb: list[Scored]) -> dict | None:
    da, db = distinct_per_prompt(ra), distinct_per_prompt(rb)
    shared = da.keys() & db.keys()
    if not shared:
        return None
    a = sum(da[p][0] / da[p][1] for p in shared) / len(shared)
    b = sum(db[p][0] / db[p][1] for p in shared) / len(shared)
    return {"a": a, "b": b, "ratio": b / a if a else None, "prompts": len(shared)}


def compare_identity(records_a: list[Scored], records_b: list[Scored], sa: dict, sb: dict, suite: str) -> dict:
    """Cells and per-system pools of one identity suite, every metric paired by prompt, Holm per metric."""
    ga, gb = _groups(records_a, suite), _groups(records_b, suite)
    cells_a = {(c["system"], c["temperature"]): c for c in sa[suite]["cells"]}
    cells_b = {(c["system"], c["temperature"]): c for c in sb[suite]["cells"]}
    cells = []
    for where, ca in cells_a.items():
        cb = cells_b.get(where)
        if cb is None:
            continue
        ra, rb = ga.get(where, []), gb.get(where, [])
        metrics = {name: _metric(ra, rb, name, ca, cb) for name in PAIRED}
        cells.append({"system": where[0], "temperature": where[1], "metrics": metrics, "distinct": _distinct(ra, rb),
                      # the foreign-claim test where earlier reports looked for it
                      "a": ca["foreign"], "b": cb["foreign"], "test": metrics["foreign"]["paired"]})
    for name in PAIRED:  # Holm over one metric's cells: the family a reader scans for "any cell moved"
        tested = [c["metrics"][name]["paired"] for c in cells if c["metrics"][name]["paired"]]
        for t, adj in zip(tested, holm([t["p_value"] for t in tested])):
            t["p_holm"] = adj
    pooled = {}
    for system, pa in sa[suite]["by_system"].items():
        pb = sb[suite]["by_system"].get(system)
        if pb is None:
            continue
        ra = [r for w, rs in ga.items() if w[0] == system for r in rs]
        rb = [r for w, rs in gb.items() if w[0] == system for r in rs]
        pooled[system] = {name: _metric(ra, rb, name, pa, pb) for name in PAIRED}
        pooled[system]["distinct"] = _distinct(ra, rb)
    return {"cells": cells, "by_system": pooled}


def copies_against(records_a: list[Scored], records_b: list[Scored], suite: str, recitation) -> dict:
    """B's replies that repeat one of B's training replies, and A's replies (the same prompts) that match one too."""
    a = copies_of([r for r in records_a if r.suite == suite and r.verdict.scored], recitation)
    b = copies_of([r for r in records_b if r.suite == suite and r.verdict.scored], recitation)
    return {"a": a, "b": b, "ratio": b["rate"] / a["rate"] if a["rate"] else None, "source": recitation.source,
            "training_replies": len(set(recitation.replies))}


def compare_runs(run_a: Path, run_b: Path) -> tuple[dict, dict, dict]:
    """(comparison, summary A, summary B)."""
    loaded_a, loaded_b = load_run(run_a), load_run(run_b)
    (ma, ra, _), (mb, rb, _) = loaded_a, loaded_b
    sa, sb = summarize(run_a, loaded_a), summarize(run_b, loaded_b)
    comp: dict = {"a": {"dir": str(run_a), "label": sa["run"]["label"]}, "b": {"dir": str(run_b), "label": sb["run"]["label"]},
                  "warnings": _warnings(ma, mb, sa, sb)}
    all_flips, back = [], 0
    recitation = recitation_for(mb, run_b)
    for suite in IDENTITY_SUITES:
        if suite in sa and suite in sb:
            comp[suite] = compare_identity(ra, rb, sa, sb, suite)
            if recitation is not None:
                comp[suite]["copies"] = copies_against(ra, rb, suite, recitation)
            f, b = flips(ra, rb, suite)
            all_flips += f
            back += b
    if any(s in comp for s in IDENTITY_SUITES):
        comp["flips"], comp["flips_back"] = all_flips, back
        suite = next(s for s in IDENTITY_SUITES if s in comp)
        ma_, mb_ = sa[suite].get("margin"), sb[suite].get("margin")
        if ma_ and mb_:
            comp["margin"] = {key: {lang: {pos: mb_[key][lang][pos]["margin"] - cell["margin"]
                                           for pos, cell in by_pos.items() if pos in mb_[key].get(lang, {})}
                                    for lang, by_pos in by_lang.items() if lang in mb_[key]}
                              for key, by_lang in ma_.items() if key in mb_}
    if sa.get("ner") and sb.get("ner"):
        comp["ner"] = {k: {"a": sa["ner"][k], "b": sb["ner"][k], "f1_delta": sb["ner"][k]["f1"] - sa["ner"][k]["f1"],
                           "parse_delta": (sb["ner"][k]["parse"]["rate"] or 0) - (sa["ner"][k]["parse"]["rate"] or 0)}
                       for k in sa["ner"].keys() & sb["ner"].keys()}
    if sa.get("general") and sb.get("general"):
        comp["general"] = {}
        for k in sa["general"].keys() & sb["general"].keys():
            pa, pb = sa["general"][k]["pass"], sb["general"][k]["pass"]
            comp["general"][k] = {"a": pa, "b": pb,
                                  "test": two_proportions(pa["k"], pa["n"], pb["k"], pb["n"]).as_dict() if pa["n"] and pb["n"] else None,
                                  "newly_failed": sorted(set(sb["general"][k]["failed"]) - set(sa["general"][k]["failed"]))}
    return comp, sa, sb


def compare(run_a: Path, run_b: Path, out: Path) -> dict:
    """Write comparison.json and report.html (A and B side by side) into `out`; return the comparison."""
    out = Path(out)
    if (out / META).is_file():
        raise SelfidError(f"--out {out} is an audit run folder: its report.html would be replaced; choose a new --out")
    check_out_folder(out, ("comparison.json", "report.html"), "comparison.json")
    comp, sa, sb = compare_runs(Path(run_a), Path(run_b))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "comparison.json", comp)
    write_html(out / "report.html", [sa, sb], comp)
    return comp
