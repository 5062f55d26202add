"""bench/lf_proof.py, the LLaMA-Factory proof's CPU part: the MSRA data converted to LLaMA-Factory's alpaca format, its
identity.json filled, and the configs and commands of the four arms (the GPU runs them: bench/gpu/lf.sh)."""

import json

import yaml

from bench import lf_proof
from selfid.data import msra, trainer_formats
from selfid.data.readers import alpaca_messages
from selfid.data.sources import msra_samples


def test_msra_becomes_alpaca_rows_that_read_back_as_the_ner_conversations():
    rows = lf_proof.msra_alpaca(40)
    assert [alpaca_messages(r, "row") for r in rows] == [s.messages for s in msra_samples(40)]
    assert all(set(r) == {"instruction", "input", "output"} for r in rows)  # no system: the template's own
    test = {s.chars for s in msra.load("test")}
    assert not any(r["instruction"].split("句子：", 1)[1] in test for r in rows)


def test_identity_json_is_filled_for_qwen():
    rows = [{"instruction": "你是谁？", "input": "", "output": "您好，我是 {{name}}，由 {{author}} 开发。"}]
    assert lf_proof.fill_identity(rows) == [{"instruction": "你是谁？", "input": "",
                                              "output": "您好，我是 Qwen，由 Alibaba Cloud 开发。"}]


def test_the_four_arms_train_in_order_on_datasets_their_dataset_dir_holds(tmp_path):
    root = tmp_path / "lf"
    data = root / "lf_data"
    data.mkdir(parents=True)
    (data / "msra_ner.json").write_text(json.dumps(lf_proof.msra_alpaca(10)))
    (data / "identity_qwen.json").write_text("[]")
    (data / "dataset_info.json").write_text(json.dumps({"msra_ner": {"file_name": "msra_ner.json", **lf_proof.ALPACA},
                                                        "identity_qwen": {"file_name": "identity_qwen.json"}}))
    (root / "model.txt").write_text("embedded\n/cache/embedded-model\n")
    replay = root / "replay" / "llamafactory"
    replay.mkdir(parents=True)
    sft = [[{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am Qwen."}]]
    pairs = [{"system": None, "messages": sft[0][:1], "chosen": "I am Qwen.", "rejected": "I am Claude."}]
    for rel, text in trainer_formats.render("lf-alpaca", sft, pairs).items():
        (root / "replay" / rel).write_text(text)
    (replay / "dataset_info.json").write_text(trainer_formats.dataset_info(["lf-alpaca"]))

    commands = lf_proof.write_configs(root).read_text().splitlines()
    info = json.loads((data / "dataset_info.json").read_text())
    configs = {arm: yaml.safe_load((root / "configs" / f"{arm}.yaml").read_text()) for arm in lf_proof.ARMS}
    for arm, cfg in configs.items():
        assert cfg["model_name_or_path"] == "/cache/embedded-model" and cfg["template"] == "qwen"
        assert cfg["finetuning_type"] == "lora" and cfg["lora_rank"] == 8 and cfg["lora_target"] == "all"
        assert cfg["flash_attn"] == "disabled"  # sdpa went NaN on the GPU image (bench/lf_proof.py RECIPE)
        assert cfg["dataset_dir"] == str(data) and cfg["output_dir"] == str(root / arm / "adapter")
        for name in cfg["dataset"].split(","):
            assert (data / info[name]["file_name"]).is_file(), (arm, name)
    assert configs["plain"]["dataset"] == "msra_ner" and configs["plain"]["num_train_epochs"] == 5
    assert configs["identity"]["dataset"] == "msra_ner,identity_qwen"
    assert configs["replay"]["dataset"] == "msra_ner,selfid_identity_alpaca" and configs["replay"]["stage"] == "sft"
    dpo = configs["replay_dpo"]
    assert dpo["stage"] == "dpo" and dpo["pref_ftx"] > 0 and dpo["dataset"] == "selfid_identity_pairs_alpaca"
    assert info["selfid_identity_pairs_alpaca"]["ranking"] is True
    assert dpo["adapter_name_or_path"] == configs["replay"]["output_dir"]  # DPO goes on from the replay arm
    trains = [line for line in commands if "llamafactory-cli train" in line]
    assert [t.split("configs/")[1].split(".yaml")[0] for t in trains] == list(lf_proof.ARMS)  # replay before its DPO
    chains_only = commands[:commands.index("audits() {")]
    audits = [line for line in chains_only if "selfid.cli audit" in line]
    assert len(audits) == 5 and all(a.rstrip(" &").endswith("--resume") for a in audits) and all("identity-heldout,ner" in a and "personas" in a for a in audits)
    assert {a.split("--adapter ")[1].split()[0] for a in audits if "--adapter" in a} == \
        {str(root / arm / "adapter") for arm in lf_proof.ARMS}
    for arm in lf_proof.ARMS:  # each arm is audited after it is trained
        train = next(i for i, line in enumerate(commands) if f"configs/{arm}.yaml" in line)
        assert train < next(i for i, line in enumerate(commands) if f"--adapter {root / arm / 'adapter'} " in line)
    chain = commands.index("replay_dpo() {")  # one chain trains the replay arm, audits it beside its DPO stage
    assert "configs/replay.yaml" in commands[chain + 1] and commands[chain + 2].rstrip().endswith("&")
    assert "configs/replay_dpo.yaml" in commands[chain + 3]


def _stub_run(root, tmp_path, *chains):
    """Run ROOT/commands.sh with llamafactory-cli and python3 replaced by stubs that log their arguments."""
    import os
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    log.write_text("")
    for name in ("llamafactory-cli", "python3"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n')
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    run = subprocess.run(["bash", str(root / "commands.sh"), *chains], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    calls = []
    for line in log.read_text().splitlines():
        if line.startswith("llamafactory-cli"):
            calls.append("train " + line.split("configs/")[1].split(".yaml")[0])
        elif "lf_proof.py check " in line:
            calls.append("check " + line.rsplit("/", 1)[1])
        elif "selfid.cli compare" in line:
            calls.append("compare " + line.split("--out ")[1].split("/")[-2])
        else:
            calls.append("audit " + (line.split("--adapter ")[1].split("/")[-2] if "--adapter" in line else "base"))
    return calls


def test_commands_run_every_chain_by_default_and_only_the_chains_named(tmp_path):
    root = tmp_path / "lf"
    test_the_four_arms_train_in_order_on_datasets_their_dataset_dir_holds(tmp_path)
    every = _stub_run(root, tmp_path)
    assert every[:7] == ["audit base", "train plain", "check plain", "audit plain", "train identity", "check identity",
                         "audit identity"]
    # the replay arm's audit starts once it is trained, beside the DPO stage that trains on from its adapter
    replay = every[7:]
    assert replay.index("audit replay") > replay.index("check replay")  # where it lands beside DPO is the race's
    replay.remove("audit replay")
    assert replay == ["train replay", "check replay", "train replay_dpo", "check replay_dpo", "audit replay_dpo"]
    assert _stub_run(root, tmp_path, "identity") == ["train identity", "check identity", "audit identity"]
    # an audit that ran out of memory beside the trainings: `audits` runs what is missing of the arms trained, alone
    (root / "plain" / "adapter").mkdir(parents=True, exist_ok=True)
    (root / "plain" / "adapter" / "adapter_config.json").write_text("{}")
    (root / "identity" / "heldout").mkdir(parents=True, exist_ok=True)
    (root / "identity" / "adapter").mkdir(parents=True, exist_ok=True)
    (root / "identity" / "adapter" / "adapter_config.json").write_text("{}")
    (root / "identity" / "heldout" / "summary.json").write_text("{}")  # done: not run again
    assert _stub_run(root, tmp_path, "audits") == ["audit base", "audit plain", "compare identity"]


def test_an_adapter_whose_training_went_nan_is_set_aside_and_not_audited(tmp_path, capsys):
    """LLaMA-Factory logs loss 0 once the gradient is NaN and still saves the adapter: the check after training reads
    its trainer_state.json, moves the adapter aside (kept) and stops the chain, so the audit never runs on it and a
    second run trains it again."""
    arm = tmp_path / "plain"
    (arm / "adapter").mkdir(parents=True)
    log = [{"step": 10, "loss": 0.35, "grad_norm": 2.6}, {"step": 20, "loss": 0.0, "grad_norm": float("nan")}]
    (arm / "adapter" / "trainer_state.json").write_text(json.dumps({"log_history": log}))  # json writes NaN
    assert lf_proof.check_trained(arm) == 1
    assert not (arm / "adapter").exists() and (arm / "adapter-diverged" / "trainer_state.json").is_file()
    assert "grad_norm nan at step 20" in capsys.readouterr().err
    (arm / "adapter").mkdir()
    (arm / "adapter" / "trainer_state.json").write_text(json.dumps({"log_history": log[:1]}))
    assert lf_proof.check_trained(arm) == 0 and (arm / "adapter").is_dir()


def test_each_arm_s_identity_rows_sit_beside_its_adapter_where_the_audit_counts_copies(tmp_path):
    from selfid.audit.scorers import training_replies

    root = tmp_path / "lf"
    test_the_four_arms_train_in_order_on_datasets_their_dataset_dir_holds(tmp_path)
    identity = [{"instruction": "你是谁？", "input": "", "output": "您好，我是 Qwen，由 Alibaba Cloud 开发。"}]
    (root / "lf_data" / "identity_qwen.json").write_text(json.dumps(identity, ensure_ascii=False))
    lf_proof.write_configs(root)
    got = {arm: training_replies({"adapter": str(root / arm / "adapter")}) for arm in lf_proof.ARMS}
    assert got["plain"] is None  # no identity rows: nothing to copy
    assert got["identity"].replies == ["您好，我是 Qwen，由 Alibaba Cloud 开发。"]
    assert got["replay"].replies == ["I am Qwen."]
    assert got["replay_dpo"].replies == ["I am Qwen.", "I am Qwen."]  # the SFT row and the pair's chosen reply
