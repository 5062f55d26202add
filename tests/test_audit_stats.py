"""Statistics against published values: Wilson intervals, Newcombe's difference interval, Fisher and z tests."""

import math

import pytest

from selfid.audit.stats import bootstrap_f1, newcombe, rate, two_proportions, wilson


@pytest.mark.parametrize("k, n, lo, hi", [
    (0, 10, 0.0, 0.2775),  # Newcombe (1998), table I
    (1, 29, 0.0061, 0.1718),
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
])
def test_wilson_matches_newcombe_1998(k, n, lo, hi):
    got = wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=6e-4)


def test_wilson_edges_and_rate_shape():
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(16, 16)
    assert hi == 1.0 and 0.79 < lo < 0.81
    r = rate(3, 128)
    assert r["k"] == 3 and r["n"] == 128 and r["rate"] == 3 / 128 and r["ci95"][0] < 3 / 128 < r["ci95"][1]
    assert rate(0, 0)["rate"] is None


def test_newcombe_difference_interval_matches_the_paper():
    # Newcombe (1998) example: 56/70 vs 48/80, difference 0.2000 with 95% CI 0.0524 to 0.3339 (method 10)
    lo, hi = newcombe(48, 80, 56, 70)
    assert (lo, hi) == pytest.approx((0.0524, 0.3339), abs=6e-4)


def test_z_test_for_large_counts():
    c = two_proportions(3, 128, 49, 128)
    assert c.test == "z" and c.diff == pytest.approx(46 / 128)
    pooled = 52 / 256
    z = (49 / 128 - 3 / 128) / math.sqrt(pooled * (1 - pooled) * 2 / 128)
    assert c.z == pytest.approx(z) and c.p_value == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert c.p_value < 1e-10


def test_fisher_for_small_counts_matches_the_tea_tasting_table():
    # Fisher's lady tasting tea: 3 of 4 vs 1 of 4, two-sided p = 0.4857
    c = two_proportions(1, 4, 3, 4)
    assert c.test == "fisher" and c.p_value == pytest.approx(0.4857, abs=1e-4)
    assert two_proportions(0, 16, 0, 16).p_value == pytest.approx(1.0)
    assert two_proportions(0, 16, 6, 16).p_value == pytest.approx(0.0177, abs=1e-4)


def test_bootstrap_f1_interval_is_seeded_and_brackets_the_estimate():
    counts = [(2, 1, 0), (1, 0, 1), (3, 0, 0), (0, 1, 2), (2, 0, 1)] * 4
    a, b = bootstrap_f1(counts, seed=1), bootstrap_f1(counts, seed=1)
    assert a == b
    tp, fp, fn = (sum(c[i] for c in counts) for i in range(3))
    f1 = 2 * tp / (2 * tp + fp + fn)
    assert a[0] < f1 < a[1]


def test_clustered_rate_widens_with_correlated_samples_and_not_without():
    from selfid.audit.stats import clustered_rate

    # 10 prompts always foreign, 62 never (8 samples each): every sample of a prompt agrees
    together = clustered_rate([(8, 8)] * 10 + [(0, 8)] * 62)
    # the same 80 foreign replies spread one per prompt over 72 prompts (and 8 more): near-independent
    spread = clustered_rate([(2, 8)] * 8 + [(1, 8)] * 64)
    assert together["k"] == spread["k"] == 80 and together["n"] == spread["n"] == 576
    assert together["deff"] > 7 and spread["deff"] == pytest.approx(1, abs=0.2)
    naive = wilson(80, 576)
    assert together["ci95"][1] - together["ci95"][0] > 2.5 * (naive[1] - naive[0])
    assert spread["ci95"] == pytest.approx(list(wilson(80 / spread["deff"], 576 / spread["deff"])))
    # ratio-estimator variance by hand: m/(m-1) * sum (k_i - p n_i)^2 / n^2
    p = 80 / 576
    var = 72 / 71 * (10 * (8 - 8 * p) ** 2 + 62 * (8 * p) ** 2) / 576 ** 2
    assert together["deff"] == pytest.approx(var / (p * (1 - p) / 576))
    zero = clustered_rate([(0, 8)] * 72)
    assert zero["rate"] == 0 and zero["deff"] == 1 and zero["ci95"][1] == pytest.approx(wilson(0, 576)[1])


def test_paired_prompts_counts_up_and_down_and_uses_wilcoxon():
    from scipy.stats import wilcoxon

    from selfid.audit.stats import holm, paired_prompts

    a = {f"p{i}": (0, 8) for i in range(20)}
    b = {f"p{i}": (2 if i < 12 else 0, 8) for i in range(20)}
    b["p19"] = (0, 8)
    a["p18"] = (1, 8)
    r = paired_prompts(a, b)
    assert (r["up"], r["down"], r["equal"], r["prompts"]) == (12, 1, 7, 20)
    d = [0.25] * 12 + [-0.125]
    assert r["p_value"] == pytest.approx(wilcoxon(d).pvalue) and r["diff"] == pytest.approx(sum(d) / 20)
    assert r["ci95"][0] < r["diff"] < r["ci95"][1]
    assert paired_prompts(a, a)["p_value"] == 1 and paired_prompts({}, b) is None
    # Holm: the smallest p times the family size, then step down, never decreasing
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_holm_matches_statsmodels():
    import random

    from statsmodels.stats.multitest import multipletests

    from selfid.audit.stats import holm

    rng = random.Random(0)
    for size in (1, 2, 5, 37):
        for _ in range(20):
            p = [rng.random() ** 3 for _ in range(size)]
            p[rng.randrange(size)] = p[0]  # ties keep their order
            assert holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))
    assert holm([]) == []


def test_mean_above_zero_is_a_one_sided_t_test_over_prompts():
    from scipy import stats

    from selfid.audit.stats import mean_above_zero

    values = [0.1, 0.3, -0.05, 0.2, 0.0, 0.15]
    r = mean_above_zero(values)
    assert r["p_value"] == pytest.approx(stats.ttest_1samp(values, 0, alternative="greater").pvalue)
    assert r["se"] == pytest.approx(stats.sem(values)) and (r["df"], r["prompts"]) == (5, 6)
    assert mean_above_zero([-v for v in values])["p_value"] == pytest.approx(1 - r["p_value"])
    # every prompt moved by the same amount: no spread to test against, the sign decides
    assert mean_above_zero([0.1, 0.1])["p_value"] == 0 and mean_above_zero([0.0, 0.0])["p_value"] == 1
    assert mean_above_zero([0.4])["p_value"] == 1 and mean_above_zero([])["mean"] is None
