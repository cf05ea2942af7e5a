"""NeuS reconstruction from a few posed views: model, optimisation loop and config.

The config is a plain nested mapping (Hydra presets in ``conf/recon/{official,fast}.yaml``); its
sections are ``sdf`` (field kind + its arguments), ``color``, ``variance_init``, ``renderer``
(:class:`~syncdreamer.recon.renderer.RendererConfig`), ``occupancy`` (null or grid settings), ``train``
and ``mesh`` / ``turntable`` (used by :mod:`syncdreamer.recon.export`).

Loss (official): ``rgb_weight * mean_r sqrt(|c_r - c*_r|^2 + 1e-3) + eikonal_weight * mean (|grad f|-1)^2
+ mask_weight * mean (opacity_r - mask_r)^2``; each step draws ``batch_rays`` rays uniformly from all
pixels and ``fg_rays`` from foreground pixels. AdamW; learning rate warms up linearly from
``warmup_start * lr`` over ``warmup_steps``, then is multiplied by ``decay_factor`` every ``decay_every``
steps; the cos-anneal ratio grows linearly to 1 over ``anneal_end`` steps.
"""
from __future__ import annotations

import copy
import time
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from syncdreamer import cameras
from syncdreamer.recon.fields import ColorNetwork, SingleVariance, build_sdf
from syncdreamer.recon.renderer import NeuSRenderer, OccupancyGrid, RendererConfig

__all__ = ["DEFAULT_CONFIG", "merge_config", "NeuSModel", "fit_neus", "lr_factor", "pick_device"]

#: The official settings (``conf/recon/official.yaml`` mirrors this).
DEFAULT_CONFIG: dict = {
    "name": "official",
    "sdf": {"kind": "mlp", "hidden_dim": 256, "n_layers": 8, "skip_layers": [4], "n_freqs": 6,
            "feature_dim": 256, "init_radius": 0.5, "geometric_init": True, "weight_norm": True,
            "softplus_beta": 100.0},
    "color": {"hidden_dim": 256, "n_layers": 4, "n_freqs_dir": 4, "weight_norm": True},
    "variance_init": 0.3,
    "renderer": {"n_samples": 64, "n_importance": 64, "up_sample_steps": 4, "up_sample_base_s": 64.0,
                 "perturb": True, "sphere_radius": 0.8660254, "bound": 0.6, "background": 1.0},
    "occupancy": None,
    "train": {"steps": 2000, "batch_rays": 3584, "fg_rays": 512, "ray_resolution": None, "lr": 5e-4,
              "grid_lr": 1e-2, "weight_decay": 0.01, "warmup_steps": 100, "warmup_start": 0.02,
              "decay_every": 1000, "decay_factor": 0.1414213562, "anneal_end": 200, "rgb_weight": 0.5,
              "eikonal_weight": 0.1, "mask_weight": 1.0, "log_every": 100},
    "mesh": {"resolution": 512, "bound": 0.6, "chunk": 65536},
    "turntable": {"frames": 180, "size": 256, "elevation_deg": 30.0, "distance": 1.5, "focal": 280.0,
                  "fps": 30},
}


def merge_config(base: dict, override: dict | None) -> dict:
    """Recursive dict merge (override wins); unknown top-level sections raise ``ValueError``.

    A sub-mapping with a ``kind`` key that differs from the base's replaces it whole (the arguments of
    another SDF field kind are not merged into the MLP's)."""
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if k not in out and base is DEFAULT_CONFIG:
            raise ValueError(f"unknown recon config section {k!r}; known: {sorted(out)}")
        if isinstance(v, dict) and isinstance(out.get(k), dict) and v.get("kind", out[k].get("kind")) == out[k].get("kind"):
            out[k] = merge_config(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def pick_device(device: str | None = "auto") -> torch.device:
    """``"auto"``/None -> cuda when available, else cpu; otherwise ``torch.device(device)``."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def lr_factor(step: int, train: dict) -> float:
    """Learning-rate multiplier at ``step`` (linear warm-up, then step decay)."""
    w = int(train["warmup_steps"])
    if w > 0 and step < w:
        s0 = float(train["warmup_start"])
        return s0 + (1 - s0) * step / w
    every = int(train["decay_every"])
    return float(train["decay_factor"]) ** (step // every) if every > 0 else 1.0


class NeuSModel(nn.Module):
    """SDF field + colour network + variance + renderer built from a recon config (see module doc)."""

    def __init__(self, cfg: dict):
        super().__init__()
        cfg = merge_config(DEFAULT_CONFIG, cfg)
        self.cfg = cfg
        sdf_cfg = dict(cfg["sdf"])
        kind = sdf_cfg.pop("kind")
        if kind == "hashgrid":
            sdf_cfg.setdefault("bound", cfg["renderer"]["bound"])
        self.sdf_net = build_sdf(kind, **sdf_cfg)
        self.color_net = ColorNetwork(feature_dim=self.sdf_net.feature_dim, **cfg["color"])
        self.variance = SingleVariance(cfg["variance_init"])
        occ = None
        if cfg.get("occupancy"):
            o = cfg["occupancy"]
            occ = OccupancyGrid(o["resolution"], cfg["renderer"]["bound"], o.get("march_samples", 256),
                                o.get("margin_scale", 4.0))
        self.renderer = NeuSRenderer(self.sdf_net, self.color_net, self.variance, RendererConfig(**cfg["renderer"]),
                                     occ)

    @torch.no_grad()
    def render_image(self, pose, K, height: int, width: int, chunk: int = 4096) -> dict:
        """Render one view: ``rgb`` (H, W, 3) in [0, 1], ``opacity`` (H, W), ``depth`` (H, W) (ray distance)."""
        dev = next(self.parameters()).device
        o, d = cameras.pixel_rays(torch.as_tensor(pose, dtype=torch.float32, device=dev),
                                  torch.as_tensor(K, dtype=torch.float32, device=dev), height, width)
        outs = [self.renderer.render(a, b, 1.0, training=False) for a, b in zip(o.split(chunk), d.split(chunk))]
        return {"rgb": torch.cat([x["rgb"] for x in outs]).reshape(height, width, 3).cpu(),
                "opacity": torch.cat([x["opacity"] for x in outs]).reshape(height, width).cpu(),
                "depth": torch.cat([x["depth"] for x in outs]).reshape(height, width).cpu()}


def _param_groups(model: NeuSModel, train: dict):
    grid, other = [], []
    for name, p in model.named_parameters():
        (grid if name.endswith("encoding.table") else other).append(p)
    groups = [{"params": other, "lr": float(train["lr"]), "base_lr": float(train["lr"])}]
    if grid:
        groups.append({"params": grid, "lr": float(train["grid_lr"]), "base_lr": float(train["grid_lr"]),
                       "weight_decay": 0.0})
    return groups


def _prepare_rays(images, masks, poses, Ks, resolution, device):
    """All rays of all views at ``resolution`` (None = image size): o, d (M, 3), rgb (M, 3), mask (M,)."""
    imgs = torch.as_tensor(np.asarray(images), dtype=torch.float32).permute(0, 3, 1, 2)
    msk = torch.as_tensor(np.asarray(masks), dtype=torch.float32)[:, None]
    h = imgs.shape[-2]
    if resolution is not None and int(resolution) != h:
        r = int(resolution)
        imgs = F.interpolate(imgs, size=(r, r), mode="area")
        msk = F.interpolate(msk, size=(r, r), mode="area")
        Ks = cameras.scale_intrinsics(np.asarray(Ks), r / h)
        h = r
    os_, ds = [], []
    for p, k in zip(poses, Ks):
        o, d = cameras.pixel_rays(torch.as_tensor(p, dtype=torch.float32), torch.as_tensor(k, dtype=torch.float32),
                                  h, imgs.shape[-1])
        os_.append(o)
        ds.append(d)
    rgb = imgs.permute(0, 2, 3, 1).reshape(-1, 3)
    return (torch.cat(os_).to(device), torch.cat(ds).to(device), rgb.to(device), msk.reshape(-1).to(device))


def fit_neus(images: np.ndarray, masks: np.ndarray, poses: np.ndarray, Ks: np.ndarray, cfg: dict | None = None,
             device: str | torch.device | None = "auto", seed: int = 0, steps: int | None = None,
             callback: Callable[[int, NeuSModel], None] | None = None, log: Callable[[str], None] | None = print
             ) -> NeuSModel:
    """Optimise NeuS on posed views.

    Args:
        images: (N, H, W, 3) RGB in [0, 1] composited on white.
        masks: (N, H, W) foreground in [0, 1].
        poses: (N, 3, 4) world-to-camera OpenCV; Ks: (N, 3, 3) pixel intrinsics for H x W.
        cfg: recon config (merged over :data:`DEFAULT_CONFIG`).
        steps: overrides ``cfg.train.steps``.
        callback: called as ``callback(step, model)`` after every step (benchmarks, early stopping by
            raising ``StopIteration``).
    Returns:
        the trained :class:`NeuSModel` (in eval mode).
    """
    images, masks = np.asarray(images), np.asarray(masks)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3) RGB, got {images.shape}")
    if masks.shape != images.shape[:3]:
        raise ValueError(f"masks {masks.shape} do not match images {images.shape[:3]}")
    if len(poses) != len(images) or len(Ks) != len(images):
        raise ValueError(f"{len(images)} views but {len(poses)} poses / {len(Ks)} intrinsics")
    if (masks > 0.5).sum() == 0:
        raise ValueError("no foreground pixels in any view (empty masks): nothing to reconstruct")
    torch.manual_seed(seed)
    np.random.seed(seed)
    dev = pick_device(device)
    model = NeuSModel(cfg or {}).to(dev)
    cfg = model.cfg
    tr = cfg["train"]
    n_steps = int(tr["steps"] if steps is None else steps)
    rays_o, rays_d, rgb_gt, mask_gt = _prepare_rays(images, masks, poses, Ks, tr["ray_resolution"], dev)
    fg_idx = torch.nonzero(mask_gt > 0.5).squeeze(1)
    opt = torch.optim.AdamW(_param_groups(model, tr), lr=float(tr["lr"]), weight_decay=float(tr["weight_decay"]))
    occ_cfg = cfg.get("occupancy") or {}
    occ = model.renderer.occupancy
    gen = torch.Generator(device="cpu").manual_seed(seed)
    t0 = time.time()
    model.train()
    for step in range(n_steps):
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * lr_factor(step, tr)
        if occ is not None:
            if step < int(occ_cfg.get("warmup_steps", 0)):
                occ.grid.fill_(True)
            elif (step - int(occ_cfg.get("warmup_steps", 0))) % int(occ_cfg.get("update_every", 16)) == 0:
                occ.update(model.sdf_net.sdf, float(model.variance.inv_s().detach()))
        idx = torch.randint(len(rays_o), (int(tr["batch_rays"]),), generator=gen).to(dev)
        if int(tr["fg_rays"]) > 0:
            sel = torch.randint(len(fg_idx), (int(tr["fg_rays"]),), generator=gen).to(dev)
            idx = torch.cat([idx, fg_idx[sel]])
        anneal = 1.0 if int(tr["anneal_end"]) <= 0 else min(1.0, step / int(tr["anneal_end"]))
        out = model.renderer.render(rays_o[idx], rays_d[idx], anneal, training=True)
        rgb_loss = torch.sqrt(((out["rgb"] - rgb_gt[idx]) ** 2).sum(-1) + 1e-3).mean()
        mask_loss = F.mse_loss(out["opacity"].clamp(0, 1), mask_gt[idx])
        loss = (float(tr["rgb_weight"]) * rgb_loss + float(tr["eikonal_weight"]) * out["eikonal"]
                + float(tr["mask_weight"]) * mask_loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log is not None and int(tr.get("log_every", 0)) > 0 and (step % int(tr["log_every"]) == 0
                                                                   or step == n_steps - 1):
            log(f"step {step:5d}  loss {loss.item():.4f}  rgb {rgb_loss.item():.4f}  mask {mask_loss.item():.4f}  "
                f"eik {out['eikonal'].item():.4f}  inv_s {model.variance.inv_s().item():.1f}  "
                f"pts/ray {out['n_points'] / max(len(idx), 1):.0f}  {time.time() - t0:.1f}s")
        if callback is not None:
            try:
                callback(step, model)
            except StopIteration:
                break
    model.eval()
    return model
