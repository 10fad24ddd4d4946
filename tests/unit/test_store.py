"""Metadata store on SQLite: migrations, idempotent upserts, integrity, rebuild, configuration.

The ``check_*`` functions take a database URL and are shared with ``test_store_postgres.py``,
which runs the very same checks against a throwaway PostgreSQL server.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, delete, inspect, insert, select
from sqlalchemy.exc import IntegrityError

from msjoe.store import (
    TABLES,
    Base,
    Checkpoint,
    Evaluation,
    PipelineRun,
    Question,
    StageRun,
    StoreNotInitialisedError,
    Video,
    database_url,
    engine_for,
    init_db,
    latest_release,
    list_checkpoints,
    list_evaluations,
    list_pipeline_runs,
    list_stage_runs,
    rebuild,
    record_checkpoint,
    record_evaluation,
    record_pipeline_run,
    record_release,
    record_stage,
    schema_revision,
    session_scope,
    sha256_path,
    summary,
    upsert_questions,
    upsert_videos,
)
from msjoe.store.hashing import plain, sha256_json

SHA_A = "a" * 64
SHA_B = "b" * 64
SHA_C = "c" * 64


# --------------------------------------------------------------------------- shared helpers


def video(sha: str, path: str, n_frames: int = 300) -> dict[str, Any]:
    return {
        "sha256": sha,
        "path": path,
        "n_frames": n_frames,
        "fps": 10.0,
        "duration_s": n_frames / 10.0,
        "width": 64,
        "height": 48,
    }


def question(qid: str, sha: str, answer: str = "A", **extra: Any) -> dict[str, Any]:
    return {
        "qid": qid,
        "video_sha256": sha,
        "question": f"What colour was the star in {qid}?",
        "options": ["red", "green", "blue", "yellow"],
        "answer": answer,
        "category": "attribute",
        "split": "train",
        "evidence": [[1.5, 2.0]],
        **extra,
    }


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every store table, ordered by primary key, as plain tuples."""
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            out: dict[str, list[tuple[Any, ...]]] = {}
            for table in Base.metadata.sorted_tables:
                rows = conn.execute(select(table).order_by(*table.primary_key.columns)).all()
                out[table.name] = [tuple(row) for row in rows]
            return out
    finally:
        engine.dispose()


def write_fake_repo(root: Path, *, questions: list[dict[str, Any]] | None = None) -> Path:
    """A tiny pipeline output tree: dvc.yaml + dvc.lock, metrics, ingest parquet files."""
    (root / "data" / "ingest").mkdir(parents=True, exist_ok=True)
    (root / "reports").mkdir(exist_ok=True)
    (root / "dvc.yaml").write_text(
        "stages:\n"
        "  ingest:\n"
        "    cmd: python stages/ingest.py\n"
        "    outs: [data/ingest]\n"
        "  evaluate:\n"
        "    cmd: python stages/evaluate.py\n"
        "    metrics:\n"
        "    - reports/eval.json:\n"
        "        cache: false\n"
    )
    (root / "reports" / "eval.json").write_text(json.dumps({"accuracy": 0.625, "n": 8}))
    # run-dependent measurements live apart from the DVC metrics; indexed with them when present
    (root / "reports" / "timings").mkdir(exist_ok=True)
    (root / "reports" / "timings" / "evaluate.json").write_text(json.dumps({"wall_seconds": 1.5}))
    (root / "dvc.lock").write_text(
        "schema: '2.0'\n"
        "stages:\n"
        "  ingest:\n"
        "    cmd: python stages/ingest.py\n"
        "    deps:\n"
        "    - path: stages/ingest.py\n"
        "      hash: md5\n"
        "      md5: 0a1b2c3d4e5f60718293a4b5c6d7e8f9\n"
        "      size: 812\n"
        "    params:\n"
        "      params.yaml:\n"
        "        ingest.seed: 0\n"
        "        ingest.fps: 1.0\n"
        "    outs:\n"
        "    - path: data/ingest\n"
        "      hash: md5\n"
        "      md5: 11111111111111111111111111111111.dir\n"
        "      size: 4096\n"
        "      nfiles: 2\n"
        "  evaluate:\n"
        "    cmd:\n"
        "    - python stages/evaluate.py\n"
        "    - python stages/plots.py\n"
        "    deps:\n"
        "    - path: data/ingest\n"
        "      hash: md5\n"
        "      md5: 11111111111111111111111111111111.dir\n"
        "    outs:\n"
        "    - path: reports/eval.json\n"
        "      hash: md5\n"
        "      md5: 22222222222222222222222222222222\n"
    )
    pd.DataFrame(
        {
            "video": ["videos/v0.mp4", "videos/v1.mp4", "videos/v2.mp4"],
            "sha256": [SHA_A, SHA_B, SHA_C],
            "n_frames": np.array([300, 240, 360], dtype=np.int64),
            "fps": [10.0, 10.0, 12.0],
            "duration_s": [30.0, 24.0, 30.0],
            "width": np.array([64, 64, 64], dtype=np.int64),
            "height": np.array([48, 48, 48], dtype=np.int64),
        }
    ).to_parquet(root / "data" / "ingest" / "videos.parquet")
    if questions is None:
        questions = [
            {"qid": "q0", "video": "videos/v0.mp4", "answer": "A", "category": "attribute"},
            {"qid": "q1", "video": "videos/v0.mp4", "answer": "B", "category": "order"},
            {"qid": "q2", "video": "videos/v1.mp4", "answer": "C", "category": None},
            {"qid": "q3", "video": "videos/v2.mp4", "answer": "D", "category": "count"},
            {"qid": "q4", "video": "videos/missing.mp4", "answer": "A", "category": "count"},
        ]
    frame = pd.DataFrame(
        {
            "qid": [q["qid"] for q in questions],
            "video": [q["video"] for q in questions],
            "question": [f"Question {q['qid']}?" for q in questions],
            "options": [["red", "green", "blue", "yellow"] for _ in questions],
            "answer": [q["answer"] for q in questions],
            "duration_s": [30.0 for _ in questions],
            "category": [q["category"] for q in questions],
            "split": ["train" if i % 2 else "test" for i in range(len(questions))],
            "evidence": [[[1.0, 2.5], [7.0, 8.0]] for _ in questions],
        }
    )
    frame.to_parquet(root / "data" / "ingest" / "questions.parquet")
    return root


# --------------------------------------------------------------------------- shared checks


def check_migrations_match_models(url: str) -> None:
    """init_db creates exactly the ORM schema via Alembic, is re-runnable, and downgrades."""
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from msjoe.store.db import _alembic_config

    assert schema_revision(url) is None
    assert init_db(url) == "0001"
    assert init_db(url) == "0001"  # already at head: no-op
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            names = set(inspect(conn).get_table_names())
            assert names == set(TABLES) | {"alembic_version"}
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert diff == [], diff
            uniques = {
                tuple(u["column_names"]) for u in inspect(conn).get_unique_constraints("questions")
            }
            assert ("dataset", "qid") in uniques
        # The revision's downgrade really removes what its upgrade created.
        config = _alembic_config(url)
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    assert schema_revision(url) is None
    assert init_db(url) == "0001"


def check_upserts_idempotent(url: str) -> None:
    """Same rows twice -> no duplicates; changed fields -> updated in place, keys stable."""
    init_db(url)
    seen = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with session_scope(url) as s:
        first = upsert_videos(s, [video(SHA_A, "v0.mp4"), video(SHA_B, "v1.mp4")], now=seen)
        assert first.as_dict() == {"inserted": 2, "updated": 0, "unchanged": 0}
        qs = upsert_questions(s, [question("q0", SHA_A), question("q1", SHA_B)], dataset="demo")
        assert (qs.inserted, qs.updated, qs.unchanged) == (2, 0, 0)
    before = snapshot(url)

    with session_scope(url) as s:
        again = upsert_videos(s, [video(SHA_A, "v0.mp4"), video(SHA_B, "v1.mp4")])
        assert again.as_dict() == {"inserted": 0, "updated": 0, "unchanged": 2}
        qs = upsert_questions(s, [question("q0", SHA_A), question("q1", SHA_B)], dataset="demo")
        assert (qs.inserted, qs.updated, qs.unchanged) == (0, 0, 2)
    assert snapshot(url) == before

    with session_scope(url) as s:
        moved = upsert_videos(s, [video(SHA_A, "moved/v0.mp4")], now=datetime.now(UTC))
        assert moved.as_dict() == {"inserted": 0, "updated": 1, "unchanged": 0}
        changed = upsert_questions(
            s, [question("q0", SHA_A, answer="C"), question("q9", SHA_A)], dataset="demo"
        )
        assert (changed.inserted, changed.updated, changed.unchanged) == (1, 1, 0)
        # Same qid in another dataset is a different question.
        other = upsert_questions(s, [question("q0", SHA_B)], dataset="mlvu")
        assert other.inserted == 1
    with session_scope(url) as s:
        v = s.get(Video, SHA_A)
        assert v is not None and v.path == "moved/v0.mp4"
        assert v.first_seen == seen  # first_seen is never overwritten
        q0 = s.scalars(
            select(Question).where(Question.dataset == "demo", Question.qid == "q0")
        ).one()
        old_q0 = next(r for r in before["questions"] if r[1] == "demo" and r[2] == "q0")
        assert q0.answer == "C"
        assert q0.id == old_q0[0]  # updated in place, same surrogate key
        assert q0.content_hash != old_q0[-1]
        assert q0.options == ["red", "green", "blue", "yellow"]
        assert q0.evidence == [[1.5, 2.0]]
        assert s.scalar(select(Question.id).where(Question.qid == "q0", Question.dataset == "mlvu"))
    counts = summary(url)
    assert counts["videos"] == 2 and counts["questions"] == 4


def check_records_idempotent(url: str, tmp_path: Path) -> None:
    """Runs, stages, checkpoints, evaluations and releases upsert on their natural keys."""
    init_db(url)
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    (ckpt_dir / "weights.bin").write_bytes(b"\x00\x01" * 100)
    start = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    with session_scope(url) as s:
        run = record_pipeline_run(
            s, "flow-1", status="running", trigger="schedule", started_at=start
        )
        stage = record_stage(s, run, "train", status="running", started_at=start, cmd="python t.py")
    with session_scope(url) as s:
        end = datetime(2026, 5, 1, 13, 0, tzinfo=UTC)
        finished = record_pipeline_run(
            s, "flow-1", status="COMPLETED", trigger="schedule", ended_at=end
        )
        assert finished == run
        again = record_stage(
            s, run, "train", status="completed", ended_at=end, metrics={"reward": 1.25},
            outs={"models/sampler.pt": "abc"},
        )
        assert again == stage
        ck = record_checkpoint(s, kind="sampler", path=ckpt_dir, metrics={"loss": 0.5}, run_id=run)
        assert record_checkpoint(s, kind="sampler", path=ckpt_dir) == ck  # same content, same row
        ids = record_evaluation(
            s, checkpoint_id=ck, dataset="demo", sampler="msjoe", budget=8,
            metrics={"accuracy": 0.5, "evidence_hit": 0.75}, n_questions=16,
        )
        rerun = record_evaluation(
            s, checkpoint_id=ck, dataset="demo", sampler="msjoe", budget=8,
            metrics={"accuracy": 0.625},
        )
        assert rerun == ids[:1]
        rel = record_release(s, checkpoint_id=ck, bento_tag="msjoe:abc123", git_rev="deadbeef")
        again_rel = record_release(
            s, checkpoint_id=ck, bento_tag="msjoe:abc123", metrics={"accuracy": 0.625}
        )
        assert again_rel == rel
    with session_scope(url) as s:
        r = s.get(PipelineRun, run)
        assert r is not None
        assert (r.status, r.started_at, r.ended_at) == ("completed", start, end)  # None kept start
        st = s.get(StageRun, stage)
        assert st is not None
        assert (st.status, st.cmd, st.started_at) == ("completed", "python t.py", start)
        assert st.metrics == {"reward": 1.25} and st.outs_md5 == {"models/sampler.pt": "abc"}
        c = s.get(Checkpoint, ck)
        assert c is not None and c.sha256 == sha256_path(ckpt_dir) and c.metrics == {"loss": 0.5}
        acc = s.scalars(select(Evaluation).where(Evaluation.metric == "accuracy")).one()
        assert (acc.value, acc.n_questions) == (0.625, 16)
    assert summary(url) == {
        "pipeline_runs": 1, "videos": 0, "checkpoints": 1, "questions": 0,
        "stage_runs": 1, "evaluations": 2, "releases": 1,
    }
    metrics = [e["metric"] for e in list_evaluations(url, dataset="demo")]
    assert metrics == ["accuracy", "evidence_hit"]
    released = latest_release(url)
    assert released is not None
    assert str(released.pop("created_at")).endswith("+00:00")  # stored and read back as UTC
    assert released == {
        "bento_tag": "msjoe:abc123",
        "git_rev": "deadbeef",
        "metrics": {"accuracy": 0.625},
        "checkpoint_sha256": sha256_path(ckpt_dir),
        "checkpoint_kind": "sampler",
        "checkpoint_path": str(ckpt_dir),
    }
    assert [c["kind"] for c in list_checkpoints(url, kind="sampler")] == ["sampler"]
    assert list_checkpoints(url, kind="clip") == []
    assert list_pipeline_runs(url)[0]["n_stages"] == 1


def check_foreign_keys(url: str) -> None:
    """The database itself enforces references, cascades and check constraints."""
    init_db(url)
    with pytest.raises(IntegrityError), session_scope(url) as s:
        upsert_questions(s, [question("q0", SHA_C)], dataset="demo")  # unknown video
    with session_scope(url) as s:
        upsert_videos(s, [video(SHA_A, "v0.mp4")])
        upsert_questions(s, [question("q0", SHA_A)], dataset="demo")
        run = record_pipeline_run(s, "r", status="completed", trigger="manual")
        record_stage(s, run, "ingest", status="completed")
        record_stage(s, run, "train", status="completed")
    with pytest.raises(IntegrityError), session_scope(url) as s:
        s.execute(delete(Video).where(Video.sha256 == SHA_A))  # still referenced by q0
    with pytest.raises(IntegrityError), session_scope(url) as s:
        record_evaluation(
            s, checkpoint_id=999, dataset="d", sampler="uniform", budget=8, metrics={"a": 1}
        )
    with pytest.raises(IntegrityError), session_scope(url) as s:
        s.execute(insert(PipelineRun).values(run_key="bad", status="exploded", trigger="manual"))
    with pytest.raises(ValueError, match="status"), session_scope(url) as s:
        record_pipeline_run(s, "bad", status="exploded", trigger="manual")
    # Failed transactions left nothing behind; deleting a run cascades to its stages.
    assert summary(url)["evaluations"] == 0
    with session_scope(url) as s:
        s.execute(delete(PipelineRun).where(PipelineRun.run_key == "r"))
    counts = summary(url)
    assert (counts["pipeline_runs"], counts["stage_runs"], counts["videos"]) == (0, 0, 1)


def check_rebuild(url: str, root: Path) -> None:
    """Rebuild from a fake repo indexes everything it can, twice gives identical rows,
    and a changed ingest output is mirrored (updated and removed questions)."""
    write_fake_repo(root)
    first = rebuild(url, root, dataset="demo")
    assert first.stages == 2
    assert first.videos.as_dict() == {"inserted": 3, "updated": 0, "unchanged": 0}
    assert first.questions.as_dict() == {"inserted": 4, "updated": 0, "unchanged": 0}
    assert first.questions_skipped == 1
    assert any("not in the index" in n for n in first.notes)
    assert first.run_key is not None and first.run_key.startswith("rebuild:")
    rows = snapshot(url)

    second = rebuild(url, root, dataset="demo")
    assert snapshot(url) == rows
    assert second.run_key == first.run_key
    assert second.videos.as_dict() == {"inserted": 0, "updated": 0, "unchanged": 3}
    assert second.questions.as_dict() == {"inserted": 0, "updated": 0, "unchanged": 4}

    stages = {s["stage"]: s for s in list_stage_runs(url, first.run_key)}
    assert set(stages) == {"ingest", "evaluate"}
    assert stages["evaluate"]["metrics"] == {"reports/eval.json": {"accuracy": 0.625, "n": 8},
                                             "reports/timings/evaluate.json": {"wall_seconds": 1.5}}
    assert stages["ingest"]["metrics"] is None  # neither metrics nor timings: nothing indexed
    with session_scope(url) as s:
        ingest = s.scalars(select(StageRun).where(StageRun.stage == "ingest")).one()
        assert ingest.deps_md5 == {"stages/ingest.py": "0a1b2c3d4e5f60718293a4b5c6d7e8f9"}
        assert ingest.outs_md5 == {"data/ingest": "11111111111111111111111111111111.dir"}
        assert ingest.params == {"params.yaml": {"ingest.seed": 0, "ingest.fps": 1.0}}
        evaluate = s.scalars(select(StageRun).where(StageRun.stage == "evaluate")).one()
        assert evaluate.cmd == "python stages/evaluate.py && python stages/plots.py"
        q2 = s.scalars(select(Question).where(Question.qid == "q2")).one()
        assert (q2.video_sha256, q2.category, q2.split, q2.dataset) == (SHA_B, None, "test", "demo")
        assert q2.options == ["red", "green", "blue", "yellow"]
        assert q2.evidence == [[1.0, 2.5], [7.0, 8.0]]
        assert s.get(Video, SHA_C).n_frames == 360  # type: ignore[union-attr]

    # A newer ingest: q1's answer changed, q3 is gone.
    write_fake_repo(
        root,
        questions=[
            {"qid": "q0", "video": "videos/v0.mp4", "answer": "A", "category": "attribute"},
            {"qid": "q1", "video": "videos/v0.mp4", "answer": "C", "category": "order"},
            {"qid": "q2", "video": "videos/v1.mp4", "answer": "C", "category": None},
        ],
    )
    third = rebuild(url, root, dataset="demo")
    assert third.questions.as_dict() == {"inserted": 0, "updated": 1, "unchanged": 2}
    assert third.questions_removed == 1
    with session_scope(url) as s:
        assert sorted(s.scalars(select(Question.qid))) == ["q0", "q1", "q2"]
        assert s.scalars(select(Question.answer).where(Question.qid == "q1")).one() == "C"


# --------------------------------------------------------------------------- SQLite tests


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


def test_migrations_create_the_orm_schema(url: str) -> None:
    check_migrations_match_models(url)


def test_upserts_are_idempotent_and_update_changed_fields(url: str) -> None:
    check_upserts_idempotent(url)


def test_records_upsert_on_natural_keys(url: str, tmp_path: Path) -> None:
    check_records_idempotent(url, tmp_path)


def test_foreign_keys_and_constraints_are_enforced(url: str) -> None:
    check_foreign_keys(url)


def test_rebuild_twice_gives_identical_rows(url: str, tmp_path: Path) -> None:
    check_rebuild(url, tmp_path / "repo")


def test_rebuild_of_an_empty_tree_notes_every_missing_input(url: str, tmp_path: Path) -> None:
    report = rebuild(url, tmp_path)
    assert report.stages == 0 and report.videos.total == 0 and report.questions.total == 0
    text = " | ".join(report.notes)
    for name in ("dvc.lock", "videos.parquet", "questions.parquet"):
        assert name in text
    assert summary(url) == {name: 0 for name in TABLES}
    json.dumps(report.as_dict())  # report is JSON-able for the CLI


def test_rebuild_reports_malformed_inputs(url: str, tmp_path: Path) -> None:
    (tmp_path / "data" / "ingest").mkdir(parents=True)
    (tmp_path / "dvc.lock").write_text("stages: [not, a, mapping]\n")
    pd.DataFrame({"video": ["a.mp4"], "sha256": [SHA_A]}).to_parquet(
        tmp_path / "data" / "ingest" / "videos.parquet"
    )
    (tmp_path / "data" / "ingest" / "questions.parquet").write_bytes(b"not parquet")
    report = rebuild(url, tmp_path)
    text = " | ".join(report.notes)
    assert "no 'stages' mapping" in text
    assert "lacks columns" in text and "n_frames" in text
    assert "questions.parquet unreadable" in text
    assert summary(url)["videos"] == 0


def test_database_url_default_and_env_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MSJOE_DB_URL", raising=False)
    assert database_url(tmp_path) == f"sqlite:///{tmp_path.resolve()}/msjoe.db"
    monkeypatch.chdir(tmp_path)
    assert database_url() == f"sqlite:///{tmp_path.resolve()}/msjoe.db"
    other = tmp_path / "nested" / "dir" / "custom.db"
    monkeypatch.setenv("MSJOE_DB_URL", f"sqlite:///{other}")
    assert database_url(tmp_path) == f"sqlite:///{other}"
    init_db(database_url(tmp_path))  # parent folders are created for SQLite files
    assert other.is_file() and not (tmp_path / "msjoe.db").exists()


def test_session_scope_rolls_back_on_error(url: str) -> None:
    init_db(url)
    with pytest.raises(RuntimeError, match="boom"), session_scope(url) as s:
        upsert_videos(s, [video(SHA_A, "v0.mp4")])
        raise RuntimeError("boom")
    assert summary(url)["videos"] == 0


def test_readers_refuse_an_unmigrated_database(url: str) -> None:
    with pytest.raises(StoreNotInitialisedError, match="init_db"):
        summary(url)


def test_in_memory_engine_keeps_its_data_across_sessions() -> None:
    engine = engine_for("sqlite://")
    assert isinstance(engine, Engine)
    assert init_db(engine) == "0001"
    with session_scope(engine) as s:
        upsert_videos(s, [video(SHA_A, "v0.mp4")])
    assert summary(engine)["videos"] == 1
    engine.dispose()


def test_bad_rows_are_rejected_with_a_clear_error(url: str) -> None:
    init_db(url)
    with pytest.raises(ValueError, match="missing"), session_scope(url) as s:
        upsert_videos(s, [{"sha256": SHA_A, "path": "x.mp4"}])
    with pytest.raises(ValueError, match="no dataset"), session_scope(url) as s:
        upsert_questions(s, [question("q0", SHA_A)])
    with pytest.raises(ValueError, match="options"), session_scope(url) as s:
        upsert_questions(s, [question("q0", SHA_A, options="red")], dataset="demo")


def test_content_hashes_are_stable_and_content_sensitive(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "w.bin").write_bytes(b"weights")
        (folder / "config.json").write_text('{"dim": 8}')
    assert sha256_path(a) == sha256_path(b)  # location does not matter
    (b / "config.json").write_text('{"dim": 9}')
    assert sha256_path(a) != sha256_path(b)
    assert sha256_json({"x": 1, "y": [1, 2]}) == sha256_json({"y": [1, 2], "x": 1})
    assert plain({"n": np.int64(3), "v": np.array([[1.0, 2.0]]), "m": float("nan")}) == {
        "n": 3, "v": [[1.0, 2.0]], "m": None,
    }
    with pytest.raises(FileNotFoundError):
        sha256_path(tmp_path / "absent")


def test_one_lock_reader_gives_the_rows_of_rebuild_and_the_flows(tmp_path: Path) -> None:
    import doctest

    from msjoe.store import dvc_lock

    assert doctest.testmod(dvc_lock).failed == 0
    assert dvc_lock.read_lock(tmp_path) is None and dvc_lock.lock_entries(tmp_path) == {}
    (tmp_path / "dvc.lock").write_text("stages: [\n")
    with pytest.raises(dvc_lock.LockFileError, match="not valid YAML"):
        dvc_lock.lock_entries(tmp_path)
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  two:\n    cmd: [a, b]\n    deps: [{path: x, md5: m1}]\n"
        "    outs: [{path: y, md5: m2, size: 3}]\n    params: {params.yaml: {k: 1}}\n"
    )
    (entry,) = dvc_lock.lock_entries(tmp_path).values()
    fields = dvc_lock.stage_fields(entry)
    assert {k: fields[k] for k in ("cmd", "deps", "outs", "params")} == {
        "cmd": "a && b", "deps": {"x": "m1"}, "outs": {"y": "m2"}, "params": {"params.yaml": {"k": 1}}}
    assert fields["lock_hash"] == sha256_json(entry)
