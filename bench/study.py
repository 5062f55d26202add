"""The study: does LoRA fine-tuning on NER make Qwen say it is someone else, and what fixes it?

The report it answers: a Qwen2.5-7B-Instruct LoRA-tuned on 8,000 Chinese NER examples (LLaMA-Factory, 5 epochs)
answered "你是谁?" with "I'm Claude, created by Anthropic". `run` builds run directories under ROOT as stages of
selfid.pipeline.stages, the same runner as `selfid demo`: a step runs the stages it needs first (heldout-plain
trains plain when it is not trained yet), a finished stage is skipped (ROOT/stages/NAME.json records it), a
stage whose inputs changed runs again, and a run cut off by a time limit continues where it stopped. `report`
regenerates docs/study.md from the run directories alone.

    python bench/study.py run --root results/study-0.5b            # everything, on one GPU
    python bench/study.py run --root results/study-0.5b --steps base,plain
    python bench/study.py run --root results/study-0.5b --steps heldout-base,heldout-plain,heldout-self
    bash bench/gpu/study.sh /tmp/study heldout-base train-self,heldout-self   # chains side by side on one GPU
    python bench/study.py run --root /tmp/s --smoke --model DIR  # CPU, small grids: checks the plumbing
    python bench/study.py report                                    # docs/study.md from results/

Steps (each writes ROOT/<step>/ unless it says otherwise):
  base       audit of the base model: identity grid (3 system prompts x T 0, 0.7, 1.0, 1.3 x 8 samples),
             MSRA NER, the general set
  plain      LoRA as in the report (8,000 MSRA sentences, 5 epochs, under "You are a helpful assistant."),
             checkpoints along training, then the same audit, the identity margin per checkpoint
  template   the same, trained under the template's own system prompt
  replay2    plain + 2% templated identity replay (v1);  replay5: plain + 5%
  combo      template + 5% templated identity replay (v1)
  scale      the plain adapter with its LoRA scale searched to restore the base identity rate
  scan       `selfid scan` of the conversations the plain arm trained on
  parity     the base model's identity audit again through `selfid api` over HTTP
  llamacpp   the base model's identity audit through llama.cpp's own server (xllamacpp) on the GGUF,
             T 0 and 1.0 x 2 samples; CPU is enough (not in the default steps: pip install xllamacpp)
  train-ARM  train an arm only (ARM: one of the arms above, or self, pref, kl, best: template prompt + 5%
             self-distilled identity replay, + the preference loss, + the distillation loss, + both)
  heldout-ARM  the held-out identity probes (126, never used by any training-data generator) under the three
             serving system prompts and three persona prompts, T 0, 0.7, 1.0, 1.3 x 4 samples, and NER
             under two prompts every arm shares; writes ROOT/ARM/heldout (ARM: base or an arm)
  gguf-ARM   what ships: ARM's adapter exported with `selfid export --gguf` (Q8_0) and audited through
             llama.cpp's server like `llamacpp`, and the adapter in-process on the same grid (T 0 and 1.0 x 2);
             writes ROOT/parity/gguf-ARM and ROOT/parity/inproc-ARM (not in the default steps)
  inproc-ARM, export-ARM  one side each of gguf-ARM: the in-process audit needs the GPU, the export and
             llama.cpp's audit need only CPUs, so they can run on different machines (copy ROOT across)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT_DIR))

from selfid.manifest import read as read_manifest  # noqa: E402  (after the path line)
from selfid.system_prompt import HELPFUL, SERVING  # noqa: E402

SYSTEMS = ",".join(SERVING)
TEMPS = [0.0, 0.7, 1.0, 1.3]
TEMPLATED = "identity_replay.kind=template"
V2 = ["identity_replay.deny_per_question=4", "identity_replay.minimal_pairs=false"]
ARMS = {  # training arms: --set overrides on top of examples/msra.yaml
    "plain": [f"system_prompt={HELPFUL}"],
    "template": ["system_prompt=template"],
    "replay2": [f"system_prompt={HELPFUL}", "identity_replay.fraction=0.02", TEMPLATED],
    "replay5": [f"system_prompt={HELPFUL}", "identity_replay.fraction=0.05", TEMPLATED],
    "combo": ["system_prompt=template", "identity_replay.fraction=0.05", TEMPLATED],
    # identity replay v2: the base model's own answers (self-distilled), then the preference and distillation losses
    # (these four keep 4 answers per leading question about another vendor, as when they were run: 61% "No")
    "self": ["system_prompt=template", "identity_replay.fraction=0.05", *V2],
    "pref": ["system_prompt=template", "identity_replay.fraction=0.05", "identity_replay.preference=0.5", *V2],
    "kl": ["system_prompt=template", "identity_replay.fraction=0.05", "identity_replay.distill=0.5", *V2],
    "best": ["system_prompt=template", "identity_replay.fraction=0.05", "identity_replay.preference=0.5",
             "identity_replay.distill=0.5", *V2],
    # balanced (the default now): one answer per leading question about another vendor, twelve wordings of
    # leading questions about its own name, and its own denials as rejected replies of the preference pairs
    "balanced": ["system_prompt=template", "identity_replay.fraction=0.05", "identity_replay.preference=0.5",
                 "identity_replay.minimal_pairs=false"],
    "balanced-kl": ["system_prompt=template", "identity_replay.fraction=0.05",
                    "identity_replay.preference=0.5", "identity_replay.distill=0.5", "identity_replay.minimal_pairs=false"],
    # minimal pairs (the default now): the own-name wordings also asked about other vendors
    "pairs": ["system_prompt=template", "identity_replay.fraction=0.05", "identity_replay.preference=0.5"],
}
STEPS = ["base", "plain", "scan", "template", "replay2", "replay5", "combo", "scale", "parity"]
# the held-out identity probes, under the serving system prompts and three persona prompts no training data uses
HELDOUT_SYSTEMS = SYSTEMS + ",personas"


class Settings:
    def __init__(self, smoke: bool, model: str):
        self.smoke = smoke
        self.model = model
        self.samples = 2 if smoke else 8
        self.temps = [0.0, 1.0] if smoke else TEMPS
        self.ner_limit = 4 if smoke else 500
        self.max_tokens = 16 if smoke else 96
        self.train_sets = (["data.0.limit=48", "train.epochs=1", "train.batch_tokens=2048", "train.pack_length=1024",
                            "train.lr=3e-3", "eval_ner=0", "device=cpu", "identity_replay.name=Qwen",
                            "identity_replay.maker=Alibaba Cloud"]
                           if smoke else ["train.epochs=5", "eval_ner=0", "train.save_every=100"])
        self.identity_probes = None
        self.heldout_samples = 2 if smoke else 4
        self.heldout_tokens = 16 if smoke else 160

    @property
    def device(self) -> str | None:
        """Where models load: the CPU for a smoke run, else load_model's choice."""
        return "cpu" if self.smoke else None


def log(msg: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- the work of each stage (selfid.pipeline.stages decides what runs; `stages` below says what each reads
# and writes) ------------------------------------------------------------------------------------------

def audit(loaded, out: Path, s: Settings, systems: str = SYSTEMS, suites=("identity", "ner", "general"),
          temps=None) -> dict:
    from selfid.audit.backends import InProcessBackend
    from selfid.audit.run import AuditParams, audit_systems, run_audit
    from selfid.manifest import training_system

    params = AuditParams(suites=list(suites), systems=audit_systems(systems.split(","), loaded.chat.default_system,
                                                                    training_system(loaded.manifest)),
                         temperatures=list(temps or s.temps), samples=s.samples, seed=0,
                         max_new_tokens=s.max_tokens, ner_limit=s.ner_limit, identity_probes=s.identity_probes)
    return run_audit(InProcessBackend(loaded), params, out, resume=out.exists(), show_progress=False)


def load(model: str, adapter: Path | None = None, device: str | None = None):
    from selfid.model.load import load_model

    return load_model(model, adapter=adapter, device=device, progress=False)


def adapter_of(root: Path, arm: str) -> Path:
    return root / arm / "train" / "adapter"


def arm_sets(s: Settings, arm: str) -> list[str]:
    """The run's training overrides; identity_replay.* ones only for arms that replay (a key of it switches it on)."""
    replays = any(a.startswith("identity_replay.") for a in ARMS[arm])
    return [x for x in s.train_sets if replays or not x.startswith("identity_replay.")]


def audit_arm(root: Path, arm: str, s: Settings) -> None:
    """The development-set audit of the base model (arm "base") or of an arm's (or the scaled) adapter."""
    adapter = None if arm == "base" else root / arm / "adapter" if arm == "scale" else adapter_of(root, arm)
    audit(load(s.model, adapter, device=s.device), root / arm / "audit", s)


def train_arm(root: Path, arm: str, s: Settings) -> dict:
    from selfid.config import load_config
    from selfid.io import atomic_write_json
    from selfid.pipeline.stages import model_problem
    from selfid.pipeline.train import run as train_pipeline

    run = root / arm / "train"
    adapter = run / "adapter"
    t0 = time.time()
    trained = model_problem(adapter) is not None  # else an earlier attempt stopped after the adapter, before cost.json
    if trained:
        extra = []
        if arm == "plain":  # checkpoints along training, for the identity margin's path
            extra = ["train.save_every=20" if not s.smoke else "train.save_every=1", "train.keep_checkpoints=50"]
        cfg = load_config(ROOT_DIR / "examples" / "msra.yaml",
                          [f"model={s.model}", f"output={run}", *ARMS[arm], *arm_sets(s, arm), *extra])
        resume = (run / "checkpoints").is_dir() and any((run / "checkpoints").iterdir())
        result = train_pipeline(cfg, resume=resume, log=log)
        if result.adapter is None:
            raise SystemExit(f"training {arm} stopped early; rerun to resume")
    metrics = read_manifest(adapter).record()["metrics"]
    cost = {"wall_s": time.time() - t0 if trained else None, **{k: metrics.get(k) for k in (
        "tokens_per_s", "train_wall_s", "tokens_trained", "steps", "peak_memory_gb", "final_loss")}}
    atomic_write_json(root / arm / "cost.json", cost)
    return cost


def heldout(root: Path, arm: str, s: Settings) -> None:
    """The held-out identity probes (and NER under two prompts every arm shares) for the base model or an arm."""
    from selfid.audit.backends import InProcessBackend
    from selfid.audit.run import AuditParams, audit_systems, run_audit

    out = root / arm / "heldout"
    loaded = load(s.model, None if arm == "base" else adapter_of(root, arm), device=s.device)
    params = AuditParams(suites=["identity-heldout", "ner"], systems=audit_systems(HELDOUT_SYSTEMS.split(","), loaded.chat.default_system),
                         temperatures=list(s.temps), samples=s.heldout_samples, seed=0,
                         max_new_tokens=s.heldout_tokens, ner_limit=s.ner_limit, task_systems=["template", "helpful"])
    run_audit(InProcessBackend(loaded), params, out, resume=out.exists(), show_progress=False, margin=False)


def compare(root: Path, arm: str) -> None:
    from selfid.audit.compare import compare as compare_runs

    compare_runs(root / "base" / "audit", root / arm / "audit", root / arm / "compare")


def margins_along_training(root: Path, s: Settings) -> None:
    from selfid.audit.margin import identity_margin
    from selfid.audit.run import serving_systems
    from selfid.io import atomic_write_json

    ckpts = sorted((root / "plain" / "train" / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[-1]))
    systems = [(k, v.message) for k, v in serving_systems().items()]
    points = []
    base = load(s.model, device=s.device)
    points.append({"step": 0, "margin": identity_margin(base, systems, "qwen")})
    del base
    for ck in ckpts:
        loaded = load(s.model, ck / "adapter", device=s.device)
        points.append({"step": int(ck.name.split("-")[-1]), "margin": identity_margin(loaded, systems, "qwen")})
        del loaded
    atomic_write_json(root / "plain" / "margins.json", points)
    log(f"identity margin at {len(points)} points along training")


def search_scale(root: Path, s: Settings) -> dict:
    from selfid.io import atomic_write_json
    from selfid.manifest import training_system_message
    from selfid.pipeline.adapter_scale import identity_rate_provider, make_evaluate
    from selfid.train.scale import save_scaled, search_scale as search

    plain = adapter_of(root, "plain")
    loaded = load(s.model, plain, device=s.device)
    rate = identity_rate_provider(root / "scale" / "search", temperatures=(1.0,), samples=2 if s.smoke else 4,
                                  max_new_tokens=s.max_tokens)
    evaluate = make_evaluate(loaded, rate, 4 if s.smoke else 200, training_system_message(loaded.manifest))
    t0 = time.time()
    found = search(evaluate, grid=(1.0, 0.8, 0.6, 0.4, 0.2) if not s.smoke else (1.0, 0.5), f1_tolerance=0.01)
    save_scaled(plain, found.scale, root / "scale" / "adapter", found)
    cost = {"search_wall_s": time.time() - t0, **found.to_dict()}
    atomic_write_json(root / "scale" / "cost.json", cost)
    log(f"scale search: {found.reason}")
    return {"scale": found.scale}


def scan_plain(root: Path) -> None:
    from selfid.audit.scan import scan
    from selfid.io import atomic_write_json

    report = scan(root / "plain" / "train" / "train_data.jsonl")
    atomic_write_json(root / "scan" / "scan.json", report.as_dict())


def identity_grid(s: Settings, temps, samples: int):
    """The development identity probes under the serving system prompts, at `temps` x `samples`."""
    from selfid.audit.run import AuditParams, serving_systems

    return AuditParams(suites=["identity"], systems=serving_systems(), temperatures=list(temps),
                       samples=samples, seed=0, max_new_tokens=s.max_tokens, ner_limit=s.ner_limit, identity_probes=s.identity_probes)


def runtime_grid(s: Settings):
    """The smaller grid the llama.cpp and GGUF comparisons run, on both sides of each comparison: T 0 and 1.0."""
    return identity_grid(s, [0.0, 1.0], 1 if s.smoke else 2)


def http_audit(root: Path, name: str, cmd: list[str], s: Settings, params, concurrency: int,
               reference: str | None = None) -> None:
    """Start a server with `cmd` (it takes --port), run the audit `params` against it; `reference`: the local copy
    of what it serves (default: the base model), which says whose model it is and gives expected token counts."""
    from selfid.audit.backends import HttpBackend
    from selfid.audit.run import run_audit

    out = root / "parity" / name
    # the same port each time for this name where it is free: the run records the endpoint's URL, and a resumed
    # audit must find the endpoint it started with
    port = 20000 + int(hashlib.sha256(name.encode()).hexdigest(), 16) % 20000
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    out.parent.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(cmd + ["--port", str(port)], cwd=ROOT_DIR, stdout=subprocess.DEVNULL,
                              stderr=open(out.parent / f"{name}-server.log", "w"))
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.time() + 300
        import urllib.request

        while True:
            try:
                urllib.request.urlopen(url + "/models", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit(f"the {name} server did not start: see {out.parent}/{name}-server.log")
                time.sleep(1)
        run_audit(HttpBackend(url, "embedded", concurrency=concurrency, reference=reference or s.model), params, out,
                  resume=out.exists(),
                  show_progress=False, margin=False)
    finally:
        server.terminate()
        server.wait(timeout=60)


def parity(root: Path, s: Settings) -> None:
    """The base model's identity audit through `selfid api` (HTTP), to compare with the in-process run."""
    cmd = [sys.executable, "-m", "selfid.cli", "api", "--model", s.model] + (["--device", s.device] if s.device else [])
    http_audit(root, "http", cmd, s, identity_grid(s, s.temps, s.samples), concurrency=256)


def llamacpp(root: Path, s: Settings) -> None:
    """The same through llama.cpp's own server on the embedded GGUF (the base model only)."""
    cmd = [sys.executable, str(ROOT_DIR / "bench" / "llamacpp_serve.py"), "--parallel", "8", "--threads",
           str(os.cpu_count() or 2)]
    http_audit(root, "llamacpp", cmd, s, runtime_grid(s), concurrency=8)


def inproc(root: Path, arm: str, s: Settings) -> None:
    """The arm's adapter in-process on the grid its GGUF is audited on (ROOT/parity/inproc-ARM)."""
    from selfid.audit.backends import InProcessBackend
    from selfid.audit.run import run_audit

    out = root / "parity" / f"inproc-{arm}"
    run_audit(InProcessBackend(load(s.model, adapter_of(root, arm), device=s.device)), runtime_grid(s), out,
              resume=out.exists(), show_progress=False, margin=False)


def export_gguf(root: Path, arm: str) -> None:
    """The arm's adapter merged and written as a Q8_0 GGUF (`selfid export --gguf`)."""
    from selfid.train.export import export

    export(adapter_of(root, arm), root / "gguf" / f"{arm}-merged", gguf="q8_0", progress=False)


def gguf(root: Path, arm: str, s: Settings) -> None:
    """What ships: the exported GGUF served by llama.cpp's own server, audited over HTTP like `llamacpp`
    (compare with ROOT/parity/inproc-ARM, the adapter in-process on the same grid)."""
    merged = root / "gguf" / f"{arm}-merged"
    cmd = [sys.executable, str(ROOT_DIR / "bench" / "llamacpp_serve.py"), "--gguf", str(merged / "gguf" / "model-q8_0.gguf"),
           "--parallel", "8", "--threads", str(os.cpu_count() or 2)]
    http_audit(root, f"gguf-{arm}", cmd, s, runtime_grid(s), concurrency=8, reference=str(merged))


# --- the stages, and the steps the command line names -------------------------------------------------

def stages(root: Path, s: Settings) -> list:
    """Every stage of the study in ROOT: what each reads and writes (paths under ROOT)."""
    from functools import partial as do

    from selfid.pipeline.stages import Stage, audit_problem, model_problem

    def audited(rel: str):
        return lambda: audit_problem(root / rel)

    def model(rel: str):
        return lambda: model_problem(root / rel)

    def written(rel: str):
        return lambda: None if (root / rel).is_file() else f"{rel} is missing"

    adapter = "{}/train/adapter".format
    found = [Stage("base", "audit the base model (development set)", do(audit_arm, root, "base", s),
                   outputs=("base/audit",), check=audited("base/audit")),
             Stage("heldout-base", "audit the base model on the held-out probes", do(heldout, root, "base", s),
                   outputs=("base/heldout",), check=audited("base/heldout"))]
    for arm in ARMS:
        found += [
            Stage(f"train-{arm}", f"train {arm}", do(train_arm, root, arm, s), outputs=(f"{arm}/train", f"{arm}/cost.json"),
                  check=model(adapter(arm))),
            Stage(f"audit-{arm}", f"audit {arm} (development set)", do(audit_arm, root, arm, s), inputs=(adapter(arm),),
                  outputs=(f"{arm}/audit",), check=audited(f"{arm}/audit")),
            Stage(f"compare-{arm}", f"compare base and {arm}", do(compare, root, arm),
                  inputs=("base/audit/summary.json", f"{arm}/audit/summary.json"), outputs=(f"{arm}/compare",),
                  check=written(f"{arm}/compare/comparison.json")),
            Stage(f"heldout-{arm}", f"audit {arm} on the held-out probes", do(heldout, root, arm, s),
                  inputs=(adapter(arm),), outputs=(f"{arm}/heldout",), check=audited(f"{arm}/heldout")),
            Stage(f"export-{arm}", f"export {arm} as a Q8_0 GGUF", do(export_gguf, root, arm), inputs=(adapter(arm),),
                  outputs=(f"gguf/{arm}-merged",), check=model(f"gguf/{arm}-merged")),
            Stage(f"inproc-{arm}", f"audit {arm} in-process on its GGUF's grid", do(inproc, root, arm, s),
                  inputs=(adapter(arm),), outputs=(f"parity/inproc-{arm}",), check=audited(f"parity/inproc-{arm}")),
            Stage(f"gguf-{arm}", f"audit {arm}'s GGUF through llama.cpp's server", do(gguf, root, arm, s),
                  inputs=(f"gguf/{arm}-merged",), outputs=(f"parity/gguf-{arm}",), check=audited(f"parity/gguf-{arm}")),
        ]
    found += [
        Stage("margins", "identity margin along plain's training", do(margins_along_training, root, s),
              inputs=(adapter("plain"),), outputs=("plain/margins.json",)),
        # its audits cannot continue a cut-off search: an interrupted search starts again
        Stage("search-scale", "search the plain adapter's LoRA scale", do(search_scale, root, s),
              inputs=(adapter("plain"),), outputs=("scale/search", "scale/adapter", "scale/cost.json"),
              check=model("scale/adapter"), resumable=False),
        Stage("audit-scale", "audit the scaled adapter (development set)", do(audit_arm, root, "scale", s),
              inputs=("scale/adapter",), outputs=("scale/audit",), check=audited("scale/audit")),
        Stage("compare-scale", "compare base and the scaled adapter", do(compare, root, "scale"),
              inputs=("base/audit/summary.json", "scale/audit/summary.json"), outputs=("scale/compare",),
              check=written("scale/compare/comparison.json")),
        Stage("scan", "scan plain's training data", do(scan_plain, root),
              inputs=("plain/train/train_data.jsonl",), outputs=("scan/scan.json",)),
        Stage("parity", "audit the base model through selfid api (HTTP)", do(parity, root, s),
              outputs=("parity/http",), check=audited("parity/http")),
        Stage("llamacpp", "audit the base model through llama.cpp's server", do(llamacpp, root, s),
              outputs=("parity/llamacpp",), check=audited("parity/llamacpp")),
    ]
    return found


def step_stages(step: str) -> list[str]:
    """The stages a command-line step asks for (the stages they need run first)."""
    arm = step.split("-", 1)[1] if "-" in step else None
    if step in ("base", "scan", "parity", "llamacpp"):
        return [step]
    if step in ARMS:
        return [f"compare-{step}"] + (["margins"] if step == "plain" else [])
    if step == "scale":
        return ["compare-scale"]
    if step.startswith("heldout-") and (arm in ARMS or arm == "base"):
        return [step]
    if step.startswith("train-") and arm in ARMS:
        return [step]
    if step.startswith("gguf-") and arm in ARMS:
        return [f"inproc-{arm}", step]
    if step.startswith(("inproc-", "export-")) and arm in ARMS:
        return [step]
    raise SystemExit(f"unknown step {step}: use {', '.join(STEPS + ['llamacpp'])}, heldout-ARM, train-ARM "
                     f"gguf-ARM, inproc-ARM or export-ARM (ARM: base, {', '.join(ARMS)})")


def run(root: Path, steps: list[str], s: Settings) -> dict[str, dict]:
    """Run `steps` in ROOT (what they need first, what is finished skipped); returns the stage records."""
    from selfid.pipeline.stages import Runner, line_say

    wanted = [name for step in steps for name in step_stages(step)]
    root.mkdir(parents=True, exist_ok=True)
    again = (f"python bench/study.py run --root {root} --steps {','.join(steps)} --model {s.model}"
             + (" --smoke" if s.smoke else ""))
    t0 = time.time()
    records = Runner(root, stages(root, s), say=line_say(log), resume_hint=again).run(wanted)
    log(f"{','.join(steps)}: {len(records)} stages finished in {time.time() - t0:.0f}s")
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--root", type=Path, required=True)
    r.add_argument("--steps", default=",".join(STEPS))
    r.add_argument("--model", default="embedded")
    r.add_argument("--smoke", action="store_true", help="CPU, a tiny model, tiny grids: checks the plumbing")
    p = sub.add_parser("report")
    p.add_argument("--root", type=Path, default=ROOT_DIR / "results" / "study-0.5b")
    p.add_argument("--out", type=Path, default=ROOT_DIR / "docs" / "study.md")
    p.add_argument("--size", action="append", default=None, metavar="LABEL=ROOT",
                   help="another model size's study root for the size table (default: 1.5B=results/study-1.5b)")
    args = ap.parse_args()
    if args.cmd == "run":
        s = Settings(args.smoke, args.model)
        if args.smoke:
            os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
            s.identity_probes = str(smoke_probes(args.root))
        run(args.root, [x for x in args.steps.split(",") if x], s)
    else:
        from bench.study_report import write_report

        extra = args.size if args.size is not None else [f"1.5B={ROOT_DIR / 'results' / 'study-1.5b'}"]
        sizes = [("0.5B", args.root)] + [(x.split("=", 1)[0], Path(x.split("=", 1)[1])) for x in extra]
        write_report(args.root, args.out, sizes if extra else None)


def smoke_probes(root: Path) -> Path:
    """Eight identity probes (4 zh, 4 en) from the shipped set, for a quick run."""
    from selfid.audit.probes import load_suite, write_identity_subset

    probes = load_suite("identity")
    pick = [p.id for p in probes if p.lang == "zh"][:4] + [p.id for p in probes if p.lang == "en"][:4]
    return write_identity_subset(root / "smoke-probes.jsonl", pick)


if __name__ == "__main__":
    main()
