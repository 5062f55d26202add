"""The study's steps as stages of selfid.pipeline.stages, in one study folder (`selfid study run`).

A step runs the stages it needs first (heldout-plain trains plain when it is not trained yet), a finished stage is
skipped (ROOT/stages/NAME.json records it), a stage whose inputs changed runs again, and a run cut off continues
where it stopped. The study folder's layout, the same at every scale and for `selfid demo`:

    study.json            the scale and the model the folder is made at (a rerun must use the same)
    probes/identity.jsonl the development probes, where the scale names a subset of them
    base/audit            the base model on the development set     base/heldout   ... on the held-out set
    ARM/train             the arm's training run (adapter, metrics)  ARM/cost.json  its cost
    ARM/audit             the arm on the development set             ARM/heldout    ... on the held-out set
    ARM/compare           base vs the arm: comparison.json, report.html (the verdict on top)
    plain/margins.json    the identity margin along plain's training
    scale/                the plain adapter's LoRA scale searched; scan/scan.json: `selfid scan` of plain's data
    parity/, gguf/        the runtime comparisons (selfid api, llama.cpp, the exported GGUF)

Steps (ARM: an arm of selfid/study/arms.yaml):
  base          the base model's development-set audit
  ARM           train ARM, audit it, compare it with the base model (plain: also the margin along training)
  train-ARM     train only
  heldout-ARM   the held-out audit of ARM (or of base)
  scale         search the plain adapter's LoRA scale, audit and compare it
  scan          `selfid scan` of what plain trained on
  parity        the base model's development identity grid through `selfid api` over HTTP
  llamacpp      the base model through llama.cpp's own server on its GGUF (`pip install xllamacpp`)
  gguf-ARM      what ships: ARM exported as a Q8_0 GGUF and audited through llama.cpp, beside inproc-ARM
  inproc-ARM, export-ARM   one side each of gguf-ARM: the in-process audit needs the GPU, the export and
                llama.cpp's audit need only CPUs, so they can run on different machines (copy ROOT across)
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from functools import partial as do
from typing import Callable

from selfid import __version__
from selfid.audit.probes import write_identity_subset
from selfid.errors import SelfidError
from selfid.io import atomic_write_json
from selfid.pipeline.stages import Runner, Stage, audit_problem, model_problem
from selfid.study import work
from selfid.study.arms import arms
from selfid.study.work import PROBES, Study

STATE = "study.json"
DEFAULT_STEPS = ("base", "plain", "scan", "template", "replay2", "replay5", "combo", "scale", "parity")
SINGLE = ("base", "scan", "parity", "llamacpp")  # steps that are one stage of the same name


def stages(study: Study) -> list[Stage]:
    """Every stage of the study in its folder: what each reads and writes (paths under the folder)."""
    root = study.root
    probes = (PROBES,) if study.scale.probes else ()

    def audited(rel: str):
        return lambda: audit_problem(root / rel)

    def model(rel: str):
        return lambda: model_problem(root / rel)

    def written(rel: str):
        return lambda: None if (root / rel).is_file() else f"{rel} is missing"

    def said(rel: str):
        return lambda: f"{rel}: {short_identity(json.loads((root / rel / 'summary.json').read_text(encoding='utf-8')))}"

    grid = do(grid_text, study.scale)
    adapter = "{}/train/adapter".format
    found = [Stage("base", "audit the base model (development set)", do(work.audit_arm, study, "base"),
                   outputs=("base/audit",), inputs=probes, check=audited("base/audit"), detail=grid,
                   describe=said("base/audit")),
             Stage("heldout-base", "audit the base model on the held-out probes", do(work.heldout, study, "base"),
                   outputs=("base/heldout",), check=audited("base/heldout"))]
    for arm in arms():
        found += [
            Stage(f"train-{arm}", f"train {arm}", do(work.train_arm, study, arm),
                  outputs=(f"{arm}/train", f"{arm}/cost.json"), check=model(adapter(arm)), detail=do(train_text, study, arm)),
            Stage(f"audit-{arm}", f"audit {arm} (development set)", do(work.audit_arm, study, arm),
                  inputs=(*probes, adapter(arm)), outputs=(f"{arm}/audit",), check=audited(f"{arm}/audit"),
                  detail=grid, describe=said(f"{arm}/audit")),
            Stage(f"compare-{arm}", f"compare base and {arm}", do(work.compare, study, arm),
                  inputs=("base/audit/summary.json", f"{arm}/audit/summary.json"), outputs=(f"{arm}/compare",),
                  check=written(f"{arm}/compare/comparison.json"), detail=lambda arm=arm: f"{arm}/compare/report.html"),
            Stage(f"heldout-{arm}", f"audit {arm} on the held-out probes", do(work.heldout, study, arm),
                  inputs=(adapter(arm),), outputs=(f"{arm}/heldout",), check=audited(f"{arm}/heldout")),
            Stage(f"export-{arm}", f"export {arm} as a Q8_0 GGUF", do(work.export_gguf, study, arm),
                  inputs=(adapter(arm),), outputs=(f"gguf/{arm}-merged",), check=model(f"gguf/{arm}-merged")),
            Stage(f"inproc-{arm}", f"audit {arm} in-process on its GGUF's grid", do(work.inproc, study, arm),
                  inputs=(*probes, adapter(arm)), outputs=(f"parity/inproc-{arm}",),
                  check=audited(f"parity/inproc-{arm}")),
            Stage(f"gguf-{arm}", f"audit {arm}'s GGUF through llama.cpp's server", do(work.gguf, study, arm),
                  inputs=(*probes, f"gguf/{arm}-merged"), outputs=(f"parity/gguf-{arm}",),
                  check=audited(f"parity/gguf-{arm}")),
        ]
    found += [
        Stage("margins", "identity margin along plain's training", do(work.margins_along_training, study, "plain"),
              inputs=(adapter("plain"),), outputs=("plain/margins.json",)),
        # its audits cannot continue a cut-off search: an interrupted search starts again
        Stage("search-scale", "search the plain adapter's LoRA scale", do(work.search_scale, study),
              inputs=(adapter("plain"),), outputs=("scale/search", "scale/adapter", "scale/cost.json"),
              check=model("scale/adapter"), resumable=False),
        Stage("audit-scale", "audit the scaled adapter (development set)", do(work.audit_arm, study, "scale"),
              inputs=(*probes, "scale/adapter"), outputs=("scale/audit",), check=audited("scale/audit")),
        Stage("compare-scale", "compare base and the scaled adapter", do(work.compare, study, "scale"),
              inputs=("base/audit/summary.json", "scale/audit/summary.json"), outputs=("scale/compare",),
              check=written("scale/compare/comparison.json")),
        Stage("scan", "scan plain's training data", do(work.scan_plain, study),
              inputs=("plain/train/train_data.jsonl",), outputs=("scan/scan.json",)),
        Stage("parity", "audit the base model through selfid api (HTTP)", do(work.parity, study),
              inputs=probes, outputs=("parity/http",), check=audited("parity/http")),
        Stage("llamacpp", "audit the base model through llama.cpp's server", do(work.llamacpp, study),
              inputs=probes, outputs=("parity/llamacpp",), check=audited("parity/llamacpp")),
    ]
    return found


def step_stages(step: str) -> list[str]:
    """The stages a step asks for (the runner adds the stages they need first)."""
    known = arms()
    kind, _, arm = step.partition("-")
    if step in SINGLE:
        return [step]
    if step in known:
        return [f"compare-{step}"] + (["margins"] if known[step].margins else [])
    if step == "scale":
        return ["compare-scale"]
    if kind == "heldout" and (arm in known or arm == "base"):
        return [step]
    if kind in ("train", "inproc", "export") and arm in known:
        return [step]
    if kind == "gguf" and arm in known:
        return [f"inproc-{arm}", step]
    raise SelfidError(f"unknown step {step}: use {', '.join([*DEFAULT_STEPS, 'llamacpp'])}, heldout-ARM, train-ARM, "
                      f"gguf-ARM, inproc-ARM or export-ARM (ARM: base, {', '.join(known)}; "
                      "selfid/study/arms.yaml lists the arms)")


# --- the study folder -------------------------------------------------------------------------------------

def open_root(study: Study) -> dict:
    """Create the study folder, or check that an existing one was made at the same scale with the same model;
    returns its study.json. A folder made before study.json existed (one with base/ or an arm's folder) is adopted."""
    root = study.root
    settings = json.loads(json.dumps({"scale": study.scale.as_dict(), "model": study.model}))  # as the file holds it
    path = root / STATE
    if root.exists() and not root.is_dir():
        raise SelfidError(f"{root} exists and is not a folder: choose another")
    if path.is_file():
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            state = None
        if not isinstance(state, dict):
            raise SelfidError(f"{path} is damaged (not a JSON object): restore it, or choose another folder")
        if state.get("settings") != settings:
            raise SelfidError(f"{root} holds a study made at another scale or with another model (see {path}): continue "
                              f"it with the same options, or choose another folder")
        state["resumed"] = state.get("resumed", 0) + 1
    elif (root / "demo.json").is_file():
        raise SelfidError(f"{root} holds a demo run made by an earlier selfid, in another layout: choose another folder")
    elif root.is_dir() and any(root.iterdir()) and not any((root / name).is_dir() for name in ("base", *arms())):
        raise SelfidError(f"{root} is not empty and holds no study: choose another folder")
    else:
        state = {"kind": "selfid-study", "format": 1, "selfid": __version__,
                 "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "settings": settings}
    state["device"] = study.device
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, state)
    if study.probes is not None and not study.probes.is_file():  # kept when resuming: audits' inputs
        write_identity_subset(study.probes, study.scale.probes)
    return state


def run(study: Study, steps: list[str], say: Callable[[str, str, str], None], resume_hint: str) -> dict[str, dict]:
    """Run `steps` in the study folder (what they need first, what is finished skipped); returns the stage records."""
    wanted = [name for step in steps for name in step_stages(step)]  # a bad step is refused before anything is made
    open_root(study)
    t0 = time.time()
    records = Runner(study.root, stages(study), say=say, resume_hint=resume_hint).run(wanted)
    study.log(f"{','.join(steps)}: {len(records)} stages finished in {time.time() - t0:.0f}s")
    return records


# --- what the stages say as they run --------------------------------------------------------------------

def grid_text(scale) -> str:
    n = len(scale.probes) if scale.probes else "all"
    temps = " + ".join("greedy" if t == 0 else f"{scale.samples} at T={t:g}" for t in scale.temperatures)
    return f"{n} identity prompts × 3 system prompts × ({temps}), {scale.ner_limit} NER sentences"


def train_text(study: Study, arm: str) -> str:
    cfg = work.train_config(study, arms()[arm])
    epochs = f"{cfg.train.epochs:g} epoch{'s' * (cfg.train.epochs != 1)}"
    return f"{cfg.data[0].limit} MSRA sentences, {epochs}, lr {cfg.train.lr:g}"


def short_identity(summary: dict) -> str:
    by = summary.get("identity", {}).get("by_system", {})
    parts = [f"{k} {c['foreign']['k']}/{c['foreign']['n']}" for k, c in by.items()]
    ner = summary.get("ner", {}).get("helpful")
    return "foreign claims " + ", ".join(parts) + (f"; NER F1 {ner['f1']:.2f}" if ner else "")
