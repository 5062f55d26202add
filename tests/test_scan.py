"""`selfid scan`: vendor mentions, self-descriptions, distillation markers and system prompts in training data."""

import json
import subprocess
import sys

import pytest

from selfid.audit.scan import scan
from selfid.errors import SelfidError


@pytest.fixture
def data(tmp_path):
    messages = [
        {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                      {"role": "user", "content": "抽取实体：新华社北京电"}, {"role": "assistant", "content": '{"ORG": ["新华社"]}'}]},
        {"messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Who are you?"},
                      {"role": "assistant", "content": "I am ChatGPT, a large language model trained by OpenAI."}]},
        {"messages": [{"role": "user", "content": "Compare Claude and Gemini."},
                      {"role": "assistant", "content": "Claude is made by Anthropic; Gemini by Google."}]},
    ]
    (tmp_path / "chat.jsonl").write_text("\n".join(json.dumps(m, ensure_ascii=False) for m in messages) + "\n")
    sharegpt = [{"conversations": [{"from": "human", "value": "你是谁"}, {"from": "gpt", "value": "我是一个人工智能助手，我叫小明。"}]},
                {"conversations": [{"from": "human", "value": "写代码"},
                                   {"from": "gpt", "value": "```python\nimport openai\n```"}]}]
    (tmp_path / "sharegpt.jsonl").write_text("\n".join(json.dumps(m, ensure_ascii=False) for m in sharegpt) + "\n")
    alpaca = [{"instruction": "Tell me a joke", "input": "", "output": "As an AI language model, I don't have a sense of humor."},
              {"instruction": "2+2?", "input": "", "output": "4"},
              {"unknown": "shape"}]
    (tmp_path / "alpaca.json").write_text(json.dumps(alpaca))
    return tmp_path


def test_scan_counts_each_kind_of_finding(data):
    r = scan(data)
    assert r.samples == 7 and r.skipped == 1 and len(r.files) == 3
    assert r.mentions == {"openai": 1, "claude": 1, "google": 1}  # code importing openai is not a mention
    assert r.mentioning == 2
    assert r.claims == {"openai": 1}
    assert r.self_descriptions == 2  # the ChatGPT claim and "我是一个人工智能助手，我叫小明"
    assert r.personas == {"小明": 1}
    assert r.distilled == 1
    assert r.system_prompts == {"You are a helpful assistant.": 2}
    assert r.examples["distilled"][0].file.endswith("alpaca.json") and r.examples["distilled"][0].line == 1
    assert "ChatGPT" in r.examples["self"][0].snippet or "ChatGPT" in r.examples["self"][1].snippet


def test_scan_cli_prints_the_table_and_json(data):
    proc = subprocess.run([sys.executable, "-m", "selfid.cli", "scan", str(data)], capture_output=True, text=True,
                          timeout=120, env={"COLUMNS": "160", "PATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert "claims to be openai" in proc.stdout and "You are a helpful assistant." in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "selfid.cli", "scan", str(data / "chat.jsonl"), "--json"],
                          capture_output=True, text=True, timeout=120)
    report = json.loads(proc.stdout)
    assert report["samples"] == 3 and report["claims"] == {"openai": 1}


def test_scan_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(SelfidError, match="no such file or folder"):
        scan(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n{oops\n')
    with pytest.raises(SelfidError, match=r"bad.jsonl:2: not valid JSON .*: fix or remove that line"):
        scan(bad)
    unknown = tmp_path / "unknown.jsonl"  # exited 0 with a table of 0% over nothing
    unknown.write_text('{"q": "hi", "a": "I am Claude"}\n{"input": "x"}\n')
    with pytest.raises(SelfidError, match=r"unknown.jsonl: none of its 2 records has a shape selfid reads \(messages, "
                                          r".*\): nothing was scanned"):
        scan(unknown)
    unknown.write_text("[]")
    with pytest.raises(SelfidError, match="unknown.jsonl: it holds no records"):
        scan(unknown)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SelfidError, match="holds no .json or .jsonl files"):
        scan(tmp_path / "empty")


def test_jsonl_with_raw_line_separators_round_trips_through_train_data_scan_and_audit(tmp_path):
    """A raw U+2028/U+2029/U+0085 inside a JSON string is valid JSONL: every reader splits on line feeds only."""
    from selfid.audit import probes
    from selfid.audit.scan import scan
    from selfid.data.readers import read_file

    text = "Line one\u2028line two\u2029and\u0085three"
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": text},
                                             {"role": "assistant", "content": "I am Qwen."}]}, ensure_ascii=False)
                    + "\n", encoding="utf-8")
    [sample] = read_file(data)
    assert sample.messages[0]["content"] == text
    assert scan(data).samples == 1
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"id": "a", "lang": "en", "messages": [{"role": "user", "content": text}]},
                            ensure_ascii=False) + "\n", encoding="utf-8")
    assert probes.load_suite("identity", p)[0].messages[0]["content"] == text
