"""The vendors a chat model may claim as its own identity or maker, and the names that point to each.

One table serves the claim detector (aliases), the identity margin (a canonical name and maker per
language), `selfid scan` (mentions) and the generated identity training data (the foreign identities
it denies). Latin aliases match as whole words; those that are also
ordinary words ("Meta", "Bing", "Kimi", "Phi-3") match only with the vendor's own capitalisation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

try:  # the regex engine's own parser: Python 3.11+ names it re._parser
    from re import _parser as _regex_parser
except ImportError:  # Python 3.10
    import sre_parse as _regex_parser


@dataclass(frozen=True)
class Vendor:
    key: str
    names: tuple[str, ...]  # case-insensitive aliases (regex fragments)
    cased: tuple[str, ...] = ()  # aliases matched only with this exact capitalisation
    name_en: str = ""  # what the model would call itself ("I am Qwen")
    name_zh: str = ""  # ("我是通义千问")
    maker_en: str = ""  # ("I was created by Alibaba Cloud")
    maker_zh: str = ""  # ("我是由阿里云开发的")
    also: tuple[str, ...] = ()  # other model names users ask about ("Are you GPT-4?"), for generated training data


VENDORS: tuple[Vendor, ...] = (
    Vendor("qwen", (r"qwen", r"tongyi(?:\s*qianwen)?", r"alibaba(?:\s+(?:cloud|group))?", r"aliyun", r"damo\s+academy",
                    "通义千问", "通义", "千问", "阿里巴巴", "阿里云", "阿里", "达摩院"), ("DAMO",),
           "Qwen", "通义千问", "Alibaba Cloud", "阿里云"),
    Vendor("claude", (r"claude", r"anthropic", "克劳德"), (), "Claude", "Claude", "Anthropic", "Anthropic"),
    Vendor("openai", (r"open\s?ai", r"chat\s?gpt", r"instructgpt", r"gpt(?:-?\d(?:\.\d)?[a-z]?)?"), (),
           "ChatGPT", "ChatGPT", "OpenAI", "OpenAI", ("GPT-4",)),
    Vendor("google", (r"google", r"deepmind", r"gemini", r"gemma", "谷歌"), ("Bard", "PaLM", "LaMDA", "PALM"),
           "Gemini", "Gemini", "Google", "谷歌"),
    Vendor("meta", (r"facebook", r"llama(?:\s?\d(?:\.\d)?)?", "脸书"), ("Meta", "META", "Meta AI"),
           "Llama", "Llama", "Meta", "Meta"),
    Vendor("deepseek", (r"deep\s?seek", "深度求索"), (), "DeepSeek", "DeepSeek", "DeepSeek", "深度求索"),
    Vendor("baidu", (r"baidu", r"ernie(?:\s+bot)?", "文心一言", "文心", "百度"), (), "ERNIE Bot", "文心一言", "Baidu", "百度"),
    Vendor("zhipu", (r"zhipu(?:\s*ai)?", r"chatglm\d?", "智谱清言", "智谱"), ("GLM",), "ChatGLM", "智谱清言", "Zhipu AI", "智谱"),
    Vendor("moonshot", (r"moonshot(?:\s*ai)?", "月之暗面"), ("Kimi", "KIMI"), "Kimi", "Kimi", "Moonshot AI", "月之暗面"),
    Vendor("microsoft", (r"microsoft", r"copilot", r"xiaoice", r"cortana", "微软", "必应", "小冰"), ("Bing", "Phi-\\d"),
           "Copilot", "Copilot", "Microsoft", "微软"),
    Vendor("mistral", (r"mistral(?:\s+ai)?", r"mixtral"), ("Le Chat",), "Mistral", "Mistral", "Mistral AI", "Mistral AI"),
    Vendor("amazon", (r"amazon(?:\s+(?:web\s+services|nova|titan|q))?", r"alexa", "亚马逊"), ("AWS",),
           "Alexa", "Alexa", "Amazon", "亚马逊"),
    Vendor("apple", (r"siri", r"apple\s+intelligence", "苹果公司"), ("Apple",), "Siri", "Siri", "Apple", "苹果公司"),
    Vendor("ibm", (r"ibm", r"watson(?:x)?", r"granite\s+\d"), (), "Watson", "Watson", "IBM", "IBM"),
    Vendor("tencent", (r"tencent", r"hunyuan", "腾讯混元", "混元", "腾讯"), (), "Hunyuan", "混元", "Tencent", "腾讯"),
    Vendor("bytedance", (r"bytedance", r"doubao", "字节跳动", "豆包", "云雀"), (), "Doubao", "豆包", "ByteDance", "字节跳动"),
    Vendor("xai", (r"grok(?:-?\d)?",), ("xAI", "XAI"), "Grok", "Grok", "xAI", "xAI"),
    Vendor("iflytek", (r"iflytek", r"spark\s?desk", "讯飞星火", "讯飞", "星火认知"), (), "iFlytek Spark", "讯飞星火",
           "iFlytek", "科大讯飞"),
    Vendor("baichuan", (r"baichuan", "百川智能", "百川"), (), "Baichuan", "百川", "Baichuan AI", "百川智能"),
    Vendor("minimax", (r"minimax", "海螺AI", "海螺"), (), "MiniMax", "海螺AI", "MiniMax", "MiniMax"),
    Vendor("01ai", (r"01\.ai", "零一万物"), (r"Yi-\d", "Yi-Large", "Yi-Lightning"), "Yi", "Yi", "01.AI", "零一万物"),
    Vendor("cohere", (r"cohere", r"command\s+r\+?"), (), "Command R", "Command R", "Cohere", "Cohere"),
)
KEYS: tuple[str, ...] = tuple(v.key for v in VENDORS)
BY_KEY = {v.key: v for v in VENDORS}

# model_type values in transformers configs, and words in model names, that say whose model it is
_FAMILY = {"qwen": "qwen", "llama": "meta", "mistral": "mistral", "mixtral": "mistral", "gemma": "google",
           "phi": "microsoft", "deepseek": "deepseek", "glm": "zhipu", "chatglm": "zhipu", "ernie": "baidu",
           "kimi": "moonshot", "claude": "claude", "gpt": "openai", "granite": "ibm", "hunyuan": "tencent",
           "baichuan": "baichuan", "minimax": "minimax", "yi": "01ai", "command-r": "cohere", "grok": "xai"}


def _latin(fragment: str) -> bool:
    return fragment.isascii()


def _wrap(fragment: str) -> str:
    # whole words for Latin names; CJK names have no word boundaries
    return rf"(?<![A-Za-z0-9]){fragment}(?![A-Za-z])" if _latin(fragment) else fragment


def _alias_groups():
    """(vendor key, alias fragments, whether case-insensitive) for each pattern of alias_patterns(), in its order."""
    for v in VENDORS:
        yield v.key, v.names, True
        if v.cased:
            yield v.key, v.cased, False


@lru_cache(maxsize=1)
def alias_patterns() -> tuple[tuple[re.Pattern, str], ...]:
    return tuple((re.compile("|".join(_wrap(f) for f in fragments), re.I if ignore_case else 0), key)
                 for key, fragments, ignore_case in _alias_groups())


def literal_prefix(fragment: str) -> str:
    """The literal characters every match of the regex `fragment` begins with (r"open\\s?ai" -> "open")."""
    prefix = ""
    for op, arg in _regex_parser.parse(fragment):
        if op is not _regex_parser.LITERAL:
            break
        prefix += chr(arg)
    if not prefix:
        raise ValueError(f"vendor alias {fragment!r} must begin with a literal character (not a group, class, "
                         "alternation or repeat), so that find_mentions can skip texts that lack it")
    return prefix


# re.IGNORECASE matches 'İ' (U+0130) and 'ı' (U+0131) to 'i', but casefold makes them 'i' + U+0307 and 'ı'; 'ſ' (U+017F)
# and the Kelvin sign (U+212A) it folds to 's' and 'k' as re does. tests/test_vendors.py checks every code point.
_AS_IGNORECASE = str.maketrans({"\u0130": "i", "\u0131": "i"})


def _fold(text: str) -> str:
    """`text` with each character that re.IGNORECASE matches to an ASCII letter turned into that letter, lowercase."""
    if "\u0130" in text or "\u0131" in text:
        text = text.translate(_AS_IGNORECASE)
    return text.casefold()


def _screen(fragments: tuple[str, ...], ignore_case: bool) -> list[str]:
    """Literals of which every match of one of `fragments` contains at least one (folded when `ignore_case`)."""
    out = []
    for fragment in fragments:
        prefix = literal_prefix(fragment)
        if ignore_case:
            if not all(ch.isascii() or ch.lower() == ch.upper() == ch.casefold() == ch for ch in prefix):
                raise ValueError(f"case-insensitive vendor alias {fragment!r} begins with a cased letter outside ASCII, "
                                 "which _fold may not fold as re.IGNORECASE does: list it in `cased`, or extend _fold")
            prefix = _fold(prefix)
        out.append(prefix)
    # one literal inside another only repeats the check ("通义" covers "通义千问")
    return list(dict.fromkeys(p for p in out if not any(q != p and q in p for q in out)))


def _screens() -> tuple[tuple[tuple[str, int], ...], ...]:
    """(literal, index into alias_patterns()) for the folded literals in Latin letters, the other folded ones and the
    exact-case ones: a pattern can match only where one of its literals occurs."""
    latin, other, exact = [], [], []
    for i, (_, fragments, ignore_case) in enumerate(_alias_groups()):
        for lit in _screen(fragments, ignore_case):
            (exact if not ignore_case else latin if lit.isascii() else other).append((lit, i))
    return tuple(latin), tuple(other), tuple(exact)


_LATIN, _OTHER, _EXACT = _screens()  # at import, so that an alias that does not begin with a literal fails at once


@dataclass(frozen=True)
class Mention:
    vendor: str
    start: int
    end: int
    text: str


def find_mentions(text: str) -> list[Mention]:
    """Every vendor name in `text`, longest first where two overlap, in order of position."""
    return list(_mentions_once(text))


@lru_cache(maxsize=1 << 16)
def _mentions_once(text: str) -> tuple[Mention, ...]:
    """find_mentions, once per distinct text: an audit's scoring asks it of the same clauses and names again and
    again (Mentions are frozen, so the tuple can be shared)."""
    folded = _fold(text)
    run = {i for lit, i in _LATIN if lit in folded}
    if not text.isascii():
        run.update(i for lit, i in _OTHER if lit in folded)
    run.update(i for lit, i in _EXACT if lit in text)
    patterns = alias_patterns()
    found = []
    for i in sorted(run):  # in the order of alias_patterns(), which the stable sort below keeps for equal spans
        pattern, key = patterns[i]
        for m in pattern.finditer(text):
            if m.end() > m.start():
                found.append(Mention(key, m.start(), m.end(), m.group(0)))
    found.sort(key=lambda m: (m.start, -(m.end - m.start)))
    out: list[Mention] = []
    for m in found:
        if out and m.start < out[-1].end:
            continue
        out.append(m)
    return tuple(out)


def vendor_of(*names: str) -> str | None:
    """The vendor a model name or config model_type points to ("Qwen2.5-7B-Instruct" -> qwen), or None."""
    for name in names:
        if not name:
            continue
        low = name.lower()
        for word, key in _FAMILY.items():
            if re.search(rf"(?<![a-z]){word}", low):
                return key
        ms = find_mentions(name)
        if ms:
            return ms[0].vendor
    return None
