"""Loading: what --model accepts, the clear errors, generation defaults, adapters."""

import shutil

import pytest
import torch

from selfid.errors import SelfidError
from selfid.model.load import load_model, pick_dtype, resolve_model


def test_folder_loads_with_its_generation_defaults(tiny, tiny_model_dir):
    assert tiny.source == "folder" and tiny.path == tiny_model_dir
    assert tiny.generation_defaults == {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}
    assert tiny.generation_defaults_source.endswith("generation_config.json")
    eot, im_end = tiny.tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    assert set(tiny.eos_token_ids) == {eot, im_end}
    assert tiny.device.type == "cpu" and next(tiny.model.parameters()).dtype == torch.float32


def test_greedy_model_reports_temperature_zero(tmp_path, tiny_model_dir):
    folder = tmp_path / "greedy"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "generation_config.json").write_text('{"do_sample": false, "eos_token_id": 2}')
    loaded = load_model(str(folder), device="cpu", progress=False)
    assert loaded.generation_defaults["temperature"] == 0.0


@pytest.mark.parametrize("spec, match", [
    ("./no/such/folder", "no such folder or file"),
    ("not a model", "not a model selfid knows"),
])
def test_bad_model_specs(spec, match):
    with pytest.raises(SelfidError, match=match):
        resolve_model(spec)


def test_folder_without_config_and_non_gguf_file(tmp_path):
    with pytest.raises(SelfidError, match="no config.json"):
        resolve_model(str(tmp_path))
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(SelfidError, match="not a .gguf"):
        resolve_model(str(f))


def test_hub_id_offline_says_so_and_how_to_pass_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SelfidError, match=r"offline.*--model /models/"):
        load_model("Qwen/Qwen2.5-7B-Instruct", device="cpu", progress=False)


def test_dtype_choice():
    assert pick_dtype(None, torch.device("cpu")) == torch.float32
    assert pick_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert pick_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(SelfidError, match="unknown dtype"):
        pick_dtype("int3", torch.device("cpu"))


def test_adapter_loads_changes_outputs_and_reads_manifest(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    (adapter / "selfid.json").write_text('{"train": {"system_prompt": "You are a helpful assistant."}}')

    plain = load_model(str(tiny_model_dir), device="cpu", progress=False)
    tuned = load_model(str(tiny_model_dir), adapter=adapter, device="cpu", progress=False)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert not torch.allclose(plain.model(ids).logits, tuned.model(ids).logits)
    assert tuned.adapter == adapter and tuned.manifest.train.system.message == "You are a helpful assistant."


def test_adapter_folder_must_be_an_adapter(tiny_model_dir, tmp_path):
    with pytest.raises(SelfidError, match="not a LoRA adapter folder"):
        load_model(str(tiny_model_dir), adapter=tmp_path, device="cpu", progress=False)
