"""What an adapter folder says about how it was trained, whoever trained it (selfid, LLaMA-Factory, plain PEFT),
and one-line warnings where that differs from the model's own chat template.

selfid's own adapters record everything in selfid.json (selfid/manifest.py). Others leave less:

- every PEFT adapter: adapter_config.json, whose `base_model_name_or_path` names the base model;
- LLaMA-Factory (checked against 0.9.5's source): the tokenizer it trained with beside the adapter (so its
  `chat_template`, which is the model's own unless the base had none or the template replaces it),
  trainer_log.jsonl, and a README.md tagged `llama-factory`. Its LlamaBoard web UI also writes the run's
  arguments to training_args.yaml (`template: qwen`, `default_system: ...`); `llamafactory-cli train` leaves them
  in the user's own YAML. LLaMA-Factory renders training data with its own Python templates, not the jinja one,
  so what it trained under is known only from that `template` setting (and its release: its `qwen` template's
  default system prompt was "You are a helpful assistant." up to 0.9.2, Qwen's own line from 0.9.3).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from selfid.manifest import MANIFEST
from selfid.model.chat import template_hash
from selfid.system_prompt import HELPFUL

TEMPLATE_FILE = "chat_template.jinja"  # an adapter folder's chat template (transformers writes it beside a tokenizer)
LF_CONFIGS = ("training_args.yaml", "llamaboard_config.yaml")  # LlamaBoard's record of a run's arguments
ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
          "request.\n\n")
# LLaMA-Factory 0.9.5's templates for the model families selfid meets (src/llamafactory/data/template.py): what
# every user turn begins with, and the system prompt rendered when a sample has none (None: no system text).
# `qwen` is absent from the second table on purpose: its default changed between releases (QWEN_HISTORY).
LF_TURN_MARK = {"qwen": "<|im_start|>", "qwen3": "<|im_start|>", "qwen3_nothink": "<|im_start|>",
                "qwen2_vl": "<|im_start|>", "chatml": "<|im_start|>", "gemma": "<start_of_turn>",
                "gemma2": "<start_of_turn>", "gemma3": "<start_of_turn>", "llama3": "<|start_header_id|>",
                "llama2": "[INST]", "mistral": "[INST]", "default": "Human: ", "alpaca": "### Instruction:"}
LF_DEFAULT_SYSTEM = {"qwen3": None, "qwen3_nothink": None, "qwen2_vl": HELPFUL, "chatml": None, "gemma": None,
                     "gemma2": None, "gemma3": None, "llama3": None, "llama2": None, "mistral": None, "default": None,
                     "alpaca": ALPACA, "empty": None}
QWEN_HISTORY = "\"You are a helpful assistant.\" up to LLaMA-Factory 0.9.2 and Qwen's own line from 0.9.3"


@dataclass(frozen=True)
class TrainedWith:
    """How an adapter was trained, as far as its folder tells."""

    trainer: str  # "selfid" | "llamafactory" | "peft"
    base_model: str | None = None  # adapter_config.json's base_model_name_or_path
    template: str | None = None  # LLaMA-Factory's `template` setting, when recorded
    default_system: str | None = None  # LLaMA-Factory's `default_system` setting, when recorded
    config: str | None = None  # the file those settings were read from
    carried_template: str | None = field(default=None, repr=False)  # the chat template the folder carries

    def record(self) -> dict:
        return {"trainer": self.trainer, "base_model": self.base_model, "template": self.template,
                "default_system": self.default_system, "config": self.config,
                "carried_template_hash": template_hash(self.carried_template) if self.carried_template else None}


def adapter_template(folder: Path) -> str | None:
    """The chat template an adapter folder carries (its chat_template.jinja, else its tokenizer_config.json's, as
    LLaMA-Factory saves the tokenizer it trained with), or None."""
    if (folder / TEMPLATE_FILE).is_file():
        return (folder / TEMPLATE_FILE).read_text(encoding="utf-8")
    if (folder / "tokenizer_config.json").is_file():
        try:
            template = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
        except (ValueError, AttributeError):
            return None
        return template if isinstance(template, str) else None
    return None


def _lf_settings(folder: Path) -> tuple[dict, Path | None]:
    """LLaMA-Factory's recorded run arguments in the folder or the run folder above it (a checkpoint-N)."""
    for where in (folder, folder.parent):
        for name in LF_CONFIGS:
            path = where / name
            if not path.is_file():
                continue
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue
            if isinstance(data, dict):  # LlamaBoard's own config names its fields "top.template" and so on
                flat = {k.rsplit(".", 1)[-1]: v for k, v in data.items() if isinstance(k, str)}
                if "template" in flat:
                    return flat, path
    return {}, None


def _made_by_llamafactory(folder: Path) -> bool:
    readme = folder / "README.md"
    try:
        tagged = readme.is_file() and "llama-factory" in readme.read_text(encoding="utf-8", errors="replace")
    except OSError:
        tagged = False
    return tagged or (folder / "trainer_log.jsonl").is_file()


def read_trained_with(folder: Path) -> TrainedWith:
    """What `folder` (a LoRA adapter folder) says about how it was trained."""
    folder = Path(folder)
    base = None
    try:
        base = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        pass
    carried = adapter_template(folder)
    if (folder / MANIFEST).is_file():
        return TrainedWith("selfid", base, carried_template=carried)
    settings, config = _lf_settings(folder)
    if config is None and not _made_by_llamafactory(folder):
        return TrainedWith("peft", base, carried_template=carried)
    template = settings.get("template")
    system = settings.get("default_system")
    return TrainedWith("llamafactory", base, str(template) if template else None,
                       str(system) if isinstance(system, str) else None, str(config) if config else None, carried)


def template_warnings(trained: TrainedWith, own_template: str | None, own_default_system: str | None) -> list[str]:
    """One line per way the adapter's training template differs from the model's own chat template (`own_template`,
    whose default system prompt is `own_default_system`; None: the model has none)."""
    out = []
    if trained.carried_template is not None and own_template is not None and trained.carried_template != own_template:
        out.append(f"the adapter folder carries a chat template (hash {template_hash(trained.carried_template)}) that "
                   f"is not the model's own ({template_hash(own_template)}): selfid renders with the adapter's, as it "
                   "was trained; a server that renders with the base model's tokenizer uses the model's own")
    if trained.trainer != "llamafactory":
        return out
    if trained.template is None:
        out.append("a LLaMA-Factory adapter whose folder does not record the template it trained with (llamafactory-cli "
                   "keeps `template:` in your own YAML): copy that YAML into the adapter folder as training_args.yaml "
                   "and selfid compares its template and system prompt with the model's own")
        return out
    name, where = trained.template, trained.config
    mark = LF_TURN_MARK.get(name)
    if own_template is not None and (name == "empty" or (mark is not None and mark not in own_template)):
        out.append(f"{where}: LLaMA-Factory trained with its `{name}` template"
                   f"{f', whose user turns begin with {mark!r},' if mark else ' (plain text, no turns)'} and the "
                   "model's own chat template is another format: served with the model's own, prompts look unlike "
                   "training")
    if trained.default_system is not None:
        trained_system, how = trained.default_system, "its default_system setting"
    elif name in LF_DEFAULT_SYSTEM:
        trained_system, how = LF_DEFAULT_SYSTEM[name], f"the `{name}` template's default"
    elif name == "qwen":
        if own_default_system != HELPFUL:
            out.append(f"{where}: LLaMA-Factory trained with its `qwen` template, whose default system prompt was "
                       f"{QWEN_HISTORY}; the folder does not say which release trained it, and the model's own template "
                       f"inserts {_prompt(own_default_system)}: if it was 0.9.2 or older, the model learned its task without "
                       "that line (audit --systems helpful shows how it answers then)")
        return out
    else:
        return out  # a template selfid does not know: nothing to compare
    if trained_system != own_default_system:
        out.append(f"{where}: LLaMA-Factory trained {_under(trained_system)} ({how}), and the model's own chat "
                   f"template inserts {_prompt(own_default_system)}: served without a system message, it answers "
                   "under a prompt it was not trained with")
    return out


def _prompt(text: str | None) -> str:
    return "no system prompt" if text is None else repr(text)


def _under(text: str | None) -> str:
    return "without a system prompt" if text is None else f"under the system prompt {text!r}"
