"""Every client fault is a 4xx with OpenAI's error object; random bodies never produce a 5xx."""

import json

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serve_helpers import ScriptedEngine, adapter_server  # noqa: F401  (fixture)

USER = [{"role": "user", "content": "hi"}]


def ok(**kw):
    return {"model": "ner", "messages": USER, "max_tokens": 2, **kw}


LONG = "word " * 600  # more tokens than the tiny model's 512-token window

BAD = {
    "malformed JSON": (b'{"messages": [', 400, None),
    "not an object": (b"[1, 2]", 400, None),
    "empty body": (b"", 400, None),
    "missing messages": ({"model": "ner"}, 400, "messages"),
    "empty messages": (ok(messages=[]), 400, "messages"),
    "messages not a list": (ok(messages="hi"), 400, "messages"),
    "unknown role": (ok(messages=[{"role": "wizard", "content": "hi"}]), 400, "messages.0.role"),
    "tool role": (ok(messages=[{"role": "tool", "content": "hi"}]), 400, "messages.0.role"),
    "no content": (ok(messages=[{"role": "user"}]), 400, "messages.0"),
    "image part": (ok(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
                   400, "messages.0.content.0"),
    "assistants in a row": (ok(messages=USER + [{"role": "assistant", "content": "a"}] * 2 + USER), 400, "messages"),
    "two users in a row": (ok(messages=USER + USER), 400, "messages"),
    "ends with assistant": (ok(messages=USER + [{"role": "assistant", "content": "a"}]), 400, "messages"),
    "system not first": (ok(messages=USER + [{"role": "system", "content": "s"}] + USER), 400, "messages"),
    "unknown model": (ok(model="gpt-4o"), 404, "model"),
    "n zero": (ok(n=0), 400, "n"),
    "n above the server's limit": (ok(n=17), 400, "n"),
    "n not a number": (ok(n="two"), 400, "n"),
    "max_tokens zero": (ok(max_tokens=0), 400, "max_tokens"),
    "max_tokens past the context window": (ok(max_tokens=100000), 400, "max_tokens"),
    "max_completion_tokens negative": (ok(max_completion_tokens=-1), 400, "max_completion_tokens"),
    "negative temperature": (ok(temperature=-0.1), 400, "temperature"),
    "temperature above 2": (ok(temperature=2.5), 400, "temperature"),
    "top_p zero": (ok(top_p=0), 400, "top_p"),
    "presence_penalty out of range": (ok(presence_penalty=3), 400, "presence_penalty"),
    "negative seed": (ok(seed=-1), 400, "seed"),
    "five stop sequences": (ok(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    "empty stop sequence": (ok(stop=[""]), 400, "stop"),
    "top_logprobs without logprobs": (ok(top_logprobs=2), 400, "top_logprobs"),
    "top_logprobs above 20": (ok(logprobs=True, top_logprobs=21), 400, "top_logprobs"),
    "tools": (ok(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools"),
    "json response format": (ok(response_format={"type": "json_object"}), 400, "response_format"),
    "stream_options without stream": (ok(stream_options={"include_usage": True}), 400, "stream_options"),
    "prompt longer than the context window": (ok(messages=[{"role": "user", "content": LONG}]), 400, "messages"),
    "body too large": (ok(messages=[{"role": "user", "content": "x" * (5 * 1024 * 1024)}]), 413, None),
}


def is_error_object(body: dict) -> bool:
    err = body.get("error")
    return (isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}
            and isinstance(err["message"], str) and len(err["message"]) > 10 and isinstance(err["type"], str))


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_a_4xx_and_an_error_object(adapter_server, case):
    bg, _ = adapter_server
    body, status, param = BAD[case]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(bg.url + "/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert is_error_object(r.json()), r.text
    assert r.json()["error"]["param"] == param


def test_a_chunked_body_without_a_length_is_cut_off_at_the_limit(adapter_server):
    bg, service = adapter_server
    piece = b"x" * 65536
    chunks = (piece for _ in range(service.limits.max_body_bytes // len(piece) + 2))
    r = httpx.post(bg.url + "/v1/chat/completions", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_context_errors_say_what_to_do(adapter_server):
    bg, _ = adapter_server
    r = httpx.post(bg.url + "/v1/chat/completions", json=BAD["max_tokens past the context window"][0]).json()
    assert r["error"]["code"] == "context_length_exceeded" and "lower max_tokens to at most" in r["error"]["message"]
    r = httpx.post(bg.url + "/v1/chat/completions", json=ok(model="gpt-4o")).json()
    assert r["error"]["code"] == "model_not_found" and "'ner'" in r["error"]["message"]
    assert "--default-model" in r["error"]["message"]


def test_wrong_path_and_method_get_error_objects(adapter_server):
    bg, _ = adapter_server
    r = httpx.post(bg.url + "/v1/completions", json=ok())
    assert r.status_code in (404, 405) and is_error_object(r.json())
    r = httpx.get(bg.url + "/v1/chat/completions")
    assert r.status_code == 405 and is_error_object(r.json())


def test_the_openai_client_does_not_retry_client_faults(adapter_server):
    bg, _ = adapter_server
    seen = []
    http = httpx.Client(event_hooks={"request": [seen.append]})
    c = openai.OpenAI(base_url=bg.url + "/v1", api_key="x", max_retries=3, http_client=http)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="ner", messages=USER, temperature=-1)
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=USER)
    assert len(seen) == 2


# --- property tests ---------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
FIELDS = ["model", "messages", "stream", "stream_options", "n", "temperature", "top_p", "max_tokens",
          "max_completion_tokens", "stop", "seed", "presence_penalty", "frequency_penalty", "logprobs",
          "top_logprobs", "tools", "response_format", "user"]
roles = st.sampled_from(["system", "user", "assistant", "tool", "developer", "", None, 3])
contents = st.one_of(st.text(max_size=30), st.none(), st.integers(),
                     st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", 1]),
                                                     "text": st.one_of(st.text(max_size=10), st.none())}), max_size=3))
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": contents}), max_size=5)
bodies = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8),
    st.fixed_dictionaries({"messages": messages}, optional={f: json_values for f in FIELDS if f != "messages"}),
    st.fixed_dictionaries({"messages": messages, "model": st.sampled_from(["ner", "plain", "tmp", "x"])},
                          optional={"n": st.integers(-2, 20), "temperature": st.floats(-1, 3),
                                    "top_p": st.floats(-0.5, 1.5), "max_tokens": st.integers(-1, 600),
                                    "stop": st.lists(st.text(max_size=3), max_size=5), "stream": st.booleans(),
                                    "seed": st.integers(-5, 2**64), "logprobs": st.booleans(),
                                    "top_logprobs": st.integers(-1, 25), "presence_penalty": st.floats(-3, 3)}),
)


@pytest.fixture(scope="module")
def scripted_app(tiny):
    """The full app over a scripted engine: validation and HTTP handling, with replies in no time."""
    from fastapi.testclient import TestClient

    from selfid.serve.api import Service, create_app
    from selfid.serve.models import Served

    served = [Served("tmp", None, None, tiny.chat, tiny.generation_defaults, "test")]
    with TestClient(create_app(Service(tiny, served, engine=ScriptedEngine(tiny))), base_url="http://localhost") as client:
        yield client


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_random_bodies_never_get_a_5xx(scripted_app, body):
    r = scripted_app.post("/v1/chat/completions", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert is_error_object(r.json())
    elif not (isinstance(body, dict) and body.get("stream") is True):
        assert r.json()["choices"][0]["message"]["content"] == "scripted reply"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.fixed_dictionaries(
    {"messages": messages, "model": st.sampled_from(["ner", "plain", "tmp"])},
    optional={"n": st.integers(1, 3), "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1),
              "stop": st.lists(st.text(min_size=1, max_size=3), max_size=4), "stream": st.booleans(),
              "seed": st.integers(0, 2**63 - 1), "logprobs": st.booleans(),
              "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2)}))
def test_random_valid_looking_bodies_through_the_real_engine_never_get_a_5xx(adapter_server, body):
    bg, _ = adapter_server
    body["max_tokens"] = 3
    r = httpx.post(bg.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert is_error_object(r.json())
