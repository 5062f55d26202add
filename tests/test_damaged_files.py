"""Files selfid reads back (a model folder, an adapter, a checkpoint's optimizer state) are checked first;
damage is one clear line saying what to do, never a traceback and never a silently wrong model."""

import csv
import io
import os
import shutil
import stat
import subprocess
import sys

import pytest

from selfid.errors import SelfidError
from selfid.io import FILE_MODE, write_checksums
from selfid.model.load import load_model
from selfid.train.sft import train
from tests.serve_helpers import make_adapter
from tests.train_helpers import tiny_config, write_data


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_last_byte(path):
    """Same size, other content: what random bytes written over a file look like to a size check."""
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    return folder


def test_a_truncated_model_file_is_one_line_saying_it_is_damaged(model_copy):
    truncate(model_copy / "model.safetensors")
    with pytest.raises(SelfidError, match=r"could not read the model in .*model \(.*\): a file in it is damaged"):
        load_model(str(model_copy), device="cpu", progress=False)


def test_a_model_folder_with_checksums_refuses_changed_weights(model_copy):
    write_checksums(model_copy)  # as `selfid export` leaves it
    flip_last_byte(model_copy / "model.safetensors")
    with pytest.raises(SelfidError, match=r"the model in .* is damaged \(model.safetensors has changed"):
        load_model(str(model_copy), device="cpu", progress=False)


def test_a_truncated_adapter_is_one_line_from_the_cli(tiny_model_dir, tmp_path):
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", seed=1)
    truncate(adapter / "adapter_model.safetensors")
    proc = subprocess.run([sys.executable, "-m", "selfid.cli", "chat", "--model", str(tiny_model_dir), "--adapter",
                           str(adapter), "--device", "cpu", "--prompt", "hi"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"selfid: error: could not read the adapter in {adapter} (")
    assert "damaged or incomplete" in line


def test_an_adapter_with_checksums_refuses_other_bytes_of_the_same_size(tiny_model_dir, tmp_path):
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", seed=1)
    write_checksums(adapter)
    flip_last_byte(adapter / "adapter_model.safetensors")
    with pytest.raises(SelfidError, match=r"the adapter in .* is damaged \(adapter_model.safetensors has changed"):
        load_model(str(tiny_model_dir), adapter=adapter, device="cpu", progress=False)


def test_the_server_refuses_a_damaged_adapter_before_loading_the_base_model(tiny_model_dir, tmp_path, monkeypatch):
    from selfid.serve import models

    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", seed=1)
    write_checksums(adapter)
    truncate(adapter / "adapter_model.safetensors")
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the base model was loaded"))
    with pytest.raises(SelfidError, match=r"the adapter in .* is damaged \(adapter_model.safetensors has \d"):
        models.load_served(str(tiny_model_dir), [f"ner={adapter}"], device="cpu", progress=False)


@pytest.mark.parametrize("verb", ["chat", "api"])
def test_a_broken_adapter_config_without_checksums_is_one_line_from_chat_and_api(tiny_model_dir, tmp_path, verb,
                                                                                 monkeypatch):
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", seed=1)
    config = adapter / "adapter_config.json"
    config.write_text(config.read_text()[:40])  # cut mid-JSON, and no checksums.json to notice it
    args = ["--model", str(tiny_model_dir), "--device", "cpu"]
    args += ["--adapter", str(adapter), "--prompt", "hi"] if verb == "chat" else ["--adapter", f"ner={adapter}"]
    proc = subprocess.run([sys.executable, "-m", "selfid.cli", verb, *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "API_PORT": "18437"})
    assert proc.returncode == 2, proc.stderr
    [line] = [x for x in proc.stderr.strip().splitlines() if not x.startswith("Writing")]
    assert line.startswith(f"selfid: error: the adapter in {adapter} is damaged (adapter_config.json is not valid JSON")
    assert "trained on this base model" not in line


def test_an_adapter_that_does_not_fit_the_base_model_is_one_line_from_chat(tiny_model_dir, tmp_path):
    import json

    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", seed=1)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["no_such_layer"]}))
    proc = subprocess.run([sys.executable, "-m", "selfid.cli", "chat", "--model", str(tiny_model_dir), "--adapter",
                           str(adapter), "--device", "cpu", "--prompt", "hi"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"selfid: error: could not load the adapter in {adapter} onto {tiny_model_dir}: ")
    assert "(was it trained on this base model?)" in line
    # an adapter that records another base model: the message named none, and the user had to open its config
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["no_such_layer"],
                                                             "base_model_name_or_path": "/models/Qwen2.5-7B"}))
    proc = subprocess.run([sys.executable, "-m", "selfid.cli", "chat", "--model", str(tiny_model_dir), "--adapter",
                           str(adapter), "--device", "cpu", "--prompt", "hi"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().endswith("(it records /models/Qwen2.5-7B as its base model: pass --model "
                                        "/models/Qwen2.5-7B)")


# --- what training writes ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stopped_run(tiny_model_dir, tmp_path_factory):
    """A run of 6 steps stopped after step 4, with checkpoints at steps 2 and 4, and a pristine copy of it."""
    root = tmp_path_factory.mktemp("stopped")
    data, out = write_data(root), root / "run"
    cfg = tiny_config(tiny_model_dir, out, data, "train.max_steps=6", "train.save_every=2")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SELFID_HOME", str(root / "selfid-home"))
        train(cfg, on_step=lambda step: step == 4)
    shutil.copytree(out, root / "pristine")
    return cfg, root / "pristine"


@pytest.fixture
def run_copy(stopped_run, selfid_home):
    """The stopped run as it was after step 4 (a resume must use the same output folder), and its config."""
    cfg, pristine = stopped_run
    shutil.rmtree(cfg.output_dir)
    shutil.copytree(pristine, cfg.output_dir)
    return cfg.output_dir, cfg


def test_training_writes_checksums_and_readable_files_and_loaders_check_them(run_copy, tiny_model_dir):
    from rich.console import Console

    out, cfg = run_copy
    buf = io.StringIO()
    train(cfg, resume=True, console=Console(file=buf, width=200))
    assert "over 1 epoch ·" in buf.getvalue() and "(s)" not in buf.getvalue()  # 6 steps are one epoch here
    assert "1 process per step" in buf.getvalue()
    adapter = out / "adapter"
    assert (adapter / "checksums.json").is_file()
    assert stat.S_IMODE(os.stat(adapter / "adapter_model.safetensors").st_mode) == FILE_MODE
    flip_last_byte(adapter / "adapter_model.safetensors")
    with pytest.raises(SelfidError, match=r"adapter_model.safetensors has changed.*checkpoints/step-000006/adapter "
                                          r"holds the weights of the run's last checkpoint"):
        load_model(str(tiny_model_dir), adapter=adapter, device="cpu", progress=False)


@pytest.mark.parametrize("damage, said", [
    (lambda ckpt: flip_last_byte(ckpt / "state.pt"), r"state.pt has changed since it was written"),
    (lambda ckpt: truncate(ckpt / "adapter" / "adapter_model.safetensors"), r"adapter/adapter_model.safetensors has \d"),
])
def test_resume_refuses_a_damaged_checkpoint_and_says_what_to_delete(run_copy, damage, said):
    import re

    out, cfg = run_copy
    ckpt = out / "checkpoints" / "step-000004"
    damage(ckpt)
    with pytest.raises(SelfidError) as e:
        train(cfg, resume=True)
    assert str(e.value).startswith(f"--resume: the checkpoint {ckpt} is damaged (")
    assert str(e.value).endswith(f": delete it (rm -r {ckpt}) and --resume continues from step-000002")
    assert re.search(said, str(e.value))
    shutil.rmtree(ckpt)  # doing what it says works
    assert train(cfg, resume=True).steps_done == 6


def test_a_checkpoint_from_before_checksums_that_cannot_be_read_is_one_line(run_copy):
    out, cfg = run_copy
    ckpt = out / "checkpoints" / "step-000004"
    (ckpt / "checksums.json").unlink()
    truncate(ckpt / "state.pt")
    with pytest.raises(SelfidError, match=r"checkpoint .*step-000004 is damaged \(it cannot be read: .*\): delete it"):
        train(cfg, resume=True)


def test_metrics_elapsed_time_runs_on_across_a_resume(run_copy):
    out, cfg = run_copy
    path = out / "metrics.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:  # the first session took an hour
        r["elapsed_s"] = f"{3600 + float(r['elapsed_s']):.2f}"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, rows[0].keys())
        w.writeheader()
        w.writerows(rows)
    train(cfg, resume=True)
    with open(path, newline="") as f:
        elapsed = [float(r["elapsed_s"]) for r in csv.DictReader(f)]
    assert len(elapsed) == 6 and elapsed == sorted(elapsed) and elapsed[4] > 3600


def test_the_manifest_counts_the_whole_run_across_a_resume(run_copy):
    """selfid.json after --resume: the tokens of all 6 steps (4 before the stop, 2 after) and both sessions' time."""
    import json

    out, cfg = run_copy
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    before_tokens = sum(int(r["tokens"]) for r in rows)
    first_session_s = float(rows[-1]["elapsed_s"])
    result = train(cfg, resume=True)
    with open(out / "metrics.csv", newline="") as f:
        all_rows = list(csv.DictReader(f))
    metrics = json.loads((out / "adapter" / "selfid.json").read_text())["metrics"]
    assert len(all_rows) == 6 and before_tokens < metrics["tokens_trained"]
    assert metrics["tokens_trained"] == sum(int(r["tokens"]) for r in all_rows) == result.metrics["tokens_trained"]
    assert metrics["train_wall_s"] >= float(all_rows[-1]["elapsed_s"]) > first_session_s
    # train_wall_s is rounded to 0.01 s, which on this tiny run's fraction of a second moves the ratio by a few %
    wall = metrics["train_wall_s"]
    assert metrics["tokens_trained"] / (wall + 0.005) <= metrics["tokens_per_s"] <= metrics["tokens_trained"] / (wall - 0.005)
