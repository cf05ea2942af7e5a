"""``SyncDreamerSystem``: the LightningModule that trains a :class:`~syncdreamer.models.SyncDreamer`.

The network is a plain ``nn.Module`` built elsewhere (Hydra ``model=...``); this module adds the training
recipe of the official ``SyncMultiviewDiffusion`` (spec section 3):

* per sample one timestep ``t ~ U{0..T-1}`` shared by all N views, independent Gaussian noise per view and
  one target view ``n ~ U{0..N-1}``; loss = :func:`syncdreamer.diffusion.loss.training_loss` (plain eps-MSE on view n);
* VAE encoding of the targets and the input inside the step under ``no_grad`` (posterior samples), unless
  the batch already carries latents (latent cache: posterior mean/std; or sampled latents);
* AdamW over the depth-wise attention (``lr``) and the volume nets (``lr * volume_lr_mult``), optionally
  the whole UNet (``finetune_unet``, the Zero123 fine-tune baseline of ``ablation_no_volume``); a LambdaLR
  warm-up from ``warmup_start`` to 1 over ``warmup_steps`` steps, then constant; everything else frozen
  (``requires_grad=False``, not in the optimiser);
* optional EMA of the trainable parameters, optional condition dropping (rates in ``model.condition_drop``);
* validation: synchronized DDIM sampling of the validation inputs, image grids (input first, then the N
  views; a row of ground truth under it for held-out objects) saved as PNG and sent to the loggers.

The random draws of a step come from :meth:`draw`; pass ``draws=`` to :meth:`compute_loss` or set
:attr:`draw_hook` to route externally fixed draws (the golden test) through the real step.
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import lightning as L
import numpy as np
import torch
from torch import nn

from ..config import dataclass_from, to_plain
from ..diffusion.loss import WEIGHTINGS, training_loss
from ..diffusion.sampler import SyncDDIMSampler
from ..models.syncdreamer import Condition, SyncDreamer
from .ema import ParameterEMA

log = logging.getLogger(__name__)

__all__ = ["Draws", "OptimConfig", "ValidationConfig", "SyncDreamerSystem", "warmup_factor"]


@dataclass
class Draws:
    """The random draws of one training step: ``t`` (B,) int64, ``noise`` (B, N, 4, h, w), ``target_index`` (B, K)."""

    t: torch.Tensor
    noise: torch.Tensor
    target_index: torch.Tensor


@dataclass
class OptimConfig:
    """AdamW + warm-up (official: lr 5e-5 not scaled by batch or GPUs, x10 for the volume nets)."""

    lr: float = 5e-5
    volume_lr_mult: float = 10.0
    unet_lr_mult: float = 1.0          # only with finetune_unet
    weight_decay: float = 0.01         # torch AdamW default
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 100
    warmup_start: float = 0.02         # LambdaLinearScheduler f_start
    decay_steps: int | None = None     # cosine decay of the LR factor from 1 (end of warm-up) to decay_final at
    decay_final: float = 0.0           # this step, then constant (official: None, constant after warm-up)


@dataclass
class ValidationConfig:
    """Sampling of the validation inputs (official: 200 DDIM steps, cfg 2.0, 4 views per chunk, seed 6033)."""

    sample_steps: int = 50
    cfg_scale: float = 2.0
    eta: float = 1.0
    batch_view_num: int | None = 4
    seed: int = 6033
    use_ema: bool = True               # sample with the EMA weights when EMA is on
    save_images: bool = True           # PNG grids under <run dir>/images/val/


def warmup_factor(step: int, warmup_steps: int, start: float, decay_steps: int | None = None,
                  final: float = 0.0) -> float:
    """LR factor: linear from ``start`` (step 0) to 1 at ``warmup_steps``, then 1 (official LambdaLinearScheduler
    with f_max = f_min = 1); with ``decay_steps``, a half cosine from 1 at ``warmup_steps`` to ``final`` at
    ``decay_steps``, then ``final``."""
    if warmup_steps > 0 and step < warmup_steps:
        return start + (1.0 - start) * step / warmup_steps
    warm = max(warmup_steps, 0)
    if decay_steps is None or decay_steps <= warm:
        return 1.0
    frac = min(1.0, (step - warm) / (decay_steps - warm))
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * frac))


class SyncDreamerSystem(L.LightningModule):
    """Training / validation of SyncDreamer (see the module docstring).

    Args:
        model: the network (``SyncDreamer``); ``vae``/``clip`` may be ``None`` when batches carry latents.
        optimizer: :class:`OptimConfig` fields.
        finetune_unet: also train the base UNet (needed when ``model.unet.depth_attention`` is false).
        drop_conditions: condition dropping at training time with ``model.condition_drop`` rates.
        ema: ``{"decay": 0.9999}`` to keep an EMA of the trainable parameters, ``None``/``{}`` for none.
        validation: :class:`ValidationConfig` fields.
        vae_chunk: images per VAE encoder call inside the step (memory knob; values unchanged).
        target_views: K, the views per sample that get the loss (distinct, drawn per sample). 1 is the official
            recipe (the UNet runs on one view; the volume always sees all N). More views give K times the
            supervision for much less than K times the step cost (the volume is built once): the CPU proxy's choice.
        loss_weighting, loss_max_weight: timestep weighting of the eps-MSE
            (:func:`syncdreamer.diffusion.loss.timestep_weights`): ``eps`` (official, uniform), ``v``,
            ``truncated_snr``, or ``auto``: ``v`` (the v-MSE) for a ``prediction_type=v`` model, else ``eps``.
    """

    def __init__(self, model: SyncDreamer, optimizer: dict | OptimConfig | None = None, finetune_unet: bool = False,
                 drop_conditions: bool = False, ema: dict | None = None, validation: dict | None = None,
                 vae_chunk: int = 64, target_views: int = 1, loss_weighting: str = "auto",
                 loss_max_weight: float | None = None):
        super().__init__()
        # plain containers only (Hydra passes DictConfigs): checkpoints must load with weights_only=True
        optimizer, ema, validation = to_plain(optimizer), to_plain(ema), to_plain(validation)
        if not isinstance(model, SyncDreamer):
            raise TypeError(f"model must be a syncdreamer.models.SyncDreamer, got {type(model).__name__}")
        self.model = model
        self.optim = dataclass_from(OptimConfig, optimizer)
        self.val_cfg = dataclass_from(ValidationConfig, validation)
        self.finetune_unet, self.drop_conditions, self.vae_chunk = bool(finetune_unet), bool(drop_conditions), int(vae_chunk)
        self.train_volume = bool(model.unet_config.depth_attention)
        self.target_views = int(target_views)
        if loss_weighting == "auto":
            loss_weighting = "v" if model.prediction_type == "v" else "eps"
        if loss_weighting not in WEIGHTINGS:
            raise ValueError(f"system.loss_weighting={loss_weighting!r}: use one of {', '.join(WEIGHTINGS)}")
        self.loss_weighting = str(loss_weighting)
        self.loss_max_weight = None if loss_max_weight is None else float(loss_max_weight)
        if not 1 <= self.target_views <= model.view_num:
            raise ValueError(f"system.target_views={target_views} must be between 1 and model.view_num={model.view_num}")
        model.freeze_for_training(finetune_unet=self.finetune_unet)
        if not self.train_volume:  # no depth attention: the volume never reaches the UNet, so it gets no gradient
            for p in model.trainable_parameter_groups()["volume"]:
                p.requires_grad_(False)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("nothing to train: model.unet.depth_attention is false and system.finetune_unet is "
                             "false (the Zero123 baseline needs system.finetune_unet=true)")
        if drop_conditions and not any(model.model.drop_rates.values()):
            log.warning("system.drop_conditions=true but every model.condition_drop rate is 0: nothing is dropped")
        ema = dict(ema or {})
        self.ema: ParameterEMA | None = None
        if ema.get("decay") is not None and ema.get("enabled", True):
            self.ema = ParameterEMA(self.trainable_named_parameters(), float(ema["decay"]), bool(ema.get("warmup", True)))
        self.draw_hook: Callable[[torch.Tensor], Draws] | None = None
        self.save_hyperparameters(ignore=["model"])
        self._val_rows: list[torch.Tensor] = []
        self._val_losses: list[torch.Tensor] = []

    # ------------------------------------------------------------------------------------------ parameters
    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def parameter_groups(self) -> list[dict]:
        """AdamW groups (named, for the LR monitor): depth_attention @ lr, volume @ lr x volume_lr_mult,
        unet @ lr x unet_lr_mult (finetune_unet only; with cc_projection). Frozen parameters are in none of them."""
        o, groups = self.optim, self.model.trainable_parameter_groups()
        out, seen = [], set()

        def add(name, params, lr):
            params = [p for p in params if p.requires_grad and id(p) not in seen]
            seen.update(id(p) for p in params)
            if params:
                out.append({"name": name, "params": params, "lr": lr})

        add("depth_attention", groups["depth_attention"], o.lr)
        if self.train_volume:
            add("volume", groups["volume"], o.lr * o.volume_lr_mult)
        if self.finetune_unet:
            add("unet", self.model.base_parameters(), o.lr * o.unet_lr_mult)
        rest = [n for n, p in self.model.named_parameters() if p.requires_grad and id(p) not in seen]
        if rest:
            raise RuntimeError(f"trainable parameters outside every optimiser group: {rest[:5]}")
        return out

    def configure_optimizers(self):
        o = self.optim
        opt = torch.optim.AdamW(self.parameter_groups(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                weight_decay=o.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_factor(step, o.warmup_steps, o.warmup_start, o.decay_steps, o.decay_final))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.model.frozen_modules():  # VAE / CLIP stay in eval mode (official)
            m.eval()
        return self

    # ------------------------------------------------------------------------------------------ batches
    def _encode(self, images: torch.Tensor, generator=None) -> torch.Tensor:
        out = []
        for chunk in images.split(self.vae_chunk):
            noise = None
            if generator is not None:
                h = self.model.latent_size
                noise = torch.randn((chunk.shape[0], self.model.latent_channels, h, h), generator=generator,
                                    device=chunk.device)
            out.append(self.model.encode_first_stage(chunk, sample=True, noise=noise))
        return torch.cat(out)

    def _check_batch(self, batch: dict) -> None:
        m = self.model
        for key in ("target_image", "target_latent", "target_latent_mean"):
            if key in batch:
                x = batch[key]
                if x.ndim != 5 or x.shape[1] != m.view_num:
                    raise ValueError(f"batch[{key!r}] has shape {tuple(x.shape)}; expected (B, {m.view_num}, C, H, W)")
                size = m.image_size if key == "target_image" else m.latent_size
                if x.shape[-1] != size or x.shape[-2] != size:
                    raise ValueError(f"batch[{key!r}] is {x.shape[-2]}x{x.shape[-1]}, the model expects {size}x{size} "
                                     f"(model.image_size={m.image_size}; data.image_size must match)")
                return
        raise KeyError(f"batch has none of target_image / target_latent / target_latent_mean: {sorted(batch)}")

    @torch.no_grad()
    def encode_batch(self, batch: dict, generator: torch.Generator | None = None) -> tuple[torch.Tensor, Condition]:
        """Batch -> (x0 (B, N, 4, h, w) scaled latents, :class:`Condition`), under ``no_grad``.

        Accepts images (``target_image``, ``input_image``; VAE posterior samples), cached posteriors
        (``*_latent_mean`` / ``*_latent_std``, ``clip_embed``) or sampled latents (``target_latent``,
        ``input_latent``, ``clip_embed``).
        """
        self._check_batch(batch)
        m = self.model

        def randn_like(x):
            return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

        if "target_latent" in batch:
            x0 = batch["target_latent"]
        elif "target_latent_mean" in batch:
            x0 = batch["target_latent_mean"] + batch["target_latent_std"] * randn_like(batch["target_latent_std"])
        else:
            imgs = batch["target_image"]
            B, N = imgs.shape[:2]
            x0 = self._encode(imgs.flatten(0, 1), generator).unflatten(0, (B, N))
        if "input_latent" in batch:
            z = batch["input_latent"]
        elif "input_latent_mean" in batch:
            z = batch["input_latent_mean"] + batch["input_latent_std"] * randn_like(batch["input_latent_std"])
        else:
            z = self._encode(batch["input_image"], generator)
        clip = batch["clip_embed"] if "clip_embed" in batch else m.encode_clip(batch["input_image"])
        if clip.ndim == 2:
            clip = clip.unsqueeze(1)
        elev = batch["input_elevation"].reshape(-1).float()
        return x0.float(), Condition(z.float(), clip.float(), elev)

    def draw(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> Draws:
        """The official draws: ``t ~ U{0..T-1}`` (B,), ``target_index ~ U{0..N-1}`` (B, 1), ``noise ~ N(0, I)``;
        with ``target_views`` K > 1, ``target_index`` (B, K) holds K distinct views per sample."""
        B, N = x0.shape[:2]
        dev = x0.device
        t = torch.randint(0, self.model.num_timesteps, (B,), device=dev, generator=generator)
        if self.target_views == 1:
            target_index = torch.randint(0, N, (B, 1), device=dev, generator=generator)
        else:
            target_index = torch.rand((B, N), device=dev, generator=generator).argsort(1)[:, :self.target_views]
        noise = torch.randn(x0.shape, device=dev, dtype=x0.dtype, generator=generator)
        return Draws(t, noise, target_index)

    def compute_loss(self, batch: dict, draws: Draws | None = None, drop_conditions: bool = False,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The training objective on one batch -> (loss, eps_pred (B, 4, h, w)).

        ``draws`` overrides the random draws (else :attr:`draw_hook`, else :meth:`draw`).
        """
        x0, cond = self.encode_batch(batch, generator)
        if draws is None:
            draws = self.draw_hook(x0) if self.draw_hook is not None else self.draw(x0, generator)
        return training_loss(self.model, x0, cond, draws.t.to(x0.device).long(), draws.noise.to(x0),
                             draws.target_index.to(x0.device).long(), drop_conditions=drop_conditions,
                             weighting=self.loss_weighting, max_weight=self.loss_max_weight)

    # ------------------------------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        # Every rank was seeded alike (same init everywhere); offset the RNG per rank so the timestep / noise /
        # target-view draws of different ranks are independent.
        if self.trainer.world_size > 1:
            torch.manual_seed(torch.initial_seed() + self.global_rank)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, _ = self.compute_loss(batch, drop_conditions=self.drop_conditions)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True,
                 batch_size=batch["input_elevation"].shape[0])
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:  # right after the step, before any checkpoint callback of this batch
            self.ema.update()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])

    # ------------------------------------------------------------------------------------------ validation
    def _generator(self, seed: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(int(seed))
        return g

    @torch.no_grad()
    def sample_views(self, input_image: torch.Tensor, elevation: torch.Tensor, seed: int) -> torch.Tensor:
        """Sample the N views of each input: (B, 3, S, S), (B,) radians -> images (B, N, 3, S, S) in [-1, 1]."""
        v, m = self.val_cfg, self.model
        g = self._generator(seed)
        h = m.latent_size
        noise = torch.randn((input_image.shape[0], m.latent_channels, h, h), generator=g, device=input_image.device)
        cond = m.prepare_condition(input_image, elevation.reshape(-1).float(), noise=noise)
        sampler = SyncDDIMSampler(m, v.sample_steps, v.eta, v.cfg_scale, v.batch_view_num)
        latents = sampler.sample(cond, generator=g)
        return m.decode_first_stage(latents).clamp(-1, 1)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        v = self.val_cfg
        seed = v.seed + batch_idx
        ctx = self.ema.swapped() if (self.ema is not None and v.use_ema) else contextlib.nullcontext()
        with ctx:
            views = self.sample_views(batch["input_image"], batch["input_elevation"], seed)
            if "target_image" in batch:
                loss, _ = self.compute_loss(batch, generator=self._generator(seed))
                self._val_losses.append(loss.detach())
        rows = [torch.cat([batch["input_image"][:, None], views], 1)]
        if "target_image" in batch:
            rows.append(torch.cat([batch["input_image"][:, None], batch["target_image"]], 1))
        rows = torch.stack(rows, 1).flatten(0, 1)  # (B * rows_per_item, 1 + N, 3, S, S)
        self._val_rows.append(((rows + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))

    def on_validation_epoch_end(self) -> None:
        if self._val_losses:
            self.log("val/loss", torch.stack(self._val_losses).mean(), sync_dist=True)
        if not self._val_rows:
            return
        rows = torch.cat(self._val_rows)
        self._val_rows, self._val_losses = [], []
        if self.trainer.world_size > 1:
            rows = self.all_gather(rows).flatten(0, 1)
        if not self.trainer.is_global_zero or self.trainer.sanity_checking:
            return
        grid = make_grid(rows)
        step = self.global_step
        if self.val_cfg.save_images:
            out = Path(self.trainer.default_root_dir) / "images" / "val"
            out.mkdir(parents=True, exist_ok=True)
            from PIL import Image

            Image.fromarray(grid).save(out / f"step_{step:07d}.png")
        for logger in self.loggers:
            _log_image(logger, "val/samples", grid, step)

    def on_validation_epoch_start(self) -> None:
        self._val_rows, self._val_losses = [], []


def make_grid(rows: torch.Tensor) -> np.ndarray:
    """uint8 (R, C, 3, S, S) -> (R*S, C*S, 3) image: one row per item, the input first, then the views."""
    R, C, _, S, _ = rows.shape
    return rows.permute(0, 3, 1, 4, 2).reshape(R * S, C * S, 3).cpu().numpy()


def _log_image(logger, key: str, grid: np.ndarray, step: int) -> None:
    name = type(logger).__name__
    try:
        if name == "WandbLogger":
            logger.log_image(key=key, images=[grid], step=step)
        elif name == "TensorBoardLogger":
            logger.experiment.add_image(key, grid, step, dataformats="HWC")
    except Exception as exc:  # logging must never kill a training run
        log.warning("could not log the validation grid to %s: %s", name, exc)
