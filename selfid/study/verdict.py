"""What changed from the base model to a fine-tuned arm, from their two audit summaries, in one sentence: does the
system prompt or fine-tuning move identity more? Shown on top of each comparison's report.html and printed by
`selfid demo`."""

from __future__ import annotations

from selfid.audit.report.fmt import rate_text
from selfid.audit.stats import holm, paired_prompts
from selfid.errors import SelfidError
from selfid.system_prompt import HELPFUL

SYSTEM_LABEL = {"template": "none (template's Qwen line)", "helpful": f'"{HELPFUL}"', "empty": '"" (empty)'}
ALPHA = 0.05
FAR_MORE = 2.0  # "far more": the system prompt's spread is at least this many times fine-tuning's largest change


def verdict(base: dict, tuned: dict) -> dict:
    """What changed from `base` to `tuned` (audit summaries), and one sentence saying what it means.

    Per system prompt: the foreign-claim rate before and after (all temperatures pooled) with 95%
    intervals clustered by prompt, and a test paired by prompt (both audits asked the same prompts),
    Holm-corrected over the system prompts. The system prompt's effect is the base model's spread
    across system prompts (highest vs lowest, paired by prompt too); fine-tuning's is the largest
    change in any system prompt. The sentence says which is larger only when the tests say so.
    """
    before, after = base["identity"]["by_system"], tuned["identity"]["by_system"]
    rows = []
    for key in before:
        if key not in after:
            continue
        a, b = before[key]["foreign"], after[key]["foreign"]
        test = paired_prompts(_tallies(before[key]), _tallies(after[key]))
        rows.append({"system": key, "label": SYSTEM_LABEL.get(key, key), "before": a, "after": b, "test": test})
    if not rows:
        raise SelfidError("the two audits share no system prompt with identity results: nothing to compare")
    tested = [r for r in rows if r["test"]]
    for r, adj in zip(tested, holm([r["test"]["p_value"] for r in tested])):
        r["test"]["p_holm"] = adj
    ranked = sorted((r for r in rows if r["before"]["n"]), key=lambda r: r["before"]["rate"])
    lo, hi = ranked[0], ranked[-1]
    sys_test = paired_prompts(_tallies(before[lo["system"]]), _tallies(before[hi["system"]]))
    system_effect = {"low": lo["system"], "high": hi["system"], "diff": sys_test["diff"], "p_value": sys_test["p_value"],
                     "test": sys_test["test"], "ci95": sys_test["ci95"], "up": sys_test["up"], "down": sys_test["down"]}
    biggest = max(tested, key=lambda r: abs(r["test"]["diff"]))
    tuning_effect = {"system": biggest["system"], "diff": biggest["test"]["diff"],
                     "p_value": biggest["test"]["p_holm"],
                     "significant": [r["system"] for r in tested if r["test"]["p_holm"] < ALPHA]}
    ner = None
    nb, nt = base.get("ner", {}), tuned.get("ner", {})
    key = "helpful" if "helpful" in nb and "helpful" in nt else next(iter(nb.keys() & nt.keys()), None)
    if key is not None:
        ner = {"system": key, "n": nb[key]["n"],
               "before": {k: nb[key][k] for k in ("f1", "f1_ci95", "precision", "recall")} | {"parse": nb[key]["parse"]},
               "after": {k: nt[key][k] for k in ("f1", "f1_ci95", "precision", "recall")} | {"parse": nt[key]["parse"]}}
    return {"identity": rows, "system_effect": system_effect, "tuning_effect": tuning_effect, "ner": ner,
            "alpha": ALPHA, "meaning": meaning(system_effect, tuning_effect, ner, rows)}


def _tallies(pooled: dict) -> dict[str, tuple[int, int]]:
    return {p: (k, n) for p, (k, n) in pooled["per_prompt"].items()}


def _pts(x: float) -> str:
    return f"{100 * x:.0f} pts"


def meaning(system_effect: dict, tuning_effect: dict, ner: dict | None, rows: list[dict]) -> str:
    """One sentence from the numbers: does the system prompt or fine-tuning move identity more?"""
    spread, p_sys = system_effect["diff"], system_effect["p_value"]
    change, p_ft = tuning_effect["diff"], tuning_effect["p_value"]
    sys_sig, ft_sig = p_sys < ALPHA, bool(tuning_effect["significant"])
    by = {r["system"]: r for r in rows}
    lo, hi = by[system_effect["low"]]["before"], by[system_effect["high"]]["before"]
    span = (f"foreign claims range from {100 * lo['rate']:.0f}% ({system_effect['low']}) to {100 * hi['rate']:.0f}% "
            f"({system_effect['high']}) across system prompts (p={p_sys:.2g})")
    moved = (f"fine-tuning moved the {tuning_effect['system']} rate by {100 * change:+.0f} pts (p={p_ft:.2g})")
    if sys_sig and spread >= FAR_MORE * abs(change):
        head = "The system prompt moves identity far more than fine-tuning"
        tail = f"{span}, while {moved}" if ft_sig else f"{span}, while fine-tuning changed no system prompt's rate " \
                                                         f"detectably (largest change {100 * change:+.0f} pts, p={p_ft:.2g})"
        text = f"{head}: {tail}"
    elif ft_sig and (not sys_sig or abs(change) > spread):
        direction = "more" if change > 0 else "fewer"
        text = (f"Fine-tuning changed who the model says it is ({direction} foreign claims): {moved}, "
                + (f"more than the {_pts(spread)} between system prompts" if sys_sig else
                   "while the system prompt made no detectable difference"))
    elif sys_sig and ft_sig:
        text = f"Both matter: {span}, and {moved}"
    elif sys_sig:
        text = (f"The system prompt moves identity: {span}; fine-tuning's largest change ({100 * change:+.0f} pts, "
                f"p={p_ft:.2g}) is not detectable at this sample size")
    else:
        n = min(r["before"]["n"] for r in rows)
        text = (f"Neither the system prompt nor fine-tuning moved the foreign-claim rate detectably at this sample size "
                f"({n} replies per system prompt)")
    if ner is not None:
        b, a = ner["before"], ner["after"]
        if a["f1_ci95"][0] > b["f1_ci95"][1]:
            text += f"; fine-tuning did teach the task (NER F1 {b['f1']:.2f} → {a['f1']:.2f})"
        elif a["f1"] > b["f1"]:
            text += f"; NER F1 rose from {b['f1']:.2f} to {a['f1']:.2f}, within the intervals' overlap"
        else:
            text += f"; NER F1 did not improve ({b['f1']:.2f} → {a['f1']:.2f})"
    return text + "."


def _rate(r: dict) -> str:
    return rate_text(r, digits=0)


def verdict_lines(v: dict) -> list[str]:
    """The verdict as plain lines (the report's headline)."""
    lines = []
    for r in v["identity"]:
        t = r["test"]
        change = f"{100 * t['diff']:+.0f} pts, p={t['p_holm']:.2g} paired by prompt, Holm" if t else "–"
        lines.append(f"Foreign identity claims, system prompt {r['label']}: {_rate(r['before'])} → "
                     f"{_rate(r['after'])} ({change})")
    if v.get("ner"):
        n = v["ner"]
        b, a = n["before"], n["after"]
        lines.append(f"NER F1 ({n['n']} MSRA test sentences, system prompt {n['system']}): {b['f1']:.2f} "
                     f"[{b['f1_ci95'][0]:.2f}–{b['f1_ci95'][1]:.2f}] → {a['f1']:.2f} [{a['f1_ci95'][0]:.2f}–"
                     f"{a['f1_ci95'][1]:.2f}]")
    lines.append(v["meaning"])
    return lines
