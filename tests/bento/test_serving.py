"""msjoe.serving without a server: release layout, limits, validation, cache pruning, upload guard."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from msjoe.clip.manifest import ClipManifest, read_manifest, write_manifest
from msjoe.mllm.manifest import MLLMManifest
from msjoe.mllm.manifest import read_manifest as read_mllm_manifest
from msjoe.mllm.manifest import write_manifest as write_mllm_manifest
from msjoe.serving import (
    ReleaseConfig,
    RequestError,
    ServingLimits,
    UploadGuard,
    cache_usage,
    limits_from_env,
    probe_upload,
    prune_cache,
    read_release_config,
    validate_fields,
    write_release,
)
from tests.bento import release_config
from tests.media import write_video

LIMITS = ServingLimits(max_question_chars=50, max_option_chars=10, max_budget=8)


# ------------------------------------------------------------------ configuration


def test_release_config_round_trips_and_rejects_typos() -> None:
    cfg = ReleaseConfig.from_mapping(release_config(max_upload_bytes=1234))
    assert cfg.limits.max_upload_bytes == 1234 and cfg.pipeline.max_candidates == 32
    assert ReleaseConfig.from_mapping(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown release config parameters"):
        ReleaseConfig.from_mapping({"budget": 8})
    with pytest.raises(ValueError, match="unknown serving limit parameters"):
        ReleaseConfig.from_mapping({"limits": {"max_upload_mb": 1}})
    with pytest.raises(ValueError, match="unknown pipeline parameters"):
        ReleaseConfig.from_mapping({"pipeline": {"fsp": 1.0}})
    with pytest.raises(ValueError, match="default_budget"):
        ReleaseConfig.from_mapping({"default_budget": 20, "limits": {"max_budget": 16}})
    with pytest.raises(ValueError, match="checkpoint"):  # a path in config would escape the release
        ReleaseConfig.from_mapping({"sampler_params": {"checkpoint": "/etc/passwd"}})
    # a baseline evaluated with the question as its query is released with that query source
    aks = ReleaseConfig.from_mapping({**release_config(), "sampler": "aks", "sampler_params": {}, "queries": "question"})
    assert aks.to_dict()["queries"] == "question" and cfg.queries is None
    assert ReleaseConfig.from_mapping(json.loads(json.dumps(aks.to_dict()))) == aks


def test_limits_from_env_overrides_only_named_fields() -> None:
    base = ServingLimits()
    env = {"MSJOE_LIMIT_MAX_UPLOAD_BYTES": "1000", "MSJOE_LIMIT_MAX_DURATION_S": "12.5",
           "MSJOE_LIMIT_MAX_OPTIONS": " ", "OTHER": "1"}
    limits = limits_from_env(base, env)
    assert limits.max_upload_bytes == 1000 and limits.max_duration_s == 12.5
    assert limits.max_options == base.max_options
    assert limits.max_request_bytes > 1000
    with pytest.raises(ValueError, match="MSJOE_LIMIT_MAX_BUDGET"):
        limits_from_env(base, {"MSJOE_LIMIT_MAX_BUDGET": "many"})
    with pytest.raises(ValueError, match="min_options"):
        limits_from_env(base, {"MSJOE_LIMIT_MAX_OPTIONS": "11"})


# ------------------------------------------------------------------ validation


def test_validate_fields_normalises_and_explains() -> None:
    assert validate_fields(" Why? ", [" a", "b "], None, LIMITS, 4) == ("Why?", ["a", "b"], 4)
    cases: list[tuple[Any, Any, Any, str]] = [
        ("", ["a", "b"], 2, "invalid_question"),
        (None, ["a", "b"], 2, "invalid_question"),
        ("q" * 51, ["a", "b"], 2, "question_too_long"),
        ("q", "a", 2, "invalid_options"),
        ("q", ["a", 3], 2, "invalid_options"),
        ("q", ["a"], 2, "option_count"),
        ("q", ["a", "  "], 2, "invalid_options"),
        ("q", ["a", "b" * 11], 2, "option_too_long"),
        ("q", ["a", "b"], True, "invalid_budget"),
        ("q", ["a", "b"], 2.5, "invalid_budget"),
        ("q", ["a", "b"], 9, "invalid_budget"),
    ]
    for question, options, budget, code in cases:
        with pytest.raises(RequestError) as info:
            validate_fields(question, options, budget, LIMITS, 4)
        assert info.value.code == code and info.value.status == 400, (question, options, budget)


def test_probe_upload_isolates_the_decoder(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.mp4", n_frames=12, fps=4, size=32)
    info = probe_upload(video, ServingLimits())
    assert (info.n_frames, info.fps, info.width) == (12, 4.0, 32)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(RequestError) as error:
        probe_upload(junk, ServingLimits())
    assert error.value.status == 415 and str(junk) not in error.value.message  # no server paths leak


def segfault_probe(path: Path) -> Any:
    """A decoder that crashes the process (run in the spawned probe worker only)."""
    import ctypes

    ctypes.string_at(0)


def hanging_probe(path: Path) -> Any:
    """A decoder that never returns (run in the spawned probe worker only)."""
    time.sleep(60)


def test_probe_upload_survives_a_crashing_or_hanging_decoder(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.mp4", n_frames=12, fps=4, size=32)
    with pytest.raises(RequestError) as crashed:
        probe_upload(video, ServingLimits(), probe=segfault_probe)
    assert crashed.value.status == 415 and ("crashed" in crashed.value.message or "died" in crashed.value.message)
    started = time.perf_counter()
    with pytest.raises(RequestError) as hung:
        probe_upload(video, ServingLimits(probe_timeout_s=0.5), probe=hanging_probe)
    assert hung.value.status == 415 and "longer than" in hung.value.message
    assert time.perf_counter() - started < 10
    assert probe_upload(video, ServingLimits()).n_frames == 12  # and this process still probes fine


# ------------------------------------------------------------------ release layout


def _fake_models(root: Path) -> tuple[Path, Path]:
    clip_dir = root / "clip"
    clip_dir.mkdir(parents=True)
    (clip_dir / "weights.pt").write_bytes(b"clip weights")
    (clip_dir / "arch.json").write_text("{}")
    (clip_dir / "unrelated.log").write_text("training log")
    write_manifest(clip_dir, ClipManifest("arch", "weights.pt", "arch.json", "arch@sha256:abc"))
    weights = root / "elsewhere" / "qwen"  # an absolute local path in the manifest
    weights.mkdir(parents=True)
    (weights / "config.json").write_text("{}")
    mllm_dir = root / "mllm"
    write_mllm_manifest(mllm_dir, MLLMManifest(str(weights), "qwen@sha256:def"))
    return clip_dir, mllm_dir


def test_write_release_is_self_contained(tmp_path: Path) -> None:
    clip_dir, mllm_dir = _fake_models(tmp_path / "models")
    ckpt = tmp_path / "sampler.pt"
    ckpt.write_bytes(b"sampler")
    cfg = ReleaseConfig.from_mapping(release_config())
    info = write_release(tmp_path / "release", clip_dir, mllm_dir, ckpt, cfg)

    release = tmp_path / "release"
    assert info["clip_identity"] == "arch@sha256:abc" and info["mllm_identity"] == "qwen@sha256:def"
    assert info["sampler_sha256"] is not None and (release / "sampler.pt").read_bytes() == b"sampler"
    assert sorted(p.name for p in (release / "clip").iterdir()) == ["arch.json", "clip.json", "weights.pt"]
    assert read_manifest(release / "clip").identity == "arch@sha256:abc"
    manifest = read_mllm_manifest(release / "mllm")
    assert manifest == MLLMManifest("model", "qwen@sha256:def")  # copied in, identity kept
    assert (release / "mllm" / "model" / "config.json").is_file()
    assert read_release_config(release) == cfg


def test_write_release_refuses_inconsistent_samplers(tmp_path: Path) -> None:
    clip_dir, mllm_dir = _fake_models(tmp_path / "models")
    ckpt = tmp_path / "sampler.pt"
    ckpt.write_bytes(b"sampler")
    with pytest.raises(ValueError, match="checkpoint was given"):
        write_release(tmp_path / "a", clip_dir, mllm_dir, ckpt, ReleaseConfig(sampler="uniform"))
    with pytest.raises(ValueError, match="unknown sampler"):
        write_release(tmp_path / "b", clip_dir, mllm_dir, None, ReleaseConfig(sampler="best"))
    with pytest.raises(ValueError, match="bad parameters"):
        write_release(tmp_path / "c", clip_dir, mllm_dir, None,
                      ReleaseConfig(sampler="bolt", sampler_params={"alhpa": 3}))
    with pytest.raises(ValueError, match="uniform ignores similarity"):
        write_release(tmp_path / "d", clip_dir, mllm_dir, None, ReleaseConfig(sampler="uniform", queries="question"))
    with pytest.raises(ValueError, match="queries must be one of"):
        write_release(tmp_path / "e", clip_dir, mllm_dir, None, ReleaseConfig(sampler="aks", queries="captions"))


# ------------------------------------------------------------------ cache


def test_prune_cache_removes_least_recently_used_first(tmp_path: Path) -> None:
    for i in range(5):
        path = tmp_path / "features" / f"{i:02d}" / f"{i}.npz"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x" * 100)
        os.utime(path, (1000 + i, 1000 + i))
    os.utime(tmp_path / "features" / "00" / "0.npz", (5000, 5000))  # a recent hit
    (tmp_path / "features" / "00" / ".partial.tmp.npz").write_bytes(b"y" * 1000)  # in-flight write
    assert cache_usage(tmp_path) == {"files": 5, "bytes": 500}

    assert prune_cache(tmp_path, max_bytes=300) == 2
    left = sorted(p.name for p in tmp_path.rglob("*.npz") if not p.name.startswith("."))
    assert left == ["0.npz", "3.npz", "4.npz"]
    assert (tmp_path / "features" / "00" / ".partial.tmp.npz").exists()
    assert prune_cache(tmp_path, max_bytes=300) == 0


# ------------------------------------------------------------------ upload guard


async def _echo(scope: dict, receive: Any, send: Any) -> None:
    """Reads the form like BentoML does and reports what arrived."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    request = Request(scope, receive)
    form = await request.form()
    fields = {}
    for key, value in form.multi_items():
        fields[key] = (await value.read()).hex() if hasattr(value, "read") else value
    await JSONResponse({"path": scope["path"], "fields": fields})(scope, receive, send)


@pytest.fixture()
def guarded() -> Any:
    from starlette.testclient import TestClient

    limit = {"value": 10_000}
    return TestClient(UploadGuard(_echo, max_body_bytes=lambda: limit["value"], paths=["/answer"])), limit


def test_guard_replays_a_good_upload_unchanged(guarded: Any) -> None:
    client, _ = guarded
    payload = os.urandom(3000) + b"\r\n--boundary-lookalike\r\n"
    response = client.post("/answer", data={"question": "q"}, files={"video": ("v.mp4", payload, "video/mp4")})
    assert response.status_code == 200
    assert response.json()["fields"] == {"question": "q", "video": payload.hex()}


def test_guard_enforces_size_type_and_file_fields(guarded: Any) -> None:
    client, limit = guarded
    big = client.post("/answer", files={"video": ("v.mp4", b"\0" * 20_000)})
    assert big.status_code == 413 and big.json()["code"] == "request_too_large"

    def chunks() -> Any:  # no Content-Length: the guard counts while reading
        for _ in range(30):
            yield b"\0" * 1000

    streamed = client.post("/answer", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert streamed.status_code == 413

    text_video = client.post("/answer", data={"video": "https://example.com/a.mp4"},
                             files={"other": ("o.txt", b"o")})
    assert text_video.status_code == 400 and text_video.json()["code"] == "video_not_a_file"
    assert client.post("/answer", data={"video": "/etc/passwd"}).status_code == 415  # urlencoded
    assert client.post("/answer", json={"video": "/etc/passwd"}).status_code == 415
    malformed = client.post("/answer", content=b"garbage without boundaries" * 3,
                            headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert malformed.status_code == 400 and malformed.json()["code"] == "malformed_multipart"
    # the limit is read per request, and other paths are not guarded at all
    limit["value"] = 100_000
    assert client.post("/answer", files={"video": ("v.mp4", b"\0" * 20_000)}).status_code == 200
    other = client.post("/other", json={"video": "x"})
    assert other.status_code == 200 and other.json() == {"path": "/other", "fields": {}}
