"""Benchmark: an audit's work after generation (scoring every reply, per-prompt tallies, clustered statistics, the
summary and report), today's path against the reference path it replaced (issue 24), on one run folder.

Stages, each timed on its own (best of --repeat, after one untimed pass for imports and first-use caches):
  read        the log read and parsed (selfid.audit.log.read_log)
  score       every record scored: the reference with no memo (tests/audit_reference.uncached), today's with the
              run's memo of verdicts and detect's caches of sentences and questions, emptied before each pass
  summary     summary.json's numbers from the scored records (reference: tests/audit_reference.py, plain loops and
              Python's random for the NER bootstrap; today: numpy tallies over one read of the verdicts, numpy draws)
  report      summary.json and report.html written
  whole       load + summarize + write as `selfid rescore` does it (reference: no memo, plain loops)
Today's audit scores each reply as it is logged, so a run's "read" stage is gone (run_audit); that is reported as
`whole_in_run` (score + summary + report, no read).

Both paths' summaries are compared value for value; the script fails if they differ.

Usage:
  python bench/audit_post.py RUN_DIR [--repeat 3] [--out result.json]
  python bench/audit_post.py results/study-0.5b/plain/audit      # a committed grid run (6,966 generations)
A committed run keeps its log gzipped (generations.jsonl.gz); it is read as is.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def best(fn, repeat: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="an audit run folder (run.json + generations.jsonl[.gz])")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not (args.run / "run.json").is_file():
        sys.exit(f"error: {args.run} is not an audit run folder (no run.json)")

    from selfid.audit import scorers
    from selfid.audit.log import LOG, read_log, read_margin, read_meta
    from selfid.audit.report import write_reports
    from selfid.audit.report.html import write_html
    from selfid.audit.report.summary import summarize
    from selfid.io import atomic_write_json
    from tests import audit_reference as reference

    work = Path(tempfile.mkdtemp(prefix="audit-post-"))
    try:
        run = work / "run"
        shutil.copytree(args.run, run)
        meta = read_meta(run)
        margin = read_margin(run)
        rows = read_log(run / LOG)

        def score(memo: bool):
            """Every record scored: today's path from cold caches (as a fresh audit), or the reference's (none)."""
            ctx = scorers.context_for(meta, run)
            if not memo:
                ctx.memo = None
                with reference.uncached():
                    return [scorers.score(r, ctx) for r in rows]
            reference.cold()
            return [scorers.score(r, ctx) for r in rows]

        def write(summary):
            atomic_write_json(run / "summary.json", summary)
            write_html(run / "report.html", [summary])

        plain, fast = score(False), score(True)  # first-use imports and regex compilation, untimed
        reference.summarize(run), summarize(run)
        t: dict[str, dict[str, float]] = {"reference": {}, "today": {}}
        t["reference"]["read"], _ = best(lambda: read_log(run / LOG), args.repeat)
        t["today"]["read"] = t["reference"]["read"]
        t["reference"]["score"], plain = best(lambda: score(False), args.repeat)
        t["today"]["score"], fast = best(lambda: score(True), args.repeat)
        loaded_ref, loaded_fast = (meta, plain, margin), (meta, fast, margin)
        t["reference"]["summary"], s_ref = best(lambda: _reference_summary(reference, run, loaded_ref), args.repeat)
        t["today"]["summary"], s_fast = best(lambda: (reference.cold(), summarize(run, loaded_fast))[1], args.repeat)
        t["reference"]["report"], _ = best(lambda: write(s_ref), args.repeat)
        t["today"]["report"], _ = best(lambda: write(s_fast), args.repeat)
        t["reference"]["whole"], whole_ref = best(lambda: _reference_whole(reference, run, write), args.repeat)
        t["today"]["whole"], whole_fast = best(lambda: (reference.cold(), write_reports(run))[1], args.repeat)
        t["today"]["whole_in_run"], _ = best(lambda: write_reports(run, (meta, score(True), margin)), args.repeat)
        same = json.dumps(s_ref) == json.dumps(s_fast) and json.dumps(whole_ref) == json.dumps(whole_fast)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    stages = ("read", "score", "summary", "report", "whole")
    print(f"{args.run}: {len(rows)} generations, best of {args.repeat}")
    print(f"{'stage':<14}{'reference':>11}{'today':>11}{'ratio':>8}")
    for stage in stages:
        a, b = t["reference"][stage], t["today"][stage]
        print(f"{stage:<14}{a:>10.3f}s{b:>10.3f}s{a / b:>7.2f}x")
    a, b = t["reference"]["whole"], t["today"]["whole_in_run"]
    print(f"{'whole_in_run':<14}{a:>10.3f}s{b:>10.3f}s{a / b:>7.2f}x   (today's run scores as it logs: no read)")
    print("summaries identical:", same)
    result = {"run": str(args.run), "generations": len(rows), "repeat": args.repeat, "seconds": t, "same": same,
              "machine": platform.platform(), "python": platform.python_version()}
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if not same:
        sys.exit("error: today's summary differs from the reference path's")


def _reference_summary(reference, run: Path, loaded) -> dict:
    """The reference summarize on already scored records (its load_run is replaced by `loaded` for the call)."""
    keep = reference.load_run
    reference.load_run = lambda run_dir: loaded
    try:
        return reference.summarize(run)
    finally:
        reference.load_run = keep


def _reference_whole(reference, run: Path, write) -> dict:
    summary = reference.summarize(run)
    write(summary)
    return summary


if __name__ == "__main__":
    main()
