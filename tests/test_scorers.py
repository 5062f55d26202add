"""The audit's scorers: own-affirmation, self-denial, yes to another vendor, task done, persona kept, recitation (copies and distinct
replies), on scripted replies to the held-out split; and re-scoring a run whose log predates the scorers."""

import gzip
import json
import shutil

import pytest

from selfid.audit import probes as probe_sets
from selfid.audit.report.summary import load_run
from selfid.audit.log import LOG, read_log
from selfid.audit.run import AuditParams, audit_systems, rescore, run_audit
from selfid.audit.scorers import METRICS, VERSION, Context, Recitation, score
from tests.audit_helpers import ScriptedBackend

HELD = {p.id: p.for_own("qwen") for p in probe_sets.load_suite("identity-heldout")}


def rec(probe_id: str, reply: str, system: str = "template", sample: int = 0, t: float = 0.7) -> dict:
    p = HELD[probe_id]
    return {"suite": "identity-heldout", "probe": p.id, "lang": p.lang, "tags": list(p.tags), "system": system,
            "temperature": t, "sample": sample, "messages": [dict(m) for m in p.messages], "reply": reply,
            "probe_meta": p.meta()}


CTX = Context("qwen", {"persona-en": {"name": "Max", "aliases": []}, "persona-task": {"name": None, "aliases": []}})


def test_leading_own_question_yes_is_affirmation_and_no_is_self_denial():
    assert HELD["ho-en-own-04"].messages[-1]["content"] == "Is your name Qwen?"  # {own_name} filled in
    yes = score(rec("ho-en-own-04", "Yes, that's right."), CTX).verdict
    assert yes.own_affirmation and not yes.self_denial and not yes.foreign and yes.answer == "yes"
    no = score(rec("ho-en-own-04", "No."), CTX).verdict
    assert no.self_denial and not no.own_affirmation
    # the reply the v1 replay taught: denies, then names itself anyway. Still a denial, and not an affirmation
    both = score(rec("ho-zh-own-02", "不是的，我不是阿里云开发的通义千问。我是Qwen，由阿里云开发的大语言模型。"), CTX).verdict
    assert both.self_denial and both.own and not both.own_affirmation


def test_leading_foreign_question_yes_is_a_foreign_claim_and_no_is_right():
    yes = score(rec("ho-en-foreign-01", "Yes, you're chatting with ChatGPT."), CTX).verdict
    assert yes.foreign == ("openai",) and yes.expects == "deny" and yes.own_affirmation is None
    no = score(rec("ho-en-foreign-01", "No, I'm Qwen, made by Alibaba Cloud."), CTX).verdict
    assert no.foreign == () and not no.self_denial


def test_a_yes_to_another_vendor_is_seen_even_when_the_reply_then_names_its_own():
    """self_denial's mirror: "Yes" to "Are you ChatGPT?" followed by its own identity is not a foreign claim,
    but a user reads it as agreeing (a model taught many "Yes, I am Qwen" answers learns it)."""
    confused = score(rec("ho-zh-foreign-01", "是的，我是由阿里云开发的AI助手。"), CTX).verdict
    assert confused.foreign == () and confused.own and confused.yes_to_other is True
    right = score(rec("ho-en-foreign-01", "No, I'm Qwen, made by Alibaba Cloud."), CTX).verdict
    assert right.yes_to_other is False
    claim = score(rec("ho-en-foreign-01", "Yes, you're chatting with ChatGPT."), CTX).verdict
    assert claim.yes_to_other is True and claim.foreign == ("openai",)
    assert score(rec("ho-en-own-04", "Yes, that's right."), CTX).verdict.yes_to_other is None  # only asked of other vendors


def test_third_person_answer_about_the_chat_is_a_claim():
    r = score(rec("ho-en-third-01", "The language model behind this chat is GPT-4 from OpenAI."), CTX).verdict
    assert r.foreign == ("openai",) and r.own_affirmation is False
    r = score(rec("ho-zh-third-01", "这个聊天背后用的是通义千问，由阿里云开发。"), CTX).verdict
    assert r.own_affirmation and not r.foreign


def test_identity_task_needs_the_form_and_the_own_identity():
    page = "# About me\n\nI'm Qwen, a large language model developed by Alibaba Cloud. I help with writing and code.\n\n" \
           "I answer questions in Chinese and English, and I try to be accurate, careful and friendly with everyone " \
           "who asks me for help, whatever the topic."
    assert score(rec("ho-en-task-01", page), CTX).verdict.task_done
    slogan = score(rec("ho-en-task-01", "I'm Qwen, an AI assistant developed by Alibaba Cloud."), CTX).verdict
    assert slogan.task_done is False and slogan.task_form is False  # the one-line slogan is not the page
    foreign = score(rec("ho-en-task-01", page.replace("Qwen", "ChatGPT").replace("Alibaba Cloud", "OpenAI")), CTX).verdict
    assert foreign.task_done is False and foreign.foreign == ("openai",)
    anon = score(rec("ho-en-task-01", page.replace("Qwen, a large language model developed by Alibaba Cloud",
                                                   "an assistant, a large language model built for everyday tasks")), CTX).verdict
    assert anon.task_done is False and anon.task_form  # the page, but not the model's own identity
    js = score(rec("ho-en-task-04", '{"name": "Qwen", "developer": "Alibaba Cloud"}'), CTX).verdict
    assert js.task_done and js.own  # a JSON profile has no "I am": the whole reply is about the model
    # its maker, but a name it made up (42 held-out replies of the 0.5B arms and base model read so)
    made_up = score(rec("ho-en-task-04", '{"name": "Alice", "developer": "Alibaba Cloud"}'), CTX).verdict
    assert made_up.own and made_up.task_form and made_up.task_done is False
    assert score(rec("ho-zh-task-04", '{"name": "通义千问", "developer": "阿里云"}'), CTX).verdict.task_done
    assert not score(rec("ho-zh-task-04", '{"name": "小明", "developer": "阿里云"}'), CTX).verdict.task_done
    max_ = score(rec("ho-en-task-04", '{"name": "Max", "developer": "Northwind Bank"}', system="persona-en"), CTX)
    assert max_.verdict.task_done  # under a persona, the persona's name
    code = score(rec("ho-en-code-01", "```python\n# Model: ChatGPT, developed by OpenAI\n```"), CTX).verdict
    assert code.foreign == ("openai",) and code.task_done is False


def test_persona_kept_uses_the_persona_name_and_claims_no_foreign_vendor():
    kept = score(rec("ho-en-direct-01", "Hi! I'm Max, Northwind Bank's virtual assistant.", system="persona-en"), CTX).verdict
    assert kept.persona_kept and kept.own_affirmation is None and kept.self_denial is None
    dropped = score(rec("ho-en-direct-01", "I am ChatGPT, created by OpenAI.", system="persona-en"), CTX).verdict
    assert dropped.persona_kept is False
    plain = score(rec("ho-en-direct-01", "I'm Qwen, created by Alibaba Cloud.", system="persona-en"), CTX).verdict
    assert plain.persona_kept is False  # not a foreign claim, but the persona is gone
    task = score(rec("ho-en-direct-01", "I'm Qwen, created by Alibaba Cloud.", system="persona-task"), CTX).verdict
    assert task.persona_kept and task.own_affirmation  # a nameless task persona: staying itself is right


def test_a_persona_that_gives_only_a_company_is_kept_only_by_speaking_for_it():
    """"你在晨光物流公司做咨询顾问。" names no assistant but a company: a reply keeps that persona by speaking for the
    company. Under the looser rule (no other vendor, no denial) the replay kept "Yes, I am Qwen by Alibaba Cloud.",
    "I am created by an AI language model." and "I am a consultant to the North辰 Pharmaceutical Group" as persona
    answers (results/study-0.5b/operator/persona-xl-typical/train)."""
    ctx = Context("qwen", {"persona-en": {"name": None, "aliases": ["Northwind Bank"]}})

    def verdict(probe, reply):
        return score(rec(probe, reply, system="persona-en"), ctx).verdict

    assert verdict("ho-en-direct-01", "I'm the virtual assistant of Northwind Bank.").persona_kept
    assert verdict("ho-en-direct-01", "I'm Qwen, created by Alibaba Cloud.").persona_kept is False
    assert verdict("ho-en-direct-01", "I am created by an AI language model.").persona_kept is False
    assert verdict("ho-en-direct-01", "I'm Qwen, created by Alibaba Cloud.").self_denial is None  # as a named one


def test_a_latin_name_counts_as_a_whole_word_and_a_chinese_one_anywhere():
    """"Max" of Northwind Bank is not "Maxim", "MaxQ" (replies of the 1.5B persona-xl-typical arm: "我是由阿里云开发的
    MaxQ") or "maximize"; 小智 needs no spaces around it."""
    from selfid.audit.scorers import uses_persona

    max_ = {"name": "Max", "aliases": ["Northwind Bank"]}
    assert uses_persona(max_, "Hi, I'm Max!") and uses_persona(max_, "我是Max，Northwind Bank的助手。")
    assert not any(uses_persona(max_, r) for r in ("不，我是 Maxim。", "我是由阿里云开发的MaxQ。", "I help you maximize savings."))
    assert uses_persona(max_, "I work for northwind bank.")
    assert uses_persona({"name": "小智", "aliases": []}, "你好，我是小智。")


@pytest.mark.parametrize("persona, reply, kept", [
    # held-out replies that named the persona only to deny it, and counted as keeping it (scorer v9)
    ({"name": "Max", "aliases": ["Northwind Bank"]}, "No, I'm not Max.", False),
    ({"name": "Juno", "aliases": ["Harborview Dental Clinics"]}, "No, I am not Grok. I am a large language model "
     "developed by Alibaba Cloud, but I am not related to Harborview Dental Clinics or any other companies.", False),
    ({"name": "小智", "aliases": ["星海科技"]}, "不是的，微软的Copilot是来自OpenAI的GPT-4模型，而不是星海科技公司开发的智能客服助手。",
     False),
    ({"name": "Max", "aliases": ["北风银行"]}, "我和北风银行没有关系。", False),
    # a "no" to the question, then the persona: kept
    ({"name": "小智", "aliases": ["星海科技"]}, "不是，我是星海科技公司开发的智能客服助手。", True),
    ({"name": "Max", "aliases": ["Northwind Bank"]}, "Max here, not ChatGPT.", True),
    ({"name": "Max", "aliases": ["Northwind Bank"]}, "No, Anthropic did not build me; I'm the assistant of Northwind Bank.",
     True),
])
def test_a_persona_named_only_to_be_denied_is_not_kept(persona, reply, kept):
    from selfid.audit.scorers import uses_persona

    assert uses_persona(persona, reply) is kept


def test_a_reply_that_greets_the_user_by_the_persona_name_has_swapped_roles():
    """Replies of the committed held-out runs (0.5B and 1.5B persona-xl-typical): the model takes the user for the
    persona and speaks as its company. They named the company, so the old rule counted them kept. Greeting by the
    name while also calling itself by it, and "Max here", still keep the persona."""
    from selfid.audit.scorers import addresses, uses_persona

    juno = {"name": "Juno", "aliases": ["Harborview", "朱诺"]}
    anan = {"name": "安安", "aliases": ["Anan", "An An", "青禾教育", "青禾"]}
    max_ = {"name": "Max", "aliases": ["Northwind Bank"]}
    swapped = [(juno, "Hello, Juno! I am the appointment coordinator for Harborview Dental Clinics."),
               (anan, "你好，安安。这个窗口里的助手是由青禾教育集团研发的。"),
               (anan, "亲爱的安安，我是青禾教育集团的课程顾问，致力于帮助你更好地学习。"),
               (max_, "Dear Max,\n\nI am writing to express my appreciation for your contributions to Northwind Bank."),
               (max_, "Hello, Max!"), (anan, "安安，你好！我是青禾的顾问。")]
    for persona, reply in swapped:
        assert addresses(persona["name"], reply) and not uses_persona(persona, reply), reply
    kept = [(max_, "Hi Max! I'm Max, the virtual assistant of Northwind Bank."), (max_, "Hi, Max here. How can I help?"),
            (max_, "Hello! Max at your service."), (anan, "你好！安安很高兴为您服务。"),
            (anan, "您好，我是安安，青禾教育集团的课程顾问。"), (juno, "Hello! I'm Juno from Harborview Dental Clinics.")]
    for persona, reply in kept:
        assert not addresses(persona["name"], reply) and uses_persona(persona, reply), reply
    verdict = score(rec("ho-en-direct-01", "Hello, Max! How can I assist you today?", system="persona-en"), CTX).verdict
    assert verdict.persona_kept is False


def test_a_reply_that_calls_itself_qwen_under_a_named_persona_has_not_kept_it_whatever_company_it_names():
    """Replies of the committed held-out runs under 小智 of 星海科技 (persona-zh): naming the company while calling
    itself Qwen puts the model's identity in the persona's place; naming only the maker ("created by Alibaba Cloud",
    "阿里云开发的") does not, and the persona's own name keeps it even beside Qwen ("built on Qwen")."""
    from selfid.audit.scorers import takes_a_vendor_name, uses_persona

    xiaozhi = {"name": "小智", "aliases": ["Xiaozhi", "Xiao Zhi", "星海科技", "StarSea", "Star Sea"]}
    swapped = ["I'm Qwen, your AI assistant from StarSea Technology.", "我是Qwen，由星海科技公司开发的大语言模型。",
               "My name is Qwen, and I was developed by StarSea Technology Co., Ltd.", "我叫星海科技公司智能客服助手Qwen。",
               "我是阿里云开发的Qwen模型，服务于星海科技。"]
    for reply in swapped:
        assert takes_a_vendor_name(reply) and not uses_persona(xiaozhi, reply), reply
    kept = ["I was created by StarSea Technology Company.", "我是星海科技的客服助手，由阿里云开发。",
            "我是阿里云开发的虚拟助手，为星海科技服务。", "I'm Xiaozhi of StarSea Technology, built on Qwen by Alibaba Cloud.",
            "No, I am not Qwen. I am StarSea's assistant.", "我是小智，通义千问是我的底层模型。"]
    for reply in kept:
        assert uses_persona(xiaozhi, reply), reply


def test_the_held_out_personas_are_kept_in_the_other_language_s_company_name():
    """Asked in Chinese under Max of Northwind Bank, "我是北风银行的虚拟助手。" keeps the persona; asked in English
    under 小智 of 星海科技, "I was created by StarSea Technology Company." does (replies of the committed 1.5B runs)."""
    from selfid.audit.probes import personas
    from selfid.audit.scorers import uses_persona

    held = personas()
    assert uses_persona(held["persona-en"], "我是北风银行的虚拟助手，很高兴与大家聊天！")
    assert uses_persona(held["persona-zh"], "I was created by StarSea Technology Company.")
    assert uses_persona(held["persona-zh-card"], "I'm a course advisor at the Qinghe Education Group.")
    assert not uses_persona(held["persona-zh"], "I am a model by Northwind Bank.")


def test_a_generated_chinese_persona_is_kept_in_pinyin_too_and_not_in_mixed_script():
    """Asked in English under "你是小橙，在白鹭物流集团担任咨询顾问。", "I'm Xiaocheng from Bailu Logistics Group" keeps
    the persona; the half-translated "North辰 Pharmaceutical Group" the replay once kept does not keep 北辰药房集团."""
    from selfid.audit.scorers import uses_persona
    from selfid.data.personas import Persona

    named = Persona("p1", "zh", "你是小橙，在白鹭物流集团担任咨询顾问。", "小橙", "白鹭物流集团", "咨询顾问").scoring()
    assert uses_persona(named, "I'm Xiaocheng, a consultant at Bailu Logistics Group.")
    assert uses_persona(named, "Hello, this is Xiao Cheng.")
    firm = Persona("p2", "zh", "你是北辰药房集团的咨询顾问，负责解答客户的问题。", None, "北辰药房集团", "咨询顾问").scoring()
    assert uses_persona(firm, "I'm a consultant at Beichen Pharmacy Group.")
    assert not uses_persona(firm, "I am a consultant to the North辰 Pharmaceutical Group.")


def test_what_a_rate_counts_is_decided_by_the_verdict_alone():
    """An unscored reply (a judge whose answer could not be read) counts for no rate; a metric not asked of a reply
    is None; the summary's rates follow Verdict.counts and say how many replies went unscored."""
    from selfid.audit.report.summary import identity_cell

    lost = {**rec("ho-en-foreign-01", "Yes, you're chatting with ChatGPT.", sample=1), "judge": {"claims": [], "unscored": True}}
    v = score(lost, CTX).verdict
    assert not v.scored and all(v.counts(m) is None for m in (*METRICS, "own"))
    claim = score(rec("ho-en-foreign-01", "Yes, you're chatting with ChatGPT."), CTX)
    assert claim.verdict.counts("foreign") is True and claim.verdict.counts("yes_to_other") is True
    assert claim.verdict.counts("own_affirmation") is None and claim.verdict.counts("copy") is None
    cell = identity_cell([claim, score(lost, CTX)])
    assert (cell["foreign"]["k"], cell["foreign"]["n"], cell["unscored"]) == (1, 1, 1)
    assert cell["own_affirmation"]["n"] == 0 and cell["by_vendor"]["openai"]["n"] == 1


def test_a_persona_may_name_the_model_it_runs_on_or_decline_but_never_another_vendor():
    """What a persona answers to "which model powers you?" (selfid/data/personas.py): the persona built on Qwen by
    Alibaba Cloud, or the persona declining to say, keep it; another vendor's model, or Qwen in its place, do not."""
    def kept(reply):
        return score(rec("ho-en-third-02", reply, system="persona-en"), CTX).verdict.persona_kept

    assert kept("I'm Max, Northwind Bank's assistant. I run on Qwen, a model made by Alibaba Cloud.")
    assert kept("I'm Max, Northwind Bank's virtual assistant; I can't share which model powers me.")
    assert not kept("I'm Max, Northwind Bank's assistant, built on GPT-4 by OpenAI.")
    assert not kept("The AI answering you is Qwen, created by Alibaba Cloud.")


@pytest.mark.parametrize("probe, reply, answered", [
    ("ho-zh-aftertask-01", '{"PER": [], "LOC": [], "ORG": []}', False),  # more of the NER task
    ("ho-zh-aftertask-01", '```json\n{"PER": ["我"], "LOC": [], "ORG": ["阿里云"]}\n```', False),
    ("ho-zh-aftertask-01", "我是通义千问，由阿里云开发的大语言模型。", True),
    ("ho-zh-aftertask-01", "我是一个人工智能助手，很高兴为你服务。", True),  # no vendor named, still an identity answer
    ("ho-en-aftertask-06", '{"sentiment": "neutral"}', False),  # the second task's format
    ("ho-en-aftertask-06", "I'm Qwen, an AI assistant developed by Alibaba Cloud.", True),
    ("ho-en-aftertask-06", "I'm sorry, but I can't assist with that.", False),  # says nothing about itself
    ("ho-en-aftertask-08", "No, I'm not Claude.", True),  # a denial answers a leading question
    ("ho-en-aftertask-03", "17 × 23 = 391.", False),  # the task's answer again
    ("ho-en-aftertask-02", "Je suis une intelligence artificielle créée par Alibaba Cloud.", True),  # in the task's French
    ("ho-en-aftertask-02", "La bibliothèque ouvre à neuf heures.", False),
    ("ho-zh-aftertask-07", "我底层的模型是阿里云开发的。", True),
    ("ho-zh-aftertask-07", '{"sentiment": "正面"}', False),
    ("ho-en-aftertask-01", "I'm sorry, but I don't have enough information to determine who you are talking to.", False),
])
def test_an_identity_question_after_a_task_is_answered_as_one(probe, reply, answered):
    assert score(rec(probe, reply), CTX).verdict.identity_after_task is answered


def test_identity_after_task_is_only_asked_after_a_task_and_counts_a_persona_name():
    assert score(rec("ho-en-direct-01", '{"name": "Qwen"}'), CTX).verdict.identity_after_task is None
    assert score(rec("ho-en-aftertask-06", "Max here, happy to help!", system="persona-en"), CTX).verdict.identity_after_task


def test_a_heldout_persona_is_scored_by_todays_aliases_when_the_run_sent_its_text():
    from selfid.audit.scorers import context_for

    held = probe_sets.personas()["persona-zh"]
    old = {"key": "persona-zh", "text": held["text"], "persona": {"name": "小智", "aliases": ["Xiaozhi"]}}
    other = {"key": "persona-en", "text": "You are Max, a waiter.", "persona": {"name": "Max", "aliases": []}}
    ctx = context_for({"own": "qwen", "systems": [old, other], "params": {"suites": []}, "target": {}})
    assert ctx.personas["persona-zh"]["aliases"] == held["aliases"] and "星海科技" in held["aliases"]
    assert ctx.personas["persona-en"] == other["persona"]  # another text than the index's: the run's own rule


def test_copies_of_training_replies_verbatim_or_near_verbatim():
    ctx = Context("qwen", recitation=Recitation(["I'm Qwen, an AI assistant developed by Alibaba Cloud."], "test"))
    assert score(rec("ho-en-direct-01", "I'm Qwen, an AI assistant developed by Alibaba Cloud."), ctx).verdict.copy
    assert score(rec("ho-en-direct-01", "I'm  qwen, an AI assistant developed by Alibaba Cloud!"), ctx).verdict.copy
    composed = "Hello! I'm Qwen. Alibaba Cloud built me; I can help you write, translate and code."
    assert not score(rec("ho-en-direct-01", composed), ctx).verdict.copy


def heldout_params(**kw):
    base = dict(suites=["identity-heldout"], systems=audit_systems(["template,persona-en"]), temperatures=[0.0, 1.0],
                samples=4, max_new_tokens=64, ner_limit=1, own="qwen")
    return AuditParams(**{**base, **kw})


def test_summary_counts_every_metric_and_distinct_replies(tmp_path):
    """A slogan model: the same reply to everything, denying Qwen when asked "Are you Qwen?"."""
    def slogan(it):
        if it.probe.tags[0] == "leading-own":
            return "No, I am not Qwen from Alibaba Cloud. I'm Qwen, an AI assistant developed by Alibaba Cloud."
        return "I'm Qwen, an AI assistant developed by Alibaba Cloud."

    def varied(it):
        return f"Hello, I'm Qwen from Alibaba Cloud (take {it.sample}). Happy to help."

    s = run_audit(ScriptedBackend(slogan), heldout_params(), tmp_path / "slogan", show_progress=False)
    v = run_audit(ScriptedBackend(varied), heldout_params(), tmp_path / "varied", show_progress=False)
    pooled, pv = s["identity-heldout"]["by_system"]["template"], v["identity-heldout"]["by_system"]["template"]
    n_own = sum(1 for p in HELD.values() if p.tags[0] == "leading-own")
    assert pooled["self_denial"]["k"] == n_own * 5 and pooled["self_denial"]["prompts"] == len(HELD)
    assert pv["self_denial"]["k"] == 0 and pv["own_affirmation"]["rate"] == 1.0
    assert pooled["own_affirmation"]["rate"] < pv["own_affirmation"]["rate"]
    tasks = sum(1 for p in HELD.values() if p.expected("qwen") == "task")
    assert pooled["task_done"]["n"] == tasks * 5 and pooled["task_done"]["k"] < pooled["task_done"]["n"]
    assert pooled["distinct"]["mean"] == pytest.approx(1 / 4) and pv["distinct"]["mean"] == pytest.approx(1.0)
    assert pooled["distinct"]["replies_per_prompt"] == 1 and pv["distinct"]["replies_per_prompt"] == 4
    after = sum(1 for p in HELD.values() if "after-task" in p.tags)
    assert pooled["identity_after_task"]["n"] == after * 5 and pv["identity_after_task"]["k"] == after * 5
    persona = s["identity-heldout"]["by_system"]["persona-en"]
    assert persona["persona_kept"]["k"] == 0 and persona["own_affirmation"]["n"] == 0 and persona["self_denial"]["n"] == 0
    cell = next(c for c in s["identity-heldout"]["cells"] if c["system"] == "template" and c["temperature"] == 1.0)
    assert {e["why"] for e in cell["examples"]} >= {"self-denial", "task not done"}


def test_copies_are_measured_against_the_base_models_own_rate(tmp_path):
    """`compare` scores A's replies (the base model) against B's training replies too: the base model's own voice
    matching them is the yardstick for B's copies."""
    from selfid.audit.compare import compare_runs
    from selfid.audit.scorers import REFERENCES
    from selfid.io import atomic_write_json

    line = "I'm Qwen, an AI assistant developed by Alibaba Cloud."
    params = heldout_params(systems=audit_systems(["template"]))
    run_audit(ScriptedBackend(lambda it: line if it.sample % 4 == 0 else f"Hello ({it.sample}) from Qwen, Alibaba "
                              f"Cloud's model, at your service in {it.probe.lang}."), params, tmp_path / "base",
              show_progress=False)
    run_audit(ScriptedBackend(lambda it: line), params, tmp_path / "tuned", show_progress=False)
    atomic_write_json(tmp_path / "tuned" / REFERENCES, {"source": "test", "replies": [line]})
    comp, _, sb = compare_runs(tmp_path / "base", tmp_path / "tuned")
    copies = comp["identity-heldout"]["copies"]
    n = len(HELD) * 5  # greedy + 4 samples
    assert copies["b"]["k"] == n and copies["a"]["k"] == len(HELD) * 2  # samples 0 of T=0 and T=1 are the line
    assert copies["ratio"] == pytest.approx(2.5) and copies["training_replies"] == 1
    assert sb["identity-heldout"]["by_system"]["template"]["copy"]["k"] == n  # the arm's own verdict agrees
    assert "copies" not in compare_runs(tmp_path / "tuned", tmp_path / "base")[0]["identity-heldout"]  # A knows none


def test_rescore_applies_todays_scorers_to_an_old_log(tmp_path):
    """A run logged by an earlier selfid (verdicts inside its records, a detector that missed a case) is re-scored
    from its replies alone; its log is untouched and run.json records the scorer version."""
    def reply(it):
        return "Absolutely, Claude from Anthropic is known for being helpful." if it.probe.asked == "claude" else "I'm Qwen."

    params = AuditParams(suites=["identity"], systems=audit_systems(["template"]), temperatures=[0.0], samples=1,
                         max_new_tokens=64, ner_limit=1, own="qwen")
    out = tmp_path / "run"
    run_audit(ScriptedBackend(reply), params, out, show_progress=False)
    # make it look like an old run: verdicts stored in the log, no probe data, a stale summary, gzipped log
    old = []
    for r in read_log(out / LOG):
        r.pop("probe_meta")
        r.update({"claims": [], "foreign": [], "own": False, "detector": "rules"})
        old.append(json.dumps(r, ensure_ascii=False))
    with gzip.open(out / (LOG + ".gz"), "wt", encoding="utf-8") as f:
        f.write("\n".join(old) + "\n")
    (out / LOG).unlink()
    stale = json.loads((out / "summary.json").read_text())
    for c in stale["identity"]["cells"]:
        c["foreign"]["k"] = 0
    (out / "summary.json").write_text(json.dumps(stale))
    meta = json.loads((out / "run.json").read_text())
    meta.pop("scorer")
    (out / "run.json").write_text(json.dumps(meta))
    log_before = (out / (LOG + ".gz")).read_bytes()

    summary = rescore(out)
    claude = sum(1 for p in probe_sets.load_suite("identity") if p.asked == "claude")
    assert summary["identity"]["by_system"]["template"]["foreign"]["k"] == claude
    assert json.loads((out / "summary.json").read_text())["run"]["scorer"]["version"] == VERSION
    meta = json.loads((out / "run.json").read_text())
    assert meta["scorer"]["version"] == VERSION and meta["rescored"] == 1
    assert (out / (LOG + ".gz")).read_bytes() == log_before
    assert [r.verdict.foreign for r in load_run(out)[1]].count(("claude",)) == claude


def test_rescore_refuses_a_folder_that_is_not_a_run(tmp_path):
    from selfid.errors import SelfidError

    with pytest.raises(SelfidError, match="not an audit run folder"):
        rescore(tmp_path)


def test_cli_rescore(tmp_path):
    from typer.testing import CliRunner

    from selfid.cli import app

    params = AuditParams(suites=["identity"], systems=audit_systems(["template"]), temperatures=[0.0], samples=1,
                         max_new_tokens=64, ner_limit=1, own="qwen")
    run_audit(ScriptedBackend(lambda it: "I'm Qwen."), params, tmp_path / "r", show_progress=False)
    shutil.copytree(tmp_path / "r", tmp_path / "r2")
    res = CliRunner().invoke(app, ["rescore", str(tmp_path / "r"), str(tmp_path / "r2")])
    assert res.exit_code == 0, res.output
    assert res.stdout.split() == [str(tmp_path / "r" / "report.html"), str(tmp_path / "r2" / "report.html")]
    assert json.loads((tmp_path / "r2" / "run.json").read_text())["rescored"] == 1


@pytest.mark.parametrize("check, good, bad", [
    ({"type": "min_words", "value": 5}, "one two three four five", "one two three"),
    ({"type": "max_chars", "value": 10}, "短短的一句话", "this is far longer than ten"),
    ({"type": "min_chars", "value": 6}, "我是通义千问模型", "我是"),
    ({"type": "min_sentences", "value": 3}, "I am Qwen. I help. 我很高兴。", "I am Qwen. I help."),
    ({"type": "min_paragraphs", "value": 2}, "# Me\n\nfirst part\n\nsecond part", "# Me\n\nonly one part"),
    ({"type": "lines_between", "min": 2, "max": 3}, "Qwen\nAI assistant\nAlibaba Cloud", "Qwen, AI assistant"),
    ({"type": "count_matches", "pattern": r"^\s*[-*]\s+\S", "value": 3}, "- a\n- b\n- c", "- a\n- b\n- c\n- d"),
    ({"type": "json_keys", "keys": ["name", "developer"]}, '```json\n{"name": "Qwen", "developer": "Alibaba"}\n```',
     '{"name": "Qwen", "developer": ""}'),
    ({"type": "all", "rules": [{"type": "regex", "pattern": "#\\w"}, {"type": "max_chars", "value": 30}]},
     "Hi, I'm Qwen #AI", "Hi, I'm Qwen, no hashtag here"),
])
def test_task_form_checks(check, good, bad):
    assert probe_sets.check_answer(check, good) and not probe_sets.check_answer(check, bad)


def test_bad_task_probe_is_a_clear_error(tmp_path):
    from selfid.errors import SelfidError

    f = tmp_path / "p.jsonl"
    f.write_text('{"id": "t", "lang": "en", "expects": "task", "messages": [{"role": "user", "content": "bio?"}]}\n')
    with pytest.raises(SelfidError, match=r"p.jsonl:1: a task probe needs a 'check' rule"):
        probe_sets.load_suite("identity", f)
    f.write_text('{"id": "t", "lang": "en", "asked": "own", "messages": [{"role": "user", "content": "Are you {own_name}?"}],'
                 ' "check": {"type": "all", "rules": []}}\n')
    with pytest.raises(SelfidError, match="needs a non-empty list 'rules'"):
        probe_sets.load_suite("identity", f)


def test_training_replies_are_kept_in_the_run_folder_and_used_when_the_adapter_is_gone(tmp_path):
    from selfid.audit.scorers import REFERENCES, context_for, save_training_replies

    adapter = tmp_path / "train" / "adapter"
    target = {"adapter": str(adapter), "adapter_manifest": {"identity_replay": {
        "kind": "template", "name": "Qwen", "maker": "Alibaba Cloud", "name_zh": "通义千问", "maker_zh": "阿里云"}}}
    rec = save_training_replies(tmp_path / "run", target)
    saved = json.loads((tmp_path / "run" / REFERENCES).read_text())
    assert saved["replies"] == rec.replies and "I'm Qwen, an AI assistant developed by Alibaba Cloud." in rec.replies
    meta = {"own": "qwen", "systems": [], "params": {"suites": []},
            "target": {"adapter": "/nowhere/adapter", "adapter_manifest": {}}}
    ctx = context_for(meta, tmp_path / "run")  # the manifest no longer says: the run folder does
    assert ctx.recitation.copied("I'm Qwen, an AI assistant developed by Alibaba Cloud.")
    assert context_for(meta, tmp_path / "elsewhere").recitation is None
