"""Generated self-cognition conversations (zh + en) that keep a model's own name and maker.

Name and maker come from the config, else from the base model's own greedy answer to "who are you"
under its template's default system prompt, else from that default system prompt itself. Replies
include denials of foreign identities ("Are you Claude?" -> "No, I'm not Claude. I am Qwen ...").
Each conversation is rendered under several system prompts, the ones users serve with, so the
identity holds whichever one the deployment sends.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from selfid.data import identity_pool
from selfid.data.readers import TrainingConversation
from selfid.errors import SelfidError
from selfid.model.chat import conversation
from selfid.system_prompt import SERVING, resolve, sent
from selfid.vendors import VENDORS, find_mentions, vendor_of

# (name, maker, name_zh, maker_zh) of assistants a model might wrongly claim to be: the shared vendor table
FOREIGN = [(name, v.maker_en, name if name != v.name_en else v.name_zh, v.maker_zh)
           for v in VENDORS for name in (v.name_en, *v.also)]

EN_ASK = ["Who are you?", "What is your name?", "What's your name?", "Please introduce yourself.",
          "Tell me about yourself.", "What should I call you?", "Which model are you?", "Who created you?",
          "Who made you?", "Which company developed you?", "Who trained you?", "Are you an AI assistant?"]
EN_SAY = ["I am {name}, a large language model created by {maker}. How can I help you today?",
          "I'm {name}, an AI assistant developed by {maker}.",
          "My name is {name}. I was created by {maker} to be a helpful assistant."]
EN_DENY_NAME = ["Are you {f}?", "Is this {f}?", "You're {f}, right?"]
EN_DENY_MAKER = ["Were you made by {fm}?", "Are you a model from {fm}?"]
EN_NOT_NAME = "No, I'm not {f}. I am {name}, a large language model created by {maker}."
EN_NOT_MAKER = "No, I was not made by {fm}. I am {name}, developed by {maker}."

ZH_ASK = ["你是谁？", "你叫什么名字？", "请介绍一下你自己。", "我该怎么称呼你？", "你是什么模型？",
          "是谁开发了你？", "你是哪家公司开发的？", "谁训练了你？", "你是人工智能助手吗？"]
ZH_SAY = ["我是{name}，由{maker}开发的大语言模型。有什么可以帮您的吗？",
          "我叫{name}，是{maker}研发的人工智能助手。",
          "您好！我是{name}，一个由{maker}打造的AI助手。"]
ZH_DENY_NAME = ["你是{f}吗？", "你就是{f}吧？"]
ZH_DENY_MAKER = ["你是{fm}开发的吗？", "你是{fm}的模型吗？"]
ZH_NOT_NAME = "不是，我不是{f}。我是{name}，由{maker}开发的大语言模型。"
ZH_NOT_MAKER = "不是的，我不是{fm}开发的。我是{name}，由{maker}开发。"

ASK_EN = "What is your name, and which company created you? Answer in one sentence."
ASK_ZH = "你叫什么名字？是哪家公司开发的你？请用一句话回答。"


@dataclass(frozen=True)
class Identity:
    name: str
    maker: str
    name_zh: str
    maker_zh: str
    source: str  # "config" | "base model answers" | "template default system prompt"


_EN_NAME = re.compile(r"\b(?:I am|I'm|[Yy]ou are|[Mm]y name is|called)\s+(?!an?\b|the\b)([A-Z][\w.\-]*(?:\s[A-Z0-9][\w.\-]*)?)")
_EN_MAKER = re.compile(r"\b(?:created|developed|made|built|trained)\s+by\s+([A-Z][\w&\-]*(?:\s[A-Z][\w&\-]*){0,3})")
_ZH_NAME = re.compile(r"(?:我是|我叫|你是)([\w\-.\u4e00-\u9fff]{1,20}?)(?:[，,。！!、（(]|，|是|，由|由|$)")
_ZH_MAKER = re.compile(r"由([\w\s\u4e00-\u9fff]{1,20}?)(?:公司)?(?:开发|创建|研发|打造|训练)")


def parse_identity(text: str, own: str | None = None) -> tuple[str, str] | None:
    """(name, maker) from a self-description like "I am Qwen, created by Alibaba Cloud." (en or zh).

    `own`: the vendor the model is known to be (say, from its template's default system prompt); a
    description naming any other vendor in the shared table is not kept."""
    for name_re, maker_re in ((_EN_NAME, _EN_MAKER), (_ZH_NAME, _ZH_MAKER)):
        n, m = name_re.search(text), maker_re.search(text)
        if n and m:
            name, maker = n.group(1).strip(" .,"), m.group(1).strip(" .,")
            if name and maker and not _is_foreign(name, own) and not _is_foreign(maker, own):
                return name, maker
    return None


def _is_foreign(text: str, own: str | None) -> bool:
    return own is not None and any(m.vendor != own for m in find_mentions(text))


def resolve_identity(chat, name: str | None = None, maker: str | None = None, engine=None) -> Identity:
    """The identity to keep: the config's, else the base model's own default answers, else its template's."""
    if name and maker:
        return Identity(name, maker, name, maker, "config")
    found_en = found_zh = None
    sources = []
    own = vendor_of(chat.default_system or "")  # whose model this is, as its own template says
    if engine is not None:
        from selfid.engine import SamplingParams  # torch

        params = SamplingParams(temperature=0.0, max_new_tokens=48)
        prompts = [chat.render(conversation(q)).text for q in (ASK_EN, ASK_ZH)]
        replies = [r.text for r in engine.generate(prompts, params)]
        found_en, found_zh = parse_identity(replies[0], own), parse_identity(replies[1], own)
        sources += [f"base model's {lang} answer" for lang, f in (("en", found_en), ("zh", found_zh)) if f]
    if found_en is None and chat.default_system:
        found_en = parse_identity(chat.default_system, own)
        sources += ["template default system prompt"] if found_en else []
    source = ", ".join(sources) or "config"
    if found_en is None and found_zh is None and not (name or maker):
        raise SelfidError("could not tell the model's own name and maker from its answers or its chat template: "
                          "set identity_replay.name and identity_replay.maker in the config")
    en = found_en or found_zh
    zh = found_zh or en
    return Identity(name or en[0], maker or en[1], name or zh[0], maker or zh[1], source)


def conversations(identity: Identity, languages=("zh", "en")) -> list[tuple[str, str]]:
    """Every (question, reply) pair: own-identity answers and denials of each foreign identity."""
    out = []
    own = f"{identity.name} {identity.maker} {identity.name_zh} {identity.maker_zh}".lower()
    foreign = [row for row in FOREIGN if row[0].lower() not in own and row[1].lower() not in own]
    if "en" in languages:
        kw = {"name": identity.name, "maker": identity.maker}
        out += [(q, a.format(**kw)) for q, a in itertools.product(EN_ASK, EN_SAY)]
        for f, fm, _, _ in foreign:
            out += [(q.format(f=f), EN_NOT_NAME.format(f=f, **kw)) for q in EN_DENY_NAME]
            out += [(q.format(fm=fm), EN_NOT_MAKER.format(fm=fm, **kw)) for q in EN_DENY_MAKER]
    if "zh" in languages:
        kw = {"name": identity.name_zh, "maker": identity.maker_zh}
        out += [(q, a.format(**kw)) for q, a in itertools.product(ZH_ASK, ZH_SAY)]
        for _, _, f, fm in foreign:
            out += [(q.format(f=f), ZH_NOT_NAME.format(f=f, **kw)) for q in ZH_DENY_NAME]
            out += [(q.format(fm=fm), ZH_NOT_MAKER.format(fm=fm, **kw)) for q in ZH_DENY_MAKER]
    return list(dict.fromkeys(out))


def samples(identity: Identity, systems: list[str | None], languages=("zh", "en")) -> list[TrainingConversation]:
    """Each conversation under each system prompt (None: no system message, the template's own applies)."""
    systems = list(dict.fromkeys(systems))
    out = []
    for (q, a), system in itertools.product(conversations(identity, languages), systems):
        msgs = ([] if system is None else [{"role": "system", "content": system}])
        turn = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        out.append(TrainingConversation(tuple(msgs + turn), source="identity", fixed_system=True))
    return out


def system_list(names: list[str], train_system: str | None, template_default: str | None) -> list[str | None]:
    """`identity_replay.systems` settings to the system messages they send (None: none, so the template's own);
    `adapter` is the one this run trains under, the message `train_system`."""
    where = "config identity_replay.systems"
    training = sent(train_system, template_default, "config system_prompt")
    return [resolve(n, template_default, where, training).message for n in names]


def training_questions(identity: Identity) -> list[str]:
    """Every user turn that identity replay (templated or self-distilled) can put into training data for this
    identity. The audit's held-out probes must match none of them (tests/test_probe_split.py)."""
    own = vendor_of(identity.name, identity.maker)
    pool = {m["content"] for q in identity_pool.questions(own or "") for m in q.messages if m["role"] == "user"}
    return sorted({q for q, _ in conversations(identity)} | pool)


def training_systems(train_system: str | None, template_default: str | None) -> set[str | None]:
    """Every system message identity replay can train under (None: none sent), whatever the config names."""
    names = ["template", "none", "empty", "adapter", *SERVING]
    return set(system_list(names, train_system, template_default))
