"""Synchronized multistep ODE solvers from diffusers (swappable with :class:`~.sampler.SyncDDIMSampler`).

Every sampler here has the interface of ``SyncDDIMSampler``: built as ``Sampler(model, steps=..., cfg_scale=...,
batch_view_num=...)`` and ``sample(cond, x_T=None, generator=None, callback=None) -> latents (B, N, 4, h, w)``.
Each step calls :meth:`SyncDreamer.predict_eps` once on all N views (one spatial volume per step, CFG branches in
one UNet call), and the update is applied to all views jointly, so the multiview synchronisation of the official
sampler is kept; only the ODE/SDE solver changes.

The diffusers schedulers are built on the model's own ``betas`` buffer, so the noise schedule is exactly the one
the model was trained with; their updates are elementwise, so they work on the 5-D (B, N, 4, h, w) latent.
``final_sigmas_type="zero"`` (diffusers' default) ends at alpha = 1; ``"sigma_min"`` ends, like the official
DDIM sampler, at ``alphas_cumprod[0]``.

- :class:`SyncDPMSolverSampler`: DPM-Solver++ (``DPMSolverMultistepScheduler``), multistep, order 2 by default.
- :class:`SyncUniPCSampler`: UniPC (``UniPCMultistepScheduler``), predictor-corrector, order 2 by default.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..models.syncdreamer import Condition, SyncDreamer
from .sampler import start_sampling, timestep_batch


class _SyncDiffusersSampler:
    """Shared loop: a diffusers multistep scheduler stepping all views of all objects jointly.

    Subclasses name the diffusers scheduler class; ``solver`` passes scheduler-specific settings through
    (``algorithm_type`` for DPM-Solver++, ``solver_type`` for UniPC; diffusers' defaults otherwise). ``eta`` is
    accepted for config compatibility with DDIM and unused."""

    name = "diffusers"
    scheduler_class = ""

    def __init__(self, model: SyncDreamer, steps: int = 20, cfg_scale: float = 2.0, batch_view_num: int | None = None,
                 solver_order: int = 2, timestep_spacing: str = "leading", steps_offset: int = 1,
                 lower_order_final: bool = True, final_sigmas_type: str = "zero", eta: float | None = None,
                 **solver):
        import diffusers

        self.model, self.cfg_scale, self.batch_view_num = model, float(cfg_scale), batch_view_num
        self.steps = int(steps)
        self.scheduler = self.make_scheduler(
            getattr(diffusers, self.scheduler_class), model, self.steps, solver_order=int(solver_order),
            timestep_spacing=timestep_spacing, steps_offset=int(steps_offset), lower_order_final=lower_order_final,
            final_sigmas_type=final_sigmas_type, **solver)
        self.scheduler.set_timesteps(self.steps)
        self.timesteps = self.scheduler.timesteps.clone()

    @staticmethod
    def check_steps(steps: int) -> None:
        if steps < 1:
            raise ValueError(f"sample_steps must be >= 1, got {steps}")

    @staticmethod
    def make_scheduler(scheduler_cls, model: SyncDreamer, steps: int, **settings):
        """A diffusers scheduler on the model's own ``betas`` (epsilon prediction), after checking ``steps``."""
        _SyncDiffusersSampler.check_steps(steps)
        betas = model.betas.detach().double().cpu().numpy()
        return scheduler_cls(num_train_timesteps=len(betas), trained_betas=betas, prediction_type="epsilon", **settings)

    def step_kwargs(self, generator):
        """Extra ``scheduler.step`` arguments (the stochastic schedulers take the generator)."""
        return {"generator": generator}

    @torch.no_grad()
    def sample(self, cond: Condition, x_T: torch.Tensor | None = None, generator: torch.Generator | None = None,
               callback: Callable[[int, int, torch.Tensor], None] | None = None) -> torch.Tensor:
        """cond (B objects) -> latents (B, N, 4, h, w). ``callback(i, total, x)`` after every step."""
        cond, x = start_sampling(self.model, cond, x_T, generator)
        x = x * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(self.steps, device=x.device)
        total = len(self.scheduler.timesteps)
        for i, step in enumerate(self.scheduler.timesteps):
            t = timestep_batch(step, cond)
            eps = self.model.predict_eps(x, t, cond, self.cfg_scale, self.batch_view_num).float()
            x = self.scheduler.step(eps, step, x, **self.step_kwargs(generator)).prev_sample
            if callback is not None:
                callback(i, total, x)
        return x


class SyncDPMSolverSampler(_SyncDiffusersSampler):
    """DPM-Solver++ over all views jointly (``algorithm_type`` ``dpmsolver++`` deterministic, the default, or
    ``sde-dpmsolver++`` stochastic). ``timestep_spacing`` as in diffusers (``leading`` adds ``steps_offset``,
    the default here, 1, like the official DDIM timesteps ``1, 21, ..., 981``)."""

    name = "dpmsolver"
    scheduler_class = "DPMSolverMultistepScheduler"


class SyncUniPCSampler(_SyncDiffusersSampler):
    """UniPC (Zhao et al. 2023) over all views jointly: a multistep predictor (predicting x0, order
    ``solver_order``) with the UniC corrector after every step, which reuses the next step's eps, so it costs no
    extra network call. ``solver_type`` ``bh2`` (diffusers' default for guided sampling) or ``bh1``."""

    name = "unipc"
    scheduler_class = "UniPCMultistepScheduler"

    def step_kwargs(self, generator):
        return {}


def sampler_name(sampler) -> str:
    """Short name of a sampler instance for logs and cameras.json (``ddim``, ``dpmsolver``, ``unipc``, ...)."""
    name = getattr(sampler, "name", None)
    if name:
        return str(name)
    return {"SyncDDIMSampler": "ddim"}.get(type(sampler).__name__, type(sampler).__name__)
