"""Video files: safe path resolution, content hashing, probing and frame decoding with decord.

Every component that touches a video file (ingest, embedding, the service) goes through here so
that the same decoder, the same candidate-frame rule and the same hashing are used everywhere.
decord is imported lazily: it is only needed by the code paths that actually decode.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np

_HASH_CHUNK = 1 << 20


class VideoError(ValueError):
    """A video that cannot be used, with a reason a user can act on."""


@dataclass(frozen=True)
class VideoInfo:
    """What ingest records about a readable video."""

    n_frames: int
    fps: float
    duration_s: float
    width: int
    height: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def sha256_file(path: Path) -> str:
    """SHA-256 hex digest of a file's bytes, read in chunks so a large video fits in memory.

    The one content hash of the project: feature caches, the service and the metadata store
    key files by it, never by their path.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_video(root: Path, relative: str) -> Path:
    """Resolve a QA row's `video` field inside `root`, refusing anything that escapes it.

    Annotation files come from outside; a row must not make the pipeline read `/etc/passwd` or
    `../../secret.mp4`, so absolute paths, `..` components and symlinks pointing out are rejected.
    """
    if not isinstance(relative, str) or not relative.strip():
        raise VideoError("video path is empty")
    if "\x00" in relative:
        raise VideoError("video path contains a NUL byte")
    posix = PurePosixPath(relative.replace("\\", "/"))
    if posix.is_absolute() or (len(relative) > 1 and relative[1] == ":"):
        raise VideoError(f"video path {relative!r} is absolute; it must be relative to the video root")
    if ".." in posix.parts:
        raise VideoError(f"video path {relative!r} contains '..'; it must stay inside the video root")
    root_resolved = root.resolve()
    candidate = (root_resolved / Path(*posix.parts)).resolve()
    if not candidate.is_relative_to(root_resolved):
        raise VideoError(f"video path {relative!r} resolves outside the video root (symlink?)")
    return candidate


def open_reader(path: Path, width: int = -1, height: int = -1):  # noqa: ANN201 (decord type)
    """Open a decord reader on the CPU with one decoding thread (we parallelise across videos)."""
    import decord

    if not path.exists():
        raise VideoError(f"{path}: file not found")
    if not path.is_file():
        raise VideoError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: file is empty")
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1, width=width, height=height)
    except Exception as exc:  # decord raises its own DECORDError / RuntimeError for bad streams
        raise VideoError(f"{path}: not a decodable video ({type(exc).__name__}: {_first_line(exc)})") from exc


def probe_video(path: Path) -> VideoInfo:
    """Read the metadata and decode the first and last frames, so truncated files are caught at ingest."""
    reader = open_reader(path)
    n_frames = len(reader)
    if n_frames <= 0:
        raise VideoError(f"{path}: video has no frames")
    fps = float(reader.get_avg_fps())
    if not np.isfinite(fps) or fps <= 0:
        raise VideoError(f"{path}: invalid frame rate {fps}")
    try:
        first = reader[0].asnumpy()
        reader[n_frames - 1].asnumpy()
    except Exception as exc:
        raise VideoError(f"{path}: frames cannot be decoded ({type(exc).__name__}: {_first_line(exc)})") from exc
    height, width = int(first.shape[0]), int(first.shape[1])
    return VideoInfo(n_frames=n_frames, fps=fps, duration_s=n_frames / fps, width=width, height=height)


def candidate_indices(n_frames: int, video_fps: float, fps: float, max_candidates: int) -> np.ndarray:
    """Frame indices of the candidates: one frame every 1/fps seconds, uniformly thinned to the cap.

    This is the method's candidate set (docs/design.md section 1, step 1). Frame i is shown at
    time i / video_fps; we take the frame nearest each sampling instant.
    """
    if n_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    if fps <= 0 or max_candidates <= 0:
        raise ValueError("fps and max_candidates must be positive")
    duration = n_frames / video_fps
    n = max(1, int(np.floor(duration * fps + 1e-9)))
    times = np.arange(n) / fps
    indices = np.unique(np.clip(np.round(times * video_fps).astype(np.int64), 0, n_frames - 1))
    if len(indices) > max_candidates:
        keep = np.linspace(0, len(indices) - 1, max_candidates).round().astype(np.int64)
        indices = indices[np.unique(keep)]
    return indices


def decode_frames(reader, indices: np.ndarray) -> np.ndarray:  # noqa: ANN001 (decord reader)
    """Exact frames at `indices` as a uint8 array (N, H, W, 3)."""
    if len(indices) == 0:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    return reader.get_batch([int(i) for i in indices]).asnumpy()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else "no message"
