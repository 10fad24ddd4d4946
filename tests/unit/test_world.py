"""Tests of the demo world generator (msjoe.world) on a tiny world: real mp4 files, read back
with decord, and every question checked against the ground-truth events."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from msjoe.world import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    WorldConfig,
    describe,
    frame_caption,
    generate_world,
    plan_video,
    render_video,
)
from msjoe.world.generate import iter_specs, questions_for, write_mp4
from msjoe.world.scene import event_alpha
from msjoe.world.vocab import COLOUR_RGB

TINY = dict(
    seed=3,
    videos={"train": 2, "eval": 1},
    frames=48,
    fps=2.0,
    size=32,
    scene_frames=(8, 16),
)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _decode(path: Path) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def _file_hashes(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _text_files(root: Path) -> dict[str, bytes]:
    names = ["qa.jsonl", "annotations.jsonl", "events.jsonl", "summary.json"]
    names += [str(p.relative_to(root)) for p in sorted((root / "frames").glob("*.jsonl"))]
    return {name: (root / name).read_bytes() for name in names}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("world")
    generate_world(WorldConfig(**TINY), root, progress=False)
    return root


@pytest.fixture(scope="module")
def events(world: Path) -> dict[str, dict]:
    return {row["video_id"]: row for row in _read_jsonl(world / "events.jsonl")}


def test_vocabulary_and_captions() -> None:
    assert describe("star", "red") == "a red star"
    assert frame_caption("navy", [{"shape": "cross", "colour": "white"}]) == "a white cross on a navy background"
    assert frame_caption("dark green") == "a dark green background"
    assert len(set(SHAPES)) == len(SHAPES) >= 4 and len(set(COLOURS)) == len(COLOURS) >= 4
    assert len(BACKGROUNDS) >= 4 and not set(BACKGROUNDS) & set(COLOURS)
    with pytest.raises(ValueError):
        describe("hexagon", "red")
    with pytest.raises(ValueError):
        describe("star", "orange")


def test_config_validation_and_mapping() -> None:
    cfg = WorldConfig.from_mapping({"seed": 1, "events_per_video": [2, 3], "families": ["count"]})
    assert cfg.events_per_video == (2, 3) and cfg.families == ("count",)
    assert WorldConfig().videos == {"train": 40, "eval": 20} and WorldConfig().duration_s == 120.0
    with pytest.raises(ValueError, match="unknown world parameters"):
        WorldConfig.from_mapping({"sede": 1})
    with pytest.raises(ValueError, match="cannot hold"):
        WorldConfig(frames=20)
    with pytest.raises(ValueError, match="even"):
        WorldConfig(size=33)
    with pytest.raises(ValueError, match="families"):
        WorldConfig(families=("colour",))


def test_light_import() -> None:
    code = "import sys, msjoe.world as w; w.describe('star', 'red'); print('numpy' in sys.modules, 'av' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_layout_and_summary(world: Path) -> None:
    summary = json.loads((world / "summary.json").read_text())
    qa = _read_jsonl(world / "qa.jsonl")
    assert summary["videos"] == {"train": 2, "eval": 1}
    assert summary["total_frames"] == 3 * 48
    per_split = {split: sum(r["split"] == split for r in qa) for split in ("train", "eval")}
    assert summary["questions"] == per_split
    assert summary["questions"] == {"train": 8, "eval": 4}  # one per family per video
    assert summary["questions_per_family"]["train"] == {f: 2 for f in WorldConfig().families}
    assert 0 < summary["mean_evidence_fraction"] < 0.5
    for vid in ("train_0000", "train_0001", "eval_0000"):
        split = vid.split("_")[0]
        assert (world / "videos" / split / f"{vid}.mp4").is_file()
        assert (world / "frames" / f"{vid}.jsonl").is_file()
    assert len(_read_jsonl(world / "annotations.jsonl")) == len(qa)


def test_decord_reads_every_video(world: Path) -> None:
    import decord

    paths = sorted((world / "videos").rglob("*.mp4"))
    assert len(paths) == 3
    for path in paths:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        assert len(reader) == 48
        assert reader.get_avg_fps() == pytest.approx(2.0)
        assert reader[0].shape == (32, 32, 3)
        stamps = reader.get_frame_timestamp([0, 47])
        assert stamps.tolist() == [[0.0, 0.5], [23.5, 24.0]]


def test_event_colours_survive_encoding(world: Path, events: dict[str, dict]) -> None:
    cfg = WorldConfig(**TINY)
    for index in range(2):
        spec = plan_video(cfg, "train", index)
        decoded = _decode(world / "videos" / "train" / f"{spec.video_id}.mp4").astype(np.float64)
        rendered = render_video(spec).astype(np.float64)
        assert np.abs(decoded - rendered).mean() < 4.0  # the whole video is faithfully encoded
        event_frames = {f for e in spec.events for f in range(e.start_frame, e.end_frame + 1)}
        for event, truth in zip(spec.events, events[spec.video_id]["events"], strict=True):
            for frame in range(truth["start_frame"], truth["end_frame"] + 1):
                inside = event_alpha(event, frame, cfg.size) > 0.99
                assert inside.sum() > 0.03 * cfg.size**2  # large enough to see
                seen = np.median(decoded[frame][inside], axis=0)
                # the decoded colour is still nearest to the event's own palette colour
                nearest = min(COLOUR_RGB, key=lambda name: np.linalg.norm(seen - np.asarray(COLOUR_RGB[name])))
                assert nearest == truth["colour"], (truth["caption"], frame, seen)
                # the nearest frame without any event shows only background at the same place
                quiet = min((f for f in range(spec.frames) if f not in event_frames), key=lambda f: abs(f - frame))
                distance = np.linalg.norm(decoded[frame][inside] - decoded[quiet][inside], axis=-1)
                assert distance.mean() > 60, (truth["caption"], distance.mean())


def _expected(row: dict, video_events: list[dict]) -> tuple[str, list[dict]]:
    """Answer text and target events derived independently from events.jsonl."""
    question = row["question"]
    if row["category"] == "attribute":
        shape = re.fullmatch(r"What colour was the (\w+)\?", question).group(1)
        targets = [e for e in video_events if e["shape"] == shape]
        assert len(targets) == 1
        return targets[0]["colour"], targets
    if row["category"] == "order":
        colour, shape = re.fullmatch(r"What appeared right after the (\w+) (\w+)\?", question).groups()
        k = next(i for i, e in enumerate(video_events) if (e["colour"], e["shape"]) == (colour, shape))
        return video_events[k + 1]["caption"], [video_events[k], video_events[k + 1]]
    if row["category"] == "count":
        noun = re.fullmatch(r"How many (\w+) appeared\?", question).group(1)
        shape = next(s for s in SHAPES if noun in (s + "s", s + "es"))
        targets = [e for e in video_events if e["shape"] == shape]
        return str(len(targets)), targets
    which = re.fullmatch(r"What was the (first|last) shape to appear\?", question).group(1)
    event = video_events[0] if which == "first" else video_events[-1]
    return event["caption"], [event]


def test_every_question_is_correct(world: Path, events: dict[str, dict]) -> None:
    qa = _read_jsonl(world / "qa.jsonl")
    annotations = {a["qid"]: a for a in _read_jsonl(world / "annotations.jsonl")}
    assert len({r["qid"] for r in qa}) == len(qa) == len(annotations)
    for row in qa:
        video_id = Path(row["video"]).stem
        assert row["qid"].startswith(video_id + "_q")
        assert row["video"] == f"videos/{row['split']}/{video_id}.mp4" and (world / row["video"]).is_file()
        assert row["duration_s"] == 24.0
        options = row["options"]
        assert len(options) == 4 and len(set(options)) == 4
        assert not any(re.match(r"^\s*[A-D][.):]", o) for o in options)
        assert row["answer"] in "ABCD" and len(row["answer"]) == 1
        video_events = events[video_id]["events"]
        answer, targets = _expected(row, video_events)
        assert options["ABCD".index(row["answer"])] == answer, row
        spans = sorted([e["start_s"], e["end_s"]] for e in targets)
        assert row["evidence"] == spans
        assert all(0 <= a < b <= row["duration_s"] for a, b in row["evidence"])
        for e in targets:
            assert e["start_s"] == e["start_frame"] / 2.0 and e["end_s"] == (e["end_frame"] + 1) / 2.0
        note = annotations[row["qid"]]
        assert note["target_captions"] == [e["caption"] for e in sorted(targets, key=lambda e: e["start_frame"])]
        assert note["evidence_frames"] == sorted(
            f for e in targets for f in range(e["start_frame"], e["end_frame"] + 1)
        )
        assert 1 <= len(note["reference_queries"]) <= 4
        if row["category"] == "attribute":
            assert not any(answer in q for q in note["reference_queries"])
        if row["category"] == "order":  # the query names the anchor, never the answer
            assert answer not in note["reference_queries"]


def test_frames_and_events_agree(world: Path, events: dict[str, dict]) -> None:
    for video_id, row in events.items():
        video_events = row["events"]
        starts = [e["start_frame"] for e in video_events]
        assert starts == sorted(starts) and 4 <= len(video_events) <= 6
        for before, after in zip(video_events, video_events[1:]):
            assert after["start_frame"] > before["end_frame"] + 1  # a gap, no overlap
        for e in video_events:
            assert 2 <= e["end_frame"] - e["start_frame"] + 1 <= 4
            assert e["caption"] == describe(e["shape"], e["colour"])
        frames = _read_jsonl(Path(world) / "frames" / f"{video_id}.jsonl")
        assert [f["frame"] for f in frames] == list(range(48))
        for f in frames:
            assert f["video_id"] == video_id and f["split"] == row["split"] and f["t"] == f["frame"] / 2.0
            visible = [e for e in video_events if e["start_frame"] <= f["frame"] <= e["end_frame"]]
            assert f["objects"] == [{"shape": e["shape"], "colour": e["colour"]} for e in visible]
            assert f["background"] in BACKGROUNDS
            assert f["caption"] == frame_caption(f["background"], f["objects"])
        assert len({f["background"] for f in frames}) >= 2  # scenes change within the video


def test_determinism_and_seed_sensitivity(world: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_world(WorldConfig(**TINY), again, progress=False)
    assert _text_files(again) == _text_files(world)
    for path in sorted((world / "videos").rglob("*.mp4")):
        np.testing.assert_array_equal(_decode(again / path.relative_to(world)), _decode(path))

    other = tmp_path / "other"
    generate_world(WorldConfig(**{**TINY, "seed": 4}), other, progress=False)
    assert (other / "qa.jsonl").read_bytes() != (world / "qa.jsonl").read_bytes()
    assert (other / "events.jsonl").read_bytes() != (world / "events.jsonl").read_bytes()
    mp4 = Path("videos/train/train_0000.mp4")
    assert not np.array_equal(_decode(other / mp4), _decode(world / mp4))


# Generates TINY in a process whose state differs from the test process in every way we could
# think of that must not matter: decord (its own FFmpeg and x264, loaded into the global symbol
# namespace) imported before PyAV, numpy's SIMD kernels switched off, other malloc settings, a
# large environment and live allocations that shift where later arrays land.
_GENERATE_ELSEWHERE = """
import json, sys
from pathlib import Path

import decord  # noqa: F401
import numpy as np

ballast = [np.empty(n) for n in range(1, 400, 7)] + [bytearray(4099) for _ in range(37)]
from msjoe.world import WorldConfig, generate_world

generate_world(WorldConfig(**json.loads(sys.argv[2])), Path(sys.argv[1]), progress=False)
"""


def _other_process_env() -> dict[str, str]:
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    env = {
        **os.environ,
        "MSJOE_TEST_BALLAST": "x" * 100_000,
        "MALLOC_ARENA_MAX": "1",
        "MALLOC_TOP_PAD_": "1234567",
        "MALLOC_MMAP_THRESHOLD_": "4096",
        "OMP_NUM_THREADS": "2",
    }
    simd = [name for name in __cpu_dispatch__ if __cpu_features__.get(name)]
    if simd:
        env["NPY_DISABLE_CPU_FEATURES"] = " ".join(simd)
    return env


def test_bytes_independent_of_process_state(world: Path, tmp_path: Path) -> None:
    """Same config -> same sha256 of every file, also from a process set up very differently."""
    other = tmp_path / "other_process"
    subprocess.run(
        [sys.executable, "-c", _GENERATE_ELSEWHERE, str(other), json.dumps(TINY)],
        env=_other_process_env(),
        check=True,
        timeout=300,
    )
    expected = _file_hashes(world)
    assert len([name for name in expected if name.endswith(".mp4")]) == 3
    assert _file_hashes(other) == expected


def test_render_is_bit_reproducible() -> None:
    """Rendering twice, and from a copy of the plan, gives identical pixels (no numpy
    transcendental on arrays, so no dependence on alignment or SIMD dispatch)."""
    import dataclasses

    spec = plan_video(WorldConfig(**TINY), "eval", 0)
    first = render_video(spec)
    ballast = [np.empty(n) for n in range(1, 200, 3)]  # move later allocations
    copy = dataclasses.replace(spec, scenes=tuple(dataclasses.replace(s) for s in spec.scenes))
    assert np.array_equal(render_video(copy), first)
    del ballast


def test_splits_disjoint_and_independent(world: Path, events: dict[str, dict], tmp_path: Path) -> None:
    qa = _read_jsonl(world / "qa.jsonl")
    videos = {split: {r["video"] for r in qa if r["split"] == split} for split in ("train", "eval")}
    assert videos["train"] and videos["eval"] and not videos["train"] & videos["eval"]
    assert events["train_0000"]["events"] != events["eval_0000"]["events"]  # different seeds, not renamed copies

    bigger = tmp_path / "bigger"
    generate_world(WorldConfig(**{**TINY, "videos": {"train": 2, "eval": 3}}), bigger, progress=False)
    def train_qa(root: Path) -> list[dict]:
        return [r for r in _read_jsonl(root / "qa.jsonl") if r["split"] == "train"]

    assert train_qa(bigger) == train_qa(world)
    assert [r for r in _read_jsonl(bigger / "events.jsonl") if r["split"] == "train"] == [
        events["train_0000"],
        events["train_0001"],
    ]
    for vid in ("train_0000", "train_0001"):
        assert (bigger / "frames" / f"{vid}.jsonl").read_bytes() == (world / "frames" / f"{vid}.jsonl").read_bytes()
        mp4 = Path("videos/train") / f"{vid}.mp4"
        assert (bigger / mp4).read_bytes() == (world / mp4).read_bytes()
    # the original eval video is a prefix of the larger eval split
    assert (bigger / "videos/eval/eval_0000.mp4").read_bytes() == (world / "videos/eval/eval_0000.mp4").read_bytes()
    assert len(list((bigger / "videos/eval").glob("*.mp4"))) == 3


def test_default_world_statistics_make_frame_selection_matter() -> None:
    """Planning only (no pixels): balanced letters, counts above one, sparse evidence that
    uniform 8-frame sampling usually misses."""
    cfg = WorldConfig(videos={"train": 150})
    letters: dict[str, int] = {}
    counts: list[int] = []
    fractions: list[float] = []
    misses = 0
    total = 0
    uniform = set(np.linspace(0, cfg.frames - 1, 8).round().astype(int).tolist())
    for spec in iter_specs(cfg):
        for q in questions_for(cfg, spec):
            letters[q.answer] = letters.get(q.answer, 0) + 1
            if q.family == "count":
                counts.append(int(q.answer_text))
            evidence = set(q.evidence_frames())
            fractions.append(len(evidence) / cfg.frames)
            misses += not (evidence & uniform)
            total += 1
    assert total == 150 * 4
    assert set(letters) == set("ABCD") and min(letters.values()) > 0.18 * total
    assert sum(c > 1 for c in counts) > 0.3 * len(counts) and sum(c == 1 for c in counts) > 0.15 * len(counts)
    assert np.mean(fractions) < 0.05
    assert misses / total > 0.6


def test_the_encoded_bytes_are_the_same_on_every_x86_64_cpu(tmp_path: Path) -> None:
    """A golden hash: this video's mp4 as every x86-64 machine must write it with the pinned
    PyAV/x264 build (requirements.lock). Without ``X264_ASM`` a CPU with AVX-512 writes other
    bytes (x264's AVX-512 code rounds differently), which is how dvc.lock's world hash once
    failed to reproduce. An upgraded PyAV legitimately changes the hash: update it here and
    re-run ``dvc repro`` (the world, and every number after it, changes too)."""
    import hashlib
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the golden hash is x86-64's (other architectures keep x264's own code choice)")
    cfg = WorldConfig(**{**TINY, "frames": 96, "size": 64})
    path = tmp_path / "golden.mp4"
    write_mp4(path, render_video(plan_video(cfg, "train", 0)), cfg.fps)
    assert hashlib.md5(path.read_bytes()).hexdigest() == "3410e8618b1091fd6d8a296089de0e9e"
