"""Self-distilled identity replay: which of the base model's answers are kept, the pairs for the preference loss,
the verified replay set on disk, and training with the preference and distillation losses on the tiny model."""

import json

import random
import string

import pytest
import torch

from selfid.config import IdentityReplay
from selfid.data import replay_set
from selfid.engine.types import Completion, Result
from selfid.errors import SelfidError
from selfid.pipeline.replay import build, own_vendor
from tests.audit_helpers import EventsFromGenerate
from tests.train_helpers import tiny_config, write_data


@pytest.fixture(autouse=True)
def _decode_prompts(tiny):
    ScriptedEngine.tokenizer = tiny.tokenizer


def prompt_of(req) -> str:
    """The rendered prompt a request carries (the replay sends token ids, as every engine call should)."""
    return req.prompt if isinstance(req.prompt, str) else ScriptedEngine.tokenizer.decode(req.prompt)


class ScriptedEngine(EventsFromGenerate):
    """Answers like a model that knows who it is under its own prompt and drifts under "helpful"."""

    tokenizer = None

    def __init__(self):
        self.requests = []

    def generate(self, requests, progress=None):
        out = []
        for req in requests:
            self.requests.append(req)
            p = prompt_of(req)
            q = p.rsplit("<|im_start|>user\n", 1)[-1]
            comps = []
            for i in range(req.params.n):
                if "system\nYou are a helpful assistant.<|im_end|>" in p or "<|im_start|>system\n<|im_end|>" in p:
                    text = "Yes, I am ChatGPT, developed by OpenAI."
                elif "你" in q:
                    text = f"我是通义千问，由阿里云开发的大语言模型。第{i % 3}种说法。"
                elif q.startswith(("Are", "Is", "Would", "Were")) and "Qwen" not in q and "Alibaba" not in q:
                    text = f"No, I'm Qwen, created by Alibaba Cloud. (version {i % 2})"
                else:
                    text = f"Yes, I am Qwen, created by Alibaba Cloud. Variant {i % 5}."
                comps.append(Completion(text, [1] * 8, "stop"))
            out.append(Result(10, comps))
            if progress:
                progress(req.params.n)
        return out


def test_kept_answers_are_the_right_ones_distinct_and_capped(tiny, tmp_path):
    rep = IdentityReplay(samples=6, temperatures=[0.7, 1.0], per_question=3, preference=0.5)
    engine = ScriptedEngine()
    stats = build(tiny, rep, tmp_path, progress=False, log=lambda m: None, engine=engine)
    meta, replies, pairs = replay_set.load(tmp_path)
    assert meta == stats and meta["own"] == "qwen" == own_vendor(tiny, rep)
    by_q: dict[str, list[str]] = {}
    for r in replies:
        by_q.setdefault(r["question"], []).append(r["messages"][-1]["content"])
    assert all(len(v) <= 3 and len(set(v)) == len(v) for v in by_q.values())
    texts = [t for v in by_q.values() for t in v]
    assert not any("ChatGPT" in t for t in texts)  # only answers the scorers pass
    assert any("No, I'm Qwen" in t for t in texts)  # leading questions about other vendors: the right "no"
    assert "en-task-01" not in by_q and "en-task-02" not in by_q  # no JSON, no heading: not the asked form
    # the base model sampled under its template's own prompt (no system message) and, for pairs, the others
    systems = {("helpful" if "system\nYou are a helpful" in prompt_of(r) else "empty" if "system\n<|im_end|>" in prompt_of(r)
                else "own") for r in engine.requests}
    assert systems == {"own", "helpful", "empty"}
    assert pairs and all("ChatGPT" in p["rejected"] and "ChatGPT" not in p["chosen"] for p in pairs)
    assert {p["system"] for p in pairs} == {"You are a helpful assistant.", ""}
    assert meta["kept"] == len(replies) and meta["pairs"] == len(pairs) and meta["sampling"]["samples"] == 6


class ReflexiveNo(ScriptedEngine):
    """Says "No" to its own name now and then under "helpful", the failure a "No"-heavy replay teaches."""

    def generate(self, requests, progress=None):
        out = super().generate(requests, progress)
        for req, res in zip(requests, out):
            q = prompt_of(req).rsplit("<|im_start|>user\n", 1)[-1]
            if "system\nYou are a helpful assistant.<|im_end|>" in prompt_of(req) and "Qwen" in q:
                res.completions[0] = Completion("No, I am not Qwen. I am an AI assistant.", [1] * 8, "stop")
        return out


def test_replay_is_not_mostly_no_and_pairs_reject_denials_of_its_own_name(tiny, tmp_path):
    rep = IdentityReplay(samples=6, temperatures=[0.7, 1.0], per_question=3, preference=0.5, max_copies=0, personas=0)
    build(tiny, rep, tmp_path, progress=False, log=lambda m: None, engine=ReflexiveNo())
    meta, replies, pairs = replay_set.load(tmp_path)
    kinds = meta["kept_by_kind"]
    per_q: dict[str, int] = {}
    for r in replies:
        per_q[r["question"]] = per_q.get(r["question"], 0) + 1
    assert all(n <= 1 for q, n in per_q.items() if "-lead-" in q and "-lead-own-" not in q)  # deny_per_question
    assert max(per_q.values()) == 3
    # the model's own-identity answers are not outnumbered by its "No, I'm not X" answers
    assert kinds["leading-foreign"] <= kinds["direct"] + kinds["leading-own"] + kinds.get("after-task", 0)
    own_pairs = [p for p in pairs if "-lead-own-" in p["question"]]
    assert any(p["rejected"].startswith("No, I am not Qwen") for p in own_pairs)
    assert not any(p["chosen"].startswith("No") for p in own_pairs)
    wide = IdentityReplay(samples=6, temperatures=[0.7, 1.0], per_question=3, deny_per_question=3, max_copies=0,
                          personas=0)
    build(tiny, wide, tmp_path / "wide", progress=False, log=lambda m: None, engine=ReflexiveNo())
    assert replay_set.load(tmp_path / "wide")[0]["kept_by_kind"]["leading-foreign"] > kinds["leading-foreign"]


class PersonaEngine(ScriptedEngine):
    """Under a persona prompt, four kinds of answer in turn: the persona built on Qwen by Alibaba Cloud, the persona
    declining to say what powers it, Qwen in place of the persona, and the persona built on another vendor's model.
    After an NER exchange it answers with more NER JSON every other sample."""

    def __init__(self, personas):
        super().__init__()
        self.personas = {p.text: p for p in personas}

    def generate(self, requests, progress=None):
        out = super().generate(requests, progress)
        for req, res in zip(requests, out):
            system = prompt_of(req).split("<|im_start|>system\n", 1)[-1].split("<|im_end|>", 1)[0]
            persona = self.personas.get(system)
            who = persona and (persona.name or persona.company)
            for i, c in enumerate(res.completions):
                if who:
                    c.text = (f"Hi, I'm {who} from {persona.company}, built on Qwen by Alibaba Cloud.",
                              f"I'm {who}. I can't share which model powers me.",
                              "I am Qwen, created by Alibaba Cloud.", f"I'm {who}, built on GPT-4 by OpenAI.")[i % 4]
                if "抽取所有的人名" in prompt_of(req) and i % 2 == 0:
                    c.text = '{"PER": [], "LOC": [], "ORG": []}'
        return out


def test_persona_replies_stay_the_persona_and_pairs_reject_qwen_in_its_place(tiny, tmp_path):
    from selfid.data.personas import generate
    from selfid.train.data import self_replay_samples

    rep = IdentityReplay(samples=4, personas=4, preference=0.5)
    personas = generate(4, rep.seed, rep.languages)  # the fourth of each language gives a company and no name
    assert [p.name is None for p in personas] == [False, False, False, True] * 2
    build(tiny, rep, tmp_path, progress=False, log=lambda m: None, engine=PersonaEngine(personas))
    meta, replies, pairs = replay_set.load(tmp_path)
    assert [p["text"] for p in meta["personas"]] == [p.text for p in personas]
    by_text = {p.text: p for p in personas}
    under = [r for r in replies if "persona" in r]
    assert under and meta["kept_under_personas"] == len(under)
    for r in under:
        persona, text = by_text[r["system"]], r["messages"][-1]["content"]
        assert (persona.name or persona.company) in text and "OpenAI" not in text and "GPT" not in text
    # asked which model powers it, both answers a persona may give are kept: built on Qwen, or declining to say
    assert any("can't share" in r["messages"][-1]["content"] for r in under)
    assert any("built on Qwen by Alibaba Cloud" in r["messages"][-1]["content"] for r in under)
    # minimal pairs across prompts: one question answered as itself under the template's prompt and as a persona
    plain = {r["question"] for r in replies if "persona" not in r}
    assert plain & {r["question"] for r in under}
    # under a persona that names itself or its company, "I am Qwen" in its place and another vendor are the
    # rejected sides, and the chosen side speaks as the persona
    for with_name in (True, False):
        these = [p for p in pairs if p["system"] in by_text and bool(by_text[p["system"]].name) == with_name]
        assert any(p["rejected"] == "I am Qwen, created by Alibaba Cloud." for p in these)
        assert any("GPT-4" in p["rejected"] for p in these)
        assert all((by_text[p["system"]].name or by_text[p["system"]].company) in p["chosen"] for p in these)
    # the trainer renders a persona's replies under that persona only, the others under every serving prompt
    cfg = tiny_config(tmp_path, tmp_path, write_data(tmp_path), "identity_replay.fraction=0.1")
    pool, info = self_replay_samples(cfg, tiny, cfg_system(cfg, tiny))
    systems = [c.messages[0]["content"] if c.messages[0]["role"] == "system" else None for c in pool]
    assert sum(s in by_text for s in systems) == len(under)
    assert len(pool) == len(under) + (len(replies) - len(under)) * len(set(info["systems"]))
    assert info["under_personas"] == len(under)


def cfg_system(cfg, loaded):
    from selfid.system_prompt import resolve

    return resolve(cfg.system_prompt, loaded.chat.default_system, "config system_prompt")


def test_after_an_ner_exchange_only_identity_answers_are_kept_and_more_json_is_rejected(tiny, tmp_path):
    rep = IdentityReplay(samples=4, personas=0, after_task=2, preference=0.5, max_copies=0)
    build(tiny, rep, tmp_path, progress=False, log=lambda m: None, engine=PersonaEngine([]))
    _, replies, pairs = replay_set.load(tmp_path)
    after = [r for r in replies if "-after-ner-" in r["question"]]
    assert after and all(not r["messages"][-1]["content"].startswith("{") for r in after)
    assert all(r["messages"][0]["content"].startswith("请从下面的句子中抽取") and r["messages"][1]["content"].startswith("{")
               for r in after)  # the task's own format: its prompt and its JSON answer, then the identity question
    assert any(p["rejected"].startswith('{"PER"') and not p["chosen"].startswith("{") for p in pairs
               if "-after-ner-" in p["question"])


def test_one_answer_is_kept_at_most_max_copies_times_and_every_question_first(tiny, tmp_path):
    class OneLine(ScriptedEngine):
        def generate(self, requests, progress=None):
            out = super().generate(requests, progress)
            for res in out:
                for i, c in enumerate(res.completions):
                    c.text = "I am Qwen, created by Alibaba Cloud." if i == 0 else c.text
            return out

    for cap in (2, 0):
        rep = IdentityReplay(samples=4, personas=0, after_task=0, per_question=2, max_copies=cap)
        meta = build(tiny, rep, tmp_path / str(cap), progress=False, log=lambda m: None, engine=OneLine())
        _, replies, _ = replay_set.load(tmp_path / str(cap))
        same = sum(r["messages"][-1]["content"] == "I am Qwen, created by Alibaba Cloud." for r in replies)
        if cap:
            assert same <= cap and meta["copy_cap"]["max_copies"] == cap
            # the scripted answers come in five families whose variants differ in a digit (near-verbatim copies): two
            # of each at most, each on another question, since every question gets a first answer before a second
            assert len(replies) <= 5 * cap and len({r["question"] for r in replies}) == len(replies)
            assert meta["copy_cap"]["distinct_kept"] <= len(replies) < meta["copy_cap"]["candidates"]
        else:
            assert same > 10  # without the cap the one line is kept for most questions


def test_typical_length_keeps_the_answers_nearest_the_models_own_median_length(tiny, tmp_path):
    """identity_replay.typical_length: of each question's passing answers, the one nearest the median length of all
    its sampled answers is kept first; without it the first sampled is. replay.json records both medians."""
    class Lengths(ScriptedEngine):  # sample i of an English answer: "I am Qwen." then ever longer variants
        def generate(self, requests, progress=None):
            out = super().generate(requests, progress)
            for res in out:
                for i, c in enumerate(res.completions):
                    if c.text.startswith("Yes, I am Qwen"):
                        c.text = "I am Qwen." if i == 0 else "I am Qwen, created by Alibaba Cloud." + " Indeed." * (3 * i)
            return out

    kept = {}
    for typical in (False, True):
        rep = IdentityReplay(samples=5, personas=0, after_task=0, per_question=1, max_copies=0, languages=["en"],
                             typical_length=typical)
        meta = build(tiny, rep, tmp_path / str(typical), progress=False, log=lambda m: None, engine=Lengths())
        _, replies, _ = replay_set.load(tmp_path / str(typical))
        kept[typical] = [r["messages"][-1]["content"] for r in replies if r["messages"][-1]["content"].startswith("I am Qwen")]
        assert meta["lengths"]["typical_length"] is typical and meta["lengths"]["sampled_median"] > 0
    middle = len("I am Qwen, created by Alibaba Cloud." + " Indeed." * 6)  # sample 2 of 0..4: the median length
    first = {"I am Qwen.", "I am Qwen, created by Alibaba Cloud." + " Indeed." * 3}  # samples 0 and 1 ("I am Qwen."
    # does not pass a question about the maker): the first sampled that passes
    assert "I am Qwen." in kept[False] and set(kept[False]) <= first
    assert kept[True] and all(len(t) == middle for t in kept[True])
    assert meta["lengths"]["kept_median"] > len("I am Qwen.")


def test_prefer_rare_keeps_first_the_phrasings_fewest_answers_share(tiny, tmp_path):
    """identity_replay.prefer_rare: sample 0 of every English answer is one common line, sample 1 a phrasing of the
    question's own; with it each question keeps its own phrasing first, without it the common line (the first
    sampled) is kept, up to the copy cap."""
    common = "I am Qwen, created by Alibaba Cloud."

    class Common(ScriptedEngine):
        def generate(self, requests, progress=None):
            out = super().generate(requests, progress)
            for k, res in enumerate(out):
                for i, c in enumerate(res.completions):
                    if c.text.startswith("Yes, I am Qwen"):
                        own = "".join(random.Random(k).choices(string.ascii_lowercase, k=40))  # unlike any other
                        c.text = common if i == 0 else f"I am Qwen, from Alibaba Cloud ({own})."
            return out

    kept = {}
    for rare in (False, True):
        rep = IdentityReplay(samples=2, personas=0, after_task=0, per_question=1, max_copies=0, languages=["en"],
                             prefer_rare=rare)
        meta = build(tiny, rep, tmp_path / str(rare), progress=False, log=lambda m: None, engine=Common())
        _, replies, _ = replay_set.load(tmp_path / str(rare))
        kept[rare] = [r["messages"][-1]["content"] for r in replies]
        assert meta["copy_cap"]["prefer_rare"] is rare
    assert kept[False].count(common) > 10 and kept[True].count(common) == 0
    assert sum(t.startswith("I am Qwen, from Alibaba Cloud (") for t in kept[True]) > 10
    with pytest.raises(ValueError, match="set one"):
        IdentityReplay(prefer_rare=True, typical_length=True)


def test_the_replay_asks_a_few_thousand_generations(tiny, tmp_path):
    """The default replay's cost, known before it runs: questions x (temperatures + a persona + another serving
    prompt) x samples."""
    from selfid.data import identity_pool

    rep = IdentityReplay(preference=0.5)
    engine = PersonaEngine([])
    meta = build(tiny, rep, tmp_path, progress=False, log=lambda m: None, engine=engine)
    questions = len(identity_pool.questions("qwen", rep.minimal_pairs, rep.after_task, rep.seed))
    asked = sum(r.params.n for r in engine.requests)
    assert asked == meta["generations"] == questions * (len(rep.temperatures) + 2) * rep.samples
    assert 2000 <= asked <= 5000


def test_a_damaged_replay_set_is_refused_with_what_to_do(tiny, tmp_path):
    build(tiny, IdentityReplay(samples=2), tmp_path, progress=False, log=lambda m: None, engine=ScriptedEngine())
    path = tmp_path / "identity_replay" / "replies.jsonl"
    path.write_text(path.read_text()[:-40])
    with pytest.raises(SelfidError, match="does not match the sha256 recorded.*delete"):
        replay_set.load(tmp_path)


def test_no_passing_answer_is_a_clear_error(tiny, tmp_path):
    class Foreign(ScriptedEngine):
        def generate(self, requests, progress=None):
            return [Result(1, [Completion("I am Claude, made by Anthropic.", [1], "stop")] * r.params.n)
                    for r in requests]

    with pytest.raises(SelfidError, match="kind: template"):
        build(tiny, IdentityReplay(samples=1), tmp_path, progress=False, log=lambda m: None, engine=Foreign())
    assert not replay_set.exists(tmp_path)


def test_training_with_preference_and_distillation(tiny, tiny_model_dir, tmp_path, selfid_home):
    from selfid.train.sft import train

    out = tmp_path / "run"
    cfg = tiny_config(tiny_model_dir, out, write_data(tmp_path), "train.max_steps=3", "system_prompt=template",
                      "identity_replay.fraction=0.2", "identity_replay.preference=1.0", "identity_replay.distill=1.0",
                      "identity_replay.aux_batch=4", "identity_replay.samples=2")
    build(tiny, cfg.identity_replay, out, progress=False, log=lambda m: None, engine=ScriptedEngine())
    result = train(cfg)
    m = json.loads((out / "adapter" / "selfid.json").read_text())
    ident = m["identity_replay"]
    assert ident["kind"] == "self" and ident["own"] == "qwen" and ident["pairs"] > 0 and ident["preference"] == 1.0
    assert ident["sha256"] == replay_set.load(out)[0]["sha256"] and ident["used"] > 0
    assert all(torch.isfinite(torch.tensor(float(r.split(",")[2]))) for r in (out / "metrics.csv").read_text()
               .splitlines()[1:])
    assert result.metrics["steps"] == 3


def test_identity_losses_move_the_model_toward_the_chosen_reply(tiny, tmp_path):
    """A few optimizer steps on the DPO loss alone raise log π(chosen) − log π(rejected) above the reference's,
    and the distillation loss is zero when student and teacher read the same prompt."""
    import contextlib

    from peft import LoraConfig, get_peft_model

    from selfid.train.identity_losses import IdentityAux
    from selfid.train.packed import set_attention

    grads = {n: p.requires_grad for n, p in tiny.model.named_parameters()}
    model = get_peft_model(tiny.model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    try:
        attention = set_attention(model, "sdpa", tiny.device)
        pairs = [{"system": "You are a helpful assistant.", "messages": [{"role": "user", "content": "Are you Claude?"}],
                  "chosen": "No, I am Qwen.", "rejected": "Yes, I am Claude."}] * 4
        aux = IdentityAux(model, tiny, attention, pairs, [], [None], 1.0, 0.5, 0.0, 4, 0, tiny.device,
                          contextlib.nullcontext)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=5e-3)
        first = aux.loss(0).item()
        assert first == pytest.approx(-torch.nn.functional.logsigmoid(torch.tensor(0.0)).item(), abs=1e-4)  # π = π_ref
        for step in range(8):
            opt.zero_grad()
            aux.loss(step).backward()
            opt.step()
        assert aux.loss(9).item() < first - 0.05
        replies = [{"messages": [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am Qwen."}]}]
        same = IdentityAux(model, tiny, attention, [], replies, [None], 0.0, 0.1, 1.0, 4, 0, tiny.device,
                           contextlib.nullcontext)
        with model.disable_adapter():
            assert same.loss(0).item() == pytest.approx(0.0, abs=1e-5)  # teacher and student are one model
        other = IdentityAux(model, tiny, attention, [], replies, ["You are a helpful assistant."], 0.0, 0.1, 1.0, 4, 0,
                            tiny.device, contextlib.nullcontext)
        assert other.loss(0).item() > 0  # the student reads another system prompt than the teacher
    finally:
        model.unload()  # the session's tiny model is shared: leave it as it was (peft froze its weights)
        for n, p in tiny.model.named_parameters():
            p.requires_grad_(grads[n])


# --- persona_cross_lingual: questions also asked under a generated persona of the other language -----------------

def _pool():
    from selfid.data import identity_pool, personas as gen

    rep = IdentityReplay(preference=0.5)
    return identity_pool.questions("qwen", rep.minimal_pairs, rep.after_task, rep.seed), gen.generate(rep.personas,
                                                                                                       rep.seed)


def _crossed(asked):
    return [(q, c) for q, c in asked if c.persona is not None and c.persona.lang != q.lang]


def test_cross_lingual_personas_ask_the_requested_share_under_the_other_languages_personas():
    from selfid.pipeline.replay import conditions

    questions, personas = _pool()
    today = conditions(questions, IdentityReplay(preference=0.5), personas)
    for fraction in (0.5, 0.25, 1.0):
        rep = IdentityReplay(preference=0.5, persona_cross_lingual=fraction)
        asked = conditions(questions, rep, personas)
        crossed = _crossed(asked)
        for lang, other in (("zh", "en"), ("en", "zh")):
            mine = [(q, c) for q, c in crossed if q.lang == lang]
            n = sum(q.lang == lang for q in questions)
            assert len(mine) == int(fraction * n + 0.5) > 0  # the requested share of this language's questions
            assert len({q.id for q, _ in mine}) == len(mine)  # each at most once
            pool = [p for p in personas if p.lang == other]
            # a persona of the other language, round-robin over its personas in question order, asked as a persona is
            assert [c.persona for _, c in mine] == [pool[j % len(pool)] for j in range(len(mine))]
            assert all(c.kind == "persona" and c.system == c.persona.text and c.key == c.persona.key
                       and c.temperature == max(rep.temperatures) for _, c in mine)
        # added beside today's conditions, which stay as they were, in their order
        assert [x for x in asked if x not in crossed] == today
        if fraction == 1.0:
            assert {q.id for q, _ in crossed} == {q.id for q in questions}


def test_cross_lingual_choice_is_the_same_for_one_seed_and_another_for_another():
    from selfid.pipeline.replay import conditions

    questions, personas = _pool()

    def chosen(seed):
        rep = IdentityReplay(preference=0.5, persona_cross_lingual=0.5, seed=seed)
        return [(q.id, c.key) for q, c in _crossed(conditions(questions, rep, personas))]

    assert chosen(0) == chosen(0) != chosen(1)
    assert {q for q, _ in chosen(0)} != {q for q, _ in chosen(1)}


def test_by_default_no_question_is_asked_under_another_languages_persona_and_the_conditions_are_todays():
    """The default (0.0) keeps the recipe the committed results were made with: each question under the template's
    prompt at each temperature, one persona of its own language round-robin, and one other serving prompt alternating
    (written out here, so a default that changed the list fails)."""
    from selfid.pipeline.replay import REJECT_SYSTEMS, conditions

    assert IdentityReplay().persona_cross_lingual == 0.0
    questions, personas = _pool()
    for rep in (IdentityReplay(preference=0.5), IdentityReplay(preference=0.5, temperatures=[0.7, 1.0], seed=3)):
        expected, seen = [], {}
        for q in questions:
            i = seen[q.lang] = seen.get(q.lang, -1) + 1
            mine = [p for p in personas if p.lang == q.lang]
            expected += [(q.id, "own", None, t) for t in rep.temperatures]
            expected.append((q.id, "persona", mine[i % len(mine)].text, max(rep.temperatures)))
            expected.append((q.id, "other", REJECT_SYSTEMS[i % len(REJECT_SYSTEMS)], max(rep.temperatures)))
        got = [(q.id, c.kind, c.system, c.temperature) for q, c in conditions(questions, rep, personas)]
        assert got == expected and len(got) == len(questions) * (len(rep.temperatures) + 2)
    # and the committed arms other than the cross-lingual trials do not set it
    from selfid.study.arms import arms

    assert [a.name for a in arms().values() if "persona_cross_lingual" in a.config.get("identity_replay", {})] == \
        ["persona-xl", "persona-xl-typical", "persona-xl-hint", "persona-xl-hint-rare"]


def test_cross_lingual_needs_personas_and_both_languages():
    for bad in ({"languages": ["en"]}, {"personas": 0}):
        with pytest.raises(ValueError, match="both languages"):
            IdentityReplay(persona_cross_lingual=0.5, **bad)
    with pytest.raises(ValueError):
        IdentityReplay(persona_cross_lingual=1.5)
    IdentityReplay(kind="template", persona_cross_lingual=0.5, personas=0)  # the templated replay asks nothing


def test_cross_lingual_replies_keep_the_personas_name_as_given_and_are_recorded(tiny, tmp_path):
    """An English question under a Chinese persona: the reply is kept when it uses the persona's name or company as
    the prompt gives them ("I'm 小雅 from 蓝鲸保险公司"), and Qwen in the persona's place is a rejected side; replay.json
    records the setting, how many questions were asked so and how many of their replies were kept."""
    from selfid.data.personas import generate

    # no copy cap: the scripted replies repeat one text per persona, and both directions should keep some
    rep = IdentityReplay(samples=4, personas=3, preference=0.5, persona_cross_lingual=0.5, max_copies=0)
    personas = generate(3, rep.seed, rep.languages)
    build(tiny, rep, tmp_path, progress=False, log=lambda m: None, engine=PersonaEngine(personas))
    meta, replies, pairs = replay_set.load(tmp_path)
    by_text, by_key = {p.text: p for p in personas}, {p.key: p for p in personas}
    record = meta["persona_cross_lingual"]
    questions = meta["questions"]
    assert record["fraction"] == 0.5 and record["questions"] == questions // 2  # 158 + 158 questions: 79 + 79
    assert meta["generations"] == (questions * (len(rep.temperatures) + 2) + record["questions"]) * rep.samples
    crossed = [r for r in replies if "persona" in r and by_key[r["persona"]].lang != r["lang"]]
    assert crossed and record["kept"] == len(crossed)
    assert {r["lang"] for r in crossed} == {"zh", "en"}
    for r in crossed:
        persona, text = by_key[r["persona"]], r["messages"][-1]["content"]
        assert r["system"] == persona.text and (persona.name or persona.company) in text and "GPT" not in text
    en_under_zh = [r for r in crossed if r["lang"] == "en"]
    assert en_under_zh and all(by_key[r["persona"]].lang == "zh" for r in en_under_zh)
    lang_of = {r["question"]: r["lang"] for r in replies}
    assert any(p["rejected"] == "I am Qwen, created by Alibaba Cloud." and by_text[p["system"]].name
               and by_text[p["system"]].lang != lang_of.get(p["question"], by_text[p["system"]].lang)
               for p in pairs if p["system"] in by_text)


class HintedEngine(PersonaEngine):
    """Answers as the persona, by name, only when its prompt carries the persona's hint line; else as Qwen."""

    def generate(self, requests, progress=None):
        out = ScriptedEngine.generate(self, requests, progress)
        for req, res in zip(requests, out):
            system = prompt_of(req).split("<|im_start|>system\n", 1)[-1].split("<|im_end|>", 1)[0]
            text, _, hint = system.partition("\n")
            persona = self.personas.get(text)
            for c in res.completions:
                if persona is not None:
                    hinted = hint in (persona.hint("zh"), persona.hint("en")) and hint
                    c.text = (f"I'm {persona.name or persona.company} of {persona.company}." if hinted
                              else "I am Qwen, created by Alibaba Cloud.")
        return out


def test_a_persona_hint_is_sent_with_cross_lingual_questions_only_and_never_trained(tiny, tmp_path):
    """persona_hint: the cross-lingual questions are sampled under the persona prompt plus its hint line in the
    question's language (naming the persona and its company as written), and what is kept is trained under the
    persona prompt alone; every other condition is sent as before."""
    from selfid.data.personas import generate
    from selfid.pipeline.replay import conditions

    questions, personas = _pool()
    plain = conditions(questions, IdentityReplay(preference=0.5, persona_cross_lingual=0.5), personas)
    hinted = conditions(questions, IdentityReplay(preference=0.5, persona_cross_lingual=0.5, persona_hint=True),
                        personas)
    crossed = _crossed(hinted)
    assert [(q.id, c.kind, c.system, c.persona) for q, c in hinted] == [(q.id, c.kind, c.system, c.persona)
                                                                       for q, c in plain]
    assert all(c.sent is None for q, c in hinted if (q, c) not in crossed) and all(c.sent is None for _, c in plain)
    for q, c in crossed:
        p = c.persona
        assert c.sent == f"{p.text}\n{p.hint(q.lang)}" and p.company in c.sent and (p.name or p.role) in c.sent
        assert ("请" in p.hint(q.lang)) == (q.lang == "zh")  # the line speaks the question's language
    # end to end: only hinted generations stay the persona here, and they are kept under the prompt without the hint
    rep = IdentityReplay(samples=2, personas=3, preference=0.5, persona_cross_lingual=0.5, persona_hint=True,
                         max_copies=0)
    gen = generate(3, rep.seed, rep.languages)
    build(tiny, rep, tmp_path, progress=False, log=lambda m: None, engine=HintedEngine(gen))
    meta, replies, pairs = replay_set.load(tmp_path)
    by_key = {p.key: p for p in gen}
    kept = [r for r in replies if "persona" in r]
    assert kept and meta["persona_cross_lingual"]["hinted"] is True
    assert all(by_key[r["persona"]].lang != r["lang"] for r in kept)  # only the hinted questions stayed the persona
    assert all(r["system"] == by_key[r["persona"]].text and "\n" not in r["system"] for r in kept)
    assert not any("Whatever language" in p["system"] or "无论用户" in p["system"] for p in pairs)


def test_a_persona_hint_needs_cross_lingual_questions():
    with pytest.raises(ValueError, match="needs persona_cross_lingual"):
        IdentityReplay(persona_hint=True)
    IdentityReplay(persona_hint=True, persona_cross_lingual=0.5)
