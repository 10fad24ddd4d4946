"""Helpers for the service tests: a tiny release (random CLIP, random tiny Qwen2.5-VL, sampler)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from msjoe.mllm.build import TinyMLLMConfig
from msjoe.pipeline import PipelineConfig

TINY_MLLM = TinyMLLMConfig(
    vocab_size=400, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2,
    vision_hidden_size=32, vision_intermediate_size=64, vision_depth=1,
)
TINY_PIPELINE = PipelineConfig(fps=2.0, max_candidates=32, n_queries=4, preview_size=16, answer_size=32,
                               max_new_tokens=6, query_max_new_tokens=16, batch_size=4)
CORPUS = [
    "What colour was the star?", "red", "green", "blue", "yellow", "a red star", "a blue circle",
    "What appeared right after the red circle?", "How many triangles appeared?", "a green square",
]


def release_config(**limits: int | float) -> dict:
    """A release config mapping (as the package stage would pass it) with the given limits."""
    return {
        "pipeline": asdict(TINY_PIPELINE),
        "sampler": "msjoe",
        "sampler_params": {"config": "tiny"},
        "default_budget": 4,
        "limits": {"max_budget": 16, **limits},
    }


def build_model_dirs(root: Path) -> tuple[Path, Path, Path]:
    """``(clip_dir, mllm_dir, sampler_ckpt)`` as the pretrain/train stages write them, seeded."""
    import torch

    from tests.models import write_random_clip
    from msjoe.mllm.build import build_tiny_mllm
    from msjoe.mllm.manifest import MLLMManifest
    from msjoe.mllm.manifest import write_manifest as write_mllm_manifest
    from msjoe.sampling.unet import UNetConfig, UNetSampler

    clip_dir = write_random_clip(root / "clip")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        sampler = UNetSampler(UNetConfig.tiny())

    mllm_dir = root / "mllm"
    build_tiny_mllm(mllm_dir / "model", CORPUS, TINY_MLLM, seed=0)
    write_mllm_manifest(mllm_dir, MLLMManifest("model", "tiny@test"))

    sampler_ckpt = root / "sampler.pt"
    torch.save({"state_dict": sampler.state_dict(), "config": asdict(UNetConfig.tiny())}, sampler_ckpt)
    return clip_dir, mllm_dir, sampler_ckpt


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def bentoml_serve(env: dict[str, str], log_path: Path, ready_timeout: float = 120.0) -> Iterator[str]:
    """``bentoml serve bento.service:MSJoE`` on a free 127.0.0.1 port; yields its base URL once
    ``/readyz`` answers 200, and stops the whole process group afterwards."""
    import httpx

    port = free_port()
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "bento.service:MSJoE", "--host", "127.0.0.1",
             "--port", str(port)],
            cwd=Path(__file__).resolve().parents[2], env={**os.environ, **env}, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            assert server.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{base}/readyz", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server not ready:\n" + log_path.read_text()[-3000:]
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
