"""What a server serves: one base model and any number of named LoRA adapters on it.

Each served name carries what a request needs besides the weights: its chat template, its
sampling defaults and where they came from, and, for an adapter trained by selfid, the system
prompt used in training (read from the adapter's selfid.json), so that serving matches training
unless the request says otherwise.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from selfid.engine import BASE_MODEL
from selfid.errors import SelfidError
from selfid import manifest as manifest_mod
from selfid.model.chat import ChatFormat
from selfid.model.load import SAMPLING_KEYS, LoadedModel, attach_adapter, check_adapter, load_model
from selfid.model.trained_with import adapter_template, read_trained_with, template_warnings
from selfid.system_prompt import SystemPrompt

log = logging.getLogger("selfid.serve")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


@dataclass
class Served:
    name: str
    parent: str | None  # the base model's name, for adapters
    adapter: str | None  # the engine's Request.adapter: an adapter name, BASE_MODEL, or None (no adapters loaded)
    chat: ChatFormat
    generation_defaults: dict
    defaults_source: str
    path: Path | None = None  # the adapter folder
    manifest: manifest_mod.Manifest | None = None
    training: SystemPrompt | None = None  # the system prompt of training, when the manifest records it
    # the system prompt a request without one gets, derived once from the manifest when the model is loaded
    default: SystemPrompt = field(init=False, repr=False)

    def __post_init__(self):
        self.default = manifest_mod.default_system(self.manifest, self.chat.default_system)

    def default_system(self) -> SystemPrompt:
        """The system prompt a request without one gets: the adapter's training one, else the template's."""
        return self.default

    @property
    def public_defaults_source(self) -> str:
        """Where the sampling defaults came from, with file paths cut to file names (for clients)."""
        return without_paths(self.defaults_source)

    def card(self) -> dict:
        """What the page and /v1/models show about this model beyond OpenAI's fields (no file paths: any web
        page the user opens could read them)."""
        system = self.default_system()
        return {"system_prompt": system.effective, "system_prompt_kind": system.kind,
                "template_hash": self.chat.template_hash, "generation_defaults": self.generation_defaults,
                "generation_defaults_source": self.public_defaults_source,
                "training_system_prompt_known": self.training is not None}


PATH = re.compile(r"(?<![\w.:/])(?:~|\.{1,2})?(?:/[^\s/'\"(),]+)+")


def without_paths(text: str) -> str:
    """'/home/u/runs/ner/adapter/selfid.json (generation_defaults)' -> 'selfid.json (generation_defaults)'."""
    return PATH.sub(lambda m: m.group(0).rsplit("/", 1)[-1], text)


def parse_adapter_specs(specs: Sequence[str]) -> list[tuple[str, Path]]:
    """`NAME=PATH` strings (a bare PATH is named after its folder) -> [(name, path)], checked."""
    out: list[tuple[str, Path]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).expanduser().resolve().name, spec
        if not NAME.match(name):
            raise SelfidError(f"adapter name {name!r} in --adapter {spec!r}: use letters, digits and . _ : / -")
        if any(name == n for n, _ in out):  # (BASE_MODEL, "__base__", fails NAME above)
            raise SelfidError(f"adapter name {name!r} is used twice: give each --adapter NAME=PATH its own name")
        folder = Path(path).expanduser()
        if not (folder / "adapter_config.json").is_file():
            raise SelfidError(f"--adapter {spec!r}: {folder} is not a LoRA adapter folder (no adapter_config.json)")
        out.append((name, folder))
    return out


def base_name(loaded: LoadedModel) -> str:
    if loaded.source in ("folder", "gguf") and loaded.path is not None:
        return Path(loaded.name).expanduser().name.removesuffix(".gguf") or loaded.name
    return loaded.name


def load_served(model: str, adapters: Sequence[str] = (), device: str | None = None, dtype: str | None = None,
                progress: bool = True, chat_template=None) -> tuple[LoadedModel, list[Served]]:
    """Load the base model once (with `chat_template`, a file, when given) and every adapter onto it (PEFT, one
    adapter per name)."""
    specs = parse_adapter_specs(adapters)
    for _, folder in specs:  # before the base model loads, so a damaged adapter fails in a second
        check_adapter(folder)
    loaded = load_model(model, device=device, dtype=dtype, progress=progress, chat_template=chat_template)
    name = base_name(loaded)
    if any(n == name for n, _ in specs):
        raise SelfidError(f"adapter name {name!r} is the base model's name: pick another NAME in --adapter NAME=PATH")
    served = [Served(name, None, BASE_MODEL if specs else None, loaded.chat, loaded.generation_defaults,
                     loaded.generation_defaults_source)]
    if not specs:
        return loaded, served
    peft_model = loaded.model
    for adapter_name, folder in specs:
        peft_model = attach_adapter(peft_model, folder, adapter_name, name)
        served.append(adapter_served(adapter_name, folder, name, loaded))
    peft_model.to(loaded.device)
    peft_model.eval()
    return replace(loaded, model=peft_model), served


def adapter_served(name: str, folder: Path, parent: str, loaded: LoadedModel) -> Served:
    chat = adapter_chat(folder, loaded)
    defaults, source = dict(loaded.generation_defaults), loaded.generation_defaults_source
    try:
        manifest = manifest_mod.read(folder)
    except manifest_mod.ManifestError as e:  # one odd manifest does not stop the server; the log says so
        log.warning("adapter %s: %s; ignoring it, so requests without a system message get the chat template's "
                    "default", name, e)
        manifest = None
    s = Served(name, parent, name, chat, defaults, source, path=folder, manifest=manifest,
               training=manifest_mod.training_system(manifest))
    for line in template_warnings(read_trained_with(folder), loaded.chat.template, loaded.chat.default_system):
        log.warning("adapter %s: %s", name, line)  # e.g. a LLaMA-Factory adapter trained under another system prompt
    if manifest is None:
        log.warning("adapter %s: %s has no usable selfid.json, so the system prompt used in training is unknown; "
                    "requests without a system message get the chat template's default", name, folder)
        return s
    if s.training is None:
        log.warning("adapter %s: %s/selfid.json records no training system prompt; requests without a system "
                    "message get the chat template's default", name, folder)
    trained_hash = manifest.train.template_hash
    if trained_hash is not None and trained_hash != chat.template_hash:
        log.warning("adapter %s was trained with chat template %s but is served with %s: replies may differ from "
                    "training; put the training template in %s/chat_template.jinja", name, trained_hash,
                    chat.template_hash, folder)
    gd = manifest.generation_defaults
    if gd:
        picked = {k: gd[k] for k in SAMPLING_KEYS if isinstance(gd.get(k), (int, float)) and not isinstance(gd.get(k), bool)}
        if picked:
            s.generation_defaults = {**defaults, **picked}
            s.defaults_source = f"{folder / 'selfid.json'} (generation_defaults), over {source}"
    return s


def adapter_chat(folder: Path, loaded: LoadedModel) -> ChatFormat:
    """The adapter's own chat template when its folder carries one, else the base model's."""
    template = adapter_template(folder)
    if template is None or template == loaded.chat.template:
        return loaded.chat
    tok = copy.copy(loaded.tokenizer)
    tok.chat_template = template
    return ChatFormat(tok)
