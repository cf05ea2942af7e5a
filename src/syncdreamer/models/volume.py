"""SyncDreamer's 3D volumes: the spatial feature volume built from all noisy views and the per-view frustums.

Shapes: latents (B, N, 4, h, w); volumes (B, C, D, H, W). The spatial volume has V vertices per axis over
``[-L, L]^3`` (L = 0.5) with axes (D, H, W) = (z, y, x) so that ``grid_sample``'s (x, y, z) order addresses
it directly. Projection and un-projection follow the official arithmetic (K scaled to the latent size,
``P = [K_s @ pose; 0 0 0 1]``, normalisation ``u / ((w - 1) / 2) - 1`` with ``align_corners=True``),
which the golden tests pin down.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class VolumeConfig:
    """Structural numbers of the volume networks (official defaults; the tiny golden model uses dims 16..64)."""

    view_num: int = 16                   # N views of the target rig
    latent_channels: int = 4
    image_size: int = 256                # pixels of a view; latent_size = image_size / 8
    latent_size: int = 32
    volume_resolution: int = 32          # V
    volume_length: float = 0.5           # half side of the cube the volume spans
    frustum_depth: int = 48              # D
    frustum_length: float = 0.86603      # half depth range: near/far = origin_depth -+ this
    origin_depth: float = 1.5            # camera distance of the rig
    time_dim: int = 256
    view_dim: int = 4
    encoder_dim: int = 16                # NoisyTargetViewEncoder run/output width
    spatial_dims: tuple = (64, 128, 256, 512)
    frustum_dims: tuple = (64, 128, 256, 512)
    groups: int = 8

    def validate(self) -> None:
        levels = len(self.spatial_dims) - 1
        for name, size in (("volume_resolution", self.volume_resolution), ("frustum_depth", self.frustum_depth),
                           ("latent_size", self.latent_size)):
            if size % (2 ** levels):
                raise ValueError(f"{name}={size} must be divisible by {2 ** levels} (the 3D U-Nets downsample "
                                 f"{levels} times); pick e.g. {size - size % 2 ** levels or 2 ** levels}")
        if len(self.spatial_dims) != 4 or len(self.frustum_dims) != 4:
            raise ValueError("spatial_dims and frustum_dims need 4 widths (one per 3D U-Net level)")


def _gn(c: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, c)


class ViewTimeResBlock2D(nn.Module):
    """x (B, C, H, W) + conv1x1(t) + conv1x1(v) -> GN/SiLU/conv x2 -> residual. t (B, T, 1, 1), v (B, 4, 1, 1)."""

    def __init__(self, dim: int, time_dim: int, view_dim: int, groups: int = 8):
        super().__init__()
        self.time_embed = nn.Conv2d(time_dim, dim, 1)
        self.view_embed = nn.Conv2d(view_dim, dim, 1)
        self.conv = nn.Sequential(_gn(dim, groups), nn.SiLU(), nn.Conv2d(dim, dim, 3, 1, 1),
                                  _gn(dim, groups), nn.SiLU(), nn.Conv2d(dim, dim, 3, 1, 1))

    def forward(self, x, t, v):
        return x + self.conv(x + self.time_embed(t) + self.view_embed(v))


class NoisyTargetViewEncoder(nn.Module):
    """Encodes one noisy latent view: x (B, 4, h, w), t (B, T), v (B, 4) -> (B, out_dim, h, w)."""

    def __init__(self, time_dim: int, view_dim: int, in_dim: int = 4, run_dim: int = 16, out_dim: int = 16,
                 blocks: int = 3, groups: int = 8):
        super().__init__()
        self.init_conv = nn.Conv2d(in_dim, run_dim, 3, 1, 1)
        self.blocks = blocks
        for i in range(blocks):
            self.add_module(f"out_conv{i}", ViewTimeResBlock2D(run_dim, time_dim, view_dim, groups))
        self.final_out = nn.Sequential(_gn(run_dim, groups), nn.SiLU(), nn.Conv2d(run_dim, out_dim, 3, 1, 1))

    def forward(self, x, t, v):
        t, v = t[..., None, None], v[..., None, None]
        x = self.init_conv(x)
        for i in range(self.blocks):
            x = getattr(self, f"out_conv{i}")(x, t, v)
        return self.final_out(x)


class _Block3D(nn.Module):
    """(x + conv1x1(t) [+ conv1x1(v)]) -> GN -> SiLU -> conv3x3x3 (stride s) or transposed conv (x2 up)."""

    def __init__(self, in_dim: int, out_dim: int, time_dim: int, view_dim: int | None, stride: int = 1,
                 up: bool = False, groups: int = 8):
        super().__init__()
        self.t_conv = nn.Conv3d(time_dim, in_dim, 1)
        if view_dim is not None:
            self.v_conv = nn.Conv3d(view_dim, in_dim, 1)
        norm = _gn(in_dim, groups)
        if up:  # official names: `norm` in up blocks, `bn` in down blocks
            self.norm = norm
            self.conv = nn.ConvTranspose3d(in_dim, out_dim, 3, stride=2, padding=1, output_padding=1)
        else:
            self.bn = norm
            self.conv = nn.Conv3d(in_dim, out_dim, 3, stride=stride, padding=1)
        self.up = up

    def forward(self, x, t, v=None):
        x = x + self.t_conv(t)
        if v is not None:
            x = x + self.v_conv(v)
        return self.conv(F.silu(self.norm(x) if self.up else self.bn(x)))


def cpu_bf16_training(x: torch.Tensor) -> bool:
    """True when a 3D net's convs would run in bf16 on the CPU under autocast with a backward to follow: the 3D nets
    then run in float32 instead. oneDNN's bf16 Conv3d weight gradient is intermittently non-finite for small
    volumes (torch 2.14.1: 9 of 400 backward passes of a 48-channel conv on a (2, 48, 2, 2, 2) input, none in fp32;
    it stopped bf16-mixed CPU training with a NaN loss at random). Inference and GPUs keep bf16."""
    return (x.device.type == "cpu" and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16)


class SpatialTime3DNet(nn.Module):
    """3D U-Net on the spatial volume: x (B, in_dim, V, V, V), t (B, T) -> (B, dims[0], V, V, V)."""

    def __init__(self, in_dim: int, time_dim: int, dims=(64, 128, 256, 512), groups: int = 8):
        super().__init__()
        d0, d1, d2, d3 = dims
        blk = lambda i, o, s=1, up=False: _Block3D(i, o, time_dim, None, s, up, groups)  # noqa: E731
        self.init_conv = nn.Conv3d(in_dim, d0, 3, 1, 1)
        self.conv0 = blk(d0, d0)
        self.conv1, self.conv2_0, self.conv2_1 = blk(d0, d1, 2), blk(d1, d1), blk(d1, d1)
        self.conv3, self.conv4_0, self.conv4_1 = blk(d1, d2, 2), blk(d2, d2), blk(d2, d2)
        self.conv5, self.conv6_0, self.conv6_1 = blk(d2, d3, 2), blk(d3, d3), blk(d3, d3)
        self.conv7, self.conv8, self.conv9 = blk(d3, d2, up=True), blk(d2, d1, up=True), blk(d1, d0, up=True)

    def forward(self, x, t):
        if cpu_bf16_training(x):  # see cpu_bf16_training: float32 on the CPU when a bf16 backward follows
            with torch.autocast("cpu", enabled=False):
                return self._forward(x.float(), t.float())
        return self._forward(x, t)

    def _forward(self, x, t):
        t = t[..., None, None, None]
        c0 = self.conv0(self.init_conv(x), t)
        c2 = self.conv2_1(self.conv2_0(self.conv1(c0, t), t), t)
        c4 = self.conv4_1(self.conv4_0(self.conv3(c2, t), t), t)
        x = self.conv6_1(self.conv6_0(self.conv5(c4, t), t), t)
        x = c4 + self.conv7(x, t)
        x = c2 + self.conv8(x, t)
        return c0 + self.conv9(x, t)


class FrustumTV3DNet(nn.Module):
    """3D U-Net on a view frustum conditioned on time and the target view.

    x (B, in_dim, D, h, w), t (B, T), v (B, 4) -> {w: (B, d0, D, h, w), w/2: (B, d1, ...), w/4: ..., w/8: ...}
    (keyed by spatial width, the keys the UNet's depth attention looks up).
    """

    def __init__(self, in_dim: int, time_dim: int, view_dim: int, dims=(64, 128, 256, 512), groups: int = 8):
        super().__init__()
        d0, d1, d2, d3 = dims
        blk = lambda i, o, s=1, up=False: _Block3D(i, o, time_dim, view_dim, s, up, groups)  # noqa: E731
        self.conv0 = nn.Conv3d(in_dim, d0, 3, 1, 1)
        self.conv1, self.conv2 = blk(d0, d1, 2), blk(d1, d1)
        self.conv3, self.conv4 = blk(d1, d2, 2), blk(d2, d2)
        self.conv5, self.conv6 = blk(d2, d3, 2), blk(d3, d3)
        self.up0, self.up1, self.up2 = blk(d3, d2, up=True), blk(d2, d1, up=True), blk(d1, d0, up=True)

    def forward(self, x, t, v):
        if cpu_bf16_training(x):  # see cpu_bf16_training
            with torch.autocast("cpu", enabled=False):
                return self._forward(x.float(), t.float(), v.float())
        return self._forward(x, t, v)

    def _forward(self, x, t, v):
        t, v = t[..., None, None, None], v[..., None, None, None]
        w = x.shape[-1]
        x0 = self.conv0(x)
        x1 = self.conv2(self.conv1(x0, t, v), t, v)
        x2 = self.conv4(self.conv3(x1, t, v), t, v)
        x3 = self.conv6(self.conv5(x2, t, v), t, v)
        x2 = self.up0(x3, t, v) + x2
        x1 = self.up1(x2, t, v) + x1
        x0 = self.up2(x1, t, v) + x0
        return {w: x0, w // 2: x1, w // 4: x2, w // 8: x3}


def projection_matrices(Ks: torch.Tensor, poses: torch.Tensor, scale: float) -> torch.Tensor:
    """(N,3,3), (N,3,4) -> (N,4,4) ``[diag(s,s,1) @ K @ pose; 0 0 0 1]`` (K scaled to the latent size)."""
    S = torch.diag(torch.tensor([scale, scale, 1.0], dtype=Ks.dtype, device=Ks.device))
    P = (S @ Ks) @ poses
    bottom = torch.zeros(P.shape[0], 1, 4, dtype=P.dtype, device=P.device)
    bottom[:, :, 3] = 1.0
    return torch.cat([P, bottom], 1)


class SpatialVolumeNet(nn.Module):
    """Builds the shared spatial volume and the per-view frustum features.

    Holds ``target_encoder`` (NoisyTargetViewEncoder), ``spatial_volume_feats`` (SpatialTime3DNet) and
    ``frustum_volume_feats`` (FrustumTV3DNet) under their official names.
    """

    def __init__(self, cfg: VolumeConfig | None = None):
        super().__init__()
        cfg = cfg or VolumeConfig()
        cfg.validate()
        self.cfg = cfg
        self.target_encoder = NoisyTargetViewEncoder(cfg.time_dim, cfg.view_dim, cfg.latent_channels, cfg.encoder_dim,
                                                     cfg.encoder_dim, groups=cfg.groups)
        self.spatial_volume_feats = SpatialTime3DNet(cfg.encoder_dim * cfg.view_num, cfg.time_dim, cfg.spatial_dims,
                                                     cfg.groups)
        self.frustum_volume_feats = FrustumTV3DNet(cfg.spatial_dims[0], cfg.time_dim, cfg.view_dim, cfg.frustum_dims,
                                                   cfg.groups)

    # ---- geometry -------------------------------------------------------------------------------------------
    def volume_vertices(self, device, dtype=torch.float32) -> torch.Tensor:
        """World xyz of the V^3 vertices, (3, V, V, V) with vertex [i, j, k] at (lin[k], lin[j], lin[i])."""
        V, L = self.cfg.volume_resolution, self.cfg.volume_length
        lin = torch.linspace(-L, L, V, dtype=dtype, device=device)
        zz, yy, xx = torch.meshgrid(lin, lin, lin, indexing="ij")
        return torch.stack([xx, yy, zz], 0)

    def frustum_points(self, poses: torch.Tensor, Ks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World xyz (M, 3, D, h, w) and camera-z depth (M, 1, D, h, w) of each target camera's frustum samples."""
        cfg = self.cfg
        M, D, h = poses.shape[0], cfg.frustum_depth, cfg.latent_size
        dev, dt = poses.device, poses.dtype
        near, far = cfg.origin_depth - cfg.frustum_length, cfg.origin_depth + cfg.frustum_length
        depth = torch.linspace(0, 1, D, dtype=dt, device=dev).view(1, D, 1) * (far - near) + near  # 1, D, 1
        depth = depth.expand(M, D, h * h)
        ys, xs = torch.meshgrid(torch.arange(h, dtype=dt, device=dev), torch.arange(h, dtype=dt, device=dev),
                                indexing="ij")
        pix = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones(h * h, dtype=dt, device=dev)], 0)  # 3, hw
        pts = pix[None, :, None, :] * depth[:, None]  # M, 3, D, hw
        P_inv = torch.inverse(projection_matrices(Ks, poses, cfg.latent_size / cfg.image_size))
        xyz = P_inv[:, :3, :3] @ pts.reshape(M, 3, -1) + P_inv[:, :3, 3:]
        return xyz.reshape(M, 3, D, h, h), depth.reshape(M, 1, D, h, h)

    # ---- volumes --------------------------------------------------------------------------------------------
    def construct_spatial_volume(self, x: torch.Tensor, t_embed: torch.Tensor, v_embed: torch.Tensor,
                                 poses: torch.Tensor, Ks: torch.Tensor) -> torch.Tensor:
        """x (B, N, 4, h, w) noisy latents of all views, t_embed (B, T), v_embed (B, N, 4), poses (N, 3, 4),
        Ks (N, 3, 3) -> spatial volume (B, spatial_dims[0], V, V, V)."""
        B, N, C, h, w = x.shape
        if N != self.cfg.view_num:
            raise ValueError(f"spatial volume expects {self.cfg.view_num} views, got {N}")
        V = self.cfg.volume_resolution
        feats = self.target_encoder(x.reshape(B * N, C, h, w), t_embed.repeat_interleave(N, 0),
                                    v_embed.reshape(B * N, -1))  # B*N, Ce, h, w
        Ce = feats.shape[1]
        verts = self.volume_vertices(x.device, x.dtype).reshape(3, -1)  # 3, V^3
        P = projection_matrices(Ks, poses, w / self.cfg.image_size)  # N, 4, 4
        cam = P[:, :3, :3] @ verts + P[:, :3, 3:]  # N, 3, V^3
        z = cam[:, 2:].clamp(min=1e-4)
        uv = cam[:, :2] / z
        uv = uv / ((w - 1) / 2) - 1  # align_corners=True normalisation (w == h)
        grid = uv.permute(0, 2, 1).reshape(1, N, V, V * V, 2).expand(B, -1, -1, -1, -1).reshape(B * N, V, V * V, 2)
        sampled = F.grid_sample(feats.float(), grid.float(), mode="bilinear", padding_mode="zeros",
                                align_corners=True).to(feats.dtype)  # sampling positions stay float32
        volume = sampled.reshape(B, N * Ce, V, V, V)  # channel = view * Ce + c
        return self.spatial_volume_feats(volume, t_embed)

    def construct_view_frustum_volume(self, spatial_volume: torch.Tensor, t_embed: torch.Tensor,
                                      v_embed: torch.Tensor, poses: torch.Tensor, Ks: torch.Tensor,
                                      target_indices: torch.Tensor) -> dict[int, torch.Tensor]:
        """Frustum features of the target views.

        spatial_volume (B, C, V, V, V), t_embed (B, T), v_embed (B, N, 4), poses (N, 3, 4), Ks (N, 3, 3),
        target_indices (B, TN) -> {width: (B*TN, C_w, D_w, width, width)}.
        """
        B, TN = target_indices.shape
        xyz, _ = self.frustum_points(poses[target_indices.reshape(-1)], Ks[target_indices.reshape(-1)])
        grid = (xyz / self.cfg.volume_length).permute(0, 2, 3, 4, 1)  # B*TN, D, h, w, 3
        D, h, w = grid.shape[1:4]
        # one grid_sample per object over all its target frustums stacked along depth (no volume copies)
        grid = grid.reshape(B, TN * D, h, w, 3).to(torch.float32)
        feats = F.grid_sample(spatial_volume.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        C = feats.shape[1]
        feats = feats.reshape(B, C, TN, D, h, w).transpose(1, 2).reshape(B * TN, C, D, h, w).to(spatial_volume.dtype)
        v = v_embed[torch.arange(B, device=v_embed.device)[:, None], target_indices].reshape(B * TN, -1)
        return self.frustum_volume_feats(feats, t_embed.repeat_interleave(TN, 0), v)
