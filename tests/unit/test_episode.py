"""The episode module with a random tiny CLIP and MLLM: batched generation and its seeding, the
query turn's fallback, similarity, the sampler's draw and selection, the answer turn, and one
correctness decision behind every score."""

from __future__ import annotations

import doctest
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

from msjoe import episode
from msjoe.clip.model import FrozenClip, load_clip
from msjoe.mllm.build import build_tiny_mllm
from msjoe.mllm.load import MLLM, GenerationResult, load_mllm
from msjoe.mllm.parsing import OPTION_LETTERS
from msjoe.pipeline import Pipeline, PipelineConfig
from msjoe.rl.rewards import RewardConfig, accuracy_reward, total_reward
from msjoe.sampling import build_sampler
from tests.models import tiny_mllm_config, write_random_clip

CORPUS = ["What colour was the star?", "red", "green", "blue", "yellow", "a red star on a grey background"]
QUESTION = "What colour was the star?"
OPTIONS = ["red", "green", "blue", "yellow"]


pytestmark = pytest.mark.usefixtures("one_thread")  # torch on one thread (tests/conftest.py)


@pytest.fixture(scope="module")
def mllm(tmp_path_factory: pytest.TempPathFactory) -> MLLM:
    return load_mllm(str(build_tiny_mllm(tmp_path_factory.mktemp("mllm"), CORPUS, tiny_mllm_config(), seed=0)))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> FrozenClip:
    return load_clip(write_random_clip(tmp_path_factory.mktemp("clip")))


def frames(n: int, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


class Recording:
    """The real MLLM, with every ``generate`` call's batch size and seed written down."""

    def __init__(self, mllm: MLLM) -> None:
        self.mllm = mllm
        self.calls: list[tuple[int, int | None, float, bool]] = []

    def generate(self, conversations: Sequence[Any], max_new_tokens: int = 64, temperature: float = 0.0,
                 seed: int | None = None, with_log_probs: bool = True) -> list[GenerationResult]:
        self.calls.append((len(conversations), seed, temperature, with_log_probs))
        return self.mllm.generate(conversations, max_new_tokens=max_new_tokens, temperature=temperature,
                                  seed=seed, with_log_probs=with_log_probs)


def test_doctests_pass() -> None:
    result = doctest.testmod(episode, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_generate_chunks_in_order_with_a_seed_per_chunk(mllm: MLLM) -> None:
    convs = [episode.answer_conversation(QUESTION, OPTIONS, frames(2, seed=i), answer_size=16) for i in range(5)]
    rec = Recording(mllm)
    chunked = episode.generate(rec, convs, max_new_tokens=4, temperature=1.0, batch_size=2,
                               seed=lambda b: 100 + b, with_log_probs=True)
    assert [(n, s) for n, s, _, _ in rec.calls] == [(2, 100), (2, 101), (1, 102)]
    assert all(t == 1.0 and lp for _, _, t, lp in rec.calls)
    assert len(chunked) == 5 and all(len(r.log_probs) == len(r.token_ids) for r in chunked)
    # a chunk's sampled tokens depend only on its own seed and conversations
    again = episode.generate(mllm, convs[2:4], max_new_tokens=4, temperature=1.0, seed=101)
    assert [r.token_ids for r in again] == [r.token_ids for r in chunked[2:4]]
    # one int seeds every chunk; None leaves generation unseeded; no batch size: one call
    rec = Recording(mllm)
    episode.generate(rec, convs, max_new_tokens=2, batch_size=3, seed=7)
    episode.generate(rec, convs, max_new_tokens=2)
    assert [(n, s) for n, s, _, _ in rec.calls] == [(3, 7), (2, 7), (5, None)]
    assert all(t == 0.0 and not lp for _, _, t, lp in rec.calls)
    assert episode.generate(mllm, [], max_new_tokens=2) == []


def test_query_turn_falls_back_to_the_question_and_counts_it(mllm: MLLM) -> None:
    previews = frames(3)
    conv = episode.query_conversation(QUESTION, OPTIONS, previews, n_queries=2, preview_size=8)
    images = [item["image"] for m in conv for item in m["content"] if item.get("type") == "image"]
    assert len(images) == 3 and all(im.size[0] * im.size[1] <= 64 for im in images)

    turns = episode.query_turns(mllm, [conv, conv], [QUESTION, " Where? "], n_queries=2, max_new_tokens=6,
                                batch_size=1)
    # a random-weight model writes no <query> pair: the question is the only query
    assert [t.queries for t in turns] == [[QUESTION], ["Where?"]]
    assert [t.ok for t in turns] == [False, False] and episode.count_fallbacks(turns) == 2
    assert all(t.text == t.result.text for t in turns)
    parsed = episode.parse_query_turn("<query>a red star</query><query>A RED STAR</query><query>sky</query>",
                                      QUESTION, 4)
    assert parsed.ok and parsed.queries == ["a red star", "sky"]
    assert episode.parse_query_turn("<query>a</query><query>b</query><query>c</query>", QUESTION, 2).queries == [
        "a", "b"]
    with pytest.raises(ValueError, match="conversations"):
        episode.query_turns(mllm, [conv], [QUESTION, QUESTION], n_queries=2, max_new_tokens=2)


def test_similarity_is_the_cosine_of_clip_text_and_frame_features(clip: FrozenClip) -> None:
    features = clip.encode_frames(np.stack(frames(6)))
    sim = episode.similarity(clip, ["a red star", "blue"], features)
    assert sim.shape == (2, 6) and sim.dtype == np.float64
    text = clip.encode_texts(["a red star", "blue"])
    np.testing.assert_allclose(sim, text @ features.T, atol=1e-6)
    assert np.all(np.abs(sim) <= 1.0 + 1e-5)  # unit vectors


def test_selection_uniform_and_learned_top_k() -> None:
    # the uniform baseline picks exactly the uniform positions difficulty shows
    for n, k in ((32, 4), (10, 3), (5, 9)):
        chosen = episode.select(build_sampler("uniform"), None, k, n, seed=0)
        np.testing.assert_array_equal(chosen.indices, episode.uniform_positions(n, k))
    # the learned sampler at inference: the K most probable frames, sorted by time
    from msjoe.pipeline import load_sampler

    sampler = load_sampler("msjoe", {"seed": 0})
    sim = np.random.default_rng(0).normal(size=(2, 20))
    logp = sampler.log_probs(sim)
    chosen = episode.select(sampler, sim, 5, 20, seed=0)
    np.testing.assert_array_equal(chosen.indices, np.sort(np.argsort(-logp)[:5]))
    np.testing.assert_allclose(chosen.weights, np.exp(logp[chosen.indices]), rtol=1e-5)


def test_training_draw_is_seeded_and_its_log_prob_is_the_sampler_s() -> None:
    from msjoe.sampling.unet import UNetConfig, UNetSampler

    torch.manual_seed(0)
    net = UNetSampler(UNetConfig.tiny())
    rng = np.random.default_rng(1)
    sims = [rng.normal(size=(2, 20)), rng.normal(size=(1, 3))]
    logp, mask = episode.sampler_log_probs(net, sims, net.config.max_queries, net.config.levels)
    assert logp.requires_grad and logp.shape == mask.shape and logp.shape[0] == 2
    assert mask.sum(dim=1).tolist() == [20, 3]
    torch.testing.assert_close(logp.exp().sum(dim=1), torch.ones(2))  # a distribution per row
    assert float(logp.detach().exp()[~mask].sum()) < 1e-6  # padding is never drawn

    idx, positions = episode.draw_frames(logp, mask, 4, seed=5)
    idx2, positions2 = episode.draw_frames(logp, mask, 4, seed=5)
    _, other = episode.draw_frames(logp, mask, 4, seed=6)
    assert torch.equal(idx, idx2) and all(np.array_equal(a, b) for a, b in zip(positions, positions2, strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(positions, other, strict=True))
    assert [len(p) for p in positions] == [4, 3]  # a 3-frame video gives all it has
    assert int((idx[1] < 0).sum()) == 1
    assert all(np.all(np.diff(p) > 0) for p in positions)  # unique, by time
    assert sorted(idx[0].tolist()) == positions[0].tolist()

    total = episode.draw_log_prob(logp, idx, "sum")
    expected = [float(logp.detach()[r, [i for i in idx[r].tolist() if i >= 0]].sum()) for r in range(2)]
    np.testing.assert_allclose(total.detach().numpy(), expected, rtol=1e-5)
    ordered = episode.draw_log_prob(logp, idx, "plackett_luce")
    assert torch.all(ordered >= total - 1e-6)  # renormalised after each pick
    ordered.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    with pytest.raises(ValueError, match="log_prob"):
        episode.draw_log_prob(logp, idx, "max")


def test_answer_turn_parses_a_letter_or_none(mllm: MLLM) -> None:
    conv = episode.answer_conversation(QUESTION, OPTIONS, frames(3, size=48), answer_size=16)
    images = [item["image"] for m in conv for item in m["content"] if item.get("type") == "image"]
    assert len(images) == 3 and all(im.size[0] * im.size[1] <= 256 for im in images)
    native = episode.answer_images(frames(2, size=48), None)
    assert all(f.shape == (48, 48, 3) for f in native)

    turns = episode.answer_turns(mllm, [conv] * 3, [OPTIONS] * 3, max_new_tokens=4, temperature=1.0, seed=3)
    for turn in turns:
        assert turn.letter is None or turn.letter in OPTION_LETTERS[: len(OPTIONS)]
        assert turn.ok is (turn.letter is not None)
        assert turn.letter == episode.parse_answer_turn(turn.text, OPTIONS)
    assert episode.parse_answer_turn("<answer>blue</answer>", OPTIONS) == "C"
    assert episode.parse_answer_turn("<answer>F</answer>", OPTIONS) is None
    # 16x16 pixels is one merged patch per frame
    assert episode.visual_tokens(mllm, frames(3), 16**2) == 3


@pytest.mark.parametrize("predicted", ["B", " b ", "b", "C", "", "  ", None])
def test_accuracy_reward_is_is_correct(predicted: str | None) -> None:
    assert accuracy_reward(predicted, "B") == float(episode.is_correct(predicted, "B"))
    assert episode.is_correct(predicted, "B") is (predicted is not None and predicted.strip().upper() == "B")
    for fn in (episode.is_correct, accuracy_reward):
        with pytest.raises(ValueError):
            fn(predicted, " ")


def test_score_pays_information_only_for_the_policy_s_own_queries() -> None:
    peaked = np.full((2, 8), 0.2)
    peaked[:, 3] = 0.5
    own = episode.QueryTurn(episode.parse_query_turn("<query>star</query><query>sky</query>", QUESTION, 4), "")
    fallback = episode.QueryTurn(episode.parse_query_turn("nothing", QUESTION, 4), "nothing")
    right, wrong, unparsed = (episode.AnswerTurn(x, "") for x in ("A", "B", None))

    best = episode.score(own, peaked, right, "a", logit_scale=100.0)
    assert (best.accuracy, best.format, best.info, best.info_fired) == (1.0, 0.1, pytest.approx(0.1), 1.0)
    assert best == total_reward("A", "a", True, True, peaked, 100.0)
    fell_back = episode.score(fallback, peaked[:1], right, "A", logit_scale=100.0)
    assert (fell_back.accuracy, fell_back.format, fell_back.info, fell_back.info_fired) == (1.0, 0.0, 0.0, 0.0)
    assert float(episode.score(own, peaked, wrong, "A", 100.0)) == pytest.approx(0.2)
    no_letter = episode.score(own, peaked, unparsed, "A", 100.0, RewardConfig(info_weight=0.5, format_bonus=0.3))
    assert (no_letter.accuracy, no_letter.format, no_letter.info) == (0.0, 0.0, pytest.approx(0.5))


def test_pipeline_building_blocks_are_the_episode_s(mllm: MLLM, clip: FrozenClip) -> None:
    cfg = PipelineConfig(n_queries=2, preview_size=8, answer_size=16, max_new_tokens=4, query_max_new_tokens=6,
                         batch_size=2)
    pipeline = Pipeline(clip, mllm, build_sampler("uniform"), None, cfg)
    previews = frames(3)
    conv = pipeline.query_conversation(QUESTION, OPTIONS, previews)
    assert conv == episode.query_conversation(QUESTION, OPTIONS, previews, n_queries=2, preview_size=8)
    replies = pipeline.generate_queries([conv] * 3, [QUESTION] * 3)
    turns = episode.query_turns(mllm, [conv] * 3, [QUESTION] * 3, n_queries=2, max_new_tokens=6, batch_size=2)
    assert replies == [(t.parsed, t.text) for t in turns]
    assert pipeline.query_failures == episode.count_fallbacks(turns) == 3

    conv = pipeline.answer_conversation(QUESTION, OPTIONS, frames(2))
    answers = pipeline.generate_answers([conv] * 3, [OPTIONS] * 3)
    turns = episode.answer_turns(mllm, [conv] * 3, [OPTIONS] * 3, max_new_tokens=4, batch_size=2)
    assert answers == episode.resolve_answers(mllm, [conv] * 3, [OPTIONS] * 3, turns, batch_size=2)
    assert all(a.letter in OPTION_LETTERS[:4] for a in answers)  # every question gets an option
    assert pipeline.answer_failures == sum(not t.ok for t in turns) == sum(a.scored for a in answers)
    np.testing.assert_array_equal(Pipeline.preview_positions(32, 6), episode.preview_positions(32, 6))


def test_a_reply_naming_no_option_gets_the_option_the_mllm_scores_highest(mllm: MLLM) -> None:
    conv = episode.answer_conversation(QUESTION, OPTIONS, frames(2), answer_size=16)
    named = episode.AnswerTurn("C", "Seen: a blue star. <answer>blue</answer>")
    unnamed = episode.AnswerTurn(None, "Seen: a purple star. <answer>purple</answer>")
    untagged = episode.AnswerTurn(None, "Seen: a")
    resolved = episode.resolve_answers(mllm, [conv] * 3, [OPTIONS] * 3, [named, unnamed, untagged], batch_size=3)

    assert resolved[0] is named and named.ok
    for turn, prefix, out in ((unnamed, "Seen: a purple star. <answer>", resolved[1]),
                              (untagged, "Seen: a <answer>", resolved[2])):
        assert episode.answer_prefix(turn.text) == prefix
        sums = mllm.sequence_log_probs([conv] * 4, [f"{prefix}{o}</answer>" for o in OPTIONS]).sums()
        assert out.letter == OPTION_LETTERS[int(torch.argmax(sums))]
        assert (out.text, out.scored, out.ok) == (turn.text, True, False)
    # chunking the scored completions does not change the choice
    assert episode.resolve_answers(mllm, [conv] * 3, [OPTIONS] * 3, [named, unnamed, untagged], batch_size=1) == resolved
    with pytest.raises(ValueError, match="2 turns"):
        episode.resolve_answers(mllm, [conv] * 3, [OPTIONS] * 3, [named, unnamed])
