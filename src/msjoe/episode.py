"""One MSJoE episode, the unit every consumer shares: query turn -> CLIP similarity ->
sampler draw -> answer turn -> parsed option -> reward.

Evaluation, serving, the ``difficulty`` stage and both RL trainers must agree on what an
episode is and, above all, on when an answer counts as correct; this module is the one home of
that decision (:func:`is_correct`).
"""

from __future__ import annotations

__all__ = ["is_correct"]


def is_correct(predicted: str | None, answer: str) -> bool:
    """Whether a parsed option letter is the right one.

    Letters compare case-insensitively, ignoring surrounding whitespace. A failed parse
    (``None`` or blank) is wrong, never an error; a blank ground truth is a data error.

    >>> is_correct("B", "B")
    True
    >>> is_correct(" b", "B")
    True
    >>> is_correct("C", "B")
    False
    >>> is_correct(None, "B")
    False
    """
    if not answer or not answer.strip():
        raise ValueError("answer must be a non-empty option letter")
    if predicted is None or not predicted.strip():
        return False
    return predicted.strip().upper() == answer.strip().upper()
