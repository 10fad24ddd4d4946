"""Parse the MLLM's two turns: visual queries and the chosen option.

Both parsers are pure and tolerant, because a small or half-trained model writes malformed text
(unclosed or nested tags, stray whitespace, too many queries). They never invent content: a
query must sit inside a closed ``<query>…</query>`` pair, and an answer letter is only accepted
from an explicit form (tag, lone letter, ``(B)``, ``B.``, "answer is B") and only when it names
one of the first ``n_options`` options. A parse failure is reported (``ok=False`` / ``None``) so
the pipeline can fall back and count it instead of guessing silently.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["OPTION_LETTERS", "QueryParse", "has_answer_tag", "option_letter", "parse_answer", "parse_queries"]

#: Letters used for multiple-choice options; the data contract allows up to 10 options.
OPTION_LETTERS = "ABCDEFGHIJ"

# Innermost closed pair: the content may not itself contain an opening tag, so
# "<query>a <query>b</query>" yields "b" (the unclosed outer tag is ignored).
_QUERY_RE = re.compile(r"<query>((?:(?!<query>).)*?)</query>", re.IGNORECASE | re.DOTALL)
_TAG_RE = re.compile(r"</?\s*[A-Za-z_]+\s*>")
_SPACE_RE = re.compile(r"\s+")
_ANSWER_TAG_RE = re.compile(r"<answer>((?:(?!<answer>).)*?)</answer>", re.IGNORECASE | re.DOTALL)
_ANSWER_OPEN_RE = re.compile(r"<answer>(.*)$", re.IGNORECASE | re.DOTALL)
# A letter standing alone as the whole (tag) content: "B", "B.", "(B)", "B)", "b".
_LONE_RE = re.compile(r"^\(?\s*([A-Za-z])\s*\)?\s*[.:]?$")
# A letter opening the text, marked as an option: "B. red", "B) red", "(B) red", "B: red".
_LEADING_RE = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])\s*[.:)])")
# Explicit statements: "answer is B", "Answer: (C)", "option D", "choice: A".
_STATED_RE = re.compile(
    r"\b(?:answer|option|choice)\s*(?:is|would be|:|-)?\s*:?\s*\(?([A-Z])\)?(?![A-Za-z])",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class QueryParse:
    """Queries extracted from the query turn.

    ``ok`` is False when no query could be parsed; the caller then uses the question itself as
    the only query and counts the failure (the format reward also depends on it).
    """

    queries: list[str] = field(default_factory=list)
    ok: bool = False


def _clean(text: str) -> str:
    """Drop stray tags and collapse whitespace so near-identical queries deduplicate."""
    return _SPACE_RE.sub(" ", _TAG_RE.sub(" ", text)).strip()


def parse_queries(text: str, max_queries: int = 4) -> QueryParse:
    """Extract up to ``max_queries`` distinct queries from ``<query>…</query>`` pairs.

    Contents are stripped of stray tags and extra whitespace; empty and duplicate queries
    (case-insensitive) are dropped; order is kept.

    >>> parse_queries("<query> a red star </query>\\n<query>blue   circle</query>")
    QueryParse(queries=['a red star', 'blue circle'], ok=True)
    >>> parse_queries("<query>x</query><query>X</query><query> </query>")
    QueryParse(queries=['x'], ok=True)
    >>> parse_queries("<query>a <query>b</query> <query>c")
    QueryParse(queries=['b'], ok=True)
    >>> parse_queries("".join(f"<query>q{i}</query>" for i in range(6)), max_queries=4).queries
    ['q0', 'q1', 'q2', 'q3']
    >>> parse_queries("no tags here")
    QueryParse(queries=[], ok=False)
    """
    if max_queries < 1:
        raise ValueError(f"max_queries must be >= 1, got {max_queries}")
    queries: list[str] = []
    seen: set[str] = set()
    for match in _QUERY_RE.finditer(text):
        query = _clean(match.group(1))
        key = query.casefold()
        if not query or key in seen:
            continue
        seen.add(key)
        queries.append(query)
        if len(queries) == max_queries:
            break
    return QueryParse(queries=queries, ok=bool(queries))


def option_letter(index: int) -> str:
    """Letter of the option at 0-based ``index`` (``0 -> "A"``).

    >>> option_letter(2)
    'C'
    """
    if not 0 <= index < len(OPTION_LETTERS):
        raise ValueError(f"option index must be in [0, {len(OPTION_LETTERS)}), got {index}")
    return OPTION_LETTERS[index]


def _valid(letter: str, n_options: int) -> str | None:
    letter = letter.upper()
    return letter if letter in OPTION_LETTERS[:n_options] else None


def _from_content(content: str, n_options: int, options: Sequence[str] | None) -> str | None:
    """Read a letter from the content of an answer tag (or from a whole reply)."""
    content = content.strip()
    if (lone := _LONE_RE.match(content)) is not None:
        return _valid(lone.group(1), n_options)
    if (lead := _LEADING_RE.match(content)) is not None:
        return _valid(lead.group(1) or lead.group(2), n_options)
    if (stated := _STATED_RE.search(content)) is not None and stated.group(1).isupper():
        return _valid(stated.group(1), n_options)
    if options is not None:
        wanted = _clean(content).casefold()
        for i, option in enumerate(options[:n_options]):
            if wanted and _clean(option).casefold() == wanted:
                return OPTION_LETTERS[i]
    return None


def has_answer_tag(text: str) -> bool:
    """Whether ``text`` holds a closed ``<answer>…</answer>`` tag: the reply is well formed.

    A well-formed reply may still name no option (``<answer>a green star</answer>`` when no
    option says so): that is a wrong answer, not a format failure, and evaluation reports the
    two apart (``answer_format_rate`` against ``answer_parse_rate``).

    >>> has_answer_tag("Seen: a red star. <answer>a blue circle</answer>")
    True
    >>> has_answer_tag("<answer>B")
    False
    """
    return _ANSWER_TAG_RE.search(text) is not None


def parse_answer(text: str, n_options: int, *, options: Sequence[str] | None = None) -> str | None:
    """The option letter chosen in ``text``, or None when there is no unambiguous one.

    A closed ``<answer>…</answer>`` tag is authoritative (the first one); its content may be a
    lone letter, ``(B)``, ``B.``, ``B. text``, "answer is B", or, when ``options`` is given,
    the exact text of an option. Without a closed tag, an unclosed trailing tag (a reply cut
    by the token budget) and then the whole text are read the same way. A letter outside the
    first ``n_options`` is never returned.

    >>> parse_answer("<answer>B</answer>", 4)
    'B'
    >>> parse_answer("I think <answer> (c) </answer>", 4)
    'C'
    >>> parse_answer("<answer>E</answer>", 4) is None
    True
    >>> parse_answer("The answer is D.", 4)
    'D'
    >>> parse_answer("B. a blue square", 4)
    'B'
    >>> parse_answer("A red circle appeared", 4) is None
    True
    >>> parse_answer("<answer>blue</answer>", 3, options=["red", "blue", "green"])
    'B'
    >>> parse_answer("<answer>A", 2)
    'A'
    >>> parse_answer("", 4) is None
    True
    """
    if not 1 <= n_options <= len(OPTION_LETTERS):
        raise ValueError(f"n_options must be in [1, {len(OPTION_LETTERS)}], got {n_options}")
    if (tag := _ANSWER_TAG_RE.search(text)) is not None:
        return _from_content(tag.group(1), n_options, options)
    if (opened := _ANSWER_OPEN_RE.search(text)) is not None:
        return _from_content(opened.group(1), n_options, options)
    return _from_content(text, n_options, options)
