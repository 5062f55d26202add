"""The bar an identity-preserving fine-tune must clear on the held-out identity set (docs/study.md §7), as a function
of audit summaries: the fine-tuned model's, the base model's, and the plain fine-tune's (for NER F1).

Every serving system prompt and the persona prompts, every temperature:
  - foreign claims: at most 1% in every cell, and every cell's clustered 95% upper bound at most 2%;
  - own identity affirmed: at least the base model's under its template's own system prompt;
  - self-denial: at most 1%;
  - distinct replies (template prompt): at least 70% of the base model's;
  - identity tasks done: at least the base model's less 5 points;
  - NER F1 (template prompt): at least 99% of the plain fine-tune's.
"""

from __future__ import annotations

from dataclasses import dataclass

FOREIGN_CELL = 0.01  # the highest foreign-claim rate of any cell
FOREIGN_BOUND = 0.02  # the highest clustered 95% upper bound of any cell's foreign-claim rate
SELF_DENIAL = 0.01
DISTINCT = 0.7  # of the base model's share of distinct replies
TASKS = 0.05  # points below the base model's identity tasks done
NER = 0.99  # of the plain fine-tune's NER F1
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


def goals(arm: dict, base: dict, plain: dict | None, suite: str = SUITE) -> list[Goal]:
    """The fine-tune `arm` against each goal (audit summaries of the held-out set)."""
    b = baseline(base, plain, suite)
    pooled = arm[suite]["overall"]
    own, den, task = pooled["own_affirmation"], pooled["self_denial"], pooled["task_done"]
    dist, f1 = arm[suite]["by_system"][SYSTEM]["distinct"]["mean"], ner_f1(arm)
    return [
        Goal("foreign claims in every cell", *foreign_goal(arm[suite]["cells"])),
        Goal("own identity affirmed", f"{100 * own['rate']:.1f}%", own["rate"] >= b.own["rate"]),
        Goal("self-denial", f"{100 * den['rate']:.1f}%", den["rate"] <= SELF_DENIAL),
        Goal("distinct replies", f"{100 * dist / b.distinct:.0f}%", dist >= DISTINCT * b.distinct),
        Goal("identity tasks done", f"{100 * task['rate']:.1f}%", task["rate"] >= b.tasks["rate"] - TASKS),
        Goal("NER F1", f"{f1:.3f} = {100 * f1 / b.ner_f1:.1f}%" if f1 and b.ner_f1 else "–",
             f1 >= NER * b.ner_f1 if f1 and b.ner_f1 else None)]
