"""`selfid gate` on small scripted runs: exit codes, outputs for CI, baselines, thresholds, the plan's arithmetic, and
candidates audited in-process (the tiny model) or over HTTP."""

import json
import xml.etree.ElementTree as ET

import pytest
from typer.testing import CliRunner

from selfid.audit.run import AuditParams, audit_systems, run_audit
from selfid.cli import app
from selfid.errors import SelfidError
from selfid.gate import Side, gate, load_thresholds, plan_gate, write_baseline
from selfid.gate import power as pw
from selfid.gate.plan import Grid
from selfid.gate.tallies import Tallies, check_comparable, read
from selfid.gate.thresholds import Thresholds
from selfid.gate.verdict import judge
from tests.audit_helpers import ScriptedBackend, chat_app, serve, write_probes

IDS = ["en-direct-01", "en-direct-02", "en-direct-03", "en-direct-04", "zh-direct-01", "zh-direct-02",
       "zh-direct-03", "zh-direct-04"]
OWN = {"en": "I am Qwen, created by Alibaba Cloud.", "zh": "我是通义千问，由阿里云开发。"}
CHATGPT = "I am ChatGPT, an AI language model created by OpenAI."
FOREIGN_ONLY = ("own_identity: null\nself_denial: null\nyes_to_other_vendor: null\npersona_kept: null\n"
                "distinct_replies: null\nner_f1: null\n")


def own(it):
    return OWN[it.probe.lang]


def regressed(it):  # every reply under "helpful" claims ChatGPT
    return CHATGPT if it.system == "helpful" else own(it)


def two_prompts_foreign(it):  # two of eight prompts claim ChatGPT under "helpful": a change too small to call
    return CHATGPT if it.system == "helpful" and it.probe.id in ("en-direct-01", "zh-direct-01") else own(it)


def grid(probes) -> AuditParams:
    return AuditParams(suites=["identity"], systems=audit_systems(["template,helpful"]), temperatures=[0.0, 0.7], samples=8,
                       seed=0, max_new_tokens=32, ner_limit=1, own="qwen", identity_probes=str(probes))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    probes = write_probes(root / "probes.jsonl", IDS)
    for name, reply in (("base", own), ("same", own), ("regressed", regressed), ("unclear", two_prompts_foreign)):
        run_audit(ScriptedBackend(reply, model=f"{name}-qwen"), grid(probes), root / name, show_progress=False)
    (root / "foreign.yaml").write_text("foreign_claims: 5\n" + FOREIGN_ONLY, encoding="utf-8")
    return root


def invoke(*args):
    return CliRunner().invoke(app, ["gate", *map(str, args)])


@pytest.mark.parametrize("candidate, code, verdict", [("same", 0, "pass"), ("regressed", 1, "regression"),
                                                       ("unclear", 2, "inconclusive")])
def test_exit_codes_say_pass_regression_or_inconclusive(runs, tmp_path, candidate, code, verdict):
    res = invoke("--reference", runs / "base", "--candidate", runs / candidate, "--thresholds", runs / "foreign.yaml",
                 "--out", tmp_path)
    assert res.exit_code == code, res.output
    result = json.loads((tmp_path / "gate.json").read_text(encoding="utf-8"))
    assert result["verdict"] == verdict and result["exit_code"] == code
    cells = {c["system"]: c for c in result["cells"]}
    assert set(cells) == {"template", "helpful"}
    assert cells["template"]["outcome"] == "pass"
    helpful = cells["helpful"]
    assert helpful["outcome"] == verdict
    if candidate == "regressed":  # 8 of 8 prompts went from own identity to ChatGPT
        assert helpful["harm"] == pytest.approx(1.0) and helpful["p_holm"] < 0.05
    if candidate == "unclear":  # 2 of 8 prompts: +25 points, not significant, and 5 points not ruled out
        assert helpful["harm"] == pytest.approx(0.25) and helpful["p_holm"] >= 0.05
        assert helpful["power_bound"] > helpful["limit"] and helpful["power"] < 0.8
        assert helpful["settle"]["prompts"] > 8
        assert "To settle the inconclusive checks" in (tmp_path / "summary.md").read_text(encoding="utf-8")


def test_junit_has_one_case_per_check_a_failure_per_regression_and_skips_what_is_inconclusive(runs, tmp_path):
    for candidate, out in (("regressed", tmp_path / "r"), ("unclear", tmp_path / "u")):
        invoke("--reference", runs / "base", "--candidate", runs / candidate, "--thresholds", runs / "foreign.yaml",
               "--out", out)
    cases = ET.parse(tmp_path / "r" / "junit.xml").getroot().findall(".//testcase")
    assert [c.get("name") for c in cases] == ["foreign claims [template]", "foreign claims [helpful]"]
    assert cases[0].find("failure") is None and cases[1].find("failure").get("type") == "regression"
    suite = ET.parse(tmp_path / "u" / "junit.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("2", "0", "1")
    skipped = suite.find(".//testcase[@name='foreign claims [helpful]']/skipped")
    assert skipped.get("message").startswith("inconclusive:") and "prompts" in skipped.get("message")
    summary = (tmp_path / "r" / "summary.md").read_text(encoding="utf-8")
    assert summary.startswith("## selfid gate: REGRESSION (exit 1)")
    assert "| foreign claims [helpful] | 0/72 = 0.0% | 72/72 = 100.0% | +100.0 pt | rise ≤ 5.0 pt | REGRESSION" in summary


def test_user_errors_exit_3_and_name_what_to_fix(runs, tmp_path):
    missing = invoke("--reference", tmp_path / "nowhere", "--candidate", runs / "same", "--out", tmp_path / "o")
    assert missing.exit_code == 3 and "nowhere" in missing.output
    (tmp_path / "bad.yaml").write_text("foreign_claim: 3\n", encoding="utf-8")
    typo = invoke("--reference", runs / "base", "--candidate", runs / "same", "--thresholds", tmp_path / "bad.yaml",
                  "--out", tmp_path / "o")
    assert typo.exit_code == 3 and "foreign_claim: unknown key" in typo.output and "foreign_claims" in typo.output
    flag = invoke("--reference", runs / "base", "--no-such-flag")  # click's usage error: 2 elsewhere, 3 here
    assert flag.exit_code == 3
    no_out = invoke("--reference", runs / "base", "--candidate", runs / "same")
    assert no_out.exit_code == 3 and "--out" in no_out.output
    assert not (tmp_path / "o").exists()


def test_a_baseline_round_trips_and_judges_as_its_run_does(runs, tmp_path):
    limits = load_thresholds(runs / "foreign.yaml")
    written = write_baseline(Side.parse(str(runs / "base"), flag="--reference"), tmp_path / "base.json", limits)
    baseline = read(tmp_path / "base.json")
    direct = read(runs / "base")
    assert baseline.kind == "baseline" and baseline.rates == direct.rates and baseline.probes == direct.probes
    assert written["probes_sha256"] == direct.probes_sha256 and written["template_hash"] == "feedface00000000"
    assert written["scorer"] == direct.scorer and written["run"] == str((runs / "base").resolve())
    from_baseline = gate(Side(baseline=tmp_path / "base.json"), Side(run=runs / "regressed"), limits, tmp_path / "b",
                         print_it=False)
    from_run = gate(Side(run=runs / "base"), Side(run=runs / "regressed"), limits, tmp_path / "r", print_it=False)
    assert [(c["outcome"], c["harm"]) for c in from_baseline["cells"]] == [(c["outcome"], c["harm"]) for c in from_run["cells"]]


def test_a_baseline_made_with_other_probes_or_another_scorer_is_refused(runs, tmp_path):
    write_baseline(Side(run=runs / "base"), tmp_path / "base.json", Thresholds())
    data = json.loads((tmp_path / "base.json").read_text(encoding="utf-8"))
    reworded = dict(data, probes={**data["probes"], "en-direct-01": "0" * 64})
    (tmp_path / "reworded.json").write_text(json.dumps(reworded), encoding="utf-8")
    res = invoke("--reference", tmp_path / "reworded.json", "--candidate", runs / "same", "--out", tmp_path / "o1")
    assert res.exit_code == 3 and "asked in other words" in res.output and "en-direct-01" in res.output
    old = dict(data, scorer=data["scorer"] - 1)
    (tmp_path / "old.json").write_text(json.dumps(old), encoding="utf-8")
    res = invoke("--reference", tmp_path / "old.json", "--candidate", runs / "same", "--out", tmp_path / "o2")
    assert res.exit_code == 3 and "scorer version" in res.output and "--rescore" in res.output
    # told to re-score, it reads its source run again with today's scorers
    res = invoke("--reference", tmp_path / "old.json", "--candidate", runs / "same", "--out", tmp_path / "o3",
                 "--rescore")
    assert res.exit_code in (0, 2), res.output
    assert json.loads((tmp_path / "o3" / "gate.json").read_text())["reference"]["kind"] == "run"
    (tmp_path / "lost.json").write_text(json.dumps(dict(old, run=str(tmp_path / "gone"))), encoding="utf-8")
    res = invoke("--reference", tmp_path / "lost.json", "--candidate", runs / "same", "--out", tmp_path / "o4",
                 "--rescore")
    assert res.exit_code == 3 and "is not here" in res.output
    (tmp_path / "other.json").write_text(json.dumps({"kind": "something else"}), encoding="utf-8")
    res = invoke("--reference", tmp_path / "other.json", "--candidate", runs / "same", "--out", tmp_path / "o5")
    assert res.exit_code == 3 and "is not a gate baseline" in res.output


def test_runs_of_other_vendors_or_no_shared_prompts_cannot_be_compared(runs, tmp_path):
    base = read(runs / "base")
    other = Tallies(**{**base.__dict__, "own": "meta"})
    with pytest.raises(SelfidError, match="--own qwen"):
        check_comparable(base, other)
    elsewhere = Tallies(**{**base.__dict__, "probes": {"x-1": "0" * 64}})
    with pytest.raises(SelfidError, match="share no prompt"):
        check_comparable(base, elsewhere)
    changed = Tallies(**{**base.__dict__, "template_hash": "0123456789abcdef"})
    assert any("chat templates differ" in w for w in check_comparable(base, changed))


def test_thresholds_have_stated_defaults_and_null_leaves_a_metric_out(tmp_path):
    t = load_thresholds(None)
    assert (t.foreign_claims, t.own_identity, t.self_denial, t.identity_tasks, t.alpha, t.power) == (5, 11, 3, None, 0.05, 0.8)
    assert t.limit("foreign_claims") == pytest.approx(0.05) and t.limit("identity_tasks") is None
    (tmp_path / "t.yaml").write_text("foreign_claims: 2\nsystems: [default, helpful]\nner_f1: null\n", encoding="utf-8")
    t = load_thresholds(tmp_path / "t.yaml")
    assert t.foreign_claims == 2 and t.systems == ["template", "helpful"] and t.ner_f1 is None
    for text, message in (("foreign_claims: -1\n", "greater than 0"), ("alpha: 2\n", "alpha"), ("[1, 2]\n", "mapping"),
                          ("systems: []\n", "empty list")):
        (tmp_path / "bad.yaml").write_text(text, encoding="utf-8")
        with pytest.raises(SelfidError, match=message):
            load_thresholds(tmp_path / "bad.yaml")


def test_thresholds_keep_the_system_prompts_they_name(runs):
    base, bad = read(runs / "base"), read(runs / "regressed")
    only_template = Thresholds(systems=["template"], **{k: None for k in ("own_identity", "self_denial",
                               "yes_to_other_vendor", "persona_kept", "distinct_replies", "ner_f1")})
    result = judge(base, bad, only_template)
    assert [c["system"] for c in result["cells"]] == ["template"] and result["verdict"] == "pass"
    with pytest.raises(SelfidError, match="persona-en"):
        judge(base, bad, Thresholds(systems=["persona-en"]))


def test_a_task_number_without_uncertainty_is_judged_on_its_value(runs, tmp_path):
    (tmp_path / "t.yaml").write_text(
        FOREIGN_ONLY + "task_command:\n  command: 'if [ $SELFID_GATE_SIDE = reference ]; then echo 0.90; else echo "
        "\"log line\"; echo 0.86; fi'\n  max_fall: 0.02\n", encoding="utf-8")
    res = invoke("--reference", runs / "base", "--candidate", runs / "same", "--thresholds", tmp_path / "t.yaml",
                 "--out", tmp_path / "o")
    assert res.exit_code == 1, res.output
    task = [c for c in json.loads((tmp_path / "o" / "gate.json").read_text())["cells"] if c["metric"] == "task_command"]
    assert task[0]["outcome"] == "regression" and task[0]["harm"] == pytest.approx(0.04)
    summary = (tmp_path / "o" / "summary.md").read_text(encoding="utf-8")
    assert "| task (your command) | 0.9 | 0.86 | -0.04 | fall ≤ 0.02 | REGRESSION" in summary
    (tmp_path / "t2.yaml").write_text(
        FOREIGN_ONLY + "task_command:\n  command: 'echo \"{\\\"value\\\": 0.89, \\\"stderr\\\": 0.01}\"'\n"
        "  max_fall: 0.02\n  reference_value: 0.90\n  reference_stderr: 0.01\n", encoding="utf-8")
    res = invoke("--reference", runs / "base", "--candidate", runs / "same", "--thresholds", tmp_path / "t2.yaml",
                 "--out", tmp_path / "o2")
    assert res.exit_code == 2, res.output  # a 1-point fall, +-1.4: a 2-point fall is not ruled out
    cell = [c for c in json.loads((tmp_path / "o2" / "gate.json").read_text())["cells"] if c["metric"] == "task_command"][0]
    assert cell["se"] == pytest.approx(0.01 * 2 ** 0.5) and cell["outcome"] == "inconclusive"
    assert 0 < cell["settle"]["stderr"] < 0.01
    (tmp_path / "t3.yaml").write_text(FOREIGN_ONLY + "task_command: {command: 'exit 4', max_fall: 1}\n", encoding="utf-8")
    res = invoke("--reference", runs / "base", "--candidate", runs / "same", "--thresholds", tmp_path / "t3.yaml",
                 "--out", tmp_path / "o3")
    assert res.exit_code == 3 and "exited with status 4" in res.output


# --- the arithmetic ----------------------------------------------------------------------------------------------
def test_spread_moves_every_prompt_alike_inside_zero_and_one():
    rates = [0.0, 0.5, 0.98, 1.0]
    up = pw.spread(rates, 0.1, +1)
    assert sum(up) / 4 - sum(rates) / 4 == pytest.approx(0.1)
    assert list(up) == pytest.approx([0.19, 0.69, 1.0, 1.0])  # (2s + 0.02) / 4 = 0.1
    assert pw.spread([0.02, 0.04], 0.05, -1) is None  # rates of 2-4% cannot fall by 5 points


def test_the_planned_size_is_the_smallest_with_the_target_power():
    reference = {f"p{i}": (i % 5, 9) for i in range(60)}
    kappa = pw.interaction("foreign_claims")
    target, alpha, effect = 0.8, 0.05 / 4, 0.1

    def power(replies):
        return pw.rate_power(reference, +1, effect, alpha, replies, kappa, replies_ref=replies)

    needed = pw.smallest(lambda n: power(n) >= target, 1, 10_000)
    assert power(needed) >= target > power(needed - 1)
    mde = pw.mde(reference, +1, alpha, target, needed, kappa, replies_ref=needed)
    assert mde <= effect and mde == pytest.approx(effect, abs=0.01)
    # more replies per prompt help less and less: the prompts' own disagreement stays
    assert power(10 * needed) < 1 and pw.mde(reference, +1, alpha, target, 10_000, kappa, replies_ref=10_000) > 0.03


def test_plan_reads_the_reference_and_sizes_each_threshold(runs, tmp_path):
    limits = load_thresholds(runs / "foreign.yaml")
    result = plan_gate(Side(run=runs / "base"), limits, samples=16, out=tmp_path, print_it=False)
    assert json.loads((tmp_path / "plan.json").read_text())["cells_tested"] == result["cells_tested"] == 2
    cell = result["cells"][0]
    assert (cell["prompts"], cell["replies_recorded"], cell["replies"], cell["rate"]) == (8, 9, 17, 0.0)
    # 8 prompts are far too few for 5 points (t over 7 degrees of freedom at 0.05 / 2): no number of samples
    # reaches 80% power; the plan asks for more prompts. A reference that never claims adds no noise of its own,
    # so re-running it bigger would not help; more candidate samples do, a little.
    assert 0.05 < cell["mde_both"] == cell["mde_recorded"] < 0.3 and cell["samples_needed"] is None
    at_8 = plan_gate(Side(run=runs / "base"), limits, print_it=False)["cells"][0]
    assert at_8["replies"] == 9 and cell["mde_both"] < at_8["mde_both"]
    assert cell["prompts_needed"] > 8 and len(result["samples_cannot"]) == 2
    assert pw.rate_power(read(runs / "base").rates["foreign_claims"]["template"], +1, 0.05, 0.025, 17,
                         pw.interaction("foreign_claims"), replies_ref=17, prompts=cell["prompts_needed"]) >= 0.8
    assert result["grid"]["generations"] == 8 * 2 * 17 and result["grid"]["time"]["seconds"] is None  # not a known model
    with pytest.raises(SelfidError, match="reads the reference's per-prompt rates"):
        plan_gate(Side(model="embedded"), limits)


def test_side_parse_tells_runs_baselines_models_and_endpoints_apart(runs, tmp_path):
    (tmp_path / "b.json").write_text("{}", encoding="utf-8")
    assert Side.parse(str(runs / "base")).run == runs / "base"
    assert Side.parse(str(tmp_path / "b.json")).baseline == tmp_path / "b.json"
    assert Side.parse("embedded", tmp_path).model == "embedded"
    assert Side.parse(None, base_url="http://x/v1", model_name="m").base_url == "http://x/v1"
    with pytest.raises(SelfidError, match="not both"):
        Side.parse("embedded", base_url="http://x/v1", model_name="m")
    with pytest.raises(SelfidError, match="--model-name"):
        Side.parse(None, base_url="http://x/v1")
    with pytest.raises(SelfidError, match="drop the adapter"):
        Side.parse(str(runs / "base"), tmp_path)
    with pytest.raises(SelfidError, match="is missing"):
        Side.parse(None)


# --- candidates the gate audits itself ---------------------------------------------------------------------------
def test_a_model_candidate_is_audited_with_the_reference_grid(tiny_model_dir, runs, tmp_path):
    limits = load_thresholds(runs / "foreign.yaml")
    small = AuditParams(suites=["identity"], systems=grid(runs / "probes.jsonl").systems, temperatures=[0.0, 1.0],
                        samples=2, seed=1, max_new_tokens=6, ner_limit=1, own="qwen",
                        identity_probes=str(write_probes(tmp_path / "p.jsonl", IDS[:3])))
    run_audit(ScriptedBackend(own), small, tmp_path / "ref", show_progress=False)
    result = gate(Side(run=tmp_path / "ref"), Side(model=str(tiny_model_dir)), limits, tmp_path / "g", device="cpu",
                  print_it=False)
    audited = json.loads((tmp_path / "g" / "candidate" / "run.json").read_text(encoding="utf-8"))
    reference = json.loads((tmp_path / "ref" / "run.json").read_text(encoding="utf-8"))
    assert audited["params"] == reference["params"] and audited["target"]["backend"] == "inprocess"
    assert result["candidate"]["source"] == str(tmp_path / "g" / "candidate")
    # the random tiny model names no vendor: no foreign claim, as the reference
    assert [c["candidate"]["n"] for c in result["cells"]] == [3 * 3, 3 * 3]
    assert all(c["candidate"]["k"] == 0 for c in result["cells"])
    again = gate(Side(run=tmp_path / "ref"), Side(model=str(tiny_model_dir)), limits, tmp_path / "g", device="cpu",
                 print_it=False)  # an existing audit folder is resumed, nothing generated twice
    assert again["cells"] == result["cells"]


def test_an_endpoint_candidate_is_audited_over_http(tiny, runs, tmp_path):
    chat = chat_app(tiny)
    chat.state.faults.script = lambda messages: (CHATGPT if messages[0].get("content") == "You are a helpful assistant."
                                                 else OWN["zh" if any("\u4e00" <= ch <= "\u9fff" for ch in messages[-1]["content"]) else "en"])
    with serve(chat) as url:
        res = invoke("--reference", runs / "base", "--base-url", url, "--model-name", "tiny", "--thresholds",
                     runs / "foreign.yaml", "--out", tmp_path)
    assert res.exit_code == 1, res.output
    result = json.loads((tmp_path / "gate.json").read_text(encoding="utf-8"))
    assert result["candidate"]["base_url"] == url
    assert {c["system"]: c["outcome"] for c in result["cells"]} == {"template": "pass", "helpful": "regression"}


def test_with_no_reference_run_the_gate_audits_the_held_out_grid_at_the_quick_profile(runs):
    from selfid.gate.plan import PROFILES, profile_grid
    from selfid.gate.run import audit_params

    params = audit_params(None, profile_grid(None, "quick"))
    params.validate()
    assert params.suites == ["identity-heldout", "ner"] and params.own == "auto"
    assert list(params.systems) == ["template", "helpful", "empty", "persona-zh", "persona-en", "persona-task",
                                    "persona-zh-card", "persona-en-card"]
    assert params.task_systems == ["template", "helpful"] and params.max_new_tokens == 160
    quick = PROFILES["quick"]
    assert (params.temperatures, params.samples, params.ner_limit) == (list(quick["temperatures"]), quick["samples"],
                                                                       quick["ner_limit"])
    # with a reference run, its grid: its probes, system prompts and vendor, the sizes on top
    copied = audit_params(read(runs / "base"), Grid((0.0, 1.0), 3, None))
    assert copied.identity_probes == str(runs / "probes.jsonl") and copied.own == "qwen"
    assert [(name, s.message) for name, s in copied.systems.items()] == [("template", None),
                                                                        ("helpful", "You are a helpful assistant.")]
    assert (copied.temperatures, copied.samples) == ([0.0, 1.0], 3)


def test_the_ci_example_uses_the_defaults_and_flags_that_exist():
    import re
    from pathlib import Path

    import typer
    import yaml

    examples = Path(__file__).resolve().parents[1] / "examples" / "ci"
    assert load_thresholds(examples / "thresholds.yaml") == Thresholds()
    workflow = yaml.safe_load((examples / "identity-gate.yml").read_text(encoding="utf-8"))
    commands = [step["run"] for job in workflow["jobs"].values() for step in job["steps"]
                if "run" in step and " gate " in step["run"]]
    assert len(commands) == 3
    group = typer.main.get_command(app)
    command = group.get_command(group.make_context("selfid", ["gate", "--help"], resilient_parsing=True), "gate")
    known = {opt for p in command.params for opt in p.opts}
    used = {flag for c in commands for flag in re.findall(r"(--[a-z-]+)", c)}
    assert used and used <= known, used - known


def test_a_crash_exits_4_not_1_which_would_read_as_a_regression(runs, tmp_path, monkeypatch):
    import selfid.gate

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(selfid.gate, "gate", broken)
    res = invoke("--reference", runs / "base", "--candidate", runs / "same", "--out", tmp_path)
    assert res.exit_code == 4 and "internal error" in res.output


def test_a_model_reference_is_audited_too_and_the_candidate_with_its_grid(tiny_model_dir, tmp_path, monkeypatch):
    """The base model as the reference: with no run to copy, both are audited with the gate's default audit (made
    small here: the held-out grid at the quick profile is hours of CPU for the tiny model)."""
    from selfid.gate import plan as plan_module
    from selfid.gate import run as run_module

    probes = write_probes(tmp_path / "p.jsonl", IDS[:2])
    monkeypatch.setattr(run_module, "DEFAULT_AUDIT", {"suites": ["identity"], "systems": ["template", "helpful"],
                                                      "task_systems": ["template"], "max_new_tokens": 4, "seed": 0,
                                                      "identity_probes": str(probes)})
    monkeypatch.setitem(plan_module.PROFILES, "quick", {"temperatures": (0.0, 1.0), "samples": 2, "ner_limit": None})
    limits = Thresholds(**{k: None for k in ("own_identity", "self_denial", "yes_to_other_vendor", "persona_kept",
                                             "distinct_replies", "ner_f1")})
    result = gate(Side(model=str(tiny_model_dir)), Side(model=str(tiny_model_dir)), limits, tmp_path / "g",
                  device="cpu", print_it=False)
    ref = json.loads((tmp_path / "g" / "reference" / "run.json").read_text(encoding="utf-8"))
    cand = json.loads((tmp_path / "g" / "candidate" / "run.json").read_text(encoding="utf-8"))
    assert ref["params"]["temperatures"] == [0.0, 1.0] and ref["params"]["samples"] == 2
    assert cand["params"] == {**ref["params"], "own": ref["own"]}  # the candidate takes the reference's vendor
    assert result["reference"]["source"] == str(tmp_path / "g" / "reference")
    assert [c["prompts"] for c in result["cells"]] == [2, 2] and result["verdict"] in ("pass", "inconclusive")
