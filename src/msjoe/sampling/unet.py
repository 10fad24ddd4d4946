"""The MSJoE frame sampler: a 1-D U-Net over time that turns similarities into frame logits.

Input (docs/design.md section 1, step 4): the ``n_queries x T`` cosine matrix between the generated
queries and the candidate frames, padded to ``max_queries = 4`` rows, plus a frame-mask channel,
so ``(B, 5, T_pad)`` with ``T_pad`` a multiple of ``2**levels``. Output: one logit per frame;
a masked softmax gives the sampling distribution p over frames.

Design decisions (ours; the paper gives only "a lightweight 1-D U-Net, about 2M parameters"):

* **Padding invariance.** Videos in a batch have different T and different numbers of queries.
  Every layer re-applies the frame mask, GroupNorm statistics are computed over valid frames
  only (:class:`MaskedGroupNorm`), and downsampling keeps a coarse position valid when any of
  its fine positions is. A sequence's logits are therefore the same alone or batched with a
  longer one (up to float rounding), and padded frames get logit ``-inf`` (probability 0).
* **Row standardisation.** Each query row is z-scored over its valid frames before the
  network sees it: CLIP cosines live in a narrow, model-dependent band (about 0.15-0.35 for
  ViT-L/14), and the *shape* of the profile over time is what locates evidence. The same
  checkpoint thus behaves the same with the demo's tiny CLIP and the paper-scale one.
* **Missing queries.** A padded query row is all zeros in ``x`` (or flagged explicitly with
  ``query_mask``); inside the model it is replaced by a learned per-slot constant, so it can
  never be confused with a real, flat similarity row and its content cannot leak in.
* **Untrained behaviour.** The 1x1 head is zero-initialised and the logits add a learnable
  similarity prior, ``prior_scale * max_q z_q(t)``. A freshly initialised sampler therefore
  starts as a softmax over the standardised max-over-queries similarity (top-K at inference
  equals CLIP top-K on the reduced profile), a sensible "untrained MSJoE" baseline, and
  training only has to learn a correction. ``prior_scale = 0`` gives a uniform start instead.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class UNetConfig:
    """Shape of the sampler network.

    Attributes:
        levels: number of x2 downsamplings; inputs are padded to a multiple of ``2**levels``.
        base_channels: channels at full temporal resolution.
        channel_mult: channel multiplier per level (length ``levels``).
        kernel_size: temporal kernel of the convolutions (odd).
        dropout: dropout inside residual blocks (training only).
        max_queries: query rows the input is padded to (docs/design.md: 4).
        groups: GroupNorm groups (reduced where a layer has fewer channels).
        prior_scale: initial weight of the similarity prior added to the logits (learnable).
    """

    levels: int = 4
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    kernel_size: int = 5
    dropout: float = 0.0
    max_queries: int = 4
    groups: int = 8
    prior_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.levels < 1:
            raise ValueError(f"levels must be >= 1, got {self.levels}")
        if len(self.channel_mult) != self.levels:
            raise ValueError(
                f"channel_mult needs one entry per level ({self.levels}), got {self.channel_mult}"
            )
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if self.base_channels < 1 or min(self.channel_mult) < 1:
            raise ValueError("channel counts must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {self.max_queries}")

    @classmethod
    def tiny(cls) -> UNetConfig:
        """About 0.09M parameters: for the CPU demo and tests."""
        return cls(levels=3, base_channels=16, channel_mult=(1, 2, 2), kernel_size=5)

    @property
    def in_channels(self) -> int:
        """Query rows plus the frame-mask channel."""
        return self.max_queries + 1

    @property
    def multiple(self) -> int:
        """Inputs are padded to a multiple of this many frames."""
        return 2**self.levels


def padded_length(n_frames: int, levels: int) -> int:
    """Smallest multiple of ``2**levels`` that holds ``n_frames`` (at least one block)."""
    block = 2**levels
    return max(block, math.ceil(n_frames / block) * block)


def prepare_inputs(
    sims: Sequence[Tensor | np.ndarray], levels: int, max_queries: int = 4
) -> tuple[Tensor, Tensor]:
    """Batch similarity matrices of different lengths and query counts for the U-Net.

    Args:
        sims: one ``(n_q_i, T_i)`` (or ``(T_i,)``) similarity matrix per video/question.
        levels: the network's ``levels`` (sets the padding multiple).
        max_queries: rows to pad to; more rows than this is an error (the query turn caps them).

    Returns:
        ``x`` of shape ``(B, max_queries + 1, T_pad)`` (float32): rows ``0..n_q_i-1`` hold the
        similarities, missing rows and padded frames are zeros, the last channel is the
        frame mask (1 = real frame); and ``frame_mask`` ``(B, T_pad)`` (bool).
    """
    if len(sims) == 0:
        raise ValueError("prepare_inputs needs at least one similarity matrix")
    mats = [torch.as_tensor(s, dtype=torch.float32) for s in sims]
    mats = [m.unsqueeze(0) if m.dim() == 1 else m for m in mats]
    for i, m in enumerate(mats):
        if m.dim() != 2 or m.shape[0] < 1 or m.shape[1] < 1:
            raise ValueError(f"similarity {i} must have shape (n_queries, T), got {tuple(m.shape)}")
        if m.shape[0] > max_queries:
            raise ValueError(f"similarity {i} has {m.shape[0]} queries, more than {max_queries}")
        if not torch.isfinite(m).all():
            raise ValueError(f"similarity {i} contains NaN or infinite values")
    t_pad = padded_length(max(m.shape[1] for m in mats), levels)
    device = mats[0].device
    x = torch.zeros(len(mats), max_queries + 1, t_pad, dtype=torch.float32, device=device)
    frame_mask = torch.zeros(len(mats), t_pad, dtype=torch.bool, device=device)
    for b, m in enumerate(mats):
        n_q, t = m.shape
        x[b, :n_q, :t] = m.to(device)
        x[b, max_queries, :t] = 1.0
        frame_mask[b, :t] = True
    return x, frame_mask


def query_mask_from_inputs(x: Tensor, frame_mask: Tensor, max_queries: int) -> Tensor:
    """Infer which query rows are real: a padded row is exactly zero on every valid frame.

    Real CLIP cosine rows are never identically zero, so this flag is unambiguous for the
    output of :func:`prepare_inputs`; pass ``query_mask`` explicitly to :meth:`UNetSampler.forward`
    when it is not.
    """
    rows = x[:, :max_queries] * frame_mask[:, None, :].to(x.dtype)
    return rows.abs().amax(dim=-1) > 0


def _groups_for(channels: int, groups: int) -> int:
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


class MaskedGroupNorm(nn.Module):
    """GroupNorm whose statistics ignore padded frames (keeps batching padding-invariant)."""

    def __init__(self, channels: int, groups: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.groups = _groups_for(channels, groups)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x``: ``(B, C, T)``; ``mask``: ``(B, 1, T)`` float (1 = valid)."""
        b, c, t = x.shape
        xg = x.reshape(b, self.groups, c // self.groups, t)
        m = mask.reshape(b, 1, 1, t)
        count = (m.sum(dim=-1, keepdim=True) * (c // self.groups)).clamp_min(1.0)
        mean = (xg * m).sum(dim=(2, 3), keepdim=True) / count
        var = (((xg - mean) * m) ** 2).sum(dim=(2, 3), keepdim=True) / count
        xn = ((xg - mean) * torch.rsqrt(var + self.eps)).reshape(b, c, t)
        return (xn * self.weight[None, :, None] + self.bias[None, :, None]) * mask


class ResBlock(nn.Module):
    """Two (masked GroupNorm -> SiLU -> conv) layers with a residual connection."""

    def __init__(self, cin: int, cout: int, kernel_size: int, dropout: float, groups: int) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.norm1 = MaskedGroupNorm(cin, groups)
        self.conv1 = nn.Conv1d(cin, cout, kernel_size, padding=pad)
        self.norm2 = MaskedGroupNorm(cout, groups)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(cout, cout, kernel_size, padding=pad)
        self.skip: nn.Module = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x, mask))) * mask
        h = self.conv2(self.drop(F.silu(self.norm2(h, mask)))) * mask
        return (h + self.skip(x)) * mask


class UNetSampler(nn.Module):
    """1-D U-Net mapping padded similarities ``(B, 5, T_pad)`` to frame logits ``(B, T_pad)``.

    Encoder: per level a residual block then a stride-2 convolution; a residual bottleneck;
    decoder: nearest x2 upsampling + convolution, concatenation with the encoder skip, a
    residual block; a zero-initialised 1x1 head; plus the learnable similarity prior (module
    docstring). About 2M parameters with the default :class:`UNetConfig`.
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or UNetConfig()
        self.config = cfg
        k, g, p = cfg.kernel_size, cfg.groups, cfg.dropout
        chans = [cfg.base_channels * m for m in cfg.channel_mult]
        self.missing_query = nn.Parameter(torch.zeros(cfg.max_queries))
        # Shape (1,), not 0-dim: DeepSpeed's weight broadcast cannot send 0-dim tensors.
        self.prior_scale = nn.Parameter(torch.tensor([float(cfg.prior_scale)]))
        self.stem = nn.Conv1d(cfg.in_channels, chans[0], k, padding=k // 2)
        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        c_prev = chans[0]
        for c in chans:
            self.down_blocks.append(ResBlock(c_prev, c, k, p, g))
            self.downsamples.append(nn.Conv1d(c, c, 2, stride=2))
            c_prev = c
        self.mid = ResBlock(c_prev, c_prev, k, p, g)
        self.upsamples = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for c in reversed(chans):
            self.upsamples.append(nn.Conv1d(c_prev, c_prev, k, padding=k // 2))
            self.up_blocks.append(ResBlock(c_prev + c, c, k, p, g))
            c_prev = c
        self.head_norm = MaskedGroupNorm(c_prev, g)
        self.head = nn.Conv1d(c_prev, 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        """Accept checkpoints written when ``prior_scale`` was a 0-dim parameter."""
        key = prefix + "prior_scale"
        if key in state_dict and state_dict[key].dim() == 0:
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def num_parameters(self) -> int:
        """Trainable parameter count (the paper's sampler has about 2M)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def _standardise(self, x: Tensor, fmask: Tensor, query_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Z-score real query rows over valid frames; replace missing rows by learned constants.

        Returns the network input and the similarity prior ``max_q z_q`` (0 where no query).
        """
        q = self.config.max_queries
        m = fmask[:, None, :].to(x.dtype)  # (B, 1, T)
        rows = x[:, :q] * m
        count = m.sum(dim=-1, keepdim=True).clamp_min(1.0)
        mean = rows.sum(dim=-1, keepdim=True) / count
        var = (((rows - mean) * m) ** 2).sum(dim=-1, keepdim=True) / count
        z = (rows - mean) * torch.rsqrt(var + 1e-12) * (var > 1e-12)  # rsqrt: torch's own exact kernel; torch.sqrt is MKL's, CPU-vendor dependent
        qm = query_mask[:, :, None]
        z_in = torch.where(qm, z, self.missing_query[None, :, None].to(x.dtype)) * m
        prior = torch.where(qm, z, torch.full_like(z, -torch.inf)).amax(dim=1)
        prior = torch.where(torch.isfinite(prior), prior, torch.zeros_like(prior)) * m[:, 0]
        return torch.cat([z_in, m], dim=1), prior

    def forward(self, x: Tensor, frame_mask: Tensor, query_mask: Tensor | None = None) -> Tensor:
        """Per-frame logits ``(B, T_pad)``; padded frames get ``-inf``.

        Args:
            x: ``(B, max_queries + 1, T_pad)`` from :func:`prepare_inputs`.
            frame_mask: ``(B, T_pad)`` bool, True for real frames.
            query_mask: ``(B, max_queries)`` bool, True for real query rows; inferred from
                all-zero rows when omitted.
        """
        cfg = self.config
        if x.dim() != 3 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x must be (B, {cfg.in_channels}, T_pad), got {tuple(x.shape)}")
        if x.shape[-1] % cfg.multiple:
            raise ValueError(f"T_pad={x.shape[-1]} is not a multiple of {cfg.multiple}")
        if frame_mask.shape != (x.shape[0], x.shape[-1]):
            raise ValueError(
                f"frame_mask must be {(x.shape[0], x.shape[-1])}, got {tuple(frame_mask.shape)}"
            )
        fmask = frame_mask.bool()
        if query_mask is None:
            query_mask = query_mask_from_inputs(x, fmask, cfg.max_queries)
        h, prior = self._standardise(x, fmask, query_mask.bool())
        mask = fmask[:, None, :].to(h.dtype)
        h = self.stem(h) * mask
        skips: list[tuple[Tensor, Tensor]] = []
        for block, down in zip(self.down_blocks, self.downsamples):
            h = block(h, mask)
            skips.append((h, mask))
            mask = F.max_pool1d(mask, 2)
            h = down(h) * mask
        h = self.mid(h, mask)
        for up, block in zip(self.upsamples, self.up_blocks):
            skip, mask = skips.pop()
            h = up(F.interpolate(h, scale_factor=2, mode="nearest")) * mask
            h = block(torch.cat([h, skip], dim=1), mask)
        logits = self.head(F.silu(self.head_norm(h, mask)))[:, 0] + self.prior_scale * prior
        return logits.masked_fill(~fmask, -torch.inf)

    def log_probs(self, x: Tensor, frame_mask: Tensor, query_mask: Tensor | None = None) -> Tensor:
        """Masked log-softmax over frames ``(B, T_pad)``: padded frames have ``-inf`` (p = 0)."""
        return torch.log_softmax(self.forward(x, frame_mask, query_mask), dim=-1)


# --------------------------------------------------------------------------------------------
# the sampler's file format: the one place that builds, reads and writes a UNetSampler


def unet_config(spec: Any) -> UNetConfig:
    """A config from params: ``"tiny"``, ``"default"``/None, or a mapping of UNetConfig fields
    (YAML lists become the tuples the dataclass holds)."""
    if isinstance(spec, UNetConfig):
        return spec
    if spec == "tiny":
        return UNetConfig.tiny()
    if spec in (None, "default"):
        return UNetConfig()
    values = dict(spec)
    if "channel_mult" in values:
        values["channel_mult"] = tuple(values["channel_mult"])
    return UNetConfig(**values)


def new_unet(spec: Any = "tiny", seed: int = 0, checkpoint: str | Path | None = None) -> UNetSampler:
    """A sampler network, in training mode: freshly initialised from ``seed`` (without touching
    the global RNG) or loaded from ``checkpoint``.

    A checkpoint is the ``{"state_dict", "config"}`` dict :func:`save_unet` writes (its config
    wins over ``spec``) or a bare state dict, used with ``spec``.
    """
    state = None
    if checkpoint is not None:
        loaded = torch.load(Path(checkpoint), map_location="cpu", weights_only=True)
        if isinstance(loaded, dict) and "state_dict" in loaded:
            state = loaded["state_dict"]
            spec = loaded.get("config", spec)
        else:
            state = loaded
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNetSampler(unet_config(spec))
    if state is not None:
        model.load_state_dict(state)
    return model


def save_unet(path: Path, module: UNetSampler, state_dict: Mapping[str, Any] | None = None) -> Path:
    """Write ``{"state_dict", "config"}`` atomically (``state_dict`` defaults to the module's;
    pass a gathered one under ZeRO-3)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = dict(state_dict) if state_dict is not None else {k: v.detach().cpu() for k, v in module.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"state_dict": state, "config": asdict(module.config)}, tmp)
    os.replace(tmp, path)
    return path
