"""The verdict of a gate: one test per metric x system prompt, prompt-paired, one-sided, Holm over all of them.

For each cell, every prompt both runs asked gives a change of its rate, turned so that positive is worse
(foreign claims up, own identity down); `harm` is their mean, `se` its standard error over prompts. With
`limit` the threshold, K the cells tested and `power` the target from the thresholds:

    regression    harm is above zero at Holm-adjusted level alpha (one-sided t test over prompts; Holm over
                  every cell, so a candidate that did not change fails the whole gate with chance at most
                  alpha), and its one-sided upper bound at level alpha does not rule out the stated size (a
                  real change that is surely smaller passes).
    pass          otherwise, when harm + t_power * se < limit: the upper bound at the power level is below the
                  limit, so a regression of the stated size would have been passed with chance at most
                  1 - power (20% at the default 80%), whatever the grid's size.
    inconclusive  otherwise: no regression found, and none of the stated size ruled out at the stated power.
                  The cell says how many more prompts, or replies per prompt, would settle it.

Finding a rise (harm > t_{alpha/K} * se, Holm's first step) and ruling out the stated size at the power level
meet at the size `selfid gate --plan` asks for, limit = (t_{alpha/K} + t_power) * se: there a regression of the
stated size is found with the stated power, an unchanged candidate passes with chance at least 1 - alpha, and
nothing is left inconclusive. A smaller grid leaves a band between the two inconclusive.

A cell whose reference rates leave no room for a change of the stated size (a rate of 5% cannot fall by 8
points) passes.

Every test of a rate divides by the larger of the observed standard error and the one a regression of the
stated size would show by selfid.gate.power's model (the reference's per-prompt rates moved by the limit, the
replies per prompt of both runs, the measured interaction of a fine-tune with the prompts). The model is the
one `selfid gate --plan` sizes grids with, so at the size the plan asks for a regression of the stated size is
found with at least `power`; and a standard error the data understate (rare events, few prompts, a cell where
neither run ever made a claim) cannot make a test fail on noise or pass on nothing. NER F1 is paired by sentence
with a jackknife standard error; a user's own task number is judged with the standard errors it reports, or on
its value alone when it reports none.
"""

from __future__ import annotations

import math
import statistics

from selfid.audit.stats import holm, mean_above_zero
from selfid.errors import SelfidError
from selfid.gate import power as pw
from selfid.gate.tallies import Tallies
from selfid.gate.thresholds import BY_NAME, IDENTITY, Thresholds
from selfid.tasks.ner import prf

PASS, REGRESSION, INCONCLUSIVE = "pass", "regression", "inconclusive"
ORDER = (PASS, INCONCLUSIVE, REGRESSION)  # a gate's verdict is its worst cell's


def rate_cell(metric: str, ref: dict[str, list[int]], cand: dict[str, list[int]], limit: float, worse: int) -> dict:
    """The paired comparison of one cell's per-prompt tallies (before Holm and the decision)."""
    shared = sorted(p for p in ref.keys() & cand.keys() if ref[p][1] and cand[p][1])
    a = {p: ref[p] for p in shared}
    b = {p: cand[p] for p in shared}
    test = mean_above_zero([worse * (b[p][0] / b[p][1] - a[p][0] / a[p][1]) for p in shared])
    out = {"prompts": len(shared), "reference": _rate(a), "candidate": _rate(b), "harm": test["mean"],
           "se_observed": test["se"], "df": test["df"], "p_value": test["p_value"]}
    if len(shared) < 2:
        return {**out, "se": None, "why": f"{len(shared)} shared prompt(s): a paired test needs two or more"}
    replies_ref = statistics.median(a[p][1] for p in shared)
    replies_cand = statistics.median(b[p][1] for p in shared)
    kappa = pw.interaction(metric)
    rates = [a[p][0] / a[p][1] for p in shared]
    moved = pw.spread(rates, limit, worse)
    if moved is None:  # a rate of 5% cannot fall by 8 points: a regression of the stated size cannot happen
        return {**out, "se": test["se"], "se_model": None, "no_room": True}
    model = pw.pair_se(rates, [a[p][1] for p in shared], replies_cand, moved, None, kappa)
    se = max(test["se"], model)
    return {**out, "se": se, "se_model": model, "p_value": pw.t_above(test["mean"], se, test["df"]),
            "replies_reference": replies_ref, "replies_candidate": replies_cand, "interaction": kappa, "_tallies": a}


def _rate(by_prompt: dict[str, list[int]]) -> dict:
    k, n = sum(kn[0] for kn in by_prompt.values()), sum(kn[1] for kn in by_prompt.values())
    return {"k": k, "n": n, "rate": k / n if n else None}


def ner_cell(ref: dict[str, list[int]], cand: dict[str, list[int]]) -> dict:
    shared = sorted(ref.keys() & cand.keys())
    a, b = [tuple(ref[s]) for s in shared], [tuple(cand[s]) for s in shared]
    change, se = pw.jackknife_f1_change(a, b)
    harm, df = -change, len(shared) - 1
    p = pw.t_above(harm, se, df)
    f1a, f1b = (prf(*(sum(x[i] for x in side) for i in range(3)))["f1"] for side in (a, b))
    return {"prompts": len(shared), "reference": {"f1": f1a, "n": len(shared)}, "candidate": {"f1": f1b, "n": len(shared)},
            "harm": harm, "se": se, "se_observed": se, "df": df, "p_value": p}


def task_cell(spec, reference: dict, candidate: dict) -> dict:
    """The user's own number: {"value", "stderr"} per side."""
    sign = 1 if spec.higher_is_better else -1
    harm = sign * (reference["value"] - candidate["value"])
    out = {"prompts": None, "reference": reference, "candidate": candidate, "harm": harm, "df": 0}
    sa, sb = reference.get("stderr"), candidate.get("stderr")
    if sa is None or sb is None:
        return {**out, "se": None, "p_value": None, "note": "no standard error reported: judged on the numbers alone"}
    se = math.hypot(sa, sb)
    p = (0.0 if harm > 0 else 1.0) if se == 0 else 0.5 * math.erfc(harm / se / math.sqrt(2))
    return {**out, "se": se, "p_value": p}


def _decide(cell: dict, alpha: float, target: float, tested: int) -> None:
    """The cell's outcome from its test (see the module's docstring), with what would settle an inconclusive one."""
    limit, harm, se = cell["limit"], cell["harm"], cell.get("se")
    if cell.get("p_value") is None:  # a task number without uncertainty
        cell["outcome"] = REGRESSION if harm > limit else PASS
        return
    if se is None:
        cell["outcome"] = INCONCLUSIVE
        return
    df = cell["df"]
    cell["bound"] = harm + pw.critical(alpha, df) * se  # one-sided upper bound at level alpha
    cell["power_bound"] = harm + pw.quantile(target, df) * se  # ... at the power level
    cell["power_level"] = target
    cell["power"] = pw.power(se, limit, alpha / tested, df) if not math.isinf(se) else 0.0
    if cell.get("no_room"):
        cell["outcome"] = PASS
        cell["note"] = "the reference's rates leave no room for a change of the stated size"
    elif cell["p_holm"] < alpha and cell["bound"] >= limit:
        cell["outcome"] = REGRESSION
    elif cell["power_bound"] < limit:
        cell["outcome"] = PASS
    else:
        cell["outcome"] = INCONCLUSIVE
        cell["settle"] = _settle(cell, alpha / tested, target)


def _settle(cell: dict, alpha: float, target: float) -> dict:
    """How much bigger the grid must be for the cell's power to reach the target: more prompts like these (the
    standard error falls as 1/sqrt(prompts)), or more replies per prompt in both runs (by selfid.gate.power's
    model; the prompts' own disagreement does not fall with more replies)."""
    df = cell["df"]
    needed = cell["limit"] / (pw.critical(alpha, df) + pw.quantile(target, df))
    if cell["prompts"] is None:  # a task number: each side's standard error must shrink to this
        return {"stderr": needed / math.sqrt(2)}
    out = {"prompts": math.ceil(cell["prompts"] * (cell["se"] / needed) ** 2) if not math.isinf(cell["se"]) else None,
           "replies_per_prompt": None}
    tallies = cell.get("_tallies")
    if tallies is not None and cell["se_observed"] <= cell["se_model"]:
        def enough(n: int) -> bool:
            return pw.rate_power(tallies, cell["worse"], cell["limit"], alpha, n, cell["interaction"],
                                 replies_ref=n) >= target
        out["replies_per_prompt"] = pw.smallest(enough, 1, 100_000)
    return out


def judge(reference: Tallies, candidate: Tallies, thresholds: Thresholds, task: dict | None = None) -> dict:
    """Every cell's test and outcome, and the gate's verdict (the worst outcome of any cell)."""
    alpha, target = thresholds.alpha, thresholds.power
    shared = [s for s in reference.systems if s in candidate.systems]
    if thresholds.systems is not None:
        unknown = [s for s in thresholds.systems if s not in shared]
        if unknown:
            raise SelfidError(f"the thresholds name system prompts {', '.join(unknown)} that the two runs do not "
                              f"share (they share {', '.join(shared) or 'none'})")
        shared = [s for s in shared if s in thresholds.systems]
    cells = []
    for metric in IDENTITY:
        limit = thresholds.limit(metric.name)
        by_ref, by_cand = reference.rates.get(metric.name, {}), candidate.rates.get(metric.name, {})
        for system in shared:
            if limit is not None and system in by_ref and system in by_cand:
                cell = rate_cell(metric.name, by_ref[system], by_cand[system], limit, metric.worse)
                if cell["prompts"]:
                    cells.append({"metric": metric.name, "label": metric.label, "system": system,
                                  "worse": metric.worse, "limit": limit, **cell})
    if not cells and any(thresholds.limit(m.name) is not None for m in IDENTITY):
        raise SelfidError("no identity check can run: the two runs share no identity prompt under a shared system "
                          f"prompt (shared system prompts: {', '.join(shared) or 'none'}). Gate runs made with the "
                          "same suite (a held-out audit against a held-out audit), or a model against a baseline")
    limit = thresholds.limit("ner_f1")
    for system in shared:
        if limit is not None and system in reference.ner and system in candidate.ner:
            cell = ner_cell(reference.ner[system], candidate.ner[system])
            if cell["prompts"]:
                cells.append({"metric": "ner_f1", "label": BY_NAME["ner_f1"].label, "system": system, "worse": -1,
                              "limit": limit, **cell})
    if task is not None and thresholds.task_command is not None:
        spec = thresholds.task_command
        cells.append({"metric": "task_command", "label": "task (your command)", "system": None,
                      "worse": -1 if spec.higher_is_better else 1, "limit": spec.max_fall,
                      **task_cell(spec, task["reference"], task["candidate"])})
    tested = [c for c in cells if c.get("p_value") is not None]
    for c, adjusted in zip(tested, holm([c["p_value"] for c in tested])):
        c["p_holm"] = adjusted
    for c in cells:
        _decide(c, alpha, target, max(1, len(tested)))
        c.pop("_tallies", None)
    verdict = max((c["outcome"] for c in cells), key=ORDER.index, default=INCONCLUSIVE)
    return {"verdict": verdict, "cells": cells, "tested": len(tested), "alpha": alpha, "power": target}
