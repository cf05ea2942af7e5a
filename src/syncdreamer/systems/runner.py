"""The training run behind ``train.py``: check the config, build data / model / system / trainer, fit.

Everything is built from the composed Hydra config (``conf/train.yaml``): ``data`` (a LightningDataModule),
``model`` (the ``SyncDreamer`` nn.Module), ``system`` (the LightningModule, given the model), ``trainer``,
``callbacks`` and ``logger`` (dicts of ``_target_`` entries; ``logger=none`` = no logger). The resolved
config goes into every checkpoint and next to the checkpoints (``checkpoints/config.yaml``); Hydra keeps
its own copy under ``.hydra/``. ``ckpt_path`` resumes a run exactly (weights, optimiser, LR schedule,
EMA, global step); ``init_from`` initialises a new run from Zero123(-XL) or an official SyncDreamer checkpoint.

Bad input is reported before training (and before the model is built where possible) as
:class:`ConfigError` / :class:`~syncdreamer.data.dataset.DataError` with one clear message.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

__all__ = ["ConfigError", "check_config", "instantiate_callbacks", "instantiate_loggers", "train",
           "load_model_from_checkpoint", "INIT_KINDS"]

#: ``init_from.kind`` -> function name in :mod:`syncdreamer.checkpoints`.
INIT_KINDS = {"zero123": "init_from_zero123", "official": "load_official_checkpoint"}


class ConfigError(ValueError):
    """The run config is inconsistent (raised before training starts)."""


def _get(cfg, path: str, default=None):
    value = OmegaConf.select(cfg, path, default=default)
    return default if value is None else value


def check_config(cfg: DictConfig) -> None:
    """Cheap consistency checks of a composed training config; raises :class:`ConfigError`."""
    m = cfg.model
    for key in ("volume_resolution", "frustum_depth"):
        value = int(m[key])
        if value <= 0 or value % 8:
            raise ConfigError(f"model.{key}={value} must be a positive multiple of 8 (the 3D U-Nets downsample 3 times)")
    if int(m.image_size) % 8:
        raise ConfigError(f"model.image_size={m.image_size} must be divisible by 8 (the VAE downsamples by 8)")
    for key in ("image_size", "view_num"):
        d = OmegaConf.select(cfg, f"data.{key}")
        if d is not None and int(d) != int(m[key]):
            raise ConfigError(f"data.{key}={d} differs from model.{key}={m[key]}")
    depth_attention = bool(_get(cfg, "model.unet.depth_attention", True))
    if not depth_attention and not bool(_get(cfg, "system.finetune_unet", False)):
        raise ConfigError("model.unet.depth_attention=false leaves nothing to train: set system.finetune_unet=true "
                          "(the Zero123 fine-tune baseline, experiment=ablation_no_volume)")
    ckpt = OmegaConf.select(cfg, "ckpt_path")
    if ckpt and not Path(str(ckpt)).is_file():
        raise ConfigError(f"ckpt_path={ckpt} does not exist (resume from <run dir>/checkpoints/last.ckpt)")
    init = OmegaConf.select(cfg, "init_from")
    if init is not None and init.get("path"):
        kind = init.get("kind", "zero123")
        if kind not in INIT_KINDS:
            raise ConfigError(f"init_from.kind={kind!r}; choose one of {sorted(INIT_KINDS)}")
        if not Path(str(init.path)).is_file():
            raise ConfigError(f"init_from.path={init.path} not found: download it (zero123-xl.ckpt from the Zero123 "
                              "release, or syncdreamer-pretrain.ckpt) into paths.ckpt_dir, set init_from.path, "
                              "or set init_from.path=null to start from random weights")
        clip_path = init.get("clip_path")
        if clip_path and not Path(str(clip_path)).is_file():
            raise ConfigError(f"init_from.clip_path={clip_path} not found: put OpenAI's ViT-L-14.pt there "
                              "(the CLIP image encoder's weights) or set init_from.clip_path=null")
    for key in ("model", "data", "system", "trainer"):
        if OmegaConf.select(cfg, f"{key}._target_") is None:
            raise ConfigError(f"config group {key} has no _target_")


def _instantiate_dict(cfg, what: str) -> list:
    from hydra.utils import instantiate

    out = []
    if not cfg:
        return out
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{what} config must be a dict of {{name: {{_target_: ...}}}}")
    for name, sub in cfg.items():
        if isinstance(sub, DictConfig) and "_target_" in sub:
            out.append(instantiate(sub))
        elif sub is not None:
            raise ConfigError(f"{what}.{name} has no _target_")
    return out


def instantiate_callbacks(cfg) -> list[L.Callback]:
    return _instantiate_dict(cfg, "callbacks")


def instantiate_loggers(cfg) -> list:
    return _instantiate_dict(cfg, "logger")


def initialize_weights(model, init) -> None:
    """Load ``init_from`` (Zero123(-XL) or an official SyncDreamer checkpoint) into a fresh model."""
    import syncdreamer.checkpoints as ckpts

    fn = getattr(ckpts, INIT_KINDS[init.get("kind", "zero123")], None)
    if fn is None:
        raise ConfigError(f"syncdreamer.checkpoints.{INIT_KINDS[init.kind]} is not available in this checkout")
    log.info("initialising the model from %s (%s)", init.path, init.get("kind", "zero123"))
    fn(model, str(init.path))
    clip_path = init.get("clip_path")
    if clip_path and getattr(model, "clip_image_encoder", None) is not None:
        log.info("loading the CLIP image encoder from %s", clip_path)
        ckpts.load_openai_clip(model, str(clip_path))


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job; returns the final callback metrics (floats) and the run's paths."""
    from hydra.utils import instantiate

    from .callbacks import ConfigInCheckpoint

    check_config(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    datamodule = instantiate(cfg.data)
    if hasattr(datamodule, "check"):
        datamodule.check()
    model = instantiate(cfg.model)
    if OmegaConf.select(cfg, "init_from.path") and not cfg.get("ckpt_path"):
        initialize_weights(model, cfg.init_from)
    warm = OmegaConf.select(cfg, "vae_warmup")
    if OmegaConf.select(cfg, "init_from.path") and warm is not None and int(warm.get("steps", 0)) > 0:
        log.info("vae_warmup skipped: the VAE comes from init_from.path")
    elif warm is not None and int(warm.get("steps", 0)) > 0 and not cfg.get("ckpt_path"):
        from .vae_warmup import warmup_vae

        uids = datamodule.prepare_renders()
        warmup_vae(model, datamodule.root, uids, int(cfg.model.image_size), int(cfg.model.view_num),
                   steps=int(warm.steps), lr=float(warm.lr), batch_size=int(warm.batch_size),
                   kl_weight=float(warm.kl_weight), seed=int(cfg.get("seed") or 0))
    system = instantiate(cfg.system, model=model)
    if getattr(datamodule, "latent_cache", None) is not None:
        datamodule.attach_encoder(model)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    callbacks = instantiate_callbacks(cfg.get("callbacks")) + [ConfigInCheckpoint(resolved)]
    loggers = instantiate_loggers(cfg.get("logger"))
    if not loggers:  # logger=none: Lightning's LR monitor refuses to run without a logger
        from lightning.pytorch.callbacks import LearningRateMonitor

        callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
    for lg in loggers:
        if hasattr(lg, "log_hyperparams"):
            lg.log_hyperparams(resolved)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if cfg.get("float32_matmul_precision"):
        torch.set_float32_matmul_precision(str(cfg.float32_matmul_precision))
    trainer.fit(system, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    metrics["global_step"] = trainer.global_step
    metrics["output_dir"] = str(trainer.default_root_dir)
    ckpt_cb = trainer.checkpoint_callback
    if ckpt_cb is not None and getattr(ckpt_cb, "last_model_path", None):
        metrics["last_ckpt"] = ckpt_cb.last_model_path
    return metrics


def load_model_from_checkpoint(path, map_location="cpu", use_ema: bool = True, strict: bool = True):
    """A trained :class:`~syncdreamer.models.SyncDreamer` from one of our Lightning checkpoints, through the one
    loader :func:`syncdreamer.checkpoints.load_model` (EMA weights when stored and ``use_ema``).

    The model is rebuilt from the config stored in the checkpoint (``checkpoint["config"]["model"]``).
    Returns ``(model, config dict)``.
    """
    from ..checkpoints import load_model

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    model = load_model(path, device=map_location, use_ema=use_ema, strict=strict)
    config = model.checkpoint_info["config"]
    if config is None:
        raise ValueError(f"{path} holds no run config (not a checkpoint of syncdreamer train.py)")
    return model, config
