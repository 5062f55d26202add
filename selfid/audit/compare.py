"""`selfid compare RUN_A RUN_B --out DIR`: what changed between two audit runs (say base and tuned).

Per cell (system prompt x temperature): the foreign-claim rates, their difference with a 95%
interval and a two-proportion test. Per prompt: which prompts went from the model's own identity
to a foreign one. NER and general deltas, and the identity margin's shift. Works on any two run
folders; it warns where they are not comparable (another template, other system prompts).
"""

from __future__ import annotations

from pathlib import Path

from selfid.audit.report.html import write_html
from selfid.audit.report.summary import load_run, summarize
from selfid.audit.stats import two_proportions
from selfid.io import atomic_write_json


def _by_prompt(records: list[dict]) -> dict[tuple, dict]:
    out: dict[tuple, dict] = {}
    for r in records:
        if r["suite"] != "identity" or r["detector"] == "unscored":
            continue
        g = out.setdefault((r["probe"], r["system"], r["temperature"]),
                           {"n": 0, "own": 0, "foreign": 0, "prompt": r["messages"][-1]["content"], "example": None,
                            "lang": r["lang"]})
        g["n"] += 1
        g["own"] += bool(r["own"])
        g["foreign"] += bool(r["foreign"])
        if r["foreign"] and g["example"] is None:
            g["example"] = r["reply"]
    return out


def flips(records_a: list[dict], records_b: list[dict]) -> tuple[list[dict], int]:
    """Prompts A answered with its own identity and no foreign claim, where B made a foreign claim;
    and how many went the other way."""
    a, b = _by_prompt(records_a), _by_prompt(records_b)
    out, back = [], 0
    for key in sorted(a.keys() & b.keys()):
        ga, gb = a[key], b[key]
        if ga["foreign"] == 0 and ga["own"] > 0 and gb["foreign"] > 0:
            out.append({"probe": key[0], "system": key[1], "temperature": key[2], "lang": ga["lang"],
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


def compare_runs(run_a: Path, run_b: Path) -> tuple[dict, dict, dict]:
    """(comparison, summary A, summary B)."""
    loaded_a, loaded_b = load_run(run_a), load_run(run_b)
    (ma, ra, _), (mb, rb, _) = loaded_a, loaded_b
    sa, sb = summarize(run_a, loaded_a), summarize(run_b, loaded_b)
    comp: dict = {"a": {"dir": str(run_a), "label": sa["run"]["label"]}, "b": {"dir": str(run_b), "label": sb["run"]["label"]},
                  "warnings": _warnings(ma, mb, sa, sb)}
    if "identity" in sa and "identity" in sb:
        cells_b = {(c["system"], c["temperature"]): c for c in sb["identity"]["cells"]}
        comp["identity"] = []
        for ca in sa["identity"]["cells"]:
            cb = cells_b.get((ca["system"], ca["temperature"]))
            if cb is None:
                continue
            fa, fb = ca["foreign"], cb["foreign"]
            test = two_proportions(fa["k"], fa["n"], fb["k"], fb["n"]).as_dict() if fa["n"] and fb["n"] else None
            comp["identity"].append({"system": ca["system"], "temperature": ca["temperature"], "a": fa, "b": fb,
                                     "test": test})
        comp["flips"], comp["flips_back"] = flips(ra, rb)
        ma_, mb_ = sa["identity"].get("margin"), sb["identity"].get("margin")
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
    comp, sa, sb = compare_runs(Path(run_a), Path(run_b))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "comparison.json", comp)
    write_html(out / "report.html", [sa, sb], comp)
    return comp
