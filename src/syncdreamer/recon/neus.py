"""NeuS reconstruction from a few posed views: model, optimisation loop and config.

The config is a plain nested mapping, complete (the presets ``conf/recon/{official,fast}.yaml`` are the one
source of the numbers; :func:`syncdreamer.recon.presets.load_preset` reads them); its sections are ``sdf`` (field kind + its arguments), ``color``, ``variance_init``, ``renderer``
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
from syncdreamer.devices import pick_device
from syncdreamer.recon.fields import ColorNetwork, SingleVariance, build_sdf
from syncdreamer.recon.presets import check_config, load_preset
from syncdreamer.recon.renderer import NeuSRenderer, OccupancyGrid, RendererConfig

__all__ = ["NeuSModel", "fit_neus", "lr_factor", "estimate_fit_seconds"]


def lr_factor(step: int, train: dict) -> float:
    """Learning-rate multiplier at ``step`` (linear warm-up, then step decay)."""
    w = int(train["warmup_steps"])
    if w > 0 and step < w:
        s0 = float(train["warmup_start"])
        return s0 + (1 - s0) * step / w
    every = int(train["decay_every"])
    return float(train["decay_factor"]) ** (step // every) if every > 0 else 1.0


class NeuSModel(nn.Module):
    """SDF field + colour network + variance + renderer built from a complete recon config (see module doc)."""

    def __init__(self, cfg: dict):
        super().__init__()
        cfg = check_config(cfg)
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


def _check_inputs(images, masks, poses, Ks):
    images, masks = np.asarray(images), np.asarray(masks)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3) RGB, got {images.shape}")
    if masks.shape != images.shape[:3]:
        raise ValueError(f"masks {masks.shape} do not match images {images.shape[:3]}")
    if len(poses) != len(images) or len(Ks) != len(images):
        raise ValueError(f"{len(images)} views but {len(poses)} poses / {len(Ks)} intrinsics")
    if (masks > 0.5).sum() == 0:
        raise ValueError("no foreground pixels in any view (empty masks): nothing to reconstruct")
    return images, masks


def _update_occupancy(model: NeuSModel, step: int, occ_cfg: dict):
    occ = model.renderer.occupancy
    if occ is None:
        return
    warm = int(occ_cfg.get("warmup_steps", 0))
    if step < warm:
        occ.grid.fill_(True)
    elif (step - warm) % int(occ_cfg.get("update_every", 16)) == 0:
        occ.update(model.sdf_net.sdf, float(model.variance.inv_s().detach()))


def _draw_rays(n_all: int, fg_idx: torch.Tensor, tr: dict, gen: torch.Generator, dev) -> torch.Tensor:
    """Indices of one step's rays: ``batch_rays`` uniform over all pixels + ``fg_rays`` over the foreground."""
    idx = torch.randint(n_all, (int(tr["batch_rays"]),), generator=gen).to(dev)
    if int(tr["fg_rays"]) > 0:
        sel = torch.randint(len(fg_idx), (int(tr["fg_rays"]),), generator=gen).to(dev)
        idx = torch.cat([idx, fg_idx[sel]])
    return idx


def _train_step(model: NeuSModel, rays: tuple, idx: torch.Tensor, anneal: float, tr: dict) -> dict:
    """Loss of the rays ``idx``, back-propagated ``train.ray_chunk`` rays at a time (gradients add up to
    those of the whole batch: each chunk's mean is weighted by its share of the rays; the eikonal mean is
    taken per chunk). Returns the loss terms (floats) and ``n_points`` of the last chunk."""
    rays_o, rays_d, rgb_gt, mask_gt = rays
    chunk = int(tr.get("ray_chunk") or len(idx))
    terms = {"loss": 0.0, "rgb": 0.0, "mask": 0.0, "eikonal": 0.0, "n_points": 0}
    for part in idx.split(chunk):
        share = len(part) / len(idx)
        out = model.renderer.render(rays_o[part], rays_d[part], anneal, training=True)
        rgb_loss = torch.sqrt(((out["rgb"] - rgb_gt[part]) ** 2).sum(-1) + 1e-3).mean()
        mask_loss = F.mse_loss(out["opacity"].clamp(0, 1), mask_gt[part])
        loss = (float(tr["rgb_weight"]) * rgb_loss + float(tr["eikonal_weight"]) * out["eikonal"]
                + float(tr["mask_weight"]) * mask_loss)
        (loss * share).backward()
        for k, v in (("loss", loss), ("rgb", rgb_loss), ("mask", mask_loss), ("eikonal", out["eikonal"])):
            terms[k] += share * float(v.detach())
        terms["n_points"] = max(terms["n_points"], int(out["n_points"]))
    return terms


def fit_neus(images: np.ndarray, masks: np.ndarray, poses: np.ndarray, Ks: np.ndarray, cfg: dict | None = None,
             device: str | torch.device | None = "auto", seed: int = 0, steps: int | None = None,
             callback: Callable[[int, NeuSModel], None] | None = None, log: Callable[[str], None] | None = print
             ) -> NeuSModel:
    """Optimise NeuS on posed views.

    Args:
        images: (N, H, W, 3) RGB in [0, 1] composited on white.
        masks: (N, H, W) foreground in [0, 1].
        poses: (N, 3, 4) world-to-camera OpenCV; Ks: (N, 3, 3) pixel intrinsics for H x W.
        cfg: complete recon config (None = the ``official`` preset).
        steps: overrides ``cfg.train.steps``.
        callback: called as ``callback(step, model)`` after every step (benchmarks, early stopping by
            raising ``StopIteration``).
    Returns:
        the trained :class:`NeuSModel` (in eval mode).
    """
    images, masks = _check_inputs(images, masks, poses, Ks)
    torch.manual_seed(seed)
    np.random.seed(seed)
    dev = pick_device(device)
    model = NeuSModel(cfg if cfg is not None else load_preset("official")).to(dev)
    tr = model.cfg["train"]
    n_steps = int(tr["steps"] if steps is None else steps)
    rays = _prepare_rays(images, masks, poses, Ks, tr["ray_resolution"], dev)
    fg_idx = torch.nonzero(rays[3] > 0.5).squeeze(1)
    opt = torch.optim.AdamW(_param_groups(model, tr), lr=float(tr["lr"]), weight_decay=float(tr["weight_decay"]))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    t0 = time.time()
    model.train()
    for step in range(n_steps):
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * lr_factor(step, tr)
        _update_occupancy(model, step, model.cfg.get("occupancy") or {})
        idx = _draw_rays(len(rays[0]), fg_idx, tr, gen, dev)
        anneal = 1.0 if int(tr["anneal_end"]) <= 0 else min(1.0, step / int(tr["anneal_end"]))
        opt.zero_grad(set_to_none=True)
        terms = _train_step(model, rays, idx, anneal, tr)
        opt.step()
        every = int(tr.get("log_every", 0))
        if log is not None and every > 0 and (step % every == 0 or step == n_steps - 1):
            log(f"step {step:5d}  loss {terms['loss']:.4f}  rgb {terms['rgb']:.4f}  mask {terms['mask']:.4f}  "
                f"eik {terms['eikonal']:.4f}  inv_s {model.variance.inv_s().item():.1f}  {time.time() - t0:.1f}s")
        if callback is not None:
            try:
                callback(step, model)
            except StopIteration:
                break
    model.eval()
    return model


def estimate_fit_seconds(cfg: dict, device, probe_rays: int = 8, seed: int = 0) -> float:
    """Seconds :func:`fit_neus` would take with ``cfg`` on ``device``: one training step on ``probe_rays``
    rays of a synthetic sphere (after one warm-up step), scaled to the full ray batch and ``train.steps``
    (the cost of a step is linear in the number of rays)."""
    import copy

    c = copy.deepcopy(cfg)
    tr = c["train"]
    full_rays = int(tr["batch_rays"]) + int(tr["fg_rays"])
    tr.update(batch_rays=probe_rays, fg_rays=0, ray_chunk=None, ray_resolution=32)
    rig = cameras.make_rig(n_views=2, image_size=32, focal=35.0)
    yy, xx = np.mgrid[:32, :32]
    disk = (((yy - 15.5) ** 2 + (xx - 15.5) ** 2) < 64).astype(np.float32)
    masks = np.stack([disk, disk])
    imgs = np.repeat((1 - 0.5 * masks)[..., None], 3, -1)
    times = []
    fit_neus(imgs, masks, rig.poses, rig.Ks, c, device=device, seed=seed, steps=2, log=None,
             callback=lambda step, m: times.append(time.time()))
    per_ray = (times[1] - times[0]) / probe_rays
    return per_ray * full_rays * int(cfg["train"]["steps"])
