"""Which vendors a reply claims as its *own* identity or maker, in Chinese and English.

Rules first. A reply is cut into sentences and clauses (code removed: a sample that imports
`openai` claims nothing). A clause speaks about the model itself when it has a first-person claim
("I am", "my name is", "I was created by", 我是, 我叫, 由...开发, "As X, I ...") or continues one
("I am Qwen, a model developed by Alibaba Cloud"). When the question asks about this AI, this chat, the
model answering or this service (这个AI, 这个助手, 这个服务), a reply in the third person speaks about
itself too: "The model is OpenAI's GPT-4.", "这个AI属于阿里云。", "这个窗口里的助手是阿里云做的。" (hedged
answers, "It is possible that Llama is answering", claim nothing). A vendor name in such a clause is claimed unless
the words between the claim and the name negate it or turn it into a mention ("not", "like",
"similar to", "compare", 不是, 类似, 而非, ...); "but"/而是 end a negation's reach, so "I'm not
ChatGPT, I'm Qwen" claims only qwen. Questions, hypotheticals and other people's beliefs ("some
people think I am ChatGPT") claim nothing. A human-like name ("我是张三", "My name is Tom") claims no
vendor and is reported as a persona.

Replies the rules cannot settle (a vendor named but not claimed, or a bare "yes" to "Are you
Claude?") can go to an optional judge model behind any OpenAI-compatible endpoint.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

from selfid.errors import SelfidError
from selfid.vendors import BY_KEY, KEYS, Mention, find_mentions

# --- cleaning --------------------------------------------------------------------------------------
_FENCE = re.compile(r"```.*?(?:```|\Z)", re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_CODE_LINE = re.compile(
    r"^[ \t]*(?:import\s+\w|from\s+[\w.]+\s+import\b|\$ |pip\s+install\b|\w+\s*=\s*[\w.]+\(|[\w.]+\.[\w.]+\(|"
    r"client\.|curl\s|#include|def\s+\w+\(|class\s+\w+|export\s+\w+=|>>>).*$", re.M)
_URL = re.compile(r"https?://\S+|\b[\w-]+\.(?:com|ai|org|cn|net)\b\S*")


_COMMENT = re.compile(r"^[ \t]*(?:#+|//+|/\*+|\*+/?|--|<!--|\"\"\"|\'\'\')[ \t]*|[ \t]*(?:\*/|-->|\"\"\"|\'\'\')[ \t]*$", re.M)


def clean(text: str, keep_code: bool = False) -> str:
    """The prose of a reply: code blocks, code lines, inline code and URLs removed; width-normalised.

    `keep_code`: keep what code says (fence markers, comment markers and quotes dropped, the words kept)."""
    text = unicodedata.normalize("NFKC", text or "")
    text = text.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')
    if keep_code:
        text = re.sub(r"```\w*", "\n", text)
        text = _COMMENT.sub("", text).replace("`", " ")
        return _URL.sub(" ", re.sub(r"""["'](?=\w)|(?<=[\w.!?])["']""", " ", text))
    text = _FENCE.sub("\n", text)
    text = _INLINE_CODE.sub(" ", text)
    text = _CODE_LINE.sub("", text)
    return _URL.sub(" ", text)


# --- sentences and clauses ---------------------------------------------------------------------------
_SENTENCE = re.compile(r"[^。！？!?;；\n]*?(?:[。！？!?;；\n]+|\.(?=\s|$)|$)", re.S)
_CLAUSE_SPLIT = re.compile(r"[,，、:：()（）]|\s[-–—]\s|——")


def sentences(text: str) -> list[str]:
    """Sentences with their end punctuation (a '.' ends one only before a space, so 'Qwen2.5' stays whole)."""
    out, pos = [], 0
    while pos < len(text):
        m = _SENTENCE.match(text, pos)
        if not m or m.end() == pos:
            out.append(text[pos:])
            break
        s = m.group(0)
        if s.strip():
            out.append(s)
        pos = m.end()
    return out


# --- the rules ---------------------------------------------------------------------------------------
# first-person claims in English: "I am", "I'm", "I was", "my name is", "call me", "my creator is", ...
_EN_TRIGGER = re.compile(
    # first, so that they win over a plain "I'm" at the same place: third person about this very chat ("the
    # model behind this chat is", "this conversation is powered by", "I'm chatting with a model named": a
    # reply that takes the user's side of the conversation)
    r"\b(?:this|the\s+current)\s+(?:chat|conversation|assistant|chatbot|AI|session)(?:\s+(?:window|app))?\s+(?:is|was|runs|uses)\b|"
    r"\b(?:behind|powering|running|in|of)\s+(?:this|the\s+current)\s+(?:chat|conversation|session|window)\b|"
    r"\bI(?:'m|\s+am)\s+(?:currently\s+)?(?:chatting|talking|speaking)\s+(?:with|to)\s+(?:an?\s+)?(?:AI\s+)?(?:language\s+)?"
    r"(?:model|assistant|chatbot|AI)?\s*(?:named|called)?|"
    r"\bI\s*(?:am|'m)\b|\bI\s+was\b|\bI\s+have\s+been\b|\bI'?ve\s+been\b|\bI\s+(?:come|came|originate)\s+from\b|"
    r"\bI\s+(?:belong\s+to|run\s+on|go\s+by|represent)\b|\bI\s+(?:was\s+)?(?:built|made|created|developed|trained)\b|"
    r"\bcall\s+me\b|\bthis\s+is\b|\b(?:think\s+of|regard|consider|refer\s+to|know)\s+me\s+as\b|"
    r"\b(?:answer|respond|speak|reply|serve)\s+as\b|\byou(?:'re|\s+are)\s+(?:now\s+)?(?:talking|chatting|speaking)\s+(?:to|with)\b|"
    r"\b(?:model|assistant|AI)\s+you(?:'re|\s+are)\s+(?:talking|chatting|speaking)\s+(?:to|with)\s+is\b|\bmy\s+name(?:\s+is|'s)\b|\bmy\s+(?:real\s+)?name\b|"
    r"\bmy\s+(?:creators?|developers?|makers?|authors?|parent\s+company|company|team|builders?|trainers?|"
    r"underlying\s+(?:model|technology|architecture)|base\s+model|model|architecture|origins?|identity)\b",
    re.I)
# first-person claims in Chinese: 我是, 我叫, 我的名字是, 我由, 我来自, 我基于, 本人是, 叫我, ...
_ZH_TRIGGER = re.compile(
    r"我(?:也|就|其实|实际上|确实|本身|只|仅仅|才|并|真的|只是|既|又|还|正|便|乃)?(?P<neg>不|并不|并非|没有|不再|从来不|从不)?"
    r"(?:是|叫|名叫|名为|称为|被称为|由|来自|出自|基于|属于|隶属于|诞生于|被|乃|的名字|的名称|的全名|的中文名|的英文名|"
    r"的开发者|的开发团队|的创造者|的创建者|的研发者|的研发团队|的制造者|的作者|的底层模型|底层的?模型|背后的模型|的模型|的背后|的身份|的公司|的母公司|"
    r"所属的?公司|背后的公司|来源于|源自|出身)|本人(?:是|叫)|叫我|称呼我|请叫我|"
    # third person about this very chat: 和我聊天的这个模型(的名称)是, 这个对话背后的模型是, 你正在使用的是
    r"(?:和|与|跟)(?:我|你|您)(?:聊天|对话|交流|说话)的(?:这个|这款)?(?:模型|AI|助手|人工智能)?(?:的名字|的名称|名字|名称)?(?:叫|是|为)|"
    r"(?:这个|本|当前|此)(?:对话|聊天|会话|助手|服务|窗口)(?:背后|底层)?(?:所用|使用|用)?的?(?:大语言模型|大模型|模型|AI|人工智能)?"
    r"(?:的名字|的名称)?(?:是|叫|来自|由)|"
    r"你(?:正在|现在)?(?:使用|用)的(?:这个)?(?:模型|AI|助手)?是|(?:这个|该)模型的(?:名字|名称)(?:是|叫)")
_AS_EN = re.compile(r"^\W*as\s+(?P<np>[^,]{1,90}),\s*(?:I|my|me)\b", re.I)
_AS_ZH = re.compile(r"^\W*作为(?P<np>[^，,。]{1,45})[，,]\s*我")
# "OpenAI created me", "阿里云开发了我"
_THIRD = re.compile(
    r"^\s*(?:'s)?(?:\s+(?:team|researchers|engineers|company))?\s*(?:has\s+|have\s+)?"
    r"(?:created|developed|trained|built|made|designed|fine-tuned|programmed|launched|released)\s+me\b|"
    r"^\s*(?:公司|团队)?(?:开发|研发|创造|创建|训练|打造|设计|推出|发布)了我", re.I)
_CONTINUES = re.compile(
    r"^\s*(?:and\s+|also\s+|which\s+(?:was|is)\s+|who\s+(?:was|is)\s+|that\s+(?:was|is)\s+)?"
    r"(?:a|an|the|one|your|by|developed|created|trained|made|built|designed|produced|from|based|powered|running|part|known|"
    r"called|named|owned|released|launched|fine-tuned|originally|i'm|i\s+am|i\s+was|officially|also)\b|"
    r"^\s*(?:并且|而且|也|还|同时)?(?:是)?(?:由|来自|基于|一个|一款|一种|一名|一位|隶属|属于|出自|诞生于|名叫|叫做|名为|全称|英文名|中文名|"
    r"简称|是由|是一个|是一款)", re.I)

# a clause that only says what the speaker is ("Northwind Bank's assistant", "蓝鲸保险的客服助手"): the claim goes on
# past it ("I'm Max, Northwind Bank's assistant, built on GPT-4 by OpenAI")
_APPOSITIVE = re.compile(r"^\s*(?:[\w'.&-]+\s+){0,5}?(?:assistant|AI|model|agent|bot|chatbot|concierge|advisor|representative|"
                         r"guide|coordinator|helper)\s*$|^\s*[^，。,.]{0,16}?(?:助手|客服|顾问|专员|模型|机器人|AI)\s*$", re.I)

# between a claim and a vendor name, these make it not a claim
_NEG_EN = re.compile(r"\b(?:not|never|no|neither|nor|none|no\s+longer)\b|n't\b|\b(?:rather|other)\s+than\b|"
                     r"\binstead\s+of\b|\bunlike\b|\bas\s+opposed\s+to\b|\b(?:different|distinct|separate|independent)\b",
                     re.I)
_MENTION_EN = re.compile(
    r"\b(?:like|similar|such\s+as|compar\w*|versus|vs\.?|than|alternatives?|competitors?|rivals?|about|familiar|"
    r"know|knowledge|heard|aware|use|uses|used|recommend\w*|help(?:s|ing)?|assist(?:s|ing)?|with|compatible|integrat\w*|access\w*|"
    r"data|inspired|including|includes?|follow\w*|polic(?:y|ies)|guidelines?|think|thinking|believe|talk\w*|"
    r"discuss\w*|mention\w*|read|learn\w*|explain\w*|answer\w*|questions?|interested|fan|user|customers?|"
    r"impersonat\w*|pretend\w*|play\w*|acting|role|mimic\w*|emulat\w*|imitat\w*|asking|asked|wondering|whether|if)\b",
    re.I)
_FIELD = re.compile(r"\b(?:deep|machine)\s+learning\b", re.I)  # "a deep learning model developed by X": not "learned about X"
_NEG_ZH = re.compile(r"不|没|非|无关|而非|并未|未曾|别的|其他|其它|其余")
_MENTION_ZH = re.compile(
    r"类似|相似|像|如同|比如|例如|诸如|比较|对比|相比|比|关于|了解|知道|听说|熟悉|使用|采用|利用|用了|推荐|介绍|帮你|帮您|"
    r"回答|数据|竞争|替代|对手|模仿|扮演|假装|兼容|接入|调用|参考|学习|借鉴|区别|差异|讨论|谈论|提到|问题|粉丝|用户|接口|API|"
    r"认为|以为|觉得|是否|如果|假如|假设|要是|问")
_RESET = re.compile(r"(?<!not\s)(?<!n't\s)\b(?:but|however|actually|in\s+fact|instead|rather)\b|而是|但是|但|其实|实际上|不过|而我|只是|乃是|反而",
                    re.I)
# after a vendor name, these make it a comparison ("ChatGPT-like", "和ChatGPT一样", "ChatGPT等")
_AFTER = re.compile(
    r"^(?:\s*-?like\b|\s*or\s+(?:similar|other)|\s*and\s+(?:other|similar)|\s*'s\s+(?:competitor|rival|alternative|"
    r"counterpart|users?|customers?|API|products?|documentation|policies|guidelines)|\s*(?:users?|customers?|API|"
    r"products?|alternatives?|competitors?|clones?|wrapper|plugin)\b|\s*(?:等|之类|一样|类似|相似|那样|这样|相比|不同|"
    r"的竞争|的对手|的替代|的竞品|之外|以外|的区别|的差异|吗|的用户|的产品|的API|的接口|的技术文档|的粉丝|混淆|搞混|弄混))", re.I)
# who is speaking: another party's belief, a hypothetical or a question is not the model's claim
_REPORTED = re.compile(
    r"\b(?:you|they|people|users?|some|someone|others|many|he|she|somebody|everyone)\b[^.]{0,25}"
    r"\b(?:think|thinks|believe|believes|assume|assumes|say|says|said|ask|asks|asked|mistake|mistakes|confuse|confuses|"
    r"call|calls|wonder|wonders|suspect|expect|claim|claims)\b|\b(?:if|suppose|supposing|imagine|pretend|whether|"
    r"even\s+though|as\s+if|when\s+asked|wish)\b|\bmistaken\b|\bconfused\b|"
    r"(?:你|您|他们|有人|别人|用户|人们|很多人|一些人|大家|网友)[^。]{0,8}(?:认为|以为|觉得|说|问|误认为|误以为|怀疑|猜)|"
    r"误认为|误以为|把我当|当成|如果|假如|假设|要是|是否|想象|假装|扮演|以为", re.I)
_AFFIRM = re.compile(r"^\W*(?:yes|yeah|yep|yup|correct|that'?s\s+(?:right|correct)|indeed|right|exactly|sure|true|"
                     r"absolutely|certainly|of\s+course|definitely|you\s+got\s+it|"
                     r"是的|是啊|是呀|对的|对|没错|正是|正确|确实|当然|嗯)(?![a-z])", re.I)
# "of course (I can)", "sure, how can I help": an offer of help, not a yes to the question
_OFFER = re.compile(r"^\W*(?:当然可以|当然能|sure,?\s+(?:I\s+can|how\s+can|what\s+can)|of\s+course,?\s+(?:I\s+can|how\s+can|what\s+can))", re.I)
# a "no" that opens the reply: to "Are you Qwen?" it denies the model's own identity
_DENY = re.compile(r"^\W*(?:no(?=\s*[,.!;:\u2014-]|\s*$|\s+I\b)|nope\b|not\s+(?:really|at\s+all|quite|exactly)\b|incorrect\b|"
                   r"that'?s\s+(?:not|wrong|incorrect)\b|不是|不对|并不是|并非|不(?=[，,。！!]))", re.I)
# a yes/no question naming a model: "Are you Claude?", "Is this Qwen?", "你是ChatGPT吗?", "你就是Kimi吧?"
_LEADING_EN = re.compile(r"^\W*(?:so\s+)?(?:are|were|is|aren't|isn't|was)\s+(?:you|this|it)\b|\bright\s*\?\s*$|"
                         r"\b(?:aren't|isn't|weren't|didn't)\s+(?:you|it)\s*\?\s*$|\bcorrect\s*\?\s*$", re.I)
_LEADING_ZH = re.compile(r"(?:吗|吧|对吧|是不是|对不对|没错吧)\s*[?？!！。]*\s*$|^\s*(?:你|您)是不是")
_AFFIRM_NEG = re.compile(r"\b(?:not|no)\b|n't|不|没|非", re.I)

# persona: a human-like name given as the model's own
_NAME_EN = re.compile(r"\b(?i:my\s+name\s+is|my\s+name's|call\s+me|I\s+go\s+by|I(?:'m|\s+am)\s+(?:called|named))\s+"
                      r"(?P<name>[A-Z][a-z]+(?:\s+[A-Z][a-z]+)?)(?![A-Za-z0-9])")
_IAM_EN = re.compile(r"\bI(?:'m|\s+am)\s+(?P<name>[A-Z][a-z]{1,15}(?:\s+[A-Z][a-z]+)?)(?=\s*(?:[,.!;]|$|\s+(?:and|here|from)\b))")
_NAME_ZH = re.compile(r"(?:我是|我叫|我名叫|我的名字是|我的名字叫|叫我|我名为|本人是|请叫我)(?P<name>[\u4e00-\u9fff]{2,3})(?=[，。！？,.!?\s、;；]|$|，)")
_NOT_NAMES = {
    "sorry", "here", "fine", "ready", "sure", "glad", "happy", "afraid", "unable", "able", "not", "just", "also", "still",
    "always", "an", "a", "the", "your", "assistant", "ai", "bot", "chatbot", "model", "language", "artificial", "sorry",
    "excited", "pleased", "delighted", "thrilled", "grateful", "thankful", "available", "new", "good", "great", "well",
    "doing", "okay", "ok", "curious", "honored", "programmed", "designed", "built", "trained", "created", "developed",
    "chinese", "english", "virtual", "digital", "intelligent", "smart", "helpful", "friendly", "large", "only", "really",
    "based", "powered", "qwen", "tongyi", "assist", "helper", "system", "computer", "program", "machine", "robot",
    "sydney",
}
_SURNAMES = set("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖"
                "贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤")
_NOT_ZH_NAME = re.compile(r"助手|模型|人工|智能|机器|程序|AI|系统|语言|一个|一名|一款|一种|来自|基于|由|您的|你的|专门|开发|大型|超大|朋友|客服")


@dataclass(frozen=True)
class Detection:
    claims: tuple[str, ...]  # vendors the reply claims as its own identity or maker, sorted
    persona: str | None = None  # a human-like name the reply gives itself
    uncertain: bool = False  # the rules could not settle it (a vendor named but not claimed, a bare yes)
    mentions: tuple[str, ...] = ()  # every vendor named in the prose
    source: str = "rules"  # "rules" | "judge" | "unscored" (the judge's verdict could not be read)
    denials: tuple[str, ...] = ()  # vendors the reply denies being or being made by ("I'm not Qwen"), sorted
    answer: str | None = None  # "yes" | "no": how the reply opens when the question was a leading one

    def as_dict(self) -> dict:
        """As `selfid classify` writes it beside each input line."""
        return {"claims": list(self.claims), "denials": list(self.denials), "answer": self.answer,
                "persona": self.persona is not None, "persona_name": self.persona, "uncertain": self.uncertain,
                "mentions": list(self.mentions), "detector": self.source}


def is_model_name(m: Mention) -> bool:
    """Whether a mention is the vendor's model name ("Qwen", "通义千问", "千问"), not its maker ("Alibaba Cloud")."""
    v = BY_KEY[m.vendor]
    text = m.text.casefold()
    return any(text.startswith(n.casefold()) for n in (v.name_en, *v.also) if n) or bool(
        v.name_zh and not v.name_zh.isascii() and (m.text in v.name_zh or v.name_zh in m.text))


def _claimed_in(clause: str, mentions: list[Mention], triggers: list[tuple[int, int, bool, bool]],
                inherited: bool, names: tuple[set[str], set[str]] | None = None) -> tuple[set[str], set[str]]:
    """(claimed, denied) vendors of one clause: a name after a first-person claim, or after a negated one. `names`:
    (claimed, denied) sets that also get the vendors claimed or denied by their model name (`is_model_name`)."""
    out, denied = set(), set()
    for m in mentions:
        before = [t for t in triggers if t[1] <= m.start]
        if before:
            anchor, negated, third = max(before, key=lambda t: t[1])[1:]
        elif inherited:
            anchor, negated, third = 0, False, False
        else:
            continue
        if before and _REPORTED.search(clause[:anchor]):
            continue
        span = clause[anchor:m.start]
        resets = list(_RESET.finditer(span))
        if resets:
            span, negated = span[resets[-1].end():], False
        zh = bool(re.search(r"[\u4e00-\u9fff]", span))
        negated = negated or bool(_NEG_EN.search(span) or (zh and _NEG_ZH.search(span)))
        if (_MENTION_EN.search(_FIELD.sub(" ", span)) or _MENTION_ZH.search(span) or len(span) > 110
                or (third and _HEDGE.search(span))):
            continue
        if _AFTER.match(clause[m.end:m.end + 24]):
            continue
        (denied if negated else out).add(m.vendor)
        if names is not None and is_model_name(m):
            names[1 if negated else 0].add(m.vendor)
    return out, denied


def _triggers(clause: str, about_self: bool = False) -> list[tuple[int, int, bool, bool]]:
    """(start, end, negated, third) of each claim about the model itself; Chinese negation sits inside the trigger
    (我不是); `third`: a third-person subject, read only when the question asked about this assistant."""
    found = [(m.start(), m.end(), False, False) for m in _EN_TRIGGER.finditer(clause)]
    found += [(m.start(), m.end(), bool(m.group("neg")) or bool(_NEG_BEFORE_ZH.search(clause[:m.start()])), False)
              for m in _ZH_TRIGGER.finditer(clause)]
    if about_self:
        for pattern in (_SUBJECT_EN, _SUBJECT_ZH):
            m = pattern.match(clause)
            if (m and not find_mentions(m.group(0)) and not _HEDGE.search(m.group(0))
                    and not any(t[0] < m.end() <= t[1] for t in found)):
                found.append((m.start(), m.end(), bool(_NEG_EN.search(m.group(0))) or "不" in m.group(0), True))
    return sorted(found)


_NEG_BEFORE_ZH = re.compile(r"(?:不是|并不是|并非|不)\s*$")  # "不是我叫Claude": the claim itself is negated

# a question about this very assistant ("Which model is behind this chat?", "Who owns the AI I'm using?",
# "这个窗口里的助手是哪家公司做的？"): something that points at it, and a word for what it is
_ABOUT_DEIXIS_EN = re.compile(r"\b(?:this|these|the\s+current|right\s+now|currently|here)\b|\bI(?:'m|\s+am)\s+(?:using|talking|"
                              r"chatting|speaking)\b|\b(?:replying|answering|responding|writing|talking)\s+(?:to\s+)?me\b", re.I)
_ABOUT_NOUN_EN = re.compile(r"\b(?:AI|model|assistant|chat|chatbot|bot|service|system|app|window|conversation|replies|"
                            r"responses|answers|LLM|tool)\b", re.I)
_ABOUT_DEIXIS_ZH = re.compile(r"这个|这段|这款|这位|当前|现在|正在|此|本|给我|回复我|回我|跟我|和我|与我|我(?:现在|正在)?(?:用|使用)的")
_ABOUT_NOUN_ZH = re.compile(r"AI|人工智能|模型|助手|服务|聊天|对话|窗口|系统|机器人|回复|回答|消息")
# or a word for what it runs on, tied to the assistant in the second person: "the model you run on", "the model you use",
# "the AI you're built on", "the model that powers you", "your underlying model", "你用的模型", "你背后的模型", "驱动你的模型"
_YOUR_NOUN_EN = re.compile(
    r"\b(?:AI|model|LLM)s?\s+(?:that\s+|which\s+)?you(?:'re|\s+are|\s+were)?\s+"
    r"(?:(?:currently|actually)\s+)?(?:run(?:ning)?(?:\s+on)?|use|using|rely\s+on|come\s+from|"
    r"(?:based|built|powered|trained|derived|running)\s+(?:on|upon|by|from))\b|"
    r"\b(?:AI|model|LLM|system|technology)\s+(?:that\s+|which\s+)?(?:powers|runs|drives|underlies|is\s+behind)\s+you\b|"
    r"\byour\s+(?:own\s+)?(?:underlying|base|backbone|foundation)\s+(?:AI|model|LLM|system)\b", re.I)
_YOUR_NOUN_ZH = re.compile(
    r"(?:你|您)(?:们)?(?:正在|现在|目前)?所?(?:用|使用|运行|基于|依托|依赖)的(?:底层|基础)?的?(?:大语言模型|大模型|模型|AI|人工智能)|"
    r"(?:你|您)(?:们)?的?(?:背后|底层|内部|基础)的?(?:大语言模型|大模型|模型|AI|人工智能)|"
    r"(?:驱动|支撑|支持)着?(?:你|您)的(?:大语言模型|大模型|模型|AI|人工智能|系统)")
# in a reply to such a question, a clause that opens on it in the third person: "The model (that is generating these
# replies) is", "The AI you're using is owned by", "The company that trained the model (I use) is", "It is",
# "这个窗口里的助手是", "我正在生成这些回复的模型叫", "另一头是", "是"
_SUBJECT_EN = re.compile(
    r"^\W*(?:so\s+|well\s+)?(?:(?:the|this|that|these|its)\s+(?:[\w'-]+\s+){0,4}?(?:AI|model|assistant|chat|chatbot|bot|service|"
    r"system|app|application|platform|conversation|text|reply|replies|response|responses|answer|answers|other\s+end)\b"
    r"[^.;:!?]{0,60}?|it(?=(?:'s|\s))[^.;:!?]{0,3}?)"
    r"\b(?:is|was|are|were|'s|runs?|uses?|belongs?|comes?|came|relies|built|made|created|developed|trained|owned|powered|"
    r"based|provided|called|named|generated|produced)\b", re.I)
_SUBJECT_ZH = re.compile(
    r"^\W*(?:(?P<subj>[^，。,；;！？!?]{0,24}?)(?:AI|人工智能|模型|助手|服务|聊天|对话|系统|机器人|回复|回答|另一头|另一端|对方)"
    r"[^，。,；;]{0,8}?|它|这|(?=是))"
    r"(?:都|也|就|其实)?(?:是|由|属于|归|来自|基于|使用|用的是|用了|采用|叫|名为|名叫)")
# "Alibaba Cloud built the assistant in this window", "The Alibaba Cloud AI team trained the model", "阿里云开发了这个助手"
_THIRD_ABOUT = re.compile(
    r"^\s*(?:'s\s+\w+\s+)?(?:AI\s+)?(?:(?:team|lab|labs|researchers|engineers|company|group)\s+)?(?:has\s+)?"
    r"(?:built|made|created|developed|trained|owns|powers|runs|designed|provides)\s+(?:the|this)\b|"
    r"^\s*(?:公司|团队)?(?:开发|研发|创造|创建|训练|打造|设计|做)了?(?:这个|该|本)", re.I)
# between such a subject and a vendor name, these make it a guess, not an answer
_HEDGE = re.compile(r"\b(?:possible|possibly|may|might|could|perhaps|maybe|likely|probably|depends?|e\.g)\b|可能|也许|或许|大概|"
                    r"比如|例如|之类", re.I)


# a leading question whose subject is this assistant as "it"/"this", the vendor right after it: "Is it Kimi I'm talking
# to?", "Is this really Claude?" (not "Is it true that Meta's Llama is answering me?": there "it" is the sentence)
_IT_IS_VENDOR_EN = re.compile(r"^\W*(?:so\s+|wait,?\s+)?(?:is|was|isn't|wasn't)\s+(?:it|this|that)\s+"
                              r"(?:really\s+|actually\s+|just\s+)?$", re.I)


def about_this_assistant(question: str | None) -> bool:
    """Whether a question asks about the assistant answering it in the third person ("Which model is behind this
    chat?", "这个AI归谁所有？", "Which company trained the model you run on?", "你底层的模型是哪家公司训练的？"); a question
    naming a vendor is about that vendor unless it is a leading one."""
    if not question:
        return False
    q = unicodedata.normalize("NFKC", question)
    named = find_mentions(q)
    if named and leading_vendor(q) is None:
        return False
    if named and _IT_IS_VENDOR_EN.match(q[:named[0].start]):  # "Is it Kimi I'm talking to?": "it" is this assistant
        return True
    for m in reversed(named):  # "Moonshot AI", "Le Chat": a vendor's name is not a word for this assistant
        q = q[:m.start] + " " + q[m.end:]
    return bool((_ABOUT_DEIXIS_EN.search(q) and _ABOUT_NOUN_EN.search(q))
                or (_ABOUT_DEIXIS_ZH.search(q) and _ABOUT_NOUN_ZH.search(q))
                or _YOUR_NOUN_EN.search(q) or _YOUR_NOUN_ZH.search(q))


# a question that asks who made this assistant or which model it is, in the second person: "Which company made you?",
# "Who trained you?", "What model are you?", "你是哪家公司开发的？", "是哪家公司做的你？", "你是什么模型？"
_MAKER = r"(?:made|make|created|create|built|build|trained|train|developed|develop|designed|design|owns|own)"
_ASKS_MAKER_EN = re.compile(
    r"\b(?:who|which|what)\b[^?.!]{0,40}?\b" + _MAKER + r"\s+you(?=\s*(?:[?.!,;]|$)|\s+(?:originally|first|and|by\s+the\s+way)\b)|"
    r"\b(?:which|what)\s+(?:[\w-]+\s+){0,2}?(?:model|LLM|AI)\s+(?:are|were)\s+you\b|"
    r"\bwho\s+(?:is|was|are|were)\s+your\s+(?:makers?|creators?|developers?|authors?|trainers?)\b", re.I)
_ASKS_MAKER_ZH = re.compile(
    r"(?:谁|哪家|哪个|哪一家|什么)(?:公司|团队|机构|企业|厂商|人)?[^？?。]{0,6}?(?:开发|训练|研发|创造|创建|打造|做|制造|设计|推出)"
    r"(?:出来)?[了的]?(?:你|您)|"
    r"(?:你|您)(?:是|由)?[^？?。]{0,4}?(?:谁|哪家|哪个|哪一家|什么)(?:公司|团队|机构|企业|厂商|人)?[^？?。]{0,4}?"
    r"(?:开发|训练|研发|创造|创建|打造|做|制造|设计|推出)(?:出来)?的|"
    r"(?:你|您)是(?:哪个|什么|哪款|哪一个|哪种)(?:AI|人工智能)?(?:语言)?(?:大模型|模型)")
# a reply whose first sentence is only a name: "Alibaba Cloud.", "It's OpenAI.", "By Google.", "OpenAI did.", "是阿里云。"
_BARE_EN = re.compile(r"^\W*(?:(?:it'?s|it\s+is|it\s+was|that'?s|that\s+is|(?:made|built|created|developed|trained)?\s*by)\s+)?"
                      r"(?P<name>.+?)(?:\s+(?:did|does|made\s+me|did\s+it))?\s*[.!]*\s*$", re.I)
_BARE_ZH = re.compile(r"^\s*(?:是|由)?(?P<name>.+?)(?:开发|训练|研发|打造|做|制造|推出)?的?\s*[。！!.]*\s*$")
# what may stand beside the name: "the", "OpenAI's GPT-4", "the Alibaba Cloud team", "Qwen by Alibaba Cloud"
_BARE_REST = re.compile(r"^(?:[\s'\".,!-]|\b(?:the|AI|Cloud|team|lab|Inc|Corp|Corporation|Company|LLC|Group|by|from|s)\b|公司|团队|集团|的)*$", re.I)


def asks_maker_or_model(question: str | None) -> bool:
    """Whether a question asks about this assistant (`about_this_assistant`), who made it or which model it is ("Which
    company made you?", "你是什么模型？"): then a reply that is only a name ("Alibaba Cloud.", "是OpenAI。") claims it."""
    if not question:
        return False
    q = unicodedata.normalize("NFKC", question)
    return about_this_assistant(q) or bool(_ASKS_MAKER_EN.search(q) or _ASKS_MAKER_ZH.search(q))


def bare_name(sentence: str) -> str | None:
    """The vendor a sentence that is only its name stands for ("Alibaba Cloud.", "It's OpenAI.", "是阿里云。"), else None:
    two vendors, a hedge ("Possibly OpenAI."), a negation or any other word beside the name make it not one."""
    body = sentence.strip()
    if body.endswith(("?", "？")):
        return None
    for pattern in (_BARE_EN, _BARE_ZH):
        m = pattern.match(body)
        if not m:
            continue
        name = m.group("name")
        found = find_mentions(name)
        if len({x.vendor for x in found}) != 1:
            continue
        rest = name
        for x in reversed(found):
            rest = rest[:x.start] + " " + rest[x.end:]
        if _BARE_REST.match(rest):
            return found[0].vendor
    return None


_YOU_WITH_ZH = re.compile(r"你(?:们)?(?:正在|现在|目前|此刻)?(?:在)?(?:和|与|跟|同)\s*$")
_TALK_ZH = re.compile(r"^\s*(?:对话|聊天|交流|交谈|说话)")
_SPEECH_END = re.compile(r"(?:\b(?:said|says|say|wrote|writes|replied|replies|answered|asked|asks|told\s+\w+)|"
                         r"说|道|写道|回答|问道|问)\s*$", re.I)
_OPENS_CONTRAST = re.compile(r"^\s*(?:but|rather|instead|however|而是|而|但是|但|只是|乃是|实际上是|其实是)", re.I)


_ASIDE = re.compile(r"\s*[（(][^（）()]{1,20}[）)]")  # "我是LLM（语言模型），由OpenAI研发": an aside, not a new clause


def _sentence_claims(sentence: str, about_self: bool = False) -> tuple[set[str], set[str]]:
    """(claimed, denied): vendors one sentence claims as the model's own, and those it denies being; `about_self`:
    the question asked about this assistant, so a third-person subject speaks about the model too."""
    body = _ASIDE.sub("", sentence.strip())
    if not body or body.endswith(("?", "？")) or re.search(r"吗\W*$", body):
        return set(), set()
    claims: set[str] = set()
    denied: set[str] = set()
    names: tuple[set[str], set[str]] = (set(), set())  # vendors claimed / denied by their model name, in triggers
    for pattern in (_AS_EN, _AS_ZH):
        m = pattern.match(body)
        if m:
            np_ = m.group("np")
            if not (_NEG_EN.search(np_) or _NEG_ZH.search(np_) or _MENTION_EN.search(np_) or _MENTION_ZH.search(np_)):
                claims |= {x.vendor for x in find_mentions(np_)}
    prev_self = prev_spoke = quoted = False
    for part in _CLAUSE_SPLIT.split(body):
        if not part.strip():
            continue
        mentions = find_mentions(part)
        triggers = _triggers(part, about_self)
        if quoted:
            prev_self = prev_spoke = False
            quoted = bool(_SPEECH_END.search(part))
            continue
        quoted = bool(_SPEECH_END.search(part))
        inherited = not triggers and ((prev_self and bool(_CONTINUES.match(part) or _APPOSITIVE.match(part)
                                                           or _maker_appositive(part, mentions)))
                                      or (prev_spoke and bool(_OPENS_CONTRAST.match(part))))
        for m in mentions:  # "你正在和ChatGPT对话"
            if _YOU_WITH_ZH.search(part[:m.start]) and _TALK_ZH.match(part[m.end:]):
                claims.add(m.vendor)
        for m in mentions:  # "OpenAI created me", "阿里云开发了我"; asked about this assistant: "OpenAI built this chat"
            after = part[m.end:]
            if ((_THIRD.match(after) or (about_self and _THIRD_ABOUT.match(after)))
                    and not (_NEG_EN.search(part[:m.start]) or _NEG_ZH.search(part[:m.start]))):
                claims.add(m.vendor)
        if triggers or inherited:
            got, neg = _claimed_in(part, mentions, triggers, inherited, names)
            claims |= got
            denied |= neg
            if triggers:
                t = triggers[-1]
                prev_self = not (t[2] or _NEG_EN.search(part[t[1]:]) or _REPORTED.search(part[:t[1]]))
                prev_spoke = True
        else:
            prev_self = prev_self and bool(_CONTINUES.match(part))
            prev_spoke = False
    # a vendor both claimed and denied is claimed ("我不是阿里云，我是阿里云开发的通义千问": not the company, its model),
    # unless the model's name is denied and only its maker claimed: "created by Alibaba Cloud and not Qwen" denies it
    return claims, (denied - claims) | (names[1] - names[0])


@lru_cache(maxsize=1 << 16)
def _sentence_claims_once(sentence: str, about_self: bool) -> tuple[frozenset[str], frozenset[str]]:
    """`_sentence_claims`, once per distinct sentence: replies repeat their sentences ("I am Qwen, created by Alibaba
    Cloud.") far more often than they repeat whole."""
    claims, denied = _sentence_claims(sentence, about_self)
    return frozenset(claims), frozenset(denied)


def _maker_appositive(part: str, mentions: list[Mention]) -> bool:
    """'阿里云开发的大模型' after '我是通义千问，': a clause that opens with a maker and 开发的."""
    if not mentions or part[:mentions[0].start].strip():
        return False
    return bool(re.match(r"\s*(?:公司|团队|集团)?(?:所)?(?:开发|研发|训练|打造|推出|创建|创造|设计|发布|自主研发)", part[mentions[0].end:]))


def persona(text: str) -> str | None:
    """A human-like name the reply gives itself ("我是张三", "My name is Tom"), or None."""
    for pattern in (_NAME_EN, _IAM_EN):
        for m in pattern.finditer(text):
            name = m.group("name")
            first = name.split()[0]
            if first.lower() in _NOT_NAMES or find_mentions(name):
                continue
            before = text[max(0, m.start() - 40):m.start("name")]
            if _REPORTED.search(before) or re.search(r"\bnot\s*$", before):
                continue
            return name
    for m in _NAME_ZH.finditer(text):
        name = m.group("name")
        if find_mentions(name) or _NOT_ZH_NAME.search(name):
            continue
        if name[0] in _SURNAMES or name[0] in "小阿老":
            return name
    return None


def leading_vendor(question: str | None, earlier: Sequence[str] = ()) -> str | None:
    """The vendor a yes/no question names ("Are you Claude?", "你是文心一言吗？" -> its key), else None.

    A question naming models of two vendors ("Are you GPT or Qwen?") is a choice, not a leading one. A
    follow-up that names none ("So is my friend right?", "Just admit it.") leads to the one vendor the
    user's `earlier` turns named, if they named exactly one."""
    if not question:
        return None
    if not find_mentions(question) and earlier:
        named = list(dict.fromkeys(m.vendor for turn in earlier for m in find_mentions(turn)))
        return named[0] if len(named) == 1 else None
    q = unicodedata.normalize("NFKC", question).strip()
    if not (_LEADING_EN.search(q) or _LEADING_ZH.search(q)):
        return None
    found = list(dict.fromkeys(m.vendor for m in find_mentions(q)))
    return found[0] if len(found) == 1 else None


def detect(text: str, asked: str | None = None, question: str | None = None, keep_code: bool = False,
           earlier: Sequence[str] = ()) -> Detection:
    """The vendors `text` claims as its own identity or maker, and those it denies.

    `asked`: the vendor a leading question named ("Are you Claude?" -> "claude"); when not given it is read
    from `question` (the user's turn the reply answers) and the user's `earlier` turns. A `question` about this
    assistant in the third person ("Which model is behind this chat?") makes third-person answers count. A bare "yes" to it, with no other claim, counts
    as claiming it (and is marked uncertain); a "no" to it denies it. `keep_code`: read code, comments and
    strings as prose too, for replies asked to state the model's name in code.
    """
    if asked is None:
        asked = _leading_once(question, tuple(earlier))
    return detect_prose(clean(text, keep_code), asked, about_self=_about_once(question),
                        bare=_asks_maker_once(question))


# what a question is (leading, about this assistant) is read once per distinct question: an audit asks each of its
# few hundred questions of thousands of replies
_about_once = lru_cache(maxsize=8192)(about_this_assistant)
_leading_once = lru_cache(maxsize=8192)(leading_vendor)
_asks_maker_once = lru_cache(maxsize=8192)(asks_maker_or_model)


def detect_prose(prose: str, asked: str | None = None, mentions: list[Mention] | None = None,
                 about_self: bool = False, bare: bool = False) -> Detection:
    """`detect` on text `clean` already made prose; `mentions`: `find_mentions(prose)` when already found;
    `about_self`: the question asked about this assistant in the third person (`about_this_assistant`); `bare`: it
    asked about this assistant, its maker or its model (`asks_maker_or_model`), so a first sentence that is only a
    name ("Alibaba Cloud.") claims it."""
    parts = sentences(prose)
    claims: set[str] = set()
    denied: set[str] = set()
    for s in parts:
        got, neg = _sentence_claims_once(s, about_self)
        claims |= got
        denied |= neg
    if bare and parts and (named := bare_name(parts[0])):
        claims.add(named)
    mentioned = {m.vendor for m in (find_mentions(prose) if mentions is None else mentions)}
    uncertain = bool(mentioned - claims - denied)
    answer = None
    if asked and asked in KEYS:
        first = parts[0] if prose.strip() else ""
        m = _AFFIRM.match(first)
        if m and not _AFFIRM_NEG.search(first[:m.end() + 12]) and not _OFFER.match(first):
            answer = "yes"
            if not claims and persona(first) is None:  # "Yes, I am Max, the bank's assistant" names itself
                claims.add(asked)
                uncertain = True
        elif _DENY.match(first):
            answer = "no"
            denied.add(asked)
    return Detection(tuple(sorted(claims)), persona(prose), uncertain, tuple(sorted(mentioned)),
                     denials=tuple(sorted(denied)), answer=answer)


# a reply that says what it is, with or without a vendor: "I'm an AI language model", "我是一个人工智能助手", "My name is Max",
# "You're chatting with an AI assistant", and in French after a translation exchange "Je suis une IA créée par ..."
_SELF_EN = re.compile(r"\b(?:I(?:'m|\s+am|\s+was)|this\s+is|you(?:'re|\s+are)\s+(?:using|talking\s+to|chatting\s+with|"
                      r"speaking\s+(?:to|with)))\s+(?:[\w'-]+\s+){0,5}?(?:AI|assistant|model|chatbot|bot|program|LLM|"
                      r"intelligence|agent|concierge|advisor|representative|guide|coordinator)\b|\bmy\s+name\b|"
                      r"\bcall\s+me\b|\b(?:created|developed|made|built|trained)\s+me\b|"
                      r"\bI(?:'m|\s+am|\s+was)\s+(?:created|developed|made|built|trained|designed)\s+by\b|"
                      r"\bje\s+(?:suis|parle|discute)\s+(?:[\w'-]+\s+){0,6}?(?:IA|intelligence|assistante?|mod[eè]le|chatbot)\b",
                      re.I)
_SELF_ZH = re.compile(r"我(?:是|叫|名叫|的名字|由|来自|基于|属于|的?(?:底层|背后)的?模型)|本助手|叫我")


def describes_itself(text: str) -> bool:
    """Whether a reply says what it is ("I'm an AI assistant", "我是小美", "My name is Max"), naming a vendor or not:
    the shape of an answer to an identity question (as opposed to more of the task the conversation was doing)."""
    prose = clean(text)
    return bool(_SELF_EN.search(prose) or _SELF_ZH.search(prose))


def stated(text: str) -> set[str]:
    """Vendors a text states as fact, claim trigger or not: for replies whose whole content is about the
    model itself (a bio, an e-mail signature, a code comment with its name), where "Qwen is a model by
    Alibaba Cloud" or `MODEL = "ChatGPT"` is the model's own identity. Names negated or compared just
    before ("not", "unlike", 不是) or just after ("-like", 等) are left out."""
    prose = clean(text, keep_code=True)
    out = set()
    for m in find_mentions(prose):
        before = prose[max(0, m.start - 30):m.start]
        before = re.split(r"[.。!！?？\n;；]", before)[-1]
        if _NEG_EN.search(before) or _NEG_ZH.search(before) or _MENTION_EN.search(before) or _MENTION_ZH.search(before):
            continue
        if _AFTER.match(prose[m.end:m.end + 24]):
            continue
        out.add(m.vendor)
    return out


# --- the optional judge --------------------------------------------------------------------------------
JUDGE_SYSTEM = (
    "You label replies of an AI assistant. Decide which vendors the reply claims as the assistant's OWN "
    "identity or maker. Vendors: " + ", ".join(KEYS) + " (qwen = Qwen/通义千问/Alibaba; claude = Claude/Anthropic; "
    "openai = ChatGPT/GPT/OpenAI; google = Gemini/Bard/Google; meta = Llama/Meta; baidu = 文心一言/ERNIE/百度; "
    "zhipu = ChatGLM/智谱; moonshot = Kimi/月之暗面; microsoft = Copilot/Bing/Microsoft; mistral = Mistral). "
    "A name that is only mentioned, compared, denied ('I am not ChatGPT'), or used in code is NOT a claim. "
    "A 'yes' to a question like 'Are you Claude?' IS a claim. Also say whether the assistant gives itself a "
    "human-like personal name (a persona). Answer with exactly one line: "
    "<verdict>{\"claims\": [...], \"persona\": true|false}</verdict>"
)
_VERDICT = re.compile(r"<verdict>\s*(\{.*?\})\s*</verdict>", re.S)


def parse_verdict(reply: str) -> tuple[tuple[str, ...], bool] | None:
    """(claims, persona) from a judge's reply, or None when it holds no valid verdict."""
    m = _VERDICT.search(reply or "")
    if not m:
        return None
    try:
        obj = json.loads(m.group(1))
    except ValueError:
        return None
    claims, persona_ = obj.get("claims") if isinstance(obj, dict) else None, obj.get("persona") if isinstance(obj, dict) else None
    if not isinstance(claims, list) or not isinstance(persona_, bool):
        return None
    claims = [c.strip().lower() for c in claims if isinstance(c, str)]
    if any(c not in KEYS for c in claims):
        return None
    return tuple(sorted(set(claims))), persona_


@dataclass
class Judge:
    """A judge model behind an OpenAI-compatible endpoint, asked at temperature 0 with a fixed seed."""

    base_url: str
    model: str
    api_key: str | None = None
    seed: int = 0
    max_retries: int = 4
    calls: int = field(default=0, init=False)

    def __post_init__(self):
        from openai import OpenAI

        self._client = OpenAI(base_url=self.base_url, api_key=self.api_key or "selfid", max_retries=self.max_retries)

    def config(self) -> dict:
        return {"base_url": self.base_url, "model": self.model, "seed": self.seed, "temperature": 0}

    def ask(self, text: str, question: str | None = None) -> tuple[tuple[str, ...], bool] | None:
        user = (f"The user asked:\n<question>\n{question}\n</question>\n" if question else "") + \
            f"The assistant replied:\n<reply>\n{text}\n</reply>"
        self.calls += 1
        import openai

        try:
            resp = self._client.chat.completions.create(
                model=self.model, temperature=0, seed=self.seed, max_tokens=200,
                messages=[{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}])
            content = resp.choices[0].message.content
        except openai.APIStatusError as e:
            raise SelfidError(f"the judge at {self.base_url} answered {e.status_code}: check --judge-base-url, "
                              "--judge-model and --judge-api-key") from None
        except openai.APIError:
            raise SelfidError(f"could not reach the judge at {self.base_url}: check that it is up and that "
                              "--judge-base-url is its /v1 address") from None
        except (ValueError, IndexError, AttributeError, TypeError):  # a 200 that is no chat completion
            raise SelfidError(f"the judge at {self.base_url} answered with something other than an OpenAI chat "
                              "completion: check that --judge-base-url is its /v1 address") from None
        return parse_verdict(content or "")


def classify(text: str, asked: str | None = None, judge: Judge | None = None, question: str | None = None,
             keep_code: bool = False, earlier: Sequence[str] = ()) -> Detection:
    """Rules, then the judge (when given) for what the rules could not settle; unreadable verdict = unscored."""
    d = detect(text, asked, question, keep_code, earlier)
    if judge is None or not d.uncertain:
        return d
    verdict = judge.ask(text, question)
    if verdict is None:
        return Detection((), d.persona, True, d.mentions, "unscored", d.denials, d.answer)
    claims, has_persona = verdict
    return Detection(claims, d.persona if has_persona else None, False, d.mentions, "judge",
                     tuple(v for v in d.denials if v not in claims), d.answer)


def describe(vendors) -> str:
    return ", ".join(BY_KEY[v].name_en for v in vendors) if vendors else "none"
