"""Untrusted uploads: the decoder probe in a separate process, records of content that passed
it, and the size budget of the service's cache directory."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

from msjoe.serving.limits import RequestError, ServingLimits
from msjoe.video import VideoInfo, probe_video

__all__ = ["ProbeRecords", "cache_usage", "probe_upload", "probe_without_hash", "prune_cache"]

def probe_without_hash(path: Path) -> tuple[VideoInfo, str]:
    """Probe function for :func:`msjoe.probe.probe_many` (the caller has hashed already)."""
    return probe_video(path), ""


def probe_upload(
    path: Path, limits: ServingLimits, probe: Callable[[Path], tuple[VideoInfo, str]] = probe_without_hash
) -> VideoInfo:
    """Probe an untrusted upload in a separate process; 415 when it cannot be decoded.

    Why a process: the decoder is native code, and a hostile file may crash or hang it; the
    worker dies instead of the server, and a timeout bounds a hang. ``probe`` must be a
    module-level function (it is sent to the spawned worker).
    """
    from msjoe.probe import probe_many

    (result,) = list(probe_many([("upload", Path(path))], workers=1, timeout_s=limits.probe_timeout_s,
                                probe=probe))
    if result.info is None:
        reason = (result.error or "unknown error").replace(str(path), "upload")
        raise RequestError(415, "unsupported_video", f"the uploaded file is not a decodable video: {reason}")
    return result.info


def _cache_files(root: Path) -> list[tuple[float, int, Path]]:
    out = []
    if not root.is_dir():
        return out
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name.startswith("."):  # temporary files of an in-flight write
                continue
            path = Path(dirpath) / name
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            out.append((st.st_mtime, st.st_size, path))
    return out


def cache_usage(root: Path) -> dict[str, int]:
    """``{"files": n, "bytes": b}`` of a cache directory."""
    files = _cache_files(Path(root))
    return {"files": len(files), "bytes": sum(size for _, size, _ in files)}


def prune_cache(root: Path, max_bytes: int) -> int:
    """Delete the least recently used files until the cache fits ``max_bytes``; returns how many.

    Why: every distinct upload adds features; without a budget a public endpoint fills the disk.
    Hits refresh a file's mtime, so this is LRU.
    """
    files = sorted(_cache_files(Path(root)))
    total = sum(size for _, size, _ in files)
    removed = 0
    for _, size, path in files:
        if total <= max_bytes:
            break
        path.unlink(missing_ok=True)
        total -= size
        removed += 1
    return removed


class ProbeRecords:
    """``root/<sha[:2]>/<sha>.json``: header facts of uploads that passed the probe."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.json"

    def get(self, sha256: str) -> VideoInfo | None:
        path = self._path(sha256)
        try:
            info = VideoInfo(**json.loads(path.read_text()))
            os.utime(path)  # a hit: keep it from LRU pruning
        except (FileNotFoundError, ValueError, TypeError):
            return None
        return info

    def put(self, sha256: str, info: VideoInfo) -> None:
        path = self._path(sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(info.to_dict()))
        os.replace(tmp, path)
