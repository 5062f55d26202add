"""bench/study.py run: the study's steps as stages of selfid.pipeline.stages, with the work itself replaced by
stand-ins that write what each step writes (the real steps train and audit for hours on a GPU)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import study  # noqa: E402


def write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


class Work:
    """Stand-ins for the study's work, each logging (what, arm) and writing the files the real one writes."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, str]] = []
        self.trained = 0
        for name in ("audit_arm", "train_arm", "heldout", "compare", "margins_along_training", "scan_plain"):
            monkeypatch.setattr(study, name, getattr(self, name))

    def audit_arm(self, root, arm, s):
        self.calls.append(("audit", arm))
        write(root / arm / "audit" / "summary.json", {"run": {"complete": True}, "arm": arm, "call": len(self.calls)})

    def heldout(self, root, arm, s):
        self.calls.append(("heldout", arm))
        write(root / arm / "heldout" / "summary.json", {"run": {"complete": True}})

    def train_arm(self, root, arm, s):
        self.calls.append(("train", arm))
        self.trained += 1
        adapter = root / arm / "train" / "adapter"
        write(adapter / "selfid.json", {"arm": arm})
        write(adapter / "checksums.json", {"format": 1, "files": {"run": self.trained}})  # a new adapter each time
        write(root / arm / "train" / "train_data.jsonl", {})
        write(root / arm / "cost.json", {"steps": 1})
        return {"steps": 1}

    def compare(self, root, arm):
        self.calls.append(("compare", arm))
        write(root / arm / "compare" / "comparison.json", {})

    def margins_along_training(self, root, s):
        self.calls.append(("margins", "plain"))
        write(root / "plain" / "margins.json", [])

    def scan_plain(self, root):
        self.calls.append(("scan", "plain"))
        write(root / "scan" / "scan.json", {})


@pytest.fixture
def work(monkeypatch):
    return Work(monkeypatch)


def run(root, steps):
    return study.run(root, steps, study.Settings(smoke=True, model="tiny"))


def test_a_step_runs_what_it_needs_first_and_finished_stages_are_skipped(work, tmp_path, capsys):
    run(tmp_path, ["heldout-plain"])
    assert work.calls == [("train", "plain"), ("heldout", "plain")]
    work.calls.clear()
    records = run(tmp_path, ["plain", "scan"])
    assert work.calls == [("audit", "base"), ("audit", "plain"), ("compare", "plain"), ("margins", "plain"),
                          ("scan", "plain")]
    assert list(records) == ["base", "train-plain", "audit-plain", "compare-plain", "margins", "scan"]
    assert (tmp_path / "stages" / "compare-plain.json").is_file()
    work.calls.clear()
    run(tmp_path, ["plain", "heldout-plain", "scan"])
    assert work.calls == []
    assert "✓ 2/7 train plain: finished earlier" in capsys.readouterr().out


def test_a_changed_input_reruns_what_reads_it(work, tmp_path):
    run(tmp_path, ["plain", "heldout-plain"])
    work.calls.clear()
    # the base audit re-scored (selfid rescore rewrites summary.json): only the comparison is made again
    write(tmp_path / "base" / "audit" / "summary.json", {"run": {"complete": True}, "rescored": 1})
    run(tmp_path, ["plain", "heldout-plain"])
    assert work.calls == [("compare", "plain")]
    # plain trained again (its adapter lost): everything made from the old adapter is made again
    work.calls.clear()
    (tmp_path / "plain" / "train" / "adapter" / "selfid.json").unlink()
    run(tmp_path, ["plain", "heldout-plain"])
    assert work.calls == [("train", "plain"), ("audit", "plain"), ("compare", "plain"), ("margins", "plain"),
                          ("heldout", "plain")]


def test_a_study_folder_from_before_stage_records_is_continued_not_redone(work, tmp_path):
    for arm in ("base", "plain"):
        work.audit_arm(tmp_path, arm, None)
    work.heldout(tmp_path, "base", None)
    work.train_arm(tmp_path, "plain", None)
    work.compare(tmp_path, "plain")
    work.margins_along_training(tmp_path, None)
    work.calls.clear()
    records = run(tmp_path, ["base", "plain", "heldout-base", "scan"])
    assert work.calls == [("scan", "plain")]
    assert all(records[name].get("adopted") for name in ("base", "train-plain", "audit-plain", "heldout-base"))


def test_the_command_line_is_the_one_bench_gpu_study_sh_calls(work, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["study.py", "run", "--root", str(tmp_path / "r"), "--model", "embedded",
                                      "--steps", "train-self,heldout-self"])
    study.main()
    assert work.calls == [("train", "self"), ("heldout", "self")]
    assert study.step_stages("gguf-plain") == ["inproc-plain", "gguf-plain"]
    assert study.step_stages("inproc-plain") == ["inproc-plain"]  # the GPU side of gguf-plain, run alone
    assert study.step_stages("scale") == ["compare-scale"]
    plan = [s.name for s in study.stages(tmp_path, study.Settings(True, "tiny"))]
    assert {"base", "heldout-base", "parity", "llamacpp", "search-scale", "export-best", "gguf-best"} <= set(plan)
    monkeypatch.setattr(sys, "argv", ["study.py", "run", "--root", str(tmp_path / "x"), "--steps", "base,heldout-nope"])
    with pytest.raises(SystemExit, match="unknown step heldout-nope"):
        study.main()
    assert not (tmp_path / "x").exists() and work.calls == [("train", "self"), ("heldout", "self")]


def test_the_bars_foreign_goal_names_a_bound_no_clean_cell_of_its_size_can_meet():
    """A greedy cell of 126 replies with no claim is bounded at 3.0%: the goal is missed, and the text says the
    cell is clean; a cell with a claim above the bound is missed without that excuse; small bounds pass."""
    from bench.study_report import foreign_goal

    def cell(system, t, k, n, hi):
        return {"system": system, "temperature": t, "foreign": {"k": k, "n": n, "rate": k / n, "ci95": [0.0, hi]}}

    clean_but_small = [cell("default", 0.0, 0, 126, 0.0296), cell("persona-zh", 1.0, 1, 504, 0.011)]
    text, ok = foreign_goal(clean_but_small)
    assert not ok and "0.2% (persona-zh T=1)" in text and "(default T=0, 0/126)" in text
    assert "126 replies without one cannot bound a rate below 2%" in text
    text, ok = foreign_goal([cell("persona-en", 0.0, 1, 126, 0.044), cell("default", 1.0, 0, 504, 0.0076)])
    assert not ok and "cannot bound" not in text and "4.4% (persona-en T=0, 1/126)" in text
    assert foreign_goal([cell("default", 1.0, 2, 504, 0.015), cell("empty", 1.0, 0, 504, 0.0076)])[1]
