"""SyncDreamer's depth-wise attention: each UNet pixel attends to the D depth samples of its own frustum ray."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import maybe_checkpoint, zero_module


class DepthAttention(nn.Module):
    """Per-pixel attention over depth.

    x (B, query_dim, H, W) and context (B, context_dim, D, H, W) -> (B, query_dim, H, W): for every pixel,
    softmax over the D samples of that pixel only, ``heads`` heads, scale ``dim_head ** -0.5``. q is a 1x1
    Conv2d, k/v are 1x1x1 Conv3d, the output a 1x1 Conv2d (all without bias). ``backend="sdpa"`` runs the
    per-pixel attention as one ``scaled_dot_product_attention`` call over (B*H*W, heads, 1 query, D keys);
    ``"math"`` is the explicit einsum/softmax reference.
    """

    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int, backend: str = "sdpa"):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head, self.scale, self.backend = heads, dim_head, dim_head ** -0.5, backend
        self.to_q = nn.Conv2d(query_dim, inner, 1, bias=False)
        self.to_k = nn.Conv3d(context_dim, inner, 1, bias=False)
        self.to_v = nn.Conv3d(context_dim, inner, 1, bias=False)
        self.to_out = nn.Conv2d(inner, query_dim, 1, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        d = context.shape[2]
        hn, hd = self.heads, self.dim_head
        q = self.to_q(x).reshape(b, hn, hd, h, w)
        k = self.to_k(context).reshape(b, hn, hd, d, h, w)
        v = self.to_v(context).reshape(b, hn, hd, d, h, w)
        if self.backend == "math":
            attn = (torch.einsum("bnchw,bncdhw->bndhw", q, k) * self.scale).softmax(dim=2)
            out = torch.einsum("bndhw,bncdhw->bnchw", attn, v)
            return self.to_out(out.reshape(b, hn * hd, h, w))
        q = q.permute(0, 3, 4, 1, 2).reshape(b * h * w, hn, 1, hd)
        k, v = (t.permute(0, 4, 5, 1, 3, 2).reshape(b * h * w, hn, d, hd) for t in (k, v))
        out = F.scaled_dot_product_attention(q, k, v)  # (b*h*w, hn, 1, hd)
        out = out.reshape(b, h, w, hn * hd).permute(0, 3, 1, 2)
        return self.to_out(out.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
            memory_format=torch.channels_last) else out.contiguous())


class DepthTransformer(nn.Module):
    """Residual depth-attention block inserted after UNet blocks: x (B, dim, H, W), ctx (B, C, D, H, W).

    ``proj_in`` = 1x1 conv + GN(8) + SiLU; ``proj_context`` = 1x1x1 conv (no bias) + GN(8) + ReLU;
    ``proj_out`` = GN + ReLU + 3x3 conv + GN + ReLU + zero-initialised 3x3 conv (inner -> dim), added to x.
    Because of the zero init, a freshly built block is the identity (the model equals Zero123 at step 0).
    """

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, groups: int = 8,
                 use_checkpoint: bool = False, backend: str = "sdpa"):
        super().__init__()
        inner = heads * dim_head
        self.proj_in = nn.Sequential(nn.Conv2d(dim, inner, 1), nn.GroupNorm(groups, inner), nn.SiLU())
        self.proj_context = nn.Sequential(nn.Conv3d(context_dim, context_dim, 1, bias=False),
                                          nn.GroupNorm(groups, context_dim), nn.ReLU())
        self.depth_attn = DepthAttention(inner, context_dim, heads, dim_head, backend)
        self.proj_out = nn.Sequential(
            nn.GroupNorm(groups, inner), nn.ReLU(), nn.Conv2d(inner, inner, 3, 1, 1, bias=False),
            nn.GroupNorm(groups, inner), nn.ReLU(), zero_module(nn.Conv2d(inner, dim, 3, 1, 1, bias=False)))
        self.use_checkpoint = use_checkpoint

    def _forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.depth_attn(self.proj_in(x), self.proj_context(context))
        return self.proj_out(h) + x

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return maybe_checkpoint(self._forward, x, context, enabled=self.use_checkpoint)
