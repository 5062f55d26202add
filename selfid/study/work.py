"""The work of each step of the study, on one study folder: audits, training, comparisons, the runtime checks.

selfid.study.steps says which of these runs when (each is a stage of selfid.pipeline.stages); each function here
writes only what its stage declares as outputs, under the study folder.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from selfid.audit.backends import HttpBackend, InProcessBackend
from selfid.audit.compare import compare_runs
from selfid.audit.report.html import write_html
from selfid.audit.run import AuditParams, audit_systems, run_audit, serving_systems
from selfid.audit.scan import scan
from selfid.config import load_config
from selfid.errors import SelfidError
from selfid.io import atomic_write_json
from selfid.manifest import read as read_manifest, training_system, training_system_message
from selfid.model.load import load_model
from selfid.pipeline.adapter_scale import identity_rate_provider, make_evaluate
from selfid.pipeline.stages import model_problem
from selfid.pipeline.train import run as train_pipeline
from selfid.study.arms import Arm, arms, merged
from selfid.study.scale import Scale
from selfid.study.verdict import verdict, verdict_lines
from selfid.system_prompt import HELPFUL, SERVING
from selfid.train.export import export
from selfid.train.scale import save_scaled, search_scale as search

PROBES = "probes/identity.jsonl"  # the development probes of a scale that names a subset of them
# the held-out identity probes run under the serving system prompts and three persona prompts no training data uses
HELDOUT_SYSTEMS = ",".join(SERVING) + ",personas"
# what training says instead of its warning about a system prompt other than the template's own
BY_DESIGN = (f"by design: this arm trains under {HELPFUL!r} (LLaMA-Factory's default for Qwen until April 2025), not "
             "the template's own Qwen line, because that is the set-up whose effect on identity the study measures")


def log_line(msg: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass(frozen=True)
class Study:
    """One study folder and how its steps run there."""

    root: Path
    scale: Scale
    model: str = "embedded"  # what `selfid --model` takes
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    progress: bool = False  # progress bars (a terminal) rather than log lines (a log file)
    log: Callable[[str], None] = log_line
    console: object = field(default=None, compare=False)  # the rich console training reports on (None: its own)

    def __post_init__(self):
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise SelfidError(f"unknown device {self.device!r}: use auto, cpu, cuda or cuda:N")

    @property
    def probes(self) -> Path | None:
        return self.root / PROBES if self.scale.probes else None


def adapter_of(study: Study, arm: str) -> Path:
    """The adapter an arm's audits load: ROOT/ARM/train/adapter, the searched scale's in ROOT/scale/adapter."""
    return study.root / "scale" / "adapter" if arm == "scale" else study.root / arm / "train" / "adapter"


def load(study: Study, adapter: Path | None = None):
    return load_model(study.model, adapter=adapter, device=None if study.device == "auto" else study.device,
                      progress=study.progress)


# --- audits ---------------------------------------------------------------------------------------------

def dev_params(study: Study, loaded, suites=None) -> AuditParams:
    """The development grid at the study's scale (steps base, ARM)."""
    s = study.scale
    return AuditParams(suites=list(suites or s.suites),
                       systems=audit_systems([",".join(SERVING)], loaded.chat.default_system,
                                             training_system(loaded.manifest)),
                       temperatures=list(s.temperatures), samples=s.samples, max_new_tokens=s.max_new_tokens,
                       ner_limit=s.ner_limit, ner_max_new_tokens=s.ner_max_new_tokens,
                       identity_probes=str(study.probes) if study.probes else None,
                       task_systems=list(s.task_systems) if s.task_systems is not None else None)


def runtime_params(study: Study, temperatures, samples: int) -> AuditParams:
    """The development identity probes under the serving system prompts (the runtime comparisons; what the
    endpoint's template inserts is not known to the side that runs over HTTP)."""
    s = study.scale
    return AuditParams(suites=["identity"], systems=serving_systems(), temperatures=list(temperatures), samples=samples,
                       max_new_tokens=s.max_new_tokens, ner_limit=s.ner_limit,
                       identity_probes=str(study.probes) if study.probes else None)


def audit_arm(study: Study, arm: str) -> None:
    """The development-set audit of the base model (arm "base"), an arm's adapter or the scaled one: ROOT/ARM/audit."""
    loaded = load(study, None if arm == "base" else adapter_of(study, arm))
    out = study.root / arm / "audit"
    run_audit(InProcessBackend(loaded), dev_params(study, loaded), out, resume=(out / "run.json").is_file(),
              show_progress=study.progress, margin=study.scale.margin)


def heldout(study: Study, arm: str) -> None:
    """The held-out identity probes, and NER under two prompts every arm shares: ROOT/ARM/heldout."""
    s = study.scale
    loaded = load(study, None if arm == "base" else adapter_of(study, arm))
    params = AuditParams(suites=["identity-heldout", "ner"],
                         systems=audit_systems([HELDOUT_SYSTEMS], loaded.chat.default_system),
                         temperatures=list(s.temperatures), samples=s.heldout_samples,
                         max_new_tokens=s.heldout_max_new_tokens, ner_limit=s.ner_limit,
                         ner_max_new_tokens=s.ner_max_new_tokens, task_systems=["template", "helpful"])
    out = study.root / arm / "heldout"
    run_audit(InProcessBackend(loaded), params, out, resume=(out / "run.json").is_file(),
              show_progress=study.progress, margin=False)


def compare(study: Study, arm: str) -> None:
    """Base vs ARM on the development set: ROOT/ARM/compare/comparison.json and report.html, the verdict on top."""
    comp, sa, sb = compare_runs(study.root / "base" / "audit", study.root / arm / "audit")
    comp["verdict"] = verdict(sa, sb)
    out = study.root / arm / "compare"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "comparison.json", comp)
    write_html(out / "report.html", [sa, sb], comp, headline=verdict_lines(comp["verdict"]))


# --- training --------------------------------------------------------------------------------------------

def train_config(study: Study, arm: Arm):
    """The arm's run config: the scale's training keys, the arm's on top (selfid/study/arms.yaml)."""
    s = study.scale
    over = dict(arm.config)
    if arm.replays:
        over["identity_replay"] = {**arm.config["identity_replay"], **s.replay}
    if arm.margins:
        over["train"] = {**over.get("train", {}), "save_every": s.margin_every, "keep_checkpoints": 50}
    base = {"model": study.model, "output": str(study.root / arm.name / "train"), "device": study.device}
    return load_config(None, base=merged(merged(base, s.train), over))


def train_arm(study: Study, arm: str) -> dict:
    """Train an arm (continuing from its last checkpoint); ROOT/ARM/train, and ROOT/ARM/cost.json."""
    from selfid.train.sft import checkpoints  # torch

    run = study.root / arm / "train"
    t0 = time.time()
    # an adapter already there: an earlier attempt stopped after it, before cost.json
    needs = model_problem(run / "adapter") is not None
    if needs:
        cfg = train_config(study, arms()[arm])
        by_design = BY_DESIGN if cfg.system_prompt == HELPFUL else None
        result = train_pipeline(cfg, resume=bool(checkpoints(run)), console=study.console, log=study.log,
                                system_prompt_by_design=by_design)
        if result.stopped:  # a signal: the checkpoint is saved, the same command continues
            raise KeyboardInterrupt
    metrics = read_manifest(run / "adapter").record()["metrics"]
    cost = {"wall_s": time.time() - t0 if needs else None, **{k: metrics.get(k) for k in (
        "tokens_per_s", "train_wall_s", "tokens_trained", "steps", "peak_memory_gb", "final_loss")}}
    atomic_write_json(study.root / arm / "cost.json", cost)
    return cost


def margins_along_training(study: Study, arm: str = "plain") -> None:
    """The identity margin of the base model and of each of an arm's checkpoints: ROOT/ARM/margins.json."""
    from selfid.audit.margin import identity_margin  # torch

    ckpts = sorted((study.root / arm / "train" / "checkpoints").glob("step-*"),
                   key=lambda p: int(p.name.split("-")[-1]))
    systems = [(k, v.message) for k, v in serving_systems().items()]
    points = [{"step": 0, "margin": identity_margin(load(study), systems, "qwen")}]
    for ck in ckpts:
        points.append({"step": int(ck.name.split("-")[-1]),
                       "margin": identity_margin(load(study, ck / "adapter"), systems, "qwen")})
    atomic_write_json(study.root / arm / "margins.json", points)
    study.log(f"identity margin at {len(points)} points along training")


def search_scale(study: Study) -> dict:
    """The plain adapter's LoRA scale searched to restore the base identity rate: ROOT/scale/."""
    s = study.scale
    plain = adapter_of(study, "plain")
    loaded = load(study, plain)
    rate = identity_rate_provider(study.root / "scale" / "search", temperatures=(1.0,), samples=s.scale_samples,
                                  max_new_tokens=s.max_new_tokens)
    evaluate = make_evaluate(loaded, rate, s.scale_ner, training_system_message(loaded.manifest))
    t0 = time.time()
    found = search(evaluate, grid=s.scale_grid, f1_tolerance=0.01)
    save_scaled(plain, found.scale, study.root / "scale" / "adapter", found)
    atomic_write_json(study.root / "scale" / "cost.json", {"search_wall_s": time.time() - t0, **found.to_dict()})
    study.log(f"scale search: {found.reason}")
    return {"scale": found.scale}


def scan_plain(study: Study) -> None:
    """`selfid scan` of the conversations the plain arm trained on: ROOT/scan/scan.json."""
    report = scan(study.root / "plain" / "train" / "train_data.jsonl")
    atomic_write_json(study.root / "scan" / "scan.json", report.as_dict())


# --- the runtime comparisons: the same grid through a server --------------------------------------------

def _port(name: str) -> int:
    """The same port each time for this name where it is free: the run records the endpoint's URL, and a resumed
    audit must find the endpoint it started with."""
    port = 20000 + int(hashlib.sha256(name.encode()).hexdigest(), 16) % 20000
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    return port


def http_audit(study: Study, name: str, cmd: list[str], params: AuditParams, concurrency: int,
               reference: str | None = None) -> None:
    """Start a server with `cmd` (it takes --port), audit it with `params` into ROOT/parity/NAME; `reference`: the
    local copy of what it serves (default: the study's model), which says whose model it is and gives expected
    token counts."""
    out = study.root / "parity" / name
    port = _port(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{name}-server.log", "w") as server_log:
        server = subprocess.Popen(cmd + ["--port", str(port)], stdout=subprocess.DEVNULL, stderr=server_log)
        try:
            url = f"http://127.0.0.1:{port}/v1"
            deadline = time.time() + 300
            while True:
                try:
                    urllib.request.urlopen(url + "/models", timeout=2)
                    break
                except OSError:
                    if time.time() > deadline or server.poll() is not None:
                        raise SelfidError(f"the {name} server did not start: see {out.parent}/{name}-server.log")
                    time.sleep(1)
            run_audit(HttpBackend(url, "embedded", concurrency=concurrency, reference=reference or study.model), params,
                      out, resume=out.exists(), show_progress=study.progress, margin=False)
        finally:
            server.terminate()
            server.wait(timeout=60)


def llamacpp_cmd(gguf: Path | None = None) -> list[str]:
    """llama.cpp's own server (selfid.study.llamacpp_server; `pip install xllamacpp`) on `gguf` (default: the
    embedded model's), 8 slots, every CPU core."""
    return ([sys.executable, "-m", "selfid.study.llamacpp_server"] + (["--gguf", str(gguf)] if gguf else [])
            + ["--parallel", "8", "--threads", str(os.cpu_count() or 2)])


def parity(study: Study) -> None:
    """The base model's identity audit through `selfid api` (HTTP), to compare with the in-process run."""
    cmd = [sys.executable, "-m", "selfid.cli", "api", "--model", study.model] + (
        ["--device", study.device] if study.device != "auto" else [])
    s = study.scale
    http_audit(study, "http", cmd, runtime_params(study, s.temperatures, s.samples), concurrency=256)


def llamacpp(study: Study) -> None:
    """The same through llama.cpp's own server on the embedded GGUF (the base model only), T 0 and 1.0."""
    http_audit(study, "llamacpp", llamacpp_cmd(), runtime_params(study, (0.0, 1.0), study.scale.runtime_samples),
               concurrency=8)


def inproc(study: Study, arm: str) -> None:
    """The arm's adapter in-process on the grid its GGUF is audited on: ROOT/parity/inproc-ARM."""
    out = study.root / "parity" / f"inproc-{arm}"
    run_audit(InProcessBackend(load(study, adapter_of(study, arm))),
              runtime_params(study, (0.0, 1.0), study.scale.runtime_samples), out, resume=out.exists(),
              show_progress=study.progress, margin=False)


def export_gguf(study: Study, arm: str) -> None:
    """The arm's adapter merged and written as a Q8_0 GGUF (`selfid export --gguf`): ROOT/gguf/ARM-merged."""
    export(adapter_of(study, arm), study.root / "gguf" / f"{arm}-merged", gguf="q8_0", progress=False)


def gguf(study: Study, arm: str) -> None:
    """What ships: the exported GGUF served by llama.cpp's own server, audited over HTTP like `llamacpp`
    (compare with ROOT/parity/inproc-ARM, the adapter in-process on the same grid)."""
    merged_dir = study.root / "gguf" / f"{arm}-merged"
    http_audit(study, f"gguf-{arm}", llamacpp_cmd(merged_dir / "gguf" / "model-q8_0.gguf"),
               runtime_params(study, (0.0, 1.0), study.scale.runtime_samples), concurrency=8,
               reference=str(merged_dir))
