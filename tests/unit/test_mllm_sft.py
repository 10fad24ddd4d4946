"""Supervised fine-tuning: the tiny Qwen2.5-VL learns to answer from the image colour."""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import pytest
import torch

from msjoe.mllm import sft
from msjoe.mllm.build import build_tiny_mllm
from msjoe.mllm.load import load_mllm
from msjoe.mllm.parsing import parse_answer
from msjoe.mllm.prompts import build_answer_messages
from msjoe.mllm.sft import SFTConfig, SFTExample, supervised_finetune
from tests.models import tiny_mllm_config

QUESTION = "Which colour fills the frame?"
OPTIONS = ["red", "green", "blue", "yellow"]
COLOURS = {"A": (220, 30, 30), "B": (30, 200, 30), "C": (30, 30, 220), "D": (230, 230, 40)}
CFG = tiny_mllm_config()


pytestmark = pytest.mark.usefixtures("one_thread")  # torch on one thread (tests/conftest.py)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_mllm(tmp_path_factory.mktemp("tiny_sft"), [QUESTION, *OPTIONS], CFG, seed=0)


def _conversation(letter: str, noise_seed: int) -> list[dict]:
    """A 32x32 frame of the letter's colour with a little pixel noise; same text for all."""
    rng = np.random.default_rng(noise_seed)
    frame = np.clip(np.array(COLOURS[letter]) + rng.integers(-15, 16, (32, 32, 3)), 0, 255).astype(np.uint8)
    return build_answer_messages(QUESTION, OPTIONS, [frame])


def _examples(n_per_letter: int, offset: int = 0) -> list[SFTExample]:
    return [
        SFTExample(_conversation(letter, offset + 10 * i + k), f"<answer>{letter}</answer>")
        for i in range(n_per_letter)
        for k, letter in enumerate(COLOURS)
    ]


def test_doctests_pass() -> None:
    result = doctest.testmod(sft)
    assert result.attempted >= 1
    assert result.failed == 0


def test_sft_learns_an_answer_that_depends_on_the_image(model_dir: Path) -> None:
    mllm = load_mllm(str(model_dir))
    held_out = [_conversation(letter, 1000 + k) for k, letter in enumerate(COLOURS)]
    before = [parse_answer(r.text, 4) for r in mllm.generate(held_out, max_new_tokens=6)]
    assert before != list(COLOURS)

    cfg = SFTConfig(learning_rate=5e-3, batch_size=8, max_steps=100, warmup_ratio=0.1, seed=0)
    report = supervised_finetune(mllm, _examples(4), cfg, progress=False)

    assert report.steps == 100 and len(report.losses) == 100
    assert report.examples_seen == 100 * 8
    assert report.tokens_seen == report.examples_seen * 4  # <answer>, letter, </answer>, <|im_end|>
    assert report.final_loss < 0.1 * report.losses[0]
    assert not mllm.model.training
    after = mllm.generate(held_out, max_new_tokens=6)
    assert [r.text for r in after] == [f"<answer>{letter}</answer>" for letter in COLOURS]
    assert all(r.finished for r in after)


def test_learning_rate_warms_up_then_decays(model_dir: Path) -> None:
    mllm = load_mllm(str(model_dir))
    cfg = SFTConfig(learning_rate=1e-3, batch_size=4, max_steps=10, warmup_ratio=0.3, min_lr_ratio=0.1)
    report = supervised_finetune(mllm, _examples(1), cfg, progress=False)
    lrs = report.learning_rates
    assert lrs[:3] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3])
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:], strict=False))
    assert 1e-4 < lrs[-1] < 2e-4
    assert all(np.isfinite(report.grad_norms))


def test_sft_is_reproducible_and_the_seed_changes_the_order(model_dir: Path) -> None:
    examples = _examples(2)

    def run(seed: int) -> list[float]:
        mllm = load_mllm(str(model_dir))
        cfg = SFTConfig(learning_rate=1e-3, batch_size=3, max_steps=4, seed=seed)
        return supervised_finetune(mllm, examples, cfg, progress=False).losses

    first = run(0)
    assert run(0) == first
    assert run(1) != first


def test_epochs_visit_every_example_once_per_epoch() -> None:
    cfg = SFTConfig(batch_size=3, epochs=2, seed=5)
    batches = list(sft._batches(7, cfg, total_steps=6))
    assert [len(b) for b in batches] == [3, 3, 1, 3, 3, 1]
    assert sorted(i for b in batches[:3] for i in b) == list(range(7))
    assert sorted(i for b in batches[3:] for i in b) == list(range(7))
    assert batches[:3] != batches[3:]


def test_freeze_vision_leaves_the_vision_tower_unchanged(model_dir: Path) -> None:
    mllm = load_mllm(str(model_dir))
    vision = {k: v.clone() for k, v in mllm.model.model.visual.state_dict().items()}
    head = mllm.model.lm_head.weight.detach().clone()
    supervised_finetune(mllm, _examples(1), SFTConfig(batch_size=4, max_steps=2, freeze_vision=True), progress=False)
    assert all(torch.equal(v, mllm.model.model.visual.state_dict()[k]) for k, v in vision.items())
    assert not torch.equal(head, mllm.model.lm_head.weight)


def test_invalid_inputs_are_rejected(model_dir: Path) -> None:
    with pytest.raises(ValueError):
        SFTConfig(batch_size=0)
    with pytest.raises(ValueError):
        SFTConfig(max_steps=0)
    with pytest.raises(ValueError):
        supervised_finetune(load_mllm(str(model_dir)), [], SFTConfig(), progress=False)


def test_a_given_prefix_is_in_the_context_but_not_scored(model_dir: Path) -> None:
    mllm = load_mllm(str(model_dir))
    conversation = _conversation("B", 7)
    with torch.no_grad():
        token_log_probs = mllm.sequence_log_probs([conversation], ["<answer>B</answer>"]).log_probs[0]
    cfg = SFTConfig(learning_rate=1e-3, batch_size=1, max_steps=1, seed=0)
    given = SFTExample(conversation, "B</answer>", prefix="<answer>")
    report = supervised_finetune(mllm, [given], cfg, progress=False)
    # the letter, </answer> and the end of turn are scored; <answer> is only context
    assert report.tokens_seen == 3
    assert report.losses[0] == pytest.approx(-float(token_log_probs[1:].mean()), rel=1e-5)


def test_a_prefix_that_splits_a_token_is_refused(model_dir: Path) -> None:
    mllm = load_mllm(str(model_dir))
    split = SFTExample(_conversation("B", 7), "nswer>B</answer>", prefix="<a")
    with pytest.raises(ValueError, match="token boundary"):
        supervised_finetune(mllm, [split], SFTConfig(max_steps=1, batch_size=1), progress=False)
