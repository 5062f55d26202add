"""What a gate leaves for CI: gate.json (every number), junit.xml (one test case per metric x system prompt:
a regression is a failure, an inconclusive cell is skipped with the reason), summary.md (for a CI job's summary
page) and the same table in the terminal."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

from selfid.gate.verdict import INCONCLUSIVE, PASS, REGRESSION
from selfid.io import atomic_write_json, atomic_write_text

EXIT_CODES = {PASS: 0, REGRESSION: 1, INCONCLUSIVE: 2}
SHOWN = {PASS: "pass", REGRESSION: "REGRESSION", INCONCLUSIVE: "inconclusive"}


def _pts(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def _side(cell: dict, side: str) -> str:
    s = cell[side]
    if cell["metric"] == "ner_f1":
        return f"F1 {s['f1']:.3f} ({s['n']} sentences)"
    if cell["metric"] == "task_command":
        err = f" ± {s['stderr']:g}" if s.get("stderr") is not None else ""
        return f"{s['value']:g}{err}"
    if cell["metric"] == "distinct_replies":
        return f"{_pts(s['rate'])}% of {s['n']} samples"
    return f"{s['k']}/{s['n']} = {_pts(s['rate'])}%"


def describe(cell: dict) -> dict:
    """A cell in words: the change in its natural direction, what is allowed, why the outcome."""
    unit = "" if cell["metric"] == "task_command" else " pt"
    word = "rise" if cell["worse"] > 0 else "fall"
    change = cell["harm"] * cell["worse"]
    scale = (lambda x: f"{x:+g}") if cell["metric"] == "task_command" else (lambda x: _pts(x, signed=True))
    limit = f"{cell['limit']:g}" if cell["metric"] == "task_command" else _pts(cell["limit"])
    allowed = f"{word} ≤ {limit}{unit}"
    outcome = cell["outcome"]
    if cell.get("note") and outcome == PASS:
        why = cell["note"]
    elif outcome == REGRESSION:
        why = (f"the {word} is real (one-sided p {cell['p_holm']:.2g} after Holm) and may be as large as "
               f"{scale(cell['bound'] * cell['worse']).lstrip('+-')}{unit}" if cell.get("p_holm") is not None
               else f"a {word} of {scale(change).lstrip('+-')}{unit} is more than allowed ({cell.get('note', '')})")
    elif outcome == PASS:
        why = cell.get("note", "") if cell.get("p_value") is None else f"ruled out: {_bound(cell, scale, unit)}"
    else:
        why = cell.get("why") or (f"the change is not significant (p {cell['p_holm']:.2g} after Holm) and a {word} "
                                  f"of {limit}{unit} is not ruled out: {_bound(cell, scale, unit)} (power "
                                  f"{cell['power']:.0%})")
    return {"change": f"{scale(change)}{unit}", "allowed": allowed, "why": why}


def _bound(cell: dict, scale, unit: str) -> str:
    """The change's bound at the power level, in its natural direction: "change ≤ +1.2 pt at the 80% level"."""
    sign = "≤" if cell["worse"] > 0 else "≥"
    return f"change {sign} {scale(cell['power_bound'] * cell['worse'])}{unit} at the {cell['power_level']:.0%} level"


def settle_text(cell: dict, grid) -> str | None:
    s = cell.get("settle")
    if not s:
        return None
    if "stderr" in s:
        return f"a standard error of at most {s['stderr']:.3g} on each side"
    parts = []
    if s.get("prompts"):
        have = cell["prompts"]
        parts.append(f"about {s['prompts']} prompts like these (the runs share {have})")
    n = s.get("replies_per_prompt")
    if n and grid is not None:
        greedy = sum(t == 0 for t in grid.temperatures)
        sampled = sum(t > 0 for t in grid.temperatures)
        if sampled:
            per_t = math.ceil(max(0, n - (0 if cell["metric"] == "distinct_replies" else greedy)) / sampled)
            parts.append(f"{n} replies per prompt in both runs (--samples {max(1, per_t)} at the {sampled} "
                         "temperatures above 0)")
    text = "; or ".join(parts) if parts else None
    if text and n is None and cell.get("se_model") is not None:
        text += " (more samples alone would not do: the prompts disagree more than sampling noise)"
    return text


def label(cell: dict) -> str:
    return cell["label"] if cell["system"] is None else f"{cell['label']} [{cell['system']}]"


def write_outputs(result: dict, out: Path, grid=None) -> None:
    out = Path(out)
    atomic_write_json(out / "gate.json", result)
    atomic_write_text(out / "junit.xml", junit(result))
    atomic_write_text(out / "summary.md", markdown(result, grid))


def junit(result: dict) -> str:
    cells = result["cells"]
    failures = sum(c["outcome"] == REGRESSION for c in cells)
    skipped = sum(c["outcome"] == INCONCLUSIVE for c in cells)
    suite_name = f"selfid gate: {result['candidate']['label']} vs {result['reference']['label']}"
    root = ET.Element("testsuites", name="selfid gate", tests=str(len(cells)), failures=str(failures),
                      skipped=str(skipped), errors="0")
    suite = ET.SubElement(root, "testsuite", name=suite_name, tests=str(len(cells)), failures=str(failures),
                          skipped=str(skipped), errors="0")
    props = ET.SubElement(suite, "properties")
    for name, value in (("verdict", result["verdict"]), ("exit_code", result["exit_code"]),
                        ("alpha", result["alpha"]), ("power", result["power"])):
        ET.SubElement(props, "property", name=name, value=str(value))
    for c in cells:
        d = describe(c)
        case = ET.SubElement(suite, "testcase", classname=f"selfid.gate.{c['metric']}", name=label(c))
        text = (f"reference {_side(c, 'reference')}; candidate {_side(c, 'candidate')}; change {d['change']} "
                f"(allowed: {d['allowed']}); {d['why']}")
        if c["outcome"] == REGRESSION:
            ET.SubElement(case, "failure", message=f"{d['change']}, allowed {d['allowed']}", type="regression").text = text
        elif c["outcome"] == INCONCLUSIVE:
            settle = settle_text(c, None)
            ET.SubElement(case, "skipped", message=f"inconclusive: {d['why']}" + (f"; to settle: {settle}" if settle else ""))
        ET.SubElement(case, "system-out").text = text
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def markdown(result: dict, grid=None) -> str:
    cells = result["cells"]
    order = {REGRESSION: 0, INCONCLUSIVE: 1, PASS: 2}
    counts = {o: sum(c["outcome"] == o for c in cells) for o in order}
    lines = [f"## selfid gate: {SHOWN[result['verdict']]} (exit {result['exit_code']})", "",
             f"Candidate **{result['candidate']['label']}** against reference **{result['reference']['label']}**: "
             f"{len(cells)} checks (metric × system prompt), {counts[REGRESSION]} regressed, {counts[INCONCLUSIVE]} "
             f"inconclusive, {counts[PASS]} passed. One-sided tests paired by prompt, Holm over all of them at "
             f"alpha {result['alpha']:g}; power {result['power']:.0%} to find a change of the allowed size.", "",
             "| check | reference | candidate | change | allowed | outcome |", "|---|---|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: order[c["outcome"]]):
        d = describe(c)
        lines.append(f"| {label(c)} | {_side(c, 'reference')} | {_side(c, 'candidate')} | {d['change']} | "
                     f"{d['allowed']} | {SHOWN[c['outcome']]}: {d['why']} |")
    settle = [(c, settle_text(c, grid)) for c in cells if c["outcome"] == INCONCLUSIVE]
    if settle:
        lines += ["", "### To settle the inconclusive checks", ""]
        lines += [f"- {label(c)}: {t or 'no larger grid of these prompts would'}" for c, t in settle]
    if result.get("warnings"):
        lines += ["", "### Warnings", ""] + [f"- {w}" for w in result["warnings"]]
    lines += ["", f"Reference: {result['reference']['source']}. Candidate: {result['candidate']['source']}. "
              "Every number is in gate.json; junit.xml has one test case per check."]
    return "\n".join(lines) + "\n"


def print_result(result: dict, grid=None, console=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    style = {REGRESSION: "bold red", INCONCLUSIVE: "yellow", PASS: "green"}
    table = Table(title=f"selfid gate: {result['candidate']['label']} vs {result['reference']['label']}")
    for col in ("check", "reference", "candidate", "change", "allowed", "outcome"):
        table.add_column(col)
    order = {REGRESSION: 0, INCONCLUSIVE: 1, PASS: 2}
    for c in sorted(result["cells"], key=lambda c: order[c["outcome"]]):
        d = describe(c)
        table.add_row(escape(label(c)), escape(_side(c, "reference")), escape(_side(c, "candidate")), d["change"],
                      d["allowed"], f"[{style[c['outcome']]}]{SHOWN[c['outcome']]}[/]")
    console.print(table)
    for c in result["cells"]:
        if c["outcome"] != PASS:
            d = describe(c)
            settle = settle_text(c, grid)
            console.print(f"{SHOWN[c['outcome']]}: {label(c)}: {d['why']}" + (f"; to settle: {settle}" if settle else ""),
                          markup=False, highlight=False)
    for w in result.get("warnings", []):
        console.print(f"warning: {w}", markup=False, highlight=False)
    console.print(f"verdict: {SHOWN[result['verdict']]} (exit {result['exit_code']})", markup=False, highlight=False)
