"""The one owner of the system prompt: resolving a setting against a chat template, the manifest's one reader
(and its migration of older layouts), older spellings, and every consumer of an adapter reading the same prompt."""

import subprocess
import sys

import pytest

from selfid import manifest as manifest_mod
from selfid.audit.backends import endpoint_system
from selfid.audit.run import audit_systems
from selfid.config import RunConfig, load_config
from selfid.errors import SelfidError
from selfid.model.chat import ChatFormat, conversation
from selfid.system_prompt import HELPFUL, DeprecatedSpelling, LikelyTypo, resolve, sent
from tests.test_chat import _Tok

QWEN = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
NER = "你是一个命名实体识别助手。"


@pytest.fixture(params=["with a default", "without one"])
def chat(request, tiny):
    """Qwen's template (it inserts a default system prompt) and one that inserts none."""
    return tiny.chat if request.param == "with a default" else ChatFormat(_Tok())


def test_each_setting_resolves_to_what_the_rendered_prompt_shows(chat):
    default = chat.default_system
    trained = sent(NER, QWEN, "config system_prompt")
    trained_unsent = resolve("template", QWEN, "config system_prompt")
    cases = {  # setting -> (kind, message sent, text the model sees)
        "template": ("template", None, default),
        "none": ("none", "" if default is not None else None, "" if default is not None else None),
        "empty": ("empty", "", ""),
        "": ("empty", "", ""),
        "helpful": ("text", HELPFUL, HELPFUL),
        "You are Tom.": ("text", "You are Tom.", "You are Tom."),
        "text:none": ("text", "none", "none"),  # a text that is one of the words, spelled out
    }
    for setting, want in cases.items():
        got = resolve(setting, default, "--system")
        assert (got.kind, got.message, got.effective, got.origin) == (*want, "--system"), setting
        shown = chat.render(conversation("hi", got.message)).system
        assert (shown.message, shown.effective) == (got.message, got.effective), setting
    adapter = resolve("adapter", default, "selfid.json", trained)
    assert (adapter.kind, adapter.message, adapter.effective) == ("adapter", NER, NER)
    # trained with no system message: served with none, so whatever this template inserts
    unsent = resolve("adapter", default, "selfid.json", trained_unsent)
    assert (unsent.kind, unsent.message, unsent.effective) == ("adapter", None, default)
    with pytest.raises(SelfidError, match="'adapter' needs an adapter whose selfid.json records"):
        resolve("adapter", default, "--system")


def test_the_value_is_frozen_and_says_in_one_line_what_the_model_sees():
    chosen = resolve("adapter", QWEN, "the adapter's selfid.json", sent(NER, QWEN))
    with pytest.raises(Exception):
        chosen.message = "other"
    assert chosen.describe() == f"system prompt (adapter: its training prompt, from the adapter's selfid.json): {NER!r}"
    assert resolve("template", None).describe() == "system prompt (template: the chat template's own): none"


# --- the manifest's one reader -------------------------------------------------------------------

V1_LAYOUTS = [  # format-1 `train` blocks selfid wrote, and the training SystemPrompt each means
    ({"system_prompt": QWEN, "system_prompt_policy": "template_default", "system_prompt_is_template_default": True,
      "system_message_sent": False}, ("template", None, QWEN)),
    ({"system_prompt": HELPFUL, "system_prompt_policy": "text", "system_prompt_is_template_default": False,
      "system_message_sent": True}, ("text", HELPFUL, HELPFUL)),
    ({"system_prompt": "", "system_prompt_policy": "none", "system_message_sent": True}, ("none", "", "")),
    ({"system_prompt": "", "system_prompt_policy": "text", "system_message_sent": True}, ("empty", "", "")),
    ({"system_prompt": None, "system_prompt_policy": "template_default", "system_message_sent": False},
     ("template", None, None)),
    ({"system_prompt": NER, "system_prompt_policy": "fixed"}, ("text", NER, NER)),  # before system_message_sent
    ({"system_prompt": None}, ("template", None, None)),
]


@pytest.mark.parametrize("train,want", V1_LAYOUTS)
def test_older_manifests_are_migrated(train, want):
    old = {"format": 1, "kind": "lora-adapter", "train": {**train, "template_hash": "ab" * 8, "epochs": 5},
           "metrics": {"steps": 3}}
    m = manifest_mod.parse(old)
    assert m.format == manifest_mod.FORMAT and m.train.template_hash == "ab" * 8
    system = manifest_mod.training_system(old)
    assert (system.kind, system.message, system.effective) == want
    record = m.record()
    assert record["metrics"] == {"steps": 3} and record["train"]["epochs"] == 5  # everything else is kept
    assert not {"system_prompt", "system_message_sent", "system_prompt_policy"} & set(record["train"])
    assert manifest_mod.training_system(record) == system  # a migrated record reads the same


def test_a_manifest_without_a_training_prompt_and_damaged_ones():
    assert manifest_mod.training_system(None) is None
    assert manifest_mod.training_system({"format": 1, "base_model": {"name": "m"}}) is None
    assert manifest_mod.training_system({"train": {"template_hash": "x"}}) is None
    for bad, msg in (([1, 2], "holds a JSON list, not an object"), ({"format": 9}, "format 9, which this selfid cannot read"),
                     ({"train": "x"}, "train is a JSON str"), ({"train": {"system_prompt": 5}}, "not a string or null"),
                     ({"format": 2, "train": {"system": {"kind": "custom", "message": "x", "effective": "x"}}},
                      "train.system.kind")):
        with pytest.raises(manifest_mod.ManifestError, match=msg):
            manifest_mod.training_system(bad)


def test_what_training_writes_is_what_the_reader_returns(tiny):
    system = resolve(HELPFUL, tiny.chat.default_system, "config system_prompt")
    block = manifest_mod.train_section(system, tiny.chat, RunConfig(output="x"))
    assert manifest_mod.training_system({"format": manifest_mod.FORMAT, "train": block}) == system


# --- older spellings ---------------------------------------------------------------------------------

def test_older_config_spellings_are_read_with_one_deprecation_message_each(deprecations, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("output: x\nsystem_prompt: template_default\nidentity_replay:\n  systems: [template_default, train, ''"
                    "]\n")
    with pytest.warns(DeprecatedSpelling) as said:
        cfg = load_config(path)
        load_config(path)  # read again: no second message
        systems = resolve(cfg.system_prompt, QWEN, "config system_prompt")
    assert systems.kind == "template"
    assert sorted(str(w.message) for w in said) == [
        "config identity_replay.systems: 'template_default' is an older spelling, read as 'template': the spelling to use",
        "config identity_replay.systems: 'train' is an older spelling, read as 'adapter': the spelling to use",
        "config system_prompt: 'template_default' is an older spelling, read as 'template': the spelling to use"]
    with pytest.raises(SelfidError, match="system_prompt: adapter names the system prompt an adapter was trained under"):
        load_config(None, ["output=x", "system_prompt=adapter"])


def test_older_api_header_spellings_are_read_with_a_deprecation_message(deprecations):
    with pytest.warns(DeprecatedSpelling, match="x-selfid-system-source header .* 'adapter-manifest' .* 'adapter'"):
        assert endpoint_system({"x-selfid-system-source": "adapter-manifest", "x-selfid-system-prompt": "You%20are%20X."},
                               None) == ("You are X.", "adapter")
    with pytest.warns(DeprecatedSpelling):
        assert endpoint_system({"x-selfid-system-source": "request", "x-selfid-system-prompt": ""}, "") == ("", "empty")
    assert endpoint_system({"x-selfid-system-source": "text", "x-selfid-system-prompt": "Hi"}, "Hi") == ("Hi", "text")
    assert endpoint_system({}, None) == (None, "endpoint") and endpoint_system({}, "") == ("", "empty")


def test_the_cli_gives_a_deprecation_as_one_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(f"output: {tmp_path / 'out'}\nmodel: {tmp_path / 'nope'}\nsystem_prompt: template_default\n")
    proc = subprocess.run([sys.executable, "-m", "selfid.cli", "train", str(path)], capture_output=True, text=True,
                          timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == ("selfid: deprecated: config system_prompt: 'template_default' is an older spelling, read as "
                        "'template': the spelling to use")
    assert proc.returncode == 2 and lines[-1].startswith("selfid: error: ")


@pytest.mark.parametrize("typed,meant", [("helpfull", "helpful"), ("Template", "template"), ("emtpy", "empty"),
                                         ("adaptor", "adapter"), ("nome", "none")])
def test_a_text_one_edit_from_a_setting_is_sent_as_text_with_a_warning(deprecations, typed, meant):
    with pytest.warns(LikelyTypo) as said:
        chosen = resolve(typed, QWEN, "--system")
    assert chosen.kind == "text" and chosen.message == typed  # still what was asked for, as written
    [warning] = said
    assert f"--system: {typed!r} is sent to the model as the system prompt text; did you mean {meant!r}?" in str(
        warning.message)
    assert f"write text:{typed} to send it as text" in str(warning.message)


@pytest.mark.parametrize("setting", ["helpful", "template", "text:helpfull", "You are a helpful assistant.", "Max",
                                     "empty", ""])
def test_settings_and_texts_far_from_them_give_no_warning(deprecations, setting, recwarn):
    resolve(setting, QWEN, "--system")
    assert not [w for w in recwarn if issubclass(w.category, LikelyTypo)]


def test_the_cli_gives_a_likely_typo_as_one_line(tiny_model_dir):
    proc = subprocess.run([sys.executable, "-m", "selfid.cli", "chat", "--model", str(tiny_model_dir), "--device",
                           "cpu", "--system", "helpfull", "--prompt", "hi", "--max-tokens", "2"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    [line] = [x for x in proc.stderr.splitlines() if "helpfull" in x and "warning" in x]
    assert line == ("selfid: warning: --system: 'helpfull' is sent to the model as the system prompt text; did you "
                    "mean 'helpful'? (write text:helpfull to send it as text without this warning)")


# --- one manifest, one training prompt, every consumer ---------------------------------------------------

@pytest.mark.parametrize("train,message", [
    ({"system_prompt": NER, "system_prompt_policy": "text", "system_message_sent": True}, NER),  # format 1
    ({"system": {"kind": "template", "message": None, "effective": QWEN}}, None),  # format 2, nothing sent
])
def test_chat_api_audit_eval_and_export_use_the_same_training_prompt(train, message, tiny_model_dir, tmp_path):
    from selfid.cli import _system_setting
    from selfid.model.load import load_model
    from selfid.serve.models import load_served
    from selfid.train.eval_ner import evaluate_ner
    from selfid.train.export import export
    from tests.serve_helpers import make_adapter

    fmt = 2 if "system" in train else 1
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", 1, {"format": fmt, "train": train})
    loaded = load_model(str(tiny_model_dir), adapter=adapter, device="cpu", dtype="float32", progress=False)
    effective = message if message is not None else loaded.chat.default_system

    chosen, _ = _system_setting(None, loaded)  # selfid chat without --system
    assert (chosen.kind, chosen.message, chosen.effective) == ("adapter", message, effective)
    _, served = load_served(str(tiny_model_dir), [f"a={adapter}"], device="cpu", dtype="float32", progress=False)
    api = served[1].default_system()  # selfid api, a request without a system message
    assert (api.kind, api.message, api.effective) == ("adapter", message, effective)
    audited = audit_systems(["adapter"], loaded.chat.default_system,
                            manifest_mod.training_system(loaded.manifest))["adapter"]  # selfid audit --systems adapter
    assert (audited.kind, audited.message, audited.effective) == ("adapter", message, effective)
    report = evaluate_ner(loaded, n=1, max_new_tokens=2)  # selfid eval-ner without --system
    assert (report["system_kind"], report["system_prompt"]) == ("adapter", effective)
    info = export(adapter, tmp_path / "merged", model=str(tiny_model_dir), progress=False)  # selfid export --merge
    assert info["default_system"] == effective and info["template_changed"] == (message is not None)
