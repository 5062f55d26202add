"""`selfid replay`: the identity replay written for other trainers, from a model in-process or an endpoint, sized for
the user's data, every file recorded in replay.json; the formats read back as the same conversations (the schema
checks of each trainer's format are in tests/test_trainer_formats.py)."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from selfid.config import IdentityReplay
from selfid.data import replay_set, trainer_formats
from selfid.data.readers import alpaca_messages, chat_messages
from selfid.engine.types import Completion, Result
from selfid.errors import SelfidError
from selfid.io import sha256_file
from selfid.pipeline import replay, replay_export
from tests.audit_helpers import EventsFromGenerate

ROOT = Path(__file__).resolve().parent.parent
QWEN_LINE = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
GIVEN = "You are Oliver, the booking assistant of Quartz Books."


def answer(system: str | None, question: str, sample: int = 0) -> str:
    """A model that is Qwen under its own prompt, drifts to ChatGPT under the other serving prompts and keeps a persona
    named in its system prompt in every other sample (Qwen in its place in the others); without a persona a function
    of the system prompt and the question only, so an endpoint and the in-process engine give the same replies."""
    if system is None or system == QWEN_LINE:
        if question.startswith(("Are", "Is", "Were")) and "Qwen" not in question and "Alibaba" not in question:
            return "No, I'm Qwen, created by Alibaba Cloud."
        return "我是通义千问，由阿里云开发。" if any("\u4e00" <= ch <= "\u9fff" for ch in question) else \
            "Yes, I am Qwen, created by Alibaba Cloud."
    if system == GIVEN:
        return "I'm Oliver from Quartz Books." if sample % 2 == 0 else "I am Qwen, created by Alibaba Cloud."
    if system in ("", "You are a helpful assistant."):
        return "Yes, I am ChatGPT, developed by OpenAI."
    return "Hello."


class Model(EventsFromGenerate):
    """The engine side of `answer`: reads the system prompt and the last question from the rendered prompt."""

    def __init__(self, tokenizer):
        self.tokenizer, self.requests = tokenizer, []

    def generate(self, requests, progress=None):
        out = []
        for req in requests:
            self.requests.append(req)
            text = self.tokenizer.decode(req.prompt) if not isinstance(req.prompt, str) else req.prompt
            system = text.split("<|im_start|>system\n", 1)[1].split("<|im_end|>", 1)[0] \
                if "<|im_start|>system\n" in text else None
            question = text.rsplit("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
            out.append(Result(10, [Completion(answer(system, question, i), [1] * 4, "stop") for i in range(req.params.n)]))
            if progress:
                progress(req.params.n)
        return out


SMALL = dict(samples=2, personas=1, after_task=1, languages=["en", "zh"], preference=1.0)


def make(tiny, out, rep=None, **kw):
    rep = rep or IdentityReplay(**SMALL)
    model = Model(tiny.tokenizer)
    record = replay_export.run(out, rep, backend=replay.in_process(tiny, model), loaded=tiny, progress=False,
                               log=lambda m: None, **kw)
    return record, model


def read_rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines()]


def as_key(messages) -> str:
    return json.dumps(list(messages), ensure_ascii=False, sort_keys=True)


def test_every_format_holds_the_same_conversations_and_replay_json_records_them(tiny, tmp_path):
    out = tmp_path / "replay"
    record, _ = make(tiny, out)
    replies = [json.loads(line) for line in (out / "selfid" / "replies.jsonl").read_text().splitlines()]
    pairs = [json.loads(line) for line in (out / "selfid" / "pairs.jsonl").read_text().splitlines()]
    assert replies and pairs and record["own"]["vendor"] == "qwen"
    # every kept reply under the serving set (no system message, "You are a helpful assistant.", an empty one)
    assert [s["message"] for s in record["rendered_under"]] == [None, "You are a helpful assistant.", ""]
    pool = Counter(as_key(m) for m in replay_set.conversations(replies, [None, "You are a helpful assistant.", ""]))
    without_empty = Counter({k: n for k, n in pool.items() if not k.startswith('[{"content": "", "role": "system"}')})
    for fmt, read in (("swift", chat_messages), ("trl", chat_messages), ("openai", chat_messages),
                      ("lf-sharegpt", chat_messages), ("lf-alpaca", alpaca_messages)):
        sft_file, pairs_file = trainer_formats.FILES[fmt]
        rows = read_rows(out / sft_file)
        got = Counter(as_key(read(r, fmt)) for r in rows)
        # LLaMA-Factory cannot send an empty system prompt: those rows are left out, and said so
        assert got == (without_empty if fmt.startswith("lf-") else pool), fmt
        assert ("note" in record["formats"][fmt]) == fmt.startswith("lf-")
        assert record["formats"][fmt]["sft"]["rows"] == len(rows)
        assert record["formats"][fmt]["pairs"]["rows"] == len(read_rows(out / pairs_file)) == len(pairs)
    for rel, sha in record["sha256"].items():
        assert sha256_file(out / rel) == sha
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert on_disk == set(record["sha256"]) | {"replay.json"}
    assert json.loads((out / "replay.json").read_text()) == record
    # what the replay record says about the run: the model, its sampling, the counts
    assert record["model"]["backend"] == "inprocess" and record["replay"]["sampling"]["samples"] == 2
    assert record["replay"]["kept"] == len(replies) and record["replay"]["pairs"] == len(pairs)
    # pairs: a kept own reply over the base model's own foreign claim
    assert all("ChatGPT" in p["rejected"] and "ChatGPT" not in p["chosen"] for p in pairs if "Oliver" not in p["chosen"])


def test_rows_and_fraction_size_the_files_as_the_trainer_sizes_its_mix(tiny, tmp_path):
    from selfid.data.mix import mix

    record, _ = make(tiny, tmp_path / "rows", rows=37, formats=["trl", "lf-alpaca"])
    assert {f: w["sft"]["rows"] for f, w in record["formats"].items()} == {"trl": 37, "lf-alpaca": 37}
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(190)))
    record, _ = make(tiny, tmp_path / "fraction", fraction=0.05, data=data, formats=["swift"])
    assert record["sizing"]["data"]["records"] == 190
    expected = mix([(list(range(190)), 1.0, None), (list(range(7)), 1.0, 0.05)])[1][1]  # the trainer's own sizing
    assert record["formats"]["swift"]["sft"]["rows"] == record["sizing"]["rows"] == expected == 10
    with pytest.raises(SelfidError, match="--data"):
        make(tiny, tmp_path / "bad", fraction=0.05)
    with pytest.raises(SelfidError, match="not both"):
        make(tiny, tmp_path / "bad", rows=5, fraction=0.05, data=data)
    assert not (tmp_path / "bad").exists()


def test_a_persona_the_user_deploys_with_is_asked_and_kept_only_when_kept(tiny, tmp_path):
    rep = IdentityReplay(**{**SMALL, "personas": 0}, persona_prompts=[GIVEN])
    record, model = make(tiny, tmp_path / "p", rep=rep, systems=["template", "You are an NER assistant."])
    replies = [json.loads(line) for line in (tmp_path / "p" / "selfid" / "replies.jsonl").read_text().splitlines()]
    under = [r for r in replies if r.get("system") == GIVEN]
    assert under and all("Oliver" in r["messages"][-1]["content"] for r in under)
    pairs = [json.loads(line) for line in (tmp_path / "p" / "selfid" / "pairs.jsonl").read_text().splitlines()]
    assert any(p["system"] == GIVEN and p["rejected"] == "I am Qwen, created by Alibaba Cloud." for p in pairs)
    assert record["persona_prompts"] == [{"key": "persona-given-1", "lang": "en", "text": GIVEN, "name": "Oliver",
                                          "company": "", "given": True}]
    # every question asked under it, and the rows written under the user's own system prompts
    asked = sum("Quartz Books" in model.tokenizer.decode(r.prompt) for r in model.requests)
    assert asked == record["replay"]["questions"]
    rows = read_rows(tmp_path / "p" / trainer_formats.FILES["trl"][0])
    systems = Counter(r["messages"][0]["content"] if r["messages"][0]["role"] == "system" else None for r in rows)
    assert set(systems) == {None, "You are an NER assistant.", GIVEN} and systems[GIVEN] == len(under)


@pytest.mark.parametrize("text", ["You are Max, the virtual assistant of Northwind Bank. Keep your answers short and "
                                  "friendly.", "you are MAX, the virtual assistant of Northwind Bank!"])
def test_a_heldout_persona_prompt_is_refused_before_anything_runs(tiny, tmp_path, text):
    rep = IdentityReplay(**SMALL, persona_prompts=[text])
    with pytest.raises(SelfidError, match="held-out audit's persona prompt persona-en"):
        make(tiny, tmp_path / "h", rep=rep)
    with pytest.raises(SelfidError, match="held-out"):
        make(tiny, tmp_path / "h", systems=["template", text])
    assert not (tmp_path / "h").exists()


def test_an_endpoint_gives_the_same_replay_as_the_model_in_process(tiny, tmp_path, chat_server):
    url, faults = chat_server
    faults.script = lambda messages: answer(messages[0]["content"] if messages[0]["role"] == "system" else None,
                                            messages[-1]["content"])
    rep = IdentityReplay(**{**SMALL, "languages": ["en"]})
    local, _ = make(tiny, tmp_path / "local", rep=rep, formats=["trl"])
    try:
        served = replay_export.run(tmp_path / "http", rep, base_url=url, model_name="gpt-3.5-turbo", formats=["trl"],
                                   progress=False, log=lambda m: None)
    finally:
        faults.script = None
    # the own vendor from the model's own answers (the served name is a placeholder), not from a template
    assert served["own"]["vendor"] == "qwen" and "greedy answers" in served["own"]["source"]
    assert served["model"]["backend"] == "http" and "endpoint's own" in str(served["replay"]["sampling"]["defaults"])
    for key in ("generations", "passed", "kept", "pairs", "kept_by_kind"):
        assert served["replay"][key] == local["replay"][key], key
    assert (tmp_path / "http" / "trl" / "identity_replay_sft.jsonl").read_text() == \
        (tmp_path / "local" / "trl" / "identity_replay_sft.jsonl").read_text()


def test_the_command_refuses_bad_input_in_one_line_and_writes_nothing(tiny_model_dir, tmp_path):
    def selfid(*args):
        return subprocess.run([sys.executable, "-m", "selfid.cli", "replay", *args], capture_output=True, text=True,
                              env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
                              timeout=600)

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep me")
    for args, message in ((["--out", str(taken)], "not empty"),
                          (["--out", str(tmp_path / "a"), "--fraction", "0.05"], "--data"),
                          (["--out", str(tmp_path / "a"), "--format", "axolotl"], "not a format"),
                          (["--out", str(tmp_path / "a"), "--system", "adapter"], "adapter"),
                          (["--out", str(tmp_path / "a"), "--max-tokens", "4"], "--max-tokens: Input should be greater"),
                          (["--out", str(tmp_path / "a"), "--persona-cross-lingual", "2"],
                           "--persona-cross-lingual: Input should be less"),
                          (["--out", str(tmp_path / "a"), "--persona-cross-lingual", "0.5", "--languages", "en"],
                           "both languages"),
                          (["--out", str(tmp_path / "a"), "--model", str(tiny_model_dir), "--languages", "en",
                            "--samples", "1", "--personas", "0", "--after-task", "0", "--max-tokens", "8"],
                           "nothing to teach")):
        done = selfid(*args)
        err = [line for line in done.stderr.splitlines() if line.startswith("selfid: error")]
        assert done.returncode == 2 and len(err) == 1 and message in err[0], (args, done.stderr[-2000:])
        assert "Traceback" not in done.stderr
    assert (taken / "mine.txt").read_text() == "keep me" and not (tmp_path / "a").exists()
