"""Compilation paid once: PyTorch's own portable compile cache ("mega-cache") kept beside the converted model.

`torch.compile` costs 20-75 s per run on a GPU (docs/benchmarks.md) and is paid again by every run. PyTorch can
serialise what it compiled in a process (`torch.compiler.save_cache_artifacts`: inductor's and AOTAutograd's
artefacts, with the autotuning results) and hot-load it into a fresh process before compiling
(`torch.compiler.load_cache_artifacts`), which then finds every graph in its caches instead of compiling it.

An artefact is stored per *key*: the sha256 of what it was compiled for, namely the model (`model_identity`: the
converted folder's recorded checksums and its config), the purpose and shapes the caller passes (training's batch
rows and length, the decoder's buckets, the LoRA and attention set-up), the torch, transformers, triton and selfid
versions, and the device's name. Files live beside the converted model (`<models>/<key>.compile/`, or under
`$SELFID_HOME/compile/` for a model outside selfid's cache):

    <purpose>-<key[:24]>.bin    the serialised artefacts
    <purpose>-<key[:24]>.json   the full key, what it was made of, the .bin's size and sha256 (written last)

Every load checks the .json's key and the .bin's size and sha256 first: a file that is damaged, truncated or made for
something else is refused with one warning line, deleted, and rebuilt by this run's save; it is never handed to torch.
`SELFID_COMPILE_CACHE=0` turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from selfid import __version__
from selfid.io import CHECKSUMS, atomic_write_bytes, atomic_write_json, selfid_home, sha256_file

log = logging.getLogger("selfid.compile_cache")
FORMAT = 1


def enabled() -> bool:
    return os.environ.get("SELFID_COMPILE_CACHE", "1") not in ("0", "false", "off", "no")


def model_identity(path: Path | None, name: str = "") -> str:
    """What identifies a model's weights without reading them: the sha256 of its folder's checksums.json (selfid
    records each converted file's sha256 there) and config.json; a folder without checksums.json is named by its
    config and its weight files' names and sizes. No folder: the name."""
    h = hashlib.sha256()
    if path is None or not Path(path).is_dir():
        h.update(f"name:{name}".encode())
        return h.hexdigest()
    folder = Path(path)
    for fixed in (CHECKSUMS, "config.json"):
        if (folder / fixed).is_file():
            h.update(fixed.encode() + b"\0" + (folder / fixed).read_bytes())
    if not (folder / CHECKSUMS).is_file():
        for f in sorted(folder.iterdir()):
            if f.suffix in (".safetensors", ".bin", ".pt", ".gguf"):
                h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()


def device_name(device) -> str:
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)} sm{''.join(map(str, torch.cuda.get_device_capability(device)))}"
    import platform

    return f"{device.type}:{platform.machine()}:{platform.processor() or '?'}"


def versions() -> dict:
    import torch
    import transformers

    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
           "selfid": __version__}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    return out


def folder_for(model_path: Path | None, identity: str) -> Path:
    """Beside the converted model when it lives in selfid's cache, else under $SELFID_HOME/compile/."""
    home = selfid_home()
    if model_path is not None:
        p = Path(model_path).resolve()
        if p.parent == (home / "models").resolve():
            return p.with_name(p.name + ".compile")
    return home / "compile" / identity[:16]


@dataclass
class CompileCache:
    """One artefact: `folder`, `purpose` ("train", "decode") and the key's `components` (a JSON-able dict)."""

    folder: Path
    purpose: str
    components: dict
    status: str = "not loaded"  # loaded | absent | refused (...) | off | saved | nothing to save

    @property
    def key(self) -> str:
        text = json.dumps({"format": FORMAT, "purpose": self.purpose, **self.components}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def paths(self) -> tuple[Path, Path]:
        stem = self.folder / f"{self.purpose}-{self.key[:24]}"
        return stem.with_suffix(".bin"), stem.with_suffix(".json")

    def problem(self) -> str | None:
        """Why the stored artefact cannot be trusted (None: it can); "absent" when there is none."""
        data, meta = self.paths
        if not meta.is_file() and not data.is_file():
            return "absent"
        try:
            recorded = json.loads(meta.read_text(encoding="utf-8"))
            key, size, sha = recorded["key"], int(recorded["size"]), str(recorded["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            return f"{meta.name} is missing or unreadable"
        if key != self.key:
            return f"{meta.name} was written for another model, shape, device or version"
        if not data.is_file() or data.stat().st_size != size:
            return f"{data.name} is missing or not the {size:,} bytes recorded"
        if sha256_file(data) != sha:
            return f"{data.name} has changed since it was written: its sha256 differs"
        return None

    def load(self) -> str:
        """Hot-load the stored artefacts into this process's compile caches (before compiling). Returns the status."""
        if not enabled():
            self.status = "off"
            return self.status
        why = self.problem()
        if why == "absent":
            self.status = "absent"
            return self.status
        data, meta = self.paths
        if why is not None:
            log.warning("selfid: ignoring the compile cache %s (%s); compiling again and rebuilding it", data, why)
            for f in (meta, data):
                f.unlink(missing_ok=True)
            self.status = f"refused ({why})"
            return self.status
        import torch

        try:
            torch.compiler.load_cache_artifacts(data.read_bytes())
        except Exception as e:  # noqa: BLE001 - torch could not read it (another build): compile as if absent
            log.warning("selfid: torch could not load the compile cache %s (%s: %s); compiling again", data,
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            self.status = f"refused (torch: {type(e).__name__})"
            return self.status
        self.status = "loaded"
        return self.status

    def save(self) -> str:
        """Store what this process compiled, unless this run's artefact was loaded (nothing new to pay for)."""
        if not enabled():
            self.status = "off"
        if self.status in ("loaded", "off"):
            return self.status
        import torch

        got = torch.compiler.save_cache_artifacts()
        if not got or not got[0]:
            self.status = "nothing to save"
            return self.status
        blob = got[0]
        data, meta = self.paths
        atomic_write_bytes(data, blob)
        atomic_write_json(meta, {"key": self.key, "purpose": self.purpose, "components": self.components,
                                 "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()})
        self.status = "saved"
        return self.status


def for_model(model_path: Path | None, name: str, purpose: str, shapes: dict, device) -> CompileCache:
    """The cache entry for compiling model (`model_path` / `name`) for `purpose` at `shapes` on `device`."""
    identity = model_identity(model_path, name)
    components = {"model": identity, "shapes": shapes, "device": device_name(device), **versions()}
    return CompileCache(folder_for(model_path, identity), purpose, components)
