"""The MSJoE inference pipeline: one object from (video, question, options, budget) to an answer.

Steps (docs/design.md): candidate-frame CLIP features (cached by content hash) ->
``budget // 2`` low-resolution previews -> the MLLM's query turn (parsed; the question itself
is the fallback query, and the failure is counted) -> CLIP text features of the queries against
the frame features (similarity ``n_queries x T``) -> any registered frame sampler -> the answer
turn on the K selected frames -> the parsed option letter.

Which queries each sampler gets (our choice, the same in evaluation and serving):

* ``uniform`` ignores similarity, so the query turn and CLIP text encoding are skipped
  (``query_source="none"``): its cost is what a plain uniform baseline costs.
* ``clip_topk`` uses the question as its only query (``"question"``): the paper's
  "question-as-only-query" ablation.
* every other sampler (``bolt``, ``aks``, ``qframe``, ``msjoe``) uses the generated queries
  (``"generated"``), so the baselines are compared with MSJoE on the same queries and only the
  frame-selection rule differs.

A pipeline may be told otherwise (``queries=``): evaluation runs each query-driven baseline both
as published (the question) and with the generated queries, and a release records which of the
two it serves.

The building blocks (:meth:`Pipeline.video_features`, :meth:`Pipeline.query_conversation`,
:meth:`Pipeline.generate_queries`, :meth:`Pipeline.similarity`, :meth:`Pipeline.select`,
:meth:`Pipeline.answer_conversation`, :meth:`Pipeline.generate_answers`) are public so that
batch evaluation reuses the exact same code with batching and caching across configurations.
Each episode step is :mod:`msjoe.episode`'s, with this pipeline's models and settings; what is
the pipeline's own is the candidate-feature cache, frame decoding, timings and failure counts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from msjoe.config import from_mapping
from msjoe import episode
from msjoe.features import FeatureStore, VideoFeatures, feature_key
from msjoe.mllm.parsing import OPTION_LETTERS, QueryParse
from msjoe.mllm.prompts import Conversation
from msjoe.sampling.base import FrameSampler, Selection
from msjoe.video import candidate_indices, decode_frames, open_reader, sha256_file

if TYPE_CHECKING:
    from msjoe.clip.model import FrozenClip
    from msjoe.mllm.load import MLLM

__all__ = [
    "Answer",
    "FrameCache",
    "FrameSource",
    "Pipeline",
    "PipelineConfig",
    "Question",
    "QuestionState",
    "SelectedFrame",
    "ask_command",
    "load_sampler",
    "QUERY_MODES",
    "query_source",
]

log = logging.getLogger(__name__)

STAGES = ("features", "query", "similarity", "sampler", "decode", "answer", "total")


@dataclass(frozen=True)
class PipelineConfig:
    """Inference settings; ``fps`` / ``max_candidates`` must match the embed stage to reuse its cache.

    ``preview_size`` / ``answer_size``: frames are shown with at most ``size**2`` pixels
    (aspect ratio kept); ``answer_size=None`` shows answer frames at native resolution.
    ``batch_size``: conversations per MLLM ``generate`` call in batch use.
    """

    fps: float = 2.0
    max_candidates: int = 256
    n_queries: int = 4
    preview_size: int = 32
    answer_size: int | None = 64
    max_new_tokens: int = 64
    query_max_new_tokens: int = 64
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.fps <= 0 or self.max_candidates < 1:
            raise ValueError("fps must be > 0 and max_candidates >= 1")
        if self.n_queries < 1 or self.preview_size < 1 or self.batch_size < 1:
            raise ValueError("n_queries, preview_size and batch_size must be >= 1")
        if self.answer_size is not None and self.answer_size < 1:
            raise ValueError("answer_size must be None or >= 1")
        if self.max_new_tokens < 1 or self.query_max_new_tokens < 1:
            raise ValueError("max_new_tokens and query_max_new_tokens must be >= 1")

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> PipelineConfig:
        """Build from a params mapping; unknown keys fail loudly (a typo must not be ignored)."""
        return from_mapping(cls, values, "pipeline")


@dataclass(frozen=True)
class SelectedFrame:
    """A frame the MLLM saw: frame number in the video, its time (s), the sampler's weight."""

    index: int
    timestamp: float
    weight: float


@dataclass
class Answer:
    """Everything one question produced; ``to_dict`` is the service's / CLI's JSON reply."""

    #: always an option: a reply that names none is resolved by the MLLM's own option scores
    option: str
    option_index: int
    queries: list[str]
    query_parse_ok: bool
    frames: list[SelectedFrame]
    timings: dict[str, float]
    visual_tokens: int
    sampler: str = ""
    query_text: str = ""
    answer_text: str = ""
    #: True when ``answer_text`` names no option and ``option`` is the one the MLLM scored
    #: highest after it (:func:`msjoe.episode.resolve_answers`)
    option_scored: bool = False
    features_cached: bool = False
    #: ``details`` only: cosine rows (query x candidate) and the candidates' times (s)
    similarity: list[list[float]] | None = None
    candidate_timestamps: list[float] | None = None
    #: ``details`` only: the frames the MLLM saw (RGB arrays; not part of the JSON reply)
    images: list[np.ndarray] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "images"}
        out["frames"] = [asdict(frame) for frame in self.frames]
        return {k: v for k, v in out.items() if v is not None or k not in ("similarity", "candidate_timestamps")}


#: Where a sampler's similarity rows come from: no queries, the question, the generated queries.
QUERY_MODES = ("none", "question", "generated")


def query_source(sampler: FrameSampler, override: str | None = None) -> str:
    """Where ``sampler``'s similarity rows come from: ``override`` if given, else the default of
    the module docstring. A sampler that ignores similarity takes only ``"none"``, one that
    reads it ``"question"`` or ``"generated"``; anything else is an error."""
    if override is None:
        if not sampler.needs_similarity:
            return "none"
        return "question" if sampler.name == "clip_topk" else "generated"
    mode = str(override)
    if mode not in QUERY_MODES:
        raise ValueError(f"queries must be one of {QUERY_MODES}, got {mode!r}")
    if sampler.needs_similarity == (mode == "none"):
        need = "needs" if sampler.needs_similarity else "ignores"
        raise ValueError(f"{sampler.name} {need} similarity, so queries: {mode} is meaningless")
    return mode


class FrameCache:
    """Decoded frames shared across requests, keyed by (video content hash, frame number), least
    recently used out first above ``max_bytes``.

    Why: opening a video and seeking costs more than the models on small inputs (demo: ~20 ms to
    open a reader, ~15 ms for four frames), and people ask several questions about one video,
    whose previews are the same frames for the same budget. Thread-safe; arrays are shared, so
    callers must not write into them.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._frames: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, sha256: str, index: int) -> np.ndarray | None:
        with self._lock:
            frame = self._frames.get((sha256, index))
            if frame is None:
                self.misses += 1
                return None
            self._frames.move_to_end((sha256, index))
            self.hits += 1
            return frame

    def put(self, sha256: str, index: int, frame: np.ndarray) -> None:
        if frame.nbytes > self.max_bytes:
            return
        with self._lock:
            if (sha256, index) in self._frames:
                return
            self._frames[(sha256, index)] = frame
            self._bytes += frame.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._frames.popitem(last=False)
                self._bytes -= old.nbytes

    def usage(self) -> dict[str, int]:
        with self._lock:
            return {"frames": len(self._frames), "bytes": self._bytes, "hits": self.hits, "misses": self.misses}


class FrameSource:
    """Decoded frames of one video, decoded at most once per index.

    Evaluation shows the same frames to many samplers and budgets; decoding each once keeps
    the decoder out of the hot loop. Frames are kept at native resolution (the pipeline
    downscales per turn). With a :class:`FrameCache` and the video's content hash, frames
    decoded by earlier requests are reused and the video is opened only when one is missing.
    """

    def __init__(self, path: Path, cache: FrameCache | None = None, sha256: str | None = None) -> None:
        self.path = Path(path)
        self._reader: Any = None
        self._frames: dict[int, np.ndarray] = {}
        self._cache = cache if sha256 is not None else None
        self._sha = sha256 or ""

    def get(self, indices: Sequence[int]) -> list[np.ndarray]:
        wanted = sorted({int(i) for i in indices} - set(self._frames))
        missing = []
        for i in wanted:
            frame = self._cache.get(self._sha, i) if self._cache is not None else None
            if frame is None:
                missing.append(i)
            else:
                self._frames[i] = frame
        if missing:
            if self._reader is None:
                self._reader = open_reader(self.path)
            for i, frame in zip(missing, decode_frames(self._reader, np.asarray(missing)), strict=True):
                self._frames[i] = frame
                if self._cache is not None:
                    self._cache.put(self._sha, i, frame)
        return [self._frames[int(i)] for i in indices]


class Pipeline:
    """MSJoE inference with frozen CLIP, an MLLM and one frame sampler.

    Args:
        clip: frozen CLIP (frame and text features).
        mllm: the MLLM that writes queries and answers.
        sampler: any :class:`~msjoe.sampling.base.FrameSampler` (``build_sampler(name, ...)``).
        feature_store: cache of candidate-frame features (the embed stage's directory); None
            computes features on every call.
        cfg: inference settings.
        queries: where the sampler's similarity rows come from (:data:`QUERY_MODES`); None:
            :func:`query_source`'s default for the sampler.
    """

    def __init__(
        self,
        clip: FrozenClip,
        mllm: MLLM,
        sampler: FrameSampler,
        feature_store: FeatureStore | None,
        cfg: PipelineConfig | None = None,
        queries: str | None = None,
    ) -> None:
        self.clip = clip
        self.mllm = mllm
        self.sampler = sampler
        self.queries = query_source(sampler, queries)
        self.feature_store = feature_store
        self.cfg = cfg or PipelineConfig()
        self.query_failures = 0
        self.answer_failures = 0
        #: decoded frames shared across questions (serving sets one; None decodes per question)
        self.frame_cache: FrameCache | None = None

    # ---------------------------------------------------------------- candidate features
    def feature_key(self, sha256: str) -> str:
        return feature_key(sha256, self.clip.identity, self.cfg.fps, self.cfg.max_candidates)

    def video_features(self, video_path: Path, sha256: str | None = None) -> tuple[VideoFeatures, bool]:
        """Candidate-frame features of a video and whether they came from the cache.

        Reused when the store holds the key (content hash, CLIP identity, fps, cap), else
        decoded, encoded and saved, so a video seen before (by embed, evaluation or the
        service) costs no decoding.
        """
        sha = sha256 or sha256_file(Path(video_path))
        key = self.feature_key(sha)
        if self.feature_store is not None and self.feature_store.has(key):
            return self.feature_store.load(key), True
        reader = open_reader(Path(video_path))
        video_fps = float(reader.get_avg_fps())
        indices = candidate_indices(len(reader), video_fps, self.cfg.fps, self.cfg.max_candidates)
        frames = decode_frames(reader, indices)
        if len(frames) == 0:
            raise ValueError(f"{video_path}: no candidate frames")
        features = np.concatenate([self.clip.encode_frames(frames[s : s + 64]) for s in range(0, len(frames), 64)])
        value = VideoFeatures(features.astype(np.float32), indices / video_fps, indices.astype(np.int64))
        if self.feature_store is not None:
            self.feature_store.save(key, value)
        return value, False

    # ---------------------------------------------------------------- query turn
    @staticmethod
    def preview_positions(n_candidates: int, budget: int) -> np.ndarray:
        """Candidate positions of the ``budget // 2`` previews (centres of equal segments)."""
        return episode.preview_positions(n_candidates, budget)

    def query_conversation(
        self, question: str, options: Sequence[str], previews: Sequence[np.ndarray]
    ) -> Conversation:
        return episode.query_conversation(
            question, options, previews, n_queries=self.cfg.n_queries, preview_size=self.cfg.preview_size
        )

    def generate_queries(
        self, conversations: Sequence[Conversation], questions: Sequence[str]
    ) -> list[tuple[QueryParse, str]]:
        """Query turns, batched (greedy); an unparsable reply falls back to the question (counted)."""
        turns = episode.query_turns(
            self.mllm, conversations, questions, n_queries=self.cfg.n_queries,
            max_new_tokens=self.cfg.query_max_new_tokens, batch_size=self.cfg.batch_size,
        )
        self.query_failures += episode.count_fallbacks(turns)
        return [(turn.parsed, turn.text) for turn in turns]

    # ---------------------------------------------------------------- similarity + sampler
    def similarity(self, queries: Sequence[str], features: np.ndarray) -> np.ndarray:
        """Cosine matrix ``(n_queries, T)`` between CLIP text features and frame features."""
        return episode.similarity(self.clip, queries, features)

    def select(
        self, sampler: FrameSampler, sim: np.ndarray | None, budget: int, n_frames: int, seed: int | None = None
    ) -> Selection:
        return episode.select(sampler, sim, budget, n_frames, self.cfg.seed if seed is None else seed)

    @staticmethod
    def selected_frames(selection: Selection, features: VideoFeatures) -> list[SelectedFrame]:
        return [
            SelectedFrame(int(features.indices[c]), float(features.timestamps[c]), float(w))
            for c, w in zip(selection.indices, selection.weights, strict=True)
        ]

    # ---------------------------------------------------------------- answer turn
    def answer_images(self, frames: Sequence[np.ndarray]) -> list[Any]:
        return episode.answer_images(frames, self.cfg.answer_size)

    def answer_conversation(
        self, question: str, options: Sequence[str], frames: Sequence[np.ndarray]
    ) -> Conversation:
        return episode.answer_conversation(question, options, frames, answer_size=self.cfg.answer_size)

    def generate_answers(
        self, conversations: Sequence[Conversation], options: Sequence[Sequence[str]]
    ) -> list[episode.AnswerTurn]:
        """Answer turns, batched (greedy), each resolved to an option
        (:func:`msjoe.episode.resolve_answers`); ``answer_failures`` counts the replies that
        named no option themselves."""
        turns = episode.answer_turns(
            self.mllm, conversations, options, max_new_tokens=self.cfg.max_new_tokens,
            batch_size=self.cfg.batch_size,
        )
        turns = episode.resolve_answers(self.mllm, conversations, options, turns, batch_size=self.cfg.batch_size)
        self.answer_failures += sum(not turn.ok for turn in turns)
        return turns

    def visual_tokens(self, frames: Sequence[Any], max_pixels: int | None) -> int:
        """Visual tokens the MLLM spends on ``frames`` shown with at most ``max_pixels`` pixels."""
        return episode.visual_tokens(self.mllm, frames, max_pixels)

    # ---------------------------------------------------------------- questions
    def answer(
        self,
        video_path: Path,
        question: str,
        options: Sequence[str],
        budget: int,
        sha256: str | None = None,
    ) -> Answer:
        """Answer one multiple-choice question about one video with ``budget`` frames."""
        (result,) = self.answer_many([Question(Path(video_path), question, list(options), budget, sha256)])
        if isinstance(result, Exception):
            raise result
        return result

    def answer_many(self, questions: Sequence[Question], details: bool = False) -> list[Answer | Exception]:
        """Answer several questions as one batch: one query-turn generation and one answer-turn
        generation for all of them (in chunks of ``cfg.batch_size``).

        The steps are public so that a server can run them from different threads: per question
        :meth:`prepare` -> (batched) :meth:`query_turns` -> per question :meth:`choose_frames`
        -> (batched) :meth:`answer_turns` -> :meth:`finish`. A question that fails (bad options
        or budget, an undecodable video) gets its exception in its slot; the others go on.
        Similarity, sampling and decoding run per question, so the frames chosen from given
        queries are bit-identical whatever the batch; batched generations agree with unbatched
        ones token for token unless a greedy step is a near-tie within float rounding.
        """
        results: list[Answer | Exception | None] = [None] * len(questions)
        states: dict[int, QuestionState] = {}
        for i, q in enumerate(questions):
            try:
                states[i] = self.prepare(q)
            except Exception as exc:  # noqa: BLE001 - the slot carries it to its caller
                results[i] = exc
        self.query_turns(list(states.values()))
        for i in list(states):
            try:
                self.choose_frames(states[i])
            except Exception as exc:  # noqa: BLE001
                results[i] = exc
                del states[i]
        self.answer_turns(list(states.values()))
        for i, state in states.items():
            results[i] = self.finish(state, details)
        return [r if r is not None else RuntimeError("no result") for r in results]

    def prepare(self, question: Question) -> QuestionState:
        """Candidate features, and for generated queries the previews and the query-turn prompt."""
        _check_question(question)
        state = QuestionState(question, source=FrameSource(question.video, self.frame_cache, question.sha256))
        started = time.perf_counter()
        state.features, state.features_cached = self.video_features(question.video, question.sha256)
        if len(state.features.indices) == 0:
            raise ValueError(f"{question.video}: no candidate frames")
        state.timings["features"] = time.perf_counter() - started
        state.mode = self.queries
        if state.mode == "generated":
            tick = time.perf_counter()
            positions = self.preview_positions(len(state.features.indices), int(question.budget))
            previews = state.source.get(state.features.indices[positions])
            state.query_prompt = self.query_conversation(question.question, question.options, previews)
            state.visual_tokens = self.visual_tokens(previews, self.cfg.preview_size**2)
            state.timings["decode"] += time.perf_counter() - tick
        elif state.mode == "question":
            state.queries = [question.question.strip()]
        return state

    def query_turns(self, states: Sequence[QuestionState]) -> None:
        """The query turns of every state that has a query prompt, as one batched generation."""
        todo = [s for s in states if s.query_prompt is not None]
        if not todo:
            return
        tick = time.perf_counter()
        turns = self.generate_queries([s.query_prompt for s in todo], [s.question.question for s in todo])
        elapsed = time.perf_counter() - tick
        for state, (parsed, text) in zip(todo, turns, strict=True):
            state.queries, state.query_parse_ok, state.query_text = parsed.queries, parsed.ok, text
            state.timings["query"] = elapsed
            state.batch_sizes.append(len(todo))

    def choose_frames(self, state: QuestionState) -> None:
        """Similarity of the queries, the sampler's frames, their decoding and the answer prompt."""
        q, features = state.question, state.features
        if state.queries:
            tick = time.perf_counter()
            state.similarity = self.similarity(state.queries, features.features)
            state.timings["similarity"] = time.perf_counter() - tick
        tick = time.perf_counter()
        state.selection = self.select(self.sampler, state.similarity, int(q.budget), len(features.indices))
        state.timings["sampler"] = time.perf_counter() - tick
        tick = time.perf_counter()
        state.frames = state.source.get(features.indices[state.selection.indices])
        state.answer_prompt = self.answer_conversation(q.question, q.options, state.frames)
        state.timings["decode"] += time.perf_counter() - tick

    def answer_turns(self, states: Sequence[QuestionState]) -> None:
        """The answer turns of ``states``, as one batched generation."""
        if not states:
            return
        tick = time.perf_counter()
        replies = self.generate_answers([s.answer_prompt for s in states], [s.question.options for s in states])
        elapsed = time.perf_counter() - tick
        for state, turn in zip(states, replies, strict=True):
            state.letter, state.answer_text, state.option_scored = turn.letter, turn.text, turn.scored
            state.timings["answer"] = elapsed
            state.batch_sizes.append(len(states))

    def finish(self, state: QuestionState, details: bool = False) -> Answer:
        """The :class:`Answer` of a state whose answer turn ran."""
        if state.letter is None:
            raise RuntimeError(f"question {state.question.question!r}: finish() before its answer turn")
        state.timings["total"] = time.perf_counter() - state.started
        answer_pixels = self.cfg.answer_size**2 if self.cfg.answer_size else None
        features = state.features
        return Answer(
            option=state.letter,
            option_index=OPTION_LETTERS.index(state.letter),
            queries=state.queries,
            query_parse_ok=state.query_parse_ok,
            frames=self.selected_frames(state.selection, features),
            timings={k: round(v, 6) for k, v in state.timings.items()},
            visual_tokens=state.visual_tokens + self.visual_tokens(state.frames, answer_pixels),
            sampler=self.sampler.name,
            query_text=state.query_text,
            answer_text=state.answer_text,
            option_scored=state.option_scored,
            features_cached=state.features_cached,
            similarity=np.round(state.similarity, 4).tolist() if details and state.similarity is not None else None,
            candidate_timestamps=np.round(features.timestamps, 3).tolist() if details else None,
            images=list(state.frames) if details else [],
        )


@dataclass
class QuestionState:
    """One question on its way through :meth:`Pipeline.answer_many`'s steps (mutable).

    ``timings`` holds this question's stage seconds: the batched turns (``query``, ``answer``)
    count their whole batch; ``batch_sizes`` records how many questions shared each turn.
    """

    question: Question
    source: FrameSource
    mode: str = "none"
    features: Any = None
    features_cached: bool = False
    query_prompt: Conversation | None = None
    queries: list[str] = field(default_factory=list)
    query_parse_ok: bool = True
    query_text: str = ""
    similarity: np.ndarray | None = None
    selection: Selection | None = None
    frames: list[np.ndarray] = field(default_factory=list)
    answer_prompt: Conversation | None = None
    letter: str | None = None
    answer_text: str = ""
    option_scored: bool = False
    visual_tokens: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=lambda: {stage: 0.0 for stage in STAGES})


@dataclass(frozen=True)
class Question:
    """One question for :meth:`Pipeline.answer_many`: a video, the question, its options, the
    frame budget, and the video's content hash when the caller already has it."""

    video: Path
    question: str
    options: Sequence[str]
    budget: int
    sha256: str | None = None


def _check_question(q: Question) -> None:
    if not 1 <= len(q.options) <= len(OPTION_LETTERS):
        raise ValueError(f"expected 1 to {len(OPTION_LETTERS)} options, got {len(q.options)}")
    if isinstance(q.budget, bool) or int(q.budget) != q.budget or q.budget < 1:
        raise ValueError(f"budget must be a positive integer, got {q.budget!r}")


def load_sampler(name: str, params: dict[str, Any] | None = None) -> FrameSampler:
    """A sampler by registry name; for ``msjoe`` a checkpoint (``checkpoint: path``) or a
    seeded fresh network (``seed``, ``config: tiny | {UNetConfig fields}``) is built first.

    The checkpoint format is :func:`msjoe.sampling.unet.new_unet`'s.
    """
    from msjoe.sampling.registry import build_sampler

    params = dict(params or {})
    if name != "msjoe":
        return build_sampler(name, **params)
    from msjoe.sampling.unet import new_unet

    model = new_unet(params.pop("config", "tiny"), int(params.pop("seed", 0)), params.pop("checkpoint", None))
    model.eval()
    return build_sampler("msjoe", model=model, **params)


def ask_command(
    video: Path,
    question: str,
    options: Sequence[str],
    *,
    clip_dir: Path = Path("models/clip"),
    mllm_dir: Path = Path("models/mllm"),
    features_dir: Path | None = Path("data/features"),
    sampler: str = "msjoe",
    sampler_params: dict[str, Any] | None = None,
    budget: int = 8,
    cfg: PipelineConfig | None = None,
) -> dict[str, Any]:
    """What ``msjoe ask VIDEO QUESTION -o A -o B ... [--budget K]`` runs; returns the JSON reply.

    Loads the recorded CLIP and MLLM (``clip.json`` / ``mllm.json``), builds the sampler and
    answers one question. Kept here so the CLI stays a thin argument parser.
    """
    from msjoe.clip.model import load_clip
    from msjoe.mllm.manifest import load_prepared_mllm

    pipeline = Pipeline(
        load_clip(Path(clip_dir)),
        load_prepared_mllm(Path(mllm_dir)),
        load_sampler(sampler, sampler_params),
        FeatureStore(Path(features_dir)) if features_dir is not None else None,
        cfg,
    )
    return pipeline.answer(Path(video), question, list(options), budget).to_dict()

