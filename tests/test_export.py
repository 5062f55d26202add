"""`selfid export --merge` and `selfid eval-ner` on a tiny trained adapter."""

import json

import pytest
import torch

from selfid.errors import SelfidError
from selfid.model.load import load_model
from selfid.train.export import export, with_default_system
from selfid.train.sft import train
from tests.train_helpers import tiny_config, write_data

HELPFUL = "You are a helpful assistant."


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SELFID_HOME", str(folder / "home"))
        out = folder / "run"
        train(tiny_config(tiny_model_dir, out, write_data(folder), "train.max_steps=3", f"system_prompt={HELPFUL}"))
        yield out / "adapter"


def test_merged_export_serves_like_training(trained, tmp_path):
    out = tmp_path / "merged"
    info = export(trained, out, progress=False)
    assert info["template_changed"] and info["default_system"] == HELPFUL
    base_name = json.loads((trained / "selfid.json").read_text())["base_model"]["name"]
    tuned = load_model(base_name, adapter=trained, device="cpu", dtype="float32", progress=False)
    merged = load_model(str(out), device="cpu", dtype="float32", progress=False)
    # no system message on the exported model renders exactly what training saw
    trained_prompt = tuned.chat.render([{"role": "system", "content": HELPFUL}, {"role": "user", "content": "Who are you?"}])
    served = merged.chat.render([{"role": "user", "content": "Who are you?"}])
    assert served.text == trained_prompt.text and served.system_source == "template"
    assert merged.generation_defaults == tuned.generation_defaults
    ids = torch.tensor([tuned.tokenizer(trained_prompt.text).input_ids])
    with torch.no_grad():
        torch.testing.assert_close(merged.model(ids).logits, tuned.model(ids).logits, atol=1e-4, rtol=1e-4)
    saved = json.loads((out / "selfid.json").read_text())
    assert saved["kind"] == "merged-model" and saved["train"]["system_prompt"] == HELPFUL


def test_export_refuses_what_it_cannot_do_safely(trained, tmp_path):
    with pytest.raises(SelfidError, match="convert_hf_to_gguf"):
        export(trained, tmp_path / "g", gguf=True)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(SelfidError, match="not empty"):
        export(trained, occupied)
    assert (occupied / "keep.txt").read_text() == "mine"
    with pytest.raises(SelfidError, match="not a LoRA adapter"):
        export(tmp_path, tmp_path / "x")


def test_default_system_rewrite_handles_quotes_and_newlines(tiny):
    text = 'You are "Bob\'s" helper.\nBe brief.'
    original = tiny.tokenizer.chat_template
    new = with_default_system(tiny.tokenizer, text)
    assert tiny.tokenizer.chat_template == original  # the loaded tokenizer is left as it was
    tiny.tokenizer.chat_template = new
    try:
        from selfid.model.chat import ChatFormat

        assert ChatFormat(tiny.tokenizer).default_system == text
    finally:
        tiny.tokenizer.chat_template = original


def test_eval_ner_uses_the_training_system_prompt_by_default(trained):
    from selfid.train.eval_ner import evaluate_ner, table

    base_name = json.loads((trained / "selfid.json").read_text())["base_model"]["name"]
    tuned = load_model(base_name, adapter=trained, device="cpu", dtype="float32", progress=False)
    report = evaluate_ner(tuned, n=3, max_new_tokens=4)
    assert report["n"] == 3 and report["system_prompt"] == HELPFUL and report["system_source"] == "given"
    assert set(report["per_type"]) == {"PER", "LOC", "ORG"}
    gold = sum(r["tp"] + r["fn"] for r in report["per_type"].values())
    assert gold > 0  # the first test sentences hold entities
    assert "overall" in table(report)
    plain = evaluate_ner(tuned, n=1, system=None, max_new_tokens=2)
    assert plain["system_source"] == "template"
