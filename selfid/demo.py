"""`selfid demo`: does LoRA fine-tuning on NER change who the model says it is? The whole study, small.

Five stages on one model (the embedded Qwen2.5-Coder-0.5B-Instruct by default), run by selfid.pipeline.stages
in one run directory, each skipped when a rerun with the same `--out` finds it finished (stages/NAME.json):

  1. audit-base    base/     identity grid (system prompts x greedy + samples) and MSRA NER
  2. train         train/    LoRA on MSRA under "You are a helpful assistant." (LLaMA-Factory's old default)
  3. audit-tuned   tuned/    the same grid on the tuned adapter
  4. compare       comparison.json, report.html (base and tuned side by side)
  5. verdict       summary.json, printed: what changed, with intervals, and what it means

The default scale fits a 2-core CPU in minutes; `full=True` is the scale of docs/study.md (meant for a GPU).
Audits append every generation as it finishes and training checkpoints, so Ctrl-C loses little:
`selfid demo --out DIR` continues the run in DIR.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from selfid.errors import SelfidError
from selfid.io import atomic_write_json
from selfid.manifest import read as read_manifest
from selfid.system_prompt import HELPFUL, SERVING

SYSTEMS = SERVING
# what stage 2 says instead of training's warning about a system prompt other than the template's own
BY_DESIGN = (f"by design: the demo trains under {HELPFUL!r} (LLaMA-Factory's default for Qwen until April 2025), not "
             "the template's own Qwen line, because that is the set-up whose effect on identity it measures")
SYSTEM_LABEL = {"template": "none (template's Qwen line)", "helpful": f'"{HELPFUL}"', "empty": '"" (empty)'}
ALPHA = 0.05
FAR_MORE = 2.0  # "far more": the system prompt's spread is at least this many times fine-tuning's largest change
# 8 zh + 8 en from the shipped identity probes: direct, name and maker questions, and two leading ones
DEMO_PROBES = tuple(f"{lang}-{kind}" for lang in ("zh", "en") for kind in (
    "direct-01", "direct-02", "direct-03", "name-01", "maker-01", "maker-02", "leading-01", "leading-02"))


@dataclass(frozen=True)
class Scale:
    """How big each stage is. `train` holds run-config overrides (see selfid.config.RunConfig)."""

    name: str
    probes: tuple[str, ...] | None  # identity probe ids from the shipped set (None: all of them)
    temperatures: tuple[float, ...]
    samples: int  # per prompt at each temperature above 0
    max_new_tokens: int  # identity replies: a claim shows in the first sentence
    ner_limit: int  # MSRA test sentences
    ner_max_new_tokens: int
    suites: tuple[str, ...]
    margin: bool  # the identity margin (teacher-forced log-probabilities; a minute per audit on a CPU)
    train: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


# Sized for a 2-core CPU: about 2,500 identity tokens and 1,100 NER tokens per audit, 11k training tokens.
# 96 short sentences (a natural mix, some without entities), 48 steps of 2 sentences at lr 1e-3: NER F1 on
# the 50 test sentences went from 0.09 to 0.46 [0.30-0.65] in 4.6 minutes; 64 sentences at 16 steps of 4
# learned to answer empty lists (F1 0.25, recall 0.15).
SMALL = Scale(
    name="small", probes=DEMO_PROBES, temperatures=(0.0, 0.7), samples=2, max_new_tokens=48,
    ner_limit=50, ner_max_new_tokens=64, suites=("identity", "ner"), margin=False,
    train={"data": [{"source": "msra", "limit": 96, "max_chars": 40, "seed": 0}],
           "train": {"epochs": 1, "lr": 1e-3, "warmup": 0.05, "pack_length": 256, "batch_tokens": 256,
                     "save_every": 12, "log_every": 1}})
# The study's scale (bench/study.py, docs/study.md): examples/msra.yaml trained for 5 epochs.
FULL = Scale(
    name="full", probes=None, temperatures=(0.0, 0.7, 1.0, 1.3), samples=8, max_new_tokens=96,
    ner_limit=500, ner_max_new_tokens=256, suites=("identity", "ner", "general"), margin=True,
    train={"data": [{"source": "msra", "limit": 8000, "seed": 0}],
           "train": {"epochs": 5, "lr": 4e-4, "warmup": 0.05, "pack_length": 2048, "batch_tokens": 16384,
                     "save_every": 100, "log_every": 10}})


def default_out() -> Path:
    return Path("runs") / f"demo-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


# --- the stages ---------------------------------------------------------------------------------------

def _state_path(out: Path) -> Path:
    return out / "demo.json"


def _open_run(out: Path, scale: Scale, model: str, device: str) -> dict:
    """Create the run directory, or check that an existing one is a demo run with the same settings."""
    settings = json.loads(json.dumps({"scale": scale.as_dict(), "model": model}))  # as demo.json holds it
    path = _state_path(out)
    if out.exists() and not out.is_dir():
        raise SelfidError(f"{out} exists and is not a folder: choose another --out")
    if path.is_file():
        state = json.loads(path.read_text(encoding="utf-8"))
        if state.get("settings") != settings:
            raise SelfidError(f"{out} holds a demo run with other settings (see {path}): continue it with the same "
                              "options, or choose another --out")
        state["resumed"] = state.get("resumed", 0) + 1
        state.pop("stages", None)  # format 1 kept stage timings here; stages/ holds them now
    elif out.is_dir() and any(out.iterdir()):
        raise SelfidError(f"{out} is not empty and holds no demo run: choose another --out")
    else:
        from selfid import __version__

        state = {"kind": "selfid-demo", "format": 2, "selfid": __version__,
                 "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "settings": settings}
    state["device"] = device
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, state)
    return state


def _write_probes(path: Path, ids: tuple[str, ...]) -> Path:
    """The demo's identity probes: the shipped probes with these ids, in this order (kept when resuming)."""
    from selfid.audit.probes import write_identity_subset

    return path if path.is_file() else write_identity_subset(path, ids)


def audit_params(scale: Scale, probes: Path | None):
    from selfid.audit.run import AuditParams, serving_systems

    return AuditParams(suites=list(scale.suites), systems=serving_systems(),
                       temperatures=list(scale.temperatures), samples=scale.samples, seed=0,
                       max_new_tokens=scale.max_new_tokens, ner_limit=scale.ner_limit,
                       ner_max_new_tokens=scale.ner_max_new_tokens, own="auto",
                       identity_probes=str(probes) if probes else None, task_systems=["helpful"])


def train_config(scale: Scale, model: str, output: Path, device: str):
    from selfid.config import load_config

    base = {"model": model, "output": str(output), "system_prompt": HELPFUL, "device": device, "eval_ner": 0,
            **json.loads(json.dumps(scale.train))}
    return load_config(None, base=base)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _audit(run_dir: Path, params, model: str, adapter: Path | None, device: str, margin: bool) -> dict:
    from selfid.audit.backends import InProcessBackend
    from selfid.audit.run import run_audit
    from selfid.model.load import load_model

    loaded = load_model(model, adapter=adapter, device=None if device == "auto" else device)
    return run_audit(InProcessBackend(loaded), params, run_dir, resume=(run_dir / "run.json").is_file(),
                     margin=margin)


def _short_identity(summary: dict) -> str:
    by = summary.get("identity", {}).get("by_system", {})
    parts = [f"{k} {c['foreign']['k']}/{c['foreign']['n']}" for k, c in by.items()]
    ner = summary.get("ner", {}).get("helpful")
    tail = f"; NER F1 {ner['f1']:.2f}" if ner else ""
    return "foreign claims " + ", ".join(parts) + tail


STAGES = ("audit-base", "train", "audit-tuned", "compare", "verdict")


def stages(out: Path, scale: Scale, model: str, device: str, console, started: float) -> list:
    """The demo's five stages in run folder `out` (selfid.pipeline.stages says how they resume)."""
    from selfid.pipeline.stages import Stage, model_problem, audit_problem, read_record

    probes = ("probes/identity.jsonl",) if scale.probes else ()
    params = audit_params(scale, out / probes[0] if probes else None)
    adapter = out / "train" / "adapter"

    def audit(name: str, with_adapter: Path | None):
        def run() -> None:
            _audit(out / name, params, model, with_adapter, device, scale.margin)
        return run

    def said(name: str):
        return lambda: f"{name}: {_short_identity(_read_json(out / name / 'summary.json'))}"

    def train_detail() -> str:
        cfg = train_config(scale, model, out / "train", device)
        epochs = f"{cfg.train.epochs:g} epoch{'s' * (cfg.train.epochs != 1)}"
        return f"{cfg.data[0].limit} MSRA sentences, {epochs}, lr {cfg.train.lr:g}"

    def train() -> dict:
        from selfid.pipeline.train import run as train_pipeline
        from selfid.train.sft import checkpoints

        cfg = train_config(scale, model, out / "train", device)
        result = train_pipeline(cfg, resume=bool(checkpoints(out / "train")), console=console,
                                system_prompt_by_design=BY_DESIGN)
        if result.stopped:
            raise KeyboardInterrupt
        return {"steps": result.metrics.get("steps"), "tokens": result.metrics.get("tokens_trained"),
                "tokens_per_s": result.metrics.get("tokens_per_s")}

    def compare() -> None:
        write_comparison(out, verdict(_read_json(out / "base" / "summary.json"),
                                      _read_json(out / "tuned" / "summary.json")))

    def conclude() -> None:
        records = {name: read_record(out, name) or {} for name in STAGES[:-1]}
        done = {name: {"wall_s": r.get("wall_s"), **r.get("info", {})} for name, r in records.items()}
        summary = {"kind": "selfid-demo-summary", "run_dir": str(out), "model": model, "device": device,
                   "scale": scale.as_dict(), "stages": done,
                   "wall_s": {"this_invocation": round(time.perf_counter() - started, 1),
                              "stages_total": round(sum(s["wall_s"] or 0 for s in done.values()), 1)},
                   "verdict": _read_json(out / "comparison.json")["verdict"], "train_manifest": _manifest_brief(adapter),
                   "files": {"report": "report.html", "comparison": "comparison.json",
                             "generations": ["base/generations.jsonl", "tuned/generations.jsonl"],
                             "adapter": "train/adapter", "training_log": "train/metrics.csv"}}
        atomic_write_json(out / "summary.json", summary)

    return [
        Stage("audit-base", "audit the base model", audit("base", None), outputs=("base",), inputs=probes,
              check=lambda: audit_problem(out / "base"), detail=lambda: _grid_text(scale), describe=said("base")),
        Stage("train", f'LoRA-train under "{HELPFUL}"', train, outputs=("train",),
              check=lambda: model_problem(adapter), detail=train_detail),
        Stage("audit-tuned", "audit the tuned adapter", audit("tuned", adapter), outputs=("tuned",),
              inputs=(*probes, "train/adapter"), check=lambda: audit_problem(out / "tuned"),
              detail=lambda: "the same grid", describe=said("tuned")),
        Stage("compare", "compare", compare, outputs=("comparison.json", "report.html"),
              inputs=("base/summary.json", "tuned/summary.json"), detail=lambda: "base vs tuned, report.html"),
        Stage("verdict", "the verdict", conclude, outputs=("summary.json",),
              inputs=("comparison.json", "train/adapter/selfid.json")),
    ]


def run_demo(out: Path | None = None, full: bool = False, device: str = "auto", model: str = "embedded",
             scale: Scale | None = None, console=None) -> dict:
    """Run (or continue) the demo in `out`; print the verdict; return summary.json's contents."""
    from rich.console import Console

    from selfid.pipeline.stages import Runner, console_say

    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise SelfidError(f"unknown device {device!r}: use auto, cpu or cuda")
    scale = scale or (FULL if full else SMALL)
    console = console or Console(stderr=True, highlight=False)
    out = Path(out if out is not None else default_out()).expanduser().resolve()
    state = _open_run(out, scale, model, device)
    if scale.name == "full":
        import torch

        if device == "cpu" or not torch.cuda.is_available():
            console.print("[yellow]warning: --full is the scale of the study in docs/study.md (8,000 sentences x 5 "
                          "epochs, 72 prompts x "
                          "4 temperatures x 8 samples): meant for a GPU, it takes days on a CPU")
    console.print(f"[bold]selfid demo[/bold] ({scale.name}) · model {model} · run directory {out}", soft_wrap=True)
    if state.get("resumed"):
        console.print(f"continuing the run in {out}: finished stages are kept")
    if scale.probes:
        _write_probes(out / "probes" / "identity.jsonl", scale.probes)
    started = time.perf_counter()
    runner = Runner(out, stages(out, scale, model, device, console, started), say=console_say(console),
                    resume_hint=f"selfid demo --out {out}" + (" --full" if scale.name == "full" else ""))
    runner.run()
    summary = _read_json(out / "summary.json")
    print_verdict(summary["verdict"], out, time.perf_counter() - started, study_note=model == "embedded")
    return summary


def _grid_text(scale: Scale) -> str:
    n = len(scale.probes) if scale.probes else "all"
    temps = " + ".join("greedy" if t == 0 else f"{scale.samples} at T={t:g}" for t in scale.temperatures)
    return f"{n} identity prompts × {len(SYSTEMS)} system prompts × ({temps}), {scale.ner_limit} NER sentences"


def _manifest_brief(adapter: Path) -> dict | None:
    manifest = read_manifest(adapter)
    if manifest is None:
        return None
    record = manifest.record()
    return {"train": record["train"], "metrics": record.get("metrics")}


def write_comparison(out: Path, v: dict) -> dict:
    """comparison.json and report.html (base and tuned side by side, the verdict on top) in `out`."""
    from selfid.audit.compare import compare_runs
    from selfid.audit.report.html import write_html

    comp, sa, sb = compare_runs(out / "base", out / "tuned")
    comp["verdict"] = v
    atomic_write_json(out / "comparison.json", comp)
    write_html(out / "report.html", [sa, sb], comp, headline=verdict_lines(v))
    return comp


# --- the verdict: computed from the two summaries -------------------------------------------------------

def verdict(base: dict, tuned: dict) -> dict:
    """What changed from `base` to `tuned` (audit summaries), and one sentence saying what it means.

    Per system prompt: the foreign-claim rate before and after (all temperatures pooled) with 95%
    intervals clustered by prompt, and a test paired by prompt (both audits asked the same prompts),
    Holm-corrected over the system prompts. The system prompt's effect is the base model's spread
    across system prompts (highest vs lowest, paired by prompt too); fine-tuning's is the largest
    change in any system prompt. The sentence says which is larger only when the tests say so.
    """
    from selfid.audit.stats import holm, paired_prompts

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
    from selfid.audit.report.fmt import rate_text

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


def print_verdict(v: dict, out: Path, wall_s: float | None = None, study_note: bool = False, console=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

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
        table.add_row(escape(r["label"]), _rate(r["before"]), _rate(r["after"]),
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
    from selfid.pipeline.stages import duration

    took = f" · took {duration(wall_s)}" if wall_s is not None else ""
    console.print(f"report: {out / 'report.html'} · summary.json · generations in base/ and tuned/{took}",
                  soft_wrap=True)

