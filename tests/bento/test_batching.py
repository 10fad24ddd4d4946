"""Batched serving without a server: the micro-batcher, batched answers equal unbatched ones,
the bounded admission (503 + retry hint, nothing accepted is lost) and the Prometheus metrics."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from msjoe.pipeline import Question
from msjoe.serving import BatchSettings, MicroBatcher, RequestError, ServingEngine, write_release
from msjoe.serving.release import ReleaseConfig
from tests.bento import build_model_dirs, release_config
from tests.media import write_video

pytestmark = pytest.mark.usefixtures("one_thread")  # torch on one thread (tests/conftest.py)

REPO = Path(__file__).resolve().parents[2]
DEMO_MLLM = REPO / "weights" / "demo-mllm"
QUESTIONS = [
    ("What colour was the star?", ["red", "green", "blue", "yellow"]),
    ("What appeared right after the red circle?", ["a red square", "a blue circle", "a green star", "a cyan star"]),
    ("How many triangles appeared?", ["1", "2", "3", "4"]),
    ("What shape was magenta?", ["star", "circle", "square", "triangle"]),
]


# ------------------------------------------------------------------ the batcher


def test_batches_fill_up_to_max_batch_and_keep_order() -> None:
    seen: list[list[int]] = []
    gate = threading.Event()

    def run(items: list[int]) -> list[int]:
        gate.wait(5)
        seen.append(list(items))
        return [10 * i for i in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch=3, max_wait_s=0.5)
    try:
        futures = [batcher.submit(i) for i in range(7)]
        gate.set()
        assert [f.result(timeout=10) for f in futures] == [10 * i for i in range(7)]
    finally:
        batcher.close()
    assert all(1 <= len(b) <= 3 for b in seen) and [i for b in seen for i in b] == list(range(7))
    assert max(len(b) for b in seen) == 3  # the queue filled while the first batch was held


def test_a_lone_item_does_not_wait_when_nothing_else_is_coming() -> None:
    # a max wait far beyond the result's timeout: the item only comes back if the batch ran at once
    batcher: MicroBatcher[int, int] = MicroBatcher(lambda items: items, max_batch=8, max_wait_s=3600.0,
                                                   more_coming=lambda size: False)
    try:
        assert batcher.submit(1).result(timeout=60) == 1
    finally:
        batcher.close()


def test_failures_reach_exactly_the_items_they_belong_to() -> None:
    def run(items: list[int]) -> list[Any]:
        if 99 in items:
            raise RuntimeError("the whole batch failed")
        return [ValueError(f"bad {i}") if i % 2 else i for i in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch=1, max_wait_s=0.0)
    try:
        good, bad, boom = batcher.submit(2), batcher.submit(3), batcher.submit(99)
        assert good.result(timeout=10) == 2
        with pytest.raises(ValueError, match="bad 3"):
            bad.result(timeout=10)
        with pytest.raises(RuntimeError, match="whole batch"):
            boom.result(timeout=10)
    finally:
        batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(1)


def test_batch_settings_from_env() -> None:
    assert BatchSettings.from_env({}) == BatchSettings()
    got = BatchSettings.from_env({"MSJOE_MAX_BATCH": "32", "MSJOE_MAX_WAIT_MS": "20", "MSJOE_MAX_QUEUE": "8"})
    assert got == BatchSettings(max_batch=32, max_wait_s=0.02, max_queue=8)
    with pytest.raises(ValueError, match="MSJOE_MAX_BATCH='many'"):
        BatchSettings.from_env({"MSJOE_MAX_BATCH": "many"})
    with pytest.raises(ValueError, match="max_batch"):
        BatchSettings(max_batch=0)


# ------------------------------------------------------------------ engines on real releases


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("videos")
    return [write_video(root / f"v{i}.mp4", n_frames=24, fps=4, size=32, seed=i) for i in range(2)]


@pytest.fixture(scope="module")
def demo_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped demo base MLLM (trained, so its greedy choices are not near-ties) with a
    random tiny CLIP and sampler."""
    from msjoe.mllm.manifest import MLLMManifest, write_manifest

    root = tmp_path_factory.mktemp("demo_release")
    clip_dir, _, sampler_ckpt = build_model_dirs(root / "models")
    mllm_dir = root / "mllm"
    mllm_dir.mkdir()
    write_manifest(mllm_dir, MLLMManifest(str(DEMO_MLLM), "demo-mllm@tests"))
    cfg = release_config()
    cfg["pipeline"] = {**cfg["pipeline"], "answer_size": 64, "preview_size": 32, "max_new_tokens": 48,
                       "query_max_new_tokens": 48}
    write_release(root / "release", clip_dir, mllm_dir, sampler_ckpt, ReleaseConfig.from_mapping(cfg))
    return root / "release"


def _engine(release: Path, cache: Path, **batching: Any) -> ServingEngine:
    return ServingEngine.from_release(release, cache, model_tag="test", device="cpu",
                                      environ={f"MSJOE_{k.upper()}": str(v) for k, v in batching.items()})


SAME = ("option", "option_index", "option_scored", "queries", "query_parse_ok", "frames", "query_text",
        "answer_text", "visual_tokens", "sampler")


def test_batched_answers_equal_unbatched_ones(demo_release: Path, videos: list[Path], tmp_path: Path) -> None:
    """Eight concurrent requests share generation batches; each reply equals the reply the same
    request gets alone (batch of one), frames and weights bit for bit."""
    asks = [(videos[i % 2], *QUESTIONS[i % 4]) for i in range(8)]
    alone = _engine(demo_release, tmp_path / "alone", max_batch=1)
    try:
        expected = [alone.answer(v, q, o, 4) for v, q, o in asks]
    finally:
        alone.close()
    assert {r["batch_size"] for r in expected} == {1}

    # Fixed batch composition: the upload checks are warmed first (a first upload is probed in a
    # subprocess, which would stagger the requests), all eight are admitted before any starts its
    # episode, and max_batch = 8 with a long max wait makes each turn one batch of eight.
    shared = _engine(demo_release, tmp_path / "shared", max_batch=8, max_wait_ms=10_000)
    for video in videos:
        shared.answer(video, *QUESTIONS[0], 4)
    gate = threading.Barrier(8, timeout=60)
    episode = shared._episode

    def gated(*args: Any) -> dict[str, Any]:
        gate.wait()
        return episode(*args)

    shared._episode = gated  # type: ignore[method-assign]
    try:
        batches_before = shared.health()["requests"]["batches"]
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda a: shared.answer(*a, 4), asks))
        batches = shared.health()["requests"]["batches"] - batches_before
    finally:
        shared.close()
    assert [r["batch_size"] for r in got] == [8] * 8
    assert batches == 2  # 8 query turns, then 8 answer turns
    for one, batched in zip(expected, got, strict=True):
        assert {k: batched[k] for k in SAME} == {k: one[k] for k in SAME}

    # the pipeline's own batched path agrees too (fixed composition, no threads)
    pipeline = _engine(demo_release, tmp_path / "pipe", max_batch=8)
    try:
        many = pipeline.pipeline.answer_many([Question(v, q, o, 4) for v, q, o in asks])
    finally:
        pipeline.close()
    for one, answer in zip(expected, many, strict=True):
        assert not isinstance(answer, Exception)
        assert {k: answer.to_dict()[k] for k in SAME} == {k: one[k] for k in SAME}


@pytest.fixture(scope="module")
def tiny_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_release")
    clip_dir, mllm_dir, sampler_ckpt = build_model_dirs(root / "models")
    write_release(root / "release", clip_dir, mllm_dir, sampler_ckpt, ReleaseConfig.from_mapping(release_config()))
    return root / "release"


def test_admission_is_bounded_and_nothing_admitted_is_lost(
    tiny_release: Path, videos: list[Path], tmp_path: Path
) -> None:
    engine = _engine(tiny_release, tmp_path / "cache", max_batch=4, max_queue=2)
    hold = threading.Event()
    run_turns = engine._run_turns

    def held(turns: list[Any]) -> list[float]:
        hold.wait(30)
        return run_turns(turns)

    engine._run_turns = held  # type: ignore[method-assign]
    engine._batcher.run = held
    question, options = QUESTIONS[0]
    try:
        with ThreadPoolExecutor(2) as pool:
            admitted = [pool.submit(engine.answer, videos[0], question, options, 4) for _ in range(2)]
            deadline = time.monotonic() + 30
            while engine.health()["batching"]["in_progress"] < 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            # refused at once: admission never waits, and the two admitted turns are still held
            with pytest.raises(RequestError) as refused:  # same content: its probe record exists
                engine.answer(videos[0], question, options, 4)
            assert not hold.is_set()
            hold.set()
            replies = [f.result(timeout=60) for f in admitted]
    finally:
        hold.set()
        engine.close()
    error = refused.value
    assert error.status == 503 and error.code == "overloaded"
    assert error.retry_after_s is not None and error.retry_after_s >= 1
    assert error.headers() == {"Retry-After": str(error.retry_after_s)}
    assert error.to_dict()["retry_after_s"] == error.retry_after_s
    assert [len(r["frames"]) for r in replies] == [4, 4]
    assert engine.stats["answered"] == 2 and engine.stats["rejected"] == 1


def test_metrics_count_requests_stages_and_batches(tiny_release: Path, videos: list[Path], tmp_path: Path) -> None:
    import prometheus_client

    from msjoe.serving.metrics import ServingMetrics

    registry = prometheus_client.CollectorRegistry()
    engine = ServingEngine.from_release(tiny_release, tmp_path / "cache", device="cpu",
                                        metrics=ServingMetrics(prometheus_client, registry=registry))
    question, options = QUESTIONS[0]
    try:
        engine.answer(videos[0], question, options, 4)
        engine.answer(videos[0], question, options, 4, details=True)
        with pytest.raises(RequestError):
            engine.answer(videos[0], question, ["only one"], 4)
    finally:
        engine.close()

    def value(name: str, **labels: str) -> float:
        got = registry.get_sample_value(name, labels)
        return 0.0 if got is None else got

    assert value("msjoe_requests_total", status="200", code="ok") == 2
    assert value("msjoe_requests_total", status="400", code="option_count") == 1
    assert value("msjoe_stage_seconds_count", stage="request") == 2
    assert value("msjoe_stage_seconds_count", stage="answer") == 2
    assert value("msjoe_batch_size_count") == 4  # two answered requests, one after the other: two turns each
    assert value("msjoe_queue_depth") == 0


def test_details_add_curves_and_thumbnails(tiny_release: Path, videos: list[Path], tmp_path: Path) -> None:
    import base64
    import io

    from PIL import Image

    engine = _engine(tiny_release, tmp_path / "cache")
    question, options = QUESTIONS[0]
    try:
        plain = engine.answer(videos[0], question, options, 4)
        detailed = engine.answer(videos[0], question, options, 4, details=True)
    finally:
        engine.close()
    assert "similarity" not in plain and "thumbnails" not in plain
    assert {k: detailed[k] for k in SAME} == {k: plain[k] for k in SAME}
    n_candidates = len(detailed["candidate_timestamps"])
    assert n_candidates == 12  # 6 s at 2 fps
    assert len(detailed["similarity"]) == len(detailed["queries"])
    assert all(len(row) == n_candidates for row in detailed["similarity"])
    assert len(detailed["thumbnails"]) == len(detailed["frames"]) == 4
    for url in detailed["thumbnails"]:
        assert url.startswith("data:image/jpeg;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert image.size == (32, 32)  # native size: thumbnails only shrink
