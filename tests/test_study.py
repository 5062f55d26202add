"""`selfid study run`: the study's steps as stages of selfid.pipeline.stages in one study folder, with the work itself
replaced by stand-ins that write what each step writes (the real steps train and audit for hours on a GPU; the demo's
tests run the real ones at a tiny scale)."""

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from selfid.cli import app
from selfid.errors import SelfidError
from selfid.pipeline.stages import line_say
from selfid.study import arms as arms_module, steps, work
from selfid.study.scale import FULL, SMALL
from selfid.study.work import Study
from selfid.system_prompt import HELPFUL


def write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


class Work:
    """Stand-ins for the study's work, each logging (what, arm) and writing the files the real one writes."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, str]] = []
        self.studies: list[Study] = []
        self.trained = 0
        for name in ("audit_arm", "train_arm", "heldout", "compare", "margins_along_training", "scan_plain"):
            monkeypatch.setattr(work, name, getattr(self, name))

    def audit_arm(self, study, arm):
        self.calls.append(("audit", arm))
        self.studies.append(study)
        write(study.root / arm / "audit" / "summary.json", {"run": {"complete": True}, "arm": arm, "call": len(self.calls)})

    def heldout(self, study, arm):
        self.calls.append(("heldout", arm))
        write(study.root / arm / "heldout" / "summary.json", {"run": {"complete": True}})

    def train_arm(self, study, arm):
        self.calls.append(("train", arm))
        self.trained += 1
        adapter = study.root / arm / "train" / "adapter"
        write(adapter / "selfid.json", {"arm": arm})
        write(adapter / "checksums.json", {"format": 1, "files": {"run": self.trained}})  # a new adapter each time
        write(study.root / arm / "train" / "train_data.jsonl", {})
        write(study.root / arm / "cost.json", {"steps": 1})
        return {"steps": 1}

    def compare(self, study, arm):
        self.calls.append(("compare", arm))
        write(study.root / arm / "compare" / "comparison.json", {})

    def margins_along_training(self, study, arm):
        self.calls.append(("margins", arm))
        write(study.root / arm / "margins.json", [])

    def scan_plain(self, study):
        self.calls.append(("scan", "plain"))
        write(study.root / "scan" / "scan.json", {})


@pytest.fixture
def work_done(monkeypatch):
    return Work(monkeypatch)


def run(root, names, scale=FULL):
    return steps.run(Study(root, scale, "tiny"), names, line_say(print), "the same command")


def test_a_step_runs_what_it_needs_first_and_finished_stages_are_skipped(work_done, tmp_path, capsys):
    run(tmp_path, ["heldout-plain"])
    assert work_done.calls == [("train", "plain"), ("heldout", "plain")]
    work_done.calls.clear()
    records = run(tmp_path, ["plain", "scan"])
    assert work_done.calls == [("audit", "base"), ("audit", "plain"), ("compare", "plain"), ("margins", "plain"),
                               ("scan", "plain")]
    assert list(records) == ["base", "train-plain", "audit-plain", "compare-plain", "margins", "scan"]
    assert (tmp_path / "stages" / "compare-plain.json").is_file()
    work_done.calls.clear()
    run(tmp_path, ["plain", "heldout-plain", "scan"])
    assert work_done.calls == []
    assert "✓ 2/7 train plain: finished earlier" in capsys.readouterr().out


def test_a_changed_input_reruns_what_reads_it(work_done, tmp_path):
    run(tmp_path, ["plain", "heldout-plain"])
    work_done.calls.clear()
    # the base audit re-scored (selfid rescore rewrites summary.json): only the comparison is made again
    write(tmp_path / "base" / "audit" / "summary.json", {"run": {"complete": True}, "rescored": 1})
    run(tmp_path, ["plain", "heldout-plain"])
    assert work_done.calls == [("compare", "plain")]
    # plain trained again (its adapter lost): everything made from the old adapter is made again
    work_done.calls.clear()
    (tmp_path / "plain" / "train" / "adapter" / "selfid.json").unlink()
    run(tmp_path, ["plain", "heldout-plain"])
    assert work_done.calls == [("train", "plain"), ("audit", "plain"), ("compare", "plain"), ("margins", "plain"),
                               ("heldout", "plain")]


def test_a_study_folder_from_before_stage_records_is_continued_not_redone(work_done, tmp_path):
    """As results/study-0.5b: run folders, no stage records, no study.json."""
    study = Study(tmp_path, FULL, "tiny")
    for arm in ("base", "plain"):
        work_done.audit_arm(study, arm)
    work_done.heldout(study, "base")
    work_done.train_arm(study, "plain")
    work_done.compare(study, "plain")
    work_done.margins_along_training(study, "plain")
    work_done.calls.clear()
    records = run(tmp_path, ["base", "plain", "heldout-base", "scan"])
    assert work_done.calls == [("scan", "plain")]
    assert all(records[name].get("adopted") for name in ("base", "train-plain", "audit-plain", "heldout-base"))
    assert json.loads((tmp_path / "study.json").read_text())["settings"]["scale"]["name"] == "full"


def test_the_command_line_bench_gpu_study_sh_calls(work_done, tmp_path):
    res = CliRunner().invoke(app, ["study", "run", "--root", str(tmp_path / "r"), "--model", "embedded",
                                   "--steps", "train-self,heldout-self"])
    assert res.exit_code == 0, res.output
    assert work_done.calls == [("train", "self"), ("heldout", "self")]
    runner = (Path(__file__).parent.parent / "bench" / "gpu" / "study.sh").read_text()
    assert 'python3 -m selfid.cli study run --root "$root" --model "$model" --steps "$chain"' in runner
    assert steps.step_stages("gguf-plain") == ["inproc-plain", "gguf-plain"]
    assert steps.step_stages("inproc-plain") == ["inproc-plain"]  # the GPU side of gguf-plain, run alone
    assert steps.step_stages("scale") == ["compare-scale"]
    assert steps.step_stages("balanced-kl") == ["compare-balanced-kl"]
    plan = [s.name for s in steps.stages(Study(tmp_path, FULL))]
    assert {"base", "heldout-base", "parity", "llamacpp", "search-scale", "export-best", "gguf-best"} <= set(plan)
    res = CliRunner().invoke(app, ["study", "run", "--root", str(tmp_path / "x"), "--steps", "base,heldout-nope"])
    assert isinstance(res.exception, SelfidError) and "unknown step heldout-nope" in str(res.exception)
    assert not (tmp_path / "x").exists() and work_done.calls == [("train", "self"), ("heldout", "self")]


def test_smoke_is_the_small_scale_on_the_cpu_and_a_folder_keeps_its_scale(work_done, tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # restored after the test
    res = CliRunner().invoke(app, ["study", "run", "--root", str(tmp_path / "s"), "--model", "tiny", "--smoke",
                                   "--steps", "base"])
    assert res.exit_code == 0, res.output
    (study,) = work_done.studies
    assert study.scale is SMALL and study.device == "cpu" and study.model == "tiny"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""  # the servers a smoke run starts stay off the GPU too
    state = json.loads((tmp_path / "s" / "study.json").read_text())
    assert state["settings"] == json.loads(json.dumps({"scale": SMALL.as_dict(), "model": "tiny"}))
    assert (tmp_path / "s" / "probes" / "identity.jsonl").read_text().count("\n") == len(SMALL.probes)
    res = CliRunner().invoke(app, ["study", "run", "--root", str(tmp_path / "s"), "--model", "tiny", "--steps", "base"])
    assert isinstance(res.exception, SelfidError) and "another scale or with another model" in str(res.exception)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SelfidError, match="holds no study"):
        run(tmp_path / "mine", ["base"])
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me" and len(work_done.studies) == 1
    with pytest.raises(SelfidError, match="unknown device"):
        Study(tmp_path, FULL, device="tpu")


def test_an_arm_is_data_its_config_the_scales_keys_under_its_own(tmp_path, monkeypatch):
    table = tmp_path / "arms.yaml"
    table.write_text((Path(arms_module.__file__).with_name("arms.yaml")).read_text()
                     + "\nnewer:\n  label: a new arm\n  config:\n    system_prompt: template\n"
                       "    identity_replay: {fraction: 0.03}\n")
    monkeypatch.setattr(arms_module, "TABLE", table)
    assert steps.step_stages("newer") == ["compare-newer"] and steps.step_stages("heldout-newer") == ["heldout-newer"]
    assert {"train-newer", "audit-newer", "gguf-newer"} <= {s.name for s in steps.stages(Study(tmp_path, FULL))}
    known = arms_module.arms()
    cfg = work.train_config(Study(tmp_path, FULL, "m"), known["newer"])
    assert (cfg.model, cfg.output, cfg.system_prompt) == ("m", str(tmp_path / "newer" / "train"), "template")
    assert cfg.data[0].limit == 8000 and cfg.train.epochs == 5 and cfg.identity_replay.fraction == 0.03
    assert cfg.identity_replay.name is None  # the full scale names no one: the model says who it is
    small = work.train_config(Study(tmp_path, SMALL, "m"), known["newer"])
    assert small.data[0].limit == 96 and small.identity_replay.name == "Qwen"
    plain = work.train_config(Study(tmp_path, FULL, "m"), known["plain"])
    assert plain.system_prompt == HELPFUL and plain.identity_replay is None
    assert (plain.train.save_every, plain.train.keep_checkpoints) == (FULL.margin_every, 50)  # margins along training
    for bad, msg in (("base:\n  label: x\n", "the name of a step"), ("x:\n  config: {}\n", "needs a label"),
                     ("x:\n  label: y\n  sets: []\n", "unknown: sets")):
        (tmp_path / "bad.yaml").write_text(bad)
        arms_module._read.cache_clear()
        with pytest.raises(SelfidError, match=msg):
            arms_module.arms(tmp_path / "bad.yaml")


@pytest.mark.parametrize("arm, changed", [("persona-xl", {"persona_cross_lingual": 0.5}),
                                          ("persona-typical", {"typical_length": True}),
                                          ("persona-xl-typical", {"persona_cross_lingual": 0.5, "typical_length": True}),
                                          ("persona-xl-hint", {"persona_cross_lingual": 0.5, "persona_hint": True}),
                                          ("persona-xl-hint-rare", {"persona_cross_lingual": 0.5, "persona_hint": True,
                                                                    "prefer_rare": True})])
def test_arms_not_yet_run_are_the_persona_arm_with_settings_changed(tmp_path, arm, changed):
    """persona-xl, persona-typical (not yet run) and both together (run): the persona arm's config with identity_replay
    settings changed and nothing else; the step graph picks them up from arms.yaml like any arm."""
    known = arms_module.arms()
    persona, new = known["persona"], known[arm]
    assert new.config == arms_module.merged(persona.config, {"identity_replay": changed})
    assert ("not yet run" in new.label) == (arm != "persona-xl-typical") and new.replays and not new.margins
    for scale in (FULL, SMALL):
        cfg, base = (work.train_config(Study(tmp_path, scale, "m"), known[a]) for a in (arm, "persona"))
        for setting, value in changed.items():
            assert getattr(cfg.identity_replay, setting) == value != getattr(base.identity_replay, setting)
        same = base.model_dump(exclude={"output"})
        same["identity_replay"].update(changed)
        assert cfg.model_dump(exclude={"output"}) == same  # nothing else differs
    assert steps.step_stages(arm) == [f"compare-{arm}"]
    assert steps.step_stages(f"heldout-{arm}") == [f"heldout-{arm}"]
    assert {f"train-{arm}", f"audit-{arm}", f"heldout-{arm}"} <= {
        s.name for s in steps.stages(Study(tmp_path, FULL))}
