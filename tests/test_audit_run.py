"""The audit grid: in-process on the tiny model, seeds, the run folder's contents, resume, bad input, summaries."""

import json

import pytest
from typer.testing import CliRunner

from selfid.audit.backends import InProcessBackend
from selfid.audit.log import LOG, read_log
from selfid.audit.run import AuditParams, audit_systems, plan, run_audit
from selfid.audit.probes import load_suite
from selfid.engine import SamplingParams
from selfid.errors import SelfidError
from selfid.system_prompt import HELPFUL, DeprecatedSpelling
from tests.audit_helpers import ScriptedBackend, as_before_the_rename, write_probes

TWO = ["en-direct-01", "zh-direct-01"]


def params(probes, **kw):
    base = dict(suites=["identity"], systems=audit_systems(["template,helpful"]), temperatures=[0.0, 0.7], samples=3,
                seed=5, max_new_tokens=6, ner_limit=1, own="qwen", identity_probes=str(probes))
    base.update(kw)
    return AuditParams(**base)


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    return write_probes(tmp_path_factory.mktemp("probes") / "two.jsonl", TWO)


@pytest.fixture(scope="module")
def tiny_run(tiny, engine, probes, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    summary = run_audit(InProcessBackend(tiny, engine), params(probes), out, show_progress=False)
    return out, summary


def test_run_files_are_as_readable_as_the_generation_log(tiny_run):
    import os
    import stat

    out, _ = tiny_run
    modes = {name: stat.S_IMODE(os.stat(out / name).st_mode) for name in ("run.json", "summary.json", "report.html", LOG)}
    assert len(set(modes.values())) == 1, modes  # no longer 0600 beside a 0644 generations.jsonl


def test_grid_has_one_greedy_sample_and_n_sampled_per_prompt(tiny_run):
    out, summary = tiny_run
    recs = read_log(out / LOG)
    assert len(recs) == 2 * 2 * (1 + 3) == json.loads((out / "run.json").read_text())["planned"]
    assert len({r["key"] for r in recs}) == len(recs)
    assert {r["sample"] for r in recs if r["temperature"] == 0} == {0}
    assert {r["sample"] for r in recs if r["temperature"] == 0.7} == {0, 1, 2}
    cells = {(c["system"], c["temperature"]): c for c in summary["identity"]["cells"]}
    assert cells[("helpful", 0.0)]["foreign"]["n"] == 2 and cells[("helpful", 0.7)]["foreign"]["n"] == 6
    assert summary["run"]["complete"]


def test_each_logged_reply_is_what_the_engine_gives_for_its_seed_alone(tiny_run, tiny, engine):
    out, _ = tiny_run
    for r in read_log(out / LOG):
        if r["temperature"] == 0.7 and r["sample"] == 2 or r["temperature"] == 0:
            p = SamplingParams.from_defaults(tiny.generation_defaults, temperature=r["temperature"], seed=r["seed"],
                                             max_new_tokens=r["max_new_tokens"])
            assert engine.generate([r["rendered"]], p)[0].text == r["reply"], r["key"]
    by_key = {r["key"]: r for r in read_log(out / LOG)}
    samples = [by_key[f"identity|en-direct-01|helpful|t=0.7|s={i}"] for i in range(3)]
    assert [s["seed"] for s in samples] == [samples[0]["seed"] + i for i in range(3)]


def test_samples_are_logged_as_they_finish_while_the_others_still_decode(tiny, engine, probes, tmp_path, monkeypatch):
    """The in-process backend hands each sample to the log (and its scorer) between decoding steps, not after the
    whole batch: the scoring overlaps generation. Steps are counted by wrapping the engine's decoding loop."""
    steps = {"n": 0}
    real_step = type(engine)._step

    def counted(self, batch):
        steps["n"] += 1
        yield from real_step(self, batch)

    monkeypatch.setattr(type(engine), "_step", counted)
    at_log = []
    items = plan(params(probes, max_new_tokens=12), {"identity": load_suite("identity", str(probes), 1, 5)})
    InProcessBackend(tiny, engine).run(items, lambda item, reply: at_log.append((steps["n"], reply.completion_tokens)))
    assert len(at_log) == len(items)
    # replies that stopped early were logged while longer ones were still being decoded
    short = [n for n, tokens in at_log if tokens < 12]
    assert short and min(short) < steps["n"], (at_log, steps["n"])


def test_run_folder_records_template_system_prompts_and_rendered_text(tiny_run, tiny):
    out, summary = tiny_run
    meta = json.loads((out / "run.json").read_text())
    assert meta["target"]["template_hash"] == tiny.chat.template_hash == summary["run"]["template_hash"]
    systems = {s["key"]: s for s in meta["systems"]}
    assert systems["template"] == {"key": "template", "text": None, "effective": tiny.chat.default_system, "source": "template"}
    assert systems["helpful"]["effective"] == "You are a helpful assistant." and systems["helpful"]["source"] == "text"
    assert meta["suites"]["identity"]["sha256"] and meta["own"] == "qwen"
    # the log is in the order replies finish; this is the record of one (probe, system prompt)
    rec = next(r for r in read_log(out / LOG) if r["system"] == "template" and r["messages"][-1]["content"] == "Who are you?")
    assert "You are Qwen, created by Alibaba Cloud." in rec["rendered"] and rec["effective_system"] == tiny.chat.default_system
    assert rec["messages"] == [{"role": "user", "content": "Who are you?"}]
    assert {"seed", "finish_reason", "reply", "probe_meta"} <= rec.keys()
    assert not {"claims", "foreign", "own"} & rec.keys()  # verdicts are the scorers', computed from the log
    assert (out / "summary.json").is_file() and (out / "report.html").is_file()


def test_identity_margin_is_the_teacher_forced_logprob_difference(tiny_run, tiny):
    from selfid.engine.score import continuation_logprobs
    from selfid.model.chat import conversation

    out, summary = tiny_run
    cell = summary["identity"]["margin"]["helpful"]["en"]["name"]
    ctx = tiny.tokenizer(tiny.chat.render(conversation("Who are you?", "You are a helpful assistant.")).text + "I am",
                         add_special_tokens=False).input_ids
    lp = {v: sum(continuation_logprobs(tiny, [(ctx, tiny.tokenizer(" " + name, add_special_tokens=False).input_ids)])[0])
          for v, name in (("qwen", "Qwen"), ("openai", "ChatGPT"))}
    assert cell["logprobs"]["qwen"] == pytest.approx(lp["qwen"], abs=1e-4)
    assert cell["logprobs"]["openai"] == pytest.approx(lp["openai"], abs=1e-4)
    foreign = {v: x for v, x in cell["logprobs"].items() if v != "qwen"}
    assert cell["margin"] == pytest.approx(lp["qwen"] - max(foreign.values()))
    assert cell["best_foreign"] == max(foreign, key=foreign.get)


def test_resume_after_an_interruption_loses_nothing_repeats_nothing_and_matches(tiny, engine, probes, tiny_run, tmp_path,
                                                                                monkeypatch):
    backend = InProcessBackend(tiny, engine, rows_per_call=4)
    calls = {"n": 0}
    real = InProcessBackend._generate

    def interrupted(self, work, on_done, advance):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real(self, work, on_done, advance)

    monkeypatch.setattr(InProcessBackend, "_generate", interrupted)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_audit(backend, params(probes), out, show_progress=False)
    first = read_log(out / LOG)
    assert 0 < len(first) < 16 and not (out / "summary.json").exists()
    monkeypatch.setattr(InProcessBackend, "_generate", real)
    generated = []
    original_run = InProcessBackend.run

    def recording_run(self, items, on_done, advance=lambda n: None):
        generated.extend(i.key for i in items)
        return original_run(self, items, on_done, advance)

    monkeypatch.setattr(InProcessBackend, "run", recording_run)
    run_audit(backend, params(probes), out, resume=True, show_progress=False)
    recs = read_log(out / LOG)
    assert sorted(generated) == sorted({r["key"] for r in recs} - {r["key"] for r in first})  # only the missing ones
    assert len(recs) == len({r["key"] for r in recs}) == 16
    uninterrupted = {r["key"]: r["reply"] for r in read_log(tiny_run[0] / LOG)}
    assert {r["key"]: r["reply"] for r in recs} == uninterrupted



def test_a_line_cut_short_by_a_kill_is_dropped_and_redone(probes, tmp_path):
    out = tmp_path / "run"
    run_audit(ScriptedBackend(lambda it: "I am Qwen."), params(probes), out, show_progress=False)
    lines = (out / LOG).read_text().splitlines(keepends=True)
    (out / LOG).write_text("".join(lines[:-2]) + lines[-2][:25])  # as if killed mid-write
    again = ScriptedBackend(lambda it: "I am Qwen.")
    summary = run_audit(again, params(probes), out, resume=True, show_progress=False)
    assert len(again.calls) == 2
    assert len(read_log(out / LOG)) == 16 and summary["run"]["complete"]


def test_scripted_replies_give_exact_counts_by_cell_language_and_vendor(probes, tmp_path):
    def reply(it):
        if it.system == "helpful" and it.temperature > 0 and it.sample != 1:
            return "I am ChatGPT, created by OpenAI." if it.probe.lang == "en" else "我是Claude。"
        return "I'm not ChatGPT, I'm Qwen."

    s = run_audit(ScriptedBackend(reply), params(probes), tmp_path / "r", show_progress=False)
    cells = {(c["system"], c["temperature"]): c for c in s["identity"]["cells"]}
    hot = cells[("helpful", 0.7)]
    assert (hot["foreign"]["k"], hot["foreign"]["n"]) == (4, 6)
    assert hot["by_lang"]["en"]["k"] == 2 and hot["by_lang"]["zh"]["k"] == 2
    assert {v: r["k"] for v, r in hot["by_vendor"].items()} == {"openai": 2, "claude": 2}
    assert hot["own"]["k"] == 2 and hot["foreign"]["ci95"][0] < 4 / 6 < hot["foreign"]["ci95"][1]
    assert cells[("template", 0.7)]["foreign"]["k"] == 0 and cells[("template", 0.7)]["own"]["k"] == 6
    assert s["identity"]["by_system"]["helpful"]["foreign"]["k"] == 4
    assert hot["examples"][0]["foreign"]  # foreign claims are shown first


def test_plan_seeds_are_stable_and_task_suites_run_greedy_once(probes):
    p = params(probes, suites=["identity", "general"], samples=4)
    suites = {"identity": load_suite("identity", probes), "general": load_suite("general")}
    a, b = plan(p, suites), plan(p, suites)
    assert [(i.key, i.seed) for i in a] == [(i.key, i.seed) for i in b]
    general = [i for i in a if i.suite == "general"]
    assert len(general) == 22 * 2 and {i.temperature for i in general} == {0.0}
    assert len({i.seed for i in a}) == len(a)


def test_audit_systems_are_system_prompts_resolved_by_the_one_vocabulary():
    from selfid.manifest import training_system

    got = audit_systems(["template,helpful", "empty,text:You are Tom, a helper."], "You are Qwen.")
    assert {k: (v.kind, v.message, v.effective) for k, v in got.items()} == {
        "template": ("template", None, "You are Qwen."), "helpful": ("text", HELPFUL, HELPFUL),
        "empty": ("empty", "", ""), "text": ("text", "You are Tom, a helper.", "You are Tom, a helper.")}
    assert all(v.origin == "--systems" for v in got.values())
    trained = training_system({"format": 2, "train": {"system": {"kind": "text", "message": "You are NERbot.",
                                                                 "effective": "You are NERbot."}}})
    adapter = audit_systems(["adapter"], None, trained)["adapter"]
    assert (adapter.kind, adapter.message) == ("adapter", "You are NERbot.")
    personas = audit_systems(["personas"])
    assert list(personas) == ["persona-zh", "persona-en", "persona-task", "persona-zh-card", "persona-en-card"] and all(v.kind == "text" for v in personas.values())
    for bad, msg in ((["nope"], "unknown system prompt 'nope'"), (["adapter"], "--systems adapter needs an adapter"),
                     (["template,template"], "names the same system prompt twice"), (["none"], "use empty")):
        with pytest.raises(SelfidError, match=msg):
            audit_systems(bad)


def test_audit_systems_read_the_older_spellings_with_a_deprecation_message(deprecations):
    from selfid.manifest import training_system

    trained = training_system({"train": {"system_prompt": "You are NERbot.", "system_message_sent": True}})
    with pytest.warns(DeprecatedSpelling) as said:
        got = audit_systems(["default,train", "custom:You are Tom, a helper."], None, trained)
    assert {k: v.message for k, v in got.items()} == {"template": None, "adapter": "You are NERbot.",
                                                      "text": "You are Tom, a helper."}
    messages = [str(w.message) for w in said]
    assert len(messages) == 3 and all(m.startswith("--systems: ") and "older spelling" in m for m in messages)
    assert ["read as 'template'" in m for m in messages].count(True) == 1 and any("read as 'adapter'" in m for m in messages)
    assert any("read as 'text:You are Tom, a helper.'" in m for m in messages)


def test_seeds_are_those_of_runs_before_the_rename_so_a_rerun_draws_the_same_samples(probes):
    """The study's runs named the template's own prompt "default": a run today keys its generations "template"
    but seeds them as those runs did (the published seeds of results/ are those of these items)."""
    from selfid.audit.run import _seed

    items = [i for i in plan(params(probes), {"identity": load_suite("identity", probes)}) if i.system == "template"]
    assert items and all("|template|" in i.key for i in items)
    assert all(i.group_seed == _seed(5, "identity", i.probe.id, "default", f"{i.temperature:g}") for i in items)


def test_an_existing_run_needs_resume_and_the_same_parameters(probes, tmp_path):
    out = tmp_path / "run"
    run_audit(ScriptedBackend(lambda it: "I am Qwen."), params(probes), out, show_progress=False)
    with pytest.raises(SelfidError, match="already holds an audit run: pass --resume"):
        run_audit(ScriptedBackend(lambda it: "x"), params(probes), out, show_progress=False)
    with pytest.raises(SelfidError, match="other parameters or another model"):
        run_audit(ScriptedBackend(lambda it: "x"), params(probes, samples=5), out, resume=True, show_progress=False)
    with pytest.raises(SelfidError, match="other parameters or another model"):
        run_audit(ScriptedBackend(lambda it: "x", model="other-qwen"), params(probes), out, resume=True, show_progress=False)
    before = (out / LOG).read_bytes()
    run_audit(ScriptedBackend(lambda it: "x"), params(probes), out, resume=True, show_progress=False)
    assert (out / LOG).read_bytes() == before  # complete: nothing to redo


def test_own_vendor_must_be_known(probes, tmp_path):
    with pytest.raises(SelfidError, match="pass --own"):
        run_audit(ScriptedBackend(lambda it: "x", model="mystery"), params(probes, own="auto"), tmp_path / "r",
                  show_progress=False)


def test_bad_probe_file_is_an_error_naming_the_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"id": "a", "lang": "en", "messages": [{"role": "user", "content": "hi"}]}\n'
                 '{"id": "b", "lang": "fr", "messages": [{"role": "user", "content": "salut"}]}\n')
    with pytest.raises(SelfidError, match=r"p.jsonl:2: 'lang' must be 'zh' or 'en'"):
        load_suite("identity", f)


def test_shipped_identity_probes_cover_the_categories_half_zh_half_en():
    probes = load_suite("identity")
    assert len(probes) >= 64 and sum(p.lang == "zh" for p in probes) == sum(p.lang == "en" for p in probes)
    assert {t for p in probes for t in p.tags} >= {"direct", "name", "maker", "version", "indirect", "leading", "multiturn"}
    assert any(len(p.messages) > 1 for p in probes) and all(p.messages[-1]["role"] == "user" for p in probes)
    assert [p.messages[0]["content"] for p in probes[:1]] == ["Who are you?"]


def test_cli_audit_on_the_tiny_model_with_a_custom_system_prompt(tiny_model_dir, probes, tmp_path):
    from selfid.cli import app

    out = tmp_path / "cli-run"
    res = CliRunner().invoke(app, ["audit", "--model", str(tiny_model_dir), "--device", "cpu", "--out", str(out),
                                   "--probes", str(probes), "--suites", "identity", "--systems",
                                   "template,text:You are Tom, a helper.", "--temperatures", "0", "--max-tokens", "4"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().endswith("report.html")
    summary = json.loads((out / "summary.json").read_text())
    assert [s["text"] for s in summary["run"]["systems"]] == [None, "You are Tom, a helper."]
    assert "foreign identity claims" in res.stderr
    res = CliRunner().invoke(app, ["audit", "--model", str(tiny_model_dir), "--out", str(out), "--probes", str(probes)])
    assert res.exit_code != 0 and "pass --resume" in str(res.exception)


def test_bad_grid_parameters_are_clear_errors(probes, tmp_path):
    for kw, msg in (({"temperatures": [0.0, 0.0]}, "lists a value twice"), ({"samples": 0}, "--samples must be at least 1"),
                    ({"suites": ["identity", "vibes"]}, "unknown suite vibes"), ({"own": "acme"}, "--own must be one of")):
        with pytest.raises(SelfidError, match=msg):
            run_audit(ScriptedBackend(lambda it: "x"), params(probes, **kw), tmp_path / "r", show_progress=False)
    assert not (tmp_path / "r").exists()


def test_a_run_made_before_the_rename_reads_resumes_and_rescores_in_todays_names(probes, tmp_path):
    from selfid.audit.report.summary import load_run
    from selfid.audit.run import rescore

    out = tmp_path / "old"
    new = run_audit(ScriptedBackend(lambda it: "I am Qwen."), params(probes), out, show_progress=False)
    as_before_the_rename(out)
    assert '"default"' in (out / "run.json").read_text() and "|default|" in (out / LOG).read_text()
    meta, records, _ = load_run(out)
    assert {r.system for r in records} == {"template", "helpful"} and all("|default|" not in r.key for r in records)
    assert [s["key"] for s in meta["systems"]] == ["template", "helpful"]
    assert rescore(out)["identity"]["cells"] == new["identity"]["cells"]
    # cut short, then resumed by today's code: only the missing generations are made, under today's name
    lines = (out / LOG).read_text().splitlines(keepends=True)
    (out / LOG).write_text("".join(lines[:5]))
    again = ScriptedBackend(lambda it: "I am Qwen.")
    summary = run_audit(again, params(probes), out, resume=True, show_progress=False)
    assert len(again.calls) == 16 - 5 and summary["identity"]["cells"] == new["identity"]["cells"]
    assert {r["key"] for r in read_log(out / LOG)} == {r.key for r in records}


def test_cli_task_systems_store_todays_names(tiny_model_dir, probes, tmp_path, deprecations):
    """`--task-systems default` is read as template (with a deprecation message) and stored as template."""
    from selfid.cli import app

    out = tmp_path / "ner"
    res = CliRunner().invoke(app, ["audit", "--model", str(tiny_model_dir), "--device", "cpu", "--out", str(out),
                                   "--suites", "identity", "--probes", str(probes), "--systems", "template,helpful",
                                   "--task-systems", "default", "--temperatures", "0", "--max-tokens", "2"])
    assert res.exit_code == 0, res.output
    assert "--task-systems: 'default' is an older spelling, read as 'template'" in res.stderr
    meta = json.loads((out / "run.json").read_text())
    assert meta["params"]["task_systems"] == ["template"] and "once under each of: template" in meta["notes"][1]
