"""Benchmark adapters: real annotation layouts in, exact schema rows and counted rejects out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from msjoe.adapters import FORMATS, ConvertReport, convert, convert_file, rejects_path
from msjoe.adapters._common import Reject, split_embedded_options, strip_letter_prefixes
from msjoe.adapters.lvbench import parse_time_reference

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"
INPUTS = {
    "videomme": FIXTURES / "videomme" / "test.json",
    "mlvu": FIXTURES / "mlvu",
    "longvideobench": FIXTURES / "longvideobench" / "lvb_val.json",
    "lvbench": FIXTURES / "lvbench" / "video_info.meta.jsonl",
}
#: The same benchmarks in the form lmms-eval's task files read (recognised automatically).
LMMS_EVAL_INPUTS = {
    "mlvu": FIXTURES / "mlvu-lmms-eval" / "mlvu_dev.json",
    "lvbench": FIXTURES / "lvbench-lmms-eval" / "lvbench.jsonl",
}


def _reasons(report: ConvertReport) -> dict[Any, str]:
    return {entry["item"]: entry["reason"] for entry in report.rejected}


def _write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- Video-MME

VIDEOMME_ROWS = [
    {
        "qid": "videomme-001-1",
        "video": "fFjv93ACGo8.mp4",
        "question": "When demonstrating the Germany modern Christmas tree is initially decorated "
        "with apples, candles and berries, which kind of the decoration has the largest number?",
        "options": ["Apples.", "Candles.", "Berries.", "The three kinds are of the same number."],
        "answer": "C",
        "category": "short/Counting Problem",
        "split": "test",
    },
    {
        "qid": "videomme-601-2",
        "video": "Qm9cXyZ0a1b.mp4",
        "question": "What happens right after the storm reaches the village?",
        "options": [
            "The villagers rebuild the bridge.",
            "A boat capsizes.",
            "The power fails.",
            "Nothing changes.",
        ],
        "answer": "A",
        "category": "long/Temporal Reasoning",
        "split": "test",
    },
]


def test_videomme_rows_strip_letters_and_keep_duration_group_in_category() -> None:
    rows, report = convert("videomme", INPUTS["videomme"])
    assert rows == VIDEOMME_ROWS
    assert (report.format, report.total, report.converted) == ("videomme", 6, 2)
    reasons = _reasons(report)
    assert list(reasons) == ["601-3", "602-1", "603-1", "001-1"]
    assert "'E' is not among the 4 options" in reasons["601-3"]
    assert "missing field 'videoID'" in reasons["602-1"]
    assert "must be lettered" in reasons["603-1"]
    assert "duplicate qid 'videomme-001-1'" in reasons["001-1"]


def test_videomme_parquet_gives_the_same_rows_as_json(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = json.loads(INPUTS["videomme"].read_text(encoding="utf-8"))
    for record in records:  # parquet needs one schema: fill the deliberately missing column
        record.setdefault("videoID", None)
    parquet = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(records), parquet)
    rows, report = convert("videomme", parquet)
    assert rows == VIDEOMME_ROWS
    assert report.total == 6 and report.converted == 2
    assert "missing field 'videoID'" in _reasons(report)["602-1"]


def test_videomme_grouped_json_is_flattened_per_question(tmp_path: Path) -> None:
    grouped = [
        {
            "video_id": "777",
            "duration": "medium",
            "domain": "Sports Competition",
            "sub_category": "Football",
            "videoID": "GoAl777",
            "questions": [
                {
                    "question_id": "777-1",
                    "task_type": "Counting Problem",
                    "question": "How many goals are scored?",
                    "options": ["A. 1.", "B. 2.", "C. 3.", "D. 4."],
                    "answer": "B",
                },
                {"question_id": "777-2", "task_type": "OCR Problems", "question": "Score?"},
            ],
        }
    ]
    rows, report = convert("videomme", _write_json(tmp_path / "grouped.json", grouped))
    assert rows == [
        {
            "qid": "videomme-777-1",
            "video": "GoAl777.mp4",
            "question": "How many goals are scored?",
            "options": ["1.", "2.", "3.", "4."],
            "answer": "B",
            "category": "medium/Counting Problem",
            "split": "test",
        }
    ]
    assert _reasons(report) == {"777-2": "missing field 'options'"}


# --------------------------------------------------------------------------- MLVU

MLVU_PLOT_ROW = {
    "qid": "mlvu-1_plotQA-0",
    "video": "1_plotQA/movie101_66.mp4",
    "question": "What color is the main male character in the video?",
    "options": ["Yellow", "Red", "Green", "Blue"],
    "answer": "A",
    "duration_s": 246.0,
    "category": "plotQA",
    "split": "dev",
}
MLVU_NEEDLE_ROW = {
    "qid": "mlvu-2_needle-0",
    "video": "2_needle/needle_32.mp4",
    "question": "What does the hand hold in the video?",
    "options": ["A pen", "A cup", "A key", "A phone", "A book"],
    "answer": "C",
    "duration_s": 467.3,
    "category": "findNeedle",
    "split": "dev",
}


def test_mlvu_folder_maps_answer_text_to_letter_and_task_folder() -> None:
    rows, report = convert("mlvu", INPUTS["mlvu"])
    assert rows == [MLVU_PLOT_ROW, MLVU_NEEDLE_ROW]
    assert (report.total, report.converted) == (5, 2)
    reasons = _reasons(report)
    assert "'In a forest' is not among the candidates" in reasons["1_plotQA.json#1"]
    assert "'candidates' must be a list" in reasons["2_needle.json#1"]
    assert "open-ended" in reasons["8_sub_scene.json#0"]


def test_mlvu_single_file_and_ambiguous_answer(tmp_path: Path) -> None:
    rows, report = convert("mlvu", INPUTS["mlvu"] / "1_plotQA.json")
    assert rows == [MLVU_PLOT_ROW] and report.total == 2

    items = [
        {
            "video": "order_1.mp4",
            "duration": 100,
            "question": "Which came first?",
            "candidates": ["the cat", "the dog", "the cat"],
            "answer": "the cat",
            "question_type": "order",
        }
    ]
    rows, report = convert("mlvu", _write_json(tmp_path / "5_order.json", items))
    assert rows == [] and "ambiguous" in _reasons(report)["5_order.json#0"]


def test_mlvu_lmms_eval_form_splits_embedded_options_and_names_tasks_as_official() -> None:
    rows, report = convert("mlvu", LMMS_EVAL_INPUTS["mlvu"])
    # the same question as the official file's first item: same fields but the qid
    assert rows[0] == {**MLVU_PLOT_ROW, "qid": "mlvu-1"}
    assert rows[1] == {
        "qid": "mlvu-2",
        "video": "count_12.mp4",
        "question": "How many times does the person jump?",
        "options": ["2", "3", "4", "5"],
        "answer": "C",
        "category": "count",
        "split": "dev",
    }
    assert (report.total, report.converted) == (4, 2)
    reasons = _reasons(report)
    assert "'E' is not among the 4 options" in reasons["3"]
    assert "no embedded options" in reasons["4"]


def test_mlvu_lmms_eval_parquet_reads_like_its_json(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = json.loads(LMMS_EVAL_INPUTS["mlvu"].read_text(encoding="utf-8"))
    for record in records:
        record.setdefault("duration", None)
    parquet = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(records), parquet)
    assert convert("mlvu", parquet)[0] == convert("mlvu", LMMS_EVAL_INPUTS["mlvu"])[0]


# --------------------------------------------------------------------------- LongVideoBench

LVB_ROWS = [
    {
        "qid": "longvideobench-86CxyhFV9MI_0",
        "video": "86CxyhFV9MI.mp4",
        "question": "In the video, which subtitles appear at the same time as the man with black "
        "hair, dressed in grey clothes with black sleeves, on stage?",
        "options": [
            "promisc has come to an end, in and run away countless times, i was just scared, i still",
            "run away countless times, i was just scared, i still and front of our crown, like a world of souls,",
            "promisc has come to an end, in and front of our crown, like a world of souls,",
            "promisc has come to an end, in and captain of the godson, three three three three three three",
        ],
        "answer": "B",
        "duration_s": 190.16,
        "category": "TOS",
        "split": "val",
    },
    {
        "qid": "longvideobench-zQx1kPQ7c2E_3",
        "video": "zQx1kPQ7c2E.mp4",
        "question": "After the woman in the red coat leaves the kitchen, what is on the table?",
        "options": ["A teapot", "A laptop", "Two plates", "A vase of flowers", "Nothing"],
        "answer": "E",
        "duration_s": 2950.4,
        "category": "E2O",
        "split": "val",
    },
]


def test_longvideobench_index_becomes_letter_and_bad_indices_are_rejected() -> None:
    rows, report = convert("longvideobench", INPUTS["longvideobench"])
    assert rows == LVB_ROWS
    assert (report.total, report.converted) == (5, 2)
    reasons = _reasons(report)
    assert "out of range for 4 candidates" in reasons["zQx1kPQ7c2E_4"]
    assert "missing field 'correct_choice'" in reasons["Ab12Cd34Ef5_0"]
    assert "must be an integer index" in reasons["Ab12Cd34Ef5_1"]


def test_longvideobench_lmms_eval_option_columns_drop_na_padding(tmp_path: Path) -> None:
    record = {
        "id": "pQ_1",
        "video_path": "pQ.mp4",
        "question": "What is shown?",
        "option0": "a bus",
        "option1": "a train",
        "option2": "a plane",
        "option3": "N/A",
        "option4": "N/A",
        "correct_choice": 2,
        "duration": 12.5,
        "question_category": "S2O",
    }
    rows, report = convert("longvideobench", _write_json(tmp_path / "val.json", [record]))
    assert report.rejected == []
    assert rows[0]["options"] == ["a bus", "a train", "a plane"] and rows[0]["answer"] == "C"


# --------------------------------------------------------------------------- LVBench

LVBENCH_ROWS = [
    {
        "qid": "lvbench-55",
        "video": "Cm73ma6Ibcs.mp4",
        "question": "What year appears in the opening caption of the video?",
        "options": ["1636", "1366", "1363", "1633"],
        "answer": "D",
        "duration_s": 7110.0,
        "category": "key information retrieval",
        "split": "test",
        "evidence": [[15.0, 19.0]],
    },
    {
        "qid": "lvbench-56",
        "video": "Cm73ma6Ibcs.mp4",
        "question": "Why does the fox (A) run back to the den?",
        "options": ["It is hungry", "It hears a hunter", "It is raining", "Its cub calls"],
        "answer": "B",
        "duration_s": 7110.0,
        "category": "entity recognition,reasoning",
        "split": "test",
        "evidence": [[3723.0, 3730.0]],
    },
    {
        "qid": "lvbench-58",
        "video": "Cm73ma6Ibcs.mp4",
        "question": "What is the title of the last scene?",
        "options": ["Home", "Winter", "The End", "Spring"],
        "answer": "C",
        "duration_s": 7110.0,
        "category": "summarization",
        "split": "test",
    },
    {
        "qid": "lvbench-902",
        "video": "Pq4rSt5Uv6W.mp4",
        "question": "Which river is shown at the start?",
        "options": ["The Nile", "The Danube", "The Amazon", "The Thames"],
        "answer": "C",
        "duration_s": 5415.0,
        "category": "key information retrieval",
        "split": "test",
        "evidence": [[0.0, 45.0], [50.0, 65.0]],
    },
]


def test_lvbench_splits_embedded_options_and_parses_evidence() -> None:
    rows, report = convert("lvbench", INPUTS["lvbench"])
    assert rows == LVBENCH_ROWS
    assert (report.total, report.converted) == (8, 4)
    reasons = _reasons(report)
    assert list(reasons) == ["57", "line 2", "line 3", "901"]
    assert "'E' is not among the 4 options" in reasons["57"]
    assert reasons["line 2"].startswith("invalid JSON")
    assert "missing field 'qa'" in reasons["line 3"]
    assert "no embedded options" in reasons["901"]
    assert [w["item"] for w in report.warnings] == ["58"]
    assert "near the end" in report.warnings[0]["reason"]


def test_lvbench_lmms_eval_rows_match_the_official_questions() -> None:
    rows, report = convert("lvbench", LMMS_EVAL_INPUTS["lvbench"])
    # no video_info in these rows, so no duration; everything else as the official file gives
    official = {row["qid"]: {k: v for k, v in row.items() if k != "duration_s"} for row in LVBENCH_ROWS}
    assert rows[0] == official["lvbench-55"]
    assert rows[1] == {**official["lvbench-56"], "question": "Why does the fox run back to the den?"}
    assert (report.total, report.converted) == (4, 2)
    reasons = _reasons(report)
    assert "missing field 'uid'" in reasons["line 3"]
    assert "must be relative to the video root" in reasons["58"]


def test_lvbench_question_and_time_reference_parsers() -> None:
    assert split_embedded_options("Q?\n(A) x\n(B)  y z \n(C) w") == ("Q?", ["x", "y z", "w"])
    with pytest.raises(Reject, match="in order"):
        split_embedded_options("Q?\n(A) x\n(C) y")
    with pytest.raises(Reject, match="empty"):
        split_embedded_options("Q?\n(A) x\n(B) ")
    assert parse_time_reference("00:15-00:19") == [[15.0, 19.0]]
    assert parse_time_reference("1:02:03 - 1:02:04.5; 5-9") == [[3723.0, 3724.5], [5.0, 9.0]]
    with pytest.raises(ValueError, match="ends before"):
        parse_time_reference("00:20-00:10")


# --------------------------------------------------------------------------- shared rules


@pytest.mark.parametrize(
    ("fmt", "path"), [(fmt, INPUTS[fmt]) for fmt in FORMATS] + sorted(LMMS_EVAL_INPUTS.items())
)
def test_every_item_is_accounted_for_and_qids_are_unique(fmt: str, path: Path) -> None:
    rows, report = convert(fmt, path)
    assert report.converted == len(rows) > 0
    assert report.converted + len(report.rejected) == report.total
    assert report.rejected, "each fixture holds malformed items"
    assert all(entry["reason"] for entry in report.rejected)
    qids = [row["qid"] for row in rows]
    assert len(set(qids)) == len(qids) and all(q.startswith(f"{fmt}-") for q in qids)


def test_unknown_format_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="videomme, mlvu, longvideobench, lvbench"):
        convert("egoschema", INPUTS["videomme"])


def test_missing_input_and_wrong_top_level_shape_raise(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        convert("longvideobench", tmp_path / "absent.json")
    with pytest.raises(ValueError, match="JSON list"):
        convert("longvideobench", _write_json(tmp_path / "obj.json", {"id": "x"}))


def test_strange_items_become_rejects_not_crashes(tmp_path: Path) -> None:
    items = [
        42,
        ["not", "an", "object"],
        {"id": "t1", "video_path": "../../etc/passwd", "question": "q", "candidates": ["a", "b"],
         "correct_choice": 0, "question_category": "X"},
        {"id": "t2", "video_path": "v.mp4", "question": "q", "candidates": ["a", 3],
         "correct_choice": 0, "question_category": "X"},
        {"id": "t3", "video_path": "v.mp4", "question": "q", "candidates": ["a"],
         "correct_choice": 0, "question_category": "X"},
        {"id": "t4", "video_path": "v.mp4", "question": "q", "candidates": ["a", "b"],
         "correct_choice": True, "question_category": "X"},
        {"id": "t5", "video_path": "v.mp4", "question": "q", "candidates": ["a", "b"],
         "correct_choice": 0, "duration": "long", "question_category": "X"},
    ]
    rows, report = convert("longvideobench", _write_json(tmp_path / "odd.json", items))
    assert rows == [] and report.total == len(items)
    reasons = _reasons(report)
    assert "must be a JSON object" in reasons[0] and "must be a JSON object" in reasons[1]
    assert "must be relative" in reasons["t1"]
    assert "candidates[1] must be a string" in reasons["t2"]
    assert "needs 2-10 options, got 1" in reasons["t3"]
    assert "integer index" in reasons["t4"]
    assert "'duration' must be a number" in reasons["t5"]


def test_letter_prefixes_are_stripped_only_when_all_options_carry_them_in_order() -> None:
    assert strip_letter_prefixes(["(A) x", "(B) y"], required=True) == ["x", "y"]
    assert strip_letter_prefixes(["A) x", "b: y", "[C] z"], required=True) == ["x", "y", "z"]
    # "A man ..." is text, not a label; a lone lettered option is left alone.
    mixed = ["A man runs", "B. Dog"]
    assert strip_letter_prefixes(mixed, required=False) == mixed
    with pytest.raises(Reject, match="lettered"):
        strip_letter_prefixes(["B. x", "A. y"], required=True)


def test_convert_file_writes_jsonl_that_round_trips_and_a_rejects_file(tmp_path: Path) -> None:
    out = tmp_path / "qa" / "lvbench.jsonl"
    report = convert_file("lvbench", INPUTS["lvbench"], out)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == LVBENCH_ROWS
    assert report.converted == len(lines) == 4
    rejects = rejects_path(out)
    assert rejects == tmp_path / "qa" / "lvbench.rejects.jsonl"
    written_rejects = rejects.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in written_rejects] == report.rejected
    assert json.loads(json.dumps(report.as_dict()))["total"] == 8

    # A clean re-run over the same output leaves no stale rejects file behind.
    clean = _write_json(tmp_path / "clean.json", [LVB_ROWS_SOURCE])
    report = convert_file("longvideobench", clean, tmp_path / "qa" / "lvbench.jsonl")
    assert report.rejected == [] and not rejects.exists()
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == [
        {"qid": "longvideobench-c_0", "video": "c.mp4", "question": "q?", "options": ["x", "y"],
         "answer": "B", "duration_s": 9.0, "category": "S2E", "split": "val"}
    ]


LVB_ROWS_SOURCE = {
    "id": "c_0",
    "video_path": "c.mp4",
    "question": "q?",
    "candidates": ["x", "y"],
    "correct_choice": 1,
    "duration": 9,
    "question_category": "S2E",
}
