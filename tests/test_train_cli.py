"""`selfid train` as a user runs it: Ctrl-C saves a checkpoint, --resume finishes the run, bad input is one line."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from selfid.config import dump_config
from tests.train_helpers import tiny_config, write_data

ROOT = Path(__file__).resolve().parent.parent


def selfid(*args, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "selfid.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tiny_model_dir, tmp_path, selfid_home):
    out = tmp_path / "run"
    cfg = tiny_config(tiny_model_dir, out, write_data(tmp_path), "train.max_steps=150", "train.save_every=0")
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(cfg))
    proc = selfid("train", str(path))
    metrics = out / "metrics.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # wait until training is under way
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err
    [ckpt] = list((out / "checkpoints").iterdir())
    done = int(ckpt.name.split("-")[1])
    assert 2 <= done < 150 and (ckpt / "adapter" / "selfid.json").is_file()
    assert not (out / "adapter").exists()

    resumed = selfid("train", str(path), "--resume", "--set", "train.max_steps=150")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resuming from {ckpt}" in err.replace("\n", "")
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    steps = [int(line.split(",")[0]) for line in metrics.read_text().splitlines()[1:]]
    assert steps == list(range(1, 151))


def test_bad_config_is_one_line_without_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("output: x\ntrain:\n  lrr: 1\n")
    proc = selfid("train", str(path))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.startswith("selfid: error: bad config in") and "train.lrr: unknown key" in err
    assert "Traceback" not in err
