"""`selfid gate`: audit what needs auditing, compare, and give a verdict CI can act on.

A side of the gate is an audit run folder, a baseline file (the reference only), a model with an optional adapter,
or an OpenAI-compatible endpoint (the candidate only). Models and endpoints are audited into the gate's output
folder (`reference/`, `candidate/`; an interrupted gate resumes them) with the reference's grid, or with a
profile's sizes on top of it; with no reference run to copy, the held-out identity probes under the three serving
and three persona system prompts and 2,000 MSRA sentences, at the quick profile's sizes.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

from selfid import __version__
from selfid.audit.backends import open_backend
from selfid.audit.run import AuditParams, audit_systems, run_audit
from selfid.errors import SelfidError
from selfid.gate import tallies as tl
from selfid.gate.plan import Grid, plan, print_plan, profile_grid
from selfid.gate.report import EXIT_CODES, print_result, write_outputs
from selfid.gate.task import run_command
from selfid.gate.thresholds import Thresholds
from selfid.gate.verdict import judge
from selfid.io import atomic_write_json
from selfid.system_prompt import SystemPrompt, sent

FORMAT = 1
# the audit a gate runs when no reference run says which (the study's held-out grid, sized by the quick profile)
NER_SENTENCES = 2000  # MSRA test sentences when neither the reference's grid nor the profile names a count
DEFAULT_AUDIT = {"suites": ["identity-heldout", "ner"], "systems": ["template", "helpful", "empty", "personas"],
                 "task_systems": ["template", "helpful"], "max_new_tokens": 160, "ner_max_new_tokens": 256, "seed": 0}


@dataclass
class Side:
    """One side of a gate."""

    run: Path | None = None
    baseline: Path | None = None
    model: str | None = None
    adapter: Path | None = None
    base_url: str | None = None
    model_name: str | None = None
    api_key: str | None = None

    @classmethod
    def parse(cls, spec: str | None, adapter: Path | None = None, base_url: str | None = None,
              model_name: str | None = None, api_key: str | None = None, flag: str = "--candidate") -> "Side":
        if base_url:
            if spec:
                raise SelfidError(f"give either {flag} or --base-url (an endpoint), not both")
            if adapter:
                raise SelfidError("--adapter is for a model audited in-process; an endpoint serves its own weights")
            if not model_name:
                raise SelfidError("--base-url needs --model-name (the name the endpoint serves)")
            return cls(base_url=base_url, model_name=model_name, api_key=api_key)
        if not spec:
            raise SelfidError(f"{flag} is missing: give an audit run folder, a model (embedded, a folder, a .gguf) "
                              "or, for the candidate, --base-url and --model-name")
        path = Path(spec).expanduser()
        if path.is_dir() and (path / "run.json").is_file():
            if adapter:
                raise SelfidError(f"{spec} is an audit run folder: its adapter was fixed when it ran; drop the adapter flag")
            return cls(run=path)
        if path.is_file() and path.suffix == ".json":
            if adapter:
                raise SelfidError(f"{spec} is a baseline file: drop the adapter flag")
            return cls(baseline=path)
        return cls(model=spec, adapter=adapter)

    @property
    def audited(self) -> bool:
        """Whether the gate must audit this side itself."""
        return self.run is None and self.baseline is None

    def read(self, rescore: bool = False) -> tl.Tallies:
        return tl.read(self.run or self.baseline, rescore=rescore)


def audit_params(reference: tl.Tallies | None, grid: Grid, template_default: str | None = None):
    """The audit a gate runs for a side it audits itself: the reference's grid (its suites, system prompts,
    probes, seed, token limits) at `grid`'s sizes. `template_default`: the audited model's chat template's own
    system prompt (None over HTTP, where it is not known)."""
    if reference is None:
        systems = audit_systems([",".join(DEFAULT_AUDIT["systems"])], template_default)
        base = {k: v for k, v in DEFAULT_AUDIT.items() if k != "systems"}
        own = "auto"
    else:
        base = {k: v for k, v in reference.grid.items() if k != "systems"}
        origin = "the reference run"  # the same texts under the same names, so the two runs pair by system prompt
        systems = {name: (SystemPrompt(kind="adapter", message=s["text"], origin=origin,
                                       effective=template_default if s["text"] is None else s["text"])
                          if name == "adapter" else sent(s["text"], template_default, origin))
                   for name, s in reference.systems.items()}
        own = reference.own
    base.update(temperatures=list(grid.temperatures), samples=grid.samples, own=own)
    # a grid without the ner suite may name no sentence count; the audit still wants one
    base["ner_limit"] = grid.ner_limit or base.get("ner_limit") or NER_SENTENCES
    known = AuditParams.__dataclass_fields__
    return AuditParams(systems=systems, **{k: v for k, v in base.items() if k in known and k != "systems"})


def _grid(recorded: tl.Tallies | None, profile: str | None, samples: int | None,
          temperatures: list[float] | None) -> Grid:
    if recorded is None:
        return profile_grid(None, profile or "quick", samples, temperatures)
    # the MSRA sentences of a run are drawn for its own count: another count would ask other sentences
    had = Grid.of(recorded.grid)
    grid = profile_grid(had, profile, samples, temperatures)
    return Grid(grid.temperatures, grid.samples, had.ner_limit)


def _audit(side: Side, reference: tl.Tallies | None, grid: Grid, out: Path, device: str, dtype: str,
           batch_size: int | None) -> tl.Tallies:
    """Audit `side` with `reference`'s grid (None: the default one) at `grid`'s sizes, into `out`."""
    backend, loaded = open_backend(side.model, side.adapter, side.base_url, side.model_name, side.api_key,
                                   device=device, dtype=dtype, batch_size=batch_size)
    params = audit_params(reference, grid, None if loaded is None else loaded.chat.default_system)
    run_audit(backend, params, out, resume=(out / "run.json").is_file(), margin=False)  # the gate reads no margin
    return tl.from_run(out)


def _side_info(t: tl.Tallies) -> dict:
    target = t.target or {}
    return {"source": t.source, "kind": t.kind, "label": t.label, "model": target.get("model"),
            "adapter": target.get("adapter"), "base_url": target.get("base_url"), "own": t.own,
            "template_hash": t.template_hash, "scorer": t.scorer, "probes_sha256": t.probes_sha256,
            "prompts": len(t.probes), "run": t.run}


def _task(thresholds: Thresholds, side: str, t: tl.Tallies) -> dict:
    spec = thresholds.task_command
    if t.task is not None:
        return t.task
    if side == "reference" and spec.reference_value is not None:
        return {"value": spec.reference_value, "stderr": spec.reference_stderr}
    if t.kind == "baseline":
        raise SelfidError(f"the baseline {t.source} records no task number: give task_command.reference_value in the "
                          "thresholds, or write the baseline again with task_command set")
    t.task = run_command(spec.command, side, t.target, t.source)
    return t.task


def write_baseline(reference: Side, path: Path, thresholds: Thresholds, out: Path | None = None,
                   profile: str | None = None, samples: int | None = None, temperatures: list[float] | None = None,
                   device: str = "auto", dtype: str = "auto", batch_size: int | None = None) -> dict:
    """Store the reference's per-prompt tallies (auditing it first when it is a model) as a baseline file."""
    tl.check_baseline_target(path)
    if reference.baseline is not None:
        raise SelfidError(f"{reference.baseline} is a baseline already: write one from an audit run folder or a model")
    if reference.base_url:
        raise SelfidError("a baseline is written from an audit run folder or a model: audit the endpoint first "
                          "(`selfid audit --base-url ...`) and give its run folder")
    if reference.audited:
        if out is None:
            raise SelfidError("the reference is a model: give --out, the folder its audit is written to")
        tallies = _audit(reference, None, _grid(None, profile, samples, temperatures), Path(out) / "reference",
                         device, dtype, batch_size)
    else:
        tallies = reference.read()
    if thresholds.task_command is not None:
        _task(thresholds, "reference", tallies)
    return tl.write_baseline(tallies, path)


def plan_gate(reference: Side, thresholds: Thresholds, profile: str | None = None, samples: int | None = None,
              temperatures: list[float] | None = None, out: Path | None = None, rescore: bool = False,
              print_it: bool = True) -> dict:
    """The plan (selfid.gate.plan) from the reference's recorded per-prompt rates, for the reference's grid or a
    profile's, with --samples / --temperatures on top; nothing is generated."""
    if reference.audited:
        raise SelfidError("--plan reads the reference's per-prompt rates: give its audit run folder or baseline file "
                          "(audit the model first with `selfid audit --suites identity-heldout,ner ...`)")
    tallies = reference.read(rescore)
    result = plan(tallies, thresholds, profile_grid(Grid.of(tallies.grid), profile, samples, temperatures))
    if print_it:
        print_plan(result)
    if out is not None:
        atomic_write_json(Path(out) / "plan.json", result)
    return result


def gate(reference: Side, candidate: Side, thresholds: Thresholds, out: Path, profile: str | None = None,
         samples: int | None = None, temperatures: list[float] | None = None, rescore: bool = False,
         device: str = "auto", dtype: str = "auto", batch_size: int | None = None, print_it: bool = True) -> dict:
    """Audit what needs it, judge the candidate against the reference, write gate.json, junit.xml and summary.md
    into `out`; return the result (its "exit_code": 0 pass, 1 regression, 2 inconclusive)."""
    if candidate.baseline is not None:
        raise SelfidError(f"the candidate {candidate.baseline} is a baseline file: a baseline is a reference; give "
                          "the candidate as an audit run folder, a model or an endpoint")
    if reference.base_url:
        raise SelfidError("the reference cannot be an endpoint here: audit it first (`selfid audit --base-url ...`) "
                          "and give its run folder")
    out = Path(out)
    ref = None if reference.audited else reference.read(rescore)
    cand = None if candidate.audited else candidate.read()
    recorded = ref or cand  # the run whose grid the gate's own audits follow
    grid = _grid(recorded, profile, samples, temperatures)
    if ref is None:
        ref = _audit(reference, recorded, grid, out / "reference", device, dtype, batch_size)
    if cand is None:
        cand = _audit(candidate, ref, grid, out / "candidate", device, dtype, batch_size)
    warnings = tl.check_comparable(ref, cand)
    task = None
    if thresholds.task_command is not None:
        task = {"reference": _task(thresholds, "reference", ref), "candidate": _task(thresholds, "candidate", cand)}
    judged = judge(ref, cand, thresholds, task)
    if not judged["cells"]:
        raise SelfidError("nothing to judge: the runs share no metric under a system prompt the thresholds keep "
                          "(check `systems` and that both runs audited an identity suite)")
    verdict = judged["verdict"]
    result = {"kind": "selfid-gate", "format": FORMAT, "selfid": __version__,
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "verdict": verdict, "exit_code": EXIT_CODES[verdict],
              "reference": _side_info(ref), "candidate": _side_info(cand), "grid": Grid.of(cand.grid).describe(),
              "thresholds": thresholds.as_dict(), "alpha": judged["alpha"], "power": judged["power"],
              "cells_tested": judged["tested"], "warnings": warnings, "cells": judged["cells"]}
    cand_grid = Grid.of(cand.grid)
    write_outputs(result, out, cand_grid)
    if print_it:
        print_result(result, cand_grid)
    return result
