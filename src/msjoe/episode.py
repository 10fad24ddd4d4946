"""One MSJoE episode, the unit every consumer shares: query turn -> CLIP similarity ->
sampler draw -> answer turn -> parsed option -> reward.

Evaluation and serving (through :class:`~msjoe.pipeline.Pipeline`), the ``difficulty`` stage
and both RL trainers (through :mod:`msjoe.rl.rollout`) run the steps below and nothing else, so
they agree on what an episode is and, above all, on when an answer counts as correct
(:func:`is_correct`, the one home of that decision).

Every step is batched (lists in, lists out, in order) and takes its models and settings as
arguments, because its callers differ only in those: the frozen MLLM or the policy being
trained, greedy or sampled turns, a seed per chunk or none.

1. **Query turn.** :func:`preview_positions` (``budget // 2`` low-resolution previews) ->
   :func:`query_conversation` -> :func:`query_turns` (generation, :func:`parse_query_turn`;
   a reply without a parsable ``<query>`` falls back to the question as the only query, logged
   and counted by :func:`count_fallbacks`).
2. **Similarity.** :func:`similarity`: CLIP text features of the queries against the cached
   frame features, ``(n_queries, T)``.
3. **Sampler draw / selection.** Training: :func:`sampler_log_probs` -> :func:`draw_frames`
   (seeded Gumbel-top-k) -> :func:`draw_log_prob` (the REINFORCE term). Inference:
   :func:`select` (any registered :class:`~msjoe.sampling.base.FrameSampler`; the learned one
   takes the top K); :func:`uniform_positions` is the uniform baseline's choice.
4. **Answer turn.** :func:`answer_conversation` -> :func:`answer_turns` (generation,
   :func:`parse_answer_turn` to an option letter or None). Inference (evaluation, serving)
   then runs :func:`resolve_answers`: a greedy reply that names no option gets the option the
   MLLM itself scores highest after its reply up to the answer tag (:func:`score_options`).
   Training rollouts keep the reply as written, so the format reward judges what was said.
5. **Scoring.** :func:`is_correct`; :func:`score` gives the reward breakdown
   ``r_acc + r_format + r_info`` of :mod:`msjoe.rl.rewards` (whose ``accuracy_reward`` is
   :func:`is_correct` as a number).

Light to import (numpy; torch only inside the sampler-draw functions).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from msjoe.mllm.parsing import OPTION_LETTERS, QueryParse, parse_answer, parse_queries
from msjoe.mllm.prompts import Conversation, build_answer_messages, build_query_messages, downscale

if TYPE_CHECKING:
    import torch

    from msjoe.clip.model import FrozenClip
    from msjoe.mllm.load import MLLM, GenerationResult
    from msjoe.rl.rewards import RewardBreakdown, RewardConfig
    from msjoe.sampling.base import FrameSampler, Selection

__all__ = [
    "AnswerTurn",
    "CompletionScorer",
    "QueryTurn",
    "Seed",
    "answer_conversation",
    "answer_images",
    "answer_prefix",
    "answer_turns",
    "count_fallbacks",
    "draw_frames",
    "draw_log_prob",
    "generate",
    "is_correct",
    "parse_answer_turn",
    "parse_query_turn",
    "preview_positions",
    "query_conversation",
    "query_turns",
    "resolve_answers",
    "sampler_log_probs",
    "score",
    "score_options",
    "select",
    "similarity",
    "uniform_positions",
    "visual_tokens",
]

log = logging.getLogger(__name__)

#: Seed of a batched generation: None (unseeded), one seed for every chunk, or a function of
#: the chunk index (``0, 1, ...``) giving each chunk its own seed.
Seed = int | Callable[[int], int] | None


class TextGenerator(Protocol):
    """What the episode needs from an MLLM: :meth:`~msjoe.mllm.load.MLLM.generate`."""

    def generate(
        self, conversations: Sequence[Conversation], max_new_tokens: int = ..., temperature: float = ...,
        seed: int | None = ..., with_log_probs: bool = ...,
    ) -> list[GenerationResult]: ...


class CompletionScorer(Protocol):
    """What answer resolution needs from an MLLM: :meth:`~msjoe.mllm.load.MLLM.score_completions`."""

    def score_completions(
        self, conversations: Sequence[Conversation], completions: Sequence[Sequence[str]]
    ) -> list[list[float]]: ...


# --------------------------------------------------------------------------------------------
# generation


def generate(
    mllm: TextGenerator,
    conversations: Sequence[Conversation],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    batch_size: int | None = None,
    seed: Seed = None,
    with_log_probs: bool = False,
) -> list[GenerationResult]:
    """One reply per conversation, in order, in chunks of ``batch_size`` (None: one call).

    ``temperature`` 0 decodes greedily; ``seed`` (see :data:`Seed`) makes sampling
    reproducible; ``with_log_probs`` keeps the generated tokens' log-probabilities (RL).
    """
    convs = list(conversations)
    size = len(convs) if batch_size is None else int(batch_size)
    if size < 1 and convs:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out: list[GenerationResult] = []
    for chunk, start in enumerate(range(0, len(convs), max(size, 1))):
        chunk_seed = seed(chunk) if callable(seed) else seed
        out += mllm.generate(
            convs[start : start + size], max_new_tokens=max_new_tokens, temperature=temperature,
            seed=chunk_seed, with_log_probs=with_log_probs,
        )
    return out


# --------------------------------------------------------------------------------------------
# 1. query turn


def preview_positions(n_candidates: int, budget: int) -> np.ndarray:
    """Candidate positions of the ``budget // 2`` previews (centres of equal segments).

    >>> preview_positions(32, 6).tolist()
    [5, 16, 26]
    >>> preview_positions(32, 1).tolist()
    []
    """
    n = min(max(budget // 2, 0), n_candidates)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    return np.floor((np.arange(n) + 0.5) * n_candidates / n).astype(np.int64)


def query_conversation(
    question: str, options: Sequence[str], previews: Sequence[Any], *, n_queries: int, preview_size: int
) -> Conversation:
    """The query turn's prompt: previews shown with at most ``preview_size**2`` pixels."""
    return build_query_messages(
        question, options, list(previews), n_queries=n_queries, preview_max_pixels=preview_size**2,
    )


@dataclass(frozen=True)
class QueryTurn:
    """One query turn.

    Attributes:
        parsed: the queries used downstream: the parsed ones (``ok`` True) or, when the reply
            held none, the question as the only query (``ok`` False).
        text: the raw reply.
        result: the generation (token ids and, when asked for, log-probabilities).
    """

    parsed: QueryParse
    text: str
    result: GenerationResult | None = None

    @property
    def ok(self) -> bool:
        """Whether the MLLM's own queries were parsed (False: the question was the fallback)."""
        return self.parsed.ok

    @property
    def queries(self) -> list[str]:
        return self.parsed.queries


def parse_query_turn(text: str, question: str, n_queries: int) -> QueryParse:
    """Up to ``n_queries`` queries from a reply; none parsable: ``[question]`` with ``ok`` False.

    >>> parse_query_turn("<query>red star</query>", "What?", 4)
    QueryParse(queries=['red star'], ok=True)
    >>> parse_query_turn("no tags", " What is shown? ", 4)
    QueryParse(queries=['What is shown?'], ok=False)
    """
    parsed = parse_queries(text, n_queries)
    if parsed.ok:
        return parsed
    log.debug("query turn unparsable, falling back to the question: %r", text[:200])
    return QueryParse(queries=[question.strip()], ok=False)


def query_turns(
    mllm: TextGenerator,
    conversations: Sequence[Conversation],
    questions: Sequence[str],
    *,
    n_queries: int,
    max_new_tokens: int,
    temperature: float = 0.0,
    batch_size: int | None = None,
    seed: Seed = None,
    with_log_probs: bool = False,
) -> list[QueryTurn]:
    """Query turns, batched; each reply parsed with the question as its fallback."""
    if len(conversations) != len(questions):
        raise ValueError(f"{len(conversations)} conversations for {len(questions)} questions")
    results = generate(mllm, conversations, max_new_tokens=max_new_tokens, temperature=temperature,
                       batch_size=batch_size, seed=seed, with_log_probs=with_log_probs)
    return [
        QueryTurn(parse_query_turn(r.text, question, n_queries), r.text, r)
        for r, question in zip(results, questions, strict=True)
    ]


def count_fallbacks(turns: Sequence[QueryTurn]) -> int:
    """How many query turns fell back to the question."""
    return sum(not t.ok for t in turns)


# --------------------------------------------------------------------------------------------
# 2. similarity


def similarity(clip: FrozenClip, queries: Sequence[str], features: np.ndarray) -> np.ndarray:
    """Cosine matrix ``(n_queries, T)`` (float64) between CLIP text and frame features."""
    text = clip.encode_texts(list(queries))
    return (text @ features.T).astype(np.float64)


# --------------------------------------------------------------------------------------------
# 3. sampler draw (training) and selection (inference)


def uniform_positions(n_candidates: int, k: int) -> np.ndarray:
    """Candidate positions of ``k`` uniform frames (centres of equal segments), as the
    ``uniform`` baseline picks them; ``k`` is capped at ``n_candidates``.

    >>> uniform_positions(8, 4).tolist()
    [1, 3, 5, 7]
    """
    k = min(int(k), int(n_candidates))
    return np.floor((np.arange(k) + 0.5) * n_candidates / k).astype(np.int64)


def select(
    sampler: FrameSampler, sim: np.ndarray | None, budget: int, n_frames: int, seed: int
) -> Selection:
    """Inference: the sampler's choice of ``min(budget, n_frames)`` frames, sorted by time
    (``sim`` is dropped for a sampler that ignores it; ``seed`` feeds its ``rng``)."""
    rng = np.random.default_rng(seed)
    return sampler.select(sim if sampler.needs_similarity else None, budget, n_frames=n_frames, rng=rng)


def sampler_log_probs(
    sampler: torch.nn.Module, sims: Sequence[np.ndarray], max_queries: int, levels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame log-probabilities ``(B, T_pad)`` (float32, differentiable) and the frame mask.

    ``sampler`` is a :class:`~msjoe.sampling.unet.UNetSampler` or a DeepSpeed engine wrapping
    one (its forward returns logits); inputs are cast to the sampler's device and dtype (bf16
    under DeepSpeed on GPUs), the softmax is taken in float32.
    """
    import torch

    from msjoe.sampling.unet import prepare_inputs

    param = next(sampler.parameters())
    x, mask = prepare_inputs(list(sims), levels, max_queries)
    logits = sampler(x.to(param.device, dtype=param.dtype), mask.to(param.device))
    return torch.log_softmax(logits.float(), dim=-1), mask.to(param.device)


def draw_frames(
    logp: torch.Tensor, mask: torch.Tensor, k: int, seed: int
) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Training: seeded Gumbel-top-k draws of ``k`` frames per row, and each row's positions
    sorted by time.

    Returns the picks in draw order ``(B, k)`` (``-1`` where a video has fewer than ``k``
    candidates), for :func:`draw_log_prob`, and the time-sorted positions the MLLM is shown.
    """
    import torch

    from msjoe.sampling.draw import gumbel_topk, sort_by_time

    gen = torch.Generator().manual_seed(int(seed))
    idx = gumbel_topk(logp.detach().cpu(), k, mask.cpu(), generator=gen)
    ordered = sort_by_time(idx)
    positions = [row[row >= 0].numpy().astype(np.int64) for row in ordered]
    return idx.to(logp.device), positions


def draw_log_prob(logp: torch.Tensor, idx: torch.Tensor, kind: str = "sum") -> torch.Tensor:
    """Log-probability ``(B,)`` of each row's draw: ``"sum"`` (the paper's ``sum_k log p(x_k)``)
    or ``"plackett_luce"`` (the exact probability of the ordered draw)."""
    from msjoe.sampling.draw import plackett_luce_log_prob, sum_log_prob

    if kind == "sum":
        return sum_log_prob(logp, idx)
    if kind == "plackett_luce":
        return plackett_luce_log_prob(logp, idx)
    raise ValueError(f"log_prob must be 'sum' or 'plackett_luce', got {kind!r}")


# --------------------------------------------------------------------------------------------
# 4. answer turn


def answer_images(frames: Sequence[Any], answer_size: int | None) -> list[Any]:
    """Answer frames with at most ``answer_size**2`` pixels (None: native resolution)."""
    if answer_size is None:
        return list(frames)
    return [downscale(f, answer_size**2) for f in frames]


def answer_conversation(
    question: str, options: Sequence[str], frames: Sequence[Any], *, answer_size: int | None
) -> Conversation:
    """The answer turn's prompt on the selected frames (in temporal order)."""
    return build_answer_messages(question, options, answer_images(frames, answer_size))


@dataclass(frozen=True)
class AnswerTurn:
    """One answer turn: the option ``letter`` (None: the reply names none and it was not
    resolved), the raw ``text``, the generation ``result``, and ``scored``: True when the letter
    is not the reply's but the option :func:`resolve_answers` scored highest."""

    letter: str | None
    text: str
    result: GenerationResult | None = None
    scored: bool = False

    @property
    def ok(self) -> bool:
        """Whether the reply itself names an option (what the format reward and the parse rate count)."""
        return self.letter is not None and not self.scored


def parse_answer_turn(text: str, options: Sequence[str]) -> str | None:
    """The option letter a reply names, or None (:func:`~msjoe.mllm.parsing.parse_answer`).

    >>> parse_answer_turn("<answer>B</answer>", ["cat", "dog"])
    'B'
    >>> parse_answer_turn("<answer>E</answer>", ["cat", "dog"]) is None
    True
    """
    return parse_answer(text, len(options), options=list(options))


def answer_turns(
    mllm: TextGenerator,
    conversations: Sequence[Conversation],
    options: Sequence[Sequence[str]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    batch_size: int | None = None,
    seed: Seed = None,
    with_log_probs: bool = False,
) -> list[AnswerTurn]:
    """Answer turns, batched; each reply parsed to an option letter (or None)."""
    if len(conversations) != len(options):
        raise ValueError(f"{len(conversations)} conversations for {len(options)} option lists")
    results = generate(mllm, conversations, max_new_tokens=max_new_tokens, temperature=temperature,
                       batch_size=batch_size, seed=seed, with_log_probs=with_log_probs)
    return [AnswerTurn(parse_answer_turn(r.text, opts), r.text, r) for r, opts in zip(results, options, strict=True)]


_ANSWER_OPEN = re.compile(r"<answer>", re.IGNORECASE)


def answer_prefix(text: str) -> str:
    """The reply up to and including its first ``<answer>`` tag (one is added when it has none):
    what the MLLM said before committing to an option.

    >>> answer_prefix("Seen: a red star. <answer>a green star</answer>")
    'Seen: a red star. <answer>'
    >>> answer_prefix("Seen: a red star, a")
    'Seen: a red star, a <answer>'
    """
    if (tag := _ANSWER_OPEN.search(text)) is not None:
        return text[: tag.end()]
    return f"{text.rstrip()} <answer>".lstrip()


def score_options(
    mllm: CompletionScorer,
    conversations: Sequence[Conversation],
    prefixes: Sequence[str],
    options: Sequence[Sequence[str]],
    *,
    batch_size: int | None = None,
) -> list[str]:
    """The letter of the option the MLLM finds most likely after each prefix.

    Each option is scored as the log-probability of the whole completion
    ``prefix + option + "</answer>"`` and the end of the turn, summed over its tokens (the
    likelihood scoring multiple-choice evaluations such as lmms-eval use); the first of equal
    scores wins. Whole completions are compared, not the option's tokens alone, because a
    tokenizer may merge the tag's last character with the option's first. ``batch_size``
    bounds the completions scored per forward pass (at least one question's; None: all at once).
    """
    if not len(conversations) == len(prefixes) == len(options):
        raise ValueError(f"{len(conversations)} conversations, {len(prefixes)} prefixes, {len(options)} option lists")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    completions = [[f"{prefix}{str(option).strip()}</answer>" for option in opts]
                   for prefix, opts in zip(prefixes, options, strict=True)]
    chunks: list[list[int]] = []
    filled = 0  # completions in the last chunk
    for i, texts in enumerate(completions):
        if chunks and (batch_size is None or filled + len(texts) <= batch_size):
            chunks[-1].append(i)
            filled += len(texts)
        else:
            chunks.append([i])
            filled = len(texts)
    letters: list[str] = []
    for chunk in chunks:
        scores = mllm.score_completions([conversations[i] for i in chunk], [completions[i] for i in chunk])
        letters += [OPTION_LETTERS[max(range(len(row)), key=row.__getitem__)] for row in scores]
    return letters


def resolve_answers(
    mllm: CompletionScorer,
    conversations: Sequence[Conversation],
    options: Sequence[Sequence[str]],
    turns: Sequence[AnswerTurn],
    *,
    batch_size: int | None = None,
) -> list[AnswerTurn]:
    """Inference's answer: the option a reply names, else the one :func:`score_options` picks
    after the reply's own text up to the answer tag (``scored=True``).

    A small model sometimes answers with an event that is not among the options; counting that
    as wrong measures its wording, not what it saw. Its own likelihood over the options reads
    the same reply as a choice, and the turn keeps ``ok`` False so the parse rate still reports
    how often the reply named an option by itself. Replies that name one are left as they are.
    """
    if not len(conversations) == len(options) == len(turns):
        raise ValueError(f"{len(conversations)} conversations, {len(options)} option lists, {len(turns)} turns")
    todo = [i for i, turn in enumerate(turns) if turn.letter is None]
    letters = score_options(
        mllm, [conversations[i] for i in todo], [answer_prefix(turns[i].text) for i in todo],
        [options[i] for i in todo], batch_size=batch_size,
    )
    out = list(turns)
    for i, letter in zip(todo, letters, strict=True):
        out[i] = AnswerTurn(letter, turns[i].text, turns[i].result, scored=True)
    return out


def visual_tokens(mllm: MLLM, frames: Sequence[Any], max_pixels: int | None) -> int:
    """Visual tokens the MLLM spends on ``frames`` shown with at most ``max_pixels`` pixels."""
    processor = mllm.processor.image_processor
    merge = int(getattr(processor, "merge_size", 1)) ** 2
    total = 0
    for frame in frames:
        image = downscale(frame, max_pixels) if max_pixels else frame
        if isinstance(image, np.ndarray):
            height, width = image.shape[:2]
        else:
            width, height = image.size
        total += int(processor.get_number_of_image_patches(height, width)) // merge
    return total


# --------------------------------------------------------------------------------------------
# 5. scoring


def is_correct(predicted: str | None, answer: str) -> bool:
    """Whether a parsed option letter is the right one.

    Letters compare case-insensitively, ignoring surrounding whitespace. A failed parse
    (``None`` or blank) is wrong, never an error; a blank ground truth is a data error.

    >>> is_correct("B", "B")
    True
    >>> is_correct(" b", "B")
    True
    >>> is_correct("C", "B")
    False
    >>> is_correct(None, "B")
    False
    """
    if not answer or not answer.strip():
        raise ValueError("answer must be a non-empty option letter")
    if predicted is None or not predicted.strip():
        return False
    return predicted.strip().upper() == answer.strip().upper()


def score(
    query: QueryTurn,
    sim: np.ndarray | None,
    answer: AnswerTurn,
    truth: str,
    logit_scale: float,
    config: RewardConfig | None = None,
) -> RewardBreakdown:
    """The episode's reward ``r_acc + r_format + r_info`` (:func:`msjoe.rl.rewards.total_reward`).

    ``sim`` is the similarity of the queries used; a query turn that fell back to the question
    earns no information reward (its ``sim`` is not the policy's work and is ignored).
    """
    from msjoe.rl.rewards import RewardConfig, total_reward

    return total_reward(
        answer.letter, truth, query.ok, answer.ok, sim if query.ok else None, logit_scale,
        config if config is not None else RewardConfig(),
    )
