"""The Zero123 / LDM UNet with SyncDreamer's depth-wise attention blocks.

Written here (not taken from diffusers) because the depth-wise attention blocks are applied *between*
the LDM output blocks, and because keeping the LDM module layout (``input_blocks.1.1.transformer_blocks.0
.attn2.to_k``, ``middle_conditions.proj_out.5`` ...) lets the official ``syncdreamer-pretrain.ckpt`` and
``zero123-xl.ckpt`` load with no key mapping at all.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import SpatialTransformer
from .depth_attention import DepthTransformer
from .layers import maybe_checkpoint, normalization, timestep_embedding, zero_module


@dataclass
class UNetConfig:
    """Structural numbers of the UNet (official Zero123 / SyncDreamer defaults)."""

    in_channels: int = 8
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple = (4, 2, 1)
    num_heads: int = 8
    transformer_depth: int = 1
    context_dim: int = 768
    dropout: float = 0.0
    depth_attention: bool = True
    volume_dims: tuple = (64, 128, 256, 512)
    depth_attention_heads: int = 4
    depth_attention_blocks: tuple = (3, 4, 5, 6, 7, 8, 9, 10, 11)
    attention_backend: str = "sdpa"
    use_checkpoint: bool = False


class ResBlock(nn.Module):
    """LDM ResBlock: x (B, C, H, W), emb (B, E) -> (B, C_out, H, W)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 use_checkpoint: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(normalization(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        self.use_checkpoint = use_checkpoint

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb).type(x.dtype)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return maybe_checkpoint(self._forward, x, emb, enabled=self.use_checkpoint)


class Downsample(nn.Module):
    """Stride-2 3x3 conv (LDM name ``op``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2 then 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """A sequence of layers that take (x, emb, context) as they need."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class MultiviewUNet(nn.Module):
    """Zero123 UNet (LDM layout) + depth-wise attention after the middle block and chosen output blocks.

    forward(x (B, in_channels, h, w), timesteps (B,), context (B, L, context_dim),
    frustum {width: (B, C_w, D_w, w, w)}) -> eps (B, out_channels, h, w).

    The depth-attention block after a UNet block takes the frustum feature whose spatial width equals the
    block's output width; its context width is ``volume_dims[i]`` where ``i = log2(h / width)``. With
    ``depth_attention=False`` this is exactly the Zero123 UNet (the ``ablation_no_volume`` baseline).
    """

    def __init__(self, cfg: UNetConfig | None = None, **overrides):
        super().__init__()
        cfg = cfg or UNetConfig()
        if overrides:
            cfg = UNetConfig(**{**cfg.__dict__, **overrides})
        self.cfg = cfg
        mc, levels = cfg.model_channels, len(cfg.channel_mult)
        if cfg.depth_attention and len(cfg.volume_dims) != levels:
            raise ValueError(f"volume_dims needs one width per UNet level ({levels}), got {list(cfg.volume_dims)}")
        emb_dim = mc * 4
        ckpt, backend = cfg.use_checkpoint, cfg.attention_backend

        def transformer(ch):
            heads = cfg.num_heads
            return SpatialTransformer(ch, heads, ch // heads, cfg.transformer_depth, cfg.context_dim, cfg.dropout,
                                      backend, ckpt)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
        chans, ch, ds = [mc], mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(ch, emb_dim, mult * mc, cfg.dropout, ckpt)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != levels - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(ResBlock(ch, emb_dim, ch, cfg.dropout, ckpt), transformer(ch),
                                                    ResBlock(ch, emb_dim, ch, cfg.dropout, ckpt))
        mid_ch, mid_level = ch, levels - 1

        self.output_blocks = nn.ModuleList()
        block_levels, block_chans = [], []  # level of each output block's *output* resolution
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + chans.pop(), emb_dim, mc * mult, cfg.dropout, ckpt)]
                ch = mc * mult
                if ds in cfg.attention_resolutions:
                    layers.append(transformer(ch))
                out_level = level
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                    out_level = level - 1
                self.output_blocks.append(TimestepEmbedSequential(*layers))
                block_levels.append(out_level)
                block_chans.append(ch)
        self.out = nn.Sequential(normalization(ch), nn.SiLU(), zero_module(nn.Conv2d(mc, cfg.out_channels, 3, padding=1)))

        # depth-wise attention (SyncDreamer); names as in the official checkpoint
        self.output_b2c: dict[int, int] = {}
        if cfg.depth_attention:
            def depth_block(dim, level):
                ctx = cfg.volume_dims[level]
                depth_backend = "math" if backend == "math" else "sdpa"
                return DepthTransformer(dim, cfg.depth_attention_heads, ctx // 2, ctx, use_checkpoint=ckpt,
                                        backend=depth_backend)

            self.middle_conditions = depth_block(mid_ch, mid_level)
            self.output_conditions = nn.ModuleList()
            for index in cfg.depth_attention_blocks:
                if not 0 <= index < len(self.output_blocks):
                    raise ValueError(f"depth_attention_blocks: no output block {index}")
                self.output_b2c[index] = len(self.output_conditions)
                self.output_conditions.append(depth_block(block_chans[index], block_levels[index]))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                frustum: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.cfg.model_channels).to(x.dtype))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        use_depth = self.cfg.depth_attention and frustum is not None
        if use_depth:
            h = self.middle_conditions(h, frustum[h.shape[-1]])
        for index, block in enumerate(self.output_blocks):
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context)
            if use_depth and index in self.output_b2c:
                h = self.output_conditions[self.output_b2c[index]](h, frustum[h.shape[-1]])
        return self.out(h)

    def depth_attention_parameters(self):
        """Parameters of the SyncDreamer blocks (the only UNet parameters trained by the official recipe)."""
        if not self.cfg.depth_attention:
            return []
        return list(self.middle_conditions.parameters()) + list(self.output_conditions.parameters())
