"""How big a gate must be: the standard error of a prompt-paired difference, power, and the minimum detectable effect.

A gate compares each prompt's rate in the candidate with its rate in the reference. Pairing removes what makes
one prompt differ from another (the design effect of a pooled rate); what is left is each reply's own noise,
p(1-p) per reply on either side, and how much a fine-tuned model's prompts move apart from the reference's
beyond that noise (the interaction, INTERACTION below). So the variance of one prompt's difference is

    p(1-p) * (interaction + 1/replies_reference + 1/replies_candidate)

and the mean over m prompts has that over m. A one-sided t test at level alpha / cells (Holm's first step) has
power T(effect / se - c) to find a regression of `effect`, with se the standard error under that effect (what
the test divides by) and c the critical value over m - 1 degrees of freedom; the minimum detectable effect
(MDE) is the effect with the target power.
Rates of a regression are spread over prompts (`spread`) the way selfid's simulated gates inject them: every
prompt moved by the same amount, held inside [0, 1].
"""

from __future__ import annotations

import functools
import math
from typing import Mapping, Sequence

import numpy as np

from selfid.tasks.ner import prf

# How far a fine-tuned candidate's per-prompt rates move from the reference's beyond sampling noise, as a share
# of one reply's variance p(1-p), per metric. Measured by bench/gate_interaction.py on the committed runs (base vs
# plain LoRA at 0.5B and 1.5B, development and held-out sets; 6 to 18 cells of metric x system prompt each): the
# upper quartile, so a plan errs toward more samples (medians: 0.09, 0.17, 0.03, 0.03, 0.20, 0.09, 0.24). It caps
# what more samples alone can buy. A metric not measured gets the upper quartile of all 100 cells.
INTERACTION = {"foreign_claims": 0.13, "own_identity": 0.28, "self_denial": 0.19, "yes_to_other_vendor": 0.20,
               "distinct_replies": 0.27, "identity_tasks": 0.94, "persona_kept": 0.30}
INTERACTION_ANY = 0.27


def interaction(metric: str) -> float:
    return INTERACTION.get(metric, INTERACTION_ANY)


def _t():
    from scipy import stats

    return stats.t


@functools.lru_cache(maxsize=4096)
def critical(alpha: float, df: int) -> float:
    """The one-sided t critical value at level `alpha` (df < 1: the normal's)."""
    if df < 1:
        from scipy.stats import norm

        return float(norm.isf(alpha))
    return float(_t().isf(alpha, df))


@functools.lru_cache(maxsize=4096)
def quantile(level: float, df: int) -> float:
    """The t quantile at `level` (the bound a pass must clear sits this many standard errors above the change)."""
    if df < 1:
        from scipy.stats import norm

        return float(norm.ppf(level))
    return float(_t().ppf(level, df))


def _arrays(by_prompt: Mapping[str, Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    kn = np.array([tuple(v) for v in by_prompt.values() if v[1]], dtype=float).reshape(-1, 2)
    return kn[:, 0] / np.where(kn[:, 1] > 0, kn[:, 1], 1), kn[:, 1]


def spread(rates: Sequence[float], effect: float, worse: int) -> np.ndarray | None:
    """Per-prompt rates moved toward worse by `effect` on average, every prompt by the same amount inside [0, 1];
    None when the rates leave no room for it (a rise of 5 points on prompts already at 100%)."""
    p = np.asarray(rates, dtype=float)
    n = p.size
    room = np.sort(1 - p if worse > 0 else p)  # how far each prompt can move
    if not n or effect > room.mean() + 1e-12:
        return None
    # the mean move of a common shift s is mean(min(room, s)): piecewise linear, with a kink at each room
    below = np.concatenate(([0.0], np.cumsum(room)[:-1]))  # the rooms used up before the k-th
    at_kinks = (below + room * (n - np.arange(n))) / n
    k = int(np.searchsorted(at_kinks, effect))
    shift = (n * effect - below[min(k, n - 1)]) / (n - min(k, n - 1))
    return np.minimum(1.0, p + shift) if worse > 0 else np.maximum(0.0, p - shift)


def pair_se(rates: Sequence[float], replies_ref: Sequence[float] | float, replies_cand: float,
            moved: Sequence[float] | None = None, prompts: float | None = None, interaction: float = 0.0) -> float:
    """The standard error of the mean per-prompt difference: the reference's rates and replies per prompt, the
    candidate's replies per prompt, and its rates (`moved`; default: the reference's). `prompts`: as if the mean
    were over this many prompts like these (default: as many as there are). `interaction`: see INTERACTION (0:
    sampling noise alone)."""
    p = np.asarray(rates, dtype=float)
    q = p if moved is None else np.asarray(moved, dtype=float)
    if not p.size:
        return math.inf
    wp, wq = p * (1 - p), q * (1 - q)
    var = interaction * (wp + wq) / 2 + wp / np.asarray(replies_ref, dtype=float) + wq / replies_cand
    return math.sqrt(float(np.mean(var)) / (prompts or p.size))


def t_above(mean: float, se: float, df: int) -> float:
    """The one-sided p-value of `mean` > 0 with standard error `se` over `df` degrees of freedom."""
    if se is None or math.isinf(se) or df < 1:
        return 1.0
    if se == 0:
        return 0.0 if mean > 0 else 1.0
    return float(_t().sf(mean / se, df))


def power(se: float, effect: float, alpha: float, df: int) -> float:
    """The chance a one-sided t test at level `alpha` finds a regression of `effect`, `se` the standard error the
    test will see then (the one under the effect: the test divides by the standard error it observes)."""
    if se == 0:
        return 1.0
    z = effect / se - critical(alpha, df)
    return float(_t().cdf(z, df)) if df >= 1 else 0.5 * math.erfc(-z / math.sqrt(2))


def rate_power(by_prompt: Mapping[str, Sequence[int]], worse: int, effect: float, alpha: float, replies_cand: float,
               interaction: float, replies_ref: float | None = None, prompts: int | None = None) -> float:
    """Power of a gate cell: the reference's per-prompt (k, n); a candidate with `replies_cand` replies per prompt
    (and the reference re-run with `replies_ref`, else as it is), over `prompts` prompts like these."""
    rates, ns = _arrays(by_prompt)
    moved = spread(rates, effect, worse)
    if moved is None:
        return 0.0
    ns = ns if replies_ref is None else replies_ref
    m = prompts or rates.size
    return power(pair_se(rates, ns, replies_cand, moved, m, interaction), effect, alpha, m - 1)


def mde(by_prompt: Mapping[str, Sequence[int]], worse: int, alpha: float, target: float, replies_cand: float,
        interaction: float, replies_ref: float | None = None, prompts: int | None = None) -> float | None:
    """The smallest regression found with power `target` (None: none within the room the rates leave)."""
    rates, _ = _arrays(by_prompt)
    room = float(np.mean(1 - rates if worse > 0 else rates)) if rates.size else 0.0
    args = (alpha, replies_cand, interaction, replies_ref, prompts)
    if room <= 0 or rate_power(by_prompt, worse, room, *args) < target:
        return None
    lo, hi = 0.0, room
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rate_power(by_prompt, worse, mid, *args) < target else (lo, mid)
    return hi


def smallest(fits, start: int, limit: int) -> int | None:
    """The smallest integer n in [start, limit] with fits(n) (fits grows with n); None when limit does not fit."""
    if not fits(limit):
        return None
    lo, hi = start, limit
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if not fits(mid) else (lo, mid)
    return lo


def _f1(tp: int, fp: int, fn: int) -> float:
    return prf(tp, fp, fn)["f1"]


def _jackknife(values: Sequence[float]) -> float:
    n = len(values)
    mean = sum(values) / n
    return math.sqrt((n - 1) / n * sum((v - mean) ** 2 for v in values))


def jackknife_f1_se(counts: Sequence[tuple[int, int, int]]) -> float:
    """The jackknife standard error of micro F1 over sentences, (tp, fp, fn) each."""
    if len(counts) < 2:
        return math.inf
    total = [sum(x[i] for x in counts) for i in range(3)]
    return _jackknife([_f1(*(total[i] - x[i] for i in range(3))) for x in counts])


def jackknife_f1_change(a: Sequence[tuple[int, int, int]], b: Sequence[tuple[int, int, int]]) -> tuple[float, float]:
    """F1(B) - F1(A) on paired sentences (tp, fp, fn each) and its jackknife standard error (leave one sentence out)."""
    ta = [sum(x[i] for x in a) for i in range(3)]
    tb = [sum(x[i] for x in b) for i in range(3)]
    full = _f1(*tb) - _f1(*ta)
    if len(a) < 2:
        return full, math.inf
    return full, _jackknife([_f1(*(tb[i] - y[i] for i in range(3))) - _f1(*(ta[i] - x[i] for i in range(3)))
                             for x, y in zip(a, b)])
