"""Per-row logits processing and sampling against transformers' own processors and the softmax."""

import torch
from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)

from selfid.engine.sampling import apply_penalties, sample


def _row(v):
    return torch.tensor([v], dtype=torch.float32)


def test_repetition_penalty_matches_transformers():
    torch.manual_seed(0)
    logits = torch.randn(2, 50)
    seen = torch.tensor([[3, 7, 7, 40], [1, 2, 0, 0]])
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    got = apply_penalties(logits, seen, mask, torch.tensor([1.3, 1.0]), None, None, None)
    want0 = RepetitionPenaltyLogitsProcessor(1.3)(seen[:1], logits[:1].clone())
    assert torch.allclose(got[0], want0[0]) and torch.allclose(got[1], logits[1])


def test_presence_and_frequency_penalties_follow_openai():
    logits = torch.zeros(1, 5)
    counts = torch.tensor([[0.0, 1.0, 3.0, 0.0, 0.0]])
    got = apply_penalties(logits, None, None, torch.ones(1), counts, _row(0.5), _row(0.25))
    assert got.tolist() == [[0.0, -0.75, -1.25, 0.0, 0.0]]


def test_greedy_rows_take_the_argmax_and_top_k_one_is_greedy():
    logits = torch.tensor([[0.1, 2.0, 0.5], [3.0, 0.0, 1.0]])
    u = torch.tensor([0.99, 0.99])
    assert sample(logits, torch.zeros(2), torch.zeros(2, dtype=torch.long), torch.ones(2), u).tolist() == [1, 0]
    assert sample(logits, torch.ones(2), torch.ones(2, dtype=torch.long), torch.ones(2), u).tolist() == [1, 0]


def test_sampled_distribution_equals_transformers_warpers():
    """Inverse-CDF sampling over a uniform grid reproduces the warped softmax exactly."""
    torch.manual_seed(1)
    logits = torch.randn(1, 12)
    t, k, p = 0.7, 6, 0.8
    warped = TopPLogitsWarper(p)(None, TopKLogitsWarper(k)(None, TemperatureLogitsWarper(t)(None, logits.clone())))
    want = warped.softmax(-1)[0]
    n = 20000
    grid = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    picks = sample(logits.expand(n, -1), torch.full((n,), t), torch.full((n,), k, dtype=torch.long),
                   torch.full((n,), p), grid)
    freq = torch.bincount(picks, minlength=12).float() / n
    assert torch.allclose(freq, want, atol=2e-3)
    assert set(picks.tolist()) == set(torch.nonzero(want).flatten().tolist())


def test_rows_use_their_own_parameters():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(3, -1)
    u = torch.tensor([0.999, 0.999, 0.999])
    got = sample(logits, torch.tensor([0.0, 1.0, 1.0]), torch.tensor([0, 2, 0]), torch.tensor([1.0, 1.0, 1.0]), u)
    assert got.tolist() == [0, 1, 3]
