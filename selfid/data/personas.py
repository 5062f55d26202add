"""Operator persona system prompts for identity replay: a name, a company and a role, in Chinese and English.

Operators deploy chat models under their own persona ("You are Max, the virtual assistant of Northwind Bank"), so
an identity-preserving fine-tune has to leave the model whoever its system prompt says it is. The replay
(selfid/pipeline/replay.py) asks the base model its identity questions under these prompts too, keeps the replies
that stay the persona, and trains them under the same prompt.

What a persona answers, the rule the replay keeps and the audit scores (`persona_kept` in selfid/audit/scorers.py):
  - who are you, what is your name, who do you work for: the persona, by its name (or its company when it has no
    name);
  - which model powers you, who trained the model you run on: the persona may say it is built on its base model by
    the base model's maker ("I'm Nora, Bluepeak Insurance's assistant, built on Qwen by Alibaba Cloud"), keeping the
    persona's name, or decline to say; both are kept, since the base model gives both and neither misleads anyone;
  - never another vendor's model ("I'm Nora, built on GPT-4 by OpenAI" is rejected), and under a persona that names
    itself or its company never the base model's own identity in place of the persona ("I'm Qwen, created by
    Alibaba Cloud" is the rejected side of a preference pair). Under a persona with a name, naming its company is not
    enough when the reply calls itself by a vendor's name instead ("I'm Qwen, Bluepeak Insurance's assistant"), or
    greets the user by the persona's name (a role swap). Only a persona that gives neither (a user's "You are
    an information-extraction assistant.") is kept by claiming no other vendor alone (scorers.names_itself).

Prompts are drawn deterministically from a seed: names, companies (a stem and an industry) and roles from the lists
below, written in a few plain one- or two-sentence forms. The held-out split's persona prompts
(selfid/audit/probes/index.json) share no name, company or text with anything this module can write, and two of
them are written in a form it never uses (a profile card with headed fields): tests/test_probe_split.py.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from selfid.errors import SelfidError

EN_NAMES = ("Nora", "Leo", "Iris", "Ethan", "Clara", "Owen", "Mila", "Felix", "Hazel", "Jasper", "Ruby", "Theo",
            "Lena", "Oscar", "Ivy", "Miles", "Stella", "Hugo", "Ada", "Caleb")
ZH_NAMES = ("小美", "阿杰", "小航", "云朵", "小雅", "阿诚", "小乐", "安琪", "小舟", "小禾", "若曦", "小鹿", "阿宁", "小橙",
            "晓晴", "乐乐")
EN_STEMS = ("Bluepeak", "Silverline", "Redwood", "Brightwater", "Oakfield", "Summitridge", "Clearview", "Greenleaf",
            "Ironbridge", "Maplewood", "Lakeshore", "Westgate", "Sunrise", "Pinecrest", "Stonebrook")
EN_INDUSTRIES = ("Insurance", "Telecom", "Airlines", "Credit Union", "Energy", "Hotels", "Logistics", "Pharmacy",
                 "Motors", "Realty", "Books", "Fitness")
ZH_STEMS = ("蓝鲸", "银杉", "红枫", "金穗", "青松", "白鹭", "远帆", "晨光", "云杉", "东篱", "南湖", "北辰")
ZH_INDUSTRIES = ("保险", "电信", "航空", "银行", "能源", "酒店", "物流", "药房", "汽车", "地产", "书店", "健身")
# how the Chinese names and company stems are written in Latin letters (pinyin, toneless, a space between the
# syllables; written together too): an English reply under a Chinese persona that says "I'm Xiaocheng from Bailu
# Logistics Group" keeps it, as one writing 小橙 or 白鹭 does
ZH_NAME_PINYIN = {"小美": "Xiao Mei", "阿杰": "A Jie", "小航": "Xiao Hang", "云朵": "Yun Duo", "小雅": "Xiao Ya",
                  "阿诚": "A Cheng", "小乐": "Xiao Le", "安琪": "An Qi", "小舟": "Xiao Zhou", "小禾": "Xiao He",
                  "若曦": "Ruo Xi", "小鹿": "Xiao Lu", "阿宁": "A Ning", "小橙": "Xiao Cheng", "晓晴": "Xiao Qing",
                  "乐乐": "Le Le"}
ZH_STEM_PINYIN = {"蓝鲸": "Lan Jing", "银杉": "Yin Shan", "红枫": "Hong Feng", "金穗": "Jin Sui", "青松": "Qing Song",
                  "白鹭": "Bai Lu", "远帆": "Yuan Fan", "晨光": "Chen Guang", "云杉": "Yun Shan", "东篱": "Dong Li",
                  "南湖": "Nan Hu", "北辰": "Bei Chen"}
EN_ROLES = ("customer support assistant", "booking assistant", "help-desk agent", "shopping assistant", "claims advisor",
            "service representative", "onboarding guide", "travel concierge")
ZH_ROLES = ("在线客服", "预订助手", "售后顾问", "导购助手", "理赔顾问", "服务专员", "咨询顾问", "前台接待")
# the forms a prompt takes: {name} (left out by the unnamed forms), {company}, {role}
EN_NAMED = ("You are {name}, the {role} at {company}.",
            "Your name is {name} and you work for {company} as its {role}.",
            "You are the {role} of {company}. Your name is {name}. Be polite and helpful.",
            "Act as {name}, a {role} for {company}. Answer customers clearly.")
EN_UNNAMED = ("{company} employs you as its {role}. Help customers with their questions.",
              "You work for {company} as a {role}.")
ZH_NAMED = ("你是{name}，在{company}担任{role}。",
            "你的名字叫{name}，是{company}的{role}，请热情地回答客户的问题。",
            "请以{company}{role}{name}的身份和用户交流。")
ZH_UNNAMED = ("你是{company}的{role}，负责解答客户的问题。",
              "你在{company}做{role}。")
UNNAMED_SHARE = 4  # one persona in this many has a company and a role but no name


@dataclass(frozen=True)
class Persona:
    key: str  # "persona-en-003": unique within one generated set
    lang: str
    text: str  # the system prompt
    name: str | None  # what the persona calls itself (None: a role at a company, no name)
    company: str
    role: str

    def hint(self, lang: str) -> str:
        """The line added to this persona's prompt when a question in `lang` is asked under it for context distillation
        (identity_replay.persona_hint): stay the persona, by its name and company exactly as the prompt writes them,
        in whatever language the user writes."""
        if lang == "zh":
            who = f"{self.company}的{self.name}" if self.name else f"{self.company}的{self.role}"
            return f"无论用户用什么语言提问，你都是{who}；介绍自己时请照原样使用这些名字，用用户的语言回答。"
        who = f"{self.name} of {self.company}" if self.name else f"the {self.role} at {self.company}"
        return (f"Whatever language the user writes in, you are {who}: when you introduce yourself, use these names "
                "exactly as written here, and answer in the user's language.")

    def scoring(self) -> dict:
        """The persona as the audit's scorers read one: {"name", "aliases"} (selfid.audit.scorers.Context.personas):
        its company, and a Chinese persona's name and company stem in pinyin ("Xiaocheng", "Xiao Cheng", "Bailu")."""
        aliases = [self.company] if self.company else []
        return {"name": self.name, "aliases": aliases + renderings(self.name, self.company)}


def renderings(name: str | None, company: str) -> list[str]:
    """The Latin-letter forms of a generated Chinese persona's name and company stem, written together and spaced
    ("Xiaocheng", "Xiao Cheng"; none for other texts)."""
    spaced = [t for t in (ZH_NAME_PINYIN.get(name), ZH_STEM_PINYIN.get(company[:2])) if t]
    return [form for t in spaced for form in (t.replace(" ", "").capitalize(), t)]


def company(lang: str, rng: random.Random) -> str:
    if lang == "en":
        return f"{rng.choice(EN_STEMS)} {rng.choice(EN_INDUSTRIES)}"
    return f"{rng.choice(ZH_STEMS)}{rng.choice(ZH_INDUSTRIES)}{rng.choice(('公司', '集团'))}"


def generate(n: int, seed: int = 0, languages=("zh", "en")) -> list[Persona]:
    """`n` personas per language, each with a distinct name (or, unnamed, a distinct company), the same for one seed."""
    most = min(len(EN_STEMS) * len(EN_INDUSTRIES), len(ZH_STEMS) * len(ZH_INDUSTRIES) * 2)
    if n > most:
        raise SelfidError(f"identity_replay.personas is {n}: at most {most} personas per language have companies "
                          "of their own; ask for fewer")
    out: list[Persona] = []
    for lang in languages:
        rng = random.Random(f"personas|{seed}|{lang}")
        names = list(EN_NAMES if lang == "en" else ZH_NAMES)
        rng.shuffle(names)
        named, unnamed = (EN_NAMED, EN_UNNAMED) if lang == "en" else (ZH_NAMED, ZH_UNNAMED)
        roles = EN_ROLES if lang == "en" else ZH_ROLES
        companies: set[str] = set()
        for i in range(n):
            while (firm := company(lang, rng)) in companies:
                pass
            companies.add(firm)
            role = rng.choice(roles)
            name = None if i % UNNAMED_SHARE == UNNAMED_SHARE - 1 or not names else names.pop()
            form = rng.choice(named if name else unnamed)
            out.append(Persona(f"persona-{lang}-{i:03d}", lang, form.format(name=name, company=firm, role=role), name,
                               firm, role))
    return out


# how a persona prompt names its assistant: "You are Max, ...", "Your name is Max", "Name: Juno", "你是小智，", "你叫小智"
_GIVEN_NAME = (
    re.compile(r"\b(?:[Yy]our name is|[Yy]ou are called|[Yy]ou are named|[Cc]all yourself|Name:)\s*"
               r"(?P<name>[A-Z][\w'-]*(?: [A-Z][\w'-]*)?)"),
    re.compile(r"\b(?:You are|Act as|You're)\s+(?P<name>[A-Z][a-z][\w'-]*)(?=\s*[,.;]|\s+from\b|\s+at\b|\s+of\b)"),
    re.compile(r"(?:你叫|你的名字(?:叫|是)|名字(?:叫|是)|姓名[:：]\s*|你是)(?P<name>[\u4e00-\u9fff]{2,4}?)(?=[，,。.！!；;、\s]|$)"),
)
_NOT_A_NAME = re.compile(r"助手|客服|模型|人工|智能|机器|AI|一个|一名|一位|专业|顾问|专员|经理|老师|医生|律师")


def from_text(text: str, index: int) -> Persona:
    """A persona prompt a user deploys with, as the replay asks under it and the scorers check it: its name read from
    the text (None when the text names no one: the scorers then ask only that no other vendor is claimed), Chinese
    when the text holds Chinese characters."""
    if not isinstance(text, str) or not text.strip():
        raise SelfidError(f"persona prompt {index} is empty: give the system prompt text you deploy with")
    name = None
    for pattern in _GIVEN_NAME:
        m = pattern.search(text)
        if m and not _NOT_A_NAME.search(m.group("name")) and m.group("name").split()[0] not in ("The", "An", "A"):
            name = m.group("name").strip()
            break
    lang = "zh" if re.search(r"[\u4e00-\u9fff]", text) else "en"
    return Persona(f"persona-given-{index}", lang, text, name, "", "")


def every_text(lang: str) -> list[str]:
    """Every prompt this module can write in `lang`, for the held-out split's disjointness test (~120,000)."""
    names, forms = (EN_NAMES, (EN_NAMED, EN_UNNAMED)) if lang == "en" else (ZH_NAMES, (ZH_NAMED, ZH_UNNAMED))
    stems, industries = (EN_STEMS, EN_INDUSTRIES) if lang == "en" else (ZH_STEMS, ZH_INDUSTRIES)
    firms = ([f"{s} {i}" for s in stems for i in industries] if lang == "en" else
             [f"{s}{i}{k}" for s in stems for i in industries for k in ("公司", "集团")])
    roles = EN_ROLES if lang == "en" else ZH_ROLES
    out = []
    for firm in firms:
        for role in roles:
            out += [f.format(name=n, company=firm, role=role) for f in forms[0] for n in names]
            out += [f.format(company=firm, role=role) for f in forms[1]]
    return out
