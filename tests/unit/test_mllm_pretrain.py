"""The base MLLM: the demo's pre-training command (msjoe pretrain-demo-base) and the
pretrain_mllm stage, which records a local checkpoint or a hub id."""

from __future__ import annotations

import doctest
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from msjoe.mllm import pretrain
from msjoe.mllm.build import TinyMLLMConfig
from msjoe.mllm.demo_base import DemoBaseConfig, VisionPretrainConfig, pretrain_demo_base
from msjoe.mllm.load import load_mllm
from msjoe.mllm.parsing import OPTION_LETTERS, parse_answer, parse_queries
from msjoe.mllm.prompts import build_answer_messages
from msjoe.mllm.pretrain import MLLMPretrainConfig, WorldVideos, answer_examples, build_corpus, caption_examples, event_runs, frame_set, load_world_questions, prepare_mllm, query_examples
from msjoe.mllm.manifest import MANIFEST, identity_for, load_prepared_mllm, read_manifest
from msjoe.mllm.sft import SFTConfig
from msjoe.world import WorldConfig, generate_world
from msjoe.world.reasoning import implied_option

ROOT = Path(__file__).resolve().parents[2]
HUB_ID = "Qwen/Qwen2.5-VL-7B-Instruct"
TINY_MODEL = TinyMLLMConfig(
    vocab_size=400,
    hidden_size=64,
    intermediate_size=128,
    num_heads=4,
    num_kv_heads=2,
    vision_hidden_size=32,
    vision_intermediate_size=64,
    vision_depth=1,
    max_pixels=32 * 32,
)


def _config(**overrides: object) -> MLLMPretrainConfig:
    base: dict[str, object] = {
        "model": TINY_MODEL,
        "sft": SFTConfig(learning_rate=5e-3, batch_size=4, max_steps=12, warmup_ratio=0.1, log_every=0),
        "k_frames": 4,
        "frame_size": 32,
        "preview_size": 16,
        "evidence_sets": 1,
        "no_evidence_ratio": 1.0,
        "extra_questions": 1,
        "caption_steps": 4,
        "caption_batch_size": 4,
        "caption_frames_per_video": 4,
        "query_steps": 3,
        "query_batch_size": 4,
        "query_repeats": 1,
        "eval_questions": 2,
        "eval_batch_size": 4,
    }
    return MLLMPretrainConfig(**{**base, **overrides})


pytestmark = pytest.mark.usefixtures("one_thread")  # torch on one thread (tests/conftest.py)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    cfg = WorldConfig(videos={"train": 2, "eval": 1}, frames=48, size=32, scene_frames=(12, 24))
    generate_world(cfg, out, progress=False)
    return out


def _tiny_base_config() -> DemoBaseConfig:
    return DemoBaseConfig(
        world=WorldConfig(seed=3, videos={"train": 2, "eval": 2}, frames=48, size=32, scene_frames=(12, 24)),  # 2 eval videos: options_swapped needs two questions per family
        vision=VisionPretrainConfig(steps=3, batch_size=4, warmup_steps=1, background_frames_per_video=4, eval_frames=8),
        pretrain=_config(),
        threads=1,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny demo base model made by the real command's function (all phases, few steps)."""
    root = tmp_path_factory.mktemp("base")
    return root / "demo-mllm", pretrain_demo_base(root / "demo-mllm", _tiny_base_config(), root / "work", progress=False)


def _blocked_connect(*args: object, **kwargs: object) -> None:
    raise AssertionError("the paper-scale branch must not touch the network")


# ------------------------------------------------------------------------------ pure helpers


def test_doctests_pass() -> None:
    result = doctest.testmod(pretrain)
    assert result.attempted >= 2 and result.failed == 0


def test_evidence_sets_cover_every_event_and_evidence_free_sets_avoid_them() -> None:
    evidence = [10, 11, 12, 30, 31, 70]  # three events
    events = [10, 11, 12, 20, 21, 30, 31, 50, 51, 52, 70]  # + two distractor events
    rng = np.random.default_rng(0)
    for _ in range(50):
        with_ev = frame_set(evidence, 100, 8, rng, event_frames=events, distractor_event_fraction=0.5)
        assert with_ev == sorted(set(with_ev)) and len(with_ev) == 8
        assert all(any(f in with_ev for f in run) for run in event_runs(evidence))
        # exactly one frame per target event: the fillers never repeat evidence
        assert sum(f in evidence for f in with_ev) == 3
        without = frame_set(evidence, 100, 8, rng, with_evidence=False, event_frames=events, distractor_event_fraction=0.5)
        assert without == sorted(set(without)) and len(without) == 8
        assert not set(without) & set(evidence)
    # With every filler taken from other events, distractor events do show up.
    rng = np.random.default_rng(1)
    only_events = frame_set(evidence, 100, 8, rng, event_frames=events, distractor_event_fraction=1.0)
    assert set(only_events) <= set(events)


def test_more_target_events_than_frames_keeps_k_event_frames() -> None:
    evidence = [0, 5, 10, 15, 20, 25]
    chosen = frame_set(evidence, 40, 4, np.random.default_rng(0))
    assert len(chosen) == 4 and set(chosen) <= set(evidence)


def test_config_from_mapping_builds_nested_configs_and_rejects_typos() -> None:
    cfg = MLLMPretrainConfig.from_mapping(
        {"k_frames": 6, "model": {"hidden_size": 64, "num_heads": 4}, "sft": {"max_steps": 3, "betas": [0.9, 0.99]}}
    )
    assert cfg.n_preview == 3 and cfg.model.hidden_size == 64 and cfg.sft.betas == (0.9, 0.99)
    with pytest.raises(ValueError, match="k_frame"):
        MLLMPretrainConfig.from_mapping({"k_frame": 8})
    with pytest.raises(ValueError, match="hidden"):
        MLLMPretrainConfig.from_mapping({"model": {"hidden": 64}})


# ------------------------------------------------------------------------------ examples


def test_examples_from_the_world_follow_the_design(world: Path) -> None:
    cfg = _config(evidence_sets=3, no_evidence_ratio=1.0, k_frames=6, train_frame_counts=(2, 6), describe=False)
    questions = load_world_questions(world, "train")
    assert questions and {q.qid.split("_")[0] for q in questions} == {"train"}
    videos = WorldVideos(world)
    answers = answer_examples(questions, videos, cfg, np.random.default_rng(0))
    by_qid = {q.qid: q for q in questions}
    assert sum(a.with_evidence for a in answers) == 3 * len(questions)
    assert {len(a.frames) for a in answers} == {2, 6}
    wrong = 0
    for a in answers:
        q = by_qid[a.qid]
        assert list(a.frames) == sorted(set(a.frames))
        images = [i for m in a.example.messages for i in m["content"] if i.get("type") == "image"]
        assert len(images) == len(a.frames) and max(images[0]["image"].size) <= cfg.frame_size
        # The default reply names the option's text, which parses to its letter with the options.
        assert a.example.target == f"<answer>{q.options[OPTION_LETTERS.index(a.letter)]}</answer>"
        assert parse_answer(a.example.target, len(q.options), options=q.options) == a.letter
        if a.with_evidence:
            # shown the evidence, the events seen imply the right answer
            assert all(any(f in a.frames for f in run) for run in event_runs(q.evidence_frames))
            assert a.letter == q.answer
        else:
            assert not set(a.frames) & set(q.evidence_frames)
            implied = implied_option(q.question, q.options, videos.seen(q.video, a.frames))
            if implied is not None:  # what was seen decides (e.g. a count that is too low)
                assert a.letter == OPTION_LETTERS[implied]
            wrong += a.letter != q.answer
    # Without the evidence the target is what the frames imply or a guess, mostly not the answer.
    assert wrong > 0

    queries = query_examples(questions, videos, cfg)
    assert len(queries) == cfg.query_repeats * len(questions)
    for example, q in zip(queries[:: cfg.query_repeats], questions, strict=True):
        assert parse_queries(example.target).queries == list(q.reference_queries)
        images = [i["image"] for m in example.messages for i in m["content"] if i.get("type") == "image"]
        assert len(images) == cfg.n_preview and all(max(im.size) <= cfg.preview_size for im in images)


def test_letter_format_and_seen_list(world: Path) -> None:
    cfg = _config(evidence_sets=2, no_evidence_ratio=0.0, answer_format="letter", describe=True)
    questions = load_world_questions(world, "train")
    videos = WorldVideos(world)
    for a in answer_examples(questions, videos, cfg, np.random.default_rng(0)):
        q = next(q for q in questions if q.qid == a.qid)
        seen, tag = a.example.target.split(" <answer>")
        assert tag == f"{q.answer}</answer>"
        # Every target event is listed, by its caption, in time order.
        assert seen.startswith("Seen: ") and all(c in seen for c in q.target_captions)
        listed = seen.removeprefix("Seen: ").removesuffix(".").split(", ")
        starts = {e.caption: e.start for e in videos.events(q.video)}
        assert [starts[c] for c in listed] == sorted(starts[c] for c in listed)


def test_caption_examples_describe_their_frame(world: Path) -> None:
    cfg = _config(caption_frames_per_video=6, caption_event_fraction=0.5)
    videos = WorldVideos(world)
    captions = caption_examples(world, videos, cfg, np.random.default_rng(0))
    assert len(captions) == 2 * 6
    with_event = [c for c in captions if " on a " in c.target]
    assert len(with_event) == 2 * 3
    # Each image is a real frame of a training video and the target is that frame's caption.
    truth = []
    for path in sorted((world / "frames").glob("train_*.jsonl")):
        frames = videos.frames(f"videos/train/{path.stem}.mp4")
        for line in path.read_text().splitlines():
            row = json.loads(line)
            truth.append((frames[row["frame"]], row["caption"]))
    for example in captions:
        images = [i["image"] for m in example.messages for i in m["content"] if i.get("type") == "image"]
        assert len(images) == 1
        pixels = np.asarray(images[0])
        assert any(np.array_equal(pixels, f) and c == example.target for f, c in truth)


def test_corpus_reads_the_training_split_only(world: Path) -> None:
    corpus = build_corpus(world, "train")
    train = {q.question for q in load_world_questions(world, "train")}
    eval_only = {q.question for q in load_world_questions(world, "eval")} - train
    assert train <= set(corpus)
    assert not eval_only & set(corpus)
    assert "a red star" in corpus  # the canonical vocabulary is always there


# ------------------------------------------------------------------------------ demo scale


def test_demo_base_command_trains_saves_and_loads_through_the_one_loader(trained: tuple[Path, dict]) -> None:
    out, report = trained
    saved = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "chat_template.jinja", "report.json"} <= saved
    assert not out.with_name(out.name + ".partial").exists()
    assert json.loads((out / "report.json").read_text())["fingerprint"] == report["fingerprint"]
    vision = report["vision"]
    assert vision["steps"] == 3 and set(vision["held_out_accuracy"]) >= {"shape_frame", "colour_preview"}
    phases = report["phases"]
    assert (phases["caption"]["steps"], phases["query"]["steps"], phases["turns"]["steps"]) == (4, 3, 12)
    assert report["phases"]["turns"]["final_loss"] < report["phases"]["turns"]["first_loss"]
    assert report["examples"]["answer_with_evidence"] == report["train_questions"]
    ev = report["eval"]
    assert ev["eval_questions"] == 2
    for key in ("accuracy_evidence", "accuracy_uniform", "accuracy_no_evidence", "query_parse_rate"):
        assert 0.0 <= ev[key] <= 1.0
    # The checkpoint is a Qwen2.5-VL directory that the auto classes load, as for the 7B model.
    mllm = load_mllm(str(out))
    assert type(mllm.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    frames = [np.zeros((32, 32, 3), dtype=np.uint8)] * 4
    reply = mllm.generate([build_answer_messages("What colour was the star?", ["red", "blue"], frames)], max_new_tokens=6)[0]
    assert reply.token_ids


def test_demo_base_is_deterministic_and_reuses_its_world(trained: tuple[Path, dict], tmp_path: Path) -> None:
    out, report = trained
    cfg_world = report["config"]["world"]
    work = out.parent / "work"
    cfg = _tiny_base_config()
    assert sorted(p.name for p in work.iterdir()) == [
        f"turns-{cfg.turns_fingerprint()}", f"vision-{cfg.vision_fingerprint()}.pt", f"world-{cfg.world_fingerprint()}"
    ]
    # from scratch in a fresh work directory: the same bytes
    fresh = pretrain_demo_base(tmp_path / "fresh", cfg, tmp_path / "work", progress=False)
    assert fresh["fingerprint"] == report["fingerprint"] and cfg_world["seed"] == 3
    assert (tmp_path / "fresh" / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    # a second pass resumes after the cached mixed phase, and training it changes the weights
    longer = replace(cfg, pretrain=replace(cfg.pretrain, second_pass_steps=2))
    assert longer.turns_fingerprint() == cfg.turns_fingerprint()
    resumed = pretrain_demo_base(tmp_path / "longer", longer, work, progress=False)
    assert resumed["phases"]["second_pass"]["steps"] == 2
    assert resumed["phases"]["turns"] == report["phases"]["turns"]
    assert (tmp_path / "longer" / "model.safetensors").read_bytes() != (out / "model.safetensors").read_bytes()


def test_answer_format_tool_continues_a_copy_in_letters_and_leaves_the_base_alone(
    trained: tuple[Path, dict], tmp_path: Path
) -> None:
    """``tools/answer_format.py`` (the letter-format measurement in its docstring): it trains a
    copy of the base on the recipe's world, saves and reports it, and never writes the base."""
    from tools.answer_format import continue_in_format

    base, _ = trained
    before = {p.name: p.read_bytes() for p in base.iterdir()}
    cfg = _tiny_base_config()
    report = continue_in_format(base, cfg, base.parent / "work", "letter", 2, 1e-3, seed=7, out=tmp_path / "letter")
    assert {p.name: p.read_bytes() for p in base.iterdir()} == before
    assert report["answer_format"] == "letter" and report["steps"] == 2
    assert report["world"] == cfg.world_fingerprint()  # the fixture's cached world, not a new one
    assert report["examples"]["answer"] > 0 and np.isfinite(report["final_loss"])
    assert 0.0 <= report["eval"]["answer_parse_rate_evidence"] <= 1.0
    swapped = report["eval"]["options_swapped"]
    assert swapped["questions"] == len(load_world_questions(base.parent / "work" / f"world-{cfg.world_fingerprint()}", "eval"))
    assert all(0.0 <= swapped[k] <= 1.0 for k in ("same_answer", "names_shown_option", "names_own_option"))
    saved = tmp_path / "letter" / "model.safetensors"
    assert saved.read_bytes() != (base / "model.safetensors").read_bytes()  # two steps moved the weights
    assert json.loads((tmp_path / "letter" / "report.json").read_text())["eval"] == json.loads(
        json.dumps(report["eval"], default=str))
    load_mllm(str(tmp_path / "letter"))
    # 0 steps measures the base as it is: the saved copy carries the base's weights
    as_is = continue_in_format(base, cfg, base.parent / "work", "letter", 0, 1e-3, seed=7, out=tmp_path / "as-is")
    assert as_is["examples"] == {} and as_is["final_loss"] is None
    assert (tmp_path / "as-is" / "model.safetensors").read_bytes() == (base / "model.safetensors").read_bytes()


class _Replier:
    """Stands in for the MLLM's ``generate`` in the options-sensitivity test: ``reads_options``
    answers the first option it is shown, otherwise it always answers the same text."""

    def __init__(self, reads_options: bool) -> None:
        self.reads_options = reads_options

    def generate(self, conversations: list, **_: object) -> list[SimpleNamespace]:
        texts = [m["content"][-1]["text"] for m in (c[-1] for c in conversations)]
        answers = [t.split("Options:\nA. ")[1].split("\n")[0] if self.reads_options else "a grey blob" for t in texts]
        return [SimpleNamespace(text=f"Seen: nothing. <answer>{a}</answer>") for a in answers]


def test_options_sensitivity_tells_a_model_that_reads_its_options_from_one_that_does_not(world: Path) -> None:
    from tools.answer_format import options_sensitivity

    cfg = _config()
    own = load_world_questions(world, "eval")
    # a second question per family, the same one with its options reversed: each is the other's donor
    questions = own + [replace(q, qid=f"{q.qid}-r", options=q.options[::-1]) for q in own]
    videos = WorldVideos(world)
    reads = options_sensitivity(_Replier(True), questions, videos, cfg)
    assert reads == {"questions": len(questions), "same_answer": 0.0, "names_shown_option": 1.0,
                     "names_own_option": 1.0}  # the donor's first option is one of its own, reversed
    ignores = options_sensitivity(_Replier(False), questions, videos, cfg)
    assert ignores == {"questions": len(questions), "same_answer": 1.0, "names_shown_option": 0.0,
                       "names_own_option": 0.0}
    with pytest.raises(ValueError, match="no other question"):
        options_sensitivity(_Replier(True), own, videos, cfg)  # one question per family


def test_stage_records_a_relative_checkpoint_as_given(trained: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, _ = trained
    shutil.copytree(out, tmp_path / "weights" / "demo-mllm")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(socket.socket, "connect", _blocked_connect)
    report = prepare_mllm("weights/demo-mllm", tmp_path / "models" / "mllm")
    # relative stays relative: the record (and dvc.lock) is the same in every clone
    assert report["name_or_path"] == "weights/demo-mllm"
    assert report["identity"] == identity_for("weights/demo-mllm")
    assert report["base_model"]["command"] == "msjoe pretrain-demo-base"
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    mllm = load_prepared_mllm(tmp_path / "models" / "mllm")
    assert mllm.identity == report["identity"]


# ------------------------------------------------------------------------------ paper scale


def test_paper_branch_records_a_hub_id_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _blocked_connect)
    report = prepare_mllm(HUB_ID, tmp_path / "mllm")
    assert report == {"name_or_path": HUB_ID, "identity": HUB_ID}
    assert json.loads((tmp_path / "mllm" / MANIFEST).read_text()) == {"name_or_path": HUB_ID, "identity": HUB_ID}
    assert sorted(p.name for p in (tmp_path / "mllm").iterdir()) == [MANIFEST]
    assert read_manifest(tmp_path / "mllm").resolve(tmp_path / "mllm") == HUB_ID


def test_paper_branch_records_a_local_checkpoint_that_then_loads(
    trained: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = tmp_path / "Qwen2.5-VL-local"
    shutil.copytree(trained[0], checkpoint)
    monkeypatch.setattr(socket.socket, "connect", _blocked_connect)
    report = prepare_mllm(str(checkpoint), tmp_path / "mllm")
    assert report["name_or_path"] == str(checkpoint.resolve())
    assert report["identity"].startswith("Qwen2.5-VL-local@sha256:")
    monkeypatch.undo()
    assert type(load_prepared_mllm(tmp_path / "mllm").model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    # A changed checkpoint gets a new identity.
    (checkpoint / "generation_config.json").write_text('{"changed": true}')
    assert identity_for(str(checkpoint)) != report["identity"]


def test_stage_cli_paper_scale(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"mllm": {"name_or_path": HUB_ID}}))
    env = {**os.environ, "MSJOE_LOG_LEVEL": "WARNING"}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "stages" / "pretrain_mllm.py"),
            "--out",
            str(tmp_path / "models" / "mllm"),
            "--report",
            str(tmp_path / "reports" / "pretrain_mllm.json"),
            "--params",
            str(params),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "reports" / "pretrain_mllm.json").read_text())
    assert report == {"identity": HUB_ID, "name_or_path": HUB_ID}
    assert read_manifest(tmp_path / "models" / "mllm").name_or_path == HUB_ID


def test_reading_tool_measures_the_recipes_own_evaluation_and_splits_it(trained: tuple[Path, dict]) -> None:
    """``tools/reading.py measure``: on the recipe's evidence frame sets its accuracy and parse
    rate are the recipe's evaluation's; the other measures are shares of the same questions."""
    from tools.reading import measure, reading_report

    base, report = trained
    cfg = _tiny_base_config()
    world_dir = base.parent / "work" / f"world-{cfg.world_fingerprint()}"
    questions = load_world_questions(world_dir, "eval")
    first = reading_report(load_mllm(str(base)), questions[: cfg.pretrain.eval_questions], WorldVideos(world_dir), cfg.pretrain)
    assert first["accuracy"] == pytest.approx(report["eval"]["accuracy_evidence"])
    assert first["answer_parse_rate"] == pytest.approx(report["eval"]["answer_parse_rate_evidence"])
    whole = measure(base, cfg, base.parent / "work")
    assert whole["questions"] == len(questions) and whole["world"] == cfg.world_fingerprint()
    for name in ("list_exact", "list_implies_right", "reads_own_list", "reads_given_list"):
        assert 0.0 <= whole[name] <= 1.0
        assert set(whole[f"{name}_per_family"]) == {q.category for q in questions}


def test_reading_examples_give_the_true_list_and_score_only_the_option_it_implies(world: Path) -> None:
    from tools.reading import reading_examples

    videos = WorldVideos(world)
    questions = load_world_questions(world, "train")
    examples = reading_examples(questions, videos, _config(distractor_event_fraction=0.5), 48, sets_per_question=4, seed=0)
    assert examples and len({id(q) for _, q, _ in examples}) > 1
    for example, q, letter in examples:
        assert example.prefix.startswith("Seen: ") and example.prefix.endswith(" <answer>")
        listed = example.prefix.removeprefix("Seen: ").removesuffix(". <answer>")
        seen = [] if listed == "nothing" else listed.split(", ")
        index = OPTION_LETTERS.index(letter)
        assert implied_option(q.question, q.options, seen) == index
        assert example.target == f"{q.options[index]}</answer>"
        assert not any(item.get("type") == "image" for m in example.messages for item in m["content"])


def test_reading_tool_trains_a_fresh_model_of_the_given_size_or_a_copy_of_the_base(trained: tuple[Path, dict]) -> None:
    from tools.reading import learn_reading

    base, _ = trained
    cfg = _tiny_base_config()
    before = {p.name: p.read_bytes() for p in base.iterdir()}
    fresh = learn_reading(cfg, base.parent / "work", TINY_MODEL, steps=2, learning_rate=1e-3, batch_size=2)
    continued = learn_reading(cfg, base.parent / "work", TINY_MODEL, steps=2, learning_rate=1e-3, batch_size=2, base=base)
    wider = replace(TINY_MODEL, hidden_size=2 * TINY_MODEL.hidden_size, intermediate_size=2 * TINY_MODEL.intermediate_size)
    larger = learn_reading(cfg, base.parent / "work", wider, steps=1, learning_rate=1e-3, batch_size=2)
    # the fresh model has the base's language model (built from the same config), the wider one more
    assert fresh["language_model_parameters"] == continued["language_model_parameters"]
    assert larger["language_model_parameters"] > fresh["language_model_parameters"]
    assert fresh["base"] is None and continued["base"] == str(base) and continued["model"] is None
    # the same examples and held-out questions; the trained base reads them otherwise than a random model
    assert fresh["train_examples"] == continued["train_examples"] > 0
    assert fresh["before"] != continued["before"]
    assert np.isfinite(fresh["final_loss"]) and fresh["final_loss"] != fresh["first_loss"]
    assert {p.name: p.read_bytes() for p in base.iterdir()} == before  # the base is only read
