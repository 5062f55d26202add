"""`selfid demo`: does LoRA fine-tuning on NER change who the model says it is? The study's first steps, small.

The study's steps `base` and `plain` (selfid.study.steps) on one model (the embedded Qwen2.5-Coder-0.5B-Instruct by
default), in one study folder, then the verdict; each stage is skipped when a rerun with the same `--out` finds it
finished (stages/NAME.json):

  1. base           base/audit      identity grid (system prompts x greedy + samples) and MSRA NER
  2. train-plain    plain/train     LoRA on MSRA under "You are a helpful assistant." (LLaMA-Factory's old default)
  3. audit-plain    plain/audit     the same grid on the tuned adapter
  4. compare-plain  plain/compare   comparison.json, report.html (base and tuned side by side, the verdict on top)
  5. verdict        summary.json    printed: what changed, with intervals, and what it means

At the small scale (selfid.study.scale.SMALL) it fits a 2-core CPU in minutes; `full=True` is the study's own
scale (FULL, docs/study.md; meant for a GPU), and the folder is then one `selfid study run` continues. Audits append
every generation as it finishes and training checkpoints, so Ctrl-C loses little: `selfid demo --out DIR`
continues the run in DIR.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from selfid.io import atomic_write_json
from selfid.manifest import read as read_manifest
from selfid.pipeline.stages import Runner, Stage, console_say, duration, read_record
from selfid.study import steps
from selfid.study.scale import FULL, SMALL, Scale
from selfid.audit.report.fmt import rate_text
from selfid.study.verdict import ALPHA
from selfid.study.work import Study

STAGES = ("base", "train-plain", "audit-plain", "compare-plain", "verdict")
COMPARISON = "plain/compare/comparison.json"
REPORT = "plain/compare/report.html"


def default_out() -> Path:
    return Path("runs") / f"demo-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def verdict_stage(study: Study, started: float) -> Stage:
    """The demo's last stage: summary.json, from the stage records, the comparison's verdict and the manifest."""
    out = study.root
    adapter = out / "plain" / "train" / "adapter"

    def conclude() -> None:
        records = {name: read_record(out, name) or {} for name in STAGES[:-1]}
        done = {name: {"wall_s": r.get("wall_s"), **r.get("info", {})} for name, r in records.items()}
        summary = {"kind": "selfid-demo-summary", "run_dir": str(out), "model": study.model, "device": study.device,
                   "scale": study.scale.as_dict(), "stages": done,
                   "wall_s": {"this_invocation": round(time.perf_counter() - started, 1),
                              "stages_total": round(sum(s["wall_s"] or 0 for s in done.values()), 1)},
                   "verdict": _read_json(out / COMPARISON)["verdict"], "train_manifest": _manifest_brief(adapter),
                   "files": {"report": REPORT, "comparison": COMPARISON,
                             "generations": ["base/audit/generations.jsonl", "plain/audit/generations.jsonl"],
                             "adapter": "plain/train/adapter", "training_log": "plain/train/metrics.csv"}}
        atomic_write_json(out / "summary.json", summary)

    return Stage("verdict", "the verdict", conclude, outputs=("summary.json",),
                 inputs=(COMPARISON, "plain/train/adapter/selfid.json"))


def run_demo(out: Path | None = None, full: bool = False, device: str = "auto", model: str = "embedded",
             scale: Scale | None = None, console=None) -> dict:
    """Run (or continue) the demo in `out`; print the verdict; return summary.json's contents."""
    scale = scale or (FULL if full else SMALL)
    console = console or Console(stderr=True, highlight=False)
    out = Path(out if out is not None else default_out()).expanduser().resolve()
    study = Study(out, scale, model, device, progress=True, log=lambda text: console.print(text, soft_wrap=True),
                  console=console)
    state = steps.open_root(study)
    if scale is FULL:
        import torch  # only to ask for a GPU

        if device == "cpu" or not torch.cuda.is_available():
            console.print("[yellow]warning: --full is the scale of the study in docs/study.md (8,000 sentences x 5 "
                          "epochs, 72 prompts x 4 temperatures x 8 samples): meant for a GPU, it takes days on a CPU")
    console.print(f"[bold]selfid demo[/bold] ({scale.name}) · model {model} · run directory {out}", soft_wrap=True)
    if state.get("resumed"):
        console.print(f"continuing the run in {out}: finished stages are kept")
    started = time.perf_counter()
    hint = f"selfid demo --out {out}" + (" --full" if scale is FULL else "")
    Runner(out, [*steps.stages(study), verdict_stage(study, started)], say=console_say(console),
           resume_hint=hint).run(["verdict"])
    summary = _read_json(out / "summary.json")
    print_verdict(summary["verdict"], out, time.perf_counter() - started, study_note=model == "embedded")
    return summary


def _manifest_brief(adapter: Path) -> dict | None:
    manifest = read_manifest(adapter)
    if manifest is None:
        return None
    record = manifest.record()
    return {"train": record["train"], "metrics": record.get("metrics")}


def print_verdict(v: dict, out: Path, wall_s: float | None = None, study_note: bool = False, console=None) -> None:
    def pct(r: dict) -> str:
        return rate_text(r, digits=0)

    console = console or Console(highlight=False)
    table = Table(title="foreign identity claims, base → tuned (all temperatures pooled; k/n [95%, clustered by "
                        "prompt]; change paired by prompt, p Holm-corrected over system prompts)", title_justify="left")
    for col in ("system prompt", "base", "tuned", "change (prompts up/down)", "p (Holm)"):
        table.add_column(col, justify="left" if col == "system prompt" else "right")
    for r in v["identity"]:
        t = r["test"]
        sig = t and t["p_holm"] < ALPHA
        style = ("bold red" if t["diff"] > 0 else "bold green") if sig else ""
        change = f"{100 * t['diff']:+.0f} pts ({t['up']}↑ {t['down']}↓)" if t else "–"
        table.add_row(escape(r["label"]), pct(r["before"]), pct(r["after"]),
                      f"[{style}]{change}[/{style}]" if style else change, f"{t['p_holm']:.2g}" if t else "–")
    console.print(table)
    if v.get("ner"):
        n = v["ner"]
        b, a = n["before"], n["after"]
        console.print(f"NER F1 on {n['n']} MSRA test sentences (greedy, system prompt {n['system']}): "
                      f"[bold]{b['f1']:.2f}[/bold] [{b['f1_ci95'][0]:.2f}–{b['f1_ci95'][1]:.2f}] → "
                      f"[bold]{a['f1']:.2f}[/bold] [{a['f1_ci95'][0]:.2f}–{a['f1_ci95'][1]:.2f}] "
                      f"(JSON parsed {100 * (b['parse']['rate'] or 0):.0f}% → {100 * (a['parse']['rate'] or 0):.0f}%)",
                      markup=True)
    console.print(f"[bold]What it means:[/bold] {escape(v['meaning'])}")
    if study_note:  # measured once, at the study's scale, not by this run
        console.print("[dim]docs/study.md (this model, 8,000 sentences x 5 epochs, one H100/H200): the system prompt, "
                      "not fine-tuning, decided most foreign claims. Templated identity conversations in training "
                      "removed them by teaching a slogan (and a reflexive \"No\" to \"Are you Qwen?\"); the base "
                      "model's own answers, balanced, plus a preference loss (selfid train ... --set "
                      "identity_replay.fraction=0.05 --set identity_replay.preference=0.5) kept 0.3% foreign claims on "
                      "questions it never saw while its replies stayed varied, but it still denies its maker in 1.5% "
                      "of replies and says \"Yes\" to 26% of leading questions about other vendors before naming its "
                      "own: not yet the bar.[/dim]")
    took = f" · took {duration(wall_s)}" if wall_s is not None else ""
    console.print(f"report: {out / REPORT} · summary.json · generations in base/audit/ and plain/audit/{took}",
                  soft_wrap=True)
