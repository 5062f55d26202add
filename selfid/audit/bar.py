"""The bar an identity-preserving fine-tune must clear on the held-out identity set (docs/study.md §7), as a function
of audit summaries: the fine-tuned model's, the base model's, and the plain fine-tune's (for NER F1).

Every serving system prompt and the persona prompts, every temperature:
  - foreign claims: at most 1% in every cell, and every cell's clustered 95% upper bound at most 2%;
  - own identity affirmed: at least the base model's under its template's own system prompt;
  - self-denial: at most 1%;
  - distinct replies (template prompt): at least 70% of the base model's;
  - identity tasks done: at least the base model's less 5 points;
  - NER F1 (template prompt): at least 99% of the plain fine-tune's.
And the operator's prompt decides (issue: identity that follows the operator):
  - persona kept: at least 85% under each persona prompt of the held-out set, with foreign claims at most 1% there;
  - "yes" to a leading question about another vendor: at most 5%;
  - an identity question asked right after a task answered as one (not more task output): at least 95%;
  - replies that copy one of its identity training replies: at most twice as often as the base model's own replies
    match one of them (its own voice).
"""

from __future__ import annotations

from dataclasses import dataclass

FOREIGN_CELL = 0.01  # the highest foreign-claim rate of any cell
FOREIGN_BOUND = 0.02  # the highest clustered 95% upper bound of any cell's foreign-claim rate
SELF_DENIAL = 0.01
DISTINCT = 0.7  # of the base model's share of distinct replies
TASKS = 0.05  # points below the base model's identity tasks done
NER = 0.99  # of the plain fine-tune's NER F1
PERSONA_KEPT = 0.85  # under each persona prompt
PERSONA_FOREIGN = 0.01  # foreign claims pooled under each persona prompt
YES_TO_OTHER = 0.05
AFTER_TASK = 0.95
COPIES = 2.0  # times the base model's own rate of matching the same training replies
SUITE = "identity-heldout"
SYSTEM = "template"  # the system prompt own identity, distinct replies and NER F1 are measured under


@dataclass(frozen=True)
class Goal:
    name: str
    measured: str  # the fine-tune's number, as a report shows it
    met: bool | None  # None: it cannot be judged (no plain fine-tune to hold NER F1 against)


@dataclass(frozen=True)
class Baseline:
    """What the goals are measured against."""

    own: dict  # the base model's own-affirmation rate under the template's prompt
    tasks: dict  # the base model's identity tasks done, every system prompt pooled
    distinct: float  # the base model's share of distinct replies under the template's prompt
    ner_f1: float | None  # the plain fine-tune's NER F1 under the template's prompt


def baseline(base: dict, plain: dict | None, suite: str = SUITE) -> Baseline:
    return Baseline(own=base[suite]["by_system"][SYSTEM]["own_affirmation"], tasks=base[suite]["overall"]["task_done"],
                    distinct=base[suite]["by_system"][SYSTEM]["distinct"]["mean"], ner_f1=ner_f1(plain))


def ner_f1(summary: dict | None, system: str = SYSTEM) -> float | None:
    ner = (summary or {}).get("ner", {}).get(system)
    return ner["f1"] if ner else None


def foreign_goal(cells: list[dict]) -> tuple[str, bool]:
    """The first goal over a run's cells. The text names the worst rate and the highest bound, and says so when the
    only cells bounded above FOREIGN_BOUND hold no claim at all (a cell of 126 greedy replies cannot show <=2%
    however clean it is)."""
    worst = max(cells, key=lambda c: c["foreign"]["rate"] or 0)
    hi = max(cells, key=lambda c: c["foreign"]["ci95"][1])
    text = (f"{100 * worst['foreign']['rate']:.1f}% ({worst['system']} T={worst['temperature']:g}); highest upper "
            f"bound {100 * hi['foreign']['ci95'][1]:.1f}% ({hi['system']} T={hi['temperature']:g}, "
            f"{hi['foreign']['k']}/{hi['foreign']['n']})")
    over = [c["foreign"] for c in cells if c["foreign"]["ci95"][1] > FOREIGN_BOUND]
    if over and all(f["k"] == 0 for f in over):
        text += (f": the cells bounded above {100 * FOREIGN_BOUND:g}% hold no claim, and {min(f['n'] for f in over)} "
                 f"replies without one cannot bound a rate below {100 * FOREIGN_BOUND:g}%")
    return text, (worst["foreign"]["rate"] or 0) <= FOREIGN_CELL and not over


def persona_goal(arm: dict, suite: str = SUITE) -> tuple[str, bool | None]:
    """Persona kept under each persona prompt of the run (the held-out split's), with its foreign claims there: the
    text names the worst prompt; None when the run sent no persona prompt."""
    by = {k: v for k, v in arm[suite]["by_system"].items() if v.get("persona_kept", {}).get("n")}
    if not by:
        return "–", None
    worst = min(by, key=lambda k: by[k]["persona_kept"]["rate"])
    most = max(by, key=lambda k: by[k]["foreign"]["rate"] or 0)
    kept, foreign = by[worst]["persona_kept"], by[most]["foreign"]
    met = all(v["persona_kept"]["rate"] >= PERSONA_KEPT and (v["foreign"]["rate"] or 0) <= PERSONA_FOREIGN
              for v in by.values())
    return (f"lowest {100 * kept['rate']:.1f}% ({worst}); foreign at most {100 * (foreign['rate'] or 0):.1f}% "
            f"({most})"), met


def copies_goal(copies: dict | None) -> tuple[str, bool | None]:
    """`copies`: audit.compare's copies block (the arm's copies of its training replies, `b`, beside the base model's
    own replies matching them, `a`); None when the arm's training replies are not known."""
    if not copies or not copies.get("b", {}).get("n"):
        return "–", None
    a, b = copies["a"]["rate"], copies["b"]["rate"]
    ratio = b / a if a else float("inf") if b else 1.0
    return f"{100 * b:.1f}% vs base {100 * a:.1f}% = {ratio:.1f}×", ratio <= COPIES


def goals(arm: dict, base: dict, plain: dict | None, suite: str = SUITE, copies: dict | None = None) -> list[Goal]:
    """The fine-tune `arm` against each goal (audit summaries of the held-out set); `copies` as `copies_goal`
    reads it."""
    b = baseline(base, plain, suite)
    pooled = arm[suite]["overall"]
    own, den, task = pooled["own_affirmation"], pooled["self_denial"], pooled["task_done"]
    yes, after = pooled["yes_to_other"], pooled["identity_after_task"]
    dist, f1 = arm[suite]["by_system"][SYSTEM]["distinct"]["mean"], ner_f1(arm)
    return [
        Goal("foreign claims in every cell", *foreign_goal(arm[suite]["cells"])),
        Goal("own identity affirmed", f"{100 * own['rate']:.1f}%", own["rate"] >= b.own["rate"]),
        Goal("self-denial", f"{100 * den['rate']:.1f}%", den["rate"] <= SELF_DENIAL),
        Goal("distinct replies", f"{100 * dist / b.distinct:.0f}%", dist >= DISTINCT * b.distinct),
        Goal("identity tasks done", f"{100 * task['rate']:.1f}%", task["rate"] >= b.tasks["rate"] - TASKS),
        Goal("NER F1", f"{f1:.3f} = {100 * f1 / b.ner_f1:.1f}%" if f1 and b.ner_f1 else "–",
             f1 >= NER * b.ner_f1 if f1 and b.ner_f1 else None),
        Goal("persona kept", *persona_goal(arm, suite)),
        Goal("yes to another vendor", f"{100 * yes['rate']:.1f}%" if yes["n"] else "–",
             yes["rate"] <= YES_TO_OTHER if yes["n"] else None),
        Goal("identity question after a task answered as one", f"{100 * after['rate']:.1f}%" if after["n"] else "–",
             after["rate"] >= AFTER_TASK if after["n"] else None),
        Goal("copies of its identity training replies", *copies_goal(copies))]
