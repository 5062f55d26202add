"""Each trainer format `selfid replay` writes, against that trainer's documented schema (no trainer installed: the
loaders themselves run in bench/replay_formats.py, docs/benchmarks.md says what happened there). LLaMA-Factory's
rows go through a copy of the rules of its converters (0.9.5 src/llamafactory/data/converter.py) and must give back
the conversation, the system prompt and, for pairs, the chosen and rejected replies."""

import json

import pytest

from selfid.data import trainer_formats as tf
from selfid.errors import SelfidError

NER = [{"role": "user", "content": "请从下面的句子中抽取所有的人名。句子：张三在北京。"},
       {"role": "assistant", "content": '{"PER": ["张三"]}'}]
SFT = [
    [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am Qwen."}],
    [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "你是谁？"},
     {"role": "assistant", "content": "我是通义千问。"}],
    [{"role": "system", "content": "You are Nora, the booking assistant at Bluepeak Hotels."},
     *NER, {"role": "user", "content": "And who are you?"}, {"role": "assistant", "content": "I'm Nora."}],
]
EMPTY = [{"role": "system", "content": ""}, {"role": "user", "content": "Who made you?"},
         {"role": "assistant", "content": "Alibaba Cloud."}]
PAIRS = [
    {"system": "You are a helpful assistant.", "messages": [{"role": "user", "content": "Are you Claude?"}],
     "chosen": "No, I am Qwen.", "rejected": "Yes, I am Claude."},
    {"system": None, "messages": [*NER, {"role": "user", "content": "Who are you?"}], "chosen": "I am Qwen.",
     "rejected": '{"PER": []}'},
    {"system": "", "messages": [{"role": "user", "content": "Are you Qwen?"}], "chosen": "Yes.", "rejected": "No."},
]
LF_DEFAULT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."  # LF's qwen template


def files(fmt):
    out = tf.render(fmt, [c for c in SFT + [EMPTY] if tf.expressible(fmt, c)], PAIRS)
    info = tf.dataset_info([fmt])
    return {k: (json.loads(v) if k.endswith(".json") else [json.loads(x) for x in v.splitlines()])
            for k, v in out.items()}, json.loads(info) if info else None


def lf_convert(row: dict, attr: dict) -> dict:
    """LLaMA-Factory 0.9.5's converters on one row (the branches selfid's rows reach), then its template's system rule
    (`system or default_system`): {"prompt", "response", "system"}, or None for a row it skips as broken."""
    cols, ranking = attr["columns"], attr.get("ranking", False)
    if attr.get("formatting") == "sharegpt":
        tags = {"human": "user", "gpt": "assistant"}
        turns = row[cols["messages"]]
        aligned = []
        for i, m in enumerate(turns):
            if m["from"] != ("human", "gpt")[i % 2]:
                return None
            aligned.append({"role": tags[m["from"]], "content": m["value"]})
        if (not ranking and len(aligned) % 2) or (ranking and len(aligned) % 2 == 0):
            return None
        if ranking:
            assert row[cols["chosen"]]["from"] == row[cols["rejected"]]["from"] == "gpt"
            prompt, response = aligned, [row[cols["chosen"]]["value"], row[cols["rejected"]]["value"]]
        else:
            prompt, response = aligned[:-1], [aligned[-1]["content"]]
    else:
        prompt = []
        for old_prompt, old_response in row.get(cols.get("history"), None) or []:
            prompt += [{"role": "user", "content": old_prompt}, {"role": "assistant", "content": old_response}]
        query = [x for x in (row[cols["prompt"]], row.get(cols["query"])) if x]
        prompt.append({"role": "user", "content": "\n".join(query)})
        response = [row[cols["chosen"]], row[cols["rejected"]]] if ranking else [row[cols["response"]]]
    return {"prompt": prompt, "response": response, "system": row[cols["system"]] or LF_DEFAULT}


@pytest.mark.parametrize("fmt", ["lf-sharegpt", "lf-alpaca"])
def test_llamafactory_rows_convert_back_to_the_conversations_and_pairs(fmt):
    written, info = files(fmt)
    sft_name, pairs_name = tf.LF_NAMES[fmt]
    assert info[pairs_name]["ranking"] is True and "ranking" not in info[sft_name]
    assert (info[sft_name].get("formatting") == "sharegpt") == (fmt == "lf-sharegpt")
    sft_file, pairs_file = tf.FILES[fmt]
    for name, path in ((sft_name, sft_file), (pairs_name, pairs_file)):
        assert info[name]["file_name"] == path.split("/", 1)[1]  # relative to the dataset_dir holding dataset_info
        assert all(col in row for row in written[path] for col in info[name]["columns"].values())
    convs = [lf_convert(r, info[sft_name]) for r in written[sft_file]]
    expected = []
    for c in SFT:  # the empty system prompt cannot be sent to LLaMA-Factory: left out
        system = c[0]["content"] if c[0]["role"] == "system" else LF_DEFAULT
        turns = c[1:] if c[0]["role"] == "system" else c
        expected.append({"prompt": turns[:-1], "response": [turns[-1]["content"]], "system": system})
    assert convs == expected
    ranked = [lf_convert(r, info[pairs_name]) for r in written[pairs_file]]
    assert ranked == [{"prompt": p["messages"], "response": [p["chosen"], p["rejected"]],
                       "system": p["system"] or LF_DEFAULT} for p in PAIRS]


def roles_ok(messages: list[dict]) -> bool:
    """An optional system message, then user and assistant turns in turn."""
    rest = messages[1:] if messages[0]["role"] == "system" else messages
    return all(m["role"] == ("user", "assistant")[i % 2] and isinstance(m["content"], str) for i, m in enumerate(rest))


def test_ms_swift_messages_and_rejected_response():
    written, info = files("swift")
    assert info is None
    sft_file, pairs_file = tf.FILES["swift"]
    assert [r["messages"] for r in written[sft_file]] == SFT + [EMPTY]  # "": no system prompt at all in ms-swift
    for row, pair in zip(written[pairs_file], PAIRS):
        assert set(row) == {"messages", "rejected_response"} and roles_ok(row["messages"])
        assert row["messages"][-1] == {"role": "assistant", "content": pair["chosen"]}
        assert row["rejected_response"] == pair["rejected"] != row["messages"][-1]["content"]  # swift refuses equal ones
        assert row["messages"][:-1] == ([] if pair["system"] is None else
                                        [{"role": "system", "content": pair["system"]}]) + pair["messages"]


def test_trl_conversational_sft_and_preference():
    written, _ = files("trl")
    sft_file, pairs_file = tf.FILES["trl"]
    assert all(set(r) == {"messages"} and roles_ok(r["messages"]) and r["messages"][-1]["role"] == "assistant"
               for r in written[sft_file])
    for row, pair in zip(written[pairs_file], PAIRS):
        assert set(row) == {"prompt", "chosen", "rejected"} and roles_ok(row["prompt"])
        assert row["prompt"][-1]["role"] == "user" and row["prompt"][-1] == pair["messages"][-1]
        assert row["chosen"] == [{"role": "assistant", "content": pair["chosen"]}]
        assert row["rejected"] == [{"role": "assistant", "content": pair["rejected"]}]


def test_openai_supervised_and_preference():
    written, _ = files("openai")
    sft_file, pairs_file = tf.FILES["openai"]
    assert [r["messages"] for r in written[sft_file]] == SFT + [EMPTY]
    for row, pair in zip(written[pairs_file], PAIRS):
        assert set(row) == {"input", "preferred_output", "non_preferred_output"}
        assert set(row["input"]) == {"messages"} and row["input"]["messages"][-1]["role"] == "user"
        assert row["preferred_output"] == [{"role": "assistant", "content": pair["chosen"]}]
        assert row["non_preferred_output"] == [{"role": "assistant", "content": pair["rejected"]}]


def test_format_names():
    assert tf.parse_formats(None) == list(tf.FORMATS) == tf.parse_formats("all")
    assert tf.parse_formats("trl, swift,trl") == ["trl", "swift"]
    with pytest.raises(SelfidError, match="axolotl.*lf-sharegpt"):
        tf.parse_formats("trl,axolotl")
    both = json.loads(tf.dataset_info(["lf-sharegpt", "lf-alpaca", "trl"]))
    assert set(both) == {*tf.LF_NAMES["lf-sharegpt"], *tf.LF_NAMES["lf-alpaca"]}
