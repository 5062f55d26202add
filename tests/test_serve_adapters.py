"""Several named adapters on one base model: mixed batches in the engine, names and training parity in the API."""

from urllib.parse import unquote

import httpx
import openai
import pytest

from selfid.engine import BASE_MODEL, InProcessEngine, Request, SamplingParams
from selfid.errors import SelfidError
from selfid.model.chat import conversation
from selfid.serve.models import load_served, parse_adapter_specs
from tests.serve_helpers import (NER_SYSTEM, adapter_dirs, adapter_server, make_adapter, ner_manifest,  # noqa: F401
                                 serve_log)

GREEDY = SamplingParams(max_new_tokens=10)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tiny_model_dir, tiny):
    return adapter_dirs(tmp_path_factory, tiny_model_dir, tiny)


@pytest.fixture(scope="module")
def multi(dirs, tiny_model_dir):
    loaded, served = load_served(str(tiny_model_dir), [f"{k}={v}" for k, v in dirs.items()], device="cpu",
                                 dtype="float32", progress=False)
    return InProcessEngine(loaded), served


def test_one_batch_mixes_base_and_adapters_and_matches_each_alone(multi, tiny):
    engine, _ = multi
    prompts = [tiny.chat.render(conversation(q)).text for q in ("hi", "Who are you?", "你是谁？", "hello there")]
    reqs = [Request(p, GREEDY, adapter=a) for p, a in zip(prompts, [BASE_MODEL, "ner", "plain", "ner"])]
    together = [r.text for r in engine.generate(reqs)]
    alone = [engine.generate([Request(r.prompt, GREEDY, adapter=r.adapter)])[0].text for r in reqs]
    assert together == alone
    # the adapters really change the model, and the base rows really ran without them
    same_prompt = [engine.generate([Request(prompts[1], GREEDY, adapter=a)])[0].text for a in (BASE_MODEL, "ner", "plain")]
    assert len(set(same_prompt)) == 3
    plain_engine_text = InProcessEngine(tiny).generate([prompts[0]], GREEDY)[0].text
    assert together[0] == plain_engine_text


def test_unknown_adapter_is_refused_by_the_engine(multi, engine):
    multi_engine, _ = multi
    with pytest.raises(SelfidError, match="'nope'"):
        multi_engine.generate([Request("hi", GREEDY, adapter="nope")])
    with pytest.raises(SelfidError, match="no adapters"):
        engine.generate([Request("hi", GREEDY, adapter="ner")])


def test_adapter_rows_can_join_a_running_batch(multi, tiny):
    engine, _ = multi
    first = [Request(tiny.chat.render(conversation("Who are you?")).text, SamplingParams(max_new_tokens=12), adapter=BASE_MODEL)]
    late = [Request(tiny.chat.render(conversation("hi")).text, SamplingParams(max_new_tokens=6), adapter="ner"),
            Request(tiny.chat.render(conversation("你是谁？")).text, SamplingParams(max_new_tokens=6), adapter="plain")]
    calls = []

    def admit(free):
        calls.append(free)
        return late if len(calls) == 3 else []

    got = {ev.request: ev.finished.text for ev in engine.events(first, admit=admit) if ev.finished}
    alone = [engine.generate([r])[0].text for r in first + late]
    assert [got[i] for i in range(3)] == alone


def test_adapter_specs_are_checked(tmp_path, dirs):
    assert parse_adapter_specs([f"x={dirs['ner']}"]) == [("x", dirs["ner"])]
    assert parse_adapter_specs([str(dirs["ner"])])[0][0] == "ner"  # a bare path is named after its folder
    for bad, match in [([f"x={tmp_path}"], "not a LoRA adapter folder"),
                       ([f"x={dirs['ner']}", f"x={dirs['plain']}"], "used twice"),
                       ([f"bad name={dirs['ner']}"], "adapter name"),
                       ([f"{BASE_MODEL}={dirs['ner']}"], "adapter name")]:
        with pytest.raises(SelfidError, match=match):
            parse_adapter_specs(bad)


def test_models_lists_adapters_with_their_parent(adapter_server):
    bg, service = adapter_server
    models = {m["id"]: m for m in httpx.get(bg.url + "/v1/models").json()["data"]}
    base = service.base.name
    assert set(models) == {base, "ner", "plain"}
    assert models[base]["parent"] is None
    assert models["ner"]["parent"] == base and models["plain"]["parent"] == base
    assert models["ner"]["selfid"]["system_prompt"] == NER_SYSTEM
    assert models["ner"]["selfid"]["system_prompt_kind"] == "adapter"
    assert models["plain"]["selfid"]["system_prompt_kind"] == "template"


def test_each_name_gets_its_own_weights(adapter_server, multi, tiny):
    bg, service = adapter_server
    engine, _ = multi
    c = openai.OpenAI(base_url=bg.url + "/v1", api_key="x", max_retries=0)
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Who are you?"}]
    prompt = tiny.chat.render(messages).text
    for name, adapter in [(service.base.name, BASE_MODEL), ("ner", "ner"), ("plain", "plain")]:
        raw = c.chat.completions.with_raw_response.create(model=name, messages=messages, temperature=0, max_tokens=10)
        assert raw.headers["x-selfid-model"] == name
        want = engine.generate([Request(prompt, SamplingParams.from_defaults(tiny.generation_defaults, temperature=0,
                                                                             max_new_tokens=10), adapter=adapter)])
        assert raw.parse().choices[0].message.content == want[0].text


def test_training_system_prompt_is_used_when_the_request_has_none(adapter_server, serve_log):
    bg, _ = adapter_server
    c = openai.OpenAI(base_url=bg.url + "/v1", api_key="x", max_retries=0)
    user = [{"role": "user", "content": "你是谁?"}]
    raw = c.chat.completions.with_raw_response.create(model="ner", messages=user, temperature=0, max_tokens=8)
    assert raw.headers["x-selfid-system-source"] == "adapter"
    assert unquote(raw.headers["x-selfid-system-prompt"]) == NER_SYSTEM
    assert raw.headers["x-selfid-system-prompt-matches-training"] == "true"
    explicit = c.chat.completions.create(model="ner", messages=[{"role": "system", "content": NER_SYSTEM}] + user,
                                         temperature=0, max_tokens=8)
    assert raw.parse().choices[0].message.content == explicit.choices[0].message.content

    other = c.chat.completions.with_raw_response.create(
        model="ner", messages=[{"role": "system", "content": "You are a helpful assistant."}] + user, max_tokens=2)
    assert other.headers["x-selfid-system-prompt-matches-training"] == "false"
    assert "differs from the one adapter ner was trained with" in serve_log.text()
    # the adapter without a manifest gets the template's own system prompt, and no parity claim
    plain = c.chat.completions.with_raw_response.create(model="plain", messages=user, max_tokens=2)
    assert plain.headers["x-selfid-system-source"] == "template"
    assert "x-selfid-system-prompt-matches-training" not in plain.headers


def test_manifests_are_read_defensively(tmp_path, tiny_model_dir, tiny, serve_log):
    odd = make_adapter(tiny_model_dir, tmp_path / "odd", 3, {"train": {"system_prompt": 5, "template_hash": "0" * 16}})
    nulled = make_adapter(tiny_model_dir, tmp_path / "nulled", 4, {"train": {"system_prompt": None}})
    junk = make_adapter(tiny_model_dir, tmp_path / "junk", 5, ["not", "a", "dict"])
    # trained under the template's default with no system message sent: serve it the same way (none sent)
    unsent = make_adapter(tiny_model_dir, tmp_path / "unsent", 7, {"train": {
        "system_prompt": tiny.chat.default_system, "system_message_sent": False}})
    hashed = make_adapter(tiny_model_dir, tmp_path / "hashed", 8, ner_manifest("0" * 16))
    _, served = load_served(str(tiny_model_dir), [f"odd={odd}", f"nulled={nulled}", f"junk={junk}", f"unsent={unsent}",
                                                  f"hashed={hashed}"], device="cpu", dtype="float32", progress=False)
    by = {s.name: s for s in served}
    assert by["unsent"].training.kind == "template" and by["unsent"].training.message is None
    assert by["unsent"].default_system().kind == "adapter"
    assert (by["unsent"].default_system().message, by["unsent"].default_system().effective) == (None, tiny.chat.default_system)
    for name in ("odd", "junk"):  # a damaged manifest is ignored, with a warning: the template's own applies
        assert by[name].training is None and by[name].default_system().kind == "template"
    assert by["nulled"].training is not None and by["nulled"].default_system().effective == tiny.chat.default_system
    text = serve_log.text()
    assert "not a string or null" in text and "holds a JSON list, not an object" in text
    assert "trained with chat template 0000000000000000" in text
    broken = make_adapter(tiny_model_dir, tmp_path / "broken", 6)
    (broken / "selfid.json").write_text("{not json")
    with pytest.raises(SelfidError, match="not valid JSON"):
        load_served(str(tiny_model_dir), [f"b={broken}"], device="cpu", dtype="float32", progress=False)


def test_an_adapter_folder_can_bring_its_own_chat_template(tmp_path, tiny_model_dir, tiny):
    own = make_adapter(tiny_model_dir, tmp_path / "own", 7, ner_manifest())
    template = tiny.chat.template.replace("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
                                          "You are Own.")
    (own / "chat_template.jinja").write_text(template)
    _, served = load_served(str(tiny_model_dir), [f"own={own}"], device="cpu", dtype="float32", progress=False)
    assert served[1].chat.default_system == "You are Own." and served[1].chat.template_hash != tiny.chat.template_hash
    assert served[0].chat.default_system == tiny.chat.default_system  # the base keeps its own


def test_default_model_answers_the_seeds_unchanged_client_when_adapters_are_served(dirs, tiny_model_dir, monkeypatch):
    import os

    from langchain_openai import ChatOpenAI

    from tests.serve_helpers import start

    adapters = [f"{k}={v}" for k, v in dirs.items()]
    with pytest.raises(SelfidError, match="--default-model 'nope' is not served here"):
        start(tiny_model_dir, adapters, default_model="nope")
    bg, service = start(tiny_model_dir, adapters, default_model="ner")
    with bg:
        monkeypatch.setenv("API_PORT", str(bg.port))
        # the seed's client, as written: it sends langchain's placeholder model name
        client = ChatOpenAI(api_key=os.environ.get("API_KEY", "0"),
                            base_url="http://localhost:{}/v1".format(os.environ.get("API_PORT", 8000)),
                            include_response_headers=True, temperature=0, max_tokens=8)
        reply = client.invoke("你是谁?")
        assert reply.response_metadata["headers"]["x-selfid-model"] == "ner"
        c = openai.OpenAI(base_url=bg.url + "/v1", api_key="x", max_retries=0)
        named = c.chat.completions.create(model="ner", messages=[{"role": "user", "content": "你是谁?"}], temperature=0,
                                          max_tokens=8)
        assert reply.content == named.choices[0].message.content
        # a name the server has still picks that model
        raw = c.chat.completions.with_raw_response.create(model="plain", messages=[{"role": "user", "content": "hi"}],
                                                          max_tokens=2)
        assert raw.headers["x-selfid-model"] == "plain"


def test_adapter_rows_joining_a_static_batch_hand_it_over_to_eager_decoding(multi, tiny):
    eager, _ = multi
    engine = InProcessEngine(eager.loaded, decode="static")
    first = [Request(tiny.chat.render(conversation("hello there")).text, SamplingParams(max_new_tokens=12))]
    late = [Request(tiny.chat.render(conversation("hi")).text, SamplingParams(max_new_tokens=6), adapter="ner"),
            Request(tiny.chat.render(conversation("你是谁？")).text, SamplingParams(max_new_tokens=6), adapter=BASE_MODEL)]
    calls = []

    def admit(free):
        calls.append(free)
        return late if len(calls) == 1 else []

    got = {ev.request: ev.finished.text for ev in engine.events(first, admit=admit) if ev.finished}
    assert [got[i] for i in range(3)] == [eager.generate([r])[0].text for r in first + late]
    assert engine.decode_report()["stats"]["to_eager"] == 1  # the static rows moved to an eager cache, once


def test_rows_all_naming_the_active_adapter_decode_from_the_static_cache(multi, tiny):
    eager, _ = multi
    engine = InProcessEngine(eager.loaded, decode="static")
    active = engine._active_adapter()
    reqs = [Request(tiny.chat.render(conversation(q)).text, GREEDY, adapter=active) for q in ("hello there", "你是谁？")]
    engine.generate(["hi"], SamplingParams(max_new_tokens=1))  # the start-up check
    before = engine.decode_report()["stats"]["plain_steps"]
    got = [r.text for r in engine.generate(reqs)]
    assert got == [r.text for r in eager.generate(reqs)]
    assert engine.decode_report()["stats"]["plain_steps"] > before
