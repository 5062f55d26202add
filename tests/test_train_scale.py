"""Adapter scaling: the search, scaling a peft model in place, and saving a scaled adapter."""

import json

import pytest
import torch

from selfid.model.load import load_model
from selfid.train.scale import apply_scale, save_scaled, search_scale
from selfid.train.sft import train
from tests.train_helpers import tiny_config, write_data


def fake(rates, f1s):
    calls = []

    def evaluate(s):
        calls.append(s)
        return rates(s), f1s(s)

    return evaluate, calls


def test_search_picks_the_largest_scale_that_restores_identity():
    # foreign rate grows with the update; F1 barely moves down to 0.7, then drops
    evaluate, calls = fake(lambda s: 0.02 + 0.3 * s ** 3, lambda s: 0.80 if s >= 0.7 else 0.5)
    r = search_scale(evaluate, grid=[1.0, 0.9, 0.8, 0.7, 0.6], f1_tolerance=0.01, identity_margin=0.11)
    assert r.ok and r.scale == 0.7  # 0.8: 0.02 + 0.3 * 0.512 = 0.17 > 0.13; 0.7: 0.123 <= 0.13
    assert r.base_rate == pytest.approx(0.02) and r.full_f1 == 0.80
    strict = search_scale(evaluate, grid=[1.0, 0.9, 0.8, 0.7, 0.6], f1_tolerance=0.01, identity_margin=0.05)
    assert not strict.ok and strict.scale == 0.7  # 0.6 would restore it but loses the task


def test_search_stops_at_the_first_scale_that_works():
    evaluate, calls = fake(lambda s: 0.1 * s, lambda s: 0.8)
    r = search_scale(evaluate, grid=[1.0, 0.9, 0.8, 0.5], identity_margin=0.085)
    assert r.ok and r.scale == 0.8
    assert 0.5 not in calls  # no evaluation past the answer
    assert [p["scale"] for p in r.points] == [1.0, 0.9, 0.8, 0.0]


def test_search_reports_failure_with_the_best_compromise():
    evaluate, _ = fake(lambda s: 0.3 - 0.1 * (1 - s), lambda s: 0.8 if s >= 0.8 else 0.6)
    r = search_scale(evaluate, grid=[1.0, 0.9, 0.8, 0.7], f1_tolerance=0.02)
    assert not r.ok and r.scale == 0.8 and "no scale restores" in r.reason


def test_full_adapter_is_kept_when_identity_is_already_intact():
    evaluate, _ = fake(lambda s: 0.01, lambda s: 0.8)
    r = search_scale(evaluate)
    assert r.ok and r.scale == 1.0


def test_scaling_a_peft_model_and_saving_the_scaled_adapter(tiny_model_dir, tmp_path, selfid_home):
    out = tmp_path / "run"
    train(tiny_config(tiny_model_dir, out, write_data(tmp_path), "train.max_steps=3", "train.lr=1e-2"))
    tuned = load_model(str(tiny_model_dir), adapter=out / "adapter", device="cpu", progress=False)
    base = load_model(str(tiny_model_dir), device="cpu", progress=False)
    ids = torch.tensor([[5, 9, 30, 41, 7]])
    with torch.no_grad():
        full = tuned.model(ids).logits
        apply_scale(tuned.model, 0.0)
        torch.testing.assert_close(tuned.model(ids).logits, base.model(ids).logits)
        apply_scale(tuned.model, 0.5)
        half = tuned.model(ids).logits
        apply_scale(tuned.model, 1.0)
        torch.testing.assert_close(tuned.model(ids).logits, full)
    assert not torch.allclose(half, full)

    scaled_dir = save_scaled(out / "adapter", 0.5, tmp_path / "scaled")
    reloaded = load_model(str(tiny_model_dir), adapter=scaled_dir, device="cpu", progress=False)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.model(ids).logits, half, atol=1e-5, rtol=1e-5)
    manifest = json.loads((scaled_dir / "selfid.json").read_text())
    assert manifest["adapter_scale"] == 0.5 and manifest["train"]["system"]["kind"] == "template"


def test_training_with_adapter_scale_runs_the_identity_audit(tiny_model_dir, tmp_path, selfid_home):
    out = tmp_path / "run"
    from selfid.pipeline.train import run

    result = run(tiny_config(tiny_model_dir, out, write_data(tmp_path), "train.max_steps=2",
                               "adapter_scale.grid=[1.0, 0.5]", "adapter_scale.samples=1",
                               "adapter_scale.max_new_tokens=4", "adapter_scale.ner_sentences=2",
                               "adapter_scale.f1_tolerance=1.0", "adapter_scale.identity_margin=1.0"))
    search = result.metrics["adapter_scale"]
    assert search["ok"] and search["scale"] == 1.0  # any rate is within a margin of 1.0
    assert {p["scale"] for p in search["points"]} == {0.0, 1.0}
    assert all(0 <= p["foreign_rate"] <= 1 for p in search["points"])
    assert len(list((out / "adapter-scale-audits").iterdir())) == 2  # the base (scale 0) and the full adapter
    scaled = json.loads((out / "adapter-scaled" / "selfid.json").read_text())
    assert scaled["adapter_scale"] == 1.0 and scaled["adapter_scale_search"]["points"]


def _hand_made_adapter(folder, manifest_text):
    from safetensors.torch import save_file

    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    save_file({"x.lora_A.weight": torch.ones(2, 2), "x.lora_B.weight": torch.ones(2, 2)},
              str(folder / "adapter_model.safetensors"))
    (folder / "selfid.json").write_text(manifest_text)
    return folder


def test_saving_a_scaled_adapter_reads_its_manifest_through_the_typed_reader(tmp_path):
    from safetensors.torch import load_file

    from selfid.errors import SelfidError
    from selfid.manifest import FORMAT, read, training_system

    old = {"format": 1, "train": {"system_prompt": "You are X.", "system_message_sent": True}, "metrics": {"steps": 3}}
    adapter = _hand_made_adapter(tmp_path / "old", json.dumps(old))
    scaled = save_scaled(adapter, 0.5, tmp_path / "scaled")
    assert load_file(str(scaled / "adapter_model.safetensors"))["x.lora_B.weight"].eq(0.5).all()
    manifest = read(scaled)
    assert manifest.format == FORMAT and manifest.record()["metrics"] == {"steps": 3}
    assert training_system(manifest) == training_system(old) and training_system(old).message == "You are X."
    assert manifest.record()["adapter_scale"] == 0.5

    damaged = _hand_made_adapter(tmp_path / "damaged", '{"format": 1, "train": [')
    with pytest.raises(SelfidError, match="not valid JSON"):
        save_scaled(damaged, 0.5, tmp_path / "scaled-damaged")
    assert not (tmp_path / "scaled-damaged").exists()
