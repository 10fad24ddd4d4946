"""Training-free frame-selection baselines run in the same harness as MSJoE.

docs/design.md lists them: ``uniform``, ``clip_topk``, ``bolt``, ``aks`` and ``qframe``.
Each is reimplemented here from its paper and, where one is public, its official code, so
the comparison uses the published rule and defaults rather than a loose paraphrase.
Deviations needed to always return exactly ``min(K, T)`` unique frames are documented per
class.

Multi-query input: every baseline reduces the ``n_queries x T`` matrix to one score per frame
by the max over queries (:func:`msjoe.sampling.base.reduce_queries`). ``clip_topk`` is normally
run with the question as its only query.

numpy only: no torch import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from msjoe.sampling.base import (
    Selection,
    as_similarity_matrix,
    check_budget,
    make_selection,
    reduce_queries,
    top_indices,
)


def _minmax(scores: np.ndarray) -> np.ndarray:
    """Scale scores to [0, 1]; a flat profile (no information) becomes all zeros."""
    lo, hi = float(np.min(scores)), float(np.max(scores))
    if hi - lo <= 1e-12:
        return np.zeros_like(scores)
    return (scores - lo) / (hi - lo)


@dataclass
class UniformSampler:
    """K evenly spaced frames: the centres of K equal segments of the video.

    The query-agnostic reference every paper compares against. Deterministic.
    Weights: ``1/k`` for every selected frame (a uniform distribution over the selection).
    """

    name: str = field(default="uniform", init=False)
    needs_similarity: bool = field(default=False, init=False)

    def select(
        self, sim: np.ndarray | None, budget: int, *, n_frames: int, rng: np.random.Generator
    ) -> Selection:
        k = check_budget(budget, n_frames)
        if sim is not None:
            as_similarity_matrix(sim, n_frames)  # still reject malformed input
        # floor((j + 0.5) * T / k) is strictly increasing in j when k <= T: no duplicates.
        idx = np.floor((np.arange(k) + 0.5) * n_frames / k).astype(np.int64)
        return Selection(indices=idx, weights=np.full(k, 1.0 / k, dtype=np.float32))


@dataclass
class ClipTopKSampler:
    """The K frames most similar to the query (the question text in the paper's ablation).

    Ties are broken towards earlier frames. Weights: the (max-over-queries) cosine similarity
    of each selected frame.
    """

    name: str = field(default="clip_topk", init=False)
    needs_similarity: bool = field(default=True, init=False)

    def select(
        self, sim: np.ndarray | None, budget: int, *, n_frames: int, rng: np.random.Generator
    ) -> Selection:
        k = check_budget(budget, n_frames)
        scores = reduce_queries(as_similarity_matrix(sim, n_frames))
        return make_selection(top_indices(scores, k), scores)


def bolt_distribution(scores: np.ndarray, alpha: float) -> np.ndarray:
    """BOLT's frame distribution: min-max normalise, raise to ``alpha``, renormalise.

    A larger ``alpha`` sharpens the distribution towards the peaks. A flat profile gives the
    uniform distribution (the official code divides by zero there).
    """
    norm = _minmax(scores) ** alpha
    total = float(norm.sum())
    if total <= 0.0 or not math.isfinite(total):
        return np.full(scores.shape, 1.0 / scores.size)
    return norm / total


def _nearest_unused(idx: int, used: np.ndarray, prob: np.ndarray) -> int:
    """The unused frame closest to ``idx``; at equal distance the more probable one."""
    n = used.size
    for d in range(1, n):
        cands = [j for j in (idx - d, idx + d) if 0 <= j < n and not used[j]]
        if cands:
            return max(cands, key=lambda j: (prob[j], -j))
    raise RuntimeError("no unused frame left")  # unreachable while k <= T


@dataclass
class BoltSampler:
    """BOLT inverse transform sampling (Liu et al., CVPR 2025, arXiv 2503.21483).

    "BOLT: Boost Large VLMs Without Training for Long-form Video Understanding". Following
    the official ``select_frames.py`` (github.com/sming256/BOLT): min-max normalise the
    similarity, raise it to the power ``alpha`` (3 for VideoMME/MLVU in their scripts, 2.5 for
    LongVideoBench), treat it as a distribution over frames, and map K deterministic uniform
    quantiles through the inverse CDF (``searchsorted``). High-similarity regions thus get
    many frames while low-similarity stretches still get a few.

    Deviations, both needed for a valid selection: the quantiles are the K segment centres
    ``(j + 0.5) / K`` (the official ``linspace(1/K, 1 - 1/K, K)`` repeats 0.5 for K = 2 and hits
    the CDF end for K = 1); and quantiles landing on an already chosen frame (the official
    code keeps the duplicate) move to the nearest unused frame, the more probable one on a
    tie, so the selection keeps concentrating around peaks but spreads into their
    neighbourhood.

    Weights: the probability mass of each selected frame under the alpha-sharpened
    distribution.
    """

    alpha: float = 3.0
    name: str = field(default="bolt", init=False)
    needs_similarity: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")

    def select(
        self, sim: np.ndarray | None, budget: int, *, n_frames: int, rng: np.random.Generator
    ) -> Selection:
        k = check_budget(budget, n_frames)
        prob = bolt_distribution(reduce_queries(as_similarity_matrix(sim, n_frames)), self.alpha)
        cdf = np.cumsum(prob)
        quantiles = (np.arange(k) + 0.5) / k
        raw = np.minimum(np.searchsorted(cdf, quantiles, side="left"), n_frames - 1)
        used = np.zeros(n_frames, dtype=bool)
        chosen: list[int] = []
        for idx in raw.tolist():
            if used[idx]:
                idx = _nearest_unused(idx, used, prob)
            used[idx] = True
            chosen.append(idx)
        return make_selection(np.asarray(chosen), prob)


@dataclass
class AKSSampler:
    """Adaptive Keyframe Sampling (Tang et al., CVPR 2025, arXiv 2502.21271).

    "Adaptive Keyframe Sampling for Long Video Understanding", official code
    ``frame_select.py`` (github.com/ncTimTang/AKS). Relevance scores are min-max normalised
    over the video, then a judge-and-split recursion balances relevance against coverage:

    * judge a segment: ``gap = mean(top-n scores) - mean(all scores)``; if
      ``gap > t1`` and ``std(scores) > t2`` the relevance is concentrated and the segment keeps
      its budget, filled with its top-scoring frames (TOP);
    * otherwise, while ``depth < max_depth``, split the segment at its midpoint into two halves,
      each with half the budget, and judge them again (BIN, giving temporal coverage);
    * at ``max_depth`` the segment takes its top frames.

    Defaults follow the official script: ``t1 = 0.8``, ``t2 = -100`` (the std test disabled),
    ``max_depth = 5``. In that script ``n`` in the judge is the *total* budget K at every depth
    (``judge_k="total"``, the default); ``judge_k="segment"`` uses the segment's own budget
    instead, the reading of the paper's text. When ``T <= K`` every frame is returned, as in the
    official code.

    Deviations needed to return exactly K frames (the official ``int(K / 2**depth)`` drops the
    remainder and gives 0 frames per leaf once ``2**depth > K``): a segment's budget ``b`` is
    split as ``ceil(b/2)`` / ``floor(b/2)``, the larger share going to the half with the higher
    peak; a segment with budget 1 or a single frame is not split (its top frame is the
    answer either way); budget a leaf cannot use (fewer frames than budget) goes to the
    highest-scoring frames not yet selected anywhere.

    Weights: the min-max normalised relevance of each selected frame.
    """

    t1: float = 0.8
    t2: float = -100.0
    max_depth: int = 5
    judge_k: str = "total"
    name: str = field(default="aks", init=False)
    needs_similarity: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        if self.max_depth < 0:
            raise ValueError(f"max_depth must be >= 0, got {self.max_depth}")
        if self.judge_k not in ("total", "segment"):
            raise ValueError(f"judge_k must be 'total' or 'segment', got {self.judge_k!r}")

    def leaves(self, scores: np.ndarray, budget: int) -> list[tuple[int, int, int, int]]:
        """The judge-and-split partition: ``(start, end, depth, budget)`` per final segment.

        ``scores`` must already be normalised. Exposed so tests and plots can show how the
        video was partitioned.
        """
        out: list[tuple[int, int, int, int]] = []
        stack = [(0, scores.size, 0, budget)]
        while stack:
            start, end, depth, b = stack.pop()
            if b <= 0:
                continue
            seg = scores[start:end]
            n_top = budget if self.judge_k == "total" else b
            top = np.sort(seg)[::-1][:n_top]
            concentrated = float(top.mean() - seg.mean()) > self.t1 and float(seg.std()) > self.t2
            if concentrated or depth >= self.max_depth or b <= 1 or seg.size < 2:
                out.append((start, end, depth, b))
                continue
            mid = start + seg.size // 2
            left_peak, right_peak = float(scores[start:mid].max()), float(scores[mid:end].max())
            big, small = (b + 1) // 2, b // 2
            b_left, b_right = (big, small) if left_peak >= right_peak else (small, big)
            stack.append((mid, end, depth + 1, b_right))
            stack.append((start, mid, depth + 1, b_left))
        return sorted(out)

    def select(
        self, sim: np.ndarray | None, budget: int, *, n_frames: int, rng: np.random.Generator
    ) -> Selection:
        k = check_budget(budget, n_frames)
        scores = _minmax(reduce_queries(as_similarity_matrix(sim, n_frames)))
        if k == n_frames:
            return make_selection(np.arange(n_frames), scores)
        used = np.zeros(n_frames, dtype=bool)
        for start, end, _depth, b in self.leaves(scores, k):
            picks = start + top_indices(scores[start:end], b)
            used[picks] = True
        missing = k - int(used.sum())
        if missing > 0:
            rest = np.where(~used, scores, -np.inf)
            used[top_indices(rest, missing)] = True
        return make_selection(np.flatnonzero(used), scores)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - np.max(x)
    return shifted - np.log(np.sum(np.exp(shifted)))


@dataclass
class QFrameSampler:
    """Q-Frame query-aware frame selection (Zhang et al., ICCV 2025, arXiv 2506.22139).

    "Q-Frame: Query-aware Frame Selection and Multi-Resolution Adaptation for Video-LLMs".
    Frames are ranked by the Gumbel-Max trick on ``softmax(s / tau)`` where ``s`` is CLIP's
    text-image matching logit, ``logit_scale * cosine``: adding i.i.d. Gumbel noise to the
    log-probabilities and taking the top K draws K frames without replacement with
    probability following the softmax, so relevant frames dominate while some diversity
    remains. ``tau = 0.8`` is the default of the public Q-Frame sampler implementation.
    Pass the CLIP model's own ``logit_scale`` (100 for OpenAI CLIP, the default); on raw
    cosines (``logit_scale=1``) the softmax at tau 0.8 is almost uniform. Q-Frame's
    multi-resolution step (resizing by rank) is outside frame selection and not done here.

    Randomness comes only from ``rng``: a seeded generator reproduces the selection.
    Weights: the softmax probability of each selected frame.
    """

    tau: float = 0.8
    logit_scale: float = 100.0
    name: str = field(default="qframe", init=False)
    needs_similarity: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        if not self.tau > 0:
            raise ValueError(f"tau must be positive, got {self.tau}")
        if not self.logit_scale > 0:
            raise ValueError(f"logit_scale must be positive, got {self.logit_scale}")

    def select(
        self, sim: np.ndarray | None, budget: int, *, n_frames: int, rng: np.random.Generator
    ) -> Selection:
        k = check_budget(budget, n_frames)
        scores = reduce_queries(as_similarity_matrix(sim, n_frames))
        logp = _log_softmax(self.logit_scale * scores / self.tau)
        keys = logp + rng.gumbel(size=n_frames)
        return make_selection(top_indices(keys, k), np.exp(logp))
