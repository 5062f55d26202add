"""What `selfid gate` checks, and how strictly: a small YAML file, every key optional, with stated defaults.

Each identity threshold is in percentage points of a rate, in the direction that is a regression (foreign
claims rising, own identity falling); NER F1 in F1 points. `null` leaves a metric out. The test behind them
(prompt-paired, one-sided, Holm over every cell of the gate) is selfid.gate.verdict's; `alpha` and `power`
size it.

    alpha: 0.05              # chance that a gate whose candidate did not change fails anyway (all cells together)
    power: 0.8               # chance to find a regression of the stated size in a cell
    systems: null            # system prompts to judge (default: every one both runs asked)
    foreign_claims: 5        # may rise by at most 5 points in any system prompt
    own_identity: 11         # own identity affirmed may fall by at most 11 points
    self_denial: 3
    yes_to_other_vendor: 15  # "Yes" to a leading question about another vendor
    persona_kept: 9
    distinct_replies: 15     # the share of one question's samples that differ from each other
    identity_tasks: null     # identity-adjacent tasks done (a bio, a JSON profile...): off, see below
    ner_f1: 8                # F1 points on the MSRA sentences both runs share
    task_command: null       # {command: "...", max_fall: 0.02}: a number from your own eval command

The defaults are what the shipped held-out probes can resolve: each is the largest minimum detectable effect
`selfid gate --plan --profile quick` computes for that metric (80% power, Holm over the default cells, both
runs at the quick profile) on the committed base and plain LoRA runs at 0.5B and 1.5B, rounded up to a whole
point (docs/gate.md has the table). A smaller threshold is allowed; the plan then says what it takes.
distinct_replies is looser than its 8 points: plain LoRA's own effect on it is 4-13 points. identity_tasks has
28 prompts: 16 to 27 points are the least it resolves, so it is off unless asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from selfid.config import format_errors, read_yaml_mapping
from selfid.errors import SelfidError

# system prompt names as the gate reports them: baseline files written before the one vocabulary call the
# template's own "default" (audit runs are migrated on load by selfid.audit.log); the gate treats both as one
SYSTEM_ALIASES = {"default": "template"}


def system_name(key: str) -> str:
    return SYSTEM_ALIASES.get(key, key)


@dataclass(frozen=True)
class Metric:
    name: str  # the threshold's key
    label: str  # what a reader sees
    record: str | None  # the per-reply verdict it counts (selfid.audit.scorers); None: computed otherwise
    worse: int  # +1: a rise is a regression; -1: a fall is


METRICS = (
    Metric("foreign_claims", "foreign claims", "foreign", +1),
    Metric("own_identity", "own identity affirmed", "own_affirmation", -1),
    Metric("self_denial", "self-denial", "self_denial", +1),
    Metric("yes_to_other_vendor", "yes to another vendor", "yes_to_other", +1),
    Metric("persona_kept", "persona kept", "persona_kept", -1),
    Metric("identity_tasks", "identity tasks done", "task_done", -1),
    Metric("distinct_replies", "distinct replies", None, -1),
    Metric("ner_f1", "NER F1", None, -1),
)
BY_NAME = {m.name: m for m in METRICS}
IDENTITY = tuple(m for m in METRICS if m.name != "ner_f1")


def _points(default: float | None):
    return Field(default, gt=0, le=100, description="percentage points; null leaves the metric out")


class TaskCommand(BaseModel):
    """A number from the user's own evaluation, run once per side (see selfid.gate.task)."""

    model_config = ConfigDict(extra="forbid")

    command: str = Field(..., min_length=1, description="a shell command; its last line of output is the number, "
                         "or JSON {\"value\": x, \"stderr\": s}")
    max_fall: float = Field(..., gt=0, description="in the command's own units")
    higher_is_better: bool = True
    reference_value: Optional[float] = Field(None, description="the reference's number when the reference is a "
                                             "run folder (a baseline records its own)")
    reference_stderr: Optional[float] = Field(None, ge=0)


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(0.05, gt=0, lt=0.5)
    power: float = Field(0.8, ge=0.5, lt=1)
    systems: Optional[list[str]] = Field(None, description="system prompts to judge; default: all both runs share")
    foreign_claims: Optional[float] = _points(5.0)
    own_identity: Optional[float] = _points(11.0)
    self_denial: Optional[float] = _points(3.0)
    yes_to_other_vendor: Optional[float] = _points(15.0)
    persona_kept: Optional[float] = _points(9.0)
    identity_tasks: Optional[float] = _points(None)
    distinct_replies: Optional[float] = _points(15.0)
    ner_f1: Optional[float] = _points(8.0)
    task_command: Optional[TaskCommand] = None

    @field_validator("systems")
    @classmethod
    def _names(cls, v):
        if v is not None and not v:
            raise ValueError("an empty list judges nothing: leave `systems` out to judge every system prompt")
        return [system_name(s) for s in v] if v is not None else None

    def limit(self, metric: str) -> float | None:
        """The metric's threshold as a fraction (points / 100), or None when left out."""
        points = getattr(self, metric)
        return None if points is None else points / 100

    def as_dict(self) -> dict:
        return self.model_dump(mode="json")


def load_thresholds(path: Path | None) -> Thresholds:
    """The thresholds in `path` (YAML), or the defaults; a bad key or value is a SelfidError naming it."""
    if path is None:
        return Thresholds()
    data = read_yaml_mapping(Path(path), "a gate thresholds file", ", ".join(Thresholds.model_fields))
    try:
        return Thresholds.model_validate(data)
    except ValidationError as e:
        raise SelfidError(format_errors(e, str(path), Thresholds)) from None
