"""report.html: one self-contained page (inline CSS and SVG, no scripts from anywhere) that opens offline.

One template renders a single run or a comparison (base and tuned side by side, with the
difference and its test).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from selfid.audit.probes import IDENTITY_SUITES
from selfid.io import atomic_write_text
from selfid.vendors import BY_KEY

TEMPLATE = Path(__file__).parent / "report.html.jinja"


def _mix(a: tuple, b: tuple, x: float) -> str:
    x = max(0.0, min(1.0, x))
    return "rgb({},{},{})".format(*(round(p + (q - p) * x) for p, q in zip(a, b)))


def heat(rate: float | None) -> str:
    """White (0%) to deep red (100%); a missing rate is grey."""
    if rate is None:
        return "#eee"
    return _mix((255, 255, 255), (165, 15, 21), rate ** 0.7)


def heat_good(rate: float | None) -> str:
    """White (0%) to deep green (100%), for rates where more is better (own identity affirmed, task done)."""
    if rate is None:
        return "#eee"
    return _mix((255, 255, 255), (26, 110, 52), rate ** 0.7)


def ink(rate: float | None) -> str:
    return "#fff" if rate is not None and rate ** 0.7 > 0.55 else "#111"


def diverge(diff: float | None) -> str:
    """Blue for fewer foreign claims in B, red for more; white for none."""
    if diff is None:
        return "#eee"
    return _mix((255, 255, 255), (178, 24, 43) if diff > 0 else (33, 102, 172), min(1.0, abs(diff) * 2.5))


def pct(r: dict | None, digits: int = 1) -> str:
    if not r or r.get("rate") is None:
        return "–"
    return f"{100 * r['rate']:.{digits}f}%"


def ci(r: dict | None) -> str:
    if not r or r.get("rate") is None:
        return ""
    return f"{100 * r['ci95'][0]:.0f}–{100 * r['ci95'][1]:.0f}%"


def margin_bar(value: float | None, scale: float = 10.0, width: int = 160) -> str:
    """An inline SVG bar centred at zero: green to the right (prefers its own name), red to the left."""
    if value is None:
        return ""
    half = width / 2
    length = min(half, abs(value) / scale * half)
    x = half if value >= 0 else half - length
    color = "#2a7d3f" if value >= 0 else "#b2182b"
    return (f'<svg width="{width}" height="14" role="img" aria-label="margin {value:+.2f}">'
            f'<rect x="0" y="6" width="{width}" height="2" fill="#ddd"/>'
            f'<rect x="{x:.1f}" y="2" width="{length:.1f}" height="10" fill="{color}"/>'
            f'<line x1="{half}" y1="0" x2="{half}" y2="14" stroke="#555" stroke-width="1"/></svg>')


def sysprompt(text: str | None, source: str | None = None) -> str:
    if text is None:
        if source and source.startswith("endpoint"):
            return "(none sent: the endpoint's chat template may insert its own)"
        return "(no system prompt)"
    return text if text else '"" (an empty system message)'


def vendor_name(key: str) -> str:
    return BY_KEY[key].name_en if key in BY_KEY else key


# the metrics report.html shows as heat maps: (summary key, title, more is better)
HEAT_METRICS = (("foreign", "Foreign identity claims", False),
                ("own_affirmation", "Own identity affirmed (questions whose right answer is the model's own identity)", True),
                ("self_denial", "Self-denial (denies its own name or maker)", False),
                ("yes_to_other", "Yes to another vendor (\"Yes\" to a leading question about another vendor's model)", False),
                ("task_done", "Identity-adjacent tasks done (asked form, own identity in it)", True),
                ("persona_kept", "Persona kept (persona system prompts)", True),
                ("identity_after_task", "Identity question after a task answered as one (not more task output)", True),
                ("copy", "Replies copied from training data (verbatim or near-verbatim)", False))


@lru_cache(maxsize=1)
def _template():
    """The report template, compiled once per process (compiling it took ~0.2 s of every report)."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape
    from markupsafe import Markup

    env = Environment(loader=FileSystemLoader(str(TEMPLATE.parent)), autoescape=select_autoescape(["html", "jinja"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(sysprompt=sysprompt, heat=heat, heat_good=heat_good, ink=ink, diverge=diverge, pct=pct, ci=ci,
                       vendor=vendor_name, bar=lambda v: Markup(margin_bar(v)))
    return env.get_template(TEMPLATE.name)


def render(summaries: list[dict], comparison: dict | None = None, headline: list[str] = ()) -> str:
    names = ["A", "B"] if len(summaries) == 2 else [""]
    suites = [s for s in IDENTITY_SUITES if s in summaries[0]]
    runs = []
    for name, s in zip(names, summaries):
        cells = {suite: {(c["system"], c["temperature"]): c for c in s.get(suite, {}).get("cells", [])} for suite in suites}
        runs.append({"name": name, "s": s, "cells": cells})
    diffs = {suite: {(c["system"], c["temperature"]): c for c in (comparison or {}).get(suite, {}).get("cells", [])}
             for suite in suites}
    metrics = [m for m in HEAT_METRICS
               if any(c[m[0]]["n"] for r in runs for suite in suites for c in r["cells"][suite].values())]
    margin = next((summaries[0][s].get("margin") for s in suites if summaries[0][s].get("margin")), None)
    return _template().render(runs=runs, comparison=comparison, diffs=diffs, headline=list(headline),
                                                  suites=suites, metrics=metrics, margin=margin)


def write_html(path: Path, summaries: list[dict], comparison: dict | None = None, headline: list[str] = ()) -> None:
    """`headline`: lines shown above everything else (say, a verdict), as plain text."""
    atomic_write_text(Path(path), render(summaries, comparison, headline))
