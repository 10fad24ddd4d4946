"""What one request may ask of the server, and the 4xx error that says what it got wrong.

Every limit is checked *before* the expensive step it protects (text before the upload is
hashed, bytes before decoding, the probed header before frame decoding).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from msjoe.config import from_mapping
from msjoe.video import VideoInfo

__all__ = ["RequestError", "ServingLimits", "check_video_info", "limits_from_env", "validate_fields"]

_FORM_OVERHEAD = 64 * 1024  # multipart framing + question + options + budget


@dataclass(frozen=True)
class ServingLimits:
    """What one request may ask of the server; everything above is a 4xx, never a crash.

    ``max_upload_bytes``: the video file (413 above it, checked before any decoding);
    ``max_duration_s`` / ``max_frame_pixels``: from the probed header (422);
    ``min_options`` .. ``max_options``; ``max_question_chars`` / ``max_option_chars``;
    ``max_budget``: frames a client may ask for (the MLLM's visual tokens grow with it);
    ``probe_timeout_s``: a decoder that takes longer on the header + first/last frame is killed;
    ``probe_concurrency``: probe processes at a time (each is a fresh interpreter);
    ``cache_max_mb``: feature cache size budget (oldest entries are removed above it);
    ``frame_cache_mb``: decoded frames kept in memory across requests (0: none).
    """

    max_upload_bytes: int = 256 * 1024 * 1024
    max_duration_s: float = 4 * 3600.0
    max_frame_pixels: int = 3840 * 2160
    min_options: int = 2
    max_options: int = 10
    max_question_chars: int = 1000
    max_option_chars: int = 300
    max_budget: int = 128
    probe_timeout_s: float = 60.0
    probe_concurrency: int = 2
    cache_max_mb: float = 2048.0
    frame_cache_mb: float = 256.0

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1 or self.max_duration_s <= 0 or self.max_frame_pixels < 1:
            raise ValueError("max_upload_bytes, max_duration_s and max_frame_pixels must be positive")
        if not 1 <= self.min_options <= self.max_options <= 10:
            raise ValueError("need 1 <= min_options <= max_options <= 10 (option letters A-J)")
        if min(self.max_question_chars, self.max_option_chars, self.max_budget, self.probe_concurrency) < 1:
            raise ValueError("text limits, max_budget and probe_concurrency must be >= 1")
        if self.probe_timeout_s <= 0 or self.cache_max_mb <= 0:
            raise ValueError("probe_timeout_s and cache_max_mb must be positive")
        if self.frame_cache_mb < 0:
            raise ValueError("frame_cache_mb must be >= 0")

    @property
    def max_request_bytes(self) -> int:
        """Body cap for the whole multipart request: the file plus room for the text fields
        (x6: JSON escapes of non-ASCII text, ``\\uXXXX``)."""
        text = self.max_question_chars + self.max_options * (self.max_option_chars + 8)
        return self.max_upload_bytes + _FORM_OVERHEAD + 6 * text

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ServingLimits:
        """Strict: an unknown key is a typo, and a typo must not silently keep a default."""
        return from_mapping(cls, values, "serving limit")


def limits_from_env(limits: ServingLimits, environ: Mapping[str, str]) -> ServingLimits:
    """Override limits with ``MSJOE_LIMIT_<FIELD>`` variables (e.g. ``MSJOE_LIMIT_MAX_UPLOAD_BYTES``).

    Why: operators tune limits per deployment without re-importing the model; the release's
    values stay the defaults.
    """
    changes: dict[str, Any] = {}
    for f in fields(ServingLimits):
        raw = environ.get(f"MSJOE_LIMIT_{f.name.upper()}")
        if raw is None or raw.strip() == "":
            continue
        caster = float if isinstance(getattr(limits, f.name), float) else int
        try:
            changes[f.name] = caster(raw)
        except ValueError:
            raise ValueError(f"MSJOE_LIMIT_{f.name.upper()}={raw!r} is not a valid {caster.__name__}") from None
    return replace(limits, **changes) if changes else limits


class RequestError(Exception):
    """A request the service will not answer: HTTP ``status`` (4xx, or 503 when full), a
    stable machine ``code``, a readable message, and ``retry_after_s`` when it is worth retrying."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message, "code": self.code, "status": self.status}
        if self.retry_after_s is not None:
            out["retry_after_s"] = self.retry_after_s
        return out

    def headers(self) -> dict[str, str]:
        """HTTP headers of the error reply: ``Retry-After`` when the client should come back."""
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else {}


def validate_fields(
    question: Any, options: Any, budget: Any, limits: ServingLimits, default_budget: int
) -> tuple[str, list[str], int]:
    """Checked ``(question, options, budget)``; a :class:`RequestError` (400) names what is wrong.

    Cheap checks first: they run before the upload is hashed or probed.
    """
    if not isinstance(question, str) or not question.strip():
        raise RequestError(400, "invalid_question", "question must be a non-empty string")
    if len(question) > limits.max_question_chars:
        raise RequestError(400, "question_too_long",
                           f"question has {len(question)} characters; the limit is {limits.max_question_chars}")
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise RequestError(400, "invalid_options", "options must be a list of strings")
    if not limits.min_options <= len(options) <= limits.max_options:
        raise RequestError(400, "option_count",
                           f"got {len(options)} options; between {limits.min_options} and "
                           f"{limits.max_options} are accepted")
    for i, option in enumerate(options):
        if not option.strip():
            raise RequestError(400, "invalid_options", f"option {i} is empty")
        if len(option) > limits.max_option_chars:
            raise RequestError(400, "option_too_long",
                               f"option {i} has {len(option)} characters; the limit is {limits.max_option_chars}")
    if budget is None:
        budget = default_budget
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise RequestError(400, "invalid_budget", "budget must be an integer")
    if not 1 <= budget <= limits.max_budget:
        raise RequestError(400, "invalid_budget", f"budget must be between 1 and {limits.max_budget}, got {budget}")
    return question.strip(), [o.strip() for o in options], int(budget)


def check_video_info(info: VideoInfo, limits: ServingLimits) -> None:
    """Duration and resolution limits (422): a readable video the service will not process."""
    if info.duration_s > limits.max_duration_s:
        raise RequestError(422, "video_too_long",
                           f"video lasts {info.duration_s:.1f} s; the limit is {limits.max_duration_s:.0f} s")
    if info.width * info.height > limits.max_frame_pixels:
        raise RequestError(422, "frame_too_large",
                           f"frames are {info.width}x{info.height}; the limit is {limits.max_frame_pixels} pixels")
