"""One way to load a model: the embedded default, a local folder, a .gguf file or a hub id, plus a LoRA adapter."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfid.errors import SelfidError
from selfid.io import CHECKSUMS, read_text_bounded, sha256_file, verify_checksums
from selfid.manifest import Manifest, read as read_manifest
from selfid.model.chat import ChatFormat
from selfid.model.embedded import EMBEDDED, MARKER, ensure_converted, ensure_embedded
from selfid.model.trained_with import TrainedWith, adapter_template, read_trained_with, template_warnings

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty")
OWN_TEMPLATE = "the model's own"  # LoadedModel.template_source when the tokenizer's template is used as it is
NO_TEMPLATE = ("has no chat template (a pretrained model, or a GGUF that carries none), and selfid renders every chat "
               "with one rather than guess which: pass --chat-template FILE (a Jinja chat template; "
               "examples/gemma3-chat-template.jinja is Gemma 3's instruction format), or chat_template: FILE in a run "
               "config")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LoadedModel:
    model: Any  # a transformers (or peft) causal LM, in eval mode
    tokenizer: Any
    chat: ChatFormat
    name: str  # what the user asked for ("embedded", a path, a hub id)
    source: str  # "embedded" | "folder" | "gguf" | "hub"
    path: Path | None  # the local transformers folder, when there is one
    generation_defaults: dict  # temperature (0 = greedy), top_p, top_k, repetition_penalty
    generation_defaults_source: str
    adapter: Path | None = None
    manifest: Manifest | None = None  # the adapter's selfid.json, when it has one
    eos_token_ids: list[int] = field(default_factory=list)
    template_source: str = OWN_TEMPLATE  # where the chat template came from (see pick_template)
    own_template: str | None = None  # the model's own chat template (None: it has none)
    trained_with: TrainedWith | None = None  # what the adapter folder says about its training (selfid, LLaMA-Factory...)
    template_warnings: list[str] = field(default_factory=list)  # how that differs from the model's own template

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def context_window(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 32768))


def pick_device(device: str | None = None):
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        picked = torch.device(device)
    except RuntimeError:
        raise SelfidError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if picked.type == "cuda":
        if not torch.cuda.is_available():
            raise SelfidError(f"--device {device}: this PyTorch sees no CUDA GPU (a CPU build, or no driver): use "
                              "--device cpu or auto")
        if picked.index is not None and picked.index >= torch.cuda.device_count():
            raise SelfidError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                              f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return picked


def pick_dtype(dtype: str | None, device) -> Any:
    import torch

    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise SelfidError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return table[dtype]


def resolve_model(spec: str, progress: bool = True) -> tuple[str | Path, str]:
    """Map `--model` to (a folder or hub id, its kind). Builds the embedded/GGUF cache when needed."""
    if spec in EMBEDDED:
        return ensure_embedded(spec, progress=progress), "embedded"
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SelfidError(f"{path} is a folder but has no config.json: point --model at a transformers model folder")
        return path, "folder"
    if path.is_file():
        if path.suffix != ".gguf":
            raise SelfidError(f"{path} is a file but not a .gguf: pass a .gguf file or a transformers model folder")
        return gguf_folder(path, progress), "gguf"
    if spec.startswith((".", "/", "~")) or os.sep in spec and not HUB_ID.match(spec):
        raise SelfidError(f"no such folder or file: {spec}")
    if not HUB_ID.match(spec):
        raise SelfidError(
            f"'{spec}' is not a model selfid knows: use 'embedded', a transformers folder, a .gguf file "
            "or a hub id like Qwen/Qwen2.5-7B-Instruct"
        )
    check_hub(spec)
    return spec, "hub"


def check_hub(repo_id: str, timeout_s: float = 5.0) -> None:
    """A hub id that is not in the Hugging Face cache needs the hub: when it cannot be reached, say so at once, in
    one line (transformers would retry for most of a minute and print a line per attempt)."""
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return  # cached: it loads without the network
    if constants.HF_HUB_OFFLINE:
        why = "offline mode is on (HF_HUB_OFFLINE)"
    else:
        from huggingface_hub.utils import get_session

        try:
            get_session().head(constants.ENDPOINT, timeout=timeout_s)
            return
        except Exception as e:  # noqa: BLE001 - whatever stops this request stops the download: say what it was
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            why = f"the hub at {constants.ENDPOINT} cannot be reached from here, so this machine is offline ({reason})"
    raise SelfidError(f"'{repo_id}' is not in the Hugging Face cache and {why}: download the model where there is "
                      f"network and pass its local folder, e.g. --model /models/{repo_id.split('/')[-1]}")


def gguf_folder(path: Path, progress: bool = True) -> Path:
    """Convert a user's GGUF once into the cache, keyed by its sha256."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise SelfidError(f"{path} is not a GGUF file ({'it is empty' if not magic else 'it does not begin with GGUF'}): "
                          "pass a whole .gguf file, or a transformers model folder")
    sha = sha256_file(path)

    def copy(dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
        return dest

    source = {"name": path.name, "title": str(path), "generation_defaults_source":
              "none: a GGUF carries no sampling defaults (transformers defaults apply)"}
    return ensure_converted(sha, f"gguf-{path.stem}-{sha[:12]}", copy, source, progress=progress)


def damaged(what: str, problem: str, fix: str) -> SelfidError:
    """The one-line error for a file selfid cannot trust: what it is, what is wrong, what to do."""
    return SelfidError(f"{what} is damaged ({problem}): {fix}")


def check_folder(folder: Path) -> None:
    """Raise a one-line error when a model folder no longer matches the checksums.json written with it."""
    problem = verify_checksums(folder)
    if problem is None:
        return
    fix = (f"delete {folder} and selfid converts it again" if (folder / MARKER).is_file()
           else "restore it from a copy or write it again (e.g. selfid export)" + _on_purpose(folder))
    raise damaged(f"the model in {folder}", problem, fix)


def _on_purpose(folder: Path) -> str:
    return f"; if you changed its files on purpose, delete {folder / CHECKSUMS}"


def check_adapter(folder: Path) -> dict:
    """Raise a one-line error when an adapter folder no longer matches the checksums.json written with it, or (with
    or without one) its adapter_config.json is not a PEFT adapter's; return that config."""
    problem = verify_checksums(folder)
    if problem is not None:
        raise damaged(f"the adapter in {folder}", problem, adapter_fix(folder) + _on_purpose(folder))
    return adapter_config(folder)


def adapter_config(folder: Path) -> dict:
    """An adapter's adapter_config.json, read and checked: the one reader of it (peft reads it again to load)."""
    from peft.utils import PeftType


    folder = Path(folder)
    path = folder / "adapter_config.json"
    if not path.is_file():
        raise SelfidError(f"{folder} is not a LoRA adapter folder (no adapter_config.json)")
    try:
        config = json.loads(read_text_bounded(path, what="an adapter's adapter_config.json"))
    except ValueError as e:
        raise damaged(f"the adapter in {folder}", f"adapter_config.json is not valid JSON: {e}",
                      adapter_fix(folder)) from None
    if not isinstance(config, dict) or config.get("peft_type") not in PeftType.__members__:
        got = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
        raise damaged(f"the adapter in {folder}", f"adapter_config.json names no PEFT adapter type (peft_type is "
                      f"{got!r})", adapter_fix(folder))
    return config


def attach_adapter(model, folder: Path, name: str | None, base: str):
    """Load the adapter in `folder` onto `model` (a plain model: a new PeftModel; a PeftModel: one adapter more, as
    `name`). A file that will not load, or weights that do not fit the base model, are one line saying which."""
    from peft import PeftModel
    from safetensors import SafetensorError

    label = f"the adapter {name!r} in {folder}" if name else f"the adapter in {folder}"
    if not any((Path(folder) / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        raise SelfidError(f"{label} has no weights (adapter_model.safetensors): {adapter_fix(Path(folder))}")
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(folder, adapter_name=name)
        else:
            kw = {"adapter_name": name} if name else {}
            model = PeftModel.from_pretrained(model, folder, **kw)
    except (SafetensorError, EOFError) as e:
        raise unreadable(label, e, adapter_fix(folder)) from None
    except (ValueError, RuntimeError, KeyError, TypeError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        recorded = recorded_base(Path(folder))
        hint = (f"it records {recorded} as its base model: pass --model {recorded}" if recorded and recorded != base
                else "was it trained on this base model?")
        raise SelfidError(f"could not load {label} onto {base}: {reason} ({hint})") from None
    check_finite(model, name or "default", label)
    return model


def recorded_base(folder: Path) -> str | None:
    """The base model an adapter says it was trained on: its selfid.json, else PEFT's adapter_config.json."""
    manifest = read_manifest(folder)
    name = manifest.base_model.get("name") if manifest is not None else None
    return name or adapter_config(folder).get("base_model_name_or_path") or None


def check_finite(model, adapter_name: str, label: str) -> None:
    """Refuse an adapter whose weights hold NaN or infinity: its training diverged, and every reply it gives would be
    noise (a trainer that logs loss 0 and grad_norm nan still saves such an adapter; LLaMA-Factory did on an H100,
    docs/benchmarks.md)."""
    import torch

    bad = [n for n, p in model.named_parameters() if f".{adapter_name}." in n and not torch.isfinite(p).all()]
    if bad:
        raise SelfidError(f"{label} holds NaN or infinite weights in {len(bad)} tensor{'s' if len(bad) > 1 else ''} "
                          f"(e.g. {bad[0]}): its training diverged (a trainer's log shows it as grad_norm nan, loss 0); "
                          "train it again, and look at its attention setting and learning rate first")


def adapter_fix(folder: Path) -> str:
    """What to do about a damaged adapter: restore it, or take the weights of its run's last checkpoint."""
    fix = "restore it from a copy or train it again"
    root = folder.parent / "checkpoints"
    ckpts = sorted(root.glob("step-*/adapter"), key=lambda p: p.parent.name) if root.is_dir() else []
    if ckpts:
        fix += f"; {ckpts[-1]} holds the weights of the run's last checkpoint"
    return fix


def unreadable(what: str, error: Exception, fix: str) -> SelfidError:
    """A load that failed inside safetensors/torch (a truncated or overwritten file), as one line."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    return SelfidError(f"could not read {what} ({reason}): a file in it is damaged or incomplete; {fix}")


def _from_pretrained(cls, where, kind: str, **kw):
    """from_pretrained that turns 'not found / offline' and damaged files into a SelfidError with what to do."""
    if kind != "hub":
        from safetensors import SafetensorError

        fix = (f"delete {where} and selfid converts it again" if (Path(where) / MARKER).is_file()
               else "restore the model's files (download or copy them again)")
        try:
            return cls.from_pretrained(where, local_files_only=True, **kw)
        except (SafetensorError, EOFError) as e:
            raise unreadable(f"the model in {where}", e, fix) from None
        except (OSError, ValueError) as e:  # config.json not JSON, no weights, a model_type transformers lacks
            if isinstance(e, PermissionError):
                raise
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise SelfidError(f"could not load the model in {where} ({reason}): it is not a whole transformers "
                              f"model folder; {fix}") from None
    try:  # a model already in the Hugging Face cache loads without the network
        return cls.from_pretrained(where, local_files_only=True, **kw)
    except OSError:
        pass
    try:
        return cls.from_pretrained(where, **kw)
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise SelfidError(
            f"could not load '{where}' from the Hugging Face hub ({reason}). This machine may be "
            f"offline: download the model where there is network and pass its local folder, e.g. "
            f"--model /models/Qwen2.5-7B-Instruct"
        ) from None


def check_generation_config(folder: Path) -> None:
    """Refuse a generation_config.json that is not a JSON object: transformers warned and went on with its own
    defaults, so the model sampled greedily and lost its stop tokens while selfid named that file as the source."""
    path = folder / "generation_config.json"
    if not path.is_file():
        return
    try:
        ok = isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
        reason = "not a JSON object"
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        ok, reason = False, f"not valid JSON: {e}"
    if not ok:
        raise SelfidError(f"{path} is damaged ({reason}); it holds the model's sampling defaults and stop tokens: "
                          "restore it from where the model came from, or delete it to use transformers' defaults")


def check_tokenizer(tokenizer, where) -> None:
    """Refuse a tokenizer that turns text into no tokens: transformers loads a folder without tokenizer.json (or
    vocab.json and merges.txt) as a vocabulary of its special tokens alone, and every reply came back empty."""
    if not tokenizer("Hello, 你好", add_special_tokens=False).input_ids:
        raise SelfidError(f"the tokenizer in {where} turns text into no tokens ({len(tokenizer)} in its vocabulary): "
                          "the folder lacks its tokenizer files (tokenizer.json, or vocab.json and merges.txt); copy "
                          "them from where the model came from")


def read_template_file(path: str | Path, what: str = "--chat-template") -> str:
    """The text of a chat template file a user names; a one-line error when it cannot be one."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SelfidError(f"{what} {path}: no such file; give a Jinja chat template file, e.g. "
                          "examples/gemma3-chat-template.jinja")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SelfidError(f"{what} {path}: cannot read it as text ({type(e).__name__}): give a Jinja chat template "
                          "file") from None
    if not text.strip():
        raise SelfidError(f"{what} {path} is empty: give a Jinja chat template file")
    import jinja2

    try:
        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as e:
        raise SelfidError(f"{what} {path}: line {e.lineno} is not valid Jinja ({e.message})") from None
    return text


def pick_template(tokenizer, spec: str, chat_template: str | Path | None, adapter: Path | None) -> str:
    """Set the tokenizer's chat template: the file the user names, else the one the adapter folder carries (what it
    was trained with), else the model's own; returns where it came from. No template at all is a one-line error."""
    if chat_template is not None:
        tokenizer.chat_template = read_template_file(chat_template)
        try:  # a template that parses can still fail on a conversation (an undefined function, a raise_exception)
            tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                          add_generation_prompt=True)
        except Exception as e:  # jinja2's and transformers' errors alike: the message is the user's to read
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise SelfidError(f"--chat-template {chat_template} fails on one user turn ({reason}): fix the "
                              "template") from None
        return f"--chat-template {Path(chat_template).expanduser()}"
    carried = adapter_template(adapter) if adapter is not None else None
    if carried is not None and carried != tokenizer.chat_template:
        tokenizer.chat_template = carried
        return f"the adapter folder {adapter}"
    if not isinstance(tokenizer.chat_template, str) or not tokenizer.chat_template:
        raise SelfidError(f"{spec} {NO_TEMPLATE}")
    return OWN_TEMPLATE


def _default_system(tokenizer, template: str | None) -> str | None:
    """The system prompt `template` inserts by default (None: none, or no template)."""
    if template is None:
        return None
    if template == tokenizer.chat_template:
        return ChatFormat(tokenizer).default_system
    own = copy.copy(tokenizer)
    own.chat_template = template
    return ChatFormat(own).default_system


def generation_defaults(model, folder: Path | None) -> tuple[dict, str]:
    """The model's own sampling defaults (greedy shows as temperature 0) and where they came from."""
    gc = model.generation_config
    sampled = bool(getattr(gc, "do_sample", False))
    out = {
        "temperature": float(gc.temperature or 1.0) if sampled else 0.0,
        "top_p": float(gc.top_p if gc.top_p is not None else 1.0),
        "top_k": int(gc.top_k or 0),
        "repetition_penalty": float(gc.repetition_penalty or 1.0),
    }
    source = "transformers defaults (the model publishes no generation_config.json)"
    if folder is not None:
        marker = folder / MARKER
        if marker.is_file():
            source = json.loads(marker.read_text()).get("generation_defaults_source") or source
        elif (folder / "generation_config.json").is_file():
            source = str(folder / "generation_config.json")
    return out, source


def load_model(spec: str = "embedded", adapter: str | Path | None = None, device: str | None = None,
               dtype: str | None = None, progress: bool = True,
               chat_template: str | Path | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer for generation (eval mode), with an optional LoRA adapter.

    The chat template: the file `chat_template` names, else the one the adapter folder carries, else the model's
    own (`pick_template`); a model with none needs `chat_template`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_path = None
    if adapter is not None:  # checked before the base model loads, so a bad adapter fails in a second
        adapter_path = Path(adapter).expanduser()
        check_adapter(adapter_path)
    where, kind = resolve_model(spec, progress)
    if kind == "folder":  # the embedded/GGUF cache was checked (and rebuilt if need be) by resolve_model
        check_folder(where)
    if kind != "hub":
        check_generation_config(Path(where))
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    if dev.type == "cuda":
        # cuDNN scaled-dot-product attention gave NaNs for Qwen2.5 with padded batches on the H100.
        torch.backends.cuda.enable_cudnn_sdp(False)
    from transformers.utils import logging as hf_logging

    tokenizer = _from_pretrained(AutoTokenizer, where, kind)
    check_tokenizer(tokenizer, where)
    own_template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    template_source = pick_template(tokenizer, spec, chat_template, adapter_path)  # before the weights load
    trained = read_trained_with(adapter_path) if adapter_path is not None else None
    warnings_ = template_warnings(trained, own_template, _default_system(tokenizer, own_template)) if trained else []
    hf_logging.disable_progress_bar()  # loading a local folder takes seconds; its bar is noise
    try:
        # load in the stored dtype, then cast: casting while loading is slower on the CPU
        model = _from_pretrained(AutoModelForCausalLM, where, kind, dtype="auto").to(dt)
    finally:
        hf_logging.enable_progress_bar()
    model.to(dev)
    folder = Path(where) if kind != "hub" else None
    defaults, source = generation_defaults(model, folder)
    manifest = None
    if adapter_path is not None:
        model = attach_adapter(model, adapter_path, None, spec)
        model.to(dev)
        manifest = read_manifest(adapter_path)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos = model.generation_config.eos_token_id if hasattr(model, "generation_config") else None
    eos_ids = sorted({*(eos if isinstance(eos, list) else [eos] if eos is not None else []),
                      *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])})
    return LoadedModel(model=model, tokenizer=tokenizer, chat=ChatFormat(tokenizer), name=spec,
                       source=kind, path=folder, generation_defaults=defaults,
                       generation_defaults_source=source, adapter=adapter_path, manifest=manifest,
                       eos_token_ids=eos_ids, template_source=template_source, own_template=own_template,
                       trained_with=trained, template_warnings=warnings_)
