"""Chat messages for the two MLLM turns of MSJoE (query reasoning, then answering).

Messages follow the transformers chat format that Qwen2.5-VL's processor renders:
``{"role": ..., "content": [{"type": "image", "image": <PIL image>}, {"type": "text", ...}]}``.
The functions are pure (no model, no tokenizer) so the same prompts are used by the tiny demo
model, by Qwen2.5-VL-7B, by training and by serving, and the tiny tokenizer can be trained on
their fixed wording (:func:`prompt_vocabulary`).

Design choices (docs/design.md): the query turn sees the question, the lettered options and
``n_preview`` low-resolution preview frames; the answer turn sees only the K selected frames at
full resolution (previews are not shown again).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from msjoe.mllm.parsing import OPTION_LETTERS

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "Conversation",
    "Frame",
    "Message",
    "build_answer_messages",
    "build_query_messages",
    "downscale",
    "format_options",
    "prompt_vocabulary",
]

Message: TypeAlias = dict[str, Any]
Conversation: TypeAlias = list[Message]
#: A video frame: a PIL image or an ``(H, W, 3)`` uint8 array.
Frame: TypeAlias = "Image.Image | np.ndarray"

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

_QUERY_INTRO = "These are {n} preview frames sampled uniformly from a long video."
_QUERY_TASK = (
    "Do not answer yet. To find the frames that answer the question, write up to {k} short "
    "visual queries describing what those frames show, one per line as <query>...</query>."
)
_ANSWER_INTRO = "These are {n} frames selected from a long video, in temporal order."
_ANSWER_TASK = "Answer with the letter of the correct option as <answer>X</answer>."


def format_options(options: Sequence[str]) -> str:
    """Lettered option lines, the form both turns show.

    >>> format_options(["red", "blue"])
    'A. red\\nB. blue'
    """
    if not 1 <= len(options) <= len(OPTION_LETTERS):
        raise ValueError(f"expected 1 to {len(OPTION_LETTERS)} options, got {len(options)}")
    return "\n".join(f"{OPTION_LETTERS[i]}. {str(option).strip()}" for i, option in enumerate(options))


def downscale(frame: Frame, max_pixels: int) -> Image.Image:
    """A copy of ``frame`` with at most ``max_pixels`` pixels, aspect ratio kept.

    Preview frames are shown at low resolution so that many of them cost few visual tokens;
    Qwen's processor only enforces a pixel range, so the reduction happens here.
    """
    from PIL import Image as PILImage

    image = frame if isinstance(frame, PILImage.Image) else PILImage.fromarray(frame)
    image = image.convert("RGB")
    width, height = image.size
    if width * height <= max_pixels:
        return image.copy()
    scale = math.sqrt(max_pixels / (width * height))
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    return image.resize(size, PILImage.Resampling.BICUBIC)


def _image_items(frames: Sequence[Frame], timestamps: Sequence[float] | None) -> list[Message]:
    if timestamps is not None and len(timestamps) != len(frames):
        raise ValueError(f"{len(timestamps)} timestamps for {len(frames)} frames")
    items: list[Message] = []
    for i, frame in enumerate(frames):
        if timestamps is not None:
            items.append({"type": "text", "text": f"{timestamps[i]:.1f}s:"})
        items.append({"type": "image", "image": frame})
    return items


def _question_block(question: str, options: Sequence[str]) -> str:
    return f"Question: {question.strip()}\nOptions:\n{format_options(options)}"


def _conversation(system_prompt: str | None, content: list[Message]) -> Conversation:
    messages: Conversation = []
    if system_prompt is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append({"role": "user", "content": content})
    return messages


def build_query_messages(
    question: str,
    options: Sequence[str],
    previews: Sequence[Frame],
    *,
    n_queries: int = 4,
    preview_max_pixels: int | None = None,
    timestamps: Sequence[float] | None = None,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
) -> Conversation:
    """Query turn: previews + question + options, asking for ``<query>`` lines.

    ``preview_max_pixels`` (when given) downscales each preview; ``timestamps`` (seconds, when
    given) label each frame so the model can reason about time.
    """
    if n_queries < 1:
        raise ValueError(f"n_queries must be >= 1, got {n_queries}")
    frames = [downscale(f, preview_max_pixels) for f in previews] if preview_max_pixels else list(previews)
    content = [{"type": "text", "text": _QUERY_INTRO.format(n=len(frames))}]
    content += _image_items(frames, timestamps)
    text = f"{_question_block(question, options)}\n{_QUERY_TASK.format(k=n_queries)}"
    content.append({"type": "text", "text": text})
    return _conversation(system_prompt, content)


def build_answer_messages(
    question: str,
    options: Sequence[str],
    frames: Sequence[Frame],
    *,
    timestamps: Sequence[float] | None = None,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
) -> Conversation:
    """Answer turn: the K selected frames (full resolution) + question + options.

    Frames should already be in temporal order (the sampler re-sorts its choice by time).
    """
    content = [{"type": "text", "text": _ANSWER_INTRO.format(n=len(frames))}]
    content += _image_items(frames, timestamps)
    content.append({"type": "text", "text": f"{_question_block(question, options)}\n{_ANSWER_TASK}"})
    return _conversation(system_prompt, content)


def prompt_vocabulary() -> list[str]:
    """The fixed wording of both turns, so a tokenizer trained for the demo covers it well."""
    letters = list(OPTION_LETTERS)
    return [
        DEFAULT_SYSTEM_PROMPT,
        _QUERY_INTRO.format(n=8),
        _QUERY_TASK.format(k=4),
        _ANSWER_INTRO.format(n=16),
        _ANSWER_TASK,
        "Question: Options:",
        format_options(letters),
        " ".join(f"<answer>{c}</answer>" for c in letters),
        "<query>a red star</query>",
        "0123456789 0.5s: 12.0s: . , ; : ? ! ' \" ( ) [ ] - / + = % & #",
    ]
