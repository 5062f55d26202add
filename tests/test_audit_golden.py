"""The audit's post-generation work, made faster (issue 24), gives the summary and report it gave before, byte for byte.

Fixed logs: slices of two committed study runs (results/study-0.5b: the grid with NER and the general suite; the
held-out grid with persona prompts, leading questions and after-task probes), with judged and unscored records mixed
in. The reference is tests/audit_reference.py, main's summary code before the change (plain loops, Python's random
for the NER bootstrap, no memo of verdicts).
"""

import gzip
import json
import random
import shutil
from pathlib import Path

import pytest

from selfid.audit import stats
from selfid.audit.report import write_reports
from selfid.audit.report.summary import load_run, summarize
from selfid.audit.run import AuditParams, audit_systems, run_audit
from tests import audit_reference
from tests.audit_helpers import ScriptedBackend, write_probes

RESULTS = Path(__file__).resolve().parents[1] / "results" / "study-0.5b"


def _slice(src: Path, dest: Path, keep_probe, judged: bool = False, shuffled: bool = False) -> Path:
    """A run folder holding the records of `src` whose probe `keep_probe` accepts (and its run.json, margin.json);
    `shuffled`: in another order, as an endpoint's replies finish (prompts then first appear in another order in
    each cell)."""
    dest.mkdir(parents=True)
    for name in ("run.json", "margin.json"):
        if (src / name).is_file():
            shutil.copy(src / name, dest / name)
    rows = [json.loads(line) for line in gzip.open(src / "generations.jsonl.gz", "rt", encoding="utf-8")]
    rows = [r for r in rows if keep_probe(r["suite"], r["probe"])]
    if shuffled:
        random.Random(0).shuffle(rows)
    if judged:  # a judge's verdicts, read and unread, on a few identity replies
        for i, r in enumerate(r for r in rows if r["suite"].startswith("identity")):
            if i % 37 == 0:
                r["judge"] = {"claims": ["openai"] if i % 74 == 0 else [], "persona": False}
            elif i % 53 == 0:
                r["judge"] = {"claims": [], "unscored": True}
    (dest / "generations.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                            encoding="utf-8")
    return dest


def _every(n: int):
    return lambda suite, probe: sum(map(ord, probe)) % n == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    return [_slice(RESULTS / "plain" / "audit", root / "grid", _every(5), judged=True),
            _slice(RESULTS / "base" / "heldout", root / "heldout", _every(7), shuffled=True)]


def _dumped(summary: dict) -> bytes:
    return json.dumps(summary, ensure_ascii=False, indent=2).encode()


def test_the_fast_summary_is_the_reference_summary_byte_for_byte(runs):
    for run in runs:
        fast, reference = summarize(run), audit_reference.summarize(run)
        assert _dumped(fast) == _dumped(reference), run.name
        assert fast["run"]["generations"] > 500  # a slice big enough to hold every kind of cell
    grid, heldout = (summarize(r) for r in runs)
    assert grid["ner"] and grid["general"] and grid["identity"]["overall"]["judged"] > 0
    assert grid["identity"]["overall"]["unscored"] > 0
    assert any(c["persona_kept"]["n"] for c in heldout["identity-heldout"]["cells"])
    assert heldout["identity-heldout"]["overall"]["identity_after_task"]["n"] > 0


def test_report_files_are_those_the_reference_summary_writes(runs, tmp_path):
    from selfid.audit.report.html import write_html

    run = runs[0]
    write_reports(run)
    write_html(tmp_path / "report.html", [audit_reference.summarize(run)])
    assert (run / "report.html").read_bytes() == (tmp_path / "report.html").read_bytes()
    assert json.loads((run / "summary.json").read_text()) == json.loads(_dumped(audit_reference.summarize(run)))


def test_a_run_scored_as_it_logs_reports_what_reading_its_log_back_reports(tmp_path):
    """run_audit scores each reply from its logged line during the run (no read-back): same summary as a rescore,
    for a fresh run and for one resumed after an interruption."""
    probes = write_probes(tmp_path / "p.jsonl", ["en-direct-01", "zh-direct-01", "en-leading-01", "en-multiturn-01"])
    params = AuditParams(["identity"], audit_systems(["template,helpful,empty"], "You are Qwen."), [0.0, 0.7], 3, 16, 1,
                         identity_probes=str(probes))

    def reply(item):
        return random.Random(item.seed).choice(["I am Qwen, by Alibaba Cloud.", "I'm ChatGPT, made by OpenAI.",
                                                "Yes, I am Claude.", "No, I'm not Claude; I am Qwen.", "我是通义千问。"])

    out = tmp_path / "run"
    got = run_audit(ScriptedBackend(reply), params, out, show_progress=False)
    assert _dumped(got) == _dumped(audit_reference.summarize(out))
    lines = (out / "generations.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (out / "generations.jsonl").write_text("".join(lines[:11]) + lines[11][:20], encoding="utf-8")  # killed mid-line
    resumed = run_audit(ScriptedBackend(reply), params, out, resume=True, show_progress=False)
    assert _dumped(resumed) == _dumped(audit_reference.summarize(out))
    assert resumed["run"]["generations"] == got["run"]["generations"] == 4 * 3 * (1 + 3)


def test_scoring_with_the_memo_gives_the_verdicts_without_it(runs):
    meta, fast, _ = load_run(runs[1])
    _, plain, _ = audit_reference.load_run(runs[1])
    assert [s.verdict for s in fast] == [s.verdict for s in plain]
    assert len({s.reply for s in fast}) < len(fast)  # replies repeat, which is what the memo saves


@pytest.mark.parametrize("n", [1, 2, 3, 17, 300])
def test_numpy_bootstrap_draws_are_pythons(n):
    rng = random.Random(n)
    counts = [(rng.randrange(5), rng.randrange(3), rng.randrange(4)) for _ in range(n)]
    for seed in (0, 1, 12345):
        assert stats.bootstrap_f1(counts, 400, seed) == stats.bootstrap_f1_plain(counts, 400, seed)


def test_bootstrap_falls_back_to_the_plain_loop_when_numpy_cannot_draw_pythons_numbers(monkeypatch):
    counts = [(1, 0, 1), (0, 2, 0), (3, 1, 0)]
    monkeypatch.setattr(stats, "_same_draws", lambda seed, n, count: None)
    assert stats.bootstrap_f1(counts, 200, 3) == stats.bootstrap_f1_plain(counts, 200, 3)


def test_numpy_draws_are_pythons_randrange_and_wide_ranges_are_refused():
    for seed, n in ((0, 5), (7, 1000), (3, 2 ** 20 + 1)):
        rng = random.Random(seed)
        assert stats._same_draws(seed, n, 3000).tolist() == [rng.randrange(n) for _ in range(3000)]
    assert stats._same_draws(0, 2 ** 31, 10) is None
