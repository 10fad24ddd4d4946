"""Tiny Qwen2.5-VL: build, reload through the auto classes, generate, score completions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from msjoe.mllm.batching import collate, conversation_images, encode_prompts
from msjoe.mllm.build import QWEN_SPECIAL_TOKENS, TinyMLLMConfig, build_tiny_mllm
from msjoe.mllm.load import MLLM, load_mllm
from msjoe.mllm.prompts import build_answer_messages, build_query_messages
from tests.models import tiny_mllm_config

CORPUS = [
    "What colour was the star?",
    "What appeared right after the red circle?",
    "How many squares appeared?",
    "red",
    "green",
    "blue",
    "yellow",
    "a red star on a grey background",
]
OPTIONS = ["red", "green", "blue", "yellow"]
CFG = tiny_mllm_config()


pytestmark = pytest.mark.usefixtures("one_thread")  # torch on one thread (tests/conftest.py)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_mllm(tmp_path_factory.mktemp("tiny_mllm"), CORPUS, CFG, seed=0)


@pytest.fixture(scope="module")
def mllm(model_dir: Path) -> MLLM:
    return load_mllm(str(model_dir))


def _frames(n: int, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _answer_conv(n_frames: int, seed: int = 0) -> list[dict]:
    return build_answer_messages("What colour was the star?", OPTIONS, _frames(n_frames, seed=seed))


def test_build_writes_a_checkpoint_the_auto_classes_load(model_dir: Path, mllm: MLLM) -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json"):
        assert (model_dir / name).is_file(), name
    assert type(mllm.model) is Qwen2_5_VLForConditionalGeneration
    assert type(mllm.processor) is Qwen2_5_VLProcessor
    assert not mllm.model.training
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl"
    assert config["text_config"]["rope_parameters"]["mrope_section"] == [2, 3, 3]


def test_token_ids_are_consistent_between_tokenizer_and_config(mllm: MLLM) -> None:
    tokenizer, config = mllm.tokenizer, mllm.model.config
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in QWEN_SPECIAL_TOKENS}
    assert len(set(ids.values())) == len(QWEN_SPECIAL_TOKENS)
    assert config.image_token_id == ids["<|image_pad|>"]
    assert config.video_token_id == ids["<|video_pad|>"]
    assert config.vision_start_token_id == ids["<|vision_start|>"]
    assert config.vision_end_token_id == ids["<|vision_end|>"]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert mllm.model.config.text_config.vocab_size == len(tokenizer)
    assert set(mllm.stop_token_ids) == {ids["<|im_end|>"], ids["<|endoftext|>"]}


@pytest.mark.parametrize(
    "text",
    ["<answer>B</answer>", "<query>a red star</query>", "A. 12.5s: (J) #42!", "unseen words: zebra, quokka"],
)
def test_tokenizer_round_trips_any_text(mllm: MLLM, text: str) -> None:
    ids = mllm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert mllm.tokenizer.decode(ids) == text


def test_output_tags_are_single_tokens(mllm: MLLM) -> None:
    for tag in ("<query>", "</query>", "<answer>", "</answer>"):
        assert len(mllm.tokenizer(tag, add_special_tokens=False)["input_ids"]) == 1


def test_build_is_deterministic_for_a_seed(model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    again = build_tiny_mllm(tmp_path / "again", CORPUS, CFG, seed=0)
    other = build_tiny_mllm(tmp_path / "other", CORPUS, CFG, seed=1)
    assert (again / "tokenizer.json").read_text() == (model_dir / "tokenizer.json").read_text()
    reference = load_file(model_dir / "model.safetensors")
    same = load_file(again / "model.safetensors")
    different = load_file(other / "model.safetensors")
    assert reference.keys() == same.keys()
    assert all(torch.equal(reference[k], same[k]) for k in reference)
    assert any(not torch.equal(reference[k], different[k]) for k in reference)


def test_chat_template_renders_images_as_vision_pads(mllm: MLLM) -> None:
    text = mllm.processor.apply_chat_template(_answer_conv(2), tokenize=False, add_generation_prompt=True)
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith("<|im_start|>assistant\n")


def test_processor_returns_mm_token_type_ids_and_image_tokens(mllm: MLLM) -> None:
    conversation = build_query_messages("q?", OPTIONS, _frames(3), preview_max_pixels=32 * 32)
    [encoded] = encode_prompts(mllm.processor, [_answer_conv(2)])
    [preview] = encode_prompts(mllm.processor, [conversation])
    image_id = mllm.model.config.image_token_id
    # 64x64 frame, patch 8, 2x2 merge: 16 tokens; 32x32 preview: 4 tokens.
    assert encoded.image_grid_thw.tolist() == [[1, 8, 8], [1, 8, 8]]
    assert int((encoded.input_ids == image_id).sum()) == 32
    assert torch.equal(encoded.mm_token_type_ids == 1, encoded.input_ids == image_id)
    assert encoded.pixel_values.shape[0] == 2 * 64
    assert int((preview.input_ids == image_id).sum()) == 3 * 4


def test_collate_matches_the_processors_own_batching(mllm: MLLM) -> None:
    conversations = [_answer_conv(2), build_answer_messages("q?", OPTIONS, []), _answer_conv(1, seed=3)]
    ours = collate(encode_prompts(mllm.processor, conversations), None, mllm.pad_token_id)
    texts = [mllm.processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    images = [image for c in conversations for image in conversation_images(c)]
    theirs = mllm.processor(text=texts, images=images, padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"):
        assert torch.equal(ours[key], theirs[key]), key


def test_collate_places_completions_after_the_longest_prompt(mllm: MLLM) -> None:
    prompts = encode_prompts(mllm.processor, [_answer_conv(1), build_answer_messages("q?", OPTIONS, [])])
    batch = collate(prompts, [[7, 8, 9], [5]], mllm.pad_token_id)
    p_max = max(len(p) for p in prompts)
    assert batch["input_ids"][0, p_max:].tolist() == [7, 8, 9]
    assert batch["input_ids"][1, p_max:].tolist() == [5, mllm.pad_token_id, mllm.pad_token_id]
    assert batch["completion_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert batch["attention_mask"][1].sum() == len(prompts[1]) + 1
    assert batch["mm_token_type_ids"][:, p_max:].sum() == 0


def test_greedy_generation_with_two_images_is_deterministic(mllm: MLLM) -> None:
    conversation = _answer_conv(2)
    first = mllm.generate([conversation], max_new_tokens=6, temperature=0.0)
    second = mllm.generate([conversation], max_new_tokens=6, temperature=0.0)
    assert first == second
    [result] = first
    assert 1 <= len(result.token_ids) <= 6
    assert len(result.log_probs) == len(result.token_ids)
    assert result.prompt_len == len(encode_prompts(mllm.processor, [conversation])[0])
    assert result.text == mllm.tokenizer.decode(list(result.token_ids), skip_special_tokens=True)


def test_sampling_is_reproducible_per_seed_and_leaves_global_rng_alone(mllm: MLLM) -> None:
    conversations = [_answer_conv(2), _answer_conv(1, seed=5)]
    state = torch.random.get_rng_state()
    a = mllm.generate(conversations, max_new_tokens=8, temperature=1.0, seed=11)
    b = mllm.generate(conversations, max_new_tokens=8, temperature=1.0, seed=11)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    others = [mllm.generate(conversations, max_new_tokens=8, temperature=1.0, seed=s) for s in (12, 13, 14)]
    assert any([r.token_ids for r in o] != [r.token_ids for r in a] for o in others)


def test_batched_generation_with_different_image_counts_matches_single(mllm: MLLM) -> None:
    conversations = [_answer_conv(2), build_answer_messages("How many squares appeared?", OPTIONS, []),
                     _answer_conv(3, seed=2)]
    batched = mllm.generate(conversations, max_new_tokens=5)
    for conversation, together in zip(conversations, batched, strict=True):
        [alone] = mllm.generate([conversation], max_new_tokens=5)
        assert together.token_ids == alone.token_ids
        assert together.prompt_len == alone.prompt_len
        assert together.log_probs == pytest.approx(alone.log_probs, abs=1e-4)


def _manual_log_probs(mllm: MLLM, conversation: list[dict], completion: list[int], **drop: bool) -> torch.Tensor:
    """Reference: one unpadded forward on the processor's own output, positions left to the model."""
    processor = mllm.processor
    text = processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=conversation_images(conversation), return_tensors="pt")
    n_prompt = inputs["input_ids"].shape[1]
    extra = torch.tensor([completion])
    inputs["input_ids"] = torch.cat([inputs["input_ids"], extra], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(extra)], dim=1)
    if drop.get("mm_token_type_ids"):
        del inputs["mm_token_type_ids"]
    mllm.model.model.rope_deltas = None
    with torch.no_grad():
        logits = mllm.model(**inputs).logits[0]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return torch.stack([log_probs[n_prompt - 1 + j, t] for j, t in enumerate(completion)])


def test_sequence_log_probs_match_a_manual_forward(mllm: MLLM) -> None:
    conversation = _answer_conv(2, seed=4)
    completion = mllm.encode_completion("<answer>C</answer>")
    assert completion[-1] == mllm.eos_token_id
    with torch.no_grad():
        scored = mllm.sequence_log_probs([conversation], ["<answer>C</answer>"])
    [ours] = scored.per_sample()
    reference = _manual_log_probs(mllm, conversation, completion)
    assert ours.shape == (len(completion),)
    assert torch.allclose(ours, reference, atol=1e-5)
    # Without mm_token_type_ids the model falls back to 1-D positions: a different function.
    flat = _manual_log_probs(mllm, conversation, completion, mm_token_type_ids=True)
    assert not torch.allclose(flat, reference, atol=1e-5)


def test_sequence_log_probs_of_a_padded_batch_match_generation(mllm: MLLM) -> None:
    conversations = [_answer_conv(2), build_answer_messages("q?", OPTIONS, []), _answer_conv(1, seed=9)]
    generated = mllm.generate(conversations, max_new_tokens=7, temperature=1.0, seed=3)
    with torch.no_grad():
        scored = mllm.sequence_log_probs(conversations, [g.token_ids for g in generated])
    for row, (g, lp) in enumerate(zip(generated, scored.per_sample(), strict=True)):
        assert lp.tolist() == pytest.approx(list(g.log_probs), abs=1e-4)
        assert scored.sums()[row].item() == pytest.approx(sum(g.log_probs), abs=1e-3)
    assert (scored.log_probs[~scored.mask] == 0).all()


def test_sequence_log_probs_carry_gradients_into_the_vision_tower(mllm: MLLM) -> None:
    mllm.model.zero_grad(set_to_none=True)
    scored = mllm.sequence_log_probs([_answer_conv(1)], ["<answer>A</answer>"])
    assert scored.log_probs.requires_grad
    (-scored.sums().sum()).backward()
    vision_grads = [p.grad for p in mllm.model.model.visual.parameters() if p.grad is not None]
    assert vision_grads and any(g.abs().sum() > 0 for g in vision_grads)
    mllm.model.zero_grad(set_to_none=True)


def test_scoring_completions_with_shared_prompts_matches_scoring_each_pair(mllm: MLLM) -> None:
    # different image counts per prompt, and a text-only prompt, in one batch
    convs = [_answer_conv(1, seed=1), _answer_conv(3, seed=2),
             [{"role": "user", "content": [{"type": "text", "text": "Which colour?"}]}]]
    # options sharing leading tokens, one alone, one repeated, one a prefix of another
    completions = [["Seen: red. <answer>red</answer>", "Seen: red. <answer>green</answer>", "Seen: red. <answer>red"],
                   ["Seen: a blue star. <answer>blue</answer>"],
                   ["<answer>A</answer>", "<answer>B</answer>", "<answer>A</answer>", "<answer>C</answer>"]]
    shared = mllm.score_completions(convs, completions)
    pairs = [(conv, text) for conv, texts in zip(convs, completions) for text in texts]
    each = mllm.sequence_log_probs([c for c, _ in pairs], [t for _, t in pairs]).sums().tolist()
    assert [len(row) for row in shared] == [3, 1, 4]
    assert shared[2][0] == shared[2][2]
    np.testing.assert_allclose([x for row in shared for x in row], each, rtol=1e-5, atol=1e-5)
    images_only = mllm.score_completions(convs[:2], completions[:2])
    np.testing.assert_allclose([x for row in images_only for x in row], each[:4], rtol=1e-5, atol=1e-5)
    assert mllm.score_completions(convs[:1], [[]]) == [[]]
    with pytest.raises(ValueError, match="completion lists"):
        mllm.score_completions(convs, completions[:2])


def test_sequence_log_probs_validate_inputs(mllm: MLLM) -> None:
    with pytest.raises(ValueError):
        mllm.sequence_log_probs([_answer_conv(1)], [])
    with pytest.raises(ValueError):
        mllm.sequence_log_probs([_answer_conv(1)], [[]])


def test_video_items_are_rejected(mllm: MLLM) -> None:
    conversation = [{"role": "user", "content": [{"type": "video", "video": "clip.mp4"}]}]
    with pytest.raises(ValueError, match="video"):
        mllm.generate([conversation], max_new_tokens=2)


def test_save_and_reload_round_trips(mllm: MLLM, tmp_path: Path) -> None:
    conversation = _answer_conv(1, seed=7)
    before = mllm.generate([conversation], max_new_tokens=4)
    saved = mllm.save_pretrained(tmp_path / "saved")
    reloaded = load_mllm(str(saved))
    assert reloaded.generate([conversation], max_new_tokens=4) == before
    # how the checkpoint was loaded (HF_HUB_OFFLINE) is not saved with it
    tokenizer_config = json.loads((saved / "tokenizer_config.json").read_text())
    assert "local_files_only" not in tokenizer_config and tokenizer_config["eos_token"] == "<|im_end|>"


def test_generation_without_log_probs_gives_the_same_tokens(mllm: MLLM) -> None:
    conversations = [_answer_conv(1), _answer_conv(2, seed=8)]
    full = mllm.generate(conversations, max_new_tokens=5, temperature=1.0, seed=2)
    lean = mllm.generate(conversations, max_new_tokens=5, temperature=1.0, seed=2, with_log_probs=False)
    assert [r.token_ids for r in lean] == [r.token_ids for r in full]
    assert all(r.log_probs == () for r in lean)
    assert mllm.generate([], max_new_tokens=5) == []
    with pytest.raises(ValueError):
        mllm.generate(conversations, max_new_tokens=0)
    with pytest.raises(ValueError):
        mllm.generate(conversations, temperature=-1.0)


@pytest.mark.parametrize(
    "overrides",
    [{"hidden_size": 60}, {"num_heads": 32, "num_kv_heads": 4}, {"min_pixels": 64}, {"max_pixels": 128}],
)
def test_tiny_config_rejects_inconsistent_sizes(overrides: dict) -> None:
    with pytest.raises(ValueError):
        TinyMLLMConfig(**overrides)
