"""The SyncDreamer training objective (plain eps-MSE on one target view; spec section 3), with an optional
timestep weighting for from-scratch training (the CPU proxy)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.syncdreamer import Condition, SyncDreamer
from .schedule import q_sample


WEIGHTINGS = ("eps", "v", "truncated_snr")


def timestep_weights(t: torch.Tensor, sqrt_ac: torch.Tensor, sqrt_1m_ac: torch.Tensor, weighting: str = "eps",
                     max_weight: float | None = None) -> torch.Tensor:
    """Per-sample loss weights (B,) for timesteps t (B,).

    * ``eps``: 1 (the official plain eps-MSE, uniform over t).
    * ``v``: ``1 / ac(t) = 1 + 1 / SNR(t)``: the eps-MSE so weighted is exactly the v-MSE (the loss of a
      ``prediction_type=v`` model: its eps is ``sqrt(ac) v + sqrt(1 - ac) x_t``).
    * ``truncated_snr``: ``max(1, 1 / SNR(t))``, SNR = ac / (1 - ac) (Salimans & Ho 2022, "truncated SNR"):
      the eps-MSE where the signal dominates and the x0-MSE where the noise does. At high t a plain eps-loss
      is tiny (eps is almost x_t itself), so a model trained from scratch barely learns what the condition says
      about x0 there; this weighting makes those steps count. ``max_weight`` caps it (the SD schedule's 1/SNR
      reaches ~215 at t = 999).
    """
    if weighting == "eps":
        return torch.ones(t.shape, device=t.device)
    if weighting == "v":
        w = sqrt_ac[t].float().pow(-2)
        return w if max_weight is None else w.clamp(max=float(max_weight))
    if weighting == "truncated_snr":
        inv_snr = (sqrt_1m_ac[t] / sqrt_ac[t]).pow(2).float()
        w = inv_snr.clamp(min=1.0)
        return w if max_weight is None else w.clamp(max=float(max_weight))
    raise ValueError(f"unknown loss weighting {weighting!r}; use one of {', '.join(WEIGHTINGS)}")


def training_loss(model: SyncDreamer, x0: torch.Tensor, cond: Condition, t: torch.Tensor, noise: torch.Tensor,
                  target_index: torch.Tensor, drop_conditions: bool = False, weighting: str = "eps",
                  max_weight: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The joint eps-loss of ``model``: one t (B,) shared by all views of x0 (B, N, 4, h, w), independent
    noise (B, N, 4, h, w) per view, the spatial volume from all N noisy views, and MSE on the target views
    ``target_index`` (B, K) of each sample (official: K = 1, one view). Returns ``(loss, eps_pred)``,
    eps_pred (B, 4, h, w) for K = 1, else (B, K, 4, h, w). ``weighting`` / ``max_weight``: see
    :func:`timestep_weights` (``eps``, the default, is the official loss).
    """
    cond = model.complete(cond)
    x_noisy = q_sample(x0, t, noise, model.sqrt_alphas_cumprod, model.sqrt_one_minus_alphas_cumprod)
    t_embed = model.embed_time(t)
    volume = model.spatial_volume_for(x_noisy, t, cond, t_embed)
    eps = model.denoise_views(x_noisy, t, cond, target_index, volume, t_embed,
                              drop_conditions=drop_conditions)
    rows = torch.arange(x0.shape[0], device=x0.device)[:, None]
    target = noise[rows, target_index]
    if weighting == "eps":
        loss = F.mse_loss(eps, target)
    else:
        w = timestep_weights(t, model.sqrt_alphas_cumprod, model.sqrt_one_minus_alphas_cumprod, weighting, max_weight)
        loss = (w.to(eps) * (eps.float() - target.float()).pow(2).flatten(1).mean(1)).mean()
    return loss, (eps[:, 0] if target_index.shape[1] == 1 else eps)
