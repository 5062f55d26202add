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
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SelfidError, match=r"offline mode is on \(HF_HUB_OFFLINE\): .*--model /models/Qwen2.5-7B"):
        load_model("Qwen/Qwen2.5-7B-Instruct", device="cpu", progress=False)


def test_an_unreachable_hub_is_one_line_at_once_without_retries(monkeypatch):
    """Offline without HF_HUB_OFFLINE set: the hub is asked once; transformers' download (and its retries) never runs."""
    import socket

    from huggingface_hub import constants
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with socket.socket() as s:  # a port nothing listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed}")
    for cls in (AutoTokenizer, AutoModelForCausalLM):
        monkeypatch.setattr(cls, "from_pretrained", lambda *a, **k: pytest.fail("a download was tried"))
    with pytest.raises(SelfidError) as e:
        load_model("Qwen/Qwen2.5-0.5B-Instruct", device="cpu", progress=False)
    message = str(e.value)
    assert "\n" not in message and message.startswith("'Qwen/Qwen2.5-0.5B-Instruct' is not in the Hugging Face cache "
                                                       f"and the hub at http://127.0.0.1:{closed} cannot be reached")
    assert message.endswith("pass its local folder, e.g. --model /models/Qwen2.5-0.5B-Instruct")


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


def test_an_adapter_whose_training_diverged_is_refused_with_the_reason(tiny_model_dir, tmp_path):
    """A trainer whose gradients went NaN still saves the adapter (LLaMA-Factory logs loss 0 and grad_norm nan): its
    NaN weights would make every reply noise, so loading it is a one-line error naming a tensor, not an audit."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        next(p for n, p in peft_model.named_parameters() if "lora_B" in n)[0, 0] = float("nan")
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    with pytest.raises(SelfidError, match=r"NaN or infinite weights in 1 tensor \(e\.g\. .*lora_B.*\): its training diverged"):
        load_model(str(tiny_model_dir), adapter=adapter, device="cpu", progress=False)
