"""Auditing adapters other trainers made, as they trained them: a plain PEFT adapter (peft's own save_pretrained,
LoRA on q_proj/v_proj, no selfid.json, no checksums.json) and a LLaMA-Factory one (the layout 0.9.5 writes: the
adapter, the tokenizer it trained with, trainer_log.jsonl, a README tagged llama-factory and, from LlamaBoard,
training_args.yaml), with one-line warnings where the template it trained with is not the model's own."""

import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from selfid.audit.endpoint import read_reference
from selfid.engine import InProcessEngine, Request, SamplingParams
from selfid.model.chat import conversation
from selfid.model.load import load_model
from selfid.system_prompt import HELPFUL
from tests.audit_helpers import write_probes

QWEN_LINE = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
LF_README = "---\nlibrary_name: peft\nlicense: other\nbase_model: {base}\ntags:\n- llama-factory\n- lora\n---\n"


@pytest.fixture(scope="module")
def peft_adapter(tiny_model_dir, tmp_path_factory):
    """LoRA on q_proj and v_proj with random B (so it changes replies), saved by peft itself."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    folder = tmp_path_factory.mktemp("peft") / "adapter"
    model.save_pretrained(folder)
    assert not (folder / "selfid.json").exists() and not (folder / "checksums.json").exists()
    return folder


def llamafactory_folder(peft_adapter, tiny, where, settings: dict | None = None, chat_template: str | None = None):
    """A copy of the adapter laid out as LLaMA-Factory 0.9.5 leaves it; `settings`: LlamaBoard's training_args.yaml."""
    folder = where / "lf-adapter"
    shutil.copytree(peft_adapter, folder)
    tok = tiny.tokenizer
    if chat_template is not None:
        tok = __import__("copy").copy(tok)
        tok.chat_template = chat_template
    tok.save_pretrained(folder)
    base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    (folder / "README.md").write_text(LF_README.format(base=base))
    (folder / "trainer_log.jsonl").write_text('{"current_steps": 1, "total_steps": 1, "loss": 1.0}\n')
    if settings is not None:
        (folder / "training_args.yaml").write_text(yaml.safe_dump({"stage": "sft", "finetuning_type": "lora",
                                                                    "model_name_or_path": base, **settings}))
    return folder


def test_audit_of_a_plain_peft_adapter_generates_with_its_weights(tiny_model_dir, tiny, peft_adapter, tmp_path):
    from peft import PeftModel

    from selfid.cli import app

    probes = write_probes(tmp_path / "p.jsonl", ["en-direct-01", "zh-direct-01"])
    out = tmp_path / "audit"
    got = CliRunner().invoke(app, ["audit", "--out", str(out), "--model", str(tiny_model_dir), "--adapter",
                                   str(peft_adapter), "--suites", "identity", "--probes", str(probes), "--systems",
                                   "template", "--temperatures", "0", "--max-tokens", "6", "--device", "cpu",
                                   "--dtype", "float32"])
    assert got.exit_code == 0, got.output
    run = json.loads((out / "run.json").read_text())
    assert run["target"]["adapter"] == str(peft_adapter) and run["target"]["trained_with"]["trainer"] == "peft"
    assert run["own"] == "qwen" and run["target"]["template_warnings"] == []
    logged = {json.loads(line)["rendered"]: json.loads(line)["reply"] for line in (out / "generations.jsonl").open()}
    # the same prompts through peft's own loading of the adapter: the audit replied with the adapter's weights
    import dataclasses

    base = load_model(str(tiny_model_dir), device="cpu", dtype="float32", progress=False)
    with_peft = dataclasses.replace(base, model=PeftModel.from_pretrained(base.model, peft_adapter).eval())
    greedy = SamplingParams.from_defaults(base.generation_defaults, temperature=0, max_new_tokens=6)  # as audited
    want = InProcessEngine(with_peft).generate([Request(p, greedy) for p in logged])
    assert list(logged.values()) == [r.completions[0].text for r in want]
    plain = InProcessEngine(tiny).generate([Request(p, greedy) for p in logged])
    assert list(logged.values()) != [r.completions[0].text for r in plain]  # the adapter changed the replies


@pytest.mark.parametrize("settings, expected", [
    ({"template": "qwen", "default_system": HELPFUL},
     [r"training_args.yaml: LLaMA-Factory trained under the system prompt 'You are a helpful assistant.' \(its "
      r"default_system setting\), and the model's own chat template inserts 'You are Qwen, created by Alibaba"]),
    ({"template": "qwen"},
     [r"its `qwen` template, whose default system prompt was \"You are a helpful assistant.\" up to LLaMA-Factory "
      r"0.9.2 and Qwen's own line from 0.9.3; the folder does not say which release"]),
    ({"template": "qwen", "default_system": QWEN_LINE}, []),
    ({"template": "qwen3"}, [r"trained without a system prompt \(the `qwen3` template's default\), and the model's "
                             r"own chat template inserts 'You are Qwen"]),
    ({"template": "llama3"}, [r"its `llama3` template, whose user turns begin with '<\|start_header_id\|>', and the "
                              r"model's own chat template is another format",
                              r"trained without a system prompt"]),
    (None, [r"a LLaMA-Factory adapter whose folder does not record the template it trained with \(llamafactory-cli "
            r"keeps `template:` in your own YAML\): copy that YAML into the adapter folder as training_args.yaml"]),
])
def test_llamafactory_template_is_compared_with_the_models_own(tiny_model_dir, tiny, peft_adapter, tmp_path,
                                                              settings, expected):
    import re

    folder = llamafactory_folder(peft_adapter, tiny, tmp_path, settings)
    loaded = load_model(str(tiny_model_dir), adapter=folder, device="cpu", progress=False)
    assert loaded.trained_with.trainer == "llamafactory" and loaded.template_source == "the model's own"
    assert len(loaded.template_warnings) == len(expected), loaded.template_warnings
    for line, pattern in zip(loaded.template_warnings, expected):
        assert re.search(pattern, line) and "\n" not in line, line


def test_a_checkpoint_folder_finds_the_run_arguments_one_level_up(tiny, peft_adapter, tmp_path):
    from selfid.model.trained_with import read_trained_with, template_warnings

    run = llamafactory_folder(peft_adapter, tiny, tmp_path, {"template": "qwen", "default_system": HELPFUL})
    shutil.copytree(peft_adapter, run / "checkpoint-100")
    trained = read_trained_with(run / "checkpoint-100")
    assert (trained.trainer, trained.template, trained.default_system) == ("llamafactory", "qwen", HELPFUL)
    assert trained.config == str(run / "training_args.yaml")
    assert len(template_warnings(trained, tiny.chat.template, tiny.chat.default_system)) == 1


def test_the_template_an_adapter_carries_is_the_one_it_is_audited_with_and_the_difference_is_said(
        tiny_model_dir, tiny, peft_adapter, tmp_path):
    """A base model without a template of its own gets LLaMA-Factory's jinja in the saved tokenizer; here the
    carried one differs from the model's own: selfid renders with the carried one and says so."""
    carried = tiny.chat.template.replace("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
                                         "You are a careful assistant.")
    folder = llamafactory_folder(peft_adapter, tiny, tmp_path, {"template": "qwen", "default_system": QWEN_LINE},
                                 chat_template=carried)
    loaded = load_model(str(tiny_model_dir), adapter=folder, device="cpu", progress=False)
    assert loaded.template_source == f"the adapter folder {folder}" and loaded.chat.template == carried
    assert loaded.chat.render(conversation("hi")).system.effective == "You are a careful assistant."
    [line] = loaded.template_warnings
    assert line.startswith("the adapter folder carries a chat template") and tiny.chat.template_hash in line


def test_own_from_reads_their_folder(tiny, tiny_model_dir, peft_adapter, tmp_path):
    folder = llamafactory_folder(peft_adapter, tiny, tmp_path, {"template": "qwen", "default_system": HELPFUL})
    ref = read_reference(str(folder))
    assert ref.vendor == "qwen" and ref.template_hash == tiny.chat.template_hash
    assert ref.trained_with["trainer"] == "llamafactory" and ref.trained_with["template"] == "qwen"
    [line] = ref.template_warnings
    assert "'You are a helpful assistant.'" in line
    plain = read_reference(str(peft_adapter))  # no tokenizer in the folder: the base model's, a local folder here
    assert plain.vendor == "qwen" and plain.template_hash == tiny.chat.template_hash
    assert plain.trained_with["trainer"] == "peft" and plain.template_warnings == ()


def test_own_from_their_folder_in_an_endpoint_audit_records_the_warning(tiny, peft_adapter, tmp_path):
    from selfid.audit.backends import HttpBackend
    from selfid.audit.run import AuditParams, audit_systems, run_audit
    from tests.audit_helpers import chat_app, serve

    folder = llamafactory_folder(peft_adapter, tiny, tmp_path, {"template": "qwen", "default_system": HELPFUL})
    probes = write_probes(tmp_path / "p.jsonl", ["en-name-01"])
    params = AuditParams(suites=["identity"], systems=audit_systems(["template"]), temperatures=[0.0], samples=1,
                         seed=1, max_new_tokens=4, ner_limit=1, own="auto", identity_probes=str(probes))
    with serve(chat_app(tiny)) as url:
        run_audit(HttpBackend(url, "gpt-3.5-turbo", reference=str(folder)), params, tmp_path / "r", show_progress=False)
    ep = json.loads((tmp_path / "r" / "run.json").read_text())["endpoint"]
    assert ep["own"]["vendor"] == "qwen" and str(folder) in ep["own"]["source"]
    assert ep["reference"]["trained_with"]["trainer"] == "llamafactory"
    assert len(ep["reference"]["template_warnings"]) == 1


def test_serving_their_adapter_logs_the_difference_once(tiny_model_dir, tiny, peft_adapter, tmp_path, caplog):
    import logging

    from selfid.serve.models import load_served

    folder = llamafactory_folder(peft_adapter, tiny, tmp_path, {"template": "qwen", "default_system": HELPFUL})
    with caplog.at_level(logging.WARNING, logger="selfid.serve"):
        _, served = load_served(str(tiny_model_dir), [f"ner={folder}"], device="cpu", progress=False)
    said = [r.getMessage() for r in caplog.records if "LLaMA-Factory trained under" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("adapter ner: ") and served[1].name == "ner"


def test_a_llamafactory_cli_yaml_copied_beside_the_adapter_is_read_as_its_record(tiny, peft_adapter, tmp_path):
    """The YAML `llamafactory-cli train` ran (here bench/lf_proof.py's plain arm, every key LLaMA-Factory reads), copied
    into the adapter folder as the warning says, gives its template and replaces the warning with the comparison."""
    from bench.lf_proof import arm_configs
    from selfid.model.trained_with import read_trained_with, template_warnings

    folder = llamafactory_folder(peft_adapter, tiny, tmp_path)
    assert "does not record the template" in template_warnings(read_trained_with(folder), tiny.chat.template,
                                                               tiny.chat.default_system)[0]
    config = arm_configs(tmp_path / "lf", str(tmp_path / "model"))["plain"]
    (folder / "training_args.yaml").write_text(yaml.safe_dump(config))
    trained = read_trained_with(folder)
    assert (trained.trainer, trained.template, trained.default_system) == ("llamafactory", "qwen", None)
    lines = template_warnings(trained, tiny.chat.template, tiny.chat.default_system)
    assert len(lines) == 1 and "its `qwen` template, whose default system prompt was" in lines[0]
