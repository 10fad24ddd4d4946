"""Embedding: cache keying by content, streaming, resume, bad videos, feature validation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from msjoe.clip.model import load_clip
from msjoe.embed import EmbedConfig, embed_videos, load_index
from msjoe.features import FeatureStore, VideoFeatures, feature_key
from msjoe.validation import feature_summary, validate_features
from msjoe.video import probe_video, sha256_file
from tests.media import write_video
from tests.models import write_random_clip


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_clip(tmp_path_factory.mktemp("clip"))


def video_table(root: Path, names: list[str]) -> pd.DataFrame:
    rows = []
    for name in names:
        info = probe_video(root / name)
        rows.append({"video": name, "sha256": sha256_file(root / name), **info.to_dict()})
    return pd.DataFrame(rows)


def test_feature_key_follows_content_weights_and_sampling() -> None:
    base = feature_key("a" * 64, "clip@1", 1.0, 64)
    assert base == feature_key("a" * 64, "clip@1", 1, 64)
    assert len({base, feature_key("b" * 64, "clip@1", 1.0, 64), feature_key("a" * 64, "clip@2", 1.0, 64),
                feature_key("a" * 64, "clip@1", 2.0, 64), feature_key("a" * 64, "clip@1", 1.0, 32)}) == 5


def test_embed_streams_caches_and_resumes(tmp_path: Path, clip_dir: Path) -> None:
    root = tmp_path / "videos"
    for i in range(3):
        write_video(root / f"v{i}.mp4", n_frames=20 + 4 * i, fps=4, seed=i)
    shutil.copyfile(root / "v0.mp4", root / "renamed.mp4")  # same content, other name
    videos = video_table(root, ["v0.mp4", "v1.mp4", "v2.mp4", "renamed.mp4"])
    clip = load_clip(clip_dir)
    cfg = EmbedConfig(fps=2.0, max_candidates=10, batch_size=4, chunk_frames=4, decode_workers=1)
    cache = tmp_path / "cache"

    first = embed_videos(videos, root, clip, cache, cfg, progress=False)
    # v0 and renamed share a key: the content is decoded and encoded once
    assert first.embedded == 3 and first.failed == 0 and first.cached == 1
    # the metrics hold counts only; wall time and throughput are apart (reports/timings/embed.json)
    assert not {"seconds", "frames_per_s", "decode_seconds", "encode_seconds"} & set(first.to_dict())
    assert first.timings()["seconds"] > 0 and first.timings()["frames_per_s"] > 0
    index = load_index(cache)
    assert list(index["video"]) == ["v0.mp4", "v1.mp4", "v2.mp4", "renamed.mp4"]
    assert index.loc[0, "key"] == index.loc[3, "key"]
    store = FeatureStore(cache)
    v2 = store.load(index.loc[2, "key"])
    assert v2.features.shape == (10, 64)  # 28 frames at 4 fps = 7 s -> 14 candidates at 2 fps, capped at 10
    np.testing.assert_allclose(np.linalg.norm(v2.features, axis=1), 1.0, atol=1e-5)
    assert np.all(np.diff(v2.timestamps) > 0) and v2.indices[0] == 0
    # same frames encoded directly give the same features (chunking and overlap change nothing)
    from msjoe.video import decode_frames, open_reader

    direct = clip.encode_frames(decode_frames(open_reader(root / "v2.mp4"), v2.indices))
    np.testing.assert_allclose(v2.features, direct, atol=1e-5)

    again = embed_videos(videos, root, clip, cache, cfg, progress=False)
    assert again.embedded == 0 and again.cached == 4

    # a killed run: one finished file missing and a torn temporary file left behind
    store.remove(index.loc[1, "key"])
    torn = store.path(index.loc[1, "key"]).with_name(".torn.123.tmp.npz")
    torn.write_bytes(b"partial")
    resumed = embed_videos(videos, root, clip, cache, EmbedConfig(**{**cfg.__dict__, "decode_workers": 0}),
                           progress=False)
    assert resumed.embedded == 1 and resumed.cached == 3 and not torn.exists()

    # other inputs (another fps): the directory keeps only their entries, so its content (a DVC
    # output) depends on the inputs alone, not on what ran before
    other = embed_videos(videos, root, clip, cache, EmbedConfig(**{**cfg.__dict__, "fps": 1.0}), progress=False)
    assert other.embedded == 3 and other.pruned == 3 and other.timings()["pruned"] == 3
    assert store.keys() == sorted(set(load_index(cache)["key"])) and len(store.keys()) == 3
    assert not set(store.keys()) & set(index["key"])


def test_undecodable_video_is_recorded_and_skipped(tmp_path: Path, clip_dir: Path) -> None:
    root = tmp_path / "videos"
    write_video(root / "good.mp4", n_frames=12, fps=4)
    write_video(root / "bad.mp4", n_frames=12, fps=4, seed=3)
    videos = video_table(root, ["bad.mp4", "good.mp4"])
    (root / "bad.mp4").write_bytes(b"\x00" * 2048)  # replaced after ingest
    report = embed_videos(videos, root, load_clip(clip_dir), tmp_path / "cache",
                          EmbedConfig(fps=2.0, max_candidates=8, chunk_frames=4), progress=False)
    assert report.embedded == 1 and report.failed == 1
    assert report.failures[0]["video"] == "bad.mp4" and "decoding failed" in report.failures[0]["reason"]
    assert list(load_index(tmp_path / "cache")["video"]) == ["good.mp4"]


def test_feature_validation_flags_bad_features() -> None:
    good = np.eye(3, 4, dtype=np.float32)
    times = np.array([0.0, 0.5, 1.0])
    rows = [
        feature_summary("good", good, times),
        feature_summary("unnormalised", good * 2, times),
        feature_summary("nan", np.where(good == 1, np.nan, good), times),
        feature_summary("unordered", good, times[::-1]),
        feature_summary("narrow", np.eye(3, 2, dtype=np.float32), times),
    ]
    failures = validate_features(rows, dim=4)
    assert "good" not in failures
    assert "features are not L2-normalised" in failures["unnormalised"]
    assert "non-finite feature values" in failures["nan"]
    assert "timestamps are not strictly increasing" in failures["unordered"]
    assert "feature width != 4" in failures["narrow"]


def test_store_writes_atomically(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    value = VideoFeatures(np.ones((2, 3), np.float32), np.array([0.0, 1.0]), np.array([0, 2]))
    path = store.save("ab" + "0" * 62, value)
    assert path.parent.name == "ab" and not list(tmp_path.glob("*/.*tmp*"))
    loaded = store.load("ab" + "0" * 62)
    np.testing.assert_array_equal(loaded.indices, [0, 2])
