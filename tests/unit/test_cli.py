"""The `msjoe` command line: ingest, convert and the DB commands on real files."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from msjoe.cli import app
from tests.media import write_video

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"
runner = CliRunner()


def test_convert_writes_our_schema(tmp_path: Path) -> None:
    out = tmp_path / "lvb.jsonl"
    result = runner.invoke(app, ["convert", str(FIXTURES / "longvideobench" / "lvb_val.json"),
                                 "--format", "longvideobench", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert report["converted"] == len(rows) > 0
    assert all(row["answer"] in "ABCDE" and row["qid"].startswith("longvideobench-") for row in rows)


def test_convert_rejects_an_unknown_format(tmp_path: Path) -> None:
    result = runner.invoke(app, ["convert", str(FIXTURES / "longvideobench" / "lvb_val.json"),
                                 "--format", "egoschema", "--out", str(tmp_path / "x.jsonl")])
    assert result.exit_code != 0 and "unknown format" in result.output


def test_compare_lmms_eval_counts_agreement_and_writes_the_table(tmp_path: Path) -> None:
    import pandas as pd

    predictions = tmp_path / "predictions.parquet"
    pd.DataFrame([{"qid": f"videomme-001-{i}", "sampler": "msjoe_joint", "budget": 32, "answer": "A",
                   "prediction": p} for i, p in enumerate("AAB", start=1)]).to_parquet(predictions)
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"doc": {"question_id": f"001-{i}"}, "target": "A",
                                           "filtered_resps": [r]}) + "\n" for i, r in enumerate(["A", "C", "B"], 1)))
    result = runner.invoke(app, ["compare-lmms-eval", "--predictions", str(predictions), "--samples", str(samples),
                                 "--format", "videomme", "--out", str(tmp_path / "t.csv")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["questions"]["both"] == 3 and summary["same_answer_key"] == 1.0
    assert abs(summary["same_prediction"] - 2 / 3) < 1e-9 and len(pd.read_csv(tmp_path / "t.csv")) == 3


def test_ingest_then_rebuild_the_db(tmp_path: Path) -> None:
    write_video(tmp_path / "videos" / "a.mp4", n_frames=16, fps=4)
    qa = tmp_path / "qa.jsonl"
    good = {"qid": "q1", "video": "a.mp4", "question": "Which?", "options": ["x", "y"], "answer": "A"}
    qa.write_text(json.dumps(good) + "\n" + json.dumps({**good, "qid": "q2", "answer": "C"}) + "\n")
    out = tmp_path / "root" / "data" / "ingest"
    result = runner.invoke(app, ["ingest", str(qa), "--video-root", str(tmp_path / "videos"), "--out", str(out),
                                 "--max-reject-fraction", "0.5"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "report.json").read_text())["accepted"] == 1

    strict = runner.invoke(app, ["ingest", str(qa), "--video-root", str(tmp_path / "videos"), "--out",
                                 str(tmp_path / "strict"), "--max-reject-fraction", "0.1"])
    assert strict.exit_code == 1 and "1 of 2 QA lines rejected" in strict.output

    url = f"sqlite:///{tmp_path / 'meta.db'}"
    rebuilt = runner.invoke(app, ["db", "rebuild", "--root", str(tmp_path / "root"), "--url", url])
    assert rebuilt.exit_code == 0, rebuilt.output
    summary = runner.invoke(app, ["db", "summary", "--url", url])
    counts = json.loads(summary.output)
    assert counts["videos"] == 1 and counts["questions"] == 1
