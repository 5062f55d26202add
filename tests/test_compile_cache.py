"""selfid.model.compile_cache: PyTorch's compile artefacts kept per model, shapes, versions and device, checked
before they are loaded."""

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from selfid.model import compile_cache
from selfid.model.compile_cache import CompileCache

BASE = {"model": "m" * 64, "shapes": {"rows": 8, "pack_length": 2048}, "device": "cuda:NVIDIA H100 sm90",
        "torch": "2.11.0", "cuda": "13.0", "transformers": "5.17.0", "selfid": "0.1.0", "triton": "3.5.0"}


def test_the_key_changes_when_any_component_changes(tmp_path):
    base = CompileCache(tmp_path, "train", dict(BASE)).key
    changed = {
        "model": "n" * 64, "shapes": {"rows": 16, "pack_length": 2048}, "device": "cuda:NVIDIA H200 sm90",
        "torch": "2.13.0", "cuda": "12.8", "transformers": "5.24.0", "selfid": "0.2.0", "triton": None,
    }
    keys = {base}
    for name, value in changed.items():
        keys.add(CompileCache(tmp_path, "train", {**BASE, name: value}).key)
    keys.add(CompileCache(tmp_path, "decode", dict(BASE)).key)
    assert len(keys) == len(changed) + 2
    assert CompileCache(tmp_path, "train", dict(reversed(list(BASE.items())))).key == base  # order does not matter


def test_model_identity_follows_the_recorded_checksums_and_config(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    plain = compile_cache.model_identity(folder)
    (folder / "model.safetensors").write_bytes(b"x" * 11)  # no checksums.json: named by weight files' sizes
    resized = compile_cache.model_identity(folder)
    (folder / "checksums.json").write_text('{"files": {"model.safetensors": {"size": 11, "sha256": "aa"}}}')
    recorded = compile_cache.model_identity(folder)
    (folder / "checksums.json").write_text('{"files": {"model.safetensors": {"size": 11, "sha256": "bb"}}}')
    other_weights = compile_cache.model_identity(folder)
    (folder / "config.json").write_text('{"hidden_size": 16}')
    other_config = compile_cache.model_identity(folder)
    assert len({plain, resized, recorded, other_weights, other_config}) == 5
    assert compile_cache.model_identity(None, "a") != compile_cache.model_identity(None, "b")


def test_it_lives_beside_a_converted_model_in_selfids_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFID_HOME", str(tmp_path / "home"))
    converted = tmp_path / "home" / "models" / "embedded-1d9614638d18"
    converted.mkdir(parents=True)
    assert compile_cache.folder_for(converted, "f" * 64) == converted.with_name("embedded-1d9614638d18.compile")
    elsewhere = tmp_path / "mine"
    elsewhere.mkdir()
    assert compile_cache.folder_for(elsewhere, "f" * 64) == tmp_path / "home" / "compile" / ("f" * 16)


@pytest.fixture
def fake_torch(monkeypatch):
    """torch.compiler's two calls, recorded: what a save serialises, what a load is handed."""
    state = {"blob": b"artefacts of run 1", "loaded": []}
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (state["blob"], None))
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", lambda data: state["loaded"].append(data))
    monkeypatch.delenv("SELFID_COMPILE_CACHE", raising=False)
    return state


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "selfid.compile_cache" and r.levelno == logging.WARNING]


def test_a_saved_artefact_is_loaded_by_the_next_run_and_not_saved_again(tmp_path, fake_torch):
    first = CompileCache(tmp_path, "train", dict(BASE))
    assert first.load() == "absent" and first.save() == "saved"
    data, meta = first.paths
    assert data.read_bytes() == b"artefacts of run 1"
    assert json.loads(meta.read_text())["key"] == first.key
    second = CompileCache(tmp_path, "train", dict(BASE))
    fake_torch["blob"] = b"artefacts of run 2"
    assert second.load() == "loaded" and fake_torch["loaded"] == [b"artefacts of run 1"]
    assert second.save() == "loaded" and data.read_bytes() == b"artefacts of run 1"
    assert CompileCache(tmp_path, "train", {**BASE, "torch": "2.14.0"}).load() == "absent"  # another key, another file


@pytest.mark.parametrize("damage, why", [
    (lambda data, meta: data.write_bytes(b"artefacts of run X"), "sha256 differs"),  # same size, other bytes
    (lambda data, meta: data.write_bytes(b"artefacts"), "not the 18 bytes recorded"),  # truncated
    (lambda data, meta: data.unlink(), "missing"),
    (lambda data, meta: meta.write_text("{not json"), "unreadable"),
    (lambda data, meta: meta.write_text(json.dumps({**json.loads(meta.read_text()), "key": "0" * 64})),
     "another model, shape, device or version"),
])
def test_a_damaged_or_foreign_artefact_is_refused_with_one_line_and_rebuilt(tmp_path, fake_torch, caplog, damage, why):
    CompileCache(tmp_path, "train", dict(BASE)).save()
    entry = CompileCache(tmp_path, "train", dict(BASE))
    damage(*entry.paths)
    with caplog.at_level(logging.WARNING, logger="selfid.compile_cache"):
        status = entry.load()
    assert status.startswith("refused") and why in status
    said = _warnings(caplog)
    assert len(said) == 1 and "\n" not in said[0] and why in said[0] and "compiling again" in said[0]
    assert fake_torch["loaded"] == []  # never handed to torch
    assert not any(p.exists() for p in entry.paths)
    fake_torch["blob"] = b"rebuilt"
    assert entry.save() == "saved"
    assert CompileCache(tmp_path, "train", dict(BASE)).load() == "loaded" and fake_torch["loaded"] == [b"rebuilt"]


def test_the_cache_can_be_turned_off(tmp_path, fake_torch, monkeypatch):
    monkeypatch.setenv("SELFID_COMPILE_CACHE", "0")
    entry = CompileCache(tmp_path, "train", dict(BASE))
    assert entry.save() == "off" and entry.load() == "off"
    assert not any(p.exists() for p in entry.paths)


ROUND_TRIP = textwrap.dedent("""
    import json, sys, torch
    from torch._dynamo.utils import counters
    from selfid.model.compile_cache import CompileCache
    entry = CompileCache(__import__("pathlib").Path(sys.argv[1]), "test", {"shapes": [8]})
    status = entry.load()
    f = torch.compile(lambda x: torch.sin(x) * 2 + x.cos(), dynamic=False)
    y = f(torch.arange(8.0))
    saved = entry.save()
    print(json.dumps({"load": status, "save": saved, "y": y.tolist(), "inductor": dict(counters["inductor"])}))
""")


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "")) or shutil.which("g++") or shutil.which("c++")


@pytest.mark.slow
@pytest.mark.skipif(_compiler() is None, reason="inductor needs a C++ compiler on the CPU (none found)")
def test_a_function_compiled_in_one_process_loads_compiled_in_the_next(tmp_path):
    """Two processes, each with its own empty inductor cache: the second finds its graph in the loaded artefacts."""
    def run(n: int) -> dict:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor-{n}"), "SELFID_COMPILE_CACHE": "1",
               "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        out = subprocess.run([sys.executable, "-c", ROUND_TRIP, str(tmp_path / "cache")], env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    cold, warm = run(1), run(2)
    assert cold["load"] == "absent" and cold["save"] == "saved" and cold["inductor"].get("fxgraph_cache_miss", 0) >= 1
    assert warm["load"] == "loaded" and warm["save"] == "loaded"
    assert warm["inductor"].get("fxgraph_cache_hit", 0) >= 1 and warm["inductor"].get("fxgraph_cache_miss", 0) == 0
    assert warm["y"] == cold["y"] == pytest.approx([float(torch.sin(torch.tensor(x)) * 2 + torch.cos(torch.tensor(x)))
                                                    for x in range(8)], rel=1e-5)


def test_train_compile_loads_the_previous_runs_artefacts_and_saves_its_own(tiny_model_dir, tmp_path, selfid_home,
                                                                            fake_torch, monkeypatch):
    """train.compile: a first run saves what it compiled beside the model's cache entry, a second with the same shapes
    loads it before compiling (and saves nothing), one with other shapes compiles afresh. (Compilation itself is
    stubbed: the layers run uncompiled here; the slow test above compiles for real.)"""
    from selfid.train.sft import train
    from tests.train_helpers import tiny_config, write_data

    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: None)
    data = write_data(tmp_path)

    def run(name, *extra):
        cfg = tiny_config(tiny_model_dir, tmp_path / name, data, "train.max_steps=2", "train.compile=true", "eval_ner=0",
                          *extra)
        return train(cfg).metrics["compile_cache"]

    assert run("first") == {"at_start": "absent", "at_end": "saved"}
    assert run("second") == {"at_start": "loaded", "at_end": "loaded"} and fake_torch["loaded"] == [b"artefacts of run 1"]
    assert run("longer-rows", "train.pack_length=256", "train.batch_tokens=512") == {"at_start": "absent",
                                                                                      "at_end": "saved"}
    saved = sorted(p.name for p in (selfid_home / "compile").rglob("train-*.json"))
    assert len(saved) == 2
