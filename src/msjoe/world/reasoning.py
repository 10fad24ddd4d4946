"""What a competent viewer answers from the events it saw: the demo world's reading rule.

The demo base MLLM is taught to list the events visible in its frames (``Seen: a red star,
a blue circle.``) and then to answer *from that list*. Its supervised answer target is
therefore not the ground truth of the question but the answer the seen events imply:

* ``attribute`` ("What colour was the star?"): the colour of the first seen star;
* ``order`` ("What appeared right after the red circle?"): the seen event that follows the
  red circle in the list;
* ``count`` ("How many stars appeared?"): the number of seen stars;
* ``first_last`` ("What was the first/last shape to appear?"): the first/last seen event.

When every target event of the question is among the frames this is the right answer, so a
model that perceives well answers right from evidence frames; when the frames miss evidence it
answers what it saw (e.g. a count that is too low), exactly the failure a better frame sampler
removes. Without such a rule the target would be the ground truth on frames that do not show
it, which teaches answering from the text alone, or noise.

The question wording is the world generator's (:mod:`msjoe.world.questions`); a question this
module cannot read gives ``None`` (no implied answer).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from msjoe.world.vocab import COLOURS, SHAPES, plural

__all__ = ["implied_answer", "implied_option"]

_ATTRIBUTE = re.compile(r"^What colour was the (\w+)\?$")
_ORDER = re.compile(r"^What appeared right after the (\w+) (\w+)\?$")
_COUNT = re.compile(r"^How many (\w+) appeared\?$")
_FIRST_LAST = re.compile(r"^What was the (first|last) shape to appear\?$")
_PLURAL_TO_SHAPE = {plural(s): s for s in SHAPES}


def _parse_event(caption: str) -> tuple[str, str] | None:
    """``"a red star"`` -> ``("red", "star")``; None for anything else."""
    parts = caption.strip().split()
    if len(parts) == 3 and parts[0] == "a" and parts[1] in COLOURS and parts[2] in SHAPES:
        return parts[1], parts[2]
    return None


def implied_answer(question: str, seen: Sequence[str]) -> str | None:
    """The answer text the seen events imply for ``question`` (None when they imply none).

    ``seen``: captions of the visible events in time order, each once (``"a red star"``).

    >>> implied_answer("What colour was the star?", ["a red circle", "a blue star"])
    'blue'
    >>> implied_answer("What appeared right after the red circle?", ["a red circle", "a blue star"])
    'a blue star'
    >>> implied_answer("What appeared right after the blue star?", ["a red circle", "a blue star"]) is None
    True
    >>> implied_answer("How many stars appeared?", ["a red star", "a blue circle", "a green star"])
    '2'
    >>> implied_answer("What was the last shape to appear?", ["a red star", "a blue circle"])
    'a blue circle'
    >>> implied_answer("What was the first shape to appear?", []) is None
    True
    """
    events = [e for e in (_parse_event(c) for c in seen) if e is not None]
    text = question.strip()
    if (m := _ATTRIBUTE.match(text)) is not None:
        return next((colour for colour, shape in events if shape == m.group(1)), None)
    if (m := _ORDER.match(text)) is not None:
        anchor = (m.group(1), m.group(2))
        if anchor in events and events.index(anchor) + 1 < len(events):
            colour, shape = events[events.index(anchor) + 1]
            return f"a {colour} {shape}"
        return None
    if (m := _COUNT.match(text)) is not None:
        shape = _PLURAL_TO_SHAPE.get(m.group(1))
        return None if shape is None else str(sum(s == shape for _, s in events))
    if (m := _FIRST_LAST.match(text)) is not None:
        if not events:
            return None
        colour, shape = events[0] if m.group(1) == "first" else events[-1]
        return f"a {colour} {shape}"
    return None


def implied_option(question: str, options: Sequence[str], seen: Sequence[str]) -> int | None:
    """Index of the option the seen events imply, or None when they imply none of the options.

    >>> implied_option("How many stars appeared?", ["0", "1", "2", "3"], ["a red star"])
    1
    >>> implied_option("How many stars appeared?", ["2", "3", "4", "5"], ["a red star"]) is None
    True
    """
    answer = implied_answer(question, seen)
    if answer is None:
        return None
    wanted = answer.casefold()
    return next((i for i, option in enumerate(options) if option.strip().casefold() == wanted), None)
