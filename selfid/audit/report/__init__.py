"""Reports of a run directory: summary.json, a terminal table and one self-contained report.html."""

from __future__ import annotations

from pathlib import Path

from selfid.audit.report.html import write_html
from selfid.audit.report.summary import summarize
from selfid.audit.report.terminal import print_comparison, print_summary
from selfid.io import atomic_write_json


def write_reports(run_dir: Path, loaded: tuple | None = None) -> dict:
    """(Re)write summary.json and report.html from what the run folder holds; return the summary. `loaded`: what
    `summary.load_run(run_dir)` would return, when the caller already holds it (the runner scores as it logs)."""
    run_dir = Path(run_dir)
    summary = summarize(run_dir, loaded)
    atomic_write_json(run_dir / "summary.json", summary)
    write_html(run_dir / "report.html", [summary])
    return summary


__all__ = ["write_reports", "summarize", "print_summary", "print_comparison", "write_html"]
