"""The OpenAI-compatible API against a live uvicorn server on the tiny model, through real clients."""

import asyncio
import json
from urllib.parse import unquote

import httpx
import openai
import pytest

from selfid.engine import Completion, Event, Request, SamplingParams
from selfid.model.chat import conversation
from selfid.serve.api import stream
from selfid.serve.scheduler import DONE
from tests.serve_helpers import plain_server, run_async, static_server  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def client(plain_server):
    bg, _ = plain_server
    return openai.OpenAI(base_url=bg.url + "/v1", api_key="unused", max_retries=0)


def prompt_tokens(service, messages):
    return len(service.engine.encode(service.base.chat.render(messages).text))


def test_seed_langchain_snippet_unchanged(plain_server, monkeypatch):
    bg, service = plain_server
    monkeypatch.setenv("API_PORT", str(bg.port))
    monkeypatch.delenv("API_KEY", raising=False)
    # --- the client code, unchanged ---
    import os
    from langchain_openai import ChatOpenAI
    client = ChatOpenAI(api_key=os.environ.get("API_KEY", "0"),
                        base_url="http://localhost:{}/v1".format(os.environ.get("API_PORT", 8000)))
    # ---
    reply = client.invoke("你是谁?", seed=11, max_tokens=12)
    assert reply.content and reply.response_metadata["model_name"] == service.base.name
    usage = reply.response_metadata["token_usage"]
    assert usage["prompt_tokens"] == prompt_tokens(service, conversation("你是谁?"))
    assert usage["completion_tokens"] == 12 and reply.response_metadata["finish_reason"] == "length"
    chunks = list(client.stream("你是谁?", seed=11, max_tokens=12))
    assert len([c for c in chunks if c.content]) > 1  # really streamed
    assert "".join(c.content for c in chunks) == reply.content  # same seed: same sample, streamed or not

    hot = ChatOpenAI(api_key=os.environ.get("API_KEY", "0"), temperature=1.0, include_response_headers=True,
                     base_url="http://localhost:{}/v1".format(os.environ.get("API_PORT", 8000)))
    r = hot.invoke("Who are you?", max_tokens=5)
    headers = r.response_metadata["headers"]
    assert "temperature=1 " in headers["x-selfid-sampling"]
    assert "top_p=0.8" in headers["x-selfid-sampling"]  # the model's own default for what was left unset
    assert headers["x-selfid-sampling-from-defaults"] == "top_p,top_k,repetition_penalty"


def test_non_streaming_matches_the_engine_and_counts_usage(client, plain_server):
    _, service = plain_server
    messages = [{"role": "user", "content": "Who are you?"}]
    r = client.chat.completions.create(model="gpt-3.5-turbo", messages=messages, temperature=0, max_tokens=9,
                                       presence_penalty=1.5, frequency_penalty=-0.5)
    rendered = service.base.chat.render(messages)
    params = SamplingParams.from_defaults(service.base.generation_defaults, temperature=0, max_new_tokens=9,
                                          presence_penalty=1.5, frequency_penalty=-0.5)
    expected = service.engine.generate([rendered.text], params)[0]
    assert r.choices[0].message.content == expected.text
    assert r.choices[0].message.role == "assistant" and r.object == "chat.completion"
    assert r.usage.prompt_tokens == expected.prompt_tokens
    assert r.usage.completion_tokens == expected.completion_tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model == service.base.name  # says which model answered, whatever name was asked for


def test_penalties_have_their_openai_meaning(client):
    messages = [{"role": "user", "content": "Tell me about the quick brown fox."}]
    plain = client.chat.completions.create(model="m", messages=messages, temperature=0, max_tokens=40)
    penalised = client.chat.completions.create(model="m", messages=messages, temperature=0, max_tokens=40,
                                               frequency_penalty=2.0)
    assert plain.choices[0].message.content != penalised.choices[0].message.content


def test_streaming_with_usage_equals_the_same_sample_unstreamed(client, plain_server):
    bg, _ = plain_server
    kw = dict(model="m", messages=[{"role": "user", "content": "hi"}], temperature=1.0, seed=5, max_tokens=10)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    with httpx.stream("POST", bg.url + "/v1/chat/completions", json={**kw, "stream": True}) as raw:
        lines = [x for x in raw.iter_lines() if x]
        assert raw.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(x.startswith("data: ") for x in lines)
    assert '"usage"' not in "".join(lines)  # no usage unless asked for


def test_n_choices_each_sampled_and_counted(client):
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], n=2,
                                       temperature=1.0, seed=3, max_tokens=8)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].message.content != r.choices[1].message.content
    assert r.usage.completion_tokens == 16
    s = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], n=2,
                                       temperature=1.0, seed=3, max_tokens=8, stream=True)
    texts = ["", ""]
    for c in s:
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
    assert texts == [c.message.content for c in r.choices]


def test_seed_makes_replies_repeatable(client):
    kw = dict(model="m", messages=[{"role": "user", "content": "你好"}], temperature=1.2, max_tokens=12)
    a = client.chat.completions.create(seed=42, **kw).choices[0].message.content
    b = client.chat.completions.create(seed=42, **kw).choices[0].message.content
    c = client.chat.completions.create(seed=43, **kw).choices[0].message.content
    assert a == b and a != c


@pytest.mark.parametrize("field", ["max_completion_tokens", "max_tokens"])
def test_token_limits_are_honoured(client, field):
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                       temperature=0, **{field: 3})
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


def test_max_completion_tokens_wins_over_max_tokens(client):
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], temperature=0,
                                       max_tokens=9, max_completion_tokens=4)
    assert r.usage.completion_tokens == 4


def test_stop_sequences_cut_the_reply(client):
    kw = dict(model="m", messages=[{"role": "user", "content": "Who are you?"}], temperature=0, max_tokens=30)
    full = client.chat.completions.create(**kw).choices[0].message.content
    stop = full[5:8]
    assert full.find(stop) == 5
    r = client.chat.completions.create(**kw, stop=[stop])
    assert r.choices[0].message.content == full[:5] and r.choices[0].finish_reason == "stop"


def test_logprobs_are_consistent(client):
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], temperature=0,
                                       max_tokens=6, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == 6
    for t in content:
        assert len(t.top_logprobs) == 3 and t.logprob <= 0
        assert t.logprob == pytest.approx(t.top_logprobs[0].logprob)  # greedy takes the most likely token
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
    assert bytes(b for t in content for b in t.bytes).decode("utf-8", "replace") == r.choices[0].message.content


def test_headers_say_which_system_prompt_was_in_effect(client, plain_server):
    _, service = plain_server
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert raw.headers["x-selfid-system-source"] == "template"
    assert unquote(raw.headers["x-selfid-system-prompt"]) == service.base.chat.default_system
    system = "你是一个乐于助人的助手。100% \"sure\"\nline two"
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "system", "content": system}, {"role": "user", "content": "hi"}], max_tokens=2)
    assert raw.headers["x-selfid-system-source"] == "text"
    assert unquote(raw.headers["x-selfid-system-prompt"]) == system
    assert raw.headers["x-selfid-template-hash"] == service.base.chat.template_hash
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "system", "content": ""}, {"role": "user", "content": "hi"}], max_tokens=2)
    assert raw.headers["x-selfid-system-source"] == "empty" and raw.headers["x-selfid-system-prompt"] == ""


def test_content_parts_are_joined_text(client):
    kw = dict(model="m", temperature=0, max_tokens=6)
    parts = client.chat.completions.create(messages=[{"role": "user", "content": [
        {"type": "text", "text": "Who are "}, {"type": "text", "text": "you?"}]}], **kw)
    text = client.chat.completions.create(messages=[{"role": "user", "content": "Who are you?"}], **kw)
    assert parts.choices[0].message.content == text.choices[0].message.content


def test_models_lists_the_base(client, plain_server):
    _, service = plain_server
    models = client.models.list().data
    assert [m.id for m in models] == [service.base.name]
    assert models[0].model_extra["selfid"]["system_prompt"] == service.base.chat.default_system


def test_api_key_is_required_when_set(tiny_model_dir):
    from tests.serve_helpers import start

    bg, _ = start(tiny_model_dir, api_key="s3cret")
    with bg:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = httpx.get(bg.url + "/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        good = openai.OpenAI(base_url=bg.url + "/v1", api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=2).usage.completion_tokens == 2
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=bg.url + "/v1", api_key="nope", max_retries=0).models.list()
        assert httpx.get(bg.url + "/").status_code == 200  # the page itself holds no secrets


def test_health_says_how_decoding_runs_and_counts_its_steps(static_server, plain_server):
    bg, _ = static_server
    before = httpx.get(bg.url + "/health").json()["decode"]
    assert before["asked"] == before["using"] == "static" and before["reason"] is None
    r = httpx.post(bg.url + "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                                           "temperature": 0, "max_tokens": 6}).json()
    assert r["usage"]["completion_tokens"] == 6
    after = httpx.get(bg.url + "/health").json()["decode"]
    steps = {k: after["stats"][k] - before["stats"][k] for k in after["stats"]}
    assert steps["plain_steps"] == 5 and steps["graph_steps"] == 0  # the first token comes from the prefill
    assert steps["plain_prefills"] + steps["eager_prefills"] == 1
    eager, _ = plain_server
    assert httpx.get(eager.url + "/health").json()["decode"]["asked"] == "eager"  # the CPU's default


def test_health_answers_when_the_decode_check_measured_nan(static_server, monkeypatch):
    bg, service = static_server
    report = service.engine.decode_report()
    monkeypatch.setattr(service.engine, "decode_report",
                        lambda: {**report, "check": {"plain_vs_eager": float("nan"), "graph_vs_plain": float("inf")}})
    r = httpx.get(bg.url + "/health")
    assert r.status_code == 200 and r.json()["decode"]["check"] == {"plain_vs_eager": "nan", "graph_vs_plain": "inf"}


@pytest.mark.parametrize("include_usage", [False, True])
def test_content_chunks_are_the_bytes_the_pydantic_models_write(include_usage):
    from selfid.serve.api import Chunks

    chunks = Chunks("chatcmpl-x", 1700000000, 'tiny "model" \\ 名', "selfid-abc", include_usage)
    deltas = ["Hello", " world", "你好，世界。", 'say "hi" \\ back\n\tnext\r\n', "🙂👍🏽", "\u2028\x00\x1f", "", "</s>"]
    for index in (0, 1, 2, 11):
        for text in deltas:
            made = chunks.content(index, text)
            assert made == chunks.event([{"index": index, "delta": {"content": text}}])
            assert json.loads(made.removeprefix("data: "))["choices"][0]["delta"] == {"content": text}


class _Job:
    """What stream() reads: the scheduler's queue of events, and the request to cancel if the client leaves."""

    def __init__(self, items=()):
        self.queue = asyncio.Queue()
        for item in items:
            self.queue.put_nowait(item)
        self.request = Request([1], SamplingParams())


async def _written(service, pr, items, at_once: bool) -> list[str]:
    """The writes stream() makes when the engine's events are all waiting before the client reads (at_once),
    or arrive one at a time, each only after stream() has taken the one before."""
    job = _Job(items if at_once else ())
    feed = iter([] if at_once else items)
    gen = stream(service, pr, "chatcmpl-test", job)
    writes = []
    while True:
        if job.queue.empty():
            item = next(feed, None)
            if item is not None:
                job.queue.put_nowait(item)
        try:
            writes.append(await gen.__anext__())
        except StopAsyncIteration:
            return writes


def _events(writes: list[str]) -> list:
    events = []
    for w in writes:
        assert w.endswith("\n\n")
        for e in w.split("\n\n")[:-1]:
            assert e.startswith("data: ")
            data = e.removeprefix("data: ")
            events.append(data if data == "[DONE]" else {k: v for k, v in json.loads(data).items() if k != "created"})
    return events


@pytest.mark.parametrize("fail", [False, True])
def test_events_waiting_together_go_out_in_one_write_with_the_same_content(tiny, fail):
    from selfid.serve.api import Service
    from selfid.serve.models import Served
    from selfid.serve.protocol import ChatCompletionRequest
    from tests.serve_helpers import ScriptedEngine

    served = [Served("tmp", None, None, tiny.chat, tiny.generation_defaults, "test")]
    service = Service(tiny, served, engine=ScriptedEngine(tiny))
    pr = service.prepare(ChatCompletionRequest.model_validate(
        {"model": "tmp", "messages": [{"role": "user", "content": "hi"}], "n": 2, "stream": True,
         "stream_options": {"include_usage": True}}))
    ids = service.engine.encode("Hi 你好 \"x\"")
    items = [Event(0, 0, "Hi"), Event(0, 1, " 你"), Event(0, 0, " 你好", Completion("Hi 你好", ids[:3], "length")),
             Event(0, 1, ' "x"\n')]
    items += [RuntimeError("boom")] if fail else [Event(0, 1, "", Completion(' 你 "x"\n', ids, "stop")), DONE]
    one_by_one = run_async(lambda: _written(service, pr, items, at_once=False))
    together = run_async(lambda: _written(service, pr, items, at_once=True))
    assert _events(together) == _events(one_by_one)
    # writes: the two role chunks, then one per engine event (five here) or one for all of them, usage, [DONE]
    assert (len(one_by_one), len(together)) == (2 + 5 + 2, 2 + 1 + 2)
    assert _events(together)[-1] == "[DONE]"
    texts = ["", ""]
    for e in _events(together)[2:]:
        for c in e.get("choices", []) if isinstance(e, dict) else []:
            texts[c["index"]] += c["delta"].get("content", "")
    assert texts == ["Hi 你好", ' 你 "x"\n']
    if fail:
        assert _events(together)[-3]["error"]["type"] == "server_error" and _events(together)[-2]["choices"] == []
    else:
        assert _events(together)[-2]["usage"] == {"prompt_tokens": len(pr.prompt_ids), "completion_tokens": 3 + len(ids),
                                                  "total_tokens": len(pr.prompt_ids) + 3 + len(ids)}
