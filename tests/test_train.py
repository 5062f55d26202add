"""The LoRA SFT loop on the tiny model: learning, exact resume, NaN stops, the manifest, refusals."""

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from selfid.errors import SelfidError
from selfid.train import sft
from selfid.train.sft import resolve_system, train
from tests.train_helpers import tiny_config, write_data


def losses(output):
    with open(output / "metrics.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def adapter_tensors(folder):
    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.fixture
def data(tmp_path):
    return write_data(tmp_path)


def test_a_few_steps_lower_the_loss(tiny_model_dir, tmp_path, data, selfid_home):
    out = tmp_path / "run"
    result = train(tiny_config(tiny_model_dir, out, data, "train.max_steps=16", "data.0.weight=4"))
    curve = losses(out)
    assert len(curve) == 16 and result.steps_done == 16
    assert sum(curve[-3:]) / 3 < 0.8 * sum(curve[:3]) / 3, curve
    before = {k: v for k, v in result.model.state_dict().items() if "lora_B" in k}
    assert any(v.abs().sum() > 0 for v in before.values())  # lora_B starts at zero: it moved
    assert all(v.dtype == torch.float32 for v in adapter_tensors(out / "adapter").values())


def test_resume_continues_exactly(tiny_model_dir, tmp_path, data, selfid_home):
    extra = ("train.max_steps=6", "lora.dropout=0.1", "data.0.weight=2")  # dropout: the RNG state must resume too
    whole = tmp_path / "whole"
    train(tiny_config(tiny_model_dir, whole, data, *extra))

    parts = tmp_path / "parts"
    first = train(tiny_config(tiny_model_dir, parts, data, *extra), on_step=lambda step: step == 3)
    assert first.stopped and first.steps_done == 3 and first.adapter is None
    assert first.checkpoint.name == "step-000003"
    assert not (parts / "adapter").exists()
    second = train(tiny_config(tiny_model_dir, parts, data, *extra), resume=True)
    assert second.steps_done == 6 and not second.stopped

    assert losses(parts) == pytest.approx(losses(whole), abs=1e-6)
    a, b = adapter_tensors(whole / "adapter"), adapter_tensors(parts / "adapter")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_resume_refuses_a_changed_config(tiny_model_dir, tmp_path, data, selfid_home):
    out = tmp_path / "run"
    train(tiny_config(tiny_model_dir, out, data, "train.max_steps=4"), on_step=lambda s: s == 2)
    with pytest.raises(SelfidError, match="lora.r"):
        train(tiny_config(tiny_model_dir, out, data, "train.max_steps=4", "lora.r=8"), resume=True)


def test_an_existing_run_is_never_overwritten(tiny_model_dir, tmp_path, data, selfid_home):
    out = tmp_path / "run"
    train(tiny_config(tiny_model_dir, out, data, "train.max_steps=1"))
    stamp = (out / "adapter" / "adapter_model.safetensors").read_bytes()
    with pytest.raises(SelfidError, match="--resume"):
        train(tiny_config(tiny_model_dir, out, data, "train.max_steps=1"))
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == stamp
    with pytest.raises(SelfidError, match="no checkpoint"):
        train(tiny_config(tiny_model_dir, tmp_path / "fresh", data), resume=True)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tiny_model_dir, tmp_path, data,
                                                                           selfid_home, monkeypatch):
    real = sft.PackedLoss.forward
    calls = {"n": 0}

    def poisoned(self, batch):
        calls["n"] += 1
        loss = real(self, batch)
        return loss * float("nan") if calls["n"] > 3 else loss

    monkeypatch.setattr(sft.PackedLoss, "forward", poisoned)
    out = tmp_path / "run"
    with pytest.raises(SelfidError, match=r"loss became nan at step 4.*step-000002"):
        train(tiny_config(tiny_model_dir, out, data, "train.max_steps=8", "train.save_every=2", "train.log_every=2"))
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step-000002"]
    assert not (out / "adapter").exists()
    good = adapter_tensors(out / "checkpoints" / "step-000002" / "adapter")
    assert all(torch.isfinite(t).all() for t in good.values())


def test_manifest_records_what_training_used(tiny_model_dir, tmp_path, data, selfid_home):
    out = tmp_path / "run"
    cfg = tiny_config(tiny_model_dir, out, data, "train.max_steps=2", "system_prompt=You are a helpful assistant.",
                      "identity_replay.fraction=0.2", "identity_replay.kind=template", "identity_replay.languages=[en]",
                      "eval_ner=2")
    train(cfg)
    m = json.loads((out / "adapter" / "selfid.json").read_text())
    t = m["train"]
    assert m["format"] == 2 and t["system"] == {"kind": "text", "message": "You are a helpful assistant.",
                                                "effective": "You are a helpful assistant.",
                                                "origin": "config system_prompt"}
    assert t["template_default_system"].startswith("You are Qwen, created by Alibaba Cloud")
    assert t["template_hash"] == m["chat_template"]["hash"] and len(t["template_hash"]) == 16
    assert t["hyperparameters"]["lora"]["r"] == 4 and t["hyperparameters"]["train"]["lr"] == 3e-3
    assert len(m["base_model"]["weights_sha256"]) == 64
    assert m["generation_defaults"]["temperature"] == 0.7
    [src] = m["data"]
    assert src["loaded"] == src["used"] == 40 and len(src["sha256"]) == 64 and len(src["content_sha256"]) == 64
    ident = m["identity_replay"]
    assert (ident["name"], ident["maker"]) == ("Qwen", "Alibaba Cloud")
    assert ident["used"] == 10  # 20% of the mix: 10 / (40 + 10)
    assert set(ident["systems"]) == {None, "You are a helpful assistant.", ""}
    assert m["versions"]["torch"] and m["versions"]["peft"]
    assert m["metrics"]["steps"] == 2 and m["metrics"]["final_loss"] > 0
    assert m["metrics"]["ner"]["n"] == 2 and 0 <= m["metrics"]["ner"]["f1"] <= 1
    convs = [json.loads(line)["messages"] for line in (out / "train_data.jsonl").read_text().splitlines()]
    assert len(convs) == 50  # what was trained on, as trained: a provenance scan reads this file
    data_convs = [c for c in convs if c[-2]["content"].rsplit("\n", 1)[-1].isdigit()]  # the fixture's samples
    assert len(data_convs) == 40 and all(c[0] == {"role": "system", "content": "You are a helpful assistant."}
                                         for c in data_convs)
    from selfid.audit.scan import scan

    report = scan(out / "train_data.jsonl")
    assert report.samples == 50 and report.self_descriptions >= 1  # the replayed identity answers show up

    from selfid.model.load import load_model

    loaded = load_model(str(tiny_model_dir), adapter=out / "adapter", device="cpu", progress=False)
    assert loaded.manifest.train.system.message == "You are a helpful assistant."


def test_training_warns_only_off_the_templates_own_system_prompt(tiny):
    chat = tiny.chat
    for setting in ("template", chat.default_system):  # sent or not, the model sees the template's own
        assert sft.system_warning(resolve_system(setting, chat), chat) is None
    for setting in ("none", "empty", "You are a helpful assistant."):
        warning = sft.system_warning(resolve_system(setting, chat), chat)
        assert warning and "the model may learn to be someone else" in warning


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # importing torch's compiler touches torch.jit
def test_compiled_layers_are_plain_again_after_training(tiny_model_dir, tmp_path, data):
    """train.compile compiles each decoder layer for training only: generation afterwards (the NER check, an
    audit in the same process) must get the plain layers back, which CUDA-graph decoding needs."""
    from selfid.engine import static
    from selfid.model.load import load_model

    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="float32", progress=False)  # not the shared one
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", data, "train.compile=true")
    model, *_ = sft.lora_model(cfg, loaded, sft.Dist(), lambda *a: None)
    base = model.get_base_model()
    assert "torch.compile" in static.unsupported(model)
    assert hasattr(base, "_require_grads_hook")  # the first layer's input requires grad, like the others'
    sft.uncompile(model)
    assert static.unsupported(model) is None
    assert not hasattr(base, "_require_grads_hook")
