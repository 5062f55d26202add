"""Proportions with honest uncertainty: Wilson 95% intervals, a two-proportion test, Newcombe's interval
for a difference, and a seeded bootstrap for F1. Written out because each is a few lines of closed-form
arithmetic (no scipy needed)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from selfid.tasks.ner import prf

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(k: int, n: int) -> dict:
    """A rate as every report shows it: k, n, the proportion and its Wilson 95% interval."""
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci95": [lo, hi]}


def newcombe(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """95% interval for p2 - p1 (Newcombe's hybrid score method, from the two Wilson intervals)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1)
    l2, u2 = wilson(k2, n2)
    d = p2 - p1
    return d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2), d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)


def _fisher_two_sided(k1: int, n1: int, k2: int, n2: int) -> float:
    """Fisher's exact test: the probability of tables at least as extreme as the one seen, margins fixed."""
    total_k, total = k1 + k2, n1 + n2
    denom = math.comb(total, total_k)

    def prob(a: int) -> float:
        return math.comb(n1, a) * math.comb(n2, total_k - a) / denom

    seen = prob(k1)
    lo, hi = max(0, total_k - n2), min(n1, total_k)
    return min(1.0, sum(p for a in range(lo, hi + 1) if (p := prob(a)) <= seen * (1 + 1e-7)))


@dataclass(frozen=True)
class Comparison:
    diff: float  # p2 - p1
    ci95: tuple[float, float]
    p_value: float
    test: str  # "z" (pooled two-proportion z-test) or "fisher" (exact, for small expected counts)
    z: float | None = None

    def as_dict(self) -> dict:
        return {"diff": self.diff, "ci95": list(self.ci95), "p_value": self.p_value, "test": self.test, "z": self.z}


def two_proportions(k1: int, n1: int, k2: int, n2: int) -> Comparison:
    """Is p2 different from p1? The pooled z-test when every expected cell count is at least 5, else Fisher's exact test."""
    if n1 <= 0 or n2 <= 0:
        raise ValueError("both groups need at least one trial")
    ci = newcombe(k1, n1, k2, n2)
    diff = k2 / n2 - k1 / n1
    pooled = (k1 + k2) / (n1 + n2)
    expected = min(n1 * pooled, n1 * (1 - pooled), n2 * pooled, n2 * (1 - pooled))
    if expected >= 5:
        se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        z = diff / se
        return Comparison(diff, ci, math.erfc(abs(z) / math.sqrt(2)), "z", z)
    return Comparison(diff, ci, _fisher_two_sided(k1, n1, k2, n2), "fisher")


def bootstrap_f1(counts: list[tuple[int, int, int]], resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of micro F1 over per-sentence (tp, fp, fn), resampling sentences."""
    if not counts:
        return 0.0, 0.0
    rng = random.Random(seed)
    n = len(counts)
    scores = []
    for _ in range(resamples):
        tp = fp = fn = 0
        for _ in range(n):
            a, b, c = counts[rng.randrange(n)]
            tp, fp, fn = tp + a, fp + b, fn + c
        scores.append(prf(tp, fp, fn)["f1"])
    scores.sort()
    return scores[int(0.025 * resamples)], scores[min(resamples - 1, int(0.975 * resamples))]
