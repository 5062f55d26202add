"""The README's first lines promise how long `make demo` and `make test` take: those figures must stay within 25% of
the last measured row of docs/benchmarks.md's table of the two commands (and the Makefile's own estimate too)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 0.25
TABLE = "### The README's two commands on a fresh clone (2-core CPU)"


def minutes(text: str) -> float:
    """'10 m 49 s' -> 10.82; '4 m 55 s' -> 4.92; '295 s' -> 4.92."""
    m = re.fullmatch(r"\s*(?:(\d+) m)?\s*(?:(\d+) s)?\s*", text.replace("*", ""))
    if not m or not any(m.groups()):
        raise ValueError(f"not a duration: {text!r}")
    return int(m.group(1) or 0) + int(m.group(2) or 0) / 60


def last_measured() -> dict[str, float]:
    text = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert TABLE in text, f"docs/benchmarks.md lost its table {TABLE!r}"
    rows = []
    for line in text.split(TABLE, 1)[1].splitlines()[1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            break
    header, body = rows[0], [r for r in rows[2:]]
    demo, test = header.index("`make demo` wall"), header.index("`make test` wall")
    measured = [r for r in body if r[demo] != "–" and r[test] != "–"]
    assert measured, "the table has no row with both times"
    return {"demo": minutes(measured[-1][demo]), "test": minutes(measured[-1][test])}


def claims() -> list[tuple[str, str, float, float]]:
    """(where, which command, low, high) of every time the README and the Makefile state, in minutes."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    found = []
    for where, text, pattern, which in [
        ("README, first lines", readme, r"about (\d+) minutes on a fresh\s+2-core CPU machine,\s+set-up included", "demo"),
        ("README, first lines", readme, r"runs the test suite \(about (\d+) minutes once set up\)", "test"),
        ("README, The demo", readme, r"On a 2-core CPU it takes about (\d+) minutes from a fresh clone", "demo"),
        ("Makefile", makefile, r"running the tests \(about (\d+) to (\d+) minutes on 2 cores\)", "test"),
    ]:
        m = re.search(pattern, text)
        assert m, f"{where} no longer states the {which} time as {pattern!r}: update this test with the text"
        low, high = float(m.group(1)), float(m.group(m.lastindex))
        found.append((where, which, low, high))
    return found


@pytest.mark.parametrize("where,which,low,high", claims())
def test_the_stated_times_match_the_last_measurement(where, which, low, high):
    got = last_measured()[which]
    assert low * (1 - TOLERANCE) <= got <= high * (1 + TOLERANCE), (
        f"{where} says `make {which}` takes about {low:g}{'' if high == low else f'-{high:g}'} minutes, but the last "
        f"measurement in docs/benchmarks.md is {got:.1f} minutes: measure again or correct the text")
