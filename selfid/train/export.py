"""`selfid export ADAPTER --merge --out DIR`: a standalone model that serves the way it was trained.

The folder holds the merged weights, the tokenizer, a chat template whose default system prompt is
the one used in training (so vLLM, llama.cpp or transformers, given no system message, render
exactly the training prompt; `--system` picks another, e.g. `template` for the base template's own),
the model's generation config, and selfid.json with an `export` block.
"""

from __future__ import annotations

from pathlib import Path

from selfid import manifest as manifest_mod
from selfid.errors import SelfidError
from selfid.io import atomic_dir, atomic_write_json, atomic_write_text, check_can_create, write_checksums
from selfid.model.chat import ChatFormat
from selfid.model.load import load_model, recorded_base
from selfid.system_prompt import resolve
from selfid.train.gguf_file import DEFAULT_TYPES, check_architecture, modelfile, parse_types, write_gguf


def _jinja_literal(text: str) -> str:
    return (text.replace("\\", "\\\\").replace("'", "\\'").replace('"', '\\"').replace("\n", "\\n")
            .replace("\r", "\\r"))


def with_default_system(tokenizer, system: str) -> str:
    """The tokenizer's chat template changed so that a conversation without a system message gets `system`."""
    chat = ChatFormat(tokenizer)
    template = chat.template
    candidates = []
    if chat.default_system:  # the template spells its default out: put the training prompt in its place
        candidates.append(template.replace(chat.default_system, _jinja_literal(system)))
    prelude = ("{%- if not messages or messages[0]['role'] != 'system' %}{%- set messages = "
               f"[{{'role': 'system', 'content': '{_jinja_literal(system)}'}}] + messages %}}{{%- endif %}}")
    candidates.append(prelude + template)
    original = tokenizer.chat_template
    try:
        for new in candidates:
            tokenizer.chat_template = new
            try:
                if ChatFormat(tokenizer).default_system == system:
                    return new
            except Exception:
                continue
    finally:
        tokenizer.chat_template = original
    raise SelfidError("could not give this chat template a default system prompt; serve the exported model with "
                      f"the system message {system!r}")


def export(adapter: str | Path, out: str | Path, model: str | None = None, merge: bool = True,
           gguf: bool | str | list[str] = False, dtype: str = "auto", progress: bool = True,
           system: str = "adapter", warn=None, chat_template: str | Path | None = None) -> dict:
    """Merge `adapter` into its base model and write a self-contained folder to `out`; with `gguf` (True for
    bf16 and q8_0, or the types to write) also `out/gguf/model-TYPE.gguf` and an ollama Modelfile.

    `system`: the exported template's default system prompt (selfid.system_prompt's vocabulary): `adapter`
    (the training prompt, so the file serves as trained), `template` (the base template's own), or any
    other setting. `warn(text)` hears when that default is not the base template's own. `chat_template`: a template
    file for a base model without one (an adapter selfid trained on such a model carries its own)."""
    import torch

    types = [] if not gguf else parse_types(DEFAULT_TYPES if gguf is True else
                                            gguf if isinstance(gguf, str) else ",".join(gguf))
    if not merge:
        raise SelfidError("export writes merged weights: pass --merge (an unmerged adapter is the adapter folder itself)")
    adapter, out = Path(adapter).expanduser(), Path(out).expanduser()
    if not (adapter / "adapter_config.json").is_file():
        raise SelfidError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SelfidError(f"{out} already exists and is not empty: choose a new --out folder")
    check_can_create(out)  # before the merge, not after
    manifest = manifest_mod.read(adapter)
    base = model or recorded_base(adapter)
    if not base:
        raise SelfidError(f"{adapter} does not say which base model it belongs to: pass --model")

    loaded = load_model(base, adapter=adapter, device="cpu", dtype="float32", progress=progress,
                        chat_template=chat_template)
    if types:
        check_architecture(getattr(loaded.model.config, "model_type", None))  # before the merge, not after
    merged = loaded.model.merge_and_unload()
    stored = getattr(merged.config, "dtype", None) or getattr(merged.config, "torch_dtype", None)
    target = {"auto": stored if isinstance(stored, torch.dtype) else getattr(torch, str(stored or "float32")),
              "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(dtype)
    if target is None:
        raise SelfidError(f"unknown dtype {dtype!r}: use auto, bfloat16, float16 or float32")
    merged = merged.to(target)

    tokenizer = loaded.tokenizer
    chat = loaded.chat
    trained = manifest_mod.training_system(manifest)
    if system == "adapter" and trained is None:
        system = "template"  # nothing recorded: the template stays as it is
    chosen = resolve(system, chat.default_system, "export --system", training=trained)
    changed_template = False
    if chosen.message is not None and chosen.message != chat.default_system:
        tokenizer.chat_template = with_default_system(tokenizer, chosen.message)
        changed_template = True
    final_chat = ChatFormat(tokenizer)
    if changed_template and warn is not None:
        warn(f"the exported model's default system prompt is {chosen.message!r}, not the chat template's own "
             f"({chat.default_system!r}): served without a system message it answers as under that prompt. A "
             "LoRA trained under \"You are a helpful assistant.\" and shipped so claimed another vendor in 16 of "
             "18 greedy identity replies on the embedded model (docs/study.md §5); --system template keeps the "
             "template's own default.")

    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        merged.generation_config.save_pretrained(tmp)
        info = {
            **(manifest.record() if manifest is not None else {}),
            "kind": "merged-model",
            "export": {"adapter": str(adapter), "base_model": base, "dtype": str(target).removeprefix("torch."),
                       "template_changed": changed_template, "template_hash": final_chat.template_hash,
                       "system": chosen.model_dump(),
                       "default_system": final_chat.default_system,
                       "original_template_hash": chat.template_hash},
        }
        if types:
            info["export"]["gguf"] = write_ggufs(tmp, types, out.name, progress)
        atomic_write_json(tmp / "selfid.json", info)
        write_checksums(tmp)  # loading the folder later checks them
    return info["export"]


def write_ggufs(folder: Path, types: list[str], name: str, progress: bool = True) -> list[dict]:
    """`folder/gguf/model-TYPE.gguf` for each type, and an ollama Modelfile beside them for ChatML templates."""
    written = []
    for kind in types:
        info = write_gguf(folder, folder / "gguf" / f"model-{kind}.gguf", kind, name=name, progress=progress)
        info["path"] = f"gguf/model-{kind}.gguf"  # relative to the export folder, which is renamed into place
        written.append(info)
    if written and written[0]["chatml"]:
        atomic_write_text(folder / "gguf" / "Modelfile",
                          modelfile(Path(written[-1]["path"]).name, written[0]["default_system"], folder))
    return written
