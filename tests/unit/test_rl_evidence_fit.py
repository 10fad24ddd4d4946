"""The evidence fit learns where the evidence is from the similarity rows, and says so when it cannot."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

from msjoe.rl import evidence_fit
from msjoe.rl.evidence_fit import EvidenceFitConfig, evidence_target, fit_to_evidence
from msjoe.sampling.draw import topk_frames
from msjoe.sampling.unet import new_unet, prepare_inputs


def test_doctests_pass() -> None:
    assert doctest.testmod(evidence_fit).failed == 0


def _questions(n: int, seed: int, t: int = 64) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Two noisy query rows per question; the evidence is a 3-frame *dip* of the first row, which
    the untrained sampler (a softmax over the max-over-queries similarity) ranks last."""
    rng = np.random.default_rng(seed)
    sims, targets, starts = [], [], []
    for _ in range(n):
        sim = 0.3 + 0.02 * rng.standard_normal((2, t))
        start = int(rng.integers(2, t - 5))
        sim[0, start:start + 3] -= 0.15
        times = np.arange(t) * 0.5
        sims.append(sim.astype(np.float32))
        targets.append(evidence_target(times, [[start * 0.5, (start + 3) * 0.5]]))
        starts.append(start)
    return sims, targets, starts


def _hits(model: torch.nn.Module, sims: list[np.ndarray], starts: list[int], k: int = 3) -> float:
    x, mask = prepare_inputs(sims, model.config.levels, model.config.max_queries)
    with torch.no_grad():
        logits = model(x, mask)
    picks = [set(topk_frames(torch.log_softmax(row, -1), k).tolist()) for row in logits]
    return float(np.mean([len(p & set(range(s, s + 3))) / 3 for p, s in zip(picks, starts, strict=True)]))


def test_the_fit_finds_evidence_the_untrained_sampler_misses() -> None:
    torch.manual_seed(0)
    sims, targets, _ = _questions(48, seed=0)
    held_out, _, starts = _questions(32, seed=1)
    cfg = EvidenceFitConfig(steps=150, questions_per_step=8, lr=3e-3)
    model, losses = fit_to_evidence(sims, targets, cfg)
    untrained = new_unet(cfg.sampler, cfg.init_seed).eval()
    assert _hits(untrained, held_out, starts) < 0.1
    assert _hits(model, held_out, starts) > 0.6
    assert np.mean(losses[-20:]) < 0.5 * losses[0]
    again, again_losses = fit_to_evidence(sims, targets, cfg)  # deterministic for a config
    assert again_losses == losses
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_targets_and_inputs_are_checked() -> None:
    times = np.arange(8) * 0.5
    # two spans share the mass equally whatever their length
    target = evidence_target(times, [[0.0, 1.5], [3.0, 3.5]])
    assert target.tolist() == pytest.approx([1 / 6, 1 / 6, 1 / 6, 0, 0, 0, 0.5, 0])
    assert evidence_target(times, None) is None and evidence_target(times, []) is None
    sims = [np.ones((2, 8), dtype=np.float32)]
    with pytest.raises(ValueError, match="need as many"):
        fit_to_evidence(sims, [], EvidenceFitConfig(steps=1))
    with pytest.raises(ValueError, match="distribution over the 8 candidate frames"):
        fit_to_evidence(sims, [np.full(7, 1 / 7)], EvidenceFitConfig(steps=1))
    with pytest.raises(ValueError, match="steps"):
        EvidenceFitConfig(steps=0)
