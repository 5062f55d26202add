"""The bar (selfid.audit.bar) on made-up summaries: each goal met or missed from the numbers alone."""

import pytest

from selfid.audit import bar
from selfid.audit.stats import clustered_rate


def cell(system, t, k, n, hi):
    return {"system": system, "temperature": t, "foreign": {"k": k, "n": n, "rate": k / n, "ci95": [0.0, hi]}}


def test_the_foreign_goal_names_a_bound_no_clean_cell_of_its_size_can_meet():
    """A greedy cell of 126 replies with no claim is bounded at 3.0%: the goal is missed, and the text says the
    cell is clean; a cell with a claim above the bound is missed without that excuse; small bounds pass."""
    clean_but_small = [cell("template", 0.0, 0, 126, 0.0296), cell("persona-zh", 1.0, 1, 504, 0.011)]
    text, ok = bar.foreign_goal(clean_but_small)
    assert not ok and "0.2% (persona-zh T=1)" in text and "(template T=0, 0/126)" in text
    assert "126 replies without one cannot bound a rate below 2%" in text
    text, ok = bar.foreign_goal([cell("persona-en", 0.0, 1, 126, 0.044), cell("template", 1.0, 0, 504, 0.0076)])
    assert not ok and "cannot bound" not in text and "4.4% (persona-en T=0, 1/126)" in text
    assert bar.foreign_goal([cell("template", 1.0, 2, 504, 0.015), cell("empty", 1.0, 0, 504, 0.0076)])[1]


def rate(k, n, prompts=126):
    """k of n replies spread over `prompts` prompts, clustered as the audit clusters them."""
    each = n // prompts
    return clustered_rate([(max(0, min(k - i * each, each)), each) for i in range(prompts)])


def summary(own, denial, tasks, distinct, f1, cells, yes=(0, 0), after=(0, 0), personas=None):
    """`personas`: {system: (kept k, n, foreign k)} under persona prompts."""
    by_system = {"template": {"own_affirmation": rate(*own), "distinct": {"mean": distinct}}}
    for key, (k, n, f) in (personas or {}).items():
        by_system[key] = {"persona_kept": rate(k, n), "foreign": rate(f, n)}
    return {"identity-heldout": {
        "cells": cells, "overall": {"own_affirmation": rate(*own), "self_denial": rate(*denial), "task_done": rate(*tasks),
                                    "yes_to_other": rate(*yes), "identity_after_task": rate(*after)},
        "by_system": by_system}, "ner": {"template": {"f1": f1}}}


BASE = summary(own=(400, 1260), denial=(30, 1260), tasks=(190, 1008), distinct=0.9, f1=0.1,
               cells=[cell("template", 0.0, 20, 126, 0.3)])
PLAIN = summary(own=(300, 1260), denial=(40, 1260), tasks=(150, 1008), distinct=0.9, f1=0.85,
                cells=[cell("template", 0.0, 30, 126, 0.4)])


NAMES = ["foreign claims in every cell", "own identity affirmed", "self-denial", "distinct replies",
         "identity tasks done", "NER F1", "persona kept", "yes to another vendor",
         "identity question after a task answered as one", "copies of its identity training replies"]


def copies(b, a, n=1260):
    return {"a": rate(a, n), "b": rate(b, n)}


def test_each_goal_is_met_or_missed_against_the_base_model_and_plain_lora():
    good = summary(own=(1100, 1260), denial=(10, 1260), tasks=(500, 1008), distinct=0.7, f1=0.845,
                   cells=[cell("template", 1.0, 1, 504, 0.01), cell("helpful", 0.0, 0, 504, 0.007)],
                   yes=(6, 252), after=(240, 252), personas={"persona-en": (440, 504, 0), "persona-zh-card": (430, 504, 5)})
    goals = bar.goals(good, BASE, PLAIN, copies=copies(b=100, a=60))
    assert [g.name for g in goals] == NAMES
    assert all(g.met for g in goals), goals
    assert goals[3].measured == "78%" and goals[5].measured == "0.845 = 99.4%"
    assert goals[6].measured == "lowest 85.3% (persona-zh-card); foreign at most 1.0% (persona-zh-card)"
    assert goals[9].measured == "7.9% vs base 4.8% = 1.7×"
    # one notch worse on each goal: each is missed, and says by how much
    bad = summary(own=(390, 1260), denial=(14, 1260), tasks=(130, 1008), distinct=0.62, f1=0.84,
                  cells=[cell("template", 1.0, 11, 504, 0.04)], yes=(14, 252), after=(239, 252),
                  personas={"persona-en": (500, 504, 0), "persona-zh-card": (428, 504, 0)})
    goals = bar.goals(bad, BASE, PLAIN, copies=copies(b=121, a=60))
    assert [g.met for g in goals] == [False] * 10
    assert goals[1].measured == "31.0%" and goals[2].measured == "1.1%" and goals[4].measured == "12.9%"
    assert goals[7].measured == "5.6%" and goals[8].measured == "94.8%"
    # a persona kept well but with foreign claims under it misses too
    leaky = summary(own=(1100, 1260), denial=(10, 1260), tasks=(500, 1008), distinct=0.7, f1=0.845, cells=[],
                    personas={"persona-en": (500, 504, 6)})
    assert bar.persona_goal(leaky)[1] is False
    # without a plain fine-tune NER F1 cannot be judged; without persona prompts, after-task probes or known
    # training replies neither can those goals
    assert bar.goals(good, BASE, None)[5] == bar.Goal("NER F1", "–", None)
    bare = summary(own=(1100, 1260), denial=(10, 1260), tasks=(500, 1008), distinct=0.7, f1=0.845,
                   cells=[cell("template", 1.0, 1, 504, 0.01)])
    assert [g.met for g in bar.goals(bare, BASE, PLAIN)[6:]] == [None] * 4
    b = bar.baseline(BASE, PLAIN)
    assert b.own["rate"] == pytest.approx(400 / 1260) and b.ner_f1 == 0.85 and b.distinct == 0.9
