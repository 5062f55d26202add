"""The NER task: BIO spans, the answer format, the tolerant parser, entity-level scores, MSRA splits."""

import pytest

from selfid.data import msra
from selfid.errors import SelfidError
from selfid.tasks import ner


def test_bio_spans_unique_in_order_and_lenient_on_stray_inside_tags():
    chars = "张三在北京见了李四和张三。新华社"
    tags = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "O", "B-PER", "I-PER", "O", "B-PER", "I-PER", "O",
            "I-ORG", "I-ORG", "I-ORG"]
    assert ner.entities_from_bio(chars, tags) == {"PER": ["张三", "李四"], "LOC": ["北京"], "ORG": ["新华社"]}


def test_adjacent_entities_of_different_types_split():
    assert ner.entities_from_bio("中国人民", ["B-LOC", "I-LOC", "I-PER", "I-PER"]) == {
        "PER": ["人民"], "LOC": ["中国"], "ORG": []}


def test_answer_round_trips_through_parse():
    ents = {"PER": ["赵金宝"], "LOC": [], "ORG": ["新华社"]}
    assert ner.parse(ner.answer(ents)) == ents
    assert ner.answer({"LOC": ["北京"]}) == '{"PER": [], "LOC": ["北京"], "ORG": []}'


@pytest.mark.parametrize("reply, want", [
    ('好的：```json\n{"PER": ["李四"], "LOC": []}\n```', {"PER": ["李四"], "LOC": [], "ORG": []}),
    ('结果是 {"ORG": "新华社"} 以上', {"PER": [], "LOC": [], "ORG": ["新华社"]}),
    ('{"PER": [" 王五 ", "", 3]}', {"PER": ["王五"], "LOC": [], "ORG": []}),
    ("我不知道", None),
    ('{"PER": ["unterminated"', None),
    ('{"name": "x"}', None),
    ('{"PER": {"a": 1}}', None),
])
def test_parse_is_tolerant_but_not_credulous(reply, want):
    assert ner.parse(reply) == want


def test_scores_count_pairs_and_unparseable_replies_as_misses():
    s = ner.NerScore()
    s.add({"PER": ["张三"], "LOC": ["北京"], "ORG": []}, '{"PER": ["张三"], "LOC": ["上海"], "ORG": []}')
    s.add({"PER": [], "LOC": [], "ORG": ["新华社"]}, "no json here")
    out = s.summary()
    assert out["n"] == 2 and out["parse_rate"] == 0.5
    o = out["overall"]
    assert (o["tp"], o["fp"], o["fn"]) == (1, 1, 2)
    assert o["precision"] == pytest.approx(0.5) and o["recall"] == pytest.approx(1 / 3)
    assert o["f1"] == pytest.approx(0.4)
    assert out["per_type"]["PER"]["f1"] == 1.0 and out["per_type"]["ORG"]["recall"] == 0.0


def test_msra_splits_are_disjoint_and_deduplicated():
    train, test = msra.splits()
    assert 50_000 < len(train) <= 50_658 and 4_000 < len(test) <= 55_289 - 50_658
    assert not {s.chars for s in train} & {s.chars for s in test}
    assert len({s.chars for s in train}) == len(train)


def test_load_draws_a_seeded_sample():
    a = msra.load("train", 20, seed=1)
    assert a == msra.load("train", 20, seed=1) and a != msra.load("train", 20, seed=2)
    assert all(len(s.chars) <= 30 for s in msra.load("test", 50, max_chars=30))
    with pytest.raises(SelfidError, match="unknown MSRA split"):
        msra.load("dev")


def test_bad_bio_line_names_file_and_line(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_text("张\tB-PER\n三\tI-PER\n\n北 B-LOC\n", encoding="utf-8")
    with pytest.raises(SelfidError, match=r"bad.txt:4: expected one character, a tab and a BIO tag"):
        msra.read_bio(f)


def test_prompt_holds_the_sentence_and_the_literal_json_format():
    from selfid.tasks.ner import messages, prompt

    p = prompt("新华社北京电")
    assert p.endswith("句子：新华社北京电") and '{"PER": [...], "LOC": [...], "ORG": [...]}' in p
    assert messages("张三", system="")[0] == {"role": "system", "content": ""}
