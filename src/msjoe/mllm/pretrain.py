"""The base MLLM: the ``pretrain_mllm`` stage's record of it, and the demo's supervised recipe.

The stage (:func:`prepare_mllm`) only *records* which weights the pipeline starts from, a hub
id (paper scale: ``Qwen/Qwen2.5-VL-7B-Instruct``) or a local checkpoint directory (the demo's
``weights/demo-mllm``), with a content identity; nothing is trained or downloaded there, and
later stages load it through :func:`msjoe.mllm.manifest.load_prepared_mllm`, the one path that
also loads the 7B checkpoint.

The demo's base model is made once, outside the DAG, by :mod:`msjoe.mllm.demo_base`; this
module holds the part of that recipe that teaches the two MSJoE turns
(:func:`train_demo_mllm`), with the example builders it uses:

1. **Captioning** (one frame, a short prompt): frame -> its ground-truth caption
   (``"a red star on a navy background"``): the language model learns to name what the
   (already trained) vision tower sees.
2. **Query turn alone**: writing the question's shape or event as a query is a copying skill
   that appears after a few hundred dedicated steps; diluted in the mixed phase it often did
   not appear within the budget.
3. **Both MSJoE turns**, mixed in one supervised run:

   - *Query turn*: question + options + ``K/2`` uniformly spaced low-resolution previews ->
     the world's reference queries, one ``<query>...</query>`` line each.
   - *Answer turn*: frame sets with one frame of every target event plus fillers (other
     frames, part of them other events' frames: the distractors a query-driven sampler
     brings) and sets without the evidence, sorted by time. The reply lists the events seen
     and answers what they imply (:mod:`msjoe.world.reasoning`): the right option when the
     evidence is shown, what was seen otherwise (a count too low, ...), a uniformly random
     option when the seen events imply none. So the model is right when it is shown the
     evidence and no better than what it saw when it is not: frame choice is what matters,
     which is what the sampler's reward and the difficulty scores rely on.

   Answer-turn examples use several frame counts (``train_frame_counts``, e.g. 2, 3, 5, 8):
   the small sets are cheaper and give a denser signal, and the model still sees K.

Answer format (``answer_format``): ``"option"`` (default) writes the chosen option's text,
``<answer>a red square</answer>``, which :func:`msjoe.mllm.parsing.parse_answer` maps to its
letter when given the options; ``"letter"`` writes ``<answer>B</answer>`` as the prompt asks.
Measured on 2 CPU cores, the tiny model does not learn to bind an option's content to its
letter within minutes (an associative-recall circuit), while the option's text is mostly what
it perceives, so the demo model answers with the text and the pipeline parses with the options
(the 7B model's letters parse the same way).

With ``describe`` (default) the reply first lists the events visible in the frames
(``Seen: a green star, a red square. <answer>...``): a dense, checkable perception target on
every answer example; replies are then longer (:attr:`MLLMPretrainConfig.answer_max_new_tokens`).

:func:`evaluate_mllm` measures, on an EVAL split and at ``k_frames``: answer accuracy with
evidence frames (constructed as in training, fixed seed), with uniform frames and with
evidence-free frames, and the query turn's parse rate and exact match with the reference
queries.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from msjoe.config import from_mapping
from msjoe.mllm.build import TinyMLLMConfig
from msjoe.mllm.manifest import MLLMManifest, identity_for, write_manifest
from msjoe.mllm.parsing import OPTION_LETTERS, parse_answer, parse_queries
from msjoe.mllm.prompts import DEFAULT_SYSTEM_PROMPT, Conversation, build_answer_messages, build_query_messages
from msjoe.mllm.sft import SFTConfig, SFTExample, supervised_finetune
from msjoe.world.events import EVENTS_FILE, VideoEvent, load_events, shown_events
from msjoe.world.reasoning import implied_option

if TYPE_CHECKING:
    from msjoe.mllm.load import MLLM

__all__ = [
    "ANSWER_FORMATS",
    "CAPTION_PROMPT",
    "AnswerExample",
    "MLLMPretrainConfig",
    "WorldQuestion",
    "WorldVideos",
    "answer_examples",
    "answer_reply",
    "build_corpus",
    "caption_examples",
    "evaluate_mllm",
    "evaluation_frame_sets",
    "event_runs",
    "extra_train_questions",
    "frame_set",
    "load_world_questions",
    "prepare_mllm",
    "query_examples",
    "query_target",
    "train_demo_mllm",
    "uniform_frame_set",
]

logger = logging.getLogger(__name__)

CAPTION_PROMPT = "Describe this frame."
ANSWER_FORMATS = ("option", "letter")
_SEEN_NOTHING = "nothing"


# --------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class MLLMPretrainConfig:
    """Demo pre-training settings (ignored at paper scale, where nothing is trained).

    Frames: the answer turn sees ``k_frames`` frames of at most ``frame_size``² pixels, the
    query turn ``k_frames // 2`` previews of at most ``preview_size``². ``train_frame_counts``:
    frame counts of the answer-turn training examples (None: about K/4, 2K/5, 3K/5 and K).

    Examples per training question: ``evidence_sets`` answer-turn sets with the evidence
    (spread over the frame counts), ``evidence_sets * no_evidence_ratio`` without (random
    option), ``query_repeats`` query-turn examples. ``distractor_event_fraction``: share of
    filler frames drawn from other events rather than from any other frame.
    ``extra_questions``: further question draws per training video from the world's own
    generator (:func:`extra_train_questions`).

    Phases (0 steps skips one): ``caption_steps`` steps of single-frame captioning (batch
    ``caption_batch_size``, ``caption_frames_per_video`` frames per training video,
    ``caption_event_fraction`` of them showing an event); ``query_steps`` steps of the query
    turn alone (batch ``query_batch_size``); then ``sft`` on both turns mixed; then
    ``second_pass_steps`` steps of a second pass over both turns mixed (``sft``'s batch and
    rate, a fresh warmup and cosine schedule): reading the answer off a list of several seen
    events is the slowest skill and kept improving after a restart of the rate (the demo
    base: 1200 steps of it gave 0.375 accuracy on evidence frames of the pre-training world's
    held-out questions, 5000 steps 0.48). (A pass over
    the answer turn alone was tried: it made the model forget the query turn.) A later phase
    of text-only answer turns, with the ``Seen:`` list given and only the answer after it
    scored, was also tried and removed: from the 1200-step model, 2000 steps of batch 8 lowered
    accuracy on evidence frames of the pre-training world's held-out questions from 0.375 to
    0.315; 1500 steps of batch 64 of text-only examples alone raised the reading of a given
    list from 0.31 to 0.51 but made every reply end at once; 1000 steps of batch 64 mixed with
    both turns' image examples reached 0.39 (list exact 0.32, reading 0.40): within noise.

    ``eval_questions``: cap on evaluated EVAL questions (None: all; 0: skip evaluation).
    """

    model: TinyMLLMConfig = field(default_factory=TinyMLLMConfig)
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(learning_rate=2e-3, batch_size=8, max_steps=800))
    k_frames: int = 8
    train_frame_counts: tuple[int, ...] | None = None
    n_queries: int = 4
    frame_size: int = 64
    preview_size: int = 32
    answer_format: str = "option"
    describe: bool = True
    evidence_sets: int = 4
    no_evidence_ratio: float = 0.25
    distractor_event_fraction: float = 0.0
    query_repeats: int = 1
    extra_questions: int = 4
    caption_steps: int = 200
    caption_batch_size: int = 16
    caption_frames_per_video: int = 16
    caption_event_fraction: float = 0.75
    query_steps: int = 400
    query_batch_size: int = 16
    second_pass_steps: int = 0
    eval_questions: int | None = None
    eval_batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.train_frame_counts is not None and not isinstance(self.train_frame_counts, tuple):
            object.__setattr__(self, "train_frame_counts", tuple(int(k) for k in self.train_frame_counts))
        if self.k_frames < 2:
            raise ValueError("k_frames must be >= 2 (the query turn sees k_frames // 2 previews)")
        if self.train_frame_counts is not None and (
            not self.train_frame_counts or min(self.train_frame_counts) < 1
        ):
            raise ValueError("train_frame_counts must be positive frame counts")
        if self.n_queries < 1 or min(self.evidence_sets, self.query_repeats, self.extra_questions) < 0:
            raise ValueError("n_queries must be >= 1; evidence_sets, query_repeats, extra_questions >= 0")
        if self.frame_size < 16 or self.preview_size < 16:
            raise ValueError("frame_size and preview_size must be >= 16 pixels")
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {self.answer_format!r}")
        if self.no_evidence_ratio < 0 or not 0.0 <= self.distractor_event_fraction <= 1.0:
            raise ValueError("no_evidence_ratio must be >= 0 and distractor_event_fraction in [0, 1]")
        if min(self.caption_steps, self.query_steps, self.caption_frames_per_video) < 0:
            raise ValueError("caption_steps, query_steps and caption_frames_per_video must be >= 0")
        if min(self.caption_batch_size, self.query_batch_size) < 1:
            raise ValueError("caption_batch_size and query_batch_size must be >= 1")
        if not 0.0 <= self.caption_event_fraction <= 1.0:
            raise ValueError("caption_event_fraction must be in [0, 1]")
        if self.eval_batch_size < 1:
            raise ValueError("eval_batch_size must be >= 1")

    @property
    def n_preview(self) -> int:
        """Preview frames of the query turn (K/2, as in the paper)."""
        return self.k_frames // 2

    @property
    def frame_counts(self) -> tuple[int, ...]:
        """Frame counts of the answer-turn training examples.

        >>> MLLMPretrainConfig(k_frames=8).frame_counts
        (2, 3, 5, 8)
        """
        if self.train_frame_counts is not None:
            return tuple(sorted(set(self.train_frame_counts)))
        k = self.k_frames
        return tuple(sorted({max(2, round(k * f)) for f in (0.25, 0.4, 0.6)} | {k}))

    @property
    def answer_max_new_tokens(self) -> int:
        """A generation budget that fits the trained answer reply at ``k_frames`` frames."""
        return 16 + (6 * self.k_frames if self.describe else 0)

    @classmethod
    def from_mapping(cls, params: dict[str, Any]) -> MLLMPretrainConfig:
        """Build from a params.yaml section; nested ``model`` / ``sft`` mappings become their
        dataclasses, unknown keys are an error (a typo must not fall back to a default)."""
        def model(value: Any) -> Any:
            return from_mapping(TinyMLLMConfig, value, "model") if isinstance(value, dict) else value

        def sft(value: Any) -> Any:
            return from_mapping(SFTConfig, {**asdict(cls().sft), **value}, "sft") if isinstance(value, dict) else value

        return from_mapping(cls, params, "mllm pre-training", nested={"model": model, "sft": sft})


# --------------------------------------------------------------------------------------------
# world data


@dataclass(frozen=True)
class WorldQuestion:
    """A QA row joined with its annotation (reference queries, evidence frame indices)."""

    qid: str
    video: str
    question: str
    options: tuple[str, ...]
    answer: str
    category: str
    evidence_frames: tuple[int, ...]
    reference_queries: tuple[str, ...]
    target_captions: tuple[str, ...] = ()

    @property
    def answer_text(self) -> str:
        """The text of the correct option."""
        return self.options[OPTION_LETTERS.index(self.answer)]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_world_questions(world_dir: Path, split: str) -> list[WorldQuestion]:
    """Questions of one split of the demo world, in file order, with their annotations."""
    annotations = {row["qid"]: row for row in _jsonl(world_dir / "annotations.jsonl")}
    questions = []
    for row in _jsonl(world_dir / "qa.jsonl"):
        if row.get("split") != split:
            continue
        note = annotations.get(row["qid"])
        if note is None:
            raise ValueError(f"question {row['qid']} has no annotation in {world_dir / 'annotations.jsonl'}")
        questions.append(
            WorldQuestion(
                qid=row["qid"],
                video=row["video"],
                question=row["question"],
                options=tuple(row["options"]),
                answer=row["answer"],
                category=row.get("category", ""),
                evidence_frames=tuple(int(f) for f in note["evidence_frames"]),
                reference_queries=tuple(note["reference_queries"]),
                target_captions=tuple(note.get("target_captions", ())),
            )
        )
    return questions


def extra_train_questions(world_dir: Path, draws: int, seed: int, split: str = "train") -> list[WorldQuestion]:
    """More questions about the videos of ``split``, posed by the world's own generator.

    The generator (:func:`msjoe.world.questions.make_questions`) only needs each video's
    events, which ``events.jsonl`` records, so every draw yields questions of the same families,
    wording and ground truth (evidence, reference queries) as the split's own, about the same
    videos: more supervision without any other split's data. Draw ``d`` of a video is seeded
    by ``(seed, video, d)``; qids get a ``_x{d}`` suffix.
    """
    import zlib

    from msjoe.world.config import FAMILIES
    from msjoe.world.questions import make_questions
    from msjoe.world.scene import Event, VideoSpec

    if draws <= 0:
        return []
    own = load_world_questions(world_dir, split)
    paths = {Path(q.video).stem: q.video for q in own}
    families = tuple(f for f in FAMILIES if f in {q.category for q in own})
    out: list[WorldQuestion] = []
    for row in _jsonl(world_dir / EVENTS_FILE):
        vid = row["video_id"]
        if row.get("split") != split or vid not in paths:
            continue
        events = tuple(
            Event(e["shape"], e["colour"], int(e["start_frame"]), int(e["end_frame"]), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
            for e in row["events"]
        )
        last = max((e.end_frame for e in events), default=0)
        spec = VideoSpec(vid, split, 0, last + 1, 1.0, 0, (), events, 0)
        for d in range(draws):
            rng = np.random.default_rng([seed, zlib.crc32(vid.encode()), d])
            for q in make_questions(spec, families, rng):
                note = q.annotation_record()
                out.append(
                    WorldQuestion(
                        qid=f"{q.qid}_x{d}",
                        video=paths[vid],
                        question=q.question,
                        options=tuple(q.options),
                        answer=q.answer,
                        category=q.family,
                        evidence_frames=tuple(note["evidence_frames"]),
                        reference_queries=tuple(note["reference_queries"]),
                        target_captions=tuple(note["target_captions"]),
                    )
                )
    return out


def build_corpus(world_dir: Path, split: str = "train") -> list[str]:
    """The world's texts the tokenizer learns: questions, options, captions, queries.

    Only ``split`` is read (the training split by default) plus the world's whole canonical
    vocabulary (every shape/colour/background phrase), which covers every other split's
    wording without reading its questions.
    """
    from msjoe.world.vocab import BACKGROUNDS, COLOURS, SHAPES, describe, frame_caption, plural, shape_query

    texts: list[str] = []
    for q in load_world_questions(world_dir, split):
        texts += [q.question, *q.options, *q.reference_queries, *q.target_captions]
    for path in sorted((world_dir / "frames").glob(f"{split}_*.jsonl")):
        texts += sorted({row["caption"] for row in _jsonl(path)})
    texts += [describe(s, c) for s in SHAPES for c in COLOURS]
    texts += [shape_query(s) for s in SHAPES] + [plural(s) for s in SHAPES]
    texts += [frame_caption(b) for b in BACKGROUNDS]
    texts += [CAPTION_PROMPT, answer_reply("a shape", [])]
    return list(dict.fromkeys(texts))


class WorldVideos:
    """The world's videos: frames decoded once, and their annotated events.

    The demo videos are small (240 frames of 64x64), so a whole video is decoded at once with
    the project's decoder (:mod:`msjoe.video`) and kept for every example drawn from it;
    frames are resized per example (:func:`msjoe.mllm.prompts.downscale`), exactly as the
    pipeline resizes the frames it shows the model.
    """

    def __init__(self, world_dir: Path) -> None:
        self.world_dir = Path(world_dir)
        self._frames: dict[str, np.ndarray] = {}
        self._events = load_events(self.world_dir)

    def frames(self, video: str) -> np.ndarray:
        """All frames of ``video`` (a path relative to the world), ``(T, H, W, 3)`` uint8."""
        if video not in self._frames:
            from msjoe.video import decode_frames, open_reader, resolve_video

            reader = open_reader(resolve_video(self.world_dir, video))
            self._frames[video] = decode_frames(reader, np.arange(len(reader)))
        return self._frames[video]

    def events(self, video: str) -> list[VideoEvent]:
        """Annotated events of ``video``, in time order (empty when none are annotated)."""
        return self._events.get(Path(video).stem, [])

    def event_frames(self, video: str) -> np.ndarray:
        """Indices of every frame of ``video`` that shows an event."""
        frames = sorted({f for e in self.events(video) for f in range(e.start, e.end + 1)})
        return np.array(frames, dtype=np.int64)

    def seen(self, video: str, indices: Iterable[int]) -> list[str]:
        """Captions of the events visible in the frames ``indices``, each once, in time order."""
        return shown_events(self.events(video), indices)


# --------------------------------------------------------------------------------------------
# frame sets


def event_runs(frames: Iterable[int]) -> list[list[int]]:
    """Split sorted frame indices into runs of consecutive frames (one run per event).

    >>> event_runs([5, 6, 7, 20, 21, 40])
    [[5, 6, 7], [20, 21], [40]]
    """
    runs: list[list[int]] = []
    for f in sorted(set(int(x) for x in frames)):
        if runs and f == runs[-1][-1] + 1:
            runs[-1].append(f)
        else:
            runs.append([f])
    return runs


def uniform_frame_set(n_frames: int, k: int) -> list[int]:
    """The ``uniform`` sampler's K frames (centres of K equal segments), the previews' rule."""
    from msjoe.sampling.baselines import UniformSampler

    selection = UniformSampler().select(None, k, n_frames=n_frames, rng=np.random.default_rng(0))
    return [int(i) for i in selection.indices]


def _fill(
    chosen: set[int],
    k: int,
    others: np.ndarray,
    distractors: np.ndarray,
    distractor_event_fraction: float,
    rng: np.random.Generator,
) -> list[int]:
    """Add fillers to ``chosen`` until it holds ``k`` frames (or ``others`` runs out)."""
    while len(chosen) < k:
        use_events = len(distractors) > 0 and rng.random() < distractor_event_fraction
        pool = distractors if use_events else others
        pool = pool[~np.isin(pool, list(chosen))]
        if not len(pool):
            pool = others[~np.isin(others, list(chosen))]
            if not len(pool):
                break
        chosen.add(int(rng.choice(pool)))
    return sorted(chosen)


def frame_set(
    evidence_frames: Sequence[int],
    n_frames: int,
    k: int,
    rng: np.random.Generator,
    *,
    with_evidence: bool = True,
    event_frames: Sequence[int] = (),
    distractor_event_fraction: float = 0.0,
) -> list[int]:
    """K sorted frames for an answer example, with or without the question's evidence.

    ``with_evidence``: one random frame of every target event (more target events than K: a
    random K of them) and non-evidence fillers; else K frames none of which is evidence. A
    filler is drawn from ``event_frames`` that are not evidence (other events, the distractors
    a sampler brings) with probability ``distractor_event_fraction``, else from any
    non-evidence frame.
    """
    evidence = set(int(f) for f in evidence_frames)
    others = np.array([f for f in range(n_frames) if f not in evidence], dtype=np.int64)
    distractors = np.array([f for f in event_frames if f not in evidence and 0 <= f < n_frames], dtype=np.int64)
    if not with_evidence:
        if len(others) < k:
            raise ValueError(f"only {len(others)} frames without evidence, {k} needed")
        return _fill(set(), k, others, distractors, distractor_event_fraction, rng)
    runs = event_runs(evidence_frames)
    if not runs:
        raise ValueError("no evidence frames")
    chosen = {int(rng.choice(run)) for run in runs}
    if len(chosen) > k:
        chosen = set(rng.choice(sorted(chosen), size=k, replace=False).tolist())
    return _fill(chosen, min(k, n_frames), others, distractors, distractor_event_fraction, rng)


# --------------------------------------------------------------------------------------------
# examples


def query_target(reference_queries: Sequence[str], n_queries: int) -> str:
    """The query turn's reply: one ``<query>`` line per reference query (at most n_queries).

    >>> query_target(["a star", "a red circle"], 4)
    '<query>a star</query>\\n<query>a red circle</query>'
    """
    return "\n".join(f"<query>{q}</query>" for q in list(reference_queries)[:n_queries])


def answer_reply(answer: str, seen: Sequence[str] | None) -> str:
    """The answer turn's reply: optionally what the frames show, then the answer tag.

    >>> answer_reply("a red square", ["a green star", "a red square"])
    'Seen: a green star, a red square. <answer>a red square</answer>'
    >>> answer_reply("B", None)
    '<answer>B</answer>'
    """
    tag = f"<answer>{answer}</answer>"
    if seen is None:
        return tag
    return f"Seen: {', '.join(seen) if seen else _SEEN_NOTHING}. {tag}"


def _query_messages(q: WorldQuestion, frames: np.ndarray, cfg: MLLMPretrainConfig) -> Conversation:
    previews = [frames[i] for i in uniform_frame_set(len(frames), cfg.n_preview)]
    return build_query_messages(
        q.question,
        q.options,
        previews,
        n_queries=cfg.n_queries,
        preview_max_pixels=cfg.preview_size**2,
    )


def _answer_messages(q: WorldQuestion, frames: np.ndarray, indices: Sequence[int], size: int) -> Conversation:
    from msjoe.mllm.prompts import downscale

    return build_answer_messages(q.question, q.options, [downscale(frames[i], size**2) for i in indices])


def query_examples(
    questions: Sequence[WorldQuestion], videos: WorldVideos, cfg: MLLMPretrainConfig
) -> list[SFTExample]:
    """Query-turn examples: previews + question -> the reference queries."""
    return [
        SFTExample(_query_messages(q, videos.frames(q.video), cfg), query_target(q.reference_queries, cfg.n_queries))
        for q in questions
        if q.reference_queries
        for _ in range(cfg.query_repeats)
    ]


@dataclass(frozen=True)
class AnswerExample:
    """An answer-turn example and how it was made (kept for checks and statistics)."""

    example: SFTExample
    qid: str
    frames: tuple[int, ...]
    with_evidence: bool
    letter: str


def answer_examples(
    questions: Sequence[WorldQuestion],
    videos: WorldVideos,
    cfg: MLLMPretrainConfig,
    rng: np.random.Generator,
) -> list[AnswerExample]:
    """Answer-turn examples per question: ``evidence_sets`` frame sets with the evidence,
    spread over ``cfg.frame_counts``, and ``evidence_sets * no_evidence_ratio`` in expectation
    without it (random frame count).

    The target answer is the one the events in the frames imply
    (:func:`msjoe.world.reasoning.implied_option`): the right option when the evidence is shown,
    what was seen otherwise (a count too low, the event after the anchor among those seen), and
    a uniformly random option when what was seen implies none of the options."""
    counts = cfg.frame_counts
    out: list[AnswerExample] = []

    def make(q: WorldQuestion, frames: np.ndarray, idx: list[int], with_evidence: bool) -> None:
        seen = videos.seen(q.video, idx)
        implied = implied_option(q.question, q.options, seen)
        index = implied if implied is not None else int(rng.integers(0, len(q.options)))
        letter = OPTION_LETTERS[index]
        answer = letter if cfg.answer_format == "letter" else q.options[index]
        messages = _answer_messages(q, frames, idx, cfg.frame_size)
        example = SFTExample(messages, answer_reply(answer, seen if cfg.describe else None))
        out.append(AnswerExample(example, q.qid, tuple(idx), with_evidence, letter))

    for q in questions:
        frames = videos.frames(q.video)
        n = len(frames)
        kwargs = {
            "event_frames": videos.event_frames(q.video),
            "distractor_event_fraction": cfg.distractor_event_fraction,
        }
        expected = cfg.evidence_sets * cfg.no_evidence_ratio
        n_without = int(expected) + int(rng.random() < expected - int(expected))
        for i in range(cfg.evidence_sets):
            idx = frame_set(q.evidence_frames, n, counts[i % len(counts)], rng, **kwargs)
            make(q, frames, idx, True)
        for _ in range(n_without):
            k = counts[int(rng.integers(0, len(counts)))]
            idx = frame_set(q.evidence_frames, n, k, rng, with_evidence=False, **kwargs)
            make(q, frames, idx, False)
    return out


def caption_examples(
    world_dir: Path, videos: WorldVideos, cfg: MLLMPretrainConfig, rng: np.random.Generator, split: str = "train"
) -> list[SFTExample]:
    """Single-frame captioning examples from the frame annotations of ``split``.

    Per video, ``caption_frames_per_video`` frames, ``caption_event_fraction`` of them showing
    an event (events are rare, and they are what the questions are about).
    """
    from msjoe.mllm.prompts import downscale

    out: list[SFTExample] = []
    n_event = int(round(cfg.caption_frames_per_video * cfg.caption_event_fraction))
    for path in sorted((Path(world_dir) / "frames").glob(f"{split}_*.jsonl")):
        rows = _jsonl(path)
        video = f"videos/{split}/{path.stem}.mp4"
        frames = videos.frames(video)
        with_event = [r for r in rows if r["objects"]]
        background = [r for r in rows if not r["objects"]]
        picked = [with_event[i] for i in rng.permutation(len(with_event))[:n_event]]
        n_background = cfg.caption_frames_per_video - len(picked)
        picked += [background[i] for i in rng.permutation(len(background))[:n_background]]
        for row in picked:
            image = downscale(frames[int(row["frame"])], cfg.frame_size**2)
            messages: Conversation = [
                {"role": "system", "content": [{"type": "text", "text": DEFAULT_SYSTEM_PROMPT}]},
                {
                    "role": "user",
                    "content": [{"type": "image", "image": image}, {"type": "text", "text": CAPTION_PROMPT}],
                },
            ]
            out.append(SFTExample(messages, row["caption"]))
    return out


# --------------------------------------------------------------------------------------------
# evaluation


def _generate(mllm: MLLM, conversations: list[Conversation], max_new_tokens: int, batch_size: int) -> list[str]:
    texts: list[str] = []
    for start in range(0, len(conversations), batch_size):
        chunk = conversations[start : start + batch_size]
        texts += [r.text for r in mllm.generate(chunk, max_new_tokens=max_new_tokens, with_log_probs=False)]
    return texts


def _mean(values: Sequence[float | bool]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def evaluation_frame_sets(
    questions: Sequence[WorldQuestion], videos: WorldVideos, cfg: MLLMPretrainConfig
) -> dict[str, list[list[int]]]:
    """The K-frame sets :func:`evaluate_mllm` asks each question on (seed ``cfg.seed + 1``):
    ``evidence`` (one frame of every target event + fillers, as in training), ``uniform`` (the
    uniform sampler's frames) and ``no_evidence`` (K evidence-free frames)."""
    rng = np.random.default_rng(cfg.seed + 1)
    k = cfg.k_frames
    sets: dict[str, list[list[int]]] = {"evidence": [], "uniform": [], "no_evidence": []}
    for q in questions:
        n = len(videos.frames(q.video))
        kwargs = {
            "event_frames": videos.event_frames(q.video),
            "distractor_event_fraction": cfg.distractor_event_fraction,
        }
        sets["evidence"].append(frame_set(q.evidence_frames, n, k, rng, **kwargs))
        sets["uniform"].append(uniform_frame_set(n, k))
        sets["no_evidence"].append(frame_set(q.evidence_frames, n, k, rng, with_evidence=False, **kwargs))
    return sets


def evaluate_mllm(
    mllm: MLLM, questions: Sequence[WorldQuestion], videos: WorldVideos, cfg: MLLMPretrainConfig
) -> dict[str, Any]:
    """Greedy accuracy of the answer turn on three K-frame sets, and query-turn quality.

    ``evidence``: one frame per target event + fillers (as in training, seed ``cfg.seed + 1``);
    ``uniform``: the uniform sampler's K frames; ``no_evidence``: K evidence-free frames.
    Answers are parsed with the options (letter or option text); unparsable counts as wrong.
    ``seen_exact_evidence``: share of evidence-set replies whose ``Seen:`` list is exactly
    the events shown (with ``describe``).
    """
    k = cfg.k_frames
    sets = evaluation_frame_sets(questions, videos, cfg)
    report: dict[str, Any] = {"eval_questions": len(questions), "k_frames": k}
    families = sorted({q.category for q in questions})
    for name, frame_sets in sets.items():
        conversations = [
            _answer_messages(q, videos.frames(q.video), idx, cfg.frame_size)
            for q, idx in zip(questions, frame_sets, strict=True)
        ]
        texts = _generate(mllm, conversations, cfg.answer_max_new_tokens, cfg.eval_batch_size)
        letters = [parse_answer(t, len(q.options), options=q.options) for t, q in zip(texts, questions, strict=True)]
        correct = [letter == q.answer for letter, q in zip(letters, questions, strict=True)]
        report[f"accuracy_{name}"] = _mean(correct)
        report[f"answer_parse_rate_{name}"] = _mean([letter is not None for letter in letters])
        report[f"accuracy_{name}_per_family"] = {
            fam: _mean([c for c, q in zip(correct, questions, strict=True) if q.category == fam]) for fam in families
        }
        if name == "evidence" and cfg.describe:
            expected = [answer_reply("", videos.seen(q.video, i)) for q, i in zip(questions, frame_sets, strict=True)]
            report["seen_exact_evidence"] = _mean(
                [t.split("<answer>")[0].strip() == e.split("<answer>")[0].strip() for t, e in zip(texts, expected)]
            )
        if name == "evidence":
            report["answer_examples"] = [
                {"qid": q.qid, "question": q.question, "answer": q.answer_text, "generated": t}
                for q, t in list(zip(questions, texts, strict=True))[:4]
            ]
    query_texts = _generate(
        mllm,
        [_query_messages(q, videos.frames(q.video), cfg) for q in questions],
        12 * cfg.n_queries,
        cfg.eval_batch_size,
    )
    parses = [parse_queries(t, cfg.n_queries) for t in query_texts]
    matches = [
        [s.casefold() for s in p.queries] == [s.casefold() for s in q.reference_queries[: cfg.n_queries]]
        for p, q in zip(parses, questions, strict=True)
    ]
    report["query_parse_rate"] = _mean([p.ok for p in parses])
    report["query_exact_match"] = _mean(matches)
    report["query_exact_match_per_family"] = {
        fam: _mean([m for m, q in zip(matches, questions, strict=True) if q.category == fam]) for fam in families
    }
    report["chance_accuracy"] = _mean([1.0 / len(q.options) for q in questions])
    report["query_examples"] = [
        {"qid": q.qid, "question": q.question, "generated": t} for q, t in list(zip(questions, query_texts))[:4]
    ]
    return report


# --------------------------------------------------------------------------------------------
# the stage call


def prepare_mllm(name_or_path: str, out_dir: Path) -> dict[str, Any]:
    """Record the MLLM the pipeline will use in ``out_dir/mllm.json`` and return the report.

    ``name_or_path``: a hub id (kept as is; nothing is loaded or downloaded) or a local
    checkpoint directory (content-hashed). A relative directory stays relative (to the
    working directory the stages run in, the repository root), so the record, and with it
    ``dvc.lock``, is the same in every clone; the demo's shipped base model
    (``weights/demo-mllm``, made by :func:`msjoe.mllm.demo_base.pretrain_demo_base`) is such a
    directory.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not name_or_path:
        raise ValueError("mllm.name_or_path is required: a hub id or a local checkpoint directory")
    local = Path(name_or_path).expanduser()
    recorded = str(local) if local.is_dir() else str(name_or_path)
    if local.is_dir() and local.is_absolute():
        recorded = str(local.resolve())
    manifest = MLLMManifest(recorded, identity_for(recorded))
    write_manifest(out_dir, manifest)
    logger.info("mllm recorded: %s (%s)", manifest.name_or_path, manifest.identity)
    report: dict[str, Any] = {"name_or_path": manifest.name_or_path, "identity": manifest.identity}
    base_report = local / "report.json"
    if local.is_dir() and base_report.is_file():
        # the shipped demo base model carries how it was made and how good it was
        made = json.loads(base_report.read_text())
        report["base_model"] = {k: made[k] for k in ("command", "fingerprint", "parameters", "vision", "eval") if k in made}
    return report


def train_demo_mllm(
    mllm: MLLM,
    world_dir: Path,
    cfg: MLLMPretrainConfig,
    progress: bool = True,
    turns_checkpoint: Path | None = None,
) -> dict[str, Any]:
    """Teach ``mllm`` (in place) both MSJoE turns on ``world_dir``'s TRAIN split; evaluate on
    its EVAL split. Returns the report (phases, loss curve, eval, timings).

    ``turns_checkpoint``: where the model after the mixed phase is kept (with its phase
    summaries), so that a rerun that only changes the answer phase resumes there instead of
    repeating the three phases before it (they are deterministic, so the result is the same).
    """
    import torch

    started = time.perf_counter()
    cpu_started = time.process_time()
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    videos = WorldVideos(world_dir)
    train = load_world_questions(world_dir, "train")
    if not train:
        raise ValueError(f"{world_dir} has no training questions")
    train += extra_train_questions(world_dir, cfg.extra_questions, cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    captions = caption_examples(world_dir, videos, cfg, rng) if cfg.caption_steps else []
    queries = query_examples(train, videos, cfg)
    answers = answer_examples(train, videos, cfg, rng)
    videos._frames.clear()
    timings["examples_s"] = time.perf_counter() - tick

    torch.manual_seed(cfg.seed)
    saved_phases = turns_checkpoint / "phases.json" if turns_checkpoint is not None else None
    if turns_checkpoint is not None and saved_phases is not None and saved_phases.is_file():
        from msjoe.mllm.load import load_mllm

        mllm.model = load_mllm(str(turns_checkpoint)).model
        kept = json.loads(saved_phases.read_text())
        phases, losses = kept["phases"], kept["losses"]
        logger.info("resumed after the mixed phase from %s", turns_checkpoint)
    else:
        losses, phases, phase_seconds = _first_phases(mllm, captions, queries, answers, cfg, progress)
        timings.update(phase_seconds)
        if turns_checkpoint is not None:
            partial = turns_checkpoint.with_name(turns_checkpoint.name + ".partial")
            mllm.save_pretrained(partial)
            (partial / "phases.json").write_text(json.dumps({"phases": phases, "losses": losses}))
            partial.rename(turns_checkpoint)
    if cfg.second_pass_steps:
        answer_cfg = replace(cfg.sft, max_steps=cfg.second_pass_steps, seed=cfg.sft.seed + 1)
        second = supervised_finetune(mllm, queries + [a.example for a in answers], answer_cfg, progress=progress)
        losses += second.losses
        timings["second_pass_s"] = second.seconds
        phases["second_pass"] = _phase_summary(second)

    report: dict[str, Any] = {
        "parameters": int(sum(p.numel() for p in mllm.model.parameters())),
        "vocabulary": len(mllm.tokenizer),
        "train_questions": len(train),
        "answer_format": cfg.answer_format,
        "describe": cfg.describe,
        "answer_max_new_tokens": cfg.answer_max_new_tokens,
        "examples": {
            "caption": len(captions),
            "query": len(queries),
            "answer_with_evidence": sum(a.with_evidence for a in answers),
            "answer_without_evidence": sum(not a.with_evidence for a in answers),
        },
        "phases": phases,
        "loss_curve": losses,
    }
    eval_questions = load_world_questions(world_dir, "eval")
    if cfg.eval_questions is not None:
        eval_questions = eval_questions[: cfg.eval_questions]
    if eval_questions:
        tick = time.perf_counter()
        report["eval"] = evaluate_mllm(mllm, eval_questions, WorldVideos(world_dir), cfg)
        timings["eval_s"] = time.perf_counter() - tick
    timings["train_total_s"] = time.perf_counter() - started
    # CPU seconds of this process (all its threads): on a shared machine wall time also counts
    # other people's work, CPU time does not.
    timings["train_cpu_s"] = time.process_time() - cpu_started
    report["timings"] = timings
    logger.info("demo mllm trained: eval %s", {k: v for k, v in report.get("eval", {}).items() if isinstance(v, float)})
    return report


def _first_phases(
    mllm: MLLM,
    captions: list[SFTExample],
    queries: list[SFTExample],
    answers: list[AnswerExample],
    cfg: MLLMPretrainConfig,
    progress: bool,
) -> tuple[list[float], dict[str, Any], dict[str, float]]:
    """Captioning, the query turn alone, then both turns mixed: losses, summaries, seconds."""
    losses: list[float] = []
    phases: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    if captions:
        caption_cfg = replace(cfg.sft, max_steps=cfg.caption_steps, batch_size=cfg.caption_batch_size)
        captioning = supervised_finetune(mllm, captions, caption_cfg, progress=progress)
        losses += captioning.losses
        seconds["caption_s"] = captioning.seconds
        phases["caption"] = _phase_summary(captioning)
    if queries and cfg.query_steps:
        query_cfg = replace(cfg.sft, max_steps=cfg.query_steps, batch_size=cfg.query_batch_size)
        querying = supervised_finetune(mllm, queries, query_cfg, progress=progress)
        losses += querying.losses
        seconds["query_s"] = querying.seconds
        phases["query"] = _phase_summary(querying)
    sft = supervised_finetune(mllm, queries + [a.example for a in answers], cfg.sft, progress=progress)
    losses += sft.losses
    seconds["sft_s"] = sft.seconds
    phases["turns"] = _phase_summary(sft)
    return losses, phases, seconds


def _phase_summary(sft: Any) -> dict[str, Any]:
    return {
        "steps": sft.steps,
        "examples_seen": sft.examples_seen,
        "tokens_seen": sft.tokens_seen,
        "first_loss": sft.losses[0] if sft.losses else None,
        "final_loss": sft.final_loss,
        "seconds": round(sft.seconds, 2),
    }
