"""Checkpoints: a resumed run equals an uninterrupted one (weights, optimiser, scheduler, RNG)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from msjoe.rl.checkpoint import (
    discard_other_runs,
    latest_checkpoint,
    load_latest,
    read_meta,
    run_fingerprint,
    save_checkpoint,
    step_dirname,
)
from tests.launcher import clear_launcher_env

REPO = Path(__file__).resolve().parents[2]


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_step(step_fn, model: nn.Module) -> None:
    """One update on data drawn from all three global RNGs (and dropout's torch RNG)."""
    x = torch.randn(8, 4) + float(np.random.rand()) + random.random()
    y = torch.randn(8, 2)
    model.train()
    step_fn((model(x) - y).pow(2).mean())


def rng_probe() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def build_plain(seed: int):
    model = net(seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + s))

    def step(loss: torch.Tensor) -> None:
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()

    return model, opt, sched, step


def test_plain_resume_equals_straight_run(tmp_path: Path) -> None:
    n, k = 6, 3
    seed_all(0)
    model, _, sched, step = build_plain(0)
    for _ in range(n):
        train_step(step, model)
    straight, straight_lr, straight_rng = model.state_dict(), sched.get_last_lr(), rng_probe()

    seed_all(0)
    model, opt, sched, step = build_plain(0)
    for _ in range(k):
        train_step(step, model)
    save_checkpoint(
        tmp_path, k, {"policy": model}, {"policy": opt}, {"policy": sched}, extra={"seen": [1, 2]}
    )

    seed_all(123)  # a fresh process: different init, different RNG position
    model, opt, sched, step = build_plain(99)
    assert load_latest(tmp_path, {"policy": model}, {"policy": opt}, {"policy": sched}) == k
    for _ in range(n - k):
        train_step(step, model)
    for name, value in model.state_dict().items():
        assert torch.equal(value, straight[name]), name
    assert sched.get_last_lr() == straight_lr
    assert rng_probe() == straight_rng
    assert read_meta(latest_checkpoint(tmp_path))["extra"] == {"seen": [1, 2]}


def test_layout_pointer_pruning_and_replacing(tmp_path: Path) -> None:
    model = net(0)
    for step in (1, 2, 3, 4):
        path = save_checkpoint(tmp_path, step, {"m": model}, keep=2, extra={"step": step})
        assert path == tmp_path / step_dirname(step)
        assert (tmp_path / "latest").read_text().strip() == step_dirname(step)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000003", "step_000004"]
    meta = read_meta(tmp_path / "step_000004")
    assert meta["step"] == 4 and meta["models"] == {"m": "module"} and meta["rng"] is True
    assert "saved_at" not in meta  # no wall clock: checkpoint directories are hashed DVC outputs
    assert (tmp_path / "step_000004" / "rng" / "rank_00000.pt").is_file()

    with torch.no_grad():
        model[0].weight.add_(1.0)
    save_checkpoint(tmp_path, 4, {"m": model}, keep=2)  # re-saving a step replaces it
    fresh = net(1)
    assert load_latest(tmp_path, {"m": fresh}) == 4
    assert torch.equal(fresh[0].weight, model[0].weight)


def test_fingerprints_tell_runs_apart_and_foreign_checkpoints_are_discarded(tmp_path: Path) -> None:
    run = run_fingerprint({"lr": 0.1, "steps": 3}, {"mllm": "model@sha256:aa"})
    assert run == run_fingerprint({"steps": 3, "lr": 0.1}, {"mllm": "model@sha256:aa"})  # order-free
    assert run != run_fingerprint({"lr": 0.2, "steps": 3}, {"mllm": "model@sha256:aa"})
    assert run != run_fingerprint({"lr": 0.1, "steps": 3}, {"mllm": "model@sha256:bb"})

    other = run_fingerprint({"lr": 0.2}, {})
    for step in (1, 2):
        save_checkpoint(tmp_path, step, {"m": net(0)}, rng=False, extra={"run": other})
    assert discard_other_runs(tmp_path, other) == 0 and latest_checkpoint(tmp_path) is not None
    assert discard_other_runs(tmp_path, run) == 2
    assert latest_checkpoint(tmp_path) is None and not (tmp_path / "latest").exists()
    assert load_latest(tmp_path, {"m": net(1)}) is None
    save_checkpoint(tmp_path, 1, {"m": net(0)}, rng=False)  # no fingerprint recorded: foreign too
    assert discard_other_runs(tmp_path, run) == 1


def test_crash_leftovers_fall_back_to_newest_complete(tmp_path: Path) -> None:
    assert load_latest(tmp_path / "missing", {"m": net(0)}) is None
    assert latest_checkpoint(tmp_path) is None
    good = net(0)
    save_checkpoint(tmp_path, 5, {"m": good}, rng=False)
    # a save killed half-way: a temporary directory and a step directory without meta.json
    (tmp_path / ".tmp-step_000006" / "models").mkdir(parents=True)
    (tmp_path / "step_000007").mkdir()
    (tmp_path / "latest").write_text("step_000007\n")  # dangling pointer
    assert latest_checkpoint(tmp_path) == tmp_path / "step_000005"
    fresh = net(1)
    assert load_latest(tmp_path, {"m": fresh}) == 5
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), good.parameters()))
    save_checkpoint(tmp_path, 8, {"m": good}, rng=False)
    assert not (tmp_path / ".tmp-step_000006").exists(), "stale temporary directory cleared"


def test_mismatched_or_bad_arguments_are_errors(tmp_path: Path) -> None:
    model = net(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(tmp_path, 1, {"m": model}, {"m": opt})
    with pytest.raises(ValueError, match="saved models"):
        load_latest(tmp_path, {"other": net(0)}, {"m": opt})
    with pytest.raises(ValueError, match="saved optimizers"):
        load_latest(tmp_path, {"m": net(0)})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, 2, {"m": model}, extra={"bad": object()})
    assert latest_checkpoint(tmp_path) == tmp_path / "step_000001", "nothing written on error"
    with pytest.raises(ValueError, match="name"):
        save_checkpoint(tmp_path, 2, {"../x": model})
    with pytest.raises(ValueError, match="keep"):
        save_checkpoint(tmp_path, 2, {"m": model}, keep=0)


# ----------------------------------------------------------------------------- DeepSpeed


@pytest.fixture(scope="module")
def ds_process() -> Iterator[None]:
    """Single-process CPU DeepSpeed world; environment restored afterwards.

    The process group stays up for the session (DeepSpeed caches its groups globally).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        clear_launcher_env(mp)
        if torch.cuda.is_available():
            mp.setenv("DS_ACCELERATOR", "cpu")
        yield
    torch.set_num_threads(threads)


def build_engines(seed: int):
    """Two engines as in joint RL: a policy (ZeRO-2, AdamW, scheduler), the sampler (ZeRO-1)."""
    from msjoe.rl.engine import build_engine, load_ds_config
    from msjoe.sampling.unet import UNetConfig, UNetSampler

    policy = net(seed)
    opt = torch.optim.AdamW(policy.parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + s))
    torch.manual_seed(seed + 1)
    sampler = UNetSampler(UNetConfig.tiny())
    overrides = {"gradient_clipping": 1.0}
    engines = {
        "policy": build_engine(
            policy, opt, load_ds_config(REPO / "infra/deepspeed/zero2.json", overrides), sched
        ),
        "sampler": build_engine(
            sampler,
            torch.optim.Adam(sampler.parameters(), lr=0.01),
            load_ds_config(REPO / "infra/deepspeed/zero1.json", overrides),
        ),
    }
    return engines


def engine_round(engines) -> None:
    from msjoe.sampling.unet import prepare_inputs

    def step(engine):
        return lambda loss: (engine.backward(loss), engine.step())

    train_step(step(engines["policy"]), engines["policy"])
    sims = [0.2 + 0.05 * torch.randn(2, 37), 0.2 + 0.05 * torch.randn(4, 21)]
    x, mask = prepare_inputs(sims, levels=3)
    sampler = engines["sampler"]
    logp = torch.log_softmax(sampler(x, mask), dim=-1)
    picks = torch.stack([torch.randperm(21)[:3] for _ in range(2)])
    loss = -(torch.randn(2) * logp.gather(1, picks).sum(1)).mean()
    sampler.backward(loss)
    sampler.step()


def engine_state(engines) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{k}": v.detach().clone()
        for name, engine in engines.items()
        for k, v in engine.module.state_dict().items()
    }


def test_deepspeed_resume_equals_straight_run(ds_process: None, tmp_path: Path) -> None:
    n, k = 4, 2
    seed_all(0)
    engines = build_engines(0)
    for _ in range(n):
        engine_round(engines)
    straight = engine_state(engines)
    straight_lr = engines["policy"].get_lr()
    straight_rng = rng_probe()

    seed_all(0)
    engines = build_engines(0)
    for _ in range(k):
        engine_round(engines)
    save_checkpoint(tmp_path, k, engines, extra={"round": k})
    saved = tmp_path / step_dirname(k)
    assert json.loads((saved / "meta.json").read_text())["models"] == {
        "policy": "engine",
        "sampler": "engine",
    }
    assert (saved / "engines" / "policy" / "state").is_dir()

    seed_all(7)
    engines = build_engines(50)
    assert load_latest(tmp_path, engines) == k
    assert engines["policy"].global_steps == k
    for _ in range(n - k):
        engine_round(engines)
    resumed = engine_state(engines)
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, atol=1e-7, rtol=0, msg=name)
    assert engines["policy"].get_lr() == straight_lr
    assert rng_probe() == straight_rng

    with pytest.raises(ValueError, match="belongs to a DeepSpeed engine"):
        save_checkpoint(tmp_path, 9, engines, {"policy": engines["policy"].optimizer})


def _two_rank_worker(rank: int, world: int, port: int, outdir: str) -> None:
    """One rank of a 2-process CPU (gloo) run: broadcast, ZeRO-partitioned save, load."""
    import os

    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        DS_ACCELERATOR="cpu",
    )
    torch.set_num_threads(1)
    from msjoe.rl.engine import build_engine, load_ds_config
    from msjoe.sampling.unet import UNetConfig, UNetSampler

    def engines_for(seed: int) -> dict:
        torch.manual_seed(seed)  # a different initialisation on every rank
        sampler = UNetSampler(UNetConfig.tiny())
        with torch.no_grad():
            sampler.prior_scale.fill_(1.0 + seed)  # the 0-dim parameter differs too
        policy = net(seed)
        cfg = {"gradient_clipping": 1.0}
        return {
            "policy": build_engine(
                policy,
                torch.optim.AdamW(policy.parameters(), lr=0.02),
                load_ds_config(REPO / "infra/deepspeed/zero2.json", cfg),
                skip_shm_op=True,
            ),
            "sampler": build_engine(
                sampler,
                torch.optim.Adam(sampler.parameters(), lr=0.01),
                load_ds_config(REPO / "infra/deepspeed/zero1.json", cfg),
                skip_shm_op=True,
            ),
        }

    engines = engines_for(100 + rank)
    initial = engine_state(engines)
    seed_all(rank)  # each rank sees different data; DeepSpeed averages the gradients
    for _ in range(2):
        engine_round(engines)
    save_checkpoint(Path(outdir) / "ckpt", 2, engines)
    trained = engine_state(engines)
    probe = rng_probe()

    seed_all(1000 + rank)
    engines = engines_for(200 + rank)
    assert load_latest(Path(outdir) / "ckpt", engines) == 2
    restored = engine_state(engines)
    resumed_probe = rng_probe()
    engine_round(engines)  # training goes on after a resume
    torch.save(
        {
            "initial": initial,
            "trained": trained,
            "restored": restored,
            "probe": probe,
            "resumed_probe": resumed_probe,
            "continued": engine_state(engines),
        },
        Path(outdir) / f"rank{rank}.pt",
    )


@pytest.mark.slow
def test_two_process_run_broadcasts_saves_and_resumes(tmp_path: Path) -> None:
    """Two gloo ranks: rank 0's weights reach rank 1 (0-dim ones included), ZeRO-partitioned
    checkpoints save and load collectively, and each rank's RNG stream resumes on its own."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_two_rank_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in ("initial", "trained", "restored", "continued"):
        for name, value in r0[key].items():
            assert torch.equal(value, r1[key][name]), f"{key}: {name} differs between ranks"
    assert r1["initial"]["sampler.prior_scale"].item() == 101.0  # rank 0's value
    for r in (r0, r1):
        for name, value in r["trained"].items():
            assert torch.equal(r["restored"][name], value), name
        assert r["resumed_probe"] == r["probe"]
    assert r0["probe"] != r1["probe"], "each rank keeps its own RNG stream"
    assert sorted(p.name for p in (tmp_path / "ckpt" / "step_000002" / "rng").iterdir()) == [
        "rank_00000.pt",
        "rank_00001.pt",
    ]
