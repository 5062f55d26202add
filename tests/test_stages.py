"""selfid.pipeline.stages: the one resume mechanism of the demo and the study, on small stages that write text files."""

import json

import pytest

from selfid.errors import SelfidError
from selfid.pipeline.stages import RECORDS, Runner, Stage, read_record


class Chain:
    """src.txt (written by the test) -> `upper` writes up.txt -> `count` writes n.txt; every call is logged."""

    def __init__(self, root):
        self.root = root
        self.calls: list[str] = []
        self.said: list[tuple[str, str, str]] = []
        self.seen_before: dict[str, bool] = {}  # stage -> whether its output was already there when it started
        self.fail: dict[str, BaseException] = {}

    def upper(self):
        self._start("upper", "up.txt")
        (self.root / "up.txt").write_text((self.root / "src.txt").read_text().upper())
        return {"chars": len((self.root / "src.txt").read_text())}

    def count(self):
        self._start("count", "n.txt")
        (self.root / "n.txt").write_text("partial")  # what an interruption would leave
        if "count" in self.fail:
            raise self.fail.pop("count")
        (self.root / "n.txt").write_text(str(len((self.root / "up.txt").read_text())))

    def _start(self, name, output):
        self.calls.append(name)
        self.seen_before[name] = (self.root / output).exists()

    def runner(self, resumable=True):
        stages = [Stage("count", "count the letters", self.count, outputs=("n.txt",), inputs=("up.txt",),
                        check=lambda: None if (self.root / "n.txt").read_text().isdigit() else "n.txt is unfinished",
                        resumable=resumable),
                  Stage("upper", "upper-case the source", self.upper, outputs=("up.txt",), inputs=("src.txt",))]
        return Runner(self.root, stages, say=lambda *a: self.said.append(a), resume_hint="run it again")


@pytest.fixture
def chain(tmp_path):
    (tmp_path / "src.txt").write_text("abc")
    return Chain(tmp_path)


def test_asking_for_the_last_stage_runs_what_it_needs_first_and_records_it(chain):
    records = chain.runner().run(["count"])
    assert chain.calls == ["upper", "count"] and (chain.root / "n.txt").read_text() == "3"
    rec = read_record(chain.root, "upper")
    assert rec == records["upper"] and rec["info"] == {"chars": 3} and rec["outputs"] == ["up.txt"]
    assert set(rec["inputs"]) == {"src.txt"} and set(records["count"]["inputs"]) == {"up.txt"}
    assert [(kind, label) for kind, label, _ in chain.said if kind == "start"] == [
        ("start", "1/2 upper-case the source"), ("start", "2/2 count the letters")]


def test_a_done_stage_is_skipped(chain):
    chain.runner().run()
    first = {name: read_record(chain.root, name) for name in ("upper", "count")}
    chain.calls.clear()
    chain.runner().run()
    assert chain.calls == []
    assert {name: read_record(chain.root, name) for name in ("upper", "count")} == first


def test_a_changed_input_reruns_the_stage_from_a_clean_slate_and_what_reads_its_output(chain):
    chain.runner().run()
    chain.calls.clear()
    (chain.root / "src.txt").write_text("abcdef")
    chain.runner().run()
    assert chain.calls == ["upper", "count"] and (chain.root / "n.txt").read_text() == "6"
    assert chain.seen_before == {"upper": False, "count": False}  # stale outputs were removed before it ran
    assert any(kind == "redo" and "src.txt changed" in text for kind, _, text in chain.said)
    # the source changes but the upper-cased text does not: what reads it is not run again
    chain.calls.clear()
    (chain.root / "src.txt").write_text("ABCDEF")
    chain.runner().run()
    assert chain.calls == ["upper"]


def test_a_damaged_record_is_repaired_from_outputs_that_are_finished(chain):
    chain.runner().run()
    chain.calls.clear()
    path = chain.root / RECORDS / "count.json"
    path.write_text(path.read_text()[:25])  # torn
    chain.runner().run()
    assert chain.calls == []
    rec = json.loads(path.read_text())
    assert rec["adopted"] is True and set(rec["inputs"]) == {"up.txt"}
    assert any(kind == "redo" and "damaged" in text for kind, _, text in chain.said)


def test_a_damaged_record_over_unfinished_outputs_runs_the_stage(chain):
    chain.runner().run()
    chain.calls.clear()
    (chain.root / RECORDS / "count.json").write_text("{")
    (chain.root / "n.txt").write_text("partial")
    chain.runner().run()
    assert chain.calls == ["count"] and (chain.root / "n.txt").read_text() == "3"


def test_outputs_from_before_stage_records_are_kept_and_recorded(chain):
    (chain.root / "up.txt").write_text("ABC")
    (chain.root / "n.txt").write_text("3")
    chain.runner().run()
    assert chain.calls == []
    assert read_record(chain.root, "count")["adopted"] and read_record(chain.root, "upper")["wall_s"] is None


@pytest.mark.parametrize("resumable", [True, False])
def test_an_interrupted_stage_leaves_no_record_and_runs_again(chain, resumable):
    chain.fail["count"] = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        chain.runner(resumable).run()
    assert read_record(chain.root, "count") is None and read_record(chain.root, "upper") is not None
    stopped = [text for kind, _, text in chain.said if kind == "stopped"]
    assert stopped == [f"interrupted during stage 2/2 count the letters. Everything finished so far is in "
                       f"{chain.root}; continue with: run it again"]
    chain.calls.clear()
    chain.runner(resumable).run()
    assert chain.calls == ["count"] and (chain.root / "n.txt").read_text() == "3"
    # a resumable stage continues on what it left; another starts from nothing
    assert chain.seen_before["count"] is resumable


def test_a_stage_whose_outputs_vanish_runs_again_but_not_what_came_before(chain):
    chain.runner().run()
    chain.calls.clear()
    (chain.root / "n.txt").unlink()
    chain.runner().run()
    assert chain.calls == ["count"]


def test_errors_name_the_stage_and_how_to_continue(chain):
    chain.fail["count"] = SelfidError("the disk is full")
    with pytest.raises(SelfidError, match=r"the disk is full \(stage 2/2 count the letters; finished stages are "
                                          r"kept in .*: continue with run it again\)"):
        chain.runner().run()
    (chain.root / "src.txt").unlink()
    (chain.root / RECORDS / "upper.json").unlink()
    with pytest.raises(SelfidError, match="stage upper needs .*src.txt, which is missing"):
        chain.runner().run()


def test_a_stage_that_returns_without_its_outputs_is_not_recorded(tmp_path):
    runner = Runner(tmp_path, [Stage("nothing", "write nothing", lambda: None, outputs=("x.txt",))],
                    say=lambda *a: None)
    with pytest.raises(SelfidError, match="ended without finishing its outputs: x.txt is missing"):
        runner.run()
    assert read_record(tmp_path, "nothing") is None


def test_unknown_stages_loops_and_paths_outside_the_run_folder_are_refused(tmp_path):
    def stage(name, inputs, outputs):
        return Stage(name, name, lambda: None, outputs=outputs, inputs=inputs)

    with pytest.raises(SelfidError, match="unknown stage c: use one of a, b"):
        Runner(tmp_path, [stage("a", (), ("a",)), stage("b", ("a",), ("b",))]).run(["c"])
    with pytest.raises(SelfidError, match="need each other"):
        Runner(tmp_path, [stage("a", ("b/x",), ("a",)), stage("b", ("a/y",), ("b",))]).run()
    for bad in ("../up", "/etc", RECORDS, "."):
        with pytest.raises(ValueError, match="not a path inside the run folder"):
            Runner(tmp_path, [stage("a", (), (bad,))])
