"""Auditing what users deploy: an endpoint that renames the model, replaces empty system messages and drops
the seed (as LLaMA-Factory's API does) is measured before the grid runs, and whose model it serves is never
taken from the name it serves under."""

import json

import pytest

from selfid.audit.backends import HttpBackend
from selfid.audit.endpoint import is_placeholder, read_reference
from selfid.audit.log import LOG, read_log
from selfid.audit.run import AuditParams, audit_systems, run_audit
from selfid.system_prompt import sent
from selfid.errors import SelfidError

QWEN = {"en": "I am Qwen, a large language model created by Alibaba Cloud.", "zh": "我是通义千问，由阿里云开发的大语言模型。"}


def claims(vendors: dict):
    """A script answering identity questions with a fixed claim per question (else the tiny model generates)."""
    from selfid.audit.endpoint import CALIBRATION
    from selfid.audit.probes import load_suite

    asked = {p.messages[-1]["content"]: p.id for p in load_suite("identity") if p.id in CALIBRATION}

    def script(messages):
        pid = asked.get(messages[-1]["content"])
        return None if pid is None else vendors.get(pid, QWEN["zh" if pid.startswith("zh") else "en"])

    return script


@pytest.fixture
def faults(chat_server):
    f = chat_server[1]
    f.served_name, f.empty_system, f.drop_seed, f.ignore_max_tokens, f.script = None, "keep", False, False, None
    f.completions = 0
    f.seen.clear()
    return f


def grid(probes, own="auto"):
    return AuditParams(suites=["identity"], systems=audit_systems(["template,helpful,empty"]), temperatures=[0.0],
                       samples=1, seed=1, max_new_tokens=6, ner_limit=1, own=own, identity_probes=str(probes))


def like_llamafactory(faults):
    faults.served_name, faults.empty_system, faults.drop_seed = "gpt-3.5-turbo", "replace", True


def test_placeholder_names_are_no_evidence():
    assert all(is_placeholder(n) for n in ("gpt-3.5-turbo", "gpt-4", "GPT-4o-mini", "default", "model", ""))
    assert not any(is_placeholder(n) for n in ("Qwen2.5-7B-Instruct", "runs/qwen7b-merged", "llama-3-8b", "ner"))


def test_llamafactory_like_endpoint_own_vendor_duplicate_condition_and_ignored_seed(chat_server, faults, http_probes, tmp_path):
    url, _ = chat_server
    like_llamafactory(faults)
    faults.script = claims({})
    summary = run_audit(HttpBackend(url, "gpt-3.5-turbo", concurrency=2), grid(http_probes), tmp_path / "r",
                        show_progress=False)
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    ep = meta["endpoint"]
    # whose model: from its own answers, not from the placeholder name it is served as
    assert meta["own"] == "qwen" and "own greedy answers" in meta["own_source"] and "placeholder" in meta["own_source"]
    assert ep["own"]["evidence"]["claims"] == {"qwen": 8} and ep["placeholder_names"] == ["gpt-3.5-turbo"]
    assert ep["listed"] == ["gpt-3.5-turbo"]
    # the empty system message got the same prompt as none: marked, and named as a duplicate of `template`
    cond = ep["system_prompts"]["conditions"]
    assert cond["empty"]["prompt_tokens"] == cond["template"]["prompt_tokens"] != cond["helpful"]["prompt_tokens"]
    assert cond["empty"]["evidently"].startswith("treated as no system message") and cond["empty"]["same_as"] == "template"
    assert cond["helpful"]["same_as"] is None and ep["duplicates"] == {"empty": "template"}
    # the dropped seed is listed; greedy and max_tokens behaved
    assert ep["parameters"]["seed"]["honoured"] is False
    assert ep["parameters"]["temperature_0"]["deterministic"] and ep["parameters"]["max_tokens"]["honoured"]
    assert any(x.startswith("seed") for x in ep["ignored"]) and any("'empty'" in x for x in ep["ignored"])
    # the grid itself is unchanged by the preflight (which the server never counted as audit work)
    assert faults.completions == len(read_log(tmp_path / "r" / LOG)) == 2 * 3
    assert summary["run"]["endpoint"]["duplicates"] == {"empty": "template"}
    html = (tmp_path / "r" / "report.html").read_text()
    assert "What the endpoint did with the requests" in html and "not independent evidence" in html


def test_local_template_gives_expected_token_counts(chat_server, faults, http_probes, tiny_model_dir, tmp_path):
    url, _ = chat_server
    like_llamafactory(faults)
    run_audit(HttpBackend(url, "gpt-3.5-turbo", reference=str(tiny_model_dir)), grid(http_probes), tmp_path / "r",
              show_progress=False)
    ep = json.loads((tmp_path / "r" / "run.json").read_text())["endpoint"]
    assert ep["own"]["vendor"] == "qwen" and "model_type 'qwen2'" in ep["own"]["source"]
    assert ep["own"]["evidence"] == {}  # no calibration needed: the local copy said whose model it is
    cond = ep["system_prompts"]["conditions"]
    assert ep["system_prompts"]["template_known"]
    assert cond["template"]["prompt_tokens"] == cond["template"]["expected_tokens"]
    assert cond["helpful"]["evidently"] == "as sent"
    assert cond["empty"]["expected_tokens"] < cond["empty"]["prompt_tokens"] == cond["template"]["prompt_tokens"]
    assert cond["empty"]["same_as"] == "template"


def test_a_text_the_template_makes_its_default_duplicates_the_template_condition(chat_server, faults, http_probes,
                                                                               tiny_model_dir, tmp_path):
    """An exported model whose template defaults to its training prompt renders "none sent" and that prompt the
    same: the two conditions are one, and the run says so."""
    url, _ = chat_server
    params = grid(http_probes, own="qwen")
    params.systems["qwen-line"] = sent("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.", None)
    run_audit(HttpBackend(url, "tiny", reference=str(tiny_model_dir)), params, tmp_path / "r", show_progress=False)
    ep = json.loads((tmp_path / "r" / "run.json").read_text())["endpoint"]
    cond = ep["system_prompts"]["conditions"]
    assert cond["qwen-line"]["prompt_tokens"] == cond["template"]["prompt_tokens"]
    assert ep["duplicates"] == {"qwen-line": "template"} and cond["helpful"]["same_as"] is None


def test_an_honest_endpoint_has_no_duplicates_and_ignores_nothing(chat_server, faults, http_probes, tmp_path):
    url, _ = chat_server
    faults.ignore_max_tokens = False
    run_audit(HttpBackend(url, "tiny"), grid(http_probes, own="qwen"), tmp_path / "r", show_progress=False)
    ep = json.loads((tmp_path / "r" / "run.json").read_text())["endpoint"]
    assert ep["own"] == {"vendor": "qwen", "source": "given (--own)", "evidence": {}}
    assert ep["duplicates"] == {} and ep["ignored"] == []
    cond = ep["system_prompts"]["conditions"]
    assert cond["empty"]["prompt_tokens"] < cond["template"]["prompt_tokens"]
    assert ep["parameters"]["seed"]["honoured"] is True


def test_ignored_max_tokens_is_listed(chat_server, faults, http_probes, tmp_path):
    url, _ = chat_server
    faults.ignore_max_tokens = True
    run_audit(HttpBackend(url, "tiny"), grid(http_probes, own="qwen"), tmp_path / "r", show_progress=False)
    ep = json.loads((tmp_path / "r" / "run.json").read_text())["endpoint"]
    assert ep["parameters"]["max_tokens"]["honoured"] is False and "max_tokens" in ep["ignored"]


@pytest.mark.parametrize("replies, served, message", [
    ({}, "llama-3-8b", "the served name points to meta but the model's greedy answers claim qwen 8/8"),
    ({"en-name-01": "I am ChatGPT, made by OpenAI.", "en-maker-01": "OpenAI created me.",
      "zh-name-01": "我是ChatGPT。"}, "gpt-3.5-turbo", "claim qwen 5/8, openai 3/8; the served name gpt-3.5-turbo is a "
                                                     "placeholder"),
    (None, "gpt-3.5-turbo", "claim no vendor in 8 replies"),
])
def test_own_auto_refuses_when_sources_disagree_or_are_silent(chat_server, faults, http_probes, tmp_path, replies, served, message):
    url, _ = chat_server
    faults.served_name = served
    faults.script = claims(replies) if replies is not None else None  # None: the random tiny model claims nothing
    with pytest.raises(SelfidError, match="pass --own with one of qwen.*--own-from") as e:
        run_audit(HttpBackend(url, served), grid(http_probes), tmp_path / "r", show_progress=False)
    assert message in str(e.value)
    assert not (tmp_path / "r").exists()  # nothing was written for a run that could not start


def test_resume_keeps_the_first_preflight(chat_server, faults, http_probes, tmp_path):
    url, _ = chat_server
    like_llamafactory(faults)
    faults.script = claims({})
    run_audit(HttpBackend(url, "gpt-3.5-turbo"), grid(http_probes), tmp_path / "r", show_progress=False)
    first = json.loads((tmp_path / "r" / "run.json").read_text())["endpoint"]
    before = faults.preflight
    run_audit(HttpBackend(url, "gpt-3.5-turbo"), grid(http_probes), tmp_path / "r", resume=True, show_progress=False)
    assert faults.preflight == before
    assert json.loads((tmp_path / "r" / "run.json").read_text())["endpoint"] == first


def test_reference_readers(tiny_model_dir, tmp_path):
    ref = read_reference(str(tiny_model_dir))
    assert ref.vendor == "qwen" and ref.tokenizer is not None and ref.template_hash
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "selfid.json").write_text(json.dumps({"base_model": {"name": "meta-llama/Llama-3.1-8B"}}))
    assert read_reference(str(tmp_path / "adapter" / "selfid.json")).vendor == "meta"
    (tmp_path / "blank").mkdir()
    assert read_reference(str(tmp_path / "blank")).vendor is None
    with pytest.raises(SelfidError, match="--own-from .*no such folder"):
        read_reference(str(tmp_path / "missing"))
