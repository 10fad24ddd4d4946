"""Evaluation: every sampler x budget through the same pipeline, plus an evidence oracle.

The per-question work is shared across configurations so the whole grid stays cheap on a CPU,
without changing any result (every turn is greedy, hence a function of its inputs):

* candidate features: once per video (the embed stage's cache);
* the query turn depends only on (question, number of previews = budget // 2): generated once
  per pair and shared by every sampler that uses generated queries;
* CLIP text features: once per distinct query string;
* the answer turn depends only on (question, selected frames): a frame set chosen by several
  samplers (or budgets) is answered once.
MLLM turns run in batches (``PipelineConfig.batch_size``).

Which queries a sampler's CLIP similarity rows come from is :func:`msjoe.pipeline.query_source`
unless the caller overrides it per label (``queries``): a query-driven baseline can then run
both as published (the question as its one query) and with the MLLM's generated queries, so
the table separates what query reasoning buys from what the sampler buys.

Metrics (``report``): ``accuracy[sampler][budget]``, ``official[sampler][budget]`` (the number
the benchmark's own table shows: MLVU's M-Avg, overall accuracy otherwise) with
``official_breakdown[sampler][budget]`` (its group scores: Video-MME and LongVideoBench by
duration group, LVBench by question type; :mod:`msjoe.official`),
``evidence_hit_rate[sampler][budget]`` (share of questions with evidence where at least one
selected frame lies inside an evidence span), ``evidence_complete_rate`` (share where every
evidence span holds a selected frame: what a question about several events, an order or a
count, needs), ``accuracy_per_category``, visual tokens per answer, parse rates
(``answer_format_rate``: the reply holds a closed answer tag; ``answer_parse_rate``: the reply
itself names one of the options), and mean per-turn stage latencies. A reply that names no
option is answered with the option the MLLM scores highest after it
(:func:`msjoe.episode.resolve_answers`; ``option_scored`` in the predictions), so accuracy
counts what the model saw and chose, not how it worded it. Every proportion comes with its n and a
95% Wilson interval (``*_ci`` keys, ``[lo, hi]``). ``oracle`` (when evidence is known)
answers from the evidence frames padded with uniform frames to K: an upper bound for samplers.

Claims (:func:`parse_claims`, :func:`claims_report`) compare two configurations on the same
questions with paired tests (:mod:`msjoe.stats`); correctness is :func:`msjoe.episode.is_correct`.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from msjoe import official
from msjoe.episode import is_correct
from msjoe.features import VideoFeatures
from msjoe.mllm.parsing import has_answer_tag
from msjoe.pipeline import QUERY_MODES, FrameSource, Pipeline, query_source
from msjoe.sampling.base import FrameSampler, Selection
from msjoe.batch_cache import BatchCache
from msjoe.shards import all_gather, rank_and_world
from msjoe.stats import holm, mcnemar_exact, noninferiority_test, paired_bootstrap, wilson_interval
from msjoe.video import resolve_video

__all__ = [
    "CLAIM_KINDS",
    "CLAIM_METRICS",
    "ORACLE",
    "QUERY_MODES",
    "Claim",
    "EvalResult",
    "EvaluateConfig",
    "SamplerSpec",
    "accuracy_plot_rows",
    "ExampleTrace",
    "claims_report",
    "evaluate",
    "evidence_complete",
    "evidence_groups",
    "evidence_hit",
    "evidence_positions",
    "oracle_selection",
    "parse_claims",
    "query_modes",
    "resolve_budget",
    "summarise",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

ORACLE = "oracle"
CLAIM_KINDS = ("superior", "noninferior")
CONFIDENCE = 0.95


# ------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class SamplerSpec:
    """One row of the evaluation table (``evaluate.samplers.<label>``).

    ``name``: a registered sampler (:func:`msjoe.pipeline.load_sampler`) with its ``params``
    (never a ``checkpoint``: a trained sampler's weights are a stage input, and their path is
    given where DVC sees it, the stage's command in dvc.yaml); ``queries``: where its similarity
    rows come from (one of :data:`QUERY_MODES`; None: the pipeline's choice for that sampler);
    ``mllm``: which of the stage's MLLMs answers (None: the first one given).
    """

    name: str
    params: dict[str, Any] | None = None
    queries: str | None = None
    mllm: str | None = None

    def __post_init__(self) -> None:
        if self.queries is not None and self.queries not in QUERY_MODES:
            raise ValueError(f"queries must be one of {QUERY_MODES}, got {self.queries!r}")
        if "checkpoint" in (self.params or {}):
            raise ValueError("params.checkpoint: a checkpoint path belongs in dvc.yaml, on the stage's command "
                             "(--checkpoint LABEL=PATH), where DVC tracks it as a dependency")


@dataclass(frozen=True)
class EvaluateConfig:
    """The evaluation's settings (params.yaml ``evaluate``); unknown keys are an error.

    ``split``: the questions' split to evaluate (``all``/None: every row); ``max_questions``: the
    first N of them (a quick look); ``budgets``: the frame budgets K; ``samplers``: label ->
    :class:`SamplerSpec`; ``oracle``: add the evidence oracle row (where evidence exists);
    ``claims``: paired tests (:func:`parse_claims`) with ``bootstrap_resamples`` seeded by
    ``seed``; ``benchmark``: add that benchmark's official scores; ``batch_size``:
    conversations per MLLM call (how the MLLM is asked is the shared ``inference`` section, the
    candidate frames are ``embed``'s); ``threads``/``device``: where the models run (threads per
    process); ``processes``: how many ranks dvc.yaml launches the stage as (``python -m
    torch.distributed.run --nproc_per_node``); each answers its share of the turns, and the
    result is the same as one process's (a rank takes its rank from the environment).
    """

    split: str | None = "eval"
    max_questions: int | None = None
    budgets: tuple[int, ...] = (4, 8, 16)
    samplers: dict[str, SamplerSpec] = field(default_factory=dict)
    oracle: bool = True
    claims: tuple[Mapping[str, Any], ...] = ()
    bootstrap_resamples: int = 10_000
    benchmark: str | None = None
    n_example_figures: int = 0
    evidence_tolerance_s: float = 0.0
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"
    batch_size: int = 16
    processes: int = 1

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise ValueError(f"processes must be >= 1, got {self.processes}")
        if not self.budgets or min(self.budgets) < 1:
            raise ValueError(f"budgets must be positive integers, got {list(self.budgets)}")
        official.check_benchmark(self.benchmark)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> EvaluateConfig:
        """From the params section: every sampler entry is checked as strictly as the section."""
        from msjoe.config import from_mapping

        def samplers(specs: Mapping[str, Any] | None) -> dict[str, SamplerSpec]:
            return {label: from_mapping(SamplerSpec, spec or {}, f"evaluate.samplers.{label}")
                    for label, spec in (specs or {}).items()}

        return from_mapping(cls, values, "evaluate", nested={"samplers": samplers})

    @property
    def labels(self) -> list[str]:
        """Every row label, the oracle last when it runs."""
        return list(self.samplers) + ([ORACLE] if self.oracle else [])


# ------------------------------------------------------------------------------ pure metrics
def _spans(evidence: Any) -> list[tuple[float, float]]:
    """Evidence as a list of (start_s, end_s); None / NaN / empty -> []."""
    if evidence is None or (isinstance(evidence, float) and np.isnan(evidence)):
        return []
    return [(float(s), float(e)) for s, e in (tuple(span) for span in evidence)]


def evidence_positions(timestamps: np.ndarray, evidence: Any, tolerance_s: float = 0.0) -> np.ndarray:
    """Boolean mask over candidate frames: inside some evidence span.

    A span ``[start, end)`` is half-open, as the world writes it (frame i covers
    ``[i/fps, (i+1)/fps)``); a degenerate span (``end <= start``, a point annotation) covers
    ``start`` alone. ``tolerance_s`` widens every span on both sides.
    """
    t = np.asarray(timestamps, dtype=np.float64)
    mask = np.zeros(t.shape, dtype=bool)
    for start, end in _spans(evidence):
        if end > start:
            mask |= (t >= start - tolerance_s) & (t < end + tolerance_s)
        else:
            mask |= np.abs(t - start) <= tolerance_s
    return mask


def evidence_groups(timestamps: np.ndarray, evidence: Any, tolerance_s: float = 0.0) -> list[np.ndarray]:
    """Per evidence span, the candidate positions inside it (:func:`evidence_positions`'s rule);
    spans no candidate falls in are left out."""
    groups = [np.flatnonzero(evidence_positions(timestamps, [span], tolerance_s)) for span in _spans(evidence)]
    return [g for g in groups if len(g)]


def evidence_hit(selected_timestamps: Sequence[float], evidence: Any, tolerance_s: float = 0.0) -> bool | None:
    """Whether any selected frame lies in an evidence span; None when there is no evidence."""
    if not _spans(evidence):
        return None
    return bool(evidence_positions(np.asarray(selected_timestamps), evidence, tolerance_s).any())


def evidence_complete(
    selected_timestamps: Sequence[float], evidence: Any, tolerance_s: float = 0.0
) -> bool | None:
    """Whether every evidence span holds a selected frame; None when there is no evidence.

    >>> evidence_complete([1.0, 5.0], [[0.0, 2.0], [4.0, 6.0]])
    True
    >>> evidence_complete([1.0, 1.5], [[0.0, 2.0], [4.0, 6.0]])
    False
    """
    spans = _spans(evidence)
    if not spans:
        return None
    times = np.asarray(selected_timestamps)
    return all(bool(evidence_positions(times, [span], tolerance_s).any()) for span in spans)


def oracle_selection(timestamps: np.ndarray, evidence: Any, budget: int) -> Selection:
    """Evidence frames padded with uniform frames to ``min(budget, T)``.

    One frame per evidence span comes first (the middle candidate of each span; spread
    evenly over spans if there are more spans than K), then the other evidence candidates
    spread evenly, then the uniform sampler's frames. Weight 1 marks evidence, 0 padding.
    """
    t = np.asarray(timestamps, dtype=np.float64)
    n = len(t)
    k = min(int(budget), n)
    chosen: list[int] = []
    groups = evidence_groups(t, evidence)
    middles = [int(g[len(g) // 2]) for g in groups]
    middles = list(dict.fromkeys(middles))
    if len(middles) > k:
        middles = [middles[i] for i in np.linspace(0, len(middles) - 1, k).round().astype(int)]
    chosen += middles
    rest = [int(i) for i in np.flatnonzero(evidence_positions(t, evidence)) if int(i) not in set(chosen)]
    room = k - len(chosen)
    if room > 0 and rest:
        take = rest if len(rest) <= room else [rest[i] for i in np.linspace(0, len(rest) - 1, room).round().astype(int)]
        chosen += list(dict.fromkeys(take))
    n_evidence = len(chosen)
    for i in np.floor((np.arange(k) + 0.5) * n / k).astype(int) if k else []:
        if len(chosen) >= k:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
    for i in range(n):
        if len(chosen) >= k:
            break
        if i not in chosen:
            chosen.append(i)
    weights = np.zeros(n)
    weights[chosen[:n_evidence]] = 1.0
    idx = np.sort(np.asarray(chosen, dtype=np.int64))
    return Selection(indices=idx, weights=weights[idx])


# ------------------------------------------------------------------------------ results
@dataclass
class ExampleTrace:
    """What a figure of one question needs: similarity rows over time and each method's picks."""

    qid: str
    question: str
    budget: int
    queries: list[str]
    timestamps: np.ndarray
    similarity: np.ndarray  # (n_queries, T)
    evidence: list[tuple[float, float]]
    selections: dict[str, list[float]] = field(default_factory=dict)  # label -> selected timestamps


@dataclass
class EvalResult:
    report: dict[str, Any]
    predictions: pd.DataFrame
    examples: list[ExampleTrace]


@dataclass
class _Item:
    row: Any
    features: VideoFeatures
    path: Path


def _interval(successes: int, n: int) -> list[float] | None:
    """95% Wilson interval as a JSON pair; None when there is nothing to estimate."""
    return [float(x) for x in wilson_interval(int(successes), int(n), CONFIDENCE)] if n else None


def _duration(row: Any) -> float | None:
    """The question's video length in seconds (LongVideoBench groups by it); None if unknown."""
    value = getattr(row, "duration_s", None)
    return None if value is None or pd.isna(value) else float(value)


def summarise(predictions: pd.DataFrame, benchmark: str | None = None) -> dict[str, Any]:
    """Aggregate per-question predictions into the report's per sampler x budget tables.

    Besides the point estimates every proportion carries its n and a 95% Wilson interval:
    ``accuracy_ci`` (n: ``questions``), ``accuracy_per_category_ci`` (n:
    ``questions_per_category``), ``evidence_hit_rate_ci`` (n: ``evidence_hit_n``, the questions
    with evidence; the same n for ``evidence_complete_rate_ci``), ``answer_parse_rate_ci`` and
    ``answer_format_rate_ci`` (n: ``questions``) and ``query_parse_rate_ci`` (n:
    ``query_parse_n``, the questions whose similarity came from generated queries). Intervals
    are ``[lo, hi]``, None where n is 0.
    """
    official.check_benchmark(benchmark)
    out: dict[str, Any] = {
        key: {}
        for key in (
            "accuracy", "accuracy_ci", "official", "official_breakdown", "evidence_hit_rate", "evidence_hit_rate_ci",
            "evidence_hit_n", "evidence_complete_rate", "evidence_complete_rate_ci", "accuracy_per_category", "accuracy_per_category_ci", "questions_per_category",
            "visual_tokens", "visual_tokens_answer", "answer_parse_rate", "answer_parse_rate_ci",
            "answer_format_rate", "answer_format_rate_ci",
            "query_parse_rate", "query_parse_rate_ci", "query_parse_n", "questions",
        )
    }
    for (label, budget), group in predictions.groupby(["sampler", "budget"], sort=False):
        b = str(int(budget))
        correct = group["correct"].astype(bool).tolist()
        n = len(correct)
        hits = group["evidence_hit"].dropna().astype(bool)
        complete = group["evidence_complete"].dropna().astype(bool)
        with_queries = group[group["query_source"] == "generated"]
        parsed_queries = int(with_queries["query_parse_ok"].astype(bool).sum())
        parsed_answers = int((group["prediction"].notna() & ~group["option_scored"].astype(bool)).sum())
        tagged_answers = int(group["answer_text"].fillna("").map(has_answer_tag).sum())
        durations = group["duration_s"].tolist() if "duration_s" in group else None
        scores = official.breakdown(benchmark, correct, group["category"].astype(str).tolist(), durations)
        per_cat: dict[str, float] = {}
        per_cat_ci: dict[str, list[float] | None] = {}
        per_cat_n: dict[str, int] = {}
        for c, g in group.groupby("category", sort=True):
            right = int(g["correct"].astype(bool).sum())
            per_cat[str(c)] = right / len(g)
            per_cat_ci[str(c)] = _interval(right, len(g))
            per_cat_n[str(c)] = int(len(g))
        values = {
            "accuracy": float(np.mean(correct)),
            "accuracy_ci": _interval(sum(correct), n),
            "official": official.headline(benchmark, scores),
            "official_breakdown": scores,
            "evidence_hit_rate": float(hits.mean()) if len(hits) else None,
            "evidence_hit_rate_ci": _interval(int(hits.sum()), len(hits)),
            "evidence_hit_n": int(len(hits)),
            "evidence_complete_rate": float(complete.mean()) if len(complete) else None,
            "evidence_complete_rate_ci": _interval(int(complete.sum()), len(complete)),
            "accuracy_per_category": per_cat,
            "accuracy_per_category_ci": per_cat_ci,
            "questions_per_category": per_cat_n,
            "visual_tokens": float(group["visual_tokens"].mean()),
            "visual_tokens_answer": float(group["visual_tokens_answer"].mean()),
            "answer_parse_rate": parsed_answers / n,
            "answer_parse_rate_ci": _interval(parsed_answers, n),
            "answer_format_rate": tagged_answers / n,
            "answer_format_rate_ci": _interval(tagged_answers, n),
            "query_parse_rate": parsed_queries / len(with_queries) if len(with_queries) else None,
            "query_parse_rate_ci": _interval(parsed_queries, len(with_queries)),
            "query_parse_n": int(len(with_queries)),
            "questions": int(n),
        }
        for key, value in values.items():
            out[key].setdefault(str(label), {})[b] = value
    out["benchmark"] = benchmark
    out["confidence"] = CONFIDENCE
    return out


def query_modes(
    samplers: Mapping[str, FrameSampler], overrides: Mapping[str, str | None] | None = None
) -> dict[str, str]:
    """Where each label's similarity rows come from: ``overrides[label]`` else
    :func:`~msjoe.pipeline.query_source`.

    A sampler that ignores similarity (uniform) only takes ``none``; one that reads it takes
    ``question`` or ``generated``. An override for an unknown label is an error.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(overrides) - set(samplers))
    if unknown:
        raise ValueError(f"query override for samplers not evaluated: {', '.join(unknown)}")
    modes: dict[str, str] = {}
    for label, sampler in samplers.items():
        try:
            modes[label] = query_source(sampler, overrides.get(label))
        except ValueError as err:
            raise ValueError(f"sampler {label}: {err}") from None
    return modes


# ------------------------------------------------------------------------------ the run
def _my_batches(keys: Sequence[T], batch_size: int, rank: int, world: int) -> list[Sequence[T]]:
    """This rank's batches of ``keys``: the single-process batches, dealt round-robin.

    Every batch holds exactly what it holds in a single process, so each turn is computed
    with the same batch mates (and padding) as there: a sharded run gives the same replies
    bit for bit (for the same thread count per process).

    >>> _my_batches(list("abcde"), 2, 1, 2)
    [['c', 'd']]
    """
    batches = [keys[start : start + batch_size] for start in range(0, len(keys), batch_size)]
    return batches[rank::world]


def _turn_context(pipeline: Pipeline) -> dict[str, Any]:
    """What every turn's reply depends on besides its own inputs: the MLLM's weights, the device
    and dtype they run in (a CPU reply is not a CUDA or bf16 one), the pipeline's settings,
    torch's thread count (float reductions split per thread) and the versions of the libraries
    that compute it."""
    import torch
    import transformers

    model = getattr(pipeline.mllm, "model", None)
    return {"mllm": getattr(pipeline.mllm, "identity", None), "cfg": asdict(pipeline.cfg),
            # how a reply becomes a letter (episode.resolve_answers, MLLM.score_completions)
            "answer": "the reply's option, else the option scored highest on the shared-prefix cache",
            # the device type, not its index: every rank of a sharded run must name a batch alike
            "device": getattr(getattr(pipeline.mllm, "device", None), "type", None),
            "dtype": str(getattr(model, "dtype", None)),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "transformers": transformers.__version__}


def _content(item: _Item) -> str:
    """The video's content hash (ingest's), else its path."""
    sha = getattr(item.row, "sha256", None)
    return sha if isinstance(sha, str) and sha else str(item.path)


def _merged(results: dict[Any, Any], world: int) -> dict[Any, Any]:
    """Every rank's share of a turn's results, on every rank (no-op in one process)."""
    if world == 1:
        return results
    return {key: value for share in all_gather(results) for key, value in share.items()}


def evaluate(
    questions: pd.DataFrame,
    video_root: Path,
    pipeline: Pipeline,
    samplers: Mapping[str, FrameSampler],
    budgets: Sequence[int],
    *,
    oracle: bool = True,
    benchmark: str | None = None,
    n_examples: int = 0,
    evidence_tolerance_s: float = 0.0,
    queries: Mapping[str, str | None] | None = None,
    progress: bool = True,
    turn_cache: Path | None = None,
) -> EvalResult:
    """Run every sampler (``label -> sampler``) at every budget on ``questions``.

    ``questions`` is ingest's table (qid, video, question, options, answer, category,
    evidence, sha256). ``pipeline`` provides CLIP, the MLLM, the feature cache and the
    settings; its own ``sampler`` is not used. The oracle row is added when ``oracle`` and at
    least one question has evidence. ``n_examples`` questions (the first ones) keep traces
    for figures, at the largest budget. ``queries`` overrides, per label, where a sampler's
    queries come from (``none``, ``question`` or ``generated``; :func:`query_modes`).

    Under ``torchrun`` each rank runs its share of the query and answer batches (the
    single-process batches, dealt round-robin) and every rank returns the whole result. With
    ``turn_cache`` every finished batch of turns is saved there (:class:`~msjoe.batch_cache.BatchCache`),
    so a killed run, or one whose rank died, resumes from the batches already done.
    """
    from tqdm import tqdm

    official.check_benchmark(benchmark)
    budgets = sorted({int(b) for b in budgets})
    if not budgets or budgets[0] < 1:
        raise ValueError(f"budgets must be positive integers, got {budgets}")
    if not samplers:
        raise ValueError("no samplers to evaluate")
    if ORACLE in samplers:
        raise ValueError(f"{ORACLE!r} is reserved for the evidence upper bound")
    modes = query_modes(samplers, queries)
    rank, world = rank_and_world()
    cache = BatchCache(turn_cache, _turn_context(pipeline)) if turn_cache is not None else None
    used: list[str] = []  # every batch digest of this run (to prune other runs' batches)
    started = time.perf_counter()
    wall: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)

    # 1. candidate features, one load per video (questions sorted by video so frame caches stay small)
    tick = time.perf_counter()
    table = questions.reset_index(drop=True)
    table = table.iloc[np.argsort(table["video"].to_numpy(), kind="stable")].reset_index(drop=True)
    items: list[_Item] = []
    per_video: dict[str, tuple[VideoFeatures, Path]] = {}
    for row in table.itertuples(index=False):
        if row.video not in per_video:
            path = resolve_video(Path(video_root), row.video)
            sha = getattr(row, "sha256", None)
            features, _ = pipeline.video_features(path, sha if isinstance(sha, str) and sha else None)
            per_video[row.video] = (features, path)
        features, path = per_video[row.video]
        items.append(_Item(row, features, path))
    wall["features"] += time.perf_counter() - tick
    counts["features"] = len(per_video)
    has_evidence = any(_spans(item.row.evidence) for item in items)

    need_generated = any(m == "generated" for m in modes.values())
    need_question = any(m == "question" for m in modes.values())

    # 2. query turns per (question, n_preview), batched in video order
    generated: dict[tuple[int, int], tuple[list[str], bool, str, int]] = {}
    if need_generated:
        keys = sorted({(i, b // 2) for i in range(len(items)) for b in budgets}, key=lambda k: (k[0], k[1]))
        preview_needed: dict[str, set[int]] = defaultdict(set)
        for i, n_preview in keys:
            positions = Pipeline.preview_positions(len(items[i].features.indices), 2 * n_preview)
            preview_needed[items[i].row.video].update(int(x) for x in items[i].features.indices[positions])
        tick = time.perf_counter()

        def query_inputs(key: tuple[int, int]) -> list[Any]:
            item = items[key[0]]
            previews = item.features.indices[Pipeline.preview_positions(len(item.features.indices), 2 * key[1])]
            return [item.row.qid, item.row.question, list(item.row.options), _content(item), previews.tolist()]

        batches = _my_batches(keys, pipeline.cfg.batch_size, rank, world)
        if cache is not None:
            used += [cache.digest("query", [query_inputs(k) for k in chunk])
                     for chunk in _my_batches(keys, pipeline.cfg.batch_size, 0, 1)]
        bar = tqdm(total=sum(map(len, batches)), desc="query turns", disable=not progress)
        source: tuple[str, FrameSource] | None = None
        for chunk in batches:
            digest = cache.digest("query", [query_inputs(k) for k in chunk]) if cache is not None else ""
            done = cache.load(digest) if cache is not None else None
            if done is not None:
                generated.update((key, tuple(value)) for key, value in zip(chunk, done, strict=True))
                counts["query_resumed"] += len(chunk)
                bar.update(len(chunk))
                continue
            conversations, texts, tokens = [], [], []
            for i, n_preview in chunk:
                item = items[i]
                if source is None or source[0] != item.row.video:
                    source = (item.row.video, FrameSource(item.path))
                    source[1].get(sorted(preview_needed[item.row.video]))
                positions = Pipeline.preview_positions(len(item.features.indices), 2 * n_preview)
                previews = source[1].get(item.features.indices[positions])
                conversations.append(pipeline.query_conversation(item.row.question, list(item.row.options), previews))
                texts.append(item.row.question)
                tokens.append(pipeline.visual_tokens(previews, pipeline.cfg.preview_size**2))
            for key, (parsed, raw), tok in zip(chunk, pipeline.generate_queries(conversations, texts), tokens, strict=True):
                generated[key] = (parsed.queries, parsed.ok, raw, tok)
            if cache is not None:
                cache.save(digest, [list(generated[key]) for key in chunk])
            bar.update(len(chunk))
        bar.close()
        generated = _merged(generated, world)
        wall["query"] += time.perf_counter() - tick
        counts["query"] = len(keys)

    # 3. CLIP text features of every distinct query, then similarity matrices
    tick = time.perf_counter()
    strings = {q for queries, *_ in generated.values() for q in queries}
    if need_question:
        strings |= {item.row.question.strip() for item in items}
    ordered = sorted(strings)
    text_features: dict[str, np.ndarray] = {}
    for start in range(0, len(ordered), 256):
        chunk = ordered[start : start + 256]
        for s, vec in zip(chunk, pipeline.clip.encode_texts(chunk), strict=True):
            text_features[s] = vec

    def sim_for(item: _Item, queries: list[str]) -> np.ndarray:
        return (np.stack([text_features[q] for q in queries]) @ item.features.features.T).astype(np.float64)

    wall["similarity"] += time.perf_counter() - tick
    counts["similarity"] = len(strings)

    # 4. selections for every (label, budget, question) + the oracle
    labels = list(samplers) + ([ORACLE] if oracle and has_evidence else [])
    plans: list[dict[str, Any]] = []
    sims: dict[tuple[int, str, int], np.ndarray] = {}
    tick_sim = 0.0
    tick = time.perf_counter()
    for i, item in enumerate(items):
        n = len(item.features.indices)
        for budget in budgets:
            for label in labels:
                mode = "oracle" if label == ORACLE else modes[label]
                queries: list[str] = []
                parse_ok, raw, preview_tokens = True, "", 0
                sim = None
                if mode == "generated":
                    queries, parse_ok, raw, preview_tokens = generated[(i, budget // 2)]
                elif mode == "question":
                    queries = [item.row.question.strip()]
                if queries:
                    t0 = time.perf_counter()
                    cache_key = (i, mode, budget // 2 if mode == "generated" else 0)
                    if cache_key not in sims:
                        sims[cache_key] = sim_for(item, queries)
                    sim = sims[cache_key]
                    tick_sim += time.perf_counter() - t0
                if label == ORACLE:
                    selection = oracle_selection(item.features.timestamps, item.row.evidence, budget)
                else:
                    selection = pipeline.select(samplers[label], sim, budget, n)
                plans.append({
                    "i": i, "label": label, "budget": budget, "mode": mode, "queries": queries,
                    "parse_ok": parse_ok, "raw_query": raw, "preview_tokens": preview_tokens,
                    "selection": selection, "sim": sim,
                })
    wall["sampler"] += time.perf_counter() - tick - tick_sim
    wall["similarity"] += tick_sim
    counts["sampler"] = len(plans)

    # 5. answer turns per distinct (question, frame set), batched in video order
    answer_keys = sorted({(p["i"], tuple(p["selection"].indices.tolist())) for p in plans})
    answers: dict[tuple[int, tuple[int, ...]], tuple[str | None, str, bool, int]] = {}

    def answer_inputs(key: tuple[int, tuple[int, ...]]) -> list[Any]:
        item = items[key[0]]
        frames = item.features.indices[list(key[1])]
        return [item.row.qid, item.row.question, list(item.row.options), _content(item), frames.tolist()]

    batches = _my_batches(answer_keys, pipeline.cfg.batch_size, rank, world)
    if cache is not None:
        used += [cache.digest("answer", [answer_inputs(k) for k in chunk])
                 for chunk in _my_batches(answer_keys, pipeline.cfg.batch_size, 0, 1)]
        todo = []
        for chunk in batches:
            done = cache.load(cache.digest("answer", [answer_inputs(k) for k in chunk]))
            if done is None:
                todo.append(chunk)
                continue
            answers.update((key, tuple(value)) for key, value in zip(chunk, done, strict=True))
            counts["answer_resumed"] += len(chunk)
        batches = todo
    bar = tqdm(total=sum(map(len, batches)), desc="answer turns", disable=not progress)
    source = None
    answer_pixels = pipeline.cfg.answer_size**2 if pipeline.cfg.answer_size else None
    # every frame a video's answer turns need, decoded in one sorted pass (seeks are the cost)
    needed: dict[str, set[int]] = defaultdict(set)
    for i, positions in (key for chunk in batches for key in chunk):
        needed[items[i].row.video].update(int(x) for x in items[i].features.indices[list(positions)])
    for chunk in batches:
        tick = time.perf_counter()
        batch_frames = []
        for i, positions in chunk:
            item = items[i]
            if source is None or source[0] != item.row.video:
                source = (item.row.video, FrameSource(item.path))
                source[1].get(sorted(needed[item.row.video]))
            batch_frames.append(source[1].get(item.features.indices[list(positions)]))
        wall["decode"] += time.perf_counter() - tick
        tick = time.perf_counter()
        conversations = [
            pipeline.answer_conversation(items[i].row.question, list(items[i].row.options), frames)
            for (i, _), frames in zip(chunk, batch_frames, strict=True)
        ]
        replies = pipeline.generate_answers(conversations, [list(items[i].row.options) for i, _ in chunk])
        wall["answer"] += time.perf_counter() - tick
        for key, turn, frames in zip(chunk, replies, batch_frames, strict=True):
            answers[key] = (turn.letter, turn.text, turn.scored, pipeline.visual_tokens(frames, answer_pixels))
        if cache is not None:
            cache.save(cache.digest("answer", [answer_inputs(k) for k in chunk]), [list(answers[key]) for key in chunk])
        bar.update(len(chunk))
    bar.close()
    answers = _merged(answers, world)
    if cache is not None and rank == 0:
        cache.prune(used)
    counts["decode"] = counts["answer"] = len(answer_keys)

    # 6. per-question predictions
    records = []
    for p in plans:
        item = items[p["i"]]
        sel: Selection = p["selection"]
        letter, text, scored, answer_tokens = answers[(p["i"], tuple(sel.indices.tolist()))]
        times = item.features.timestamps[sel.indices]
        records.append({
            "qid": item.row.qid,
            "video": item.row.video,
            "category": str(getattr(item.row, "category", "") or ""),
            "duration_s": _duration(item.row),
            "sampler": p["label"],
            "budget": p["budget"],
            "query_source": p["mode"],
            "answer": item.row.answer,
            "prediction": letter,
            "correct": is_correct(letter, item.row.answer),
            "answer_text": text,
            "option_scored": bool(scored),
            "queries": list(p["queries"]),
            "query_parse_ok": bool(p["parse_ok"]),
            "query_text": p["raw_query"],
            "frames": item.features.indices[sel.indices].astype(int).tolist(),
            "timestamps": [round(float(t), 4) for t in times],
            "weights": [float(w) for w in sel.weights],
            "evidence_hit": evidence_hit(times, item.row.evidence, evidence_tolerance_s),
            "evidence_complete": evidence_complete(times, item.row.evidence, evidence_tolerance_s),
            "visual_tokens_answer": answer_tokens,
            "visual_tokens": answer_tokens + p["preview_tokens"],
        })
    predictions = pd.DataFrame.from_records(records)

    examples = _examples(items, plans, n_examples, max(budgets)) if n_examples else []
    report = summarise(predictions, benchmark)
    total = time.perf_counter() - started
    report.update({
        "samplers": list(samplers),
        "budgets": budgets,
        "oracle": ORACLE in labels,
        "n_questions": len(items),
        "n_videos": len(per_video),
        "query_turns": counts["query"],
        "query_fallbacks": sum(not ok for _, ok, *_ in generated.values()),
        "answer_turns": counts["answer"],
        "answer_turns_saved_by_sharing": len(plans) - counts["answer"],
        # run-dependent measurements: the stage writes them apart from its metrics
        "timings": {
            "latency_s": {
                stage: (wall[stage] / counts[stage] if counts[stage] else 0.0)
                for stage in ("features", "query", "similarity", "sampler", "decode", "answer")
            },
            "stage_seconds": {k: round(v, 3) for k, v in wall.items()},
            "resumed_turns": {"query": counts["query_resumed"], "answer": counts["answer_resumed"]},
            "seconds": round(total, 3),
        },
    })
    report["chance_accuracy"] = float(np.mean([1.0 / len(item.row.options) for item in items])) if items else None
    return EvalResult(report, predictions, examples)


def _examples(items: list[_Item], plans: list[dict[str, Any]], n: int, budget: int) -> list[ExampleTrace]:
    """Traces of the first ``n`` questions at ``budget``: generated-query similarity rows
    (else the question's) and every method's selected timestamps."""
    traces: list[ExampleTrace] = []
    by_question: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for p in plans:
        if p["budget"] == budget:
            by_question[p["i"]].append(p)
    for i in sorted(by_question)[:n]:
        item = items[i]
        ps = by_question[i]
        with_sim = [p for p in ps if p["sim"] is not None]
        best = next((p for p in with_sim if p["mode"] == "generated"), with_sim[0] if with_sim else None)
        traces.append(ExampleTrace(
            qid=item.row.qid,
            question=item.row.question,
            budget=budget,
            queries=list(best["queries"]) if best else [],
            timestamps=item.features.timestamps,
            similarity=best["sim"] if best else np.zeros((0, len(item.features.timestamps))),
            evidence=_spans(item.row.evidence),
            selections={p["label"]: item.features.timestamps[p["selection"].indices].tolist() for p in ps},
        ))
    return traces


def accuracy_plot_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """DVC plot rows, one per budget with one accuracy column per sampler (and the oracle),
    plus ``<sampler>_lo`` / ``<sampler>_hi``: the 95% Wilson interval of that accuracy."""
    accuracy = report["accuracy"]
    ci = report.get("accuracy_ci") or {}
    budgets = sorted({int(b) for per in accuracy.values() for b in per})
    rows = []
    for b in budgets:
        row: dict[str, Any] = {"budget": b}
        for label, per in accuracy.items():
            row[label] = per.get(str(b))
            interval = (ci.get(label) or {}).get(str(b))
            row[f"{label}_lo"], row[f"{label}_hi"] = interval if interval else (None, None)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------ claims
_RELATIVE = re.compile(r"^\s*(\d*)\s*\*?\s*K\s*(?:/\s*(\d+))?\s*$", re.IGNORECASE)


def resolve_budget(spec: int | str, budgets: Sequence[int]) -> int:
    """A claim's budget: an integer, or relative to K, the middle of the evaluated ``budgets``
    (the lower middle when their number is even): ``"K"``, ``"2K"``, ``"K/2"``.

    >>> resolve_budget("2K", [4, 8, 16]), resolve_budget("K", [4, 8, 16]), resolve_budget(4, [4, 8])
    (16, 8, 4)
    """
    ordered = sorted({int(b) for b in budgets})
    if not ordered:
        raise ValueError("no budgets evaluated")
    if isinstance(spec, bool):
        raise ValueError(f"budget {spec!r} is not a budget")
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        budget = int(spec)
    else:
        match = _RELATIVE.match(str(spec))
        if not match:
            raise ValueError(f"budget {spec!r}: expected an integer or a multiple of K such as 'K', '2K', 'K/2'")
        k = ordered[(len(ordered) - 1) // 2]
        num, den = int(match.group(1) or 1), int(match.group(2) or 1)
        if (num * k) % den:
            raise ValueError(f"budget {spec!r} = {num}*{k}/{den} is not an integer")
        budget = num * k // den
    if budget not in ordered:
        raise ValueError(f"budget {spec!r} resolves to {budget}, which is not evaluated (evaluate.budgets: {ordered})")
    return budget


#: What a claim compares, per question: answered correctly, or at least one selected frame
#: inside the evidence (questions without evidence annotations are left out of the pairing).
CLAIM_METRICS = {"accuracy": "correct", "evidence_hit": "evidence_hit", "evidence_complete": "evidence_complete"}


@dataclass(frozen=True)
class Claim:
    """A declared comparison: ``a`` is better than (``superior``) or not worse by more than
    ``margin`` than (``noninferior``) every configuration in ``b``, on the same questions,
    in ``metric`` (a key of :data:`CLAIM_METRICS`)."""

    name: str
    kind: str
    a: tuple[str, int]
    b: tuple[tuple[str, int], ...]
    margin: float = 0.05
    alpha: float = 0.05
    metric: str = "accuracy"


def _side(spec: Any, what: str, name: str) -> tuple[list[str], int | str]:
    if not isinstance(spec, (list, tuple)) or len(spec) != 2:
        raise ValueError(f"claim {name}: {what} must be [sampler, budget] (sampler may be a list), got {spec!r}")
    samplers, budget = spec
    labels = [str(x) for x in samplers] if isinstance(samplers, (list, tuple)) else [str(samplers)]
    if not labels:
        raise ValueError(f"claim {name}: {what} names no sampler")
    return labels, budget


def parse_claims(
    specs: Sequence[Mapping[str, Any]] | None, budgets: Sequence[int], samplers: Sequence[str]
) -> list[Claim]:
    """Claims declared in params (``evaluate.claims``), resolved and checked against what is
    evaluated: every sampler named must be in ``samplers`` and every budget in ``budgets``.

    Each spec: ``name``, ``a: [sampler, budget]``, ``b: [sampler or [samplers], budget]``,
    ``kind: superior|noninferior``, optional ``margin`` (default 0.05), ``alpha`` (0.05) and
    ``metric`` (a key of :data:`CLAIM_METRICS`: ``accuracy``, default, ``evidence_hit`` or
    ``evidence_complete``).
    """
    claims: list[Claim] = []
    known = set(samplers)
    for i, spec in enumerate(specs or []):
        if not isinstance(spec, Mapping):
            raise ValueError(f"claim #{i}: expected a mapping, got {spec!r}")
        name = str(spec.get("name") or "")
        if not name:
            raise ValueError(f"claim #{i}: missing name")
        if any(c.name == name for c in claims):
            raise ValueError(f"claim {name}: declared twice")
        extra = set(spec) - {"name", "a", "b", "kind", "margin", "alpha", "metric"}
        if extra:
            raise ValueError(f"claim {name}: unknown keys {sorted(extra)}")
        kind = str(spec.get("kind", "superior"))
        if kind not in CLAIM_KINDS:
            raise ValueError(f"claim {name}: kind must be one of {CLAIM_KINDS}, got {kind!r}")
        a_labels, a_budget = _side(spec.get("a"), "a", name)
        b_labels, b_budget = _side(spec.get("b"), "b", name)
        if len(a_labels) != 1:
            raise ValueError(f"claim {name}: a must name one sampler, got {a_labels}")
        for label in a_labels + b_labels:
            if label not in known:
                raise ValueError(
                    f"claim {name}: sampler {label!r} is not evaluated (evaluated: {', '.join(samplers)})"
                )
        try:
            a = (a_labels[0], resolve_budget(a_budget, budgets))
            b = tuple((label, resolve_budget(b_budget, budgets)) for label in b_labels)
        except ValueError as err:
            raise ValueError(f"claim {name}: {err}") from None
        if a in b:
            raise ValueError(f"claim {name}: compares {a[0]}@{a[1]} with itself")
        margin = float(spec.get("margin", 0.05))
        alpha = float(spec.get("alpha", 0.05))
        if not (margin >= 0.0 and 0.0 < alpha < 1.0):
            raise ValueError(f"claim {name}: need margin >= 0 and 0 < alpha < 1, got {margin}, {alpha}")
        metric = str(spec.get("metric", "accuracy"))
        if metric not in CLAIM_METRICS:
            raise ValueError(f"claim {name}: metric must be one of {sorted(CLAIM_METRICS)}, got {metric!r}")
        claims.append(Claim(name, kind, a, b, margin, alpha, metric))
    return claims


def _outcomes(predictions: pd.DataFrame, sampler: str, budget: int, claim: Claim) -> pd.Series:
    rows = predictions[(predictions["sampler"] == sampler) & (predictions["budget"].astype(int) == budget)]
    if rows.empty:
        raise ValueError(f"claim {claim.name}: no predictions for sampler {sampler!r} at budget {budget}")
    if rows["qid"].duplicated().any():
        raise ValueError(f"claim {claim.name}: {sampler}@{budget} has several predictions for one question")
    outcome = rows.set_index("qid")[CLAIM_METRICS[claim.metric]]
    return outcome.dropna().astype(bool)


def _compare(
    predictions: pd.DataFrame, claim: Claim, b: tuple[str, int], resamples: int, seed: int
) -> dict[str, Any]:
    a_s = _outcomes(predictions, *claim.a, claim)
    b_s = _outcomes(predictions, *b, claim)
    if set(a_s.index) != set(b_s.index):
        missing = sorted(set(a_s.index) ^ set(b_s.index))
        raise ValueError(
            f"claim {claim.name}: {claim.a[0]}@{claim.a[1]} and {b[0]}@{b[1]} answered different questions "
            f"({len(missing)} unpaired, e.g. {missing[:3]})"
        )
    qids = sorted(a_s.index)
    xa, xb = a_s.loc[qids].tolist(), b_s.loc[qids].tolist()
    n = len(qids)
    mcnemar = mcnemar_exact(xa, xb)
    boot = paired_bootstrap(xa, xb, resamples=resamples, seed=seed, confidence=CONFIDENCE)
    ni = noninferiority_test(xa, xb, claim.margin, claim.alpha)
    p = mcnemar.p_greater if claim.kind == "superior" else ni.p
    counts = mcnemar.counts

    rate = "accuracy" if claim.metric == "accuracy" else f"{claim.metric}_rate"

    def side(label: str, budget: int, right: int) -> dict[str, Any]:
        return {"sampler": label, "budget": budget, rate: right / n, "ci": _interval(right, n)}

    return {
        "kind": claim.kind,
        "metric": claim.metric,
        "a": side(*claim.a, counts.both + counts.a_only),
        "b": side(*b, counts.both + counts.b_only),
        "n": n,
        "a_only": counts.a_only,
        "b_only": counts.b_only,
        "difference": counts.difference,
        "difference_ci": list(boot.ci),
        "p_bootstrap": boot.p_two_sided,
        "p_mcnemar": mcnemar.p_greater,
        "p_mcnemar_two_sided": mcnemar.p_two_sided,
        "margin": claim.margin,
        "p_noninferior": ni.p,
        "noninferior_lower_bound": ni.lower_bound,
        "alpha": claim.alpha,
        "p": p,
        "holds": bool(p <= claim.alpha),
    }


def claims_report(
    predictions: pd.DataFrame, claims: Sequence[Claim], *, resamples: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """Each claim tested on the questions both sides answered (paired), ``{name: result}``.

    Per comparison of ``a`` with one ``b`` (in the claim's ``metric``; below for accuracy, the
    same for ``evidence_hit_rate`` or ``evidence_complete_rate`` on the questions with evidence):
    ``n``; both sides' accuracy with a 95% Wilson
    interval; the discordant counts ``a_only`` / ``b_only``; ``difference`` (acc a - acc b)
    with a 95% paired-bootstrap ``difference_ci`` and two-sided ``p_bootstrap``; the exact
    McNemar ``p_mcnemar`` (one-sided, H1: a > b) and ``p_mcnemar_two_sided``; the Wald+2
    non-inferiority ``p_noninferior`` at ``margin`` with its one-sided lower bound; ``p`` (the
    verdict's p-value: ``p_mcnemar`` for ``superior``, ``p_noninferior`` for ``noninferior``)
    and ``holds`` (``p <= alpha``). ``p_holm`` / ``holds_holm`` adjust ``p`` over every
    comparison in the report (Holm), for reading all the claims together.

    A claim over several ``b`` has these under ``comparisons`` (keyed ``sampler@budget``) and
    holds when every comparison holds: an intersection-union test, valid at ``alpha`` without
    multiplicity correction.
    """
    results: dict[str, Any] = {}
    leaves: list[dict[str, Any]] = []
    for claim in claims:
        comparisons = {f"{b[0]}@{b[1]}": _compare(predictions, claim, b, resamples, seed) for b in claim.b}
        leaves += comparisons.values()
        if len(claim.b) == 1:
            results[claim.name] = next(iter(comparisons.values()))
        else:
            first = next(iter(comparisons.values()))
            results[claim.name] = {
                "kind": claim.kind,
                "metric": claim.metric,
                "a": first["a"],
                "n": min(c["n"] for c in comparisons.values()),
                "margin": claim.margin,
                "alpha": claim.alpha,
                "comparisons": comparisons,
                "holds": all(c["holds"] for c in comparisons.values()),
            }
    for leaf, adjusted in zip(leaves, holm([leaf["p"] for leaf in leaves]), strict=True):
        leaf["p_holm"] = adjusted
        leaf["holds_holm"] = bool(adjusted <= leaf["alpha"])
    for result in results.values():
        if "comparisons" in result:
            result["holds_holm"] = all(c["holds_holm"] for c in result["comparisons"].values())
    return results


def merge_results(results: Sequence[EvalResult], benchmark: str | None = None) -> EvalResult:
    """One report over runs that used different MLLMs (e.g. the base and the jointly trained one).

    The tables are recomputed from the concatenated predictions; run-level figures (latencies,
    turn counts) are those of the first run, times (``timings["seconds"]``) are summed.
    """
    if not results:
        raise ValueError("nothing to merge")
    predictions = pd.concat([r.predictions for r in results], ignore_index=True)
    report = {**results[0].report, **summarise(predictions, benchmark)}
    report["samplers"] = [label for r in results for label in r.report["samplers"]]
    report["oracle"] = any(r.report.get("oracle") for r in results)
    report["timings"] = {
        **(results[0].report.get("timings") or {}),
        "seconds": round(sum(float((r.report.get("timings") or {}).get("seconds", 0.0)) for r in results), 3),
    }
    return EvalResult(report, predictions, [e for r in results for e in r.examples])
