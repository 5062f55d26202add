"""`selfid demo`: the study's first steps end to end on the tiny model (the real work of selfid.study at a tiny
scale), continuing a run, and a verdict computed from the numbers."""

import json
import shutil
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from selfid import demo
from selfid.audit.log import LOG, read_log
from selfid.audit.report.summary import load_run
from selfid.audit.run import serving_systems
from selfid.audit.stats import clustered_rate, paired_prompts, rate
from selfid.errors import SelfidError
from selfid.pipeline.stages import read_record
from selfid.study import work
from selfid.study.scale import SMALL
from selfid.study.verdict import verdict, verdict_lines
from selfid.system_prompt import HELPFUL

TINY = replace(
    SMALL, name="tiny", probes=("en-direct-01", "zh-direct-01", "en-leading-02"), temperatures=(0.0, 0.7), samples=2,
    max_new_tokens=6, ner_limit=3, ner_max_new_tokens=8, suites=("identity", "ner"), margin=False,
    train={"data": [{"source": "msra", "limit": 4, "max_chars": 12, "seed": 0}], "eval_ner": 0,
           "train": {"epochs": 1, "lr": 3e-3, "warmup": 0, "pack_length": 512, "batch_tokens": 512, "log_every": 1},
           "lora": {"r": 4}})


def run(out, model_dir, **kw):
    return demo.run_demo(out, model=str(model_dir), device="cpu", scale=kw.pop("scale", TINY), **kw)


PRINTED = {}  # what the module's demo run printed


@pytest.fixture(scope="module")
def demo_run(tiny_model_dir, tmp_path_factory):
    import io

    from rich.console import Console

    out = tmp_path_factory.mktemp("demo") / "run"
    buf = io.StringIO()
    summary = run(out, tiny_model_dir, console=Console(file=buf, width=300))
    PRINTED["text"] = buf.getvalue()
    return out, summary


def test_training_under_helpful_is_said_as_the_design_not_warned_about(demo_run):
    text = PRINTED["text"]
    assert "by design: this arm trains under 'You are a helpful assistant.'" in text
    assert "warning" not in text.lower() and "1 epoch," in text and "(s)" not in text


def test_what_the_demo_prints_speaks_of_the_study_not_of_a_seed(demo_run):
    import io

    from rich.console import Console

    out, summary = demo_run
    buf = io.StringIO()
    demo.print_verdict(summary["verdict"], out, study_note=True, console=Console(file=buf, width=300))
    assert "docs/study.md" in buf.getvalue() and str(out / "plain" / "compare" / "report.html") in buf.getvalue()
    assert "seed" not in (buf.getvalue() + PRINTED["text"]).lower()


def foreign_by_system(run_dir):
    """{system: (foreign, replies)} and {system: {probe: (foreign, replies)}}, scored afresh from the run's log."""
    counts, prompts = {}, {}
    for r in load_run(run_dir)[1]:
        if r.suite == "identity":
            k, n = counts.get(r.system, (0, 0))
            counts[r.system] = (k + bool(r.verdict.foreign), n + 1)
            by = prompts.setdefault(r.system, {})
            pk, pn = by.get(r.probe, (0, 0))
            by[r.probe] = (pk + bool(r.verdict.foreign), pn + 1)
    return counts, prompts


def test_one_study_folder_in_the_studys_layout_holds_report_summary_generations_and_adapter(demo_run):
    out, summary = demo_run
    for name in ("plain/compare/report.html", "summary.json", "plain/compare/comparison.json", "study.json",
                 "base/audit/generations.jsonl", "plain/audit/generations.jsonl", "plain/train/adapter/selfid.json",
                 "plain/train/metrics.csv", "plain/cost.json", "probes/identity.jsonl"):
        assert (out / name).is_file(), name
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    base, tuned = read_log(out / "base" / "audit" / LOG), read_log(out / "plain" / "audit" / LOG)
    # 3 prompts x 3 system prompts x (greedy + 2 samples), plus 3 NER sentences under "helpful" only
    for recs in (base, tuned):
        assert sum(r["suite"] == "identity" for r in recs) == 3 * 3 * 3
        assert [r["system"] for r in recs if r["suite"] == "ner"] == ["helpful"] * 3
    tuned_meta = json.loads((out / "plain" / "audit" / "run.json").read_text())
    assert tuned_meta["target"]["adapter"] == str(out / "plain" / "train" / "adapter")
    assert tuned_meta["training_system_prompt"] == HELPFUL
    assert set(summary["stages"]) == {"base", "train-plain", "audit-plain", "compare-plain"}
    assert all(read_record(out, name)["outputs"] for name in demo.STAGES)  # each stage recorded as finished
    assert json.loads((out / "study.json").read_text())["settings"]["scale"]["name"] == "tiny"


def test_verdict_counts_are_the_logged_generations(demo_run):
    out, summary = demo_run
    v = summary["verdict"]
    (before, pb), (after, pa) = foreign_by_system(out / "base" / "audit"), foreign_by_system(out / "plain" / "audit")
    assert [r["system"] for r in v["identity"]] == list(serving_systems())  # the serving prompts, by today's names
    for row in v["identity"]:
        kb, nb = before[row["system"]]
        ka, na = after[row["system"]]
        assert (row["before"]["k"], row["before"]["n"], row["after"]["k"], row["after"]["n"]) == (kb, nb, ka, na)
        assert row["test"]["p_value"] == pytest.approx(paired_prompts(pb[row["system"]], pa[row["system"]])["p_value"])
    html = (out / "plain" / "compare" / "report.html").read_text()
    assert "A vs B" in html and verdict_lines(v)[-1].split(":")[0] in html
    assert json.loads((out / "plain" / "compare" / "comparison.json").read_text())["verdict"]["meaning"] == v["meaning"]


def test_rerun_continues_without_repeating_work(demo_run, tiny_model_dir, monkeypatch):
    out, first = demo_run
    logs = {d: (out / d / "audit" / LOG).read_bytes() for d in ("base", "plain")}
    # the tuned audit cut short: half its log, no summary; the rerun finishes it and trains nothing again
    lines = logs["plain"].splitlines(keepends=True)
    (out / "plain" / "audit" / LOG).write_bytes(b"".join(lines[: len(lines) // 2]))
    (out / "plain" / "audit" / "summary.json").unlink()
    monkeypatch.setattr("selfid.train.sft.train", lambda *a, **k: pytest.fail("trained again"))
    trained = read_record(out, "train-plain")
    again = run(out, tiny_model_dir)
    assert read_record(out, "train-plain") == trained and read_record(out, "audit-plain") is not None
    assert (out / "base" / "audit" / LOG).read_bytes() == logs["base"]
    assert sorted(r["key"] for r in read_log(out / "plain" / "audit" / LOG)) == sorted(
        json.loads(line)["key"] for line in lines)
    assert again["verdict"] == first["verdict"]
    assert json.loads((out / "study.json").read_text())["resumed"] >= 1


def test_a_changed_audit_summary_is_compared_again_and_nothing_else_reruns(demo_run, tiny_model_dir, tmp_path,
                                                                          monkeypatch):
    src, first = demo_run
    out = tmp_path / "rescored"
    shutil.copytree(src, out)
    kept = {name: read_record(out, name) for name in ("base", "train-plain", "audit-plain")}
    path = out / "base" / "audit" / "summary.json"
    path.write_text(json.dumps(json.loads(path.read_text()), indent=1))  # rewritten, as `selfid rescore` does
    monkeypatch.setattr(work, "audit_arm", lambda *a, **k: pytest.fail("audited again"))
    monkeypatch.setattr("selfid.train.sft.train", lambda *a, **k: pytest.fail("trained again"))
    again = run(out, tiny_model_dir)
    assert {name: read_record(out, name) for name in kept} == kept
    from selfid.io import sha256_file

    assert read_record(out, "compare-plain")["inputs"]["base/audit/summary.json"] == sha256_file(path)
    assert again["run_dir"] == str(out) and again["verdict"] == first["verdict"]


def test_a_study_folder_from_before_stage_records_is_continued_not_redone(demo_run, tiny_model_dir, tmp_path,
                                                                          monkeypatch):
    src, first = demo_run
    out = tmp_path / "older"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("stages", "study.json", "summary.json", "compare"))
    for run_dir in ("base/audit", "plain/audit"):
        shutil.copy(src / run_dir / "summary.json", out / run_dir)
    monkeypatch.setattr(work, "audit_arm", lambda *a, **k: pytest.fail("audited again"))
    monkeypatch.setattr("selfid.train.sft.train", lambda *a, **k: pytest.fail("trained again"))
    again = run(out, tiny_model_dir)
    assert all(read_record(out, name).get("adopted") for name in ("base", "train-plain", "audit-plain"))
    assert again["verdict"] == first["verdict"]


def test_ctrl_c_keeps_the_run_and_says_how_to_continue(demo_run, tiny_model_dir, tmp_path, monkeypatch, capsys):
    src, _ = demo_run
    out = tmp_path / "cut"
    shutil.copytree(src, out)
    shutil.rmtree(out / "plain" / "audit")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(work, "audit_arm", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(out, tiny_model_dir)
    err = capsys.readouterr().err
    assert "3/5 audit plain (development set)" in err and f"selfid demo --out {out}" in err
    assert (out / "base" / "audit" / "summary.json").is_file() and (out / "plain" / "train" / "adapter" / "selfid.json").is_file()


def test_other_settings_or_a_foreign_folder_are_refused(demo_run, tiny_model_dir, tmp_path):
    out, _ = demo_run
    with pytest.raises(SelfidError, match="another scale or with another model"):
        run(out, tiny_model_dir, scale=SMALL)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SelfidError, match="not empty"):
        run(tmp_path / "mine", tiny_model_dir)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "demo.json").write_text("{}")
    with pytest.raises(SelfidError, match="earlier selfid"):
        run(tmp_path / "old", tiny_model_dir)
    (tmp_path / "damaged").mkdir()
    for text in ("", "[1, 2]"):
        (tmp_path / "damaged" / "study.json").write_text(text)
        with pytest.raises(SelfidError, match=r"study.json is damaged \(not a JSON object\)"):
            run(tmp_path / "damaged", tiny_model_dir)
    result = CliRunner().invoke(__import__("selfid.cli", fromlist=["app"]).app, ["demo", "--device", "tpu",
                                                                               "--out", str(tmp_path / "x")])
    assert isinstance(result.exception, SelfidError) and "unknown device" in str(result.exception)


# --- the verdict, from made-up summaries --------------------------------------------------------------

def per_prompt(k: int, n: int, samples: int = 3) -> dict:
    """k foreign replies over n // samples prompts, the first prompts filled first (the same prompts in every fake)."""
    out = {}
    for i in range(n // samples):
        out[f"p{i:02d}"] = [min(samples, k), samples]
        k -= out[f"p{i:02d}"][0]
    return out


def fake(foreign: dict, f1=0.1, ci=(0.05, 0.15), n=48):
    return {"identity": {"by_system": {k: {"foreign": clustered_rate(list(per_prompt(v, n).values())),
                                           "per_prompt": per_prompt(v, n)} for k, v in foreign.items()}},
            "ner": {"helpful": {"n": 50, "f1": f1, "f1_ci95": list(ci), "precision": f1, "recall": f1,
                                "parse": rate(48, 50)}}}


def test_system_prompt_far_more_than_fine_tuning_only_when_the_numbers_show_it():
    base = fake({"template": 2, "helpful": 30, "empty": 28})
    v = verdict(base, fake({"template": 3, "helpful": 31, "empty": 27}, f1=0.5, ci=(0.35, 0.62)))
    assert v["meaning"].startswith("The system prompt moves identity far more than fine-tuning")
    assert "changed no system prompt's rate detectably" in v["meaning"] and "did teach the task" in v["meaning"]
    assert v["system_effect"]["low"] == "template" and v["system_effect"]["high"] == "helpful"
    assert v["tuning_effect"]["significant"] == []

    # fine-tuning doubles foreign claims everywhere: now it is the bigger effect
    v = verdict(fake({"template": 10, "helpful": 12, "empty": 11}), fake({"template": 40, "helpful": 42, "empty": 41}))
    assert v["meaning"].startswith("Fine-tuning changed who the model says it is (more foreign claims)")
    assert "did not improve" in v["meaning"]

    # nothing moves
    v = verdict(fake({"template": 5, "helpful": 6, "empty": 5}), fake({"template": 6, "helpful": 5, "empty": 5}))
    assert v["meaning"].startswith("Neither the system prompt nor fine-tuning") and "48 replies" in v["meaning"]

    # a clear system-prompt effect and a clear, comparable fine-tuning effect
    v = verdict(base, fake({"template": 20, "helpful": 45, "empty": 44}))
    assert v["meaning"].startswith("Both matter: foreign claims range from 4% (template) to 62% (helpful)")
    assert v["meaning"] != verdict(base, base)["meaning"]


def test_verdict_rows_carry_rates_intervals_and_tests():
    v = verdict(fake({"template": 2, "helpful": 30, "empty": 28}), fake({"template": 12, "helpful": 30, "empty": 28}))
    row = next(r for r in v["identity"] if r["system"] == "template")
    assert row["before"]["k"] == 2 and row["after"]["k"] == 12 and row["after"]["n"] == 48
    assert row["before"]["ci95"] == clustered_rate(list(per_prompt(2, 48).values()))["ci95"]
    paired = paired_prompts({p: tuple(x) for p, x in per_prompt(2, 48).items()},
                            {p: tuple(x) for p, x in per_prompt(12, 48).items()})
    assert row["test"]["p_value"] == pytest.approx(paired["p_value"]) and (row["test"]["up"], row["test"]["down"]) == (4, 0)
    # the other two system prompts did not move: Holm over three tests leaves this one's p times three
    assert row["test"]["p_holm"] == pytest.approx(min(1, 3 * paired["p_value"]))
    assert v["tuning_effect"] == {"system": "template", "diff": pytest.approx(10 / 48), "p_value": row["test"]["p_holm"],
                                  "significant": [] if row["test"]["p_holm"] >= 0.05 else ["template"]}
    lines = verdict_lines(v)
    assert lines[0].startswith("Foreign identity claims, system prompt none (template's") and "4% (2/48)" in lines[0]
    assert lines[-1] == v["meaning"]


def test_the_summary_reads_the_adapter_manifest_through_the_typed_reader(tmp_path):
    assert demo._manifest_brief(tmp_path) is None  # no selfid.json: nothing to report
    (tmp_path / "selfid.json").write_text(json.dumps(
        {"format": 1, "train": {"system_prompt": "You are X.", "system_message_sent": False}, "metrics": {"steps": 3}}))
    brief = demo._manifest_brief(tmp_path)  # an older layout, migrated: the template put the text there itself
    assert brief["metrics"] == {"steps": 3}
    assert brief["train"]["system"]["message"] is None and brief["train"]["system"]["effective"] == "You are X."
    (tmp_path / "selfid.json").write_text('{"train": ')
    with pytest.raises(SelfidError, match="not valid JSON"):
        demo._manifest_brief(tmp_path)
