"""Small building blocks shared by the networks (LDM conventions, so that official weights load as-is)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as _torch_checkpoint


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim), LDM convention: **cosines first, then sines**.

    ``freqs = exp(-ln(max_period) * arange(half) / half)`` with ``half = dim // 2``; odd ``dim`` is zero-padded.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def zero_module(module: nn.Module) -> nn.Module:
    """Zero all parameters of ``module`` (the zero-initialised last convs of LDM / SyncDreamer) and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back (LDM's ``GroupNorm32``; 32 groups, eps 1e-5 by default)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


def normalization(channels: int, groups: int = 32, eps: float = 1e-5) -> GroupNorm32:
    return GroupNorm32(groups, channels, eps=eps)


def maybe_checkpoint(fn, *args, enabled: bool = False):
    """Run ``fn(*args)`` through ``torch.utils.checkpoint`` (non-reentrant) when ``enabled`` and grads are on.

    Non-reentrant checkpointing works with frozen parameters (``requires_grad=False``), unlike LDM's custom
    checkpoint function, which is why the frozen base UNet can skip gradient computation entirely.
    """
    if enabled and torch.is_grad_enabled():
        return _torch_checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
