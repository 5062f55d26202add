"""Do the files `selfid replay` writes load in the trainers they are for? Each trainer's own loader, on the CPU.

Each step runs in its own virtual environment, outside the repository (the trainers pin versions of torch,
transformers and trl that selfid's own environment must not take):

    python bench/replay_formats.py write OUT              # selfid's env: a tiny random Qwen2 model + a replay in OUT
    /work/venvs/lf/bin/python bench/replay_formats.py lf OUT         # llamafactory==0.9.5
    /work/venvs/trl/bin/python bench/replay_formats.py trl OUT       # trl==1.16.0
    /work/venvs/swift/bin/python bench/replay_formats.py swift OUT   # ms-swift==4.6.0

`write` builds the replay through selfid's own code path (selfid.pipeline.replay_export.run, every format) with a
scripted base model (tests/test_replay_export.py's: Qwen under its own prompt, ChatGPT under the others, a persona
kept every other sample), since the tiny random model says nothing the scorers keep. The other steps load those
files with the trainer's own code and print one line per check, then `OK name` or `FAILED name: why`:

- lf: LLaMA-Factory's `get_dataset` (its dataset_info.json parser, converters, template `qwen` and tokenizing) for
  the SFT files at stage sft and the pair files at stage rm (the one its DPO stage uses), then a one-step LoRA
  `llamafactory-cli train` at stage sft and at stage dpo with pref_ftx on the tiny model;
- trl: SFTTrainer and DPOTrainer each build their dataset from the files and take one step on the tiny model;
- swift: ms-swift's `load_dataset` on the files, and its template encodes every row (sft, and dpo with
  rejected_response).
Results: docs/benchmarks.md ("`selfid replay`'s files in each trainer").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS: list[tuple[str, bool, str]] = []


def check(name: str, fn) -> None:
    try:
        detail = fn()
        RESULTS.append((name, True, detail or ""))
        print(f"OK {name}" + (f": {detail}" if detail else ""), flush=True)
    except Exception as e:  # a trainer failing is a result to report, not a crash of the script
        traceback.print_exc()
        RESULTS.append((name, False, f"{type(e).__name__}: {e}"))
        print(f"FAILED {name}: {type(e).__name__}: {str(e)[:300]}", flush=True)


def write(out: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from selfid.config import IdentityReplay
    from selfid.model.load import load_model
    from selfid.pipeline import replay, replay_export
    from tests.test_replay_export import Model
    from tests.tiny import build_tiny_model

    out.mkdir(parents=True, exist_ok=True)
    model_dir = build_tiny_model(out / "model")
    loaded = load_model(str(model_dir), device="cpu", dtype="float32", progress=False)
    rep = IdentityReplay(samples=2, personas=1, after_task=1, preference=1.0,
                         persona_prompts=["You are Oliver, the booking assistant of Quartz Books."])
    record = replay_export.run(out / "replay", rep, backend=replay.in_process(loaded, Model(loaded.tokenizer)),
                               loaded=loaded, rows=64, progress=False)
    print(json.dumps({f: {"sft": w["sft"]["rows"], "pairs": w["pairs"]["rows"]} for f, w in record["formats"].items()}))


# --- LLaMA-Factory -------------------------------------------------------------------------------------------------
def lf(out: Path) -> None:
    data_dir, model = out / "replay" / "llamafactory", out / "model"
    info = json.loads((data_dir / "dataset_info.json").read_text())

    def dataset(name: str, stage: str):
        from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
        from llamafactory.hparams import get_train_args
        from llamafactory.model import load_tokenizer

        args = {"model_name_or_path": str(model), "stage": stage, "do_train": True, "finetuning_type": "lora",
                "dataset": name, "dataset_dir": str(data_dir), "template": "qwen", "cutoff_len": 512,
                "output_dir": str(out / "lf-out" / name), "overwrite_cache": True, "report_to": "none",
                "use_cpu": True}
        model_args, data_args, training_args, *_ = get_train_args(args)
        tok = load_tokenizer(model_args)
        template = get_template_and_fix_tokenizer(tok["tokenizer"], data_args)
        ds = get_dataset(template, model_args, data_args, training_args, stage, **tok)["train_dataset"]
        rows = len(json.loads((data_dir / info[name]["file_name"]).read_text()))
        if len(ds) != rows:
            raise AssertionError(f"{len(ds)} of {rows} rows survived LLaMA-Factory's converter")
        first = tok["tokenizer"].decode(ds[0]["input_ids"] if "input_ids" in ds.column_names else ds[0]["chosen_input_ids"])
        return f"{len(ds)} rows tokenized; row 0 begins {first[:90]!r}"

    for name, stage in (("selfid_identity", "sft"), ("selfid_identity_alpaca", "sft"),
                        ("selfid_identity_pairs", "rm"), ("selfid_identity_pairs_alpaca", "rm")):
        check(f"llamafactory get_dataset {name} (stage {stage})", lambda n=name, s=stage: dataset(n, s))

    def train(stage: str, dataset_name: str, extra: dict) -> str:
        import yaml

        cfg = {"model_name_or_path": str(model), "stage": stage, "do_train": True, "finetuning_type": "lora",
               "lora_target": "all", "lora_rank": 4, "dataset": dataset_name, "dataset_dir": str(data_dir),
               "template": "qwen", "cutoff_len": 512, "max_steps": 1, "per_device_train_batch_size": 2,
               "learning_rate": 1e-4, "output_dir": str(out / "lf-train" / stage), "overwrite_output_dir": True,
               "report_to": "none", "logging_steps": 1, "save_strategy": "no", "use_cpu": True, "bf16": False,
               **extra}
        path = out / f"lf-{stage}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "DISABLE_VERSION_CHECK": "1", "API_HOST": "127.0.0.1"}
        cli = Path(sys.executable).with_name("llamafactory-cli")
        done = subprocess.run([str(cli), "train", str(path)], capture_output=True, text=True, env=env, timeout=1200)
        log = done.stdout + done.stderr
        (out / f"lf-{stage}.log").write_text(log)
        if done.returncode:
            raise RuntimeError(f"exit {done.returncode}: {log[-600:]}")
        loss = [line.strip() for line in log.splitlines() if "'loss'" in line or "train_loss" in line]
        return loss[-1][:200] if loss else "trained one step"

    check("llamafactory-cli train stage sft (selfid_identity, 1 step)", lambda: train("sft", "selfid_identity", {}))
    check("llamafactory-cli train stage dpo pref_ftx (selfid_identity_pairs, 1 step)",
          lambda: train("dpo", "selfid_identity_pairs", {"pref_beta": 0.1, "pref_ftx": 1.0, "pref_loss": "sigmoid"}))


# --- TRL -----------------------------------------------------------------------------------------------------------
def trl(out: Path) -> None:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, files = out / "model", out / "replay" / "trl"
    torch.manual_seed(0)

    def sft():
        from trl import SFTConfig, SFTTrainer

        ds = load_dataset("json", data_files=str(files / "identity_replay_sft.jsonl"), split="train")
        tok = AutoTokenizer.from_pretrained(model_dir)
        trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), processing_class=tok,
                             train_dataset=ds, args=SFTConfig(output_dir=str(out / "trl-sft"), max_steps=1,
                                                              per_device_train_batch_size=2, report_to="none",
                                                              use_cpu=True, assistant_only_loss=False,
                                                              save_strategy="no", logging_steps=1))
        row = trainer.train_dataset[0]
        state = trainer.train()
        return (f"{len(trainer.train_dataset)} rows prepared (row 0: {len(row['input_ids'])} tokens), "
                f"one step, loss {state.training_loss:.3f}")

    def dpo():
        from trl import DPOConfig, DPOTrainer

        ds = load_dataset("json", data_files=str(files / "identity_replay_dpo.jsonl"), split="train")
        tok = AutoTokenizer.from_pretrained(model_dir)
        trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), processing_class=tok,
                             train_dataset=ds, args=DPOConfig(output_dir=str(out / "trl-dpo"), max_steps=1,
                                                              per_device_train_batch_size=2, report_to="none",
                                                              use_cpu=True, save_strategy="no", logging_steps=1))
        row = trainer.train_dataset[0]
        keys = sorted(k for k in row if k.endswith("ids"))
        state = trainer.train()
        return f"{len(trainer.train_dataset)} pairs prepared ({', '.join(keys)}), one step, loss {state.training_loss:.3f}"

    check("trl SFTTrainer (messages)", sft)
    check("trl DPOTrainer (prompt/chosen/rejected)", dpo)


# --- ms-swift ------------------------------------------------------------------------------------------------------
def swift(out: Path) -> None:
    from swift.dataset import load_dataset
    from swift.model import get_processor
    from swift.template import get_template

    model_dir, files = out / "model", out / "replay" / "swift"
    tok = get_processor(str(model_dir), model_type="qwen2", download_model=False)  # the tiny Qwen2 model

    def one(name: str, mode: str):
        ds, _ = load_dataset([str(files / name)])
        template = get_template(tok, template_type="qwen2_5", default_system=None)
        template.set_mode(mode)
        encoded = [template.encode(row) for row in ds]
        sample = encoded[0]
        keys = sorted(k for k in sample if k.endswith("input_ids"))
        return f"{len(ds)} rows loaded and encoded by template qwen2_5 ({', '.join(keys)})"

    check("ms-swift load_dataset + encode, sft (messages)", lambda: one("identity_replay.jsonl", "train"))
    check("ms-swift load_dataset + encode, dpo (rejected_response)", lambda: one("identity_replay_dpo.jsonl", "rlhf"))


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("write", "lf", "trl", "swift"):
        sys.exit(__doc__)
    step, out = sys.argv[1], Path(sys.argv[2]).resolve()
    {"write": write, "lf": lf, "trl": trl, "swift": swift}[step](out)
    if step != "write":
        failed = [n for n, ok, _ in RESULTS if not ok]
        print(f"{len(RESULTS) - len(failed)} passed, {len(failed)} failed")
        sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
