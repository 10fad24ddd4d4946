"""Ingest: every class of bad input becomes a reject with a reason; nothing is lost."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from msjoe.ingest import TooManyRejects, ingest, read_qa_lines
from msjoe.probe import probe_many
from msjoe.video import VideoInfo, candidate_indices, probe_video, resolve_video, VideoError
from tests.media import write_video


def row(qid: str, video: str = "videos/a.mp4", **extra) -> dict:
    base = {
        "qid": qid,
        "video": video,
        "question": "What colour was the star?",
        "options": ["red", "green", "blue", "yellow"],
        "answer": "B",
        "category": "attribute",
        "split": "eval",
        "evidence": [[1.0, 2.0]],
    }
    base.update(extra)
    return base


@pytest.fixture
def world(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    write_video(root / "videos" / "a.mp4", n_frames=24, fps=4)  # 6 s
    write_video(root / "videos" / "b.mp4", n_frames=16, fps=4, seed=1)  # 4 s
    (root / "videos" / "empty.mp4").write_bytes(b"")
    (root / "videos" / "junk.mp4").write_bytes(os.urandom(4096))
    good = (root / "videos" / "a.mp4").read_bytes()
    (root / "videos" / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (root / "videos" / "folder.mp4").mkdir()
    outside = tmp_path / "outside.mp4"
    write_video(outside, n_frames=8, fps=4)
    (root / "videos" / "link.mp4").symlink_to(outside)
    return root


def write_lines(path: Path, lines: list[bytes | str | dict]) -> Path:
    with open(path, "wb") as handle:
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line)
            if isinstance(line, str):
                line = line.encode()
            handle.write(line + b"\n")
    return path


def test_bad_input_is_rejected_with_reasons_and_nothing_is_lost(world: Path, tmp_path: Path) -> None:
    qa = write_lines(
        tmp_path / "qa.jsonl",
        [
            row("ok1"),
            row("ok2", video="videos/b.mp4", evidence=None, duration_s=4.0),
            "",  # blank lines are not questions
            '{"qid": "broken", "video": ',  # malformed JSON
            b'{"qid": "latin1", "question": "caf\xe9"}',  # invalid UTF-8
            "[1, 2, 3]",  # not an object
            {"qid": "missing"},  # missing fields
            row("wrongtype", question=42),
            row("oneopt", options=["only"]),
            row("elevenopts", options=[f"o{i}" for i in range(11)], answer="A"),
            row("badletter", answer="E"),
            row("lowercase", answer="b"),
            row("dup"),
            row("dup"),
            row("negdur", duration_s=-3),
            row("late", evidence=[[5.0, 30.0]]),
            row("badspan", evidence=[[3.0, 1.0]]),
            row("nofile", video="videos/nothere.mp4"),
            row("empty", video="videos/empty.mp4"),
            row("junk", video="videos/junk.mp4"),
            row("trunc", video="videos/truncated.mp4"),
            row("dir", video="videos/folder.mp4"),
            row("abs", video="/etc/passwd"),
            row("dotdot", video="../outside.mp4"),
            row("symlink", video="videos/link.mp4"),
            row("emptyopt", options=["a", ""]),
            row("longq", question="x" * 5000),
        ],
    )
    report = ingest(qa, world, tmp_path / "out", progress=False, workers=2)
    assert report.lines == 26
    assert report.accepted == 2
    assert report.accepted + report.rejected == report.lines

    accepted = pd.read_parquet(tmp_path / "out" / "questions.parquet")
    assert list(accepted["qid"]) == ["ok1", "ok2"]
    assert list(accepted.loc[0, "options"]) == ["red", "green", "blue", "yellow"]
    assert accepted.loc[1, "duration_s"] == 4.0
    assert accepted.loc[0, "duration_s"] == pytest.approx(6.0)  # filled from the probed video
    videos = pd.read_parquet(tmp_path / "out" / "videos.parquet")
    assert set(videos["video"]) == {"videos/a.mp4", "videos/b.mp4"}
    assert videos.set_index("video").loc["videos/a.mp4", "n_frames"] == 24

    rejects = [json.loads(line) for line in open(tmp_path / "out" / "rejects.jsonl")]
    by_qid = {r.get("qid"): r["reason"] for r in rejects if r["kind"] == "question" and r.get("qid")}
    by_line = {r["line"]: r["reason"] for r in rejects if r["kind"] == "question"}
    assert "malformed JSON" in by_line[4]
    assert "invalid UTF-8" in by_line[5]
    assert "not a JSON object" in by_line[6]
    assert "missing required field 'video'" in by_qid["missing"]
    assert "field 'question' must be a string" in by_qid["wrongtype"]
    assert "2-10 entries" in by_qid["oneopt"]
    assert "2-10 entries" in by_qid["elevenopts"]
    assert "does not name one of the options" in by_qid["badletter"]
    assert "single option letter" in by_qid["lowercase"]
    assert sum(1 for r in rejects if r.get("qid") == "dup" and "duplicate qid" in r["reason"]) == 2
    assert "duration_s" in by_qid["negdur"]
    assert "after the end of the video" in by_qid["late"]
    assert "0 <= start <= end" in by_qid["badspan"]
    assert "file not found" in by_qid["nofile"]
    assert "empty" in by_qid["empty"]
    assert "not a decodable video" in by_qid["junk"]
    assert "video rejected" in by_qid["trunc"]
    assert "not a regular file" in by_qid["dir"]
    assert "absolute" in by_qid["abs"]
    assert "'..'" in by_qid["dotdot"]
    assert "outside the video root" in by_qid["symlink"]
    assert "non-empty strings" in by_qid["emptyopt"]
    assert "question must be" in by_qid["longq"]
    video_rejects = {r["video"] for r in rejects if r["kind"] == "video"}
    assert {"videos/junk.mp4", "/etc/passwd", "../outside.mp4", "videos/link.mp4"} <= video_rejects
    assert report.videos_rejected == len(video_rejects)
    # the raw line is kept so nothing is lost
    assert all("raw" in r for r in rejects if r["kind"] == "question")


def test_reject_threshold_fails_after_writing_outputs(world: Path, tmp_path: Path) -> None:
    qa = write_lines(tmp_path / "qa.jsonl", [row("ok"), row("bad", answer="Z"), "not json"])
    with pytest.raises(TooManyRejects, match="2 of 3 QA lines rejected"):
        ingest(qa, world, tmp_path / "out", max_reject_fraction=0.5, progress=False)
    assert (tmp_path / "out" / "rejects.jsonl").exists()
    report = ingest(qa, world, tmp_path / "out2", max_reject_fraction=0.7, progress=False)
    assert report.rejected == 2


def test_read_qa_lines_counts_blank_lines_out(tmp_path: Path) -> None:
    qa = write_lines(tmp_path / "qa.jsonl", [row("a"), "   ", "", row("b")])
    records, rejects = read_qa_lines(qa)
    assert sorted(records) == [1, 4] and rejects == []


def _crash_on_bomb(path: Path) -> tuple[VideoInfo, str]:
    if path.name == "bomb.mp4":
        os.abort()  # what a segfaulting decoder looks like to the parent
    return VideoInfo(1, 1.0, 1.0, 1, 1), "0" * 64


def _hang_on_slow(path: Path) -> tuple[VideoInfo, str]:
    if path.name == "slow.mp4":
        import time

        time.sleep(60)
    return VideoInfo(1, 1.0, 1.0, 1, 1), "0" * 64


def test_decoder_crash_and_hang_cost_one_video_only(tmp_path: Path) -> None:
    jobs = [(name, tmp_path / name) for name in ("a.mp4", "bomb.mp4", "b.mp4", "c.mp4")]
    results = {r.key: r for r in probe_many(jobs, workers=2, probe=_crash_on_bomb)}
    assert set(results) == {"a.mp4", "bomb.mp4", "b.mp4", "c.mp4"}
    assert "decoder crashed" in results["bomb.mp4"].error and "exit code -6" in results["bomb.mp4"].error  # SIGABRT
    assert all(results[k].error is None for k in ("a.mp4", "b.mp4", "c.mp4"))

    jobs = [(name, tmp_path / name) for name in ("slow.mp4", "d.mp4")]
    results = {r.key: r for r in probe_many(jobs, workers=1, timeout_s=2, probe=_hang_on_slow)}
    assert "longer than 2 s" in results["slow.mp4"].error
    assert results["d.mp4"].error is None


def test_a_workers_slow_start_does_not_count_against_the_videos_time_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.unit.slow_start_probe import instant_probe  # imported here at once

    monkeypatch.setenv("SLOW_START_S", "3")  # each spawned worker takes 3 s to import it
    jobs = [(name, tmp_path / name) for name in ("a.mp4", "b.mp4")]
    results = {r.key: r for r in probe_many(jobs, workers=1, timeout_s=1.5, probe=instant_probe)}
    assert {key: result.error for key, result in results.items()} == {"a.mp4": None, "b.mp4": None}


def test_a_worker_that_never_starts_is_killed_with_its_own_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import msjoe.probe
    from tests.unit.slow_start_probe import instant_probe

    monkeypatch.setenv("SLOW_START_S", "30")
    monkeypatch.setattr(msjoe.probe, "START_TIMEOUT_S", 1.0)
    (result,) = probe_many([("a.mp4", tmp_path / "a.mp4")], workers=1, timeout_s=60, probe=instant_probe)
    assert result.error is not None and "did not start within 1 s" in result.error


def test_probe_reads_real_metadata(tmp_path: Path) -> None:
    info = probe_video(write_video(tmp_path / "v.mp4", n_frames=20, fps=5, size=32))
    assert info == VideoInfo(n_frames=20, fps=5.0, duration_s=4.0, width=32, height=32)


def test_resolve_video_stays_inside_root(tmp_path: Path) -> None:
    assert resolve_video(tmp_path, "a/b.mp4") == (tmp_path / "a" / "b.mp4").resolve()
    for bad in ("", "/abs.mp4", "a/../../b.mp4", "C:\\x.mp4", "a\x00b"):
        with pytest.raises(VideoError):
            resolve_video(tmp_path, bad)


def test_candidate_indices_follow_fps_and_cap() -> None:
    assert list(candidate_indices(240, 2.0, 2.0, 1000)) == list(range(240))
    assert list(candidate_indices(240, 2.0, 1.0, 1000)) == list(range(0, 240, 2))
    capped = candidate_indices(240, 2.0, 2.0, 16)
    assert len(capped) == 16 and capped[0] == 0 and capped[-1] == 239
    assert list(candidate_indices(10, 30.0, 1.0, 100)) == [0]
    assert len(candidate_indices(0, 30.0, 1.0, 100)) == 0
