"""The one way a rate is written in text (terminal tables, the demo's verdict, docs/study.md)."""

from __future__ import annotations


def rate_text(r: dict | None, digits: int = 1, ci_digits: int = 0, form: str = "pct") -> str:
    """A rate dict ({k, n, rate, ci95}) as text: form "pct" gives "75.0% (24/32) [58–87]", "kn" gives
    "24/32 = 75.0% [58.0–87.0]" (its interval with `digits` too), "short" gives "75.0% [58–87]"; "–" for no data."""
    if not r or not r.get("n") or r.get("rate") is None:
        return "–"
    lo, hi = r["ci95"]
    if form == "kn":
        return f"{r['k']}/{r['n']} = {100 * r['rate']:.{digits}f}% [{100 * lo:.{digits}f}–{100 * hi:.{digits}f}]"
    interval = f"[{100 * lo:.{ci_digits}f}–{100 * hi:.{ci_digits}f}]"
    if form == "short":
        return f"{100 * r['rate']:.{digits}f}% {interval}"
    return f"{100 * r['rate']:.{digits}f}% ({r['k']}/{r['n']}) {interval}"
