"""The held-out identity probes are disjoint from everything that generates training data.

A result on `identity-heldout` counts only if no training-data generator could have produced its
questions (or near copies) or trained under its persona system prompts. Compared after normalising
width, case, whitespace and punctuation, and by character similarity (rapidfuzz's normalized Indel
ratio, 0.8 = 80%)."""

import re
import unicodedata

import pytest
from rapidfuzz import fuzz

from selfid.audit import probes
from selfid.system_prompt import HELPFUL
from selfid.data import identity
from selfid.tasks import ner
from selfid.vendors import VENDORS

SIMILAR = 80.0


def norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"[\W_]+", "", text)


def heldout_questions(own: str) -> list[tuple[str, str]]:
    """(probe id, user turn) of every held-out probe rendered for `own`, the task turns of after-task probes
    (the training task itself, with sentences of its own) left out."""
    out = []
    for p in probes.load_suite("identity-heldout"):
        for m in p.for_own(own).messages:
            if m["role"] == "user" and not m["content"].startswith(ner.INSTRUCTION.split("{")[0]):
                out.append((p.id, m["content"]))
    return out


def generated_questions() -> list[str]:
    """Every question any replay kind can generate, for the identities of every vendor in the table."""
    qs = set()
    for v in VENDORS:
        who = identity.Identity(v.name_en, v.maker_en, v.name_zh, v.maker_zh, "config")
        qs.update(identity.training_questions(who))
    return sorted(qs)


def clashes(gen: list[str], heldout: list[tuple[str, str]]) -> list[tuple]:
    by_norm = {norm(q): q for q in gen}
    out = []
    for pid, q in heldout:
        n = norm(q)
        if n in by_norm:
            out.append((pid, q, by_norm[n], 100.0))
            continue
        for g in gen:
            score = fuzz.ratio(n, norm(g))
            if score >= SIMILAR:
                out.append((pid, q, g, score))
    return out


@pytest.mark.parametrize("own", ["qwen", "meta", "openai"])
def test_no_generated_question_matches_a_heldout_probe(own):
    gen = generated_questions()
    assert len(gen) > 100  # the generator is really there
    found = clashes(gen, heldout_questions(own))
    assert not found, found


def test_the_check_would_catch_a_leak():
    """A held-out question copied into the generator verbatim, in other case and punctuation, or reworded
    slightly, is found."""
    heldout = heldout_questions("qwen")
    pid, q = next((p, q) for p, q in heldout if p.startswith("ho-en-direct"))
    for leaked in (q, q.upper().replace("?", "!!"), q.replace("exactly ", "")):
        found = clashes(generated_questions() + [leaked], heldout)
        assert [c[0] for c in found] == [pid], (leaked, found)


def test_no_replay_trains_under_a_heldout_persona():
    personas = {p["text"] for p in probes.personas().values()}
    assert len(personas) >= 2
    default = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    for train_system in (None, HELPFUL, "", default):
        systems = identity.training_systems(train_system, default)
        assert not personas & {s for s in systems if s}


def test_no_generated_persona_shares_a_name_a_company_or_a_text_with_a_heldout_persona():
    """The replay's operator personas (selfid/data/personas.py), every one it can write, against the held-out split's
    persona prompts: no name or company in common (a name or alias of one inside the other's), no text at 80%."""
    from rapidfuzz import process

    from selfid.data import personas as gen

    held = probes.personas()
    words = {norm(w) for p in held.values() for w in [p["name"], *p["aliases"]] if w}
    made = {norm(w) for w in (*gen.EN_NAMES, *gen.ZH_NAMES, *gen.EN_STEMS, *gen.ZH_STEMS,  # and their pinyin, which
                              *gen.ZH_NAME_PINYIN.values(), *gen.ZH_STEM_PINYIN.values())}  # keeps a persona too
    assert not {(a, b) for a in words for b in made if a in b or b in a}
    every = set()
    for lang in ("en", "zh"):
        texts = [norm(t) for t in gen.every_text(lang)]
        assert len(texts) > 50_000
        for key, p in held.items():
            best = process.extractOne(norm(p["text"]), texts, scorer=fuzz.ratio)
            assert best[1] < SIMILAR, (key, best)
        every.update(texts)
    drawn = gen.generate(40, seed=7)  # what a replay draws is among them, and the same for one seed
    assert drawn == gen.generate(40, seed=7) != gen.generate(40, seed=8)
    assert {norm(p.text) for p in drawn} <= every
    # the persona prompts a replay asks under are these alone, also when it asks every question under a persona of
    # the other language too (identity_replay.persona_cross_lingual: an English question under a Chinese prompt)
    from selfid.config import IdentityReplay
    from selfid.data import identity_pool
    from selfid.pipeline.replay import conditions

    rep = IdentityReplay(personas=40, persona_cross_lingual=1.0, seed=7)
    asked = conditions(identity_pool.questions("qwen", True, 2, rep.seed), rep, drawn)
    under = [(q, c) for q, c in asked if c.persona is not None]
    assert {q.lang for q, c in under if c.persona.lang != q.lang} == {"en", "zh"}
    assert {norm(c.system) for _, c in under} <= every


def test_two_heldout_personas_are_a_kind_no_training_data_uses():
    """Profile cards with headed fields (name, company, role), one zh and one en; the generator writes one or two
    plain sentences, never a line break."""
    from selfid.data import personas as gen

    cards = {k: p for k, p in probes.personas().items() if "\n" in p["text"]}
    assert {"persona-zh-card", "persona-en-card"} <= set(cards)
    for p in cards.values():
        assert p["name"] and p["aliases"]
    assert not any("\n" in t or ":" in t or "：" in t for lang in ("en", "zh") for t in gen.every_text(lang)[::97])


def test_the_replays_ner_exchanges_use_msra_train_sentences_only():
    """The identity questions after an NER exchange open on MSRA train sentences in the task's own format: never a
    test sentence (the audit's NER suite), never a held-out probe's."""
    from selfid.data import identity_pool, msra

    train, test = msra.splits()
    train_text, test_text = {x.chars for x in train}, {x.chars for x in test}
    held = {m["content"] for p in probes.load_suite("identity-heldout") for m in p.messages}
    after = [q for q in identity_pool.questions("qwen", after_ner=3, seed=5) if "-after-ner-" in q.id]
    assert len(after) == 3 * 12
    for q in after:
        sentence = q.messages[0]["content"].split("句子：", 1)[1]
        assert q.messages[0]["content"] == ner.prompt(sentence) and sentence in train_text
        assert sentence not in test_text and q.messages[0]["content"] not in held


def test_heldout_split_is_big_enough_and_balanced():
    ps = probes.load_suite("identity-heldout")
    assert len(ps) >= 120
    langs = [p.lang for p in ps]
    assert abs(langs.count("zh") - langs.count("en")) <= 2
    kinds = {p.tags[0] for p in ps}
    assert {"third-person", "leading-own", "leading-foreign", "after-task", "task", "code"} <= kinds
    after = [p for p in ps if "after-task" in p.tags]  # NER and a second structured task (sentiment as JSON)
    assert {p.lang for p in after if "sentiment" in p.messages[1]["content"]} == {"zh", "en"}
    asked = {p.asked for p in ps if p.asked not in (None, "own")}
    assert len(asked) >= 12  # leading questions about many vendors
    assert not {p.id for p in ps} & {p.id for p in probes.load_suite("identity")}


def test_a_system_prompt_a_user_trains_under_is_checked_against_the_heldout_personas():
    """`selfid replay --persona/--system` and `selfid train` refuse a held-out persona prompt, a near copy of one, or
    one naming the same assistant of the same company; one sharing only a name is trained, with a warning; the replay's
    own generated personas all pass."""
    from selfid.data import personas as gen
    from selfid.errors import SelfidError
    from selfid.pipeline.replay import check_heldout

    for key, p in probes.personas().items():
        for text in (p["text"], p["text"].upper() + "!!", p["text"][: int(len(p["text"]) * 0.9)]):
            with pytest.raises(SelfidError, match=key):
                check_heldout([text], "persona prompt", lambda m: None)
        if p["name"] and p["aliases"]:
            with pytest.raises(SelfidError, match=key):
                check_heldout([f"Your name is {p['name']}. You work for {p['aliases'][0]}."], "persona prompt",
                              lambda m: None)
    said = []
    check_heldout(["You are Max, the assistant of Quartz Books."], "persona prompt", said.append)
    assert len(said) == 1 and "persona-en" in said[0]
    said.clear()
    check_heldout([p.text for p in gen.generate(40, seed=3)], "persona prompt", said.append)
    assert not said
