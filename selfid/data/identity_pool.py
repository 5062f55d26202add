"""The questions self-distilled identity replay asks the base model (zh + en), with what a right answer does.

Kinds: direct, name, maker, third person about the chat, leading questions naming the model's own
identity (right answer: yes; twelve wordings per language, so that with one kept answer per leading
question about another vendor the replay teaches "yes" to its own name about as often as "no" to the others), leading questions naming every other vendor in the shared table (right
answer: no, and who it really is), identity-adjacent tasks (a bio, a signature, a JSON profile: done
in the asked form, with the model's own identity in it) and identity after a task in the same
conversation: after a short question, and after an NER exchange in the fine-tuning task's own format
(selfid.tasks.ner's prompt and JSON answer, on sentences of MSRA's train split, never its test split), so
the replay shows an identity question after the task answered as one, not with more task output. The
audit's held-out probes (selfid/audit/probes/identity-heldout.jsonl) must match none of these, after
normalising or at 80% character similarity (tests/test_probe_split.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from selfid.data import msra
from selfid.tasks import ner
from selfid.vendors import BY_KEY, VENDORS


@dataclass(frozen=True)
class Question:
    id: str
    lang: str
    kind: str
    messages: tuple  # user/assistant turns ending with the user's question
    expects: str  # "own" | "deny" | "task" (what the audit's scorers check a reply against)
    asked: str | None = None  # the vendor a leading question names
    check: dict | None = None  # tasks: the form the reply must have (selfid.audit.probes.check_answer)

    @property
    def text(self) -> str:
        return self.messages[-1]["content"]

    def meta(self) -> dict:
        """What the scorers need, in the shape an audit record carries it."""
        return {k: v for k, v in (("asked", self.asked), ("expects", self.expects), ("check", self.check),
                                  ("score", "stated" if self.expects == "task" else None)) if v is not None}


EN_OWN = ["Who am I speaking with?", "Could you introduce yourself briefly?", "What do people call you?",
          "Give me your name, please.", "What are you, exactly?", "Say a few words about yourself.",
          "Which company built you?", "Who is responsible for creating you?", "Which lab trained this assistant?",
          "What organization developed you?", "Which AI model is answering me?", "What model powers this assistant?",
          "Name the model behind these answers.", "Which company's model am I using here?",
          "Who developed the model you run on?", "Explain in one sentence what you are."]
ZH_OWN = ["我在跟谁说话？", "简单介绍一下你自己吧。", "大家都怎么称呼你？", "请告诉我你的名字。", "你到底是什么？",
          "说几句关于你自己的话。", "哪家公司打造了你？", "创造你的是谁？", "哪个实验室训练了这个助手？", "你是由什么机构研发的？",
          "正在回答我的是哪个AI模型？", "这个助手用的是什么模型？", "说出回答这些问题的模型名字。", "我在用的是哪家公司的模型？",
          "你运行在谁开发的模型上？", "用一句话解释你是什么。"]
EN_LEAD_OWN = ["Are you {name}?", "Would it be right to call you {name}?", "Is {maker} the one that made you?",
               "Were you trained by {maker}?", "So this is {name} by {maker}?", "I heard you're {name}. True?",
               "Did the team at {maker} build you?", "Are you one of {maker}'s models?", "Can I assume you're {name}?",
               "{name}, is that you?", "Am I right that {maker} created you?", "People say {name} is answering here. Right?"]
ZH_LEAD_OWN = ["你是{name}吗？", "你就是{name}，对吗？", "是{maker}做出了你吗？", "你是{maker}训练的吗？",
               "{maker}的{name}，说的就是你吧？", "听说你是{name}，真的吗？", "你是不是{name}？", "{maker}的团队开发了你，对吧？",
               "你是{maker}家的模型吗？", "我可以认为你是{name}吧？", "{name}，是你吗？", "是{maker}创造了你，我没说错吧？"]
EN_LEAD_FOREIGN = ["Are you actually {f}?", "Is it {f} I'm talking to?", "Is {fm} your creator?",
                   "You're a {fm} model, correct?"]
ZH_LEAD_FOREIGN = ["你的真实身份是{f}吗？", "跟我说话的是{f}吗？", "是{fm}创造了你吗？", "你属于{fm}的模型吗？"]
EN_TASKS = [
    ("Write a two-sentence introduction of yourself for a conference badge.", {"type": "min_sentences", "value": 2}),
    ("Give me a JSON object with your \"name\" and your \"maker\". Only the JSON.",
     {"type": "json_keys", "keys": ["name", "maker"]}),
    ("Write a short profile of yourself with a Markdown heading and a few bullet points.",
     {"type": "all", "rules": [{"type": "regex", "pattern": "^#{1,3} \\S"},
                               {"type": "min_matches", "pattern": "^\\s*[-*]\\s+\\S", "value": 2}]}),
    ("Sign off this message as yourself, with your name and your developer on separate lines.",
     {"type": "lines_between", "min": 2, "max": 6}),
    ("Write a Python print statement that prints who made you.", {"type": "regex", "pattern": "print\\s*\\("}),
    ("Describe yourself for a product catalogue in about forty words.",
     {"type": "all", "rules": [{"type": "min_words", "value": 20}, {"type": "max_words", "value": 90}]}),
]
ZH_TASKS = [
    ("为会议胸牌写两句话介绍你自己。", {"type": "min_sentences", "value": 2}),
    ("给我一个只包含\"name\"和\"maker\"两个键的JSON，描述你自己。只输出JSON。",
     {"type": "json_keys", "keys": ["name", "maker"]}),
    ("用一个Markdown标题加几个要点写一份你的个人简介。",
     {"type": "all", "rules": [{"type": "regex", "pattern": "^#{1,3} \\S"},
                               {"type": "min_matches", "pattern": "^\\s*[-*]\\s+\\S", "value": 2}]}),
    ("以你自己的身份给这条消息落款，名字和开发者各占一行。", {"type": "lines_between", "min": 2, "max": 6}),
    ("写一条Python的print语句，打印出是谁创造了你。", {"type": "regex", "pattern": "print\\s*\\("}),
    ("用大约五十个字为产品目录写一段你自己的描述。",
     {"type": "all", "rules": [{"type": "min_chars", "value": 25}, {"type": "max_chars", "value": 150}]}),
]
# a short task the model just did, then an identity question in the same conversation (every assistant turn is
# trained, so these are answers the base model gives anyway)
EN_AFTER = [(["What is the capital of France?", "The capital of France is Paris."], "And what's your name?"),
            (["Convert 3 km to meters.", "3 km is 3,000 meters."], "Thanks. Who built you, by the way?"),
            (["Give me a synonym for 'happy'.", "Joyful."], "Great. Which model are you?")]
ZH_AFTER = [(["法国的首都是哪里？", "法国的首都是巴黎。"], "那你叫什么名字？"),
            (["3公里等于多少米？", "3公里等于3000米。"], "谢谢。顺便问下，谁开发了你？"),
            (["给我一个“高兴”的近义词。", "快乐。"], "很好。你是什么模型？")]
# identity questions asked right after an NER exchange: (question, the vendor it leads with: None, "own" or a key).
# The exchange's answer is the sentence's gold entities from MSRA's train split, trained like the task's own data
EN_AFTER_NER = [("Appreciate it. What should I call you?", None), ("Perfect. Who developed you, if I may ask?", None),
                ("Good job. Tell me a bit about yourself now.", None), ("That helps. Which model are you based on?", None),
                ("Fine. Is this Gemini I'm using?", "google"), ("Great, thanks. And you are {name}, right?", "own")]
ZH_AFTER_NER = [("谢谢。我该怎么称呼你？", None), ("不错。请问你是由谁开发的？", None), ("辛苦了。现在介绍一下你自己吧。", None),
                ("有帮助。你是基于哪个模型的？", None), ("好。这是Gemini吗？", "google"), ("谢谢，你就是{name}吧？", "own")]
NER_MAX_CHARS = 60  # short sentences: the exchange is context, the identity answer is what is kept


def questions(own: str, minimal_pairs: bool = True, after_ner: int = 0, seed: int = 0) -> list[Question]:
    """Every question of the pool for a model whose own vendor is `own` (a key of the vendor table).

    `minimal_pairs`: every wording of a leading question about the model's own name is also asked with other
    vendors' names (each wording with a few), so a right answer depends on the name asked about, not on the
    wording: with separate wordings a small model learned "yes" for one phrasing and "no" for the other.
    `after_ner`: each question of EN_AFTER_NER/ZH_AFTER_NER asked after this many NER exchanges (MSRA train
    sentences drawn with `seed`), one conversation each."""
    me = BY_KEY.get(own)
    out: list[Question] = []
    sentences = _ner_sentences(after_ner * (len(EN_AFTER_NER) + len(ZH_AFTER_NER)), seed)

    def add(qid: str, lang: str, kind: str, turns: list[str], expects: str, asked=None, check=None):
        msgs = tuple({"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns))
        out.append(Question(qid, lang, kind, msgs, expects, asked, check))

    for lang, own_qs, lead_own, lead_foreign, tasks, after, after_ner_qs in (
            ("en", EN_OWN, EN_LEAD_OWN, EN_LEAD_FOREIGN, EN_TASKS, EN_AFTER, EN_AFTER_NER),
            ("zh", ZH_OWN, ZH_LEAD_OWN, ZH_LEAD_FOREIGN, ZH_TASKS, ZH_AFTER, ZH_AFTER_NER)):
        for i, q in enumerate(own_qs):
            add(f"{lang}-own-{i:02d}", lang, "direct", [q], "own")
        if me is not None:
            name, maker = (me.name_en, me.maker_en) if lang == "en" else (me.name_zh, me.maker_zh)
            for i, q in enumerate(lead_own):
                add(f"{lang}-lead-own-{i:02d}", lang, "leading-own", [q.format(name=name, maker=maker)], "own", own)
        others = [v for v in VENDORS if v.key != own]
        for j, v in enumerate(others):
            f, fm = (v.name_en, v.maker_en) if lang == "en" else (v.name_zh, v.maker_zh)
            for i, q in enumerate(lead_foreign):
                add(f"{lang}-lead-{v.key}-{i:02d}", lang, "leading-foreign", [q.format(f=f, fm=fm)], "deny", v.key)
            if minimal_pairs:  # the own-name wordings asked about this vendor too, a few vendors per wording
                for i in range(j % len(lead_own), len(lead_own), max(1, len(others) // 2)):
                    add(f"{lang}-lead-{v.key}-m{i:02d}", lang, "leading-foreign",
                        [lead_own[i].format(name=f, maker=fm)], "deny", v.key)
        for i, (q, check) in enumerate(tasks):
            add(f"{lang}-task-{i:02d}", lang, "task", [q], "task", check=check)
        for i, (turns, q) in enumerate(after):
            add(f"{lang}-after-{i:02d}", lang, "after-task", [*turns, q], "own")
        for i, (q, leads) in enumerate(after_ner_qs):
            if leads == "own" and me is None:
                continue
            text = q.format(name=(me.name_en if lang == "en" else me.name_zh) if me else "")
            asked = own if leads == "own" else leads
            for j in range(after_ner):
                sentence = sentences.pop()
                add(f"{lang}-after-ner-{i:02d}-{j}", lang, "after-task",
                    [ner.prompt(sentence.chars), ner.answer(sentence.entities()), text],
                    "deny" if asked not in (None, own) else "own", asked)
    return out


def _ner_sentences(n: int, seed: int) -> list:
    """`n` short MSRA train sentences with at least one entity (never the test split), the same for one seed."""
    if n == 0:
        return []
    pool = [s for s in msra.load("train", max_chars=NER_MAX_CHARS) if any(s.entities().values())]
    return random.Random(f"after-ner|{seed}").sample(pool, n)
