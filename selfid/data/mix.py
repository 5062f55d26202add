"""Mix sources: `weight` repeats or thins a source; `fraction` sizes a source as a share of the final mix."""

from __future__ import annotations

import random
from typing import Sequence

from selfid.errors import SelfidError


def scaled(pool: Sequence, n: int, rng: random.Random) -> list:
    """`n` items from `pool`: whole copies, then a seeded draw without replacement for the rest."""
    if n <= 0:
        return []
    if not pool:
        raise SelfidError("a data source with a share of the mix has no samples")
    copies, rest = divmod(n, len(pool))
    return list(pool) * copies + rng.sample(list(pool), rest)


def share(others: int, fraction: float, total_fraction: float | None = None) -> int:
    """How many samples make a source `fraction` of a mix whose sources without a fraction hold `others` samples
    (`total_fraction`: the fractions of all sources together, default this one's): f / (1 - F) x others, at least 1."""
    total = others / (1 - (fraction if total_fraction is None else total_fraction))
    return max(1, round(fraction * total))


def mix(parts: Sequence[tuple[Sequence, float, float | None]], seed: int = 0) -> tuple[list, list[int]]:
    """Mix `(samples, weight, fraction)` parts; returns (all samples, how many each part contributed).

    Parts without a fraction contribute round(len * weight). Parts with a fraction f are sized so
    they make up f of the result: n = f * T where T = (sum of the others) / (1 - sum of fractions).
    """
    rng = random.Random(seed)
    fixed = [round(len(s) * w) if f is None else 0 for s, w, f in parts]
    total_fraction = sum(f for _, _, f in parts if f is not None)
    if total_fraction >= 1:
        raise SelfidError("the data fractions add up to 1 or more: leave room for the other sources")
    if total_fraction and not sum(fixed):
        raise SelfidError("every source has a fraction: give at least one source without one to size the mix")
    counts = [n if f is None else share(sum(fixed), f, total_fraction) for n, (_, _, f) in zip(fixed, parts)]
    out: list = []
    for (samples, _, _), n in zip(parts, counts):
        out += scaled(samples, n, rng)
    return out, counts
