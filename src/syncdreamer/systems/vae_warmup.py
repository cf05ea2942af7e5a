"""Fit the KL autoencoder on the training renders before diffusion training (smoke / from-scratch runs).

The official recipe starts from Zero123's trained SD-1.x VAE. Without those weights (CPU smoke runs, tests,
new latent spaces) a random VAE decodes every latent to noise, so nothing downstream can be judged. This step
trains the VAE as a plain autoencoder (L1 reconstruction + a small KL term) on the rendered views and caches
the weights, keyed by the config and the data, so later runs reuse them. Rank 0 only; off by default
(``vae_warmup.steps: 0``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch

from ..data import layout

log = logging.getLogger(__name__)


def _views(root: Path, uids: list[str], image_size: int, view_num: int) -> torch.Tensor:
    """All target and input views of ``uids`` as (M, 3, S, S) in [-1, 1] composited on white."""
    out = []
    for uid in uids:
        for rig in ("target", "input"):
            for i in range(view_num):
                path = layout.view_path(root, rig, uid, i)
                if path.is_file():
                    out.append(layout.read_view_tensor(path, image_size))
    if not out:
        raise ValueError(f"vae_warmup: no rendered views of {len(uids)} objects under {root}")
    return torch.stack(out)


def fit_autoencoder(vae, images: torch.Tensor, steps: int, lr: float = 1e-3, batch_size: int = 16,
                    kl_weight: float = 1e-6, seed: int = 0, log_every: int = 50,
                    equivariance: float = 0.0) -> list[float]:
    """Train ``vae`` (:class:`~syncdreamer.models.vae.KLAutoencoder`) to reconstruct ``images`` (M, 3, H, W).

    Loss = mean |decode(z) - x| + kl_weight * KL(q(z|x) || N(0, I)), z a posterior sample, plus, when
    ``equivariance`` > 0, that weight times mean |decode(pool(z)) - pool(x)| with ``pool`` a 2x2 average pool: the
    scale-equivariance regulariser of Skorokhodov et al. 2025 (*Improving the diffusability of autoencoders*), which
    makes the latent behave like a small image (less high-frequency content the diffusion model must learn).
    Returns the losses.
    """
    gen = torch.Generator().manual_seed(seed)
    was_training = vae.training
    vae.train()
    params = [p for p in vae.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    losses, t0 = [], time.time()
    for step in range(steps):
        idx = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=gen)
        x = images[idx]
        mean, logvar, std = vae.posterior(x)
        z = mean + std * torch.randn(mean.shape, generator=gen)
        recon = vae.vae.decode(z).sample
        kl = 0.5 * (mean.pow(2) + std.pow(2) - 1.0 - logvar).mean()
        loss = (recon - x).abs().mean() + kl_weight * kl
        if equivariance > 0:
            small = vae.vae.decode(torch.nn.functional.avg_pool2d(z, 2)).sample
            loss = loss + equivariance * (small - torch.nn.functional.avg_pool2d(x, 2)).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            log.info("vae warm-up step %d/%d  L1+KL %.4f  (%.0f s)", step + 1, steps, losses[-1], time.time() - t0)
    for p, f in zip(params, flags):
        p.requires_grad_(f)
    vae.train(was_training)
    return losses


def reinitialize(module: torch.nn.Module, seed: int) -> None:
    """Draw fresh default initial weights for every layer of ``module`` from ``seed`` alone (the global random
    state is left as it was), so that they depend neither on the run's seed nor on what was built before."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            if m is not module and hasattr(m, "reset_parameters"):
                m.reset_parameters()


def warmup_vae(model, root, uids: list[str], image_size: int, view_num: int, steps: int, lr: float = 1e-3,
               batch_size: int = 16, kl_weight: float = 1e-6, seed: int = 0, cache_dir=None,
               own_init: bool = False, equivariance: float = 0.0) -> Path | None:
    """Fit ``model.first_stage_model`` on the renders of ``uids`` (or load the cached result); returns the
    cache file. The cache key covers the VAE's initial weights, the data and every setting.

    ``own_init``: first re-draw the VAE's initial weights from ``seed`` (:func:`reinitialize`), so that every run
    with the same ``seed`` and data gets the same fitted VAE whatever its own seed and model (``vae_warmup.seed``);
    otherwise the VAE keeps the weights the model was built with (they follow the run's seed and every layer
    drawn before it)."""
    from safetensors.torch import load_file, save_file

    vae = getattr(model, "first_stage_model", None)
    if vae is None or steps <= 0:
        return None
    if own_init:
        reinitialize(vae, seed)
    root = Path(root)
    h = hashlib.sha256(json.dumps(dict(uids=sorted(uids), size=image_size, steps=steps, lr=lr, bs=batch_size,
                                       kl=kl_weight, seed=seed, **({"eq": equivariance} if equivariance else {}))
                                  ).encode())
    for k, v in sorted(vae.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes()[:4096])
    cache = Path(cache_dir or root / "vae_warmup") / f"vae_{h.hexdigest()[:16]}.safetensors"
    if cache.is_file():
        vae.load_state_dict(load_file(str(cache)))
        log.info("vae warm-up: loaded %s", cache)
        return cache
    images = _views(root, uids, image_size, view_num)
    log.info("vae warm-up: fitting the autoencoder on %d views for %d steps ...", len(images), steps)
    losses = fit_autoencoder(vae, images, steps, lr, batch_size, kl_weight, seed, equivariance=equivariance)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    save_file({k: v.detach().contiguous() for k, v in vae.state_dict().items()}, str(tmp))
    tmp.replace(cache)
    log.info("vae warm-up: L1+KL %.4f -> %.4f, saved %s", losses[0], losses[-1], cache)
    return cache


@torch.no_grad()
def latent_scale(vae, root, uids: list[str], image_size: int, view_num: int, max_views: int = 2048,
                 seed: int = 0) -> float:
    """The latent scale that gives the fitted VAE's latents unit standard deviation: ``1 / std`` of the posterior
    means (unscaled) of up to ``max_views`` rendered views of ``uids`` (a seeded choice). Stable Diffusion's
    0.18215 was measured the same way for its VAE; a VAE fitted here has its own, and a latent far from unit
    variance shifts the signal-to-noise ratio of every timestep of the fixed noise schedule."""
    images = _views(Path(root), uids, image_size, view_num)
    if len(images) > max_views:
        images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:max_views]]
    means = torch.cat([vae.posterior(chunk)[0] for chunk in images.split(256)])
    std = float(means.float().std())
    if not std > 0:
        raise ValueError(f"vae_warmup.calibrate_scale: the fitted VAE's latents have std {std}; fit it longer")
    return 1.0 / std
