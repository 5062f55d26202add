"""Run configs: YAML + --set overrides, and errors that name the bad key or value."""

import pytest

from selfid.config import load_config, parse_value
from selfid.errors import SelfidError


def write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "output: runs/x\ndata:\n  - source: msra\n    limit: 100\ntrain:\n  lr: 1.0e-4\n")
    cfg = load_config(path, ["train.lr=3e-4", "data.0.limit=50", "system_prompt=You are a helpful assistant.",
                             "lora.target_modules=[q_proj, v_proj]", "identity_replay.fraction=0.05"])
    assert cfg.train.lr == 3e-4 and cfg.data[0].limit == 50
    assert cfg.system_prompt == "You are a helpful assistant."
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.identity_replay.fraction == 0.05 and cfg.identity_replay.systems == ["template", "helpful", "empty", "adapter"]
    assert cfg.train.rows_per_batch == 8 and cfg.train.sample_limit == 2048


def test_set_values_parse_like_yaml():
    assert parse_value("3") == 3 and parse_value("1e-4") == 1e-4 and parse_value("true") is True
    assert parse_value("null") is None and parse_value("[a, b]") == ["a", "b"]
    assert parse_value("You are: a bot") == "You are: a bot"


@pytest.mark.parametrize("overrides, message", [
    (["train.lrr=1"], r"train\.lrr: unknown key \(known: epochs, max_steps, lr"),
    (["train.lr=abc"], r"train\.lr: .*valid number.*'abc'"),
    (["train.lr=-1"], r"train\.lr: .*greater than 0"),
    (["data.0.limitt=5"], r"data\.0\.limitt: unknown key \(known: source, format, limit"),
    (["data.3.limit=5"], r"data is a list of 1; use an index 0\.\.0"),
    (["lora=8"], r"lora: "),
    (["train.batch_tokens=100", "train.pack_length=200"], r"batch_tokens \(100\) must be at least pack_length"),
    (["data.0.fraction=0.5", "identity_replay.fraction=0.2"], None),
    (["nonsense"], r"write it as key=value"),
])
def test_bad_settings_name_the_key(overrides, message):
    base = ["output=x"]
    if message is None:  # fractions below 1 are fine
        load_config(None, base + overrides)
        return
    with pytest.raises(SelfidError, match=message):
        load_config(None, base + overrides)


def test_missing_output_and_bad_files(tmp_path):
    with pytest.raises(SelfidError, match="output: required"):
        load_config(None, [])
    with pytest.raises(SelfidError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(SelfidError, match=r"run.yaml:\d+: not valid YAML"):
        load_config(write(tmp_path, "output: x\ntrain:\n  lr: [1\n"))
    with pytest.raises(SelfidError, match="a mapping of keys"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(SelfidError, match=r"fractions \(identity_replay included\) add up to 1.1"):
        load_config(None, ["output=x", "data.0.fraction=0.6", "identity_replay.fraction=0.5"])
