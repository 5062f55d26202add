"""selfid never writes over files it did not write, and a damaged or missing run file is one line saying what to do,
before any work: each case is one a bad-input sweep of the CLI found (a config overwritten by its own run, a
summary.json rewritten from zero replies, a user's file replaced by a baseline, a run's report replaced by a
comparison, a gate that passed without checking identity)."""

import gzip
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from selfid.cli import app
from selfid.errors import SelfidError

RESULTS = Path(__file__).resolve().parents[1] / "results"
SMALL_RUN = RESULTS / "study-0.5b" / "parity" / "gguf-plain"  # a committed identity + NER audit, 500 KB of summary


@pytest.fixture
def run_copy(tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(SMALL_RUN, folder)
    return folder


def test_training_refuses_an_output_folder_holding_files_a_run_did_not_write(tmp_path):
    from selfid.pipeline.train import check_output

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (mine / "metrics.csv").write_text("a,b\n")
    with pytest.raises(SelfidError, match=r"holds files a training run did not write \(notes.txt\)"):
        check_output(mine, resume=False)
    failed = tmp_path / "failed-run"  # what a run that stopped before its first checkpoint leaves
    failed.mkdir()
    (failed / "config.yaml").write_text("x: 1\n")
    (failed / "identity_replay").mkdir()
    check_output(failed, resume=False)
    check_output(mine, resume=True)  # resuming is checked against its checkpoint, not here
    with pytest.raises(SelfidError, match="is a file"):
        check_output(mine / "notes.txt", resume=False)


def test_train_never_writes_its_config_over_the_config_it_reads(tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    text = "# my settings\noutput: .\nmodel: embedded\n"
    config.write_text(text)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", str(config)])
    assert result.exit_code != 0 and "over" in (result.output + str(result.exception))
    assert config.read_text() == text


def test_rescore_without_a_reply_log_leaves_the_summary_as_it_was(run_copy):
    from selfid.audit.run import rescore

    (run_copy / "generations.jsonl.gz").unlink()
    before = (run_copy / "summary.json").read_bytes()
    with pytest.raises(SelfidError, match="has no generations.jsonl .*summary.json is left as it is"):
        rescore(run_copy)
    assert (run_copy / "summary.json").read_bytes() == before


@pytest.mark.parametrize("damage, message", [
    (lambda run: (run / "run.json").write_text(""), r"run.json is damaged \(not a JSON object\)"),
    (lambda run: (run / "run.json").write_text("[1, 2]"), r"run.json is damaged \(not a JSON object\)"),
    (lambda run: (run / "generations.jsonl.gz").write_bytes(b"not gzip"), "the log is damaged or unreadable"),
    (lambda run: (run / "generations.jsonl.gz").write_bytes(gzip.compress(b'{"a": 1}\n')),
     r"generations.jsonl.gz:1 is not a logged generation"),
])
def test_a_damaged_run_folder_is_one_line_from_rescore(run_copy, damage, message):
    from selfid.audit.run import rescore

    damage(run_copy)
    with pytest.raises(SelfidError, match=message):
        rescore(run_copy)


def test_compare_refuses_to_write_into_an_audit_run_or_over_a_users_report(run_copy, tmp_path):
    from selfid.audit.compare import compare

    report = (run_copy / "report.html").read_bytes()
    with pytest.raises(SelfidError, match="is an audit run folder"):
        compare(SMALL_RUN, SMALL_RUN, run_copy)
    assert (run_copy / "report.html").read_bytes() == report
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.html").write_text("my own page")
    with pytest.raises(SelfidError, match="already holds report.html, which selfid did not write"):
        compare(SMALL_RUN, SMALL_RUN, mine)
    assert (mine / "report.html").read_text() == "my own page"
    done = tmp_path / "done"
    compare(SMALL_RUN, SMALL_RUN, done)
    compare(SMALL_RUN, SMALL_RUN, done)  # its own earlier comparison is written again
    assert json.loads((done / "comparison.json").read_text())


def test_a_baseline_is_written_over_an_older_baseline_only(tmp_path):
    from selfid.gate.tallies import BASELINE_KIND, check_baseline_target

    mine = tmp_path / "notes.txt"
    mine.write_text("keep me")
    with pytest.raises(SelfidError, match="exists and is not a selfid baseline: it is left as it is"):
        check_baseline_target(mine)
    with pytest.raises(SelfidError, match="is a folder"):
        check_baseline_target(tmp_path)
    old = tmp_path / "baseline.json"
    old.write_text(json.dumps({"kind": BASELINE_KIND}))
    check_baseline_target(old)
    check_baseline_target(tmp_path / "new.json")


def test_a_gate_that_can_check_no_identity_metric_does_not_pass():
    """The grid audit against a held-out audit share no identity prompt, only NER sentences: the gate used to
    print two NER checks and pass with exit 0."""
    from selfid.gate.tallies import read
    from selfid.gate.thresholds import Thresholds
    from selfid.gate.verdict import judge

    with pytest.raises(SelfidError, match="no identity check can run"):
        judge(read(RESULTS / "study-0.5b" / "plain" / "audit"), read(RESULTS / "study-0.5b" / "plain" / "heldout"),
              Thresholds())


def test_counts_below_one_are_refused_before_anything_loads():
    for args in (["eval-ner", "--n", "-5"], ["eval-ner", "--n", "0"], ["eval-ner", "--batch-size", "0"],
                 ["audit", "--retries", "-1", "--out", "x"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and "Invalid value" in result.output, args


def test_a_path_the_user_gave_that_cannot_be_used_is_one_line(tmp_path):
    """An --out under a file, an unreadable or missing input: `selfid: error: cannot use PATH: why`, exit 2, from
    every command (they ended in Python's traceback); other errors are not dressed up as bad input."""
    import subprocess
    import sys

    from selfid.cli import path_error

    assert path_error(PermissionError(13, "Permission denied", "/x/run.json")) == \
        "cannot use /x/run.json: permission denied (check who owns it and its mode)"
    assert path_error(FileNotFoundError(2, "No such file", "/nonexist.jsonl")).endswith("no such file or folder")
    assert path_error(OSError(28, "No space left on device", "/x")) is None  # not about the path: kept as it is
    assert path_error(PermissionError(13, "denied")) is None  # no path to name
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = subprocess.run([sys.executable, "-m", "selfid.cli", "compare", str(SMALL_RUN), str(SMALL_RUN), "--out",
                           str(blocker / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"selfid: error: --out {blocker / 'out'}: {blocker} is a file, not a folder: " \
                                  "choose another --out"


def test_an_output_that_cannot_be_written_is_refused_before_the_work(tmp_path, monkeypatch):
    """replay and export wrote their folder only after minutes of sampling or a merge, and train after loading the
    model: an --out under a file, or in a folder the user may not write, lost that work."""
    from selfid.io import check_can_create
    from selfid.pipeline.train import check_output

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")  # says no base model: export would stop there, later
    runner = CliRunner()
    for args in (["replay", "--out", str(blocker / "r"), "--model", str(tmp_path / "no-such-model")],
                 ["export", str(adapter), "--merge", "--out", str(blocker / "x" / "y")]):
        result = runner.invoke(app, args)
        assert result.exit_code != 0
        assert f"{blocker} is a file, not a folder" in str(result.exception), args
    with pytest.raises(SelfidError, match="is a file, not a folder"):
        check_output(blocker / "run", resume=False)
    check_can_create(tmp_path / "new" / "deeper")  # a writable parent: nothing made, nothing refused
    assert not (tmp_path / "new").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "adapter"]

    def denied(**kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("selfid.io.tempfile.mkdtemp", denied)  # a read-only folder (root's permission bits say yes)
    with pytest.raises(SelfidError, match=r"--out .*/out: cannot write in .* \(Permission denied\): choose a folder "
                                          "you can write to"):
        check_can_create(tmp_path / "out")


def test_replay_temperatures_outside_0_to_2_are_refused_like_the_audits():
    from selfid.config import IdentityReplay

    for bad in ([-1.0], [5.0], []):
        with pytest.raises(ValueError):
            IdentityReplay(kind="self", temperatures=bad)
    assert IdentityReplay(kind="self", temperatures=[0.0, 1.3]).temperatures == [0.0, 1.3]


@pytest.mark.parametrize("text, message", [
    ("{% for m in messages %}{{ m.content }{% endfor %}", r"line 1 is not valid Jinja \(unexpected '}'\)"),
    ("{% for m in messages %}{{ nosuchfn(m.content) }}{% endfor %}", r"fails on one user turn \('nosuchfn' is undefined\)"),
])
def test_a_broken_chat_template_is_refused_where_it_loads(tiny_model_dir, tmp_path, text, message):
    """`selfid api --chat-template` with a broken file started, then answered every request with HTTP 500."""
    from selfid.model.load import load_model

    path = tmp_path / "t.jinja"
    path.write_text(text)
    with pytest.raises(SelfidError, match=message):
        load_model(str(tiny_model_dir), device="cpu", progress=False, chat_template=path)


def test_a_damaged_gguf_names_the_users_file_and_leaves_no_copy_in_the_cache(tmp_path, monkeypatch):
    """An empty, foreign or cut-short .gguf ended in ValueError or struct.error naming selfid's cache copy, and the
    copy stayed there."""
    from selfid.model.load import gguf_folder

    monkeypatch.setenv("SELFID_HOME", str(tmp_path / "home"))
    empty, foreign, cut = tmp_path / "empty.gguf", tmp_path / "foreign.gguf", tmp_path / "cut.gguf"
    empty.write_bytes(b"")
    foreign.write_bytes(b"PK\x03\x04zip!")
    cut.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + b"\x05" * 40)  # a header, then nothing it promises
    with pytest.raises(SelfidError, match=f"{empty} is not a GGUF file \\(it is empty\\)"):
        gguf_folder(empty, progress=False)
    with pytest.raises(SelfidError, match="does not begin with GGUF"):
        gguf_folder(foreign, progress=False)
    with pytest.raises(SelfidError, match=f"{cut} could not be read as a GGUF model .*cut short or damaged"):
        gguf_folder(cut, progress=False)
    assert not [p for p in (tmp_path / "home").rglob("*.gguf")]


def test_a_model_folder_or_adapter_missing_its_parts_is_one_line(tiny_model_dir, tmp_path):
    from selfid.model.load import load_model
    from tests.serve_helpers import make_adapter

    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "config.json").write_text("{")
    with pytest.raises(SelfidError, match=r"could not load the model in .*model \(.*not a valid JSON.*not a whole "
                                          r"transformers model folder"):
        load_model(str(broken), device="cpu", progress=False)
    shutil.copy(tiny_model_dir / "config.json", broken / "config.json")
    (broken / "generation_config.json").write_text('{"do_sample": true,')  # was ignored: greedy, no stop tokens
    with pytest.raises(SelfidError, match=r"generation_config.json is damaged \(not valid JSON: .*\); it holds the "
                                          "model's sampling defaults and stop tokens"):
        load_model(str(broken), device="cpu", progress=False)
    shutil.copy(tiny_model_dir / "generation_config.json", broken / "generation_config.json")
    (broken / "tokenizer.json").unlink()  # transformers loads its special tokens alone; every reply was empty
    with pytest.raises(SelfidError, match=r"the tokenizer in .*model turns text into no tokens \(2 in its vocabulary\)"
                                          r": the folder lacks its tokenizer files \(tokenizer.json"):
        load_model(str(broken), device="cpu", progress=False)
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", seed=1)
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(SelfidError, match=r"the adapter in .*adapter has no weights \(adapter_model.safetensors\)"):
        load_model(str(tiny_model_dir), adapter=adapter, device="cpu", progress=False)


def test_chat_sampling_options_out_of_range_are_refused_by_their_option_names():
    """`chat --temperature 100` was accepted, and --top-p 5 or --max-tokens 0 were refused as top_p and
    max_new_tokens, names the user never typed."""
    for args, name in ((["--temperature", "100"], "--temperature"), (["--top-p", "5"], "--top-p"),
                       (["--top-p", "0"], "--top-p"), (["--max-tokens", "0"], "--max-tokens")):
        result = CliRunner().invoke(app, ["chat", "--prompt", "hi", *args])
        assert result.exit_code == 2 and f"Invalid value for '{name}'" in result.output, args
