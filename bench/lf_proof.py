"""The fix through LLaMA-Factory's own trainer (issue 22): four LoRA arms trained with `llamafactory-cli train` and
audited by selfid on the held-out split. bench/gpu/lf.sh runs it on a GPU machine, in this order:

    python bench/lf_proof.py data ROOT --model MODEL [--identity LF_IDENTITY_JSON]
        ROOT/lf_data/: 8,000 MSRA train sentences in LLaMA-Factory's alpaca format (msra_ner.json, selfid's NER prompt
        and JSON answer, as `selfid train` trains them), LLaMA-Factory's data/identity.json with {{name}}/{{author}}
        filled for Qwen (identity_qwen.json: the anchor users reach for), dataset_info.json; ROOT/model.txt: the
        transformers folder of MODEL that LLaMA-Factory trains (selfid converts the embedded GGUF once)
    selfid replay --model MODEL --out ROOT/replay --format lf-alpaca --fraction 0.05 --data ROOT/lf_data/msra_ner.json
    python bench/lf_proof.py base ROOT    (may run beside the replay) the base model's held-out audit
    python bench/lf_proof.py configs ROOT
        copies the replay's files and dataset_info.json entries into ROOT/lf_data, writes each arm's identity rows
        as ROOT/ARM/train_data.jsonl (the audit counts replies copying them) and ROOT/configs/ARM.yaml:
          plain       LoRA on msra_ner
          identity    LoRA on msra_ner + identity_qwen
          replay      LoRA on msra_ner + selfid_identity_alpaca (the replay's SFT conversations, 5% of the mix)
          replay_dpo  the replay arm's adapter trained on by LF's DPO stage on selfid_identity_pairs_alpaca, with
                      pref_ftx (an SFT loss on the chosen replies); its reference model is the base (the adapter off)
        and ROOT/commands.sh: the llamafactory-cli and selfid audit commands, in order
    bash ROOT/commands.sh

The recipe is the study's (selfid/study/scale.py FULL): LoRA r=8, alpha 16, every linear layer, lr 4e-4, cosine, 5%
warm-up, 5 epochs, template `qwen` (its default system prompt is Qwen's own line, as the study's `template` arms).
Each adapter is audited as the study audits its held-out arms (suites identity-heldout,ner; the serving and persona
system prompts; T 0, 0.7, 1.0, 1.3 x 4 samples; NER under template and helpful).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT_DIR))

ARMS = ("plain", "identity", "replay", "replay_dpo")
SENTENCES = 8000
RECIPE = {  # LLaMA-Factory keys (its hparams), the study's recipe
    "stage": "sft", "do_train": True, "finetuning_type": "lora", "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.0,
    "lora_target": "all", "template": "qwen", "cutoff_len": 1024, "num_train_epochs": 5.0, "learning_rate": 4.0e-4,
    "lr_scheduler_type": "cosine", "warmup_ratio": 0.05, "per_device_train_batch_size": 32,
    "gradient_accumulation_steps": 1, "bf16": True, "logging_steps": 10, "save_strategy": "no", "report_to": "none",
    "overwrite_output_dir": True, "preprocessing_num_workers": 8, "seed": 0,
    # eager attention: with LLaMA-Factory's default (sdpa) on the GPU image (torch 2.11, transformers 5.6.0) the plain
    # arm's gradient went NaN at step 7 of 1,250 with `bf16` on and off (the weights load in bf16 either way), and
    # every later step logged loss 0;
    # with `flash_attn: disabled` the same 12 steps stayed finite (2026-12-07, one H100; LLaMA-Factory issue #8088
    # reports the same on Qwen2.5-1.5B LoRA and the same cure)
    "flash_attn": "disabled",
}
DPO = {"stage": "dpo", "pref_beta": 0.1, "pref_loss": "sigmoid", "pref_ftx": 1.0, "num_train_epochs": 2.0,
       "learning_rate": 1.0e-4, "per_device_train_batch_size": 16}
AUDIT = ["--suites", "identity-heldout,ner", "--systems", "template,helpful,empty,personas",
         "--task-systems", "template,helpful", "--temperatures", "0,0.7,1.0,1.3", "--samples", "4",
         "--max-tokens", "160", "--ner-limit", "500"]


def msra_alpaca(n: int = SENTENCES, seed: int = 0) -> list[dict]:
    """MSRA train sentences as LLaMA-Factory alpaca rows: selfid's NER prompt and JSON answer, no system prompt (the
    template's own)."""
    from selfid.data.sources import msra_samples

    return [{"instruction": s.messages[0]["content"], "input": "", "output": s.messages[1]["content"]}
            for s in msra_samples(n, seed)]


def fill_identity(rows: list[dict], name: str = "Qwen", author: str = "Alibaba Cloud") -> list[dict]:
    """LLaMA-Factory's data/identity.json with its {{name}} and {{author}} placeholders filled (as its README says)."""
    def fill(text: str) -> str:
        return text.replace("{{name}}", name).replace("{{author}}", author)

    return [{k: fill(v) if isinstance(v, str) else v for k, v in r.items()} for r in rows]


ALPACA = {"columns": {"prompt": "instruction", "query": "input", "response": "output"}}


def write_data(root: Path, model: str, identity: Path | None) -> dict:
    """ROOT/lf_data (msra_ner.json, identity_qwen.json, dataset_info.json) and ROOT/model.txt."""
    from selfid.model.load import load_model

    data = root / "lf_data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "msra_ner.json").write_text(json.dumps(msra_alpaca(), ensure_ascii=False, indent=0), encoding="utf-8")
    info = {"msra_ner": {"file_name": "msra_ner.json", **ALPACA}}
    if identity is not None:
        rows = fill_identity(json.loads(Path(identity).read_text(encoding="utf-8")))
        (data / "identity_qwen.json").write_text(json.dumps(rows, ensure_ascii=False, indent=0), encoding="utf-8")
        info["identity_qwen"] = {"file_name": "identity_qwen.json", **ALPACA}
    (data / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    loaded = load_model(model, progress=True)
    if loaded.path is None:
        raise SystemExit(f"{model} has no transformers folder LLaMA-Factory could train")
    (root / "model.txt").write_text(f"{model}\n{loaded.path}\n")
    return info


def arm_configs(root: Path, model_dir: str) -> dict[str, dict]:
    """The LLaMA-Factory training config of each arm (`llamafactory-cli train FILE`)."""
    data = str(root / "lf_data")

    def sft(arm: str, datasets: str) -> dict:
        return {**RECIPE, "model_name_or_path": model_dir, "dataset_dir": data, "dataset": datasets,
                "output_dir": str(root / arm / "adapter")}

    configs = {"plain": sft("plain", "msra_ner"), "identity": sft("identity", "msra_ner,identity_qwen"),
               "replay": sft("replay", "msra_ner,selfid_identity_alpaca")}
    configs["replay_dpo"] = {**RECIPE, **DPO, "model_name_or_path": model_dir, "dataset_dir": data,
                             "dataset": "selfid_identity_pairs_alpaca",
                             "adapter_name_or_path": configs["replay"]["output_dir"],  # trained on, not a new one
                             "output_dir": str(root / "replay_dpo" / "adapter")}
    return configs


def diverged(adapter: Path) -> str | None:
    """Why a LLaMA-Factory run's adapter must not be trusted (a NaN or infinite loss or gradient norm in its
    trainer_state.json log), or None when its log is finite or absent."""
    state = adapter / "trainer_state.json"
    if not state.is_file():
        return None
    for entry in json.loads(state.read_text(encoding="utf-8")).get("log_history", []):
        for key in ("loss", "grad_norm"):
            value = entry.get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                return f"{key} {value} at step {entry.get('step')}"
    return None


def check_trained(arm_dir: Path) -> int:
    """After `llamafactory-cli train`: an adapter whose training diverged is moved aside (ARM/adapter-diverged, kept
    for reading) so it is neither audited nor taken as done, and the chain stops with the reason."""
    adapter = arm_dir / "adapter"
    why = diverged(adapter)
    if why is None:
        return 0
    aside = arm_dir / "adapter-diverged"
    shutil.rmtree(aside, ignore_errors=True)
    adapter.rename(aside)
    print(f"{arm_dir.name}: LLaMA-Factory's training diverged ({why}); its adapter is kept in {aside} and not audited. "
          "Look at train.log; the recipe's attention setting (flash_attn) is the first thing to check.", file=sys.stderr)
    return 1


def audit_command(root: Path, model: str, arm: str) -> str:
    """The held-out audit of one arm (base: the model without an adapter), skipped when its summary exists and
    continued (--resume) where a stopped one left off."""
    out = root / arm / "heldout"
    adapter = "" if arm == "base" else f" --adapter {root / arm / 'adapter'}"
    return (f"[ -f {out / 'summary.json'} ] || python3 -m selfid.cli audit --model {shlex.quote(model)} "
            f"{' '.join(AUDIT)}{adapter} --out {out} --resume")


def write_identity_rows(root: Path, info: dict) -> dict[str, int]:
    """ROOT/ARM/train_data.jsonl: the identity conversations each arm trains on, as messages (what `selfid audit
    --adapter` reads beside an adapter to count replies that copy one of its training replies): identity.json's rows
    for the identity arm, the replay's SFT rows for the replay arm, and those plus the pairs' chosen replies for its
    DPO stage. The NER rows are left out (the audit skips JSON replies anyway)."""
    from selfid.data.readers import alpaca_messages

    data = root / "lf_data"

    def rows(name: str, answer: str = "output") -> list[dict]:
        if name not in info:
            return []
        records = json.loads((data / info[name]["file_name"]).read_text(encoding="utf-8"))
        return [{"messages": list(alpaca_messages({**r, "output": r[answer]}, f"{name} row {i}"))}
                for i, r in enumerate(records)]

    arms = {"identity": rows("identity_qwen"), "replay": rows("selfid_identity_alpaca")}
    arms["replay_dpo"] = arms["replay"] + rows("selfid_identity_pairs_alpaca", "chosen")
    for arm, conversations in arms.items():
        (root / arm).mkdir(exist_ok=True)
        (root / arm / "train_data.jsonl").write_text(
            "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in conversations), encoding="utf-8")
    return {arm: len(c) for arm, c in arms.items()}


def write_configs(root: Path) -> Path:
    """Merge the replay into ROOT/lf_data, write ROOT/configs/*.yaml and ROOT/commands.sh; returns the commands."""
    model, model_dir = (root / "model.txt").read_text().split("\n")[:2]
    data = root / "lf_data"
    info = json.loads((data / "dataset_info.json").read_text())
    replay = root / "replay" / "llamafactory"
    if not (replay / "dataset_info.json").is_file():
        raise SystemExit(f"{replay} holds no replay: run selfid replay --format lf-alpaca --out {root / 'replay'} first")
    for name, entry in json.loads((replay / "dataset_info.json").read_text()).items():
        shutil.copy(replay / entry["file_name"], data / entry["file_name"])
        info[name] = entry
    (data / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
    write_identity_rows(root, info)
    (root / "configs").mkdir(exist_ok=True)
    arms = [a for a in ARMS if a != "identity" or "identity_qwen" in info]
    lines = ["#!/usr/bin/env bash", "# written by bench/lf_proof.py configs: train the arms, then audit them on the held-out split",
             "#   bash commands.sh                 every chain, one after another",
             "#   bash commands.sh CHAIN...        only these chains: base plain identity replay_dpo; on several GPUs,",
             "#   e.g. CUDA_VISIBLE_DEVICES=0 bash commands.sh base plain & CUDA_VISIBLE_DEVICES=1 bash commands.sh "
             "identity & CUDA_VISIBLE_DEVICES=2 bash commands.sh replay_dpo",
             "# (replay_dpo trains the replay arm first; every step skips what is done)",
             "#   bash commands.sh audits          the audits still missing of the arms already trained, one at a time",
             "# LF_SITE: LLaMA-Factory's own packages (bench/gpu/lf.sh), first on its path only; selfid keeps the image's",
             "set -euo pipefail", "export API_HOST=127.0.0.1", ""]
    train, audit = {}, {"base": audit_command(root, model, "base")}
    configs = arm_configs(root, model_dir)
    for arm in arms:
        path = root / "configs" / f"{arm}.yaml"
        path.write_text(yaml.safe_dump(configs[arm], sort_keys=False, allow_unicode=True))
        train[arm] = (f"[ -f {root / arm / 'adapter' / 'adapter_config.json'} ] || {{ "
                      f'PYTHONPATH="${{LF_SITE:-}}:${{PYTHONPATH:-}}" llamafactory-cli train {path} 2>&1 | '
                      f"tee {root / arm / 'train.log'}; python3 {Path(__file__).resolve()} check {root / arm}; }}")
        audit[arm] = audit_command(root, model, arm)
    # a chain trains its arms in order and audits each as soon as it is trained (replay_dpo: the replay arm's audit
    # runs beside the DPO stage, which trains on from that arm's adapter), so an interrupted chain has audited all
    # but its last arm
    chains = {"base": ["base"], "plain": ["plain"], "identity": ["identity"], "replay_dpo": ["replay", "replay_dpo"]}
    present = [c for c, members in chains.items() if all(m in audit for m in members)]
    for chain in present:
        members = chains[chain]
        body = []
        for m in members:
            body += [train[m]] if m in train else []
            body += [f"{audit[m]} &" if m != members[-1] else audit[m]]
        body += ["wait"] if len(members) > 1 else []
        lines += [f"{chain}() {{"] + [f"  {line}" for line in body] + ["}"]
    # `audits`: every audit still missing, of each arm already trained, one after another (alone on the card: audits
    # that ran beside the trainings have run out of GPU memory), with nothing trained
    lines += ["audits() {", f"  {audit['base']}"] + [
        f"  [ ! -f {root / arm / 'adapter' / 'adapter_config.json'} ] || {audit[arm]}" for arm in arms] + ["}"]
    lines += ["", f'[ $# -gt 0 ] || set -- {" ".join(present)}', 'for chain in "$@"; do "$chain"; done', ""]
    for arm in arms[1:]:
        lines.append(f"[ -f {root / arm / 'heldout' / 'summary.json'} ] && python3 -m selfid.cli compare "
                     f"{root / 'plain' / 'heldout'} {root / arm / 'heldout'} --out {root / arm / 'vs-plain'} || true")
    commands = root / "commands.sh"
    for arm in ARMS:
        (root / arm).mkdir(exist_ok=True)
    commands.write_text("\n".join(lines) + "\n")
    return commands


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="step", required=True)
    d = sub.add_parser("data")
    d.add_argument("root", type=Path)
    d.add_argument("--model", default="embedded")
    d.add_argument("--identity", type=Path, help="LLaMA-Factory's data/identity.json (its source distribution's)")
    c = sub.add_parser("configs")
    c.add_argument("root", type=Path)
    b = sub.add_parser("base", help="the base model's held-out audit, before the replay and configs exist")
    b.add_argument("root", type=Path)
    k = sub.add_parser("check", help="after training an arm: stop if its training diverged")
    k.add_argument("arm_dir", type=Path)
    args = ap.parse_args()
    if args.step == "data":
        info = write_data(args.root.resolve(), args.model, args.identity)
        print(f"wrote {args.root / 'lf_data'}: {', '.join(info)}")
    elif args.step == "check":
        sys.exit(check_trained(args.arm_dir))
    elif args.step == "base":
        root = args.root.resolve()
        model = (root / "model.txt").read_text().split("\n")[0]
        sys.exit(subprocess.run(audit_command(root, model, "base"), shell=True).returncode)
    else:
        print(f"wrote {write_configs(args.root.resolve())}")


if __name__ == "__main__":
    main()
