"""DeepSpeed engines on one CPU process: config resolution, exact steps, accumulation, two
engines in one process."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from msjoe.optim import adamw
from msjoe.rl.engine import AUTO_DEFAULTS, build_engine, ensure_distributed_env, load_ds_config
from tests.launcher import clear_launcher_env

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "infra" / "deepspeed"


@pytest.fixture(scope="module")
def ds_process() -> Iterator[None]:
    """A single-process CPU DeepSpeed world for this module, torn down afterwards.

    The launcher variables are cleared first (so :func:`build_engine` has to fill them) and
    restored at the end. The process group itself stays up for the rest of the session, as in
    a training process: DeepSpeed caches its groups globally and cannot start over after
    ``destroy_process_group``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        clear_launcher_env(mp)
        if torch.cuda.is_available():  # keep this CPU test on the CPU even on a GPU machine
            mp.setenv("DS_ACCELERATOR", "cpu")
        yield
    torch.set_num_threads(threads)


def mlp(seed: int, width: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, 2))


def batch(seed: int, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=gen), torch.randn(n, 2, generator=gen)


def mse(model: nn.Module, xy: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = xy
    return (model(x) - y).pow(2).mean()


def params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def cfg(stage: int, **overrides: object) -> dict:
    base = {"gradient_clipping": 0.0}  # no clipping unless a test asks for it
    base.update(overrides)
    return load_ds_config(CONFIGS / f"zero{stage}.json", base)


# ----------------------------------------------------------------------------- config (no DS)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_shipped_configs_resolve_for_cpu_and_cuda(stage: int) -> None:
    raw = json.loads((CONFIGS / f"zero{stage}.json").read_text())
    assert raw["zero_optimization"]["stage"] == stage
    assert "optimizer" not in raw, "a config-declared optimizer would build DeepSpeed's C++ Adam"
    assert raw["bf16"]["enabled"] == "auto"
    cpu = load_ds_config(CONFIGS / f"zero{stage}.json", cuda=False)
    gpu = load_ds_config(CONFIGS / f"zero{stage}.json", cuda=True)
    assert cpu["bf16"]["enabled"] is False and gpu["bf16"]["enabled"] is True
    for key, value in AUTO_DEFAULTS.items():
        assert cpu[key] == value
    assert "train_batch_size" not in cpu
    assert raw == json.loads((CONFIGS / f"zero{stage}.json").read_text())  # file untouched


def test_overrides_dotted_nested_and_explicit_bf16_off_on_cpu() -> None:
    src = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "bf16": {"enabled": True},
        "zero_optimization": {"stage": 2, "overlap_comm": True},
    }
    out = load_ds_config(
        src,
        {
            "train_micro_batch_size_per_gpu": 3,
            "zero_optimization.stage": 1,
            "zero_optimization": {"overlap_comm": False},
        },
        cuda=False,
    )
    assert out["train_micro_batch_size_per_gpu"] == 3
    assert out["gradient_accumulation_steps"] == 1
    assert out["zero_optimization"] == {"stage": 1, "overlap_comm": False}
    assert out["bf16"]["enabled"] is False
    assert "train_batch_size" not in out
    assert src["bf16"]["enabled"] is True and src["train_batch_size"] == "auto"  # input copied


def test_unresolved_auto_and_bad_values_are_errors() -> None:
    with pytest.raises(ValueError, match="zero_optimization.reduce_bucket_size"):
        load_ds_config({"zero_optimization": {"reduce_bucket_size": "auto"}}, cuda=False)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        load_ds_config({"gradient_accumulation_steps": 0}, cuda=False)


def test_ensure_distributed_env_fills_only_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_launcher_env(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "1")
    changed = ensure_distributed_env()
    assert "WORLD_SIZE" not in changed
    assert os.environ["RANK"] == "0" and os.environ["LOCAL_RANK"] == "0"
    assert 0 < int(os.environ["MASTER_PORT"]) < 65536
    if not torch.cuda.is_available():
        assert os.environ["DS_ACCELERATOR"] == "cpu"
    assert ensure_distributed_env() == {}  # idempotent: a launcher's values are kept


# ----------------------------------------------------------------------------- engines


@pytest.mark.parametrize("stage", [1, 2])
def test_sgd_step_moves_params_against_the_gradient(ds_process: None, stage: int) -> None:
    lr = 0.1
    model, ref = mlp(0), mlp(0)
    before = params(ref)
    mse(ref, batch(1)).backward()
    grads = [p.grad.clone() for p in ref.parameters()]

    engine = build_engine(model, torch.optim.SGD(model.parameters(), lr=lr), cfg(stage))
    assert engine.zero_optimization_stage() == stage
    loss = mse(engine, batch(1))
    engine.backward(loss)
    engine.step()
    for b, g, a in zip(before, grads, engine.module.parameters()):
        torch.testing.assert_close(a.detach() - b, -lr * g, atol=1e-6, rtol=1e-5)
    assert engine.global_steps == 1


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_adam_steps_match_plain_torch(ds_process: None, stage: int) -> None:
    import deepspeed

    model, ref = mlp(1), mlp(1)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.05)
    engine = build_engine(model, torch.optim.Adam(model.parameters(), lr=0.05), cfg(stage))
    for step in range(3):
        ref_opt.zero_grad()
        mse(ref, batch(10 + step)).backward()
        ref_opt.step()
        engine.backward(mse(engine, batch(10 + step)))
        engine.step()
    trained = list(engine.module.parameters())
    # ZeRO-3 partitions the parameters themselves: gather them to compare (no-op otherwise)
    with deepspeed.zero.GatheredParameters(trained, enabled=stage == 3):
        moved = [not torch.equal(a, b) for a, b in zip(params(mlp(1)), trained)]
        assert all(moved)
        for a, b in zip(ref.parameters(), trained):
            torch.testing.assert_close(b.detach(), a.detach(), atol=1e-6, rtol=1e-5)


def test_gradient_clipping_from_config(ds_process: None) -> None:
    lr, clip = 1.0, 1e-3
    model = mlp(2)
    before = params(model)
    engine = build_engine(
        model, torch.optim.SGD(model.parameters(), lr=lr), cfg(1, gradient_clipping=clip)
    )
    engine.backward(mse(engine, batch(3)))
    engine.step()
    after = engine.module.parameters()
    update = torch.cat([(a.detach() - b).flatten() for a, b in zip(after, before)])
    assert update.norm().item() == pytest.approx(lr * clip, rel=1e-3)


def test_clipping_norm_is_a_correctly_rounded_square_root(ds_process: None) -> None:
    """DeepSpeed takes the global gradient norm as ``pow(1 / 2)`` of the summed squares; on the
    CPU that is MKL's approximation-based sqrt (about 16 % of its results off by an ulp, which
    ones depending on the CPU vendor), unless the step runs under ``ExactSqrt``."""
    import numpy as np

    model, ref = mlp(4), mlp(4)
    engine = build_engine(model, torch.optim.SGD(model.parameters(), lr=0.0), cfg(1, gradient_clipping=1e-3))
    for seed in range(100):  # 100 norms: an approximate sqrt would miss some (0.84**100 < 1e-7)
        ref.zero_grad()
        mse(ref, batch(100 + seed)).backward()
        squares = torch.stack([torch.linalg.vector_norm(p.grad.double(), 2) for p in ref.parameters()])
        total = squares.pow(2).sum().float()  # DeepSpeed's sum of squares (ZeRO-1/2, fp64 norms)
        engine.backward(mse(engine, batch(100 + seed)))
        engine.step()
        assert engine.get_global_grad_norm() == float(np.sqrt(total.numpy())), seed


def test_gradient_accumulation_boundary(ds_process: None) -> None:
    lr = 0.1
    model, ref = mlp(3), mlp(3)
    before = params(ref)
    # reference: the mean of the two micro-batch losses, one SGD step
    (0.5 * (mse(ref, batch(20)) + mse(ref, batch(21)))).backward()
    expected = [b - lr * p.grad for b, p in zip(before, ref.parameters())]

    engine = build_engine(
        model,
        torch.optim.SGD(model.parameters(), lr=lr),
        cfg(2, gradient_accumulation_steps=2, train_micro_batch_size_per_gpu=6),
    )
    assert engine.gradient_accumulation_steps() == 2
    assert engine.train_batch_size() == 12
    assert not engine.is_gradient_accumulation_boundary()
    engine.backward(mse(engine, batch(20)))
    engine.step()
    for a, b in zip(engine.module.parameters(), before):
        assert torch.equal(a.detach(), b), "no update before the boundary"
    assert engine.global_steps == 0
    assert engine.is_gradient_accumulation_boundary()
    engine.backward(mse(engine, batch(21)))
    engine.step()
    assert engine.global_steps == 1
    for a, e in zip(engine.module.parameters(), expected):
        torch.testing.assert_close(a.detach(), e, atol=1e-6, rtol=1e-5)


def test_two_engines_in_one_process_mllm_and_sampler(ds_process: None) -> None:
    """The joint-RL setting: a policy engine and a sampler engine step independently."""
    from msjoe.rl.grpo import reinforce_loss
    from msjoe.sampling.unet import UNetConfig, UNetSampler, prepare_inputs

    torch.manual_seed(5)
    sampler = UNetSampler(UNetConfig.tiny())
    sampler_ref = copy.deepcopy(sampler)
    policy, policy_ref = mlp(6), mlp(6)

    gen = torch.Generator().manual_seed(7)
    sims = [0.2 + 0.05 * torch.randn(n, t, generator=gen) for n, t in ((2, 40), (3, 29))]
    x, frame_mask = prepare_inputs(sims, levels=sampler.config.levels)
    picks = torch.tensor([[3, 17], [5, 11]])
    adv = torch.tensor([1.0, -0.5])

    def sampler_loss(net: nn.Module) -> torch.Tensor:
        logp = torch.log_softmax(net(x, frame_mask), dim=-1)
        return reinforce_loss(logp.gather(1, picks).sum(1), adv)

    policy_engine = build_engine(policy, adamw(policy.parameters(), lr=0.01), cfg(2))
    sampler_engine = build_engine(sampler, adamw(sampler.parameters(), lr=0.01), cfg(1))
    assert policy_engine is not sampler_engine

    opt_p = adamw(policy_ref.parameters(), lr=0.01)
    opt_s = adamw(sampler_ref.parameters(), lr=0.01)
    for step in range(2):
        policy_engine.backward(mse(policy_engine, batch(30 + step)))
        policy_engine.step()
        sampler_engine.backward(sampler_loss(sampler_engine))
        sampler_engine.step()
        for opt, net, loss_fn in (
            (opt_p, policy_ref, lambda n: mse(n, batch(30 + step))),
            (opt_s, sampler_ref, sampler_loss),
        ):
            opt.zero_grad()
            loss_fn(net).backward()
            opt.step()

    for ref, engine in ((policy_ref, policy_engine), (sampler_ref, sampler_engine)):
        assert engine.global_steps == 2
        for a, b in zip(ref.parameters(), engine.module.parameters()):
            torch.testing.assert_close(b.detach(), a.detach(), atol=1e-5, rtol=1e-4)
    head_before = UNetSampler(UNetConfig.tiny()).head.weight  # zero-initialised
    assert not torch.equal(sampler_engine.module.head.weight.detach(), head_before)


def test_single_process_skips_shm_build_and_undoes_its_patches(ds_process: None) -> None:
    import sys

    from deepspeed.runtime.engine import DeepSpeedEngine

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 1))
    model.register_parameter("scale", nn.Parameter(torch.tensor(2.0)))  # 0-dim
    engine = build_engine(model, torch.optim.SGD(model.parameters(), lr=0.1), cfg(1))
    assert engine.module.scale.shape == ()  # shape unchanged by the broadcast workaround
    assert sys.modules["deepspeed.comm.comm"].cdb.shm_comm_op is None  # no 27 s JIT build
    assert sys.modules["deepspeed.comm.torch"].build_shm_op.__name__ == "build_shm_op"
    assert DeepSpeedEngine._broadcast_model.__qualname__ == "DeepSpeedEngine._broadcast_model"
