"""Latency and throughput of the BentoML service: first question on a video vs a repeated video,
throughput at several concurrencies (ratios against concurrency 1, measured in the same run),
and a burst beyond the queue bound.

The server is either one already running on this machine (``--url``, 127.0.0.1/localhost only)
or a ``bentoml serve bento.service:MSJoE`` started here on a free 127.0.0.1 port and stopped
at the end. The started server loads ``--model-tag`` from ``$BENTOML_HOME``; with
``--clip-dir``/``--mllm-dir`` (pipeline outputs, e.g. ``models/clip``, ``models/mllm``) a
release is first imported into a temporary BentoML home; with neither, and no ``msjoe`` model
in the store, a random demo-size release (tiny CLIP + tiny Qwen2.5-VL, untrained) is built.
Videos and questions come from a freshly generated demo world (never the repository's data).

Phases:

1. **first vs repeat**: for each of ``--videos`` distinct videos, one question (cold: probe,
   decode, CLIP features) then another question on the same bytes (warm: content-hash hit).
2. **load**: for each concurrency in ``--concurrency`` (default ``1,8,32``), ``--requests``
   uploads (repeated videos, so features are cached, plus ``--fresh`` never-seen videos) with
   that many in flight, bounded by ``--max-seconds``; reports completed count, errors by
   status, p50/p95/max latency, throughput and its ratio to the first concurrency.
3. **burst** (``--burst N``, default twice the server's queue bound): N uploads at once. Every
   reply must be 200 or a refusal with a retry hint (503 + ``Retry-After`` from the queue bound,
   429 from BentoML's concurrency cap); anything else, or a timeout, is an error.

Run from the repository root, on the demo release the pipeline trained::

    .venv/bin/python benchmarks/serve_load.py --clip-dir models/clip --mllm-dir models/joint \
        --sampler-ckpt models/joint/sampler.pt [--concurrency 1,8,32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
MAX_REQUESTS, MAX_CONCURRENCY, MAX_SECONDS, MAX_BURST = 1000, 64, 900, 512


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running server on this machine, e.g. http://127.0.0.1:3000")
    p.add_argument("--model-tag", default="msjoe:latest")
    p.add_argument("--clip-dir", type=Path)
    p.add_argument("--mllm-dir", type=Path)
    p.add_argument("--sampler-ckpt", type=Path)
    p.add_argument("--videos", type=int, default=4, help="distinct videos for first-vs-repeat")
    p.add_argument("--fresh", type=int, default=4, help="never-seen videos mixed into the load phase")
    p.add_argument("--requests", type=int, default=96, help="uploads per concurrency level")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrency levels")
    p.add_argument("--burst", type=int, help="simultaneous uploads of the burst (default: 2 x the queue bound)")
    p.add_argument("--budget", type=int, default=8)
    p.add_argument("--max-seconds", type=float, default=300.0, help="wall-clock bound of the load phase")
    p.add_argument("--threads", type=int, default=2, help="OMP/torch threads of a started server (per worker)")
    p.add_argument("--workers", type=int, default=1, help="MSJOE_WORKERS of a started server (processes)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    try:
        args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    except ValueError:
        p.error("--concurrency must be comma-separated integers, e.g. 1,8,32")
    if not 1 <= args.requests <= MAX_REQUESTS or not args.concurrency or not all(
            1 <= c <= MAX_CONCURRENCY for c in args.concurrency):
        p.error(f"--requests must be 1..{MAX_REQUESTS}, each --concurrency 1..{MAX_CONCURRENCY}")
    if args.burst is not None and not 1 <= args.burst <= MAX_BURST:
        p.error(f"--burst must be 1..{MAX_BURST}")
    if not 0 < args.max_seconds <= MAX_SECONDS or args.videos < 1 or args.fresh < 0:
        p.error(f"--max-seconds must be in (0, {MAX_SECONDS}], --videos >= 1, --fresh >= 0")
    if args.url and urlparse(args.url).hostname not in LOCAL_HOSTS:
        p.error("--url must point at this machine (127.0.0.1 / localhost)")
    return args


# ------------------------------------------------------------------ release + server


def build_random_release(root: Path) -> tuple[Path, Path]:
    """Demo-size CLIP and Qwen2.5-VL with random weights (no pipeline outputs needed)."""
    import shutil

    import torch

    from msjoe.clip.manifest import ClipManifest, identity_for, write_manifest
    from msjoe.clip.model import CONFIG_DIR, create_clip
    from msjoe.mllm.build import TinyMLLMConfig, build_tiny_mllm
    from msjoe.mllm.manifest import MLLMManifest
    from msjoe.mllm.manifest import write_manifest as write_mllm_manifest
    from msjoe.world.vocab import COLOURS, SHAPES, describe

    clip_dir = root / "clip"
    clip_dir.mkdir(parents=True)
    torch.manual_seed(0)
    model, _, _ = create_clip("msjoe-tiny-clip")
    torch.save(model.state_dict(), clip_dir / "clip.pt")
    shutil.copyfile(CONFIG_DIR / "msjoe-tiny-clip.json", clip_dir / "msjoe-tiny-clip.json")
    write_manifest(clip_dir, ClipManifest("msjoe-tiny-clip", "clip.pt", "msjoe-tiny-clip.json",
                                          identity_for("msjoe-tiny-clip", "clip.pt", clip_dir / "clip.pt")))
    mllm_dir = root / "mllm"
    corpus = [describe(s, c) for s in SHAPES for c in COLOURS] + ["What colour was the star?"]
    build_tiny_mllm(mllm_dir / "model", corpus, TinyMLLMConfig(), seed=0)
    write_mllm_manifest(mllm_dir, MLLMManifest("model", "random-demo"))
    return clip_dir, mllm_dir


def prepare_home(args: argparse.Namespace, scratch: Path) -> tuple[dict[str, str], str]:
    """BENTOML_HOME and model tag for a started server; imports a release when asked/needed."""
    env = dict(os.environ)
    if args.clip_dir is None and args.mllm_dir is None and has_model(args.model_tag):
        return env, args.model_tag
    home = scratch / "bentoml_home"
    (home / "models").mkdir(parents=True)
    env["BENTOML_HOME"] = str(home)
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    from msjoe.serving import import_release

    BentoMLContainer.model_store.set(ModelStore(str(home / "models")))  # import into the temporary home

    if args.clip_dir is not None and args.mllm_dir is not None:
        clip_dir, mllm_dir, ckpt = args.clip_dir, args.mllm_dir, args.sampler_ckpt
        note = "given models"
    else:
        clip_dir, mllm_dir = build_random_release(scratch / "models")
        ckpt, note = None, "random demo-size models"
    cfg = {"default_budget": args.budget, "limits": {"max_budget": max(64, args.budget)}}
    tag = import_release(clip_dir, mllm_dir, ckpt, cfg, labels={"source": "serve_load"})
    print(f"imported release {tag} ({note}) into {home}", flush=True)
    return env, tag


def has_model(tag: str) -> bool:
    import bentoml

    try:
        bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(env: dict[str, str], tag: str, scratch: Path, threads: int,
                 workers: int) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    env = {**env, "MSJOE_MODEL_TAG": tag, "MSJOE_CACHE_DIR": str(scratch / "cache"), "MSJOE_WORKERS": str(workers),
           "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "BENTOML_DO_NOT_TRACK": "True"}
    log = scratch / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "bento.service:MSJoE", "--host", "127.0.0.1",
             "--port", str(port)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return proc, f"http://127.0.0.1:{port}", log


def wait_ready(url: str, proc: subprocess.Popen | None, log: Path | None, timeout: float = 300.0) -> float:
    import httpx

    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-3000:] if log else ''}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready in {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# ------------------------------------------------------------------ workload


def demo_questions(root: Path, n_videos: int) -> list[dict[str, Any]]:
    """One question per video of a fresh demo world (params.yaml's demo video size)."""
    from msjoe.world import WorldConfig, generate_world

    generate_world(WorldConfig(seed=7, videos={"bench": n_videos}), root, progress=False)
    rows = [json.loads(line) for line in (root / "qa.jsonl").read_text().splitlines() if line.strip()]
    first: dict[str, dict[str, Any]] = {}
    for row in rows:
        first.setdefault(row["video"], {**row, "bytes": (root / row["video"]).read_bytes()})
    return list(first.values())[:n_videos]


def ask(client: Any, item: dict[str, Any], budget: int) -> tuple[float, int, dict[str, Any] | None]:
    """One upload: (client latency s, HTTP status or 0 for a transport error, JSON reply; a
    refusal's reply also carries its ``Retry-After`` header as ``_retry_after``)."""
    import httpx

    form = {"question": item["question"], "options": json.dumps(item["options"]), "budget": str(budget)}
    started = time.perf_counter()
    try:
        response = client.post("/answer", data=form, files={"video": ("video.mp4", item["bytes"], "video/mp4")})
    except httpx.HTTPError:
        return time.perf_counter() - started, 0, None
    elapsed = time.perf_counter() - started
    try:
        body = response.json()
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else None
    if body is not None and response.status_code != 200:
        body["_retry_after"] = response.headers.get("retry-after")
    return elapsed, response.status_code, body


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def first_vs_repeat(client: Any, items: list[dict[str, Any]], budget: int) -> dict[str, Any]:
    rows = []
    for item in items:
        cold = ask(client, item, budget)
        warm = ask(client, item, budget)
        for kind, (latency, status, body) in (("first", cold), ("repeat", warm)):
            timings = (body or {}).get("timings", {})
            rows.append({"kind": kind, "latency_s": latency, "status": status,
                         "cached": (body or {}).get("features_cached"),
                         "check_s": timings.get("check"), "features_s": timings.get("features"),
                         "answer_s": timings.get("answer"), "total_s": timings.get("total")})
    out: dict[str, Any] = {"rows": rows}
    for kind in ("first", "repeat"):
        sel = [r for r in rows if r["kind"] == kind and r["status"] == 200]
        out[kind] = {
            "n": len(sel),
            "latency_p50_s": pct([r["latency_s"] for r in sel], 50),
            "check_p50_s": pct([r["check_s"] for r in sel], 50),
            "features_p50_s": pct([r["features_s"] for r in sel], 50),
            "cached": sorted({bool(r["cached"]) for r in sel}),
        }
    return out


def load(client: Any, warm: list[dict[str, Any]], fresh: list[dict[str, Any]], n: int, concurrency: int,
         budget: int, max_seconds: float) -> dict[str, Any]:
    # fresh (never seen) videos spread through the run; the rest repeat warm videos
    plan = [warm[i % len(warm)] for i in range(n)]
    for j, item in enumerate(fresh[:n]):
        plan[(j * n) // max(1, len(fresh))] = item
    results: list[tuple[float, int, dict[str, Any] | None]] = []
    started = time.perf_counter()
    pending: set[Future] = set()
    next_index = 0
    with ThreadPoolExecutor(concurrency) as pool:
        while next_index < len(plan) or pending:
            while next_index < len(plan) and len(pending) < concurrency and time.perf_counter() - started < max_seconds:
                pending.add(pool.submit(ask, client, plan[next_index], budget))
                next_index += 1
            if not pending:
                break
            done, pending = wait(pending, timeout=max(0.1, max_seconds - (time.perf_counter() - started)),
                                 return_when=FIRST_COMPLETED)
            results += [f.result() for f in done]
            if time.perf_counter() - started > max_seconds + 120:  # hard stop: stragglers are errors
                break
    wall = time.perf_counter() - started
    ok = [r[0] for r in results if r[1] == 200]
    errors: dict[str, int] = {}
    for _, status, _ in results:
        if status != 200:
            errors[str(status)] = errors.get(str(status), 0) + 1
    return {
        "planned": len(plan), "sent": next_index, "completed": len(results), "ok": len(ok),
        "errors": errors, "concurrency": concurrency, "fresh_videos": min(len(fresh), n),
        "wall_s": wall, "throughput_rps": len(ok) / wall if wall > 0 else float("nan"),
        "latency_p50_s": pct(ok, 50), "latency_p95_s": pct(ok, 95),
        "latency_max_s": max(ok) if ok else float("nan"),
        "cached_replies": sum(1 for r in results if r[2] and r[2].get("features_cached")),
    }


def burst(client: Any, items: list[dict[str, Any]], n: int, budget: int) -> dict[str, Any]:
    """``n`` uploads released at once (a barrier): 200s, refusals with a retry hint, errors."""
    import threading

    gate = threading.Barrier(n)

    def one(i: int) -> tuple[float, int, dict[str, Any] | None]:
        gate.wait()
        return ask(client, items[i % len(items)], budget)

    started = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    statuses: dict[str, int] = {}
    for _, status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    refused = [r for r in results if r[1] in (429, 503)]
    with_hint = sum(1 for r in refused if r[1] == 429 or (r[2] or {}).get("_retry_after"))
    errors = sum(1 for r in results if r[1] not in (200, 429, 503))
    return {"sent": n, "statuses": statuses, "refused": len(refused), "refused_with_retry_after": with_hint,
            "errors": errors, "wall_s": time.perf_counter() - started,
            "refusal_latency_max_s": max((r[0] for r in refused), default=float("nan"))}


def main() -> None:
    import httpx

    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    with tempfile.TemporaryDirectory(prefix="msjoe-serve-load-") as tmp:
        scratch = Path(tmp)
        items = demo_questions(scratch / "world", args.videos + args.fresh)
        warm, fresh = items[: args.videos], items[args.videos :]
        proc = log = None
        url = args.url
        if url is None:
            env, tag = prepare_home(args, scratch)
            proc, url, log = start_server(env, tag, scratch, args.threads, args.workers)
        try:
            ready = wait_ready(url, proc, log)
            print(f"server {url} ready after {ready:.1f} s", flush=True)
            connections = max(max(args.concurrency), args.burst or 2 * MAX_BURST) + 2
            with httpx.Client(base_url=url, timeout=httpx.Timeout(600.0, connect=10.0),
                              limits=httpx.Limits(max_connections=connections)) as client:
                health = client.get("/health").json()
                repeat = first_vs_repeat(client, warm, args.budget)
                levels = []
                for concurrency in args.concurrency:
                    levels.append(load(client, warm, fresh, args.requests, concurrency, args.budget,
                                       args.max_seconds))
                    print(f"concurrency {concurrency}: {levels[-1]['throughput_rps']:.2f} req/s", flush=True)
                queue_bound = int(health.get("batching", {}).get("max_queue", 64))
                n_burst = args.burst or 2 * queue_bound
                burst_result = burst(client, warm, n_burst, args.budget)
                after = client.get("/health").json()
        finally:
            if proc is not None:
                stop_server(proc)
    result = {"url": url, "model": health.get("model"), "device": health.get("device"),
              "server_ready_s": ready, "budget": args.budget, "first_vs_repeat": repeat, "load": levels,
              "burst": {**burst_result, "queue_bound": queue_bound}, "batching": health.get("batching"),
              "server_counters": after.get("requests"), "args": {k: str(v) for k, v in vars(args).items()}}
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")


def report(result: dict[str, Any]) -> None:
    fr = result["first_vs_repeat"]
    print(f"\nmodel {result['model']} on {result['device']}, budget {result['budget']}")
    print(f"{'':8s} {'n':>3s} {'latency p50':>12s} {'check p50':>10s} {'features p50':>13s}  cached")
    for kind in ("first", "repeat"):
        row = fr[kind]
        print(f"{kind:8s} {row['n']:3d} {row['latency_p50_s']:11.3f}s {row['check_p50_s']:9.3f}s "
              f"{row['features_p50_s']:12.3f}s  {row['cached']}")
    levels = result["load"]
    base = levels[0]["throughput_rps"]
    print(f"\nload ({levels[0]['planned']} uploads per level; batching {result['batching']}):")
    print(f"{'concurrency':>11s} {'ok':>5s} {'errors':>12s} {'p50':>8s} {'p95':>8s} {'req/s':>7s} "
          f"{'ratio':>6s}")
    for ld in levels:
        print(f"{ld['concurrency']:11d} {ld['ok']:5d} {str(ld['errors'] or 'none'):>12s} {ld['latency_p50_s']:7.3f}s "
              f"{ld['latency_p95_s']:7.3f}s {ld['throughput_rps']:7.2f} {ld['throughput_rps'] / base:5.2f}x")
    bu = result["burst"]
    print(f"\nburst of {bu['sent']} at once (queue bound {bu['queue_bound']}): statuses {bu['statuses']}, "
          f"{bu['refused']} refused ({bu['refused_with_retry_after']} with a retry hint), {bu['errors']} errors, "
          f"slowest refusal {bu['refusal_latency_max_s']:.3f} s")
    print(f"server counters: {result['server_counters']}")


if __name__ == "__main__":
    main()
