"""Run by tests/test_train_ddp.py under torchrun: train, then save this rank's LoRA weights."""

import sys
from pathlib import Path

import torch.distributed as dist
from safetensors.torch import save_file

from selfid.config import load_config
from selfid.train.sft import train

if __name__ == "__main__":
    config_path, dump = sys.argv[1], Path(sys.argv[2])
    result = train(load_config(config_path))
    state = {k: v.detach().contiguous().cpu() for k, v in result.model.state_dict().items() if "lora_" in k}
    save_file(state, str(dump / f"rank{dist.get_rank()}.safetensors"))
    dist.destroy_process_group()
