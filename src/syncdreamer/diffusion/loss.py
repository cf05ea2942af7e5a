"""The SyncDreamer training objective (plain eps-MSE on one target view; spec section 3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.syncdreamer import Condition, SyncDreamer
from .schedule import q_sample


def training_loss(model: SyncDreamer, x0: torch.Tensor, cond: Condition, t: torch.Tensor, noise: torch.Tensor,
                  target_index: torch.Tensor, drop_conditions: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The joint eps-loss of ``model``: one t (B,) shared by all views of x0 (B, N, 4, h, w), independent
    noise (B, N, 4, h, w) per view, the spatial volume from all N noisy views, and MSE on one target view
    ``target_index`` (B, 1) per sample. Returns ``(loss, eps_pred (B, 4, h, w))``.
    """
    cond = model.complete(cond)
    x_noisy = q_sample(x0, t, noise, model.sqrt_alphas_cumprod, model.sqrt_one_minus_alphas_cumprod)
    t_embed = model.embed_time(t)
    volume = model.spatial_volume_for(x_noisy, t, cond, t_embed)
    eps = model.denoise_views(x_noisy, t, cond, target_index, volume, t_embed,
                              drop_conditions=drop_conditions)[:, 0]
    rows = torch.arange(x0.shape[0], device=x0.device)
    target = noise[rows, target_index[:, 0]]
    return F.mse_loss(eps, target), eps
