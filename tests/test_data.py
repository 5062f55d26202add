"""Data readers (alpaca, messages, sharegpt), the MSRA source, identity conversations, mixing."""

import json

import pytest

from selfid.data import identity
from selfid.data.mix import mix
from selfid.data.readers import read_file
from selfid.data.sources import msra_samples
from selfid.errors import SelfidError


def jsonl(tmp_path, records, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records) + "\n")
    return p


def test_alpaca_jsonl_and_json_array(tmp_path):
    recs = [{"instruction": "Add", "input": "1+1", "output": "2", "system": "Be terse."},
            {"instruction": "Again", "output": "ok", "history": [["hi", "hello"]]}]
    for path in (jsonl(tmp_path, recs), tmp_path / "d.json"):
        if path.suffix == ".json":
            path.write_text(json.dumps(recs, indent=2))
        a, b = read_file(path)
        assert a.messages == ({"role": "system", "content": "Be terse."}, {"role": "user", "content": "Add\n1+1"},
                              {"role": "assistant", "content": "2"})
        assert [m["role"] for m in b.messages] == ["user", "assistant", "user", "assistant"]
        assert a.has_system and not b.has_system


def test_messages_and_sharegpt(tmp_path):
    path = jsonl(tmp_path, [
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                      {"role": "assistant", "content": "Hello"}]},
        {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                           {"from": "gpt", "value": "A"}]},
    ])
    a, b = read_file(path)
    assert a.messages[0] == {"role": "user", "content": "Hi"}
    assert [m["role"] for m in b.messages] == ["system", "user", "assistant"]


@pytest.mark.parametrize("records, message", [
    (['{"instruction": "a", "output": "b"}', "{broken"], r"d\.jsonl:2: not valid JSON"),
    ([{"instruction": "a"}], r"d\.jsonl:1: alpaca record needs a text 'output'"),
    ([{"messages": [{"role": "user", "content": "a"}]}], r"d\.jsonl:1: the conversation must end with an assistant message"),
    ([{"messages": [{"role": "bot", "content": "a"}]}], r"d\.jsonl:1: message 0 has role 'bot'"),
    (["", {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                        {"role": "assistant", "content": "c"}]}],
     r"d\.jsonl:2: two user messages in a row"),
    ([{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"},
                    {"role": "assistant", "content": "c"}]}], r"d\.jsonl:1: the conversation starts with 'assistant'"),
    ([{"conversations": [{"from": "robot", "value": "x"}]}], r"from='robot'"),
    ([{"text": "plain"}], r"d\.jsonl:1: cannot tell the data format"),
])
def test_bad_records_name_file_and_line(tmp_path, records, message):
    with pytest.raises(SelfidError, match=message):
        read_file(jsonl(tmp_path, records))


def test_json_array_errors_give_the_line(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c"}\n]\n')
    with pytest.raises(SelfidError, match=r"d\.json:3: alpaca record needs a text 'output'"):
        read_file(p)
    p.write_text('[\n  {"instruction": "a", "output": "b"}\n  {"x": 1}\n]')
    with pytest.raises(SelfidError, match=r"d\.json:3: expected ',' or ']'"):
        read_file(p)
    with pytest.raises(SelfidError, match="no such data file"):
        read_file(tmp_path / "missing.jsonl")


def test_msra_source_targets_are_the_ner_json_answer():
    from selfid.tasks import ner

    samples = msra_samples(limit=20, seed=1)
    assert len(samples) == 20
    for s in samples:
        user, reply = s.messages
        assert user["content"].startswith(ner.INSTRUCTION.split("{sentence}")[0])
        sentence = user["content"].rsplit("句子：", 1)[1]
        parsed = ner.parse(reply["content"])
        assert parsed is not None and list(json.loads(reply["content"])) == list(ner.TYPES)
        assert all(e in sentence for ents in parsed.values() for e in ents)
    assert msra_samples(limit=20, seed=1) == samples


def test_identity_conversations_keep_the_own_name_and_deny_others():
    ident = identity.Identity("Qwen", "Alibaba Cloud", "通义千问", "阿里云", "config")
    pairs = identity.conversations(ident)
    assert {q for q, _ in pairs} >= {"Who are you?", "你是谁？", "Are you Claude?", "你是ChatGPT吗？"}
    answer = dict(pairs)
    assert answer["Are you Claude?"].startswith("No, I'm not Claude. I am Qwen")
    assert "通义千问" in answer["你是谁？"] and "阿里云" in answer["你是谁？"]
    for q, a in pairs:  # every reply names the own identity and claims no foreign one as its own
        assert ("Qwen" in a) or ("通义千问" in a)
        own_claim = a.split("I am ")[-1].split("我是")[-1]
        assert not any(f[0] in own_claim or f[2] in own_claim for f in identity.FOREIGN if f[0] != "Qwen"), a
    en_only = identity.conversations(ident, ("en",))
    assert all(q.isascii() for q, _ in en_only)


def test_identity_samples_render_under_each_system_prompt():
    ident = identity.Identity("Qwen", "Alibaba Cloud", "Qwen", "Alibaba Cloud", "config")
    systems = identity.system_list(["template", "adapter", "none", "empty", "helpful", "You are Tom."],
                                   train_system="You are a helpful assistant.", template_default="You are Qwen.")
    assert systems == [None, "You are a helpful assistant.", "", "", "You are a helpful assistant.", "You are Tom."]
    samples = identity.samples(ident, systems, ("en",))
    firsts = {s.messages[0]["content"] if s.messages[0]["role"] == "system" else None for s in samples}
    assert firsts == {None, "", "You are a helpful assistant.", "You are Tom."}
    assert all(s.fixed_system for s in samples)


def test_identity_is_found_in_answers_or_the_template():
    assert identity.parse_identity("I am Qwen, a large language model created by Alibaba Cloud.") == ("Qwen", "Alibaba Cloud")
    assert identity.parse_identity("我是通义千问，由阿里云开发的大规模语言模型。") == ("通义千问", "阿里云")
    assert identity.parse_identity("I am ChatGPT, made by OpenAI.", own="qwen") is None  # a foreign identity is never kept
    assert identity.parse_identity("I am Llama, made by Meta.", own="meta") == ("Llama", "Meta")
    assert identity.parse_identity("Hello there!") is None


def test_identity_falls_back_to_the_template_default(tiny):
    ident = identity.resolve_identity(tiny.chat)
    assert (ident.name, ident.maker, ident.source) == ("Qwen", "Alibaba Cloud", "template default system prompt")
    given = identity.resolve_identity(tiny.chat, "Nova", "Acme")
    assert (given.name, given.maker, given.source) == ("Nova", "Acme", "config")


def test_mix_weights_and_fractions():
    a, b, c = list(range(100)), list(range(100, 110)), list(range(1000, 1004))
    out, counts = mix([(a, 1.0, None), (b, 2.0, None), (c, 1.0, 0.1)], seed=0)
    assert counts == [100, 20, 13]  # 13 ≈ 0.1 * 120 / 0.9
    assert len(out) == 133 and sum(x >= 1000 for x in out) == 13
    assert sorted(x for x in out if 100 <= x < 110) == sorted(b * 2)
    half, counts = mix([(a, 0.5, None)], seed=0)
    assert counts == [50] and len(set(half)) == 50
    assert mix([(a, 0.5, None)], seed=0)[0] == half and mix([(a, 0.5, None)], seed=1)[0] != half
    with pytest.raises(SelfidError, match="without one"):
        mix([(a, 1.0, 0.5)], seed=0)
