"""`selfid gate` on the study's committed runs (no model): the three verdicts the issue asks for, and simulated gates
at the size the plan asks for.

The runs (docs/study.md, "How these runs were made"): the held-out audits (126 prompts no training-data generator
uses; the three serving and three persona system prompts; T 0, 0.7, 1.0, 1.3 with 4 samples above 0; 500 MSRA
sentences under the template and helpful prompts) of
  results/study-0.5b/base/heldout    the base model, Qwen2.5-Coder-0.5B-Instruct
  results/study-0.5b/plain/heldout   plain LoRA, trained under "You are a helpful assistant." as in the report
  results/study-0.5b/combo/heldout   the v1 templated arm: "template prompt + 5% identity replay (v1, templated)"
                                     (bench/study.py's `combo`: trained under the template's own prompt)
  results/study-1.5b/base/heldout    the base model at 1.5B
  results/study-1.5b/pairs/heldout   the recommended arm at 1.5B: "v2 balanced replay, minimal pairs + preference"
"""

from pathlib import Path

import numpy as np

from selfid.gate import power as pw
from selfid.gate.plan import Grid, plan
from selfid.gate.tallies import Tallies, read
from selfid.gate.thresholds import IDENTITY, Thresholds
from selfid.gate.verdict import judge

RESULTS = Path(__file__).resolve().parents[1] / "results"
_cache: dict[str, Tallies] = {}


def run(name: str) -> Tallies:
    if name not in _cache:
        _cache[name] = read(RESULTS / name)
    return _cache[name]


def outcomes(result: dict) -> dict[tuple[str, str], str]:
    return {(c["metric"], c["system"]): c["outcome"] for c in result["cells"]}


def regressed(result: dict) -> set[tuple[str, str]]:
    return {k for k, v in outcomes(result).items() if v == "regression"}


def test_plain_lora_passes_at_0_5b_its_known_rise_inside_the_default_threshold():
    result = judge(run("study-0.5b/base/heldout"), run("study-0.5b/plain/heldout"), Thresholds())
    assert result["verdict"] == "pass", [(c["metric"], c["system"], c["outcome"]) for c in result["cells"]]
    assert result["tested"] == len(result["cells"]) == 31  # 6 foreign, 4 own, 4 denial, 6 yes, 3 persona, 6 distinct, 2 NER
    foreign = {c["system"]: c for c in result["cells"] if c["metric"] == "foreign_claims"}
    # the known rise under an empty system prompt (a couple of points, more prompts up than down): real-looking but
    # not significant, and a 5-point rise is ruled out at the power level
    empty = foreign["empty"]
    assert 0.01 < empty["harm"] < 0.03 and empty["p_holm"] > 0.05
    assert empty["power_bound"] < empty["limit"]


def test_the_v1_templated_arm_fails_on_self_denial_and_distinct_replies():
    result = judge(run("study-0.5b/base/heldout"), run("study-0.5b/combo/heldout"), Thresholds())
    assert result["verdict"] == "regression"
    bad = regressed(result)
    assert {m for m, _ in bad} == {"self_denial", "distinct_replies"}
    # self-denial is asked under the prompts that name no persona; it rose by ~8 points under each
    assert {s for m, s in bad if m == "self_denial"} == {"template", "helpful", "empty", "persona-task"}
    assert {s for m, s in bad if m == "distinct_replies"} == {"template", "helpful", "empty", "persona-zh",
                                                               "persona-en", "persona-task"}
    # what it was built for, it did: foreign claims fell everywhere
    assert all(o == "pass" for (m, _), o in outcomes(result).items() if m == "foreign_claims")


def test_the_recommended_arm_at_1_5b_passes_the_studys_bar_but_not_persona_kept_or_distinct_replies():
    """The issue expected a pass. The gate checks two things the study's bar did not: under the named persona
    prompts (a shop's 小智, a bank's Max) the arm answers as Qwen instead of the persona 15 and 22 points more
    often, and its samples of one question are 21-28 points less distinct. Both are real (Holm p < 1e-5), so the
    gate fails it; everything the study's bar measured passes."""
    result = judge(run("study-1.5b/base/heldout"), run("study-1.5b/pairs/heldout"), Thresholds())
    assert result["verdict"] == "regression"
    assert regressed(result) == {("persona_kept", "persona-zh"), ("persona_kept", "persona-en")} | {
        ("distinct_replies", s) for s in ("template", "helpful", "empty", "persona-zh", "persona-en", "persona-task")}
    studied = ("foreign_claims", "own_identity", "self_denial", "yes_to_other_vendor", "ner_f1")
    assert all(o == "pass" for (m, _), o in outcomes(result).items() if m in studied)
    cells = {(c["metric"], c["system"]): c for c in result["cells"]}
    assert cells[("persona_kept", "persona-en")]["p_holm"] < 1e-5
    # the same gate with persona prompts out of scope and distinct replies not checked passes
    scoped = Thresholds(systems=["template", "helpful", "empty"], distinct_replies=None)
    assert judge(run("study-1.5b/base/heldout"), run("study-1.5b/pairs/heldout"), scoped)["verdict"] == "pass"


# --- simulated gates at the planned size ---------------------------------------------------------------------
# How a typical fine-tune's prompts move apart from its base model's beyond sampling noise, for foreign claims:
# the median bench/gate_interaction.py measured on the committed runs (the plan sizes with the upper quartile).
TYPICAL_INTERACTION = 0.088
FOREIGN_ONLY = {m.name: None for m in IDENTITY if m.name != "foreign_claims"} | {"ner_f1": None}


def _simulated(base: dict[str, np.ndarray], regressed_system: str | None, effect: float, prompts: int, replies: int,
               rng) -> tuple[Tallies, Tallies]:
    """A reference and a candidate run of `prompts` prompts drawn from the committed run's per-prompt rates (a probe
    set of the same kind, as large as the plan asks), `replies` per prompt; the candidate's rates are the
    reference's moved by `effect` under one system prompt, each prompt off by the typical interaction."""
    sides = ({}, {})
    for system, rates in base.items():
        p = rng.choice(rates, prompts)
        q = pw.spread(p, effect, +1) if system == regressed_system else p
        var = TYPICAL_INTERACTION * (p * (1 - p) + q * (1 - q)) / 2
        inner = (q > 0) & (q < 1) & (var > 0)
        total = np.where(inner, q * (1 - q) / np.where(inner, var, 1) - 1, 1)  # Beta(a, b) with this mean and variance
        c = np.where(inner, rng.beta(np.where(inner, q * total, 1), np.where(inner, (1 - q) * total, 1)), q)
        for side, truth in zip(sides, (p, c)):
            side[system] = {f"p{i}": [int(k), replies] for i, k in enumerate(rng.binomial(replies, truth))}
    return tuple(Tallies(label=name, source=name, kind="run", own="qwen", template_hash=None, scorer=3, grid={},
                         systems={s: {} for s in base}, probes={}, rates={"foreign_claims": side})
                 for name, side in zip(("reference", "candidate"), sides))


def test_simulated_gates_at_the_planned_size_catch_a_3_point_regression_and_pass_no_change():
    """The issue's check: 3 points more foreign claims, spread over the prompts of one system prompt, caught in at
    least 80% of 200 simulated gates at the size the plan asks for, and no change passed in at least 95%. The gate:
    foreign claims under the six system prompts of the committed 0.5B base run, threshold 3 points."""
    reference = run("study-0.5b/base/heldout")
    thresholds = Thresholds(foreign_claims=3, **FOREIGN_ONLY)
    grid = Grid.of(reference.grid)
    sized = plan(reference, thresholds, grid, device="cpu")
    assert sized["cells_tested"] == 6
    # at 126 prompts no number of samples reaches 80% for every cell (the prompts disagree more than sampling
    # noise): the plan asks for more prompts like these
    binding = max(sized["cells"], key=lambda c: c["prompts_needed"])
    prompts = binding["prompts_needed"]
    assert 126 < prompts < 1000 and sized["samples_cannot"]
    base = {s: np.array([k / n for k, n in t.values()]) for s, t in reference.rates["foreign_claims"].items()}
    rng = np.random.default_rng(0)
    verdicts = {}
    for effect in (0.0, 0.03):
        verdicts[effect] = [judge(*_simulated(base, binding["system"], effect, prompts, grid.replies, rng),
                                  thresholds)["verdict"] for _ in range(200)]
    caught = verdicts[0.03].count("regression") / 200
    passed = verdicts[0.0].count("pass") / 200
    assert caught >= 0.80, caught
    assert passed >= 0.95, passed
