"""Alternative synchronized samplers (swappable with :class:`~syncdreamer.diffusion.sampler.SyncDDIMSampler`).

Every sampler here has the same interface as ``SyncDDIMSampler``: built as ``Sampler(model, steps=...,
cfg_scale=..., batch_view_num=...)`` and ``sample(cond, x_T=None, generator=None, callback=None) -> latents
(B, N, 4, h, w)``. Each step calls :meth:`SyncDreamer.predict_eps` once on all N views (one spatial volume per
step, CFG branches in one UNet call), and the update is applied to all views jointly, so the multiview
synchronisation of the official sampler is kept; only the ODE/SDE solver changes.

``SyncDPMSolverSampler`` uses diffusers' :class:`~diffusers.DPMSolverMultistepScheduler` (DPM-Solver++,
multistep, order 2 by default) built on the model's own ``betas`` buffer, so the noise schedule is exactly
the one the model was trained with. Its update is elementwise, so it works on the 5-D (B, N, 4, h, w) latent.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..models.syncdreamer import Condition, SyncDreamer
from .sampler import initial_latents


class SyncDPMSolverSampler:
    """DPM-Solver++ over all views jointly (``algorithm_type`` ``dpmsolver++`` deterministic, or
    ``sde-dpmsolver++`` stochastic). ``timestep_spacing`` as in diffusers (``leading`` adds ``steps_offset``,
    the default here, 1, like the official DDIM timesteps ``1, 21, ..., 981``)."""

    name = "dpmsolver"

    def __init__(self, model: SyncDreamer, steps: int = 20, cfg_scale: float = 2.0, batch_view_num: int | None = None,
                 solver_order: int = 2, algorithm_type: str = "dpmsolver++", timestep_spacing: str = "leading",
                 steps_offset: int = 1, lower_order_final: bool = True, eta: float | None = None):
        from diffusers import DPMSolverMultistepScheduler

        if steps < 1:
            raise ValueError(f"sample_steps must be >= 1, got {steps}")
        self.model, self.cfg_scale, self.batch_view_num = model, float(cfg_scale), batch_view_num
        self.steps = int(steps)
        betas = model.betas.detach().double().cpu().numpy()
        self.scheduler = DPMSolverMultistepScheduler(
            num_train_timesteps=len(betas), trained_betas=betas, prediction_type="epsilon",
            solver_order=int(solver_order), algorithm_type=algorithm_type, timestep_spacing=timestep_spacing,
            steps_offset=int(steps_offset), lower_order_final=lower_order_final)
        self.scheduler.set_timesteps(self.steps)
        self.timesteps = self.scheduler.timesteps.clone()

    @torch.no_grad()
    def sample(self, cond: Condition, x_T: torch.Tensor | None = None, generator: torch.Generator | None = None,
               callback: Callable[[int, int, torch.Tensor], None] | None = None) -> torch.Tensor:
        """cond (B objects) -> latents (B, N, 4, h, w). ``callback(i, total, x)`` after every step."""
        m = self.model
        cond = m.complete(cond)
        B, dev = cond.batch_size, cond.input_latent.device
        x = initial_latents(m, cond, x_T, generator) * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(self.steps, device=dev)
        total = len(self.scheduler.timesteps)
        for i, step in enumerate(self.scheduler.timesteps):
            t = torch.full((B,), int(step), device=dev, dtype=torch.long)
            eps = m.predict_eps(x, t, cond, self.cfg_scale, self.batch_view_num).float()
            x = self.scheduler.step(eps, step, x, generator=generator).prev_sample
            if callback is not None:
                callback(i, total, x)
        return x


def sampler_name(sampler) -> str:
    """Short name of a sampler instance for logs and cameras.json (``ddim``, ``dpmsolver``, or the class)."""
    name = getattr(sampler, "name", None)
    if name:
        return str(name)
    return {"SyncDDIMSampler": "ddim"}.get(type(sampler).__name__, type(sampler).__name__)
