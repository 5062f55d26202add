"""find_mentions skips the regex of a vendor none of whose aliases' leading literals occur in the text: it must find
exactly what running every regex finds, on every text."""

import itertools
import json
import random
import re
import sys
from pathlib import Path

import pytest

from selfid.data import identity_pool
from selfid.data.identity import Identity, conversations
from selfid.vendors import VENDORS, _fold, _screen, alias_patterns, find_mentions, literal_prefix

if sys.version_info >= (3, 11):
    from re import _parser as regex_parser
else:
    import sre_parse as regex_parser

PROBES = Path(__file__).parent.parent / "selfid" / "audit" / "probes"
FRAGMENTS = [(f, False) for v in VENDORS for f in v.names] + [(f, True) for v in VENDORS for f in v.cased]
# characters that re.IGNORECASE matches to ASCII letters although they are not ASCII, and their neighbours in trouble
TRICKY = ["\u017f", "\u212a", "\u0130", "\u0131", "\u00df", "\u0307", "\uff31", "\uff57", "\u03a3", "\ufb01", "K", "S"]
NEIGHBOURS = ["", " ", "x", "Q", "7", "的", ",", "-", "_", ".", "\u3000"]


def reference(text):
    """find_mentions before the literal screen: every pattern, longest first where two overlap, by position."""
    found = [(key, m.start(), m.end(), m.group(0)) for pattern, key in alias_patterns()
             for m in pattern.finditer(text) if m.end() > m.start()]
    found.sort(key=lambda m: (m[1], -(m[2] - m[1])))
    out = []
    for m in found:
        if not out or m[1] >= out[-1][2]:
            out.append(m)
    return out


def same(text):
    return [(m.vendor, m.start, m.end, m.text) for m in find_mentions(text)] == reference(text)


def spellings(node):
    """Every way to spell a parsed alias, one character standing for each class (hypothesis's from_regex only samples)."""
    if isinstance(node, (list, regex_parser.SubPattern)):
        return {"".join(p) for p in itertools.product(*(spellings(item) for item in node))}
    op, arg = node
    if op is regex_parser.LITERAL:
        return {chr(arg)}
    if op is regex_parser.SUBPATTERN:
        return spellings(arg[-1])
    if op is regex_parser.BRANCH:
        return set().union(*(spellings(b) for b in arg[1]))
    if op is regex_parser.MAX_REPEAT:
        low, high, sub = arg
        one = sorted(spellings(sub))
        return {"".join(p) for n in {low, min(low + 1, high), min(2, high)} for p in itertools.product(one, repeat=n)}
    if op is regex_parser.IN:
        kind, value = arg[0]
        if kind is regex_parser.LITERAL:
            return {chr(value)}
        if kind is regex_parser.RANGE:
            return {chr(value[0]), chr(value[1])}
        if kind is regex_parser.CATEGORY:
            return {regex_parser.CATEGORY_DIGIT: {"4"}, regex_parser.CATEGORY_SPACE: {" ", "\u3000"}}[value]
    raise AssertionError(f"no spelling for {node}")


SPELLINGS = sorted({s for f, _ in FRAGMENTS for s in spellings(regex_parser.parse(f))})


def casings(s):
    return {s, s.lower(), s.upper(), s.title(), s.swapcase(), "".join(c.upper() if i % 2 else c for i, c in enumerate(s))}


def test_every_alias_spelling_in_every_casing_between_any_neighbours_is_found_as_before():
    assert len(SPELLINGS) > 150 and "gpt-4.4z" in SPELLINGS and "Le Chat" in SPELLINGS
    sides = list(zip(NEIGHBOURS, NEIGHBOURS[3:] + NEIGHBOURS[:3]))
    wrong = [left + c + right for s in SPELLINGS for c in casings(s) for left, right in sides if not same(left + c + right)]
    assert wrong == []
    assert [m.vendor for m in find_mentions("xQwen Qwen7 的Qwen的 GPT-4o, Meta AI")] == ["qwen", "qwen", "openai", "meta"]


@pytest.mark.parametrize("text, vendors", [
    ("\u0130BM", ["ibm"]),  # re.IGNORECASE: 'İ' is 'i', though casefold makes it 'i' + U+0307
    ("\u017f\u0131r\u0131", ["apple"]),  # 'ſ' is 's' and dotless 'ı' is 'i' to re.IGNORECASE
    ("\u212aimi 2 and \u212aIMI", []),  # the Kelvin sign is 'k' to re.IGNORECASE, but "Kimi" is matched in exact case
    ("Cohere and \u017fIRI", ["cohere", "apple"]),
    ("gro\u212a, \u0130FLYTE\u212a", ["xai", "iflytek"]),
    ("GROSS und gro\u00df, Alibaba Stra\u00dfe", ["qwen"]),  # casefold makes 'ß' "ss": more to screen, nothing lost
    ("\uff31\uff57\uff45\uff4e and \uff27\uff30\uff34", []),  # full-width letters are not ASCII to re
    ("\ufb01 \u03a3 \u1e9b", []),
])
def test_unicode_that_re_ignorecase_folds_its_own_way_is_found_as_before(text, vendors):
    assert same(text)
    assert [m.vendor for m in find_mentions(text)] == vendors


def test_the_fold_agrees_with_re_ignorecase_on_every_code_point_for_every_literal_character():
    every = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c < 0xE000)
    chars = {ch for f, cased in FRAGMENTS if not cased for ch in literal_prefix(f)}
    assert {"i", "s", "k", "通"} <= chars
    candidates = set(re.findall("[" + "".join(map(re.escape, chars)) + "]", every, re.I))
    assert {"\u0130", "\u0131", "\u017f", "\u212a"} <= candidates
    for ch in chars:
        matched = {c for c in candidates if re.fullmatch(re.escape(ch), c, re.I)}
        assert {_fold(c) for c in matched} == {_fold(ch)} and len(_fold(ch)) == 1, ch


def shipped_texts():
    texts = [m["content"] for f in sorted(PROBES.glob("*.jsonl")) for line in f.read_text(encoding="utf-8").splitlines()
             if line.strip() for m in json.loads(line)["messages"]]
    texts += [m["content"] for own in ("qwen", "openai", "") for q in identity_pool.questions(own) for m in q.messages]
    texts += [t for pair in conversations(Identity("Qwen", "Alibaba Cloud", "通义千问", "阿里云", "config")) for t in pair]
    return texts


def test_the_shipped_probes_and_identity_questions_are_found_as_before():
    texts = shipped_texts()
    assert len(texts) > 500 and sum(bool(find_mentions(t)) for t in texts) > 100
    assert [t for t in texts if not same(t)] == []


def test_random_strings_of_alias_pieces_and_separators_are_found_as_before():
    rng = random.Random(13)
    pieces = SPELLINGS + [s[: len(s) // 2] for s in SPELLINGS] + [s[len(s) // 2:] for s in SPELLINGS]
    glue = NEIGHBOURS + TRICKY + ["AI", "ai", "\n", "  ", "3.5", "V"]
    texts = []
    for _ in range(3000):
        parts = [rng.choice(pieces if rng.random() < 0.6 else glue) for _ in range(rng.randint(1, 8))]
        texts.append("".join(p.upper() if rng.random() < 0.2 else p for p in parts))
    assert sum(bool(find_mentions(t)) for t in texts) > 1000
    assert [t for t in texts if not same(t)] == []


@pytest.mark.parametrize("fragment", [r"\w+", r"(?i:qwen)", r"[Qq]wen", r"qwen|gpt", r"q*wen", r"\bqwen"])
def test_an_alias_that_does_not_begin_with_a_literal_is_refused_with_the_reason(fragment):
    with pytest.raises(ValueError, match="must begin with a literal character"):
        literal_prefix(fragment)


@pytest.mark.parametrize("fragment, prefix", [
    (r"tongyi(?:\s*qianwen)?", "tongyi"), (r"open\s?ai", "open"), (r"01\.ai", "01.ai"), ("Phi-\\d", "Phi-"),
    (r"gpt(?:-?\d(?:\.\d)?[a-z]?)?", "gpt"), (r"watson(?:x)?", "watson"), ("gpt?", "gp"), ("通义千问", "通义千问"),
])
def test_the_literal_prefix_stops_where_the_regex_stops_being_literal(fragment, prefix):
    assert literal_prefix(fragment) == prefix


def test_a_case_insensitive_alias_in_a_cased_script_beyond_ascii_is_refused():
    with pytest.raises(ValueError, match="cased letter outside ASCII"):
        _screen(("\u044f\u043d\u0434\u0435\u043a\u0441",), True)
    assert _screen(("\u044f\u043d\u0434\u0435\u043a\u0441",), False) == ["\u044f\u043d\u0434\u0435\u043a\u0441"]
