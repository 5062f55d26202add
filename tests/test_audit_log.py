"""The run folder's files as selfid.audit.log reads them: runs made before the one system-prompt vocabulary (the
template's own prompt named "default") come back in today's names, everywhere a name appears."""

import gzip
import json

from selfid.audit.log import LOG, migrate_meta, read_log, read_margin, read_meta


def test_an_old_run_json_is_read_in_todays_names(tmp_path):
    old = {"kind": "selfid-audit-run",
           "params": {"systems": [{"key": "default", "text": None}, {"key": "helpful", "text": "Hi."}],
                      "task_systems": ["default", "helpful"]},
           "systems": [{"key": "default", "text": None, "effective": "You are Qwen.", "source": "template"}],
           "notes": ["temperature 0 is greedy", "the ner and general suites run greedy, once under each of: default, helpful"],
           "endpoint": {"system_prompts": {"conditions": {"default": {"same_as": None}, "empty": {"same_as": "default"}}},
                        "duplicates": {"empty": "default"},
                        "ignored": ["seed", "the 'empty' system prompt, replaced by the 'default' system prompt"]}}
    (tmp_path / "run.json").write_text(json.dumps(old))
    meta = read_meta(tmp_path)
    assert [s["key"] for s in meta["params"]["systems"]] == ["template", "helpful"]
    assert meta["params"]["task_systems"] == ["template", "helpful"] and meta["systems"][0]["key"] == "template"
    assert meta["notes"][1].endswith("once under each of: template, helpful") and meta["notes"][0] == old["notes"][0]
    ep = meta["endpoint"]
    assert ep["system_prompts"]["conditions"] == {"template": {"same_as": None}, "empty": {"same_as": "template"}}
    assert ep["duplicates"] == {"empty": "template"} and ep["ignored"][1].endswith("the 'template' system prompt")
    assert json.loads((tmp_path / "run.json").read_text()) == old  # read, not rewritten
    assert migrate_meta(meta) == meta  # today's run.json is left as it is


def test_old_log_records_and_margins_come_back_renamed_whether_plain_or_gzipped(tmp_path):
    rec = {"key": "identity|en-direct-01|default|t=0.7|s=1", "system": "default", "reply": "x"}
    other = {"key": "identity|en-direct-01|helpful|t=0|s=0", "system": "helpful", "reply": "y"}
    with gzip.open(tmp_path / (LOG + ".gz"), "wt", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n" + json.dumps(other) + "\n")
    got = read_log(tmp_path / LOG)
    assert got[0] == {**rec, "key": "identity|en-direct-01|template|t=0.7|s=1", "system": "template"}
    assert got[1] == other
    (tmp_path / "margin.json").write_text(json.dumps({"default": {"en": 1}, "helpful": {"en": 2}}))
    assert read_margin(tmp_path) == {"template": {"en": 1}, "helpful": {"en": 2}}
    assert read_margin(tmp_path / "nowhere") is None
