"""Load a Qwen2.5-VL checkpoint and use it: batched generation and completion log-probabilities.

This is the one loading path for both scales: the tiny demo directory written by
:func:`msjoe.mllm.build.build_tiny_mllm` and ``Qwen/Qwen2.5-VL-7B-Instruct`` (hub id or local
path) go through the same auto classes, the same chat template and the same batching
(:mod:`msjoe.mllm.batching`), so what is trained on the CPU is what runs on GPUs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msjoe.mllm.batching import EncodedPrompt, collate, encode_prompts
from msjoe.mllm.prompts import Conversation

if TYPE_CHECKING:
    import torch

__all__ = ["MLLM", "CompletionLogProbs", "GenerationResult", "load_mllm", "save_processor"]

logger = logging.getLogger(__name__)

LOAD_STATE_KEYS = ("local_files_only",)
"""Keys transformers copies from the *loading call* into a saved tokenizer config:
``local_files_only`` records whether the hub was offline (``HF_HUB_OFFLINE``) when the
checkpoint was loaded, not anything about the weights."""


@dataclass(frozen=True)
class GenerationResult:
    """One generated reply.

    ``token_ids`` are the generated ids up to and including the end-of-turn token (if it was
    reached), without padding: exactly what :meth:`MLLM.sequence_log_probs` scores for RL.
    ``log_probs`` are the per-token log-probabilities under the sampling distribution
    (logits / temperature; plain logits for greedy decoding). ``prompt_len`` counts the
    prompt's tokens (visual tokens included, padding excluded).
    """

    text: str
    token_ids: tuple[int, ...]
    prompt_len: int
    log_probs: tuple[float, ...] = ()
    finished: bool = True


@dataclass(frozen=True)
class CompletionLogProbs:
    """Per-token log-probabilities of a batch of completions, right-padded.

    ``log_probs`` (B, C_max) carries gradients when computed with grad enabled; padded entries
    are 0 and ``mask`` (B, C_max, bool) marks the real tokens.
    """

    log_probs: torch.Tensor
    mask: torch.Tensor

    def per_sample(self) -> list[torch.Tensor]:
        """One 1-D tensor per completion, padding dropped."""
        return [row[m] for row, m in zip(self.log_probs, self.mask, strict=True)]

    def sums(self) -> torch.Tensor:
        """Sequence log-probabilities (B,): the sum over each completion's tokens."""
        return (self.log_probs * self.mask).sum(dim=-1)


def _resolve_dtype(dtype: Any) -> Any:
    import torch

    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return resolved


class MLLM:
    """A Qwen2.5-VL model with its processor on one device.

    Holds no training state: trainers (SFT, GRPO) update ``model`` in place and use
    :meth:`sequence_log_probs` for their losses.
    """

    def __init__(
        self, model: Any, processor: Any, device: str | torch.device = "cpu", identity: str | None = None
    ) -> None:
        import torch

        self.model = model
        # A stable id of the weights (the stage manifest's), so trainers can tell runs apart.
        self.identity = identity
        self.processor = processor
        self.device = torch.device(device)
        tokenizer = processor.tokenizer
        self.eos_token_id: int = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_token_id: int = int(pad if pad is not None else self.eos_token_id)
        # Generation stops at any of the checkpoint's end tokens (Qwen: <|im_end|>, <|endoftext|>).
        configured = getattr(model.generation_config, "eos_token_id", None)
        ends = configured if isinstance(configured, list) else [configured]
        self.stop_token_ids: tuple[int, ...] = tuple(
            dict.fromkeys([self.eos_token_id, *(int(t) for t in ends if t is not None)])
        )

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Save model + processor in one directory, loadable by :func:`load_mllm`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        save_processor(self.processor, out)
        return out

    def encode_completion(self, text: str, append_eos: bool = True) -> list[int]:
        """Token ids of an assistant reply as the model would generate it (+ end of turn)."""
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return [*ids, self.eos_token_id] if append_eos else ids

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Model inputs on the model's device; pixels in the model's floating dtype."""
        dtype = next(self.model.parameters()).dtype
        return {
            k: (v.to(self.device, dtype=dtype) if v.is_floating_point() else v.to(self.device))
            for k, v in batch.items()
            if k != "completion_mask"
        }

    def _model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Move a collated batch to the device and add explicit 3-D rotary positions.

        Positions are computed the way ``generate`` computes them (padding skipped), so scoring
        a left-padded batch gives the same log-probabilities as generating it.
        """
        import torch

        inputs = self._to_device(batch)
        rope_index = getattr(getattr(self.model, "model", None), "get_rope_index", None)
        if rope_index is not None:
            with torch.no_grad():
                position_ids, _ = rope_index(
                    inputs["input_ids"],
                    mm_token_type_ids=inputs["mm_token_type_ids"],
                    image_grid_thw=inputs.get("image_grid_thw"),
                    video_grid_thw=None,
                    attention_mask=inputs["attention_mask"],
                )
            inputs["position_ids"] = position_ids
        return inputs

    def generate(
        self,
        conversations: Sequence[Conversation],
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        seed: int | None = None,
        with_log_probs: bool = True,
    ) -> list[GenerationResult]:
        """Generate one reply per conversation (batched, left-padded).

        ``temperature == 0`` decodes greedily; otherwise tokens are sampled from the full
        distribution softmax(logits / temperature) (no top-k/top-p, whatever the checkpoint's
        generation config says), because RL needs the policy's true probabilities. ``seed``
        makes sampling reproducible without touching the caller's random state.
        ``with_log_probs`` fills :attr:`GenerationResult.log_probs` (generation then keeps every
        step's logits until it returns; serving can switch it off).
        """
        import torch
        from transformers import GenerationConfig

        if not conversations:
            return []
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        prompts = encode_prompts(self.processor, conversations)
        batch = collate(prompts, None, self.pad_token_id)
        inputs = self._to_device(batch)
        sample = temperature > 0
        # Every logits processor is disabled explicitly: unset fields would be filled from the
        # checkpoint (Qwen's Instruct config has top_k=1, top_p=0.001, repetition_penalty=1.05).
        warpers = {"temperature": temperature, "top_k": 0, "top_p": 1.0, "typical_p": 1.0} if sample else {}
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            num_beams=1,
            eos_token_id=list(self.stop_token_ids),
            pad_token_id=self.pad_token_id,
            return_dict_in_generate=True,
            output_logits=with_log_probs,
            **warpers,
        )
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(**inputs, generation_config=config)
        width = inputs["input_ids"].shape[1]
        new_ids = out.sequences[:, width:]
        token_lp = torch.zeros(new_ids.shape)
        if with_log_probs:
            scale = temperature if sample else 1.0
            token_lp = torch.stack(
                [
                    torch.log_softmax(logits.float() / scale, dim=-1).gather(-1, new_ids[:, i, None])[:, 0]
                    for i, logits in enumerate(out.logits)
                ],
                dim=1,
            ).cpu()
        new_ids = new_ids.cpu()
        results = []
        stops = set(self.stop_token_ids)
        for row, prompt in enumerate(prompts):
            ids = new_ids[row].tolist()
            end = next((i + 1 for i, t in enumerate(ids) if t in stops), None)
            kept = ids[:end] if end is not None else ids
            results.append(
                GenerationResult(
                    text=self.tokenizer.decode(kept, skip_special_tokens=True),
                    token_ids=tuple(kept),
                    prompt_len=len(prompt),
                    log_probs=tuple(token_lp[row, : len(kept)].tolist()) if with_log_probs else (),
                    finished=end is not None,
                )
            )
        return results

    def sequence_log_probs(
        self,
        conversations: Sequence[Conversation],
        completions: Sequence[str | Sequence[int]],
        *,
        append_eos: bool = True,
        temperature: float = 1.0,
    ) -> CompletionLogProbs:
        """Log-probabilities of each completion's tokens given its conversation (one forward).

        A completion is either text (tokenised, plus the end-of-turn token when ``append_eos``)
        or token ids used as they are (e.g. :attr:`GenerationResult.token_ids`). The images go
        through the vision tower in the same pass; only completion tokens are scored.
        Gradients flow when grad is enabled (SFT, GRPO); ``temperature`` rescales the logits
        as sampling did.
        """
        import torch

        if len(completions) != len(conversations):
            raise ValueError(f"{len(completions)} completions for {len(conversations)} conversations")
        ids = [
            self.encode_completion(c, append_eos) if isinstance(c, str) else [int(t) for t in c] for c in completions
        ]
        if any(not c for c in ids):
            raise ValueError("empty completion: nothing to score")
        prompts = encode_prompts(self.processor, conversations)
        batch = collate(prompts, ids, self.pad_token_id)
        mask = batch["completion_mask"].to(self.device)
        c_max = mask.shape[1]
        inputs = self._model_inputs(batch)
        # Only the last C_max + 1 positions are needed: column P_max - 1 + j predicts token j.
        logits = self.model(**inputs, use_cache=False, logits_to_keep=c_max + 1).logits[:, :c_max].float()
        if temperature != 1.0:
            logits = logits / temperature
        targets = inputs["input_ids"][:, -c_max:]
        picked = logits.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)
        return CompletionLogProbs(log_probs=picked * mask, mask=mask)

    def score_completions(
        self, conversations: Sequence[Conversation], completions: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        """Summed log-probabilities of several text completions (each plus the end-of-turn
        token) per conversation, without gradients.

        The numbers :meth:`sequence_log_probs` gives for every (conversation, completion) pair,
        up to float rounding, at a fraction of the cost when completions share a conversation
        (the options of a multiple-choice question): each prompt, with the completions' common
        leading tokens, runs through the model once; its key/value cache is then repeated for
        each completion and only the tokens where they differ are run.
        """
        import torch

        if len(completions) != len(conversations):
            raise ValueError(f"{len(completions)} completion lists for {len(conversations)} conversations")
        ids = [[self.encode_completion(text) for text in texts] for texts in completions]
        todo = [i for i, lists in enumerate(ids) if lists]
        out: list[list[float]] = [[] for _ in conversations]
        if not todo:
            return out
        shared = [_common_prefix_length(ids[i]) for i in todo]
        prompts = [
            EncodedPrompt(
                input_ids=torch.cat([p.input_ids, torch.as_tensor(ids[i][0][:n], dtype=torch.long)]),
                mm_token_type_ids=torch.cat([p.mm_token_type_ids, torch.zeros(n, dtype=p.mm_token_type_ids.dtype)]),
                pixel_values=p.pixel_values,
                image_grid_thw=p.image_grid_thw,
            )
            for i, n, p in zip(todo, shared, encode_prompts(self.processor, [conversations[i] for i in todo]),
                               strict=True)
        ]
        rows = [(k, ids[i][j][n:]) for k, (i, n) in enumerate(zip(todo, shared, strict=True)) for j in range(len(ids[i]))]
        tail_len = max(len(tail) for _, tail in rows)
        owner = torch.tensor([k for k, _ in rows], device=self.device)
        tails = torch.full((len(rows), tail_len), self.pad_token_id, dtype=torch.long)
        tail_mask = torch.zeros((len(rows), tail_len), dtype=torch.bool)
        for r, (_, tail) in enumerate(rows):
            tails[r, : len(tail)] = torch.as_tensor(tail, dtype=torch.long)
            tail_mask[r, : len(tail)] = True
        tails, tail_mask = tails.to(self.device), tail_mask.to(self.device)
        with torch.no_grad():
            # 1. each prompt and its shared tokens, once; log-probs of the shared tokens and of
            #    whatever token comes next
            inputs = self._model_inputs(collate(prompts, None, self.pad_token_id))
            keep = max(shared) + 1
            prefill = self.model(**inputs, use_cache=True, logits_to_keep=keep)
            first = torch.log_softmax(prefill.logits.float(), dim=-1)  # column keep - 1 - n + t predicts shared token t
            shared_lp = torch.zeros(len(todo), device=self.device)
            for k, (i, n) in enumerate(zip(todo, shared, strict=True)):
                if n:
                    columns = torch.arange(keep - 1 - n, keep - 1, device=self.device)
                    shared_lp[k] = first[k, columns, torch.as_tensor(ids[i][0][:n], device=self.device)].sum()
            # 2. every completion's own tokens, on a copy of its prompt's cache
            cache = prefill.past_key_values
            cache.reorder_cache(owner)
            positions = inputs["position_ids"][..., -1:].index_select(-2, owner) + 1 + torch.arange(tail_len, device=self.device)
            attention = torch.cat([inputs["attention_mask"].index_select(0, owner), tail_mask.long()], dim=1)
            logits = self.model(input_ids=tails, attention_mask=attention, position_ids=positions,
                                past_key_values=cache, use_cache=True).logits.float()
            # tail token 0 is predicted by the prefill's last column, token j > 0 by column j - 1 here
            predicted = torch.cat([first[:, -1].index_select(0, owner)[:, None], torch.log_softmax(logits[:, :-1], dim=-1)], dim=1)
            lp = predicted.gather(-1, tails[..., None])[..., 0]
            totals = (lp * tail_mask).sum(dim=-1) + shared_lp.index_select(0, owner)
        for (k, _), total in zip(rows, totals.tolist(), strict=True):
            out[todo[k]].append(float(total))
        return out


def _common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Leading tokens every sequence shares, leaving at least one token of each unshared."""
    limit = min(len(s) for s in sequences) - 1
    n = 0
    while n < limit and all(s[n] == sequences[0][n] for s in sequences):
        n += 1
    return n


def load_mllm(
    name_or_path: str | Path,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
) -> MLLM:
    """Load model + processor from a local directory or a hub id, in eval mode on ``device``.

    ``dtype`` may be a torch dtype, its name (``"bfloat16"``) or ``"auto"``; None keeps the
    library default. Set ``HF_HUB_OFFLINE=1`` where nothing can be downloaded.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    kwargs: dict[str, Any] = {}
    if (resolved := _resolve_dtype(dtype)) is not None:
        kwargs["dtype"] = resolved
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(str(name_or_path), **kwargs)
    processor = AutoProcessor.from_pretrained(str(name_or_path))
    processor.tokenizer.padding_side = "left"
    model.to(device)
    model.eval()
    logger.info("loaded %s (%s) on %s", name_or_path, type(model).__name__, device)
    return MLLM(model=model, processor=processor, device=device)


def save_processor(processor: Any, out_dir: str | Path) -> None:
    """``processor.save_pretrained(out_dir)`` without :data:`LOAD_STATE_KEYS`, so the same
    weights save to the same bytes whatever the environment of the run that loaded them (a
    trained checkpoint is a DVC output: its hash must not depend on ``HF_HUB_OFFLINE``). The
    tokenizer config is rewritten as transformers writes it (sorted keys, indent 2)."""
    processor.save_pretrained(out_dir)
    path = Path(out_dir) / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    if [config.pop(key) for key in LOAD_STATE_KEYS if key in config]:
        path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                        encoding="utf-8")
