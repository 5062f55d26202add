"""`selfid chat`: one-shot and interactive, and one-line errors."""

import subprocess
import sys

from typer.testing import CliRunner

from selfid.cli import app
from selfid.engine import SamplingParams
from selfid.model.chat import conversation


def test_one_shot_prints_the_greedy_reply(tiny_model_dir, engine, tiny):
    res = CliRunner().invoke(app, ["chat", "--model", str(tiny_model_dir), "--device", "cpu", "--prompt", "你是谁?",
                                   "--temperature", "0", "--max-tokens", "12"])
    assert res.exit_code == 0, res.output
    params = SamplingParams.from_defaults(tiny.generation_defaults, temperature=0.0, max_new_tokens=12)
    want = engine.generate([tiny.chat.render(conversation("你是谁?")).text], params)[0].text
    assert res.stdout == want + "\n"
    assert "system prompt (template: the chat template's own)" in res.stderr
    # and where the sampling settings it did not set came from, as the interactive chat says
    assert (f"sampling: temperature 0.0, top_p {params.top_p}, top_k {params.top_k}, repetition_penalty "
            f"{params.repetition_penalty} (defaults from {tiny.generation_defaults_source})") in res.stderr


def test_interactive_chat_keeps_history_and_switches_system(tiny_model_dir):
    keys = "hello\n/system You are Tom.\nwho are you?\n/exit\n"
    res = CliRunner().invoke(app, ["chat", "--model", str(tiny_model_dir), "--device", "cpu", "--temperature", "0",
                                   "--max-tokens", "4"], input=keys)
    assert res.exit_code == 0, res.output
    assert res.stdout.count("assistant> ") == 2
    assert "system prompt (text, from /system): 'You are Tom.'" in res.stderr


def test_bad_model_is_one_line_error_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "selfid.cli", "chat", "--model", str(tmp_path / "nope"), "--prompt", "x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"selfid: error: no such folder or file: {tmp_path / 'nope'}"


def test_chat_with_an_adapter_renders_as_in_training_unless_told_otherwise(tiny_model_dir, tmp_path):
    from tests.serve_helpers import NER_SYSTEM, make_adapter, ner_manifest

    adapter = make_adapter(tiny_model_dir, tmp_path / "ner", seed=1, manifest=ner_manifest())
    base = ["chat", "--model", str(tiny_model_dir), "--adapter", str(adapter), "--device", "cpu", "--prompt", "你是谁?",
            "--temperature", "0", "--max-tokens", "4"]
    trained = CliRunner().invoke(app, base)
    assert trained.exit_code == 0, trained.output
    assert f"system prompt (adapter: its training prompt, from the adapter's selfid.json): {NER_SYSTEM!r}" in trained.stderr
    told = CliRunner().invoke(app, base + ["--system", ""])
    assert told.exit_code == 0, told.output
    assert "system prompt (empty, from --system): ''" in told.stderr
    named = CliRunner().invoke(app, base + ["--system", "helpful"])
    assert "system prompt (text, from --system): 'You are a helpful assistant.'" in named.stderr
    # trained with no system message at all: the template inserts its own, as it did in training
    manifest = {"train": {"system_prompt": None, "system_message_sent": False}}
    none_sent = make_adapter(tiny_model_dir, tmp_path / "plain", seed=2, manifest=manifest)
    res = CliRunner().invoke(app, base[:4] + [str(none_sent)] + base[5:])
    assert res.exit_code == 0, res.output
    assert "system prompt (adapter: its training prompt, from the adapter's selfid.json): 'You are Qwen" in res.stderr


def test_help_screens_show_no_value_for_flags_and_no_internal_shorthand():
    for verb in ([], ["train"], ["audit"], ["demo"], ["api"], ["chat"]):
        res = CliRunner().invoke(app, verb + ["--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0, res.output
        assert "<bool>" not in res.stdout and "--help" in res.stdout
        assert "seed's" not in res.stdout and "seed study" not in res.stdout
    assert "<path>" in CliRunner().invoke(app, ["train", "--help"]).stdout  # options that take values keep theirs
