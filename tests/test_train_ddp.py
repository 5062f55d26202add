"""Two processes on the gloo backend (DDP on the CPU) train the same adapter, and the one a single process
trains on the same global batches (gradient accumulation instead of a second rank)."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from selfid.config import dump_config
from selfid.train.sft import train
from tests.train_helpers import tiny_config, write_data

ROOT = Path(__file__).resolve().parent.parent


def test_two_gloo_processes_save_identical_adapters_equal_to_one_process(tiny_model_dir, tmp_path, selfid_home):
    data = write_data(tmp_path, n=24)
    steps = ("train.max_steps=3", "train.batch_tokens=128")  # one 128-token row per rank per micro-batch
    ddp_cfg = tiny_config(tiny_model_dir, tmp_path / "ddp", data, *steps)
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(dump_config(ddp_cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(ROOT / "tests" / "ddp_worker.py"), str(cfg_path), str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    r0, r1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert r0.keys() == r1.keys() and r0
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    saved = load_file(str(tmp_path / "ddp" / "adapter" / "adapter_model.safetensors"))
    assert len(saved) == len(r0)

    single = train(tiny_config(tiny_model_dir, tmp_path / "single", data, *steps, "train.grad_accum=2"))
    ref = {k: v for k, v in single.model.state_dict().items() if "lora_" in k}
    moved = False
    for k in r0:
        torch.testing.assert_close(r0[k], ref[k], atol=2e-5, rtol=1e-4)
        moved |= "lora_B" in k and bool(ref[k].abs().sum() > 0)
    assert moved
