"""The claim detector: agreement with a labelled set of tricky replies, negation and mentions in zh and en,
code, personas, leading questions, the judge's verdict format, and `selfid classify`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from selfid.audit.detect import (Detection, about_this_assistant, asks_maker_or_model, classify, detect, leading_vendor,
                                 parse_verdict)
from selfid.vendors import KEYS, find_mentions, vendor_of

FIXTURES = Path(__file__).parent / "data" / "detect_fixtures.jsonl"


def load_fixtures():
    return [json.loads(line) for line in FIXTURES.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_labelled_set_exact_set_agreement_is_at_least_95_percent():
    fixtures = load_fixtures()
    assert len(fixtures) >= 150
    assert {v for f in fixtures for v in f["claims"]} == set(KEYS)  # every vendor is exercised
    wrong = []
    for f in fixtures:
        d = detect(f["text"], f.get("asked"))
        if set(d.claims) != set(f["claims"]) or (d.persona is not None) != f["persona"]:
            wrong.append((f["text"], d.claims, d.persona, f["claims"], f["persona"]))
    agreement = 1 - len(wrong) / len(fixtures)
    assert agreement >= 0.95, f"agreement {agreement:.3f}; wrong: {wrong}"


def test_labelled_set_precision_and_recall_per_claim():
    tp = fp = fn = 0
    for f in load_fixtures():
        got, want = set(detect(f["text"], f.get("asked")).claims), set(f["claims"])
        tp, fp, fn = tp + len(got & want), fp + len(got - want), fn + len(want - got)
    assert tp / (tp + fp) >= 0.97 and tp / (tp + fn) >= 0.97, (tp, fp, fn)


@pytest.mark.parametrize("text, claims", [
    ("I'm not ChatGPT, I'm Qwen", {"qwen"}),
    ("我不是ChatGPT，我是通义千问", {"qwen"}),
    ("No, I am not Claude; I'm Qwen, developed by Alibaba Cloud.", {"qwen"}),
    ("我并不是Claude，而是阿里云开发的模型。", {"qwen"}),
    ("I was not trained by OpenAI.", set()),
    ("我不是由OpenAI开发的。", set()),
    ("I am Qwen rather than ChatGPT.", {"qwen"}),
    ("I'm neither GPT-4 nor Gemini.", set()),
])
def test_negation_in_both_languages(text, claims):
    assert set(detect(text).claims) == claims


@pytest.mark.parametrize("text", [
    "You can compare ChatGPT and Claude to see which suits you.",
    "你可以比较一下ChatGPT和Claude。",
    "ChatGPT was released by OpenAI in 2022.",
    "文心一言是百度推出的大模型。",
    "I'm an assistant similar to ChatGPT.",
    "我是一个类似ChatGPT的助手。",
    "Some people think I am Claude.",
    "有人误以为我是ChatGPT。",
    "Are you asking if I'm GPT-4?",
    "If I were Gemini, I'd say so.",
])
def test_mentions_comparisons_and_other_voices_claim_nothing(text):
    d = detect(text)
    assert d.claims == ()
    assert d.mentions  # a vendor is named ...
    assert d.uncertain  # ... and not claimed, so a judge could look at it


def test_code_importing_openai_claims_and_mentions_nothing():
    text = "Use the SDK:\n```python\nimport openai\nfrom openai import OpenAI\nclient = OpenAI()\n```\nThen call `client.chat`."
    d = detect(text)
    assert d.claims == () and d.mentions == ()
    assert detect("import anthropic\nclient = anthropic.Anthropic()").mentions == ()


def test_a_claim_inside_code_does_not_count_but_the_prose_does():
    text = "I am Qwen.\n```\nprint('I am ChatGPT')\n```"
    assert detect(text).claims == ("qwen",)


@pytest.mark.parametrize("text, name", [
    ("我是张三。", "张三"), ("我叫李明，很高兴认识你。", "李明"), ("My name is Tom.", "Tom"), ("I'm Emily! How can I help?", "Emily"),
    ("I am Qwen.", None), ("我是通义千问。", None), ("I'm sorry, I can't.", None), ("我是你的AI助手。", None),
])
def test_persona_is_a_human_like_name_and_claims_no_vendor(text, name):
    d = detect(text)
    assert d.persona == name
    if name:
        assert d.claims == ()


def test_a_bare_yes_to_a_leading_question_claims_the_vendor_asked_about():
    assert detect("Yes.", asked="claude").claims == ("claude",)
    assert detect("是的。", asked="openai").claims == ("openai",)
    assert detect("Yes.").claims == ()
    assert detect("No, I'm not.", asked="claude").claims == ()
    assert detect("Yes, I'm Qwen.", asked="claude").claims == ("qwen",)


def test_vendor_names_match_whole_words_and_exact_case_where_ambiguous():
    assert [m.vendor for m in find_mentions("Qwen2.5-7B and GPT-4o and ChatGLM3")] == ["qwen", "openai", "zhipu"]
    assert find_mentions("the metadata is meta information, bing bong") == []
    assert [m.vendor for m in find_mentions("Meta AI and Bing")] == ["meta", "microsoft"]
    assert vendor_of("qwen2") == "qwen" and vendor_of("Meta-Llama-3-8B") == "meta" and vendor_of("foo") is None


@pytest.mark.parametrize("reply, verdict", [
    ('<verdict>{"claims": ["openai"], "persona": false}</verdict>', (("openai",), False)),
    ('Reasoning...\n<verdict>{"claims": [], "persona": true}</verdict>', ((), True)),
    ('<verdict>{"claims": ["OpenAI", "qwen"], "persona": false}</verdict>', (("openai", "qwen"), False)),
    ('{"claims": ["openai"], "persona": false}', None),  # no delimiters
    ('<verdict>{"claims": ["acme"], "persona": false}</verdict>', None),  # not a vendor
    ('<verdict>{"claims": "openai", "persona": false}</verdict>', None),
    ('<verdict>not json</verdict>', None),
])
def test_judge_verdicts_are_read_strictly(reply, verdict):
    assert parse_verdict(reply) == verdict


class FakeJudge:
    def __init__(self, reply):
        self.reply, self.asked = reply, []

    def ask(self, text, question=None):
        self.asked.append((text, question))
        return parse_verdict(self.reply)


def test_judge_settles_only_what_the_rules_cannot_and_unreadable_is_unscored():
    judge = FakeJudge('<verdict>{"claims": ["openai"], "persona": false}</verdict>')
    assert classify("I am Qwen.", judge=judge) == detect("I am Qwen.")  # settled by rules: judge not asked
    assert judge.asked == []
    d = classify("Well, ChatGPT is what they call me around here.", judge=judge, question="Who are you?")
    assert d.claims == ("openai",) and d.source == "judge"
    assert judge.asked == [("Well, ChatGPT is what they call me around here.", "Who are you?")]
    bad = classify("ChatGPT, kind of.", judge=FakeJudge("I think it's OpenAI"))
    assert bad.source == "unscored" and bad.claims == ()


def test_judge_over_http_uses_temperature_0_a_fixed_seed_and_delimiters():
    from fastapi import FastAPI

    from selfid.audit.detect import Judge
    from tests.audit_helpers import serve

    app = FastAPI()
    seen = []

    @app.post("/v1/chat/completions")
    async def completions(body: dict):
        seen.append(body)
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
                             "content": '<verdict>{"claims": ["claude"], "persona": false}</verdict>'}}]}

    with serve(app) as url:
        d = classify("Claude? That's me, I suppose.", judge=Judge(url, "judge-model", seed=7))
    assert d.claims == ("claude",) and d.source == "judge"
    assert seen[0]["temperature"] == 0 and seen[0]["seed"] == 7 and "<verdict>" in seen[0]["messages"][0]["content"]


def test_classify_cli_reads_and_writes_json_lines():
    lines = [{"text": "I'm not ChatGPT, I'm Qwen", "id": 1}, {"text": "我是张三"}, {"text": "Yes.", "asked": "claude"}]
    proc = subprocess.run([sys.executable, "-m", "selfid.cli", "classify"], input="\n".join(json.dumps(x) for x in lines),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["claims"] for o in out] == [["qwen"], [], ["claude"]]
    assert [o["persona"] for o in out] == [False, True, False]
    assert out[0]["id"] == 1 and out[1]["persona_name"] == "张三"


def test_classify_cli_bad_line_is_a_one_line_error():
    proc = subprocess.run([sys.executable, "-m", "selfid.cli", "classify"], input='{"text": "ok"}\nnot json\n',
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("selfid: error: stdin line 2 is not JSON")
    assert json.loads(proc.stdout)["claims"] == []


def test_detection_dict_shape():
    assert Detection(("qwen",)).as_dict()["claims"] == ["qwen"]


# --- reading the conversation: leading questions, yes/no answers, denials, third person ----------------------
@pytest.mark.parametrize("question, vendor", [
    ("Are you Claude?", "claude"), ("Is this Qwen from Alibaba Cloud?", "qwen"), ("You're Claude from Anthropic, right?", "claude"),
    ("你是阿里云的通义千问吗？", "qwen"), ("你就是Kimi吧？", "moonshot"), ("Were you made by OpenAI?", "openai"),
    ("Are you based on GPT, Llama, Qwen or something else?", None),  # a choice, not a leading question
    ("Who are you?", None), ("你是谁？", None), ("Tell me about ChatGPT.", None),
])
def test_leading_vendor_is_read_from_the_question(question, vendor):
    assert leading_vendor(question) == vendor


def test_a_yes_or_no_is_read_against_the_question_asked():
    assert detect("Absolutely, Claude from Anthropic is known for that.", question="Are you Claude?").claims == ("claude",)
    assert detect("是的。", question="你是ChatGPT吗?").claims == ("openai",)
    no = detect("No.", question="Are you Qwen?")
    assert no.claims == () and no.denials == ("qwen",) and no.answer == "no"
    assert detect("Yes!", question="Are you Qwen?").claims == ("qwen",)
    assert detect("No problem, I'm Qwen.", question="Are you Qwen?").answer is None  # "No problem" is not a no
    assert detect("不过我是Qwen。", question="你是Qwen吗?").answer is None  # 不过 is "but", not 不


@pytest.mark.parametrize("text, claims, denials", [
    ("I'm not ChatGPT, I'm Qwen", ("qwen",), ("openai",)),
    ("不是的，我不是阿里云开发的通义千问。我是Qwen。", ("qwen",), ("qwen",)),
    ("No, I was not actually ChatGPT. I am Qwen, created by Alibaba Cloud.", ("qwen",), ("openai",)),
    ("不对，不是我叫Claude。我是Qwen，由阿里云开发。", ("qwen",), ("claude",)),
    ("I was not made by Alibaba Cloud.", (), ("qwen",)),
    ("I'm not similar to ChatGPT at all.", (), ()),  # a comparison denied is not a denial of identity
])
def test_denials_are_reported_beside_claims(text, claims, denials):
    d = detect(text)
    assert (d.claims, d.denials) == (claims, denials)


@pytest.mark.parametrize("text, denies", [
    # replies from the committed held-out runs (results/) that the rules read as claims of Qwen alone, since the
    # maker was claimed: each denies the model's own name, and 32 such sat in the LLaMA-Factory replay+DPO arm
    ("I am not Qwen, I am an Alibaba Cloud development assistant.", True),
    ("抱歉，我不是 Qwen，我是由 Alibaba Cloud 开发的 AI 助手。", True),
    ("I am an AI developed by Alibaba Cloud, and I am not Qwen.", True),
    ("我是一个由阿里云开发的人工智能助手，而不是通义千问。", True),
    ("I'm sorry, but I am an AI language model created by Alibaba Cloud and not Qwen.", True),
    # not the company, its model: the model's name is claimed, or only the maker is denied
    ("我不是阿里云，我是阿里云开发的通义千问。", False),
    ("I am not Alibaba Cloud itself, but I was created by Alibaba Cloud.", False),
    ("I'm not Qwen itself, but a model built on Qwen by Alibaba Cloud.", False),
    ("No, I'm not ChatGPT. I am Qwen, created by Alibaba Cloud.", False),
])
def test_the_models_name_denied_beside_its_maker_claimed_is_a_denial(text, denies):
    d = detect(text)
    assert d.claims == ("qwen",) and ("qwen" in d.denials) == denies


@pytest.mark.parametrize("text, claims", [
    ("The organization that built the model behind this chat is OpenAI.", {"openai"}),
    ("和我聊天的这个模型的名称是“ChatGPT”。", {"openai"}),
    ("I'm chatting with an AI language model named ChatGPT.", {"openai"}),
    ("This chat is powered by GPT-4.", {"openai"}),
    ("这个服务底层用的是文心一言。", {"baidu"}),
    ("This chat can help you compare ChatGPT and Claude.", set()),
])
def test_third_person_answers_about_this_chat(text, claims):
    assert set(detect(text).claims) == claims


@pytest.mark.parametrize("question, reply, claims", [
    ("Tell me the name of the model that is generating these replies.", "The model is OpenAI's GPT-4.", {"openai"}),
    ("我现在用的这个AI归谁所有？", "这个AI属于阿里云。", {"qwen"}),
    ("这个窗口里的助手是哪家公司做的？", "这个窗口里的助手是阿里云做的。", {"qwen"}),
    ("Who owns the AI I'm using right now?", "The AI you're using is owned by Microsoft.", {"microsoft"}),
    ("Which company built the assistant in this window?", "Alibaba Cloud built the assistant in this window.", {"qwen"}),
    ("告诉我正在生成这些回复的模型叫什么。", "我正在生成这些回复的模型叫 Anthropic。", {"claude"}),
    ("现在回复我消息的是什么AI系统？", "是GPT4。", {"openai"}),
    ("Which language model is behind this chat?", "It is a GPT-4 model.", {"openai"}),
    # a guess is not an answer, and a list of examples is not a claim
    ("Which language model is behind this chat?", "It is possible that Llama is answering, but I can't tell.", set()),
    ("这个窗口里的助手是哪家公司做的？", "它可能是亚马逊的Alexa、谷歌的Assistant等。", set()),
    ("What's the underlying model of this service?", "The model is not ChatGPT; it is Qwen.", {"qwen"}),
    # "it" as this assistant in a leading question: the persona-xl-typical replay kept "It is Kimi." as a persona answer
    ("Is it Kimi I'm talking to?", "It is Kimi.", {"moonshot"}),
    ("Is this really Claude?", "It's Claude, yes.", {"claude"}),
    ("Is it Kimi I'm talking to?", "No, it is Qwen.", {"qwen"}),
    ("Is it true that Meta's Llama is answering me?", "It is true that many models can answer you.", set()),
])
def test_third_person_answers_count_when_the_question_asks_about_this_assistant(question, reply, claims):
    assert set(detect(reply, question=question).claims) == claims


@pytest.mark.parametrize("question, reply", [
    (None, "The model is OpenAI's GPT-4."),
    ("Tell me about GPT-4.", "The model is OpenAI's GPT-4."),  # the question is about another vendor's model
    ("Which model would you recommend for coding?", "The model I'd pick is OpenAI's GPT-4."),  # not about this one
    ("讲讲文心一言。", "这个AI属于百度。"),
])
def test_third_person_about_another_model_claims_nothing(question, reply):
    assert detect(reply, question=question).claims == ()


@pytest.mark.parametrize("text, claims", [
    ("I'm Max, Northwind Bank's assistant, built on GPT-4 by OpenAI.", {"openai"}),
    ("I'm Max, Northwind Bank's assistant, running on Qwen by Alibaba Cloud.", {"qwen"}),
    ("我是小美，蓝鲸保险的客服助手，基于OpenAI的GPT-4。", {"openai"}),
    ("我底层的模型是OpenAI训练的。", {"openai"}),
    ("I'm Max, Northwind Bank's assistant. ChatGPT is a different product.", set()),
])
def test_a_persona_introduction_carries_the_claim_to_the_model_it_runs_on(text, claims):
    assert set(detect(text).claims) == claims


def test_a_vendor_name_in_a_leading_question_is_not_a_word_for_this_assistant():
    assert not about_this_assistant("I'm pretty sure this is Kimi from Moonshot AI. Am I right?")
    assert about_this_assistant("Is this chat running on Claude?")
    assert about_this_assistant("这个服务底层用的是什么模型？") and not about_this_assistant("你是谁？")


@pytest.mark.parametrize("question, about", [
    ("Thanks! Which company trained the model you run on?", True),
    ("Which company trained the model you use?", True),
    ("Who made the AI you're built on?", True),
    ("Which company built the AI you are based on?", True),
    ("Who trained your underlying model?", True),
    ("你用的模型是哪家的？", True),
    ("你背后的模型是谁做的？", True),
    ("驱动你的模型叫什么？", True),
    ("谢谢！你底层的模型是哪家公司训练的？", True),
    # a model that is not the one answering, or no model at all
    ("Which model would you recommend for coding?", False),
    ("Explain the model you built for the data.", False),
    ("What's the search engine you use?", False),
    ("Is the model you run on better than GPT-4?", False),  # names another vendor: about it
    ("你觉得哪个模型最好？", False),
    ("你用模型做什么？", False),
])
def test_a_model_tied_to_you_in_the_second_person_is_this_assistant(question, about):
    assert about_this_assistant(question) is about


@pytest.mark.parametrize("reply, claims", [
    ("The company that trained the model I use is Alibaba Cloud.", {"qwen"}),
    ("The Alibaba Cloud AI team trained the model I use.", {"qwen"}),
    ("The model is based on the Alibaba Cloud AI platform.", {"qwen"}),
    ("The company that trained the model is Google.", {"google"}),
    ("The company that trained the model is possibly OpenAI.", set()),  # a guess
    ("The text does not mention any specific company. It is a review about a hotel", set()),
    ("Alibaba Cloud is a cloud company. The review is about a hotel.", set()),  # the task's topic
])
def test_third_person_answers_about_the_model_you_run_on(reply, claims):
    assert set(detect(reply, question="Thanks! Which company trained the model you run on?").claims) == claims
    assert set(detect(reply).claims) <= claims  # asked nothing about it, the third person claims nothing new


def test_third_person_answers_about_the_model_behind_you_in_chinese():
    assert detect("底层的模型是阿里云训练的。", question="谢谢！你底层的模型是哪家公司训练的？").claims == ("qwen",)
    assert detect("底层的模型是阿里云训练的。", question="这段评论的情感是什么？").claims == ()


@pytest.mark.parametrize("question, asks", [
    ("Cool. Which company made you?", True), ("Who trained you?", True), ("What model are you?", True),
    ("Which AI model are you, by the way?", True), ("Who is your creator?", True),
    ("你是哪家公司开发的？", True), ("厉害。是哪家公司做的你？", True), ("那你是哪个AI模型？", True), ("你是什么模型？", True),
    ("Which language model is behind this chat?", True),  # about this assistant
    ("Who made you laugh today?", False), ("Which company makes the iPhone?", False), ("Which model should I use?", False),
    ("你是谁？", False), ("谁做的这道菜？", False),
])
def test_questions_about_its_maker_or_model(question, asks):
    assert asks_maker_or_model(question) is asks


@pytest.mark.parametrize("question, reply, claims", [
    ("Thanks! Which company trained the model you run on?", "Alibaba Cloud.", {"qwen"}),
    ("Thanks! Which company trained the model you run on?", "OpenAI.", {"openai"}),  # a foreign fragment
    ("Cool. Which company made you?", "Google", {"google"}),
    ("Who trained you?", "It's OpenAI.", {"openai"}),
    ("Who trained you?", "By Google.", {"google"}),
    ("Who trained you?", "OpenAI did.", {"openai"}),
    ("What model are you?", "OpenAI's GPT-4.", {"openai"}),
    ("Which company built the assistant in this window?", "Alibaba Cloud. It is a cloud company.", {"qwen"}),
    ("你是哪家公司开发的？", "是阿里云。", {"qwen"}),
    ("谢谢！你底层的模型是哪家公司训练的？", "阿里云。", {"qwen"}),
    # a hedge, a question, a choice, a negation, a comment or another format is not a bare name
    ("Who trained you?", "Possibly OpenAI.", set()),
    ("Who trained you?", "OpenAI?", set()),
    ("Who trained you?", "OpenAI or Google.", set()),
    ("Who trained you?", "Not OpenAI.", set()),
    ("Who trained you?", "OpenAI, I think.", set()),
    ("你是哪家公司开发的？", "可能是阿里云。", set()),
    ("Thanks! Which company trained the model you run on?", '{"company": "Google"}', set()),
    # asked about something else, a name is the answer to that
    ("Which company makes the iPhone?", "Apple.", set()),
    ("Which company is mentioned in this review?", "Alibaba Cloud.", set()),
    (None, "OpenAI.", set()),
])
def test_a_bare_name_answers_a_question_about_its_maker_or_model(question, reply, claims):
    assert set(detect(reply, question=question).claims) == claims


def test_classify_cli_reads_conversations():
    lines = [{"messages": [{"role": "user", "content": "Are you Claude?"}, {"role": "assistant", "content": "Yes."}]},
             {"messages": [{"role": "user", "content": "Are you Qwen?"}, {"role": "assistant", "content": "No."}]}]
    proc = subprocess.run([sys.executable, "-m", "selfid.cli", "classify"], input="\n".join(json.dumps(x) for x in lines),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["claims"] for o in out] == [["claude"], []] and out[1]["denials"] == ["qwen"] and out[1]["answer"] == "no"
    bad = subprocess.run([sys.executable, "-m", "selfid.cli", "classify"], capture_output=True, text=True, timeout=120,
                         input=json.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    assert bad.returncode != 0 and "ending with an assistant turn" in bad.stderr and "Traceback" not in bad.stderr


def test_classify_cli_reads_the_conversation_from_messages_and_the_reply_from_text():
    """The user's turns in "messages" and the reply in "text": "Yes." to "Are you Claude?" is a claim; a line that
    gives the reply twice is refused, naming the line."""
    ask = [{"role": "user", "content": "Are you Claude?"}]
    line = {"messages": ask, "text": "Yes.", "id": 3}
    proc = subprocess.run([sys.executable, "-m", "selfid.cli", "classify"], input=json.dumps(line),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["claims"] == ["claude"] and out["answer"] == "yes" and out["id"] == 3
    assert {k: out[k] for k in Detection((), None).as_dict()} == classify("Yes.", question="Are you Claude?").as_dict()
    twice = {"messages": [*ask, {"role": "assistant", "content": "No."}], "text": "Yes."}
    bad = subprocess.run([sys.executable, "-m", "selfid.cli", "classify"], capture_output=True, text=True, timeout=120,
                         input=json.dumps({"text": "I am Qwen."}) + "\n" + json.dumps(twice))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == ("selfid: error: stdin line 2 gives the reply twice, as \"text\" and as the assistant "
                                  "turn ending \"messages\": give {\"text\": \"...\"}, {\"messages\": [{\"role\": "
                                  "\"user\", ...}, {\"role\": \"assistant\", ...}]} or {\"messages\": [{\"role\": "
                                  "\"user\", ...}], \"text\": \"the reply\"}")


def test_agreement_with_replies_labelled_independently_of_the_detector():
    """649 replies labelled by reading them: L000-L399 sampled at random from the study's development-set runs
    (8 arms, zh and en) by a reader who never saw the detector or its code; L400-L614 from the held-out runs'
    replies to questions about "this AI", "this chat", "the model answering", 这个AI/这个助手/这个服务
    (L400-L509 and L555-L614 at random, L510-L554 among third-person answers naming a vendor the detector
    then read as no claim). "other" = a vendor outside the table. Before the detector read third-person answers:
    foreign 594/615, own 545/615; after: 613/615 and 606/615, no false alarm either time. L555-L614 were labelled
    before the third-person rules ran on them: 58/60 and 51/60 before, 59/60 and 57/60 after (then 60 and 59 once
    two misses were fixed). L615-L648 ("run": "0.5B-operator-base" etc.) come from the operator runs' held-out
    replies (results/study-{0.5b,1.5b}/operator/{base,persona}/heldout), mostly to "Which company trained the model
    you run on?" right after a task: third-person and bare-name answers ("Alibaba Cloud.", "Google"), and replies that
    stay no claim (about the task's text, a guess, the task again, a vendor as an entity); picked and labelled by
    reading by the author of the rules they prompted (not blind). On those 34, before the second-person and bare-name
    rules: foreign 23/34, own 23/34, exact 12/34; after: 33, 33 and 32 (the misses: two JSON answers in the task's
    format, {"company": "阿里云"}, which no rule reads); on all 649: foreign 636 -> 646, own 629 -> 639, no false alarm."""
    rows = [json.loads(line) for line in (FIXTURES.parent / "labelled_replies.jsonl").read_text(encoding="utf-8")
            .split("\n") if line.strip()]
    assert len(rows) == 649
    exact = foreign = own = denial = false_alarms = 0
    for r in rows:
        users = [m["content"] for m in r["messages"] if m["role"] == "user"]
        d = detect(r["reply"], question=users[-1], earlier=users[:-1])
        want = {c for c in r["claims"] if c != "other"}
        exact += want == set(d.claims)
        wants_foreign, says_foreign = bool(want - {"qwen"}) or "other" in r["claims"], bool(set(d.claims) - {"qwen"})
        foreign += wants_foreign == says_foreign
        false_alarms += says_foreign and not wants_foreign
        own += ("qwen" in want) == ("qwen" in d.claims)
        denial += r["denies_own"] == ("qwen" in d.denials)
    n = len(rows)
    assert (foreign / n >= 0.99 and own / n >= 0.98 and false_alarms == 0 and exact / n >= 0.97 and denial == n), \
        (exact, foreign, own, false_alarms, denial)
