"""NeuS volume rendering (Wang et al. 2021) with hierarchical up-sampling and an optional occupancy grid.

Per ray: near/far from a bounding sphere (tightened to the occupied span of the occupancy grid when one is
used); ``n_samples`` stratified samples; ``up_sample_steps`` rounds that each add
``n_importance / up_sample_steps`` samples drawn from the NeuS weights at a fixed sharpness
``64 * 2^i``; then the final NeuS pass: section mid-points, SDF + gradient, the cos-annealed estimate of
the SDF at both section ends, ``alpha = (Phi(s f_prev) - Phi(s f_next)) / Phi(s f_prev)`` clipped to
[0, 1], zero outside the cube ``|x| <= bound``, and compositing on a constant background (white).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = ["RendererConfig", "OccupancyGrid", "NeuSRenderer", "sample_pdf", "sphere_near_far"]


@dataclass
class RendererConfig:
    """Sampling and compositing settings (official NeuS: 64 + 64 samples, 4 rounds, sphere sqrt(3)/2)."""

    n_samples: int = 64
    n_importance: int = 64
    up_sample_steps: int = 4
    up_sample_base_s: float = 64.0
    perturb: bool = True
    sphere_radius: float = 0.8660254
    bound: float = 0.6
    background: float = 1.0
    point_chunk: int | None = None  # points per no-grad SDF query while up-sampling (None = all at once)


def sphere_near_far(rays_o: torch.Tensor, rays_d: torch.Tensor, radius: float):
    """Ray/sphere intersection (sphere at the origin). rays (R, 3), unit dirs -> near, far (R,), hit (R,).

    Rays that miss get ``near = far = 0`` and ``hit = False``; near is clamped at 0 (camera inside)."""
    b = (rays_o * rays_d).sum(-1)
    c = (rays_o * rays_o).sum(-1) - radius ** 2
    disc = b * b - c
    hit = disc > 0
    sq = disc.clamp(min=0).sqrt()
    near = (-b - sq).clamp(min=0)
    far = (-b + sq).clamp(min=0)
    hit = hit & (far > near)
    return torch.where(hit, near, 0), torch.where(hit, far, 0), hit


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n: int, deterministic: bool = True) -> torch.Tensor:
    """Inverse-transform sampling of ``n`` points per ray from a piecewise-constant pdf.

    bins (R, B+1) sorted edges, weights (R, B) >= 0 -> samples (R, n) inside the bins."""
    w = weights + 1e-5
    pdf = w / w.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), pdf.cumsum(-1)], -1)  # (R, B+1)
    if deterministic:
        u = torch.linspace(0.5 / n, 1 - 0.5 / n, n, device=bins.device, dtype=bins.dtype).expand(len(bins), n)
    else:
        u = torch.rand(len(bins), n, device=bins.device, dtype=bins.dtype)
    u = u.contiguous()
    idx = torch.searchsorted(cdf, u, right=True)
    lo = (idx - 1).clamp(0, cdf.shape[-1] - 1)
    hi = idx.clamp(0, cdf.shape[-1] - 1)
    c_lo, c_hi = cdf.gather(1, lo), cdf.gather(1, hi)
    b_lo, b_hi = bins.gather(1, lo), bins.gather(1, hi)
    denom = torch.where(c_hi - c_lo < 1e-5, torch.ones_like(c_lo), c_hi - c_lo)
    return b_lo + (u - c_lo) / denom * (b_hi - b_lo)


class OccupancyGrid(nn.Module):
    """Boolean grid (G^3 over ``[-bound, bound]^3``) of cells that may hold the surface or the inside.

    ``update`` marks a cell occupied when the SDF at a jittered point in it is below
    ``margin = max(cell diagonal, margin_scale / inv_s)``; ``near_far`` tightens each ray's interval to
    the span of occupied cells it crosses (empty space is skipped; rays crossing none are empty).
    """

    def __init__(self, resolution: int = 64, bound: float = 0.6, march_samples: int = 256,
                 margin_scale: float = 4.0):
        super().__init__()
        self.resolution, self.bound = resolution, bound
        self.march_samples, self.margin_scale = march_samples, margin_scale
        self.register_buffer("grid", torch.ones((resolution,) * 3, dtype=torch.bool))

    @torch.no_grad()
    def update(self, sdf_fn, inv_s: float, chunk: int = 65536):
        """Re-evaluate the grid with ``sdf_fn`` (P, 3) -> (P,)."""
        g = self.resolution
        cell = 2 * self.bound / g
        idx = torch.stack(torch.meshgrid(*(torch.arange(g, device=self.grid.device),) * 3, indexing="ij"), -1)
        pts = (idx.reshape(-1, 3).float() + torch.rand(g ** 3, 3, device=self.grid.device)) * cell - self.bound
        sdf = torch.cat([sdf_fn(p) for p in pts.split(chunk)])
        margin = max(cell * 3 ** 0.5, self.margin_scale / float(inv_s))
        self.grid.copy_((sdf < margin).reshape(g, g, g))

    def occupied(self, pts: torch.Tensor) -> torch.Tensor:
        """Occupancy (...,) of points (..., 3); points outside the grid are empty."""
        g = self.resolution
        i = ((pts + self.bound) / (2 * self.bound) * g).floor().long()
        inside = ((i >= 0) & (i < g)).all(-1)
        i = i.clamp(0, g - 1)
        return self.grid[i[..., 0], i[..., 1], i[..., 2]] & inside

    @torch.no_grad()
    def near_far(self, rays_o, rays_d, near, far):
        """Tighten near/far (R,) to the occupied span; returns near, far, valid (R,)."""
        m = self.march_samples
        t = torch.linspace(0, 1, m, device=near.device)
        z = near[:, None] + (far - near)[:, None] * t[None]
        occ = self.occupied(rays_o[:, None] + rays_d[:, None] * z[..., None])  # (R, m)
        valid = occ.any(-1)
        ar = torch.arange(m, device=near.device)
        first = torch.where(occ, ar, m).min(-1).values.clamp(max=m - 1)
        last = torch.where(occ, ar, -1).max(-1).values.clamp(min=0)
        step = (far - near) / (m - 1)
        cell = 2 * self.bound / self.resolution
        pad = step + cell
        n2 = torch.maximum(near, z.gather(1, first[:, None])[:, 0] - pad)
        f2 = torch.minimum(far, z.gather(1, last[:, None])[:, 0] + pad)
        return torch.where(valid, n2, near), torch.where(valid, f2, far), valid


class NeuSRenderer(nn.Module):
    """Renders rays through an SDF field + colour network + variance (see module docstring).

    Args:
        sdf_net: field with ``sdf(x)`` and ``sdf_and_gradient(x, create_graph)``.
        color_net: ``(x, normal, view_dir, feature) -> rgb``.
        variance: :class:`~syncdreamer.recon.fields.SingleVariance`.
        cfg: :class:`RendererConfig`.
        occupancy: optional :class:`OccupancyGrid` to skip empty space.
    """

    def __init__(self, sdf_net, color_net, variance, cfg: RendererConfig, occupancy: OccupancyGrid | None = None):
        super().__init__()
        self.sdf_net, self.color_net, self.variance = sdf_net, color_net, variance
        self.cfg = cfg
        self.occupancy = occupancy

    def _inside(self, pts):
        return (pts.abs() <= self.cfg.bound).all(-1)

    @torch.no_grad()
    def _up_sample(self, rays_o, rays_d, z, sdf, n_new, inv_s):
        """New samples (R, n_new) from NeuS weights at fixed sharpness ``inv_s`` of sorted z/sdf (R, S)."""
        pts = rays_o[:, None] + rays_d[:, None] * z[..., None]
        inside = self._inside(pts)
        inside = (inside[:, :-1] | inside[:, 1:]).float()
        prev_sdf, next_sdf = sdf[:, :-1], sdf[:, 1:]
        prev_z, next_z = z[:, :-1], z[:, 1:]
        mid = 0.5 * (prev_sdf + next_sdf)
        cos = (next_sdf - prev_sdf) / (next_z - prev_z + 1e-5)
        cos = torch.minimum(torch.cat([torch.zeros_like(cos[:, :1]), cos[:, :-1]], -1), cos)
        cos = cos.clamp(-1e3, 0.0) * inside
        half = 0.5 * cos * (next_z - prev_z)
        prev_cdf = torch.sigmoid((mid - half) * inv_s)
        next_cdf = torch.sigmoid((mid + half) * inv_s)
        alpha = ((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)).clamp(0, 1)
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha + 1e-7], -1), -1)[:, :-1]
        return sample_pdf(z, alpha * trans, n_new, deterministic=True)

    @torch.no_grad()
    def _sdf_pts(self, pts):
        """SDF (...,) at points (..., 3), ``cfg.point_chunk`` points at a time (bounded memory)."""
        shape = pts.shape[:-1]
        flat = pts.reshape(-1, 3)
        chunk = int(self.cfg.point_chunk or len(flat) or 1)
        return torch.cat([self.sdf_net.sdf(p) for p in flat.split(chunk)]).reshape(shape)

    def _ray_intervals(self, rays_o, rays_d):
        """near, far (R,) and the rays that cross the sphere (and occupied cells) ``hit`` (R,)."""
        near, far, hit = sphere_near_far(rays_o, rays_d, self.cfg.sphere_radius)
        if self.occupancy is not None:
            near, far, valid = self.occupancy.near_far(rays_o, rays_d, near, far)
            hit = hit & valid
        return near, far, hit

    def _coarse_samples(self, near, far, training: bool):
        """Stratified sample distances (n, n_samples) in [near, far], jittered while training."""
        cfg = self.cfg
        n = len(near)
        t = torch.linspace(0.0, 1.0, cfg.n_samples, device=near.device)
        z = near[:, None] + (far - near)[:, None] * t[None]
        if training and cfg.perturb:
            step = (far - near)[:, None] / cfg.n_samples
            z = z + (torch.rand(n, cfg.n_samples, device=near.device) - 0.5) * step
            z = torch.minimum(torch.maximum(z, near[:, None]), far[:, None]).sort(-1).values
        return z

    @torch.no_grad()
    def _hierarchical_samples(self, o, d, z):
        """``up_sample_steps`` rounds that add ``n_importance / up_sample_steps`` samples each; sorted (n, S)."""
        cfg = self.cfg
        if cfg.n_importance <= 0 or cfg.up_sample_steps <= 0:
            return z
        per = cfg.n_importance // cfg.up_sample_steps
        sdf = self._sdf_pts(o[:, None] + d[:, None] * z[..., None])
        for i in range(cfg.up_sample_steps):
            new = self._up_sample(o, d, z, sdf, per, cfg.up_sample_base_s * 2 ** i)
            z, order = torch.cat([z, new], -1).sort(-1)
            if i + 1 < cfg.up_sample_steps:
                new_sdf = self._sdf_pts(o[:, None] + d[:, None] * new[..., None])
                sdf = torch.cat([sdf, new_sdf], -1).gather(1, order)
        return z

    def _shade_sections(self, o, d, z, near, far, cos_anneal_ratio: float, training: bool) -> dict:
        """The final NeuS pass on sections [z_i, z_{i+1}] evaluated at their mid-points (n rays)."""
        cfg = self.cfg
        n = len(o)
        dists = torch.cat([z[:, 1:] - z[:, :-1], ((far - near) / cfg.n_samples)[:, None]], -1)
        mid_z = z + 0.5 * dists
        pts = o[:, None] + d[:, None] * mid_z[..., None]  # (n, S, 3)
        s = pts.shape[1]
        dirs = d[:, None].expand(n, s, 3).reshape(-1, 3)
        sdf, feat, grad = self.sdf_net.sdf_and_gradient(pts.reshape(-1, 3), create_graph=training)
        rgb = self.color_net(pts.reshape(-1, 3), grad, dirs, feat).reshape(n, s, 3)
        inv_s = self.variance.inv_s()
        true_cos = (dirs * grad).sum(-1)
        a = float(cos_anneal_ratio)
        iter_cos = -(torch.relu(-true_cos * 0.5 + 0.5) * (1.0 - a) + torch.relu(-true_cos) * a)
        half = 0.5 * iter_cos * dists.reshape(-1)
        prev_cdf = torch.sigmoid((sdf - half) * inv_s)
        next_cdf = torch.sigmoid((sdf + half) * inv_s)
        alpha = ((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)).clamp(0.0, 1.0).reshape(n, s)
        inside = self._inside(pts)
        alpha = alpha * inside
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha + 1e-7], -1), -1)[:, :-1]
        w = alpha * trans
        op = w.sum(-1)
        err = (grad.reshape(n, s, 3).norm(dim=-1) - 1) ** 2
        return {"rgb": (w[..., None] * rgb).sum(1) + (1 - op)[:, None] * cfg.background, "opacity": op,
                "depth": (w * mid_z).sum(-1), "eikonal": (err * inside).sum() / inside.sum().clamp(min=1),
                "n_points": n * s}

    def render(self, rays_o: torch.Tensor, rays_d: torch.Tensor, cos_anneal_ratio: float = 1.0,
               training: bool = True) -> dict:
        """Render rays (R, 3) with unit directions.

        Returns a dict: ``rgb`` (R, 3) composited on the background, ``opacity`` (R,), ``depth`` (R,)
        (expected ray distance of the surface, background rays 0), ``eikonal`` (scalar: mean of
        (|grad f| - 1)^2 over the samples inside the cube), ``n_points`` (int).
        """
        r, dev = len(rays_o), rays_o.device
        near, far, hit = self._ray_intervals(rays_o, rays_d)
        out = {"rgb": torch.full((r, 3), float(self.cfg.background), device=dev),
               "opacity": torch.zeros(r, device=dev), "depth": torch.zeros(r, device=dev),
               "eikonal": torch.zeros((), device=dev), "n_points": 0}
        if not hit.any():
            return out
        o, d, near, far = rays_o[hit], rays_d[hit], near[hit], far[hit]
        z = self._hierarchical_samples(o, d, self._coarse_samples(near, far, training))
        sec = self._shade_sections(o, d, z, near, far, cos_anneal_ratio, training)
        for k in ("rgb", "opacity", "depth"):
            out[k] = out[k].index_put((hit,), sec[k])
        out["eikonal"], out["n_points"] = sec["eikonal"], sec["n_points"]
        return out
