"""Give the demo's tiny CLIP its "pre-training": contrastive learning on the world's frames.

No weights can be downloaded here, so the method's frozen CLIP must learn what the world looks
like before it can score queries. Texts are all the phrasings later stages use (full frame
captions, event captions, colour-free shape queries, "a shape", background captions); a text is
a positive for every image it truthfully describes, so the loss is a multi-positive InfoNCE
rather than CLIP's one-to-one diagonal (many frames share a caption).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msjoe.clip.model import FrozenClip
from msjoe.optim import adamw
from msjoe.world.vocab import BACKGROUNDS, COLOURS, SHAPES, describe, frame_caption, shape_query

log = logging.getLogger(__name__)

ANY_SHAPE = "a shape"


@dataclass(frozen=True)
class ClipTrainConfig:
    steps: int = 800
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    event_fraction: float = 0.5  # share of each batch drawn from (rare) event frames
    seed: int = 0


@dataclass(frozen=True)
class TextSpec:
    """A phrasing and what it asserts about a frame (None: says nothing about that attribute)."""

    text: str
    shape: str | None = None
    colour: str | None = None
    background: str | None = None
    has_object: bool | None = None

    def matches(self, frame: dict[str, Any]) -> bool:
        objects = frame["objects"]
        if self.has_object is not None and bool(objects) != self.has_object:
            return False
        if self.background is not None and frame["background"] != self.background:
            return False
        if self.shape is None and self.colour is None:
            return True
        return any(
            (self.shape is None or o["shape"] == self.shape) and (self.colour is None or o["colour"] == self.colour)
            for o in objects
        )


def text_universe() -> list[TextSpec]:
    """Every phrasing the pipeline uses for the world."""
    specs = [TextSpec(ANY_SHAPE, has_object=True)]
    specs += [TextSpec(shape_query(s), shape=s, has_object=True) for s in SHAPES]
    specs += [TextSpec(describe(s, c), shape=s, colour=c, has_object=True) for s in SHAPES for c in COLOURS]
    specs += [TextSpec(frame_caption(b), background=b, has_object=False) for b in BACKGROUNDS]
    specs += [
        TextSpec(frame_caption(b, [{"shape": s, "colour": c}]), shape=s, colour=c, background=b, has_object=True)
        for s in SHAPES
        for c in COLOURS
        for b in BACKGROUNDS
    ]
    return specs


def load_split_frames(world_dir: Path, split: str) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Path]]:
    """Per-frame annotations and video paths of one split of the demo world."""
    records: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((world_dir / "frames").glob(f"{split}_*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        records[path.stem] = rows
    videos = {vid: world_dir / "videos" / split / f"{vid}.mp4" for vid in records}
    return records, videos


def _decode_split(clip: FrozenClip, world_dir: Path, split: str) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    from tqdm import tqdm

    from msjoe.video import decode_frames, open_reader

    records, videos = load_split_frames(world_dir, split)
    pixels, frames = [], []
    for vid in tqdm(sorted(records), desc=f"decode {split} frames", unit="video"):
        rows = records[vid]
        array = decode_frames(open_reader(videos[vid]), np.array([r["frame"] for r in rows]))
        pixels.append(clip.preprocess_frames(array))
        frames.extend(rows)
    return torch.cat(pixels), frames


def _multi_positive_loss(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """-log of the softmax mass on the positives, averaged over both directions."""
    neg_inf = torch.finfo(logits.dtype).min
    image_side = torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~positives, neg_inf), 1)
    text_side = torch.logsumexp(logits, 0) - torch.logsumexp(logits.masked_fill(~positives, neg_inf), 0)
    return 0.5 * (image_side.mean() + text_side.mean())


def train_clip(clip: FrozenClip, world_dir: Path, cfg: ClipTrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train `clip.model` in place on the world's training split; return the loss curve."""
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    pixels, frames = _decode_split(clip, world_dir, "train")
    specs = text_universe()
    applicable = [np.array([j for j, s in enumerate(specs) if s.matches(f)]) for f in frames]
    truth = np.array([[s.matches(f) for s in specs] for f in frames])  # frames x texts
    event_idx = np.array([i for i, f in enumerate(frames) if f["objects"]])
    plain_idx = np.array([i for i, f in enumerate(frames) if not f["objects"]])
    n_event = int(round(cfg.batch_size * cfg.event_fraction)) if len(event_idx) else 0

    model = clip.model.train().requires_grad_(True)
    optimiser = adamw(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda step: min(1.0, (step + 1) / cfg.warmup_steps)
        * 0.5
        * (1 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps)),
    )
    losses: list[float] = []
    started = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="pretrain clip", unit="step", disable=not progress)
    for _ in bar:
        batch = np.concatenate(
            [rng.choice(event_idx, n_event), rng.choice(plain_idx, cfg.batch_size - n_event)]
        )
        chosen = np.array([rng.choice(applicable[i]) for i in batch])
        texts, inverse = np.unique(chosen, return_inverse=True)
        image_features = model.encode_image(pixels[batch], normalize=True)
        text_features = model.encode_text(clip.tokenizer([specs[j].text for j in texts]), normalize=True)
        logits = model.logit_scale.exp() * image_features @ text_features.T  # images x unique texts
        positives = torch.from_numpy(truth[batch][:, texts])
        loss = _multi_positive_loss(logits, positives)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.item()))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        del inverse
    model.eval().requires_grad_(False)
    return {
        "steps": cfg.steps,
        "final_loss": float(np.mean(losses[-50:])),
        "train_frames": len(frames),
        "losses": losses,
        "config": asdict(cfg),
        "timings": {"train_seconds": time.perf_counter() - started},  # run-dependent: not a metric
    }


def evidence_recall(clip: FrozenClip, world_dir: Path, split: str = "eval", k: int = 8) -> dict[str, float]:
    """Share of questions whose target caption (and whose reference query) ranks an evidence frame in the top k.

    Also reports the same hit rate for k uniformly spaced frames, the baseline CLIP must beat.
    """
    from msjoe.video import decode_frames, open_reader

    records, videos = load_split_frames(world_dir, split)
    annotations = {
        row["qid"]: row for row in map(json.loads, (world_dir / "annotations.jsonl").read_text().splitlines())
    }
    questions = [
        row
        for row in map(json.loads, (world_dir / "qa.jsonl").read_text().splitlines())
        if row.get("split") == split
    ]
    features: dict[str, np.ndarray] = {}
    hits = {"caption": 0, "reference": 0, "uniform": 0}
    for question in questions:
        vid = Path(question["video"]).stem
        if vid not in features:
            rows = records[vid]
            features[vid] = clip.encode_frames(
                decode_frames(open_reader(videos[vid]), np.array([r["frame"] for r in rows]))
            )
        ann = annotations[question["qid"]]
        evidence = set(ann["evidence_frames"])
        n = len(features[vid])
        for name, text in (("caption", ann["target_captions"][0]), ("reference", ann["reference_queries"][0])):
            scores = features[vid] @ clip.encode_texts([text])[0]
            top = np.argsort(-scores, kind="stable")[:k]
            hits[name] += bool(evidence & set(top.tolist()))
        uniform = ((np.arange(k) + 0.5) * n / k).astype(int)
        hits["uniform"] += bool(evidence & set(uniform.tolist()))
    total = max(1, len(questions))
    return {
        f"evidence_recall_at_{k}": hits["caption"] / total,
        f"reference_query_recall_at_{k}": hits["reference"] / total,
        f"uniform_recall_at_{k}": hits["uniform"] / total,
        "questions": len(questions),
    }
