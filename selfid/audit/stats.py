"""Proportions with honest uncertainty.

Samples of one prompt are not independent draws: a model asked "Who are you?" eight times answers
much the same way eight times. So a rate pooled over prompts gets a 95% interval from a
cluster-robust (ratio-estimator) variance: the design effect it implies shrinks n to an effective
n, and the Wilson interval is taken on that (floored at deff 1, as survey statistics do for rare
events). Two runs of the same grid (base vs tuned) are compared prompt by prompt: the mean paired
difference with a t interval over prompts, how many prompts went up and down, and a Wilcoxon
signed-rank p-value; the p-values of one comparison's cells are corrected with Holm's method. A release
check asks one-sided questions of the same per-prompt differences (`mean_above_zero`: has it got worse?).

scipy and statsmodels do the arithmetic; what is written here is only how the audit's counts feed them.
"""

from __future__ import annotations

import math
import random
from functools import lru_cache
from dataclasses import dataclass
from typing import Mapping, Sequence

from selfid.tasks.ner import prf

Z95 = 1.959963984540054


def wilson(k: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (n may be an effective, non-integer n); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    return _wilson(float(k), float(n), z)


@lru_cache(maxsize=1 << 14)
def _wilson(k: float, n: float, z: float) -> tuple[float, float]:
    """statsmodels' Wilson interval, once per (k, n): a summary asks for the same counts in many cells (0 of n above
    all); statsmodels' call costs ~0.1 ms."""
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(k, n, alpha=2 * (1 - _normal_cdf(z)), method="wilson")
    return max(0.0, float(lo)), min(1.0, float(hi))


def _normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


def rate(k: int, n: int) -> dict:
    """A rate of independent trials: k, n, the proportion and its Wilson 95% interval."""
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci95": [lo, hi]}


def clustered_rate(by_prompt: Sequence[tuple[int, int]]) -> dict:
    """A rate pooled over prompts, [(k_i, n_i) per prompt], with a 95% interval clustered by prompt.

    Returns k, n, rate, ci95, prompts and deff (the design effect: the variance of the pooled rate
    relative to n independent draws; n / deff is the effective n the interval is taken on)."""
    k = sum(a for a, _ in by_prompt)
    n = sum(b for _, b in by_prompt)
    m = sum(1 for _, b in by_prompt if b)
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "ci95": [0.0, 1.0], "prompts": 0, "deff": 1.0}
    p = k / n
    deff = 1.0
    if m > 1 and 0 < p < 1:
        var = m / (m - 1) * sum((a - p * b) ** 2 for a, b in by_prompt) / n ** 2
        deff = max(1.0, var / (p * (1 - p) / n))
    lo, hi = wilson(p * n / deff, n / deff)
    return {"k": k, "n": n, "rate": p, "ci95": [lo, hi], "prompts": m, "deff": deff}


def clustered_mean(values: Sequence[float]) -> dict:
    """The mean of one value per prompt (say, the share of distinct replies) with a t 95% interval over prompts."""
    m = len(values)
    if m == 0:
        return {"mean": None, "ci95": [None, None], "prompts": 0}
    mean = sum(values) / m
    if m < 2:
        return {"mean": mean, "ci95": [mean, mean], "prompts": m}
    from scipy import stats

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (m - 1))
    half = stats.t.ppf(0.975, m - 1) * sd / math.sqrt(m)
    return {"mean": mean, "ci95": [mean - half, mean + half], "prompts": m}


def paired_prompts(a: Mapping[str, tuple[int, int]], b: Mapping[str, tuple[int, int]]) -> dict | None:
    """Run B against run A on the prompts both hold, {prompt: (k, n)} each: the mean per-prompt difference
    of rates (B - A) with a t 95% interval, prompts up / down / equal, and a Wilcoxon signed-rank p-value."""
    shared = sorted(p for p in a.keys() & b.keys() if a[p][1] and b[p][1])
    if not shared:
        return None
    d = [b[p][0] / b[p][1] - a[p][0] / a[p][1] for p in shared]
    mean = clustered_mean(d)
    up, down = sum(x > 0 for x in d), sum(x < 0 for x in d)
    p_value = 1.0
    if up + down:
        from scipy.stats import wilcoxon

        p_value = float(wilcoxon([x for x in d if x != 0], zero_method="wilcox").pvalue) if up + down > 1 else 1.0
    return {"diff": mean["mean"], "ci95": mean["ci95"], "prompts": len(shared), "up": up, "down": down,
            "equal": len(shared) - up - down, "p_value": p_value, "test": "wilcoxon signed-rank, paired by prompt"}


def mean_above_zero(values: Sequence[float]) -> dict:
    """Is the mean of per-prompt values (say, paired differences turned so that positive is worse) above zero?
    The mean, its standard error over prompts, the degrees of freedom and the one-sided t-test p-value."""
    m = len(values)
    if m == 0:
        return {"mean": None, "se": None, "df": 0, "prompts": 0, "p_value": 1.0}
    mean = sum(values) / m
    if m < 2:
        return {"mean": mean, "se": None, "df": 0, "prompts": 1, "p_value": 1.0}
    from scipy import stats

    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (m - 1) / m)
    if se == 0:  # every prompt moved by the same amount
        p = 0.0 if mean > 0 else 1.0
    else:
        p = float(stats.t.sf(mean / se, m - 1))
    return {"mean": mean, "se": se, "df": m - 1, "prompts": m, "p_value": p}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of the p-values of one family of tests (one comparison's cells).

    Written out (five lines) rather than statsmodels' multipletests, whose Holm branch runs gc.collect() on every
    call: 0.1-0.2 s each, which a gate's simulation of hundreds of gates cannot afford. Same numbers (tested)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    out, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * float(p_values[i])))
        out[i] = running
    return out


def newcombe(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """95% interval for p2 - p1 (Newcombe's hybrid score method, from the two Wilson intervals)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1)
    l2, u2 = wilson(k2, n2)
    d = p2 - p1
    return d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2), d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)


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
    """Is p2 different from p1, for independent trials (one reply per prompt)? The pooled z-test when every
    expected cell count is at least 5, else Fisher's exact test."""
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
    from scipy.stats import fisher_exact

    p = float(fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue)
    return Comparison(diff, ci, min(1.0, p), "fisher")


def bootstrap_f1(counts: list[tuple[int, int, int]], resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of micro F1 over per-sentence (tp, fp, fn), resampling sentences.

    The resampled indices are `random.Random(seed).randrange(n)` drawn resamples x n times, in that order; they are
    drawn with numpy from the same Mersenne Twister state (`_same_draws`), so the interval is the one the plain loop
    (`bootstrap_f1_plain`) gives, ~30x faster; where numpy's draws would not match Python's, the plain loop runs."""
    n = len(counts)
    if not counts:
        return 0.0, 0.0
    idx = _same_draws(seed, n, resamples * n)
    if idx is None:
        return bootstrap_f1_plain(counts, resamples, seed)
    import numpy as np

    cols = np.asarray(counts, dtype=np.int64).reshape(n, 3)
    sums = np.concatenate([cols[block].sum(axis=1) for block in np.array_split(idx.reshape(resamples, n),
                                                                               max(1, resamples * n // 250_000))])
    scores = sorted(prf(int(tp), int(fp), int(fn))["f1"] for tp, fp, fn in sums.tolist())
    return scores[int(0.025 * resamples)], scores[min(resamples - 1, int(0.975 * resamples))]


def _same_draws(seed: int, n: int, count: int):
    """`count` values of `random.Random(seed).randrange(n)`, in order, as a numpy array; None when they cannot be drawn
    that way (n of 2**31 or more) or a spot check against Python's own draws fails (another Python's randrange).

    randrange(n) takes 32-bit Mersenne Twister outputs shifted to n.bit_length() bits until one is below n; numpy's
    MT19937 given Python's generator state yields the same outputs, and keeping the accepted ones in order is the
    same sequence."""
    import numpy as np

    k = n.bit_length()
    if k > 31 or count <= 0:
        return None
    state = random.Random(seed).getstate()[1]
    bits = np.random.MT19937()
    bits.state = {"bit_generator": "MT19937", "state": {"key": np.array(state[:624], dtype=np.uint32), "pos": state[624]}}
    got, have = [], 0
    while have < count:
        draw = bits.random_raw(int((count - have) * (1 << k) / n * 1.05) + 64) >> np.uint64(32 - k)
        keep = draw[draw < n]
        got.append(keep)
        have += len(keep)
    out = np.concatenate(got)[:count].astype(np.int64)
    check = random.Random(seed)
    if [check.randrange(n) for _ in range(min(count, 64))] != out[:64].tolist():
        return None
    return out


def bootstrap_f1_plain(counts: list[tuple[int, int, int]], resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """`bootstrap_f1` as a plain Python loop (the reference its numpy draws are tested against)."""
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
