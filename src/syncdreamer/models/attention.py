"""Attention for the Zero123/LDM UNet: ``CrossAttention``, GEGLU feed-forward, ``SpatialTransformer``.

Module and parameter names follow LDM (``to_q``, ``to_out.0``, ``ff.net.0.proj`` ...) so that official
checkpoints load without renaming. Attention runs through ``torch.nn.functional.scaled_dot_product_attention``
by default (flash / memory-efficient kernels on GPU); ``backend="xformers"`` uses xformers on CUDA when it
is installed, and ``backend="math"`` is the explicit softmax(QK^T)V reference.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import maybe_checkpoint, zero_module

BACKENDS = ("sdpa", "xformers", "math")


def _xformers_available() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except Exception:
        return False
    return True


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """Multi-head attention on (B, heads, L, d) tensors -> (B, heads, Lq, d), scale ``d ** -0.5``."""
    if backend == "xformers" and q.is_cuda and _xformers_available():
        import xformers.ops as xops

        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    if backend == "math":
        sim = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        return sim.softmax(dim=-1) @ v
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    return F.scaled_dot_product_attention(q, k, v)


class CrossAttention(nn.Module):
    """LDM ``CrossAttention``: x (B, L, query_dim), context (B, Lc, context_dim) -> (B, L, query_dim).

    With a single context token (Zero123's projected CLIP token) the attention weights are exactly 1, so the
    output is that token's value for every query; :attr:`single_token_shortcut` skips q and the attention then.
    """

    single_token_shortcut = True

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64,
                 dropout: float = 0.0, backend: str = "sdpa"):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads, self.backend = heads, backend
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, h = x.shape[0], self.heads
        if self.single_token_shortcut and context is not x and context.shape[1] == 1 and not self.training:
            # softmax over a single key is exactly 1: every query receives that token's value (the CLIP token
            # of Zero123/SyncDreamer), so q and the attention product are skipped. Inference only: in training
            # to_q / to_k take part in the graph (their gradient is zero, but DDP requires every trainable
            # parameter to be used), and dropout applies to the full path.
            out = self.to_out(self.to_v(context))
            return out.expand(b, x.shape[1], out.shape[-1])
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        q, k, v = (t.reshape(b, t.shape[1], h, -1).transpose(1, 2) for t in (q, k, v))
        out = attention(q, k, v, self.backend)
        return self.to_out(out.transpose(1, 2).reshape(b, x.shape[1], -1))


class GEGLU(nn.Module):
    """Linear(dim, 2*inner) split into (x, gate) -> x * gelu(gate) (exact erf GELU)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward, ``net = [GEGLU(dim, mult*dim), Dropout, Linear(mult*dim, dim)]``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention (to the CLIP token) and feed-forward, each pre-LayerNorm + residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, dropout: float = 0.0,
                 backend: str = "sdpa", use_checkpoint: bool = False):
        super().__init__()
        # definition order = official state-dict order
        self.attn1 = CrossAttention(dim, None, heads, dim_head, dropout, backend)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, dropout, backend)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.use_checkpoint = use_checkpoint

    def _forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return maybe_checkpoint(self._forward, x, context, enabled=self.use_checkpoint)


class SpatialTransformer(nn.Module):
    """LDM ``SpatialTransformer`` with 1x1-conv projections: x (B, C, H, W), context (B, L, context_dim)."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int = 1, context_dim: int = 768,
                 dropout: float = 0.0, backend: str = "sdpa", use_checkpoint: bool = False):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, context_dim, dropout, backend, use_checkpoint)
             for _ in range(depth)])
        self.proj_out = zero_module(nn.Conv2d(inner, channels, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.proj_in(self.norm(x))
        y = y.flatten(2).transpose(1, 2)  # B, HW, inner
        for block in self.transformer_blocks:
            y = block(y, context)
        y = y.transpose(1, 2).reshape(b, -1, h, w)
        return self.proj_out(y) + x
