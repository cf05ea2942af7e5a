"""The training run behind ``train.py``: check the config, build data / model / system / trainer, fit.

Everything is built from the composed Hydra config (``conf/train.yaml``): ``data`` (a LightningDataModule),
``model`` (the ``SyncDreamer`` nn.Module), ``system`` (the LightningModule, given the model), ``trainer``,
``callbacks`` and ``logger`` (dicts of ``_target_`` entries; ``logger=none`` = no logger). The resolved
config goes into every checkpoint and next to the checkpoints (``checkpoints/config.yaml``); Hydra keeps
its own copy under ``.hydra/``. ``ckpt_path`` resumes a run exactly (weights, optimiser, LR schedule,
EMA, global step); ``init_from`` initialises a new run from Zero123(-XL) or an official SyncDreamer checkpoint.

On SLURM the run survives time limits and preemption: :class:`~.callbacks.CheckpointOnSignal` writes
``last.ckpt`` on the warning signal and requeues the job; the requeued attempt (``SLURM_RESTART_COUNT`` > 0,
same run folder) resumes from that ``last.ckpt`` (:func:`requeue_resume_path`) and keeps the CSV log's rows.

Bad input is reported before training (and before the model is built where possible) as
:class:`ConfigError` / :class:`~syncdreamer.data.dataset.DataError` with one clear message.
"""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

__all__ = ["ConfigError", "check_config", "instantiate_callbacks", "instantiate_loggers", "train",
           "load_model_from_checkpoint", "requeue_resume_path", "INIT_KINDS"]

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
    pred = _get(cfg, "model.prediction_type", "eps")
    if pred not in ("eps", "v"):
        raise ConfigError(f"model.prediction_type={pred!r}: use eps (official) or v")
    views = _get(cfg, "system.target_views", 1)
    if not 1 <= int(views) <= int(m.view_num):
        raise ConfigError(f"system.target_views={views} must be between 1 and model.view_num={m.view_num}")
    from ..diffusion.loss import WEIGHTINGS

    weighting = _get(cfg, "system.loss_weighting", "auto")
    if weighting not in ("auto", *WEIGHTINGS):
        raise ConfigError(f"system.loss_weighting={weighting!r}: use one of auto, {', '.join(WEIGHTINGS)}")
    decay, final = _get(cfg, "system.optimizer.decay_steps", None), _get(cfg, "system.optimizer.decay_final", 0.0)
    if decay is not None and (not isinstance(decay, int) or isinstance(decay, bool) or decay < 1):
        raise ConfigError(f"system.optimizer.decay_steps={decay!r} must be a positive step count or null")
    if not isinstance(final, (int, float)) or isinstance(final, bool) or not 0.0 <= final <= 1.0:
        raise ConfigError(f"system.optimizer.decay_final={final!r} must be a number in [0, 1]")
    warm = _get(cfg, "system.optimizer.warmup_steps", 0)
    if decay is not None and isinstance(warm, int) and decay <= warm:  # e.g. experiment=proxy trainer.max_steps=1
        log.warning("system.optimizer.decay_steps=%d is not after warmup_steps=%d: no cosine decay in this run "
                    "(the rate stays at 1 after the warm-up)", decay, warm)
    vae_warmup_args(cfg)
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


def requeue_resume_path(cfg) -> str | None:
    """The run's own ``last.ckpt`` when this is a requeued SLURM attempt (``SLURM_RESTART_COUNT`` > 0) without
    an explicit ``ckpt_path``; None otherwise (also when the earlier attempt saved nothing yet)."""
    if cfg.get("ckpt_path") or int(os.environ.get("SLURM_RESTART_COUNT") or 0) == 0:
        return None
    for sub in (cfg.get("callbacks") or {}).values():
        if isinstance(sub, DictConfig) and str(sub.get("_target_", "")).endswith("ModelCheckpoint") \
                and sub.get("save_last") and sub.get("dirpath"):
            path = Path(str(sub.dirpath)) / "last.ckpt"
            if path.is_file():
                return str(path)
    log.warning("SLURM requeued this job but its run folder holds no last.ckpt: training starts from step 0")
    return None


def keep_csv_rows_before(loggers, step: int) -> None:
    """A resumed run appends to its CSV logs: Lightning's CSVLogger deletes ``metrics.csv`` when it starts, so
    the rows of the steps before ``step`` (the resumed global step) are written back first."""
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.utilities import rank_zero_only

    for lg in loggers if rank_zero_only.rank == 0 else []:
        if not isinstance(lg, CSVLogger):
            continue
        path = Path(lg.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header, rows = list(reader.fieldnames or []), [r for r in reader if int(float(r["step"])) < step]
        writer = lg.experiment  # (deletes the file)
        with path.open("w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=header)
            out.writeheader()
            out.writerows(rows)
        writer.metrics_keys = header


def _install_signal_checkpoint() -> list:
    """Under SLURM: the callback that checkpoints and requeues on the warning signal (installed now, before
    Lightning sets its own SLURM handlers)."""
    if not os.environ.get("SLURM_JOB_ID"):
        return []
    from .callbacks import CheckpointOnSignal

    return [CheckpointOnSignal().install()]


def _with_requeue_resume(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``ckpt_path`` = the run's ``last.ckpt`` on a requeued SLURM attempt (else ``cfg`` itself)."""
    resume = requeue_resume_path(cfg)
    if not resume:
        return cfg
    attempt = os.environ["SLURM_RESTART_COUNT"]
    log.info("SLURM requeued this job (restart %s): resuming from %s", attempt, resume)
    print(f"requeued attempt {attempt}: resuming from {resume}", flush=True)
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.ckpt_path = resume
    return cfg


def vae_warmup_args(cfg: DictConfig) -> dict[str, Any]:
    """``warmup_vae``'s keyword arguments from ``vae_warmup`` (steps 0 when the group is absent): the fit's settings,
    and its seed, ``vae_warmup.seed`` (the VAE's own initial weights and fit, shared by every run with that value on
    the same data) when set, else the run's ``seed`` and the weights the model was built with. Raises
    :class:`ConfigError` (one line; also via check_config) for a value of the wrong kind."""
    warm = OmegaConf.select(cfg, "vae_warmup")
    if warm is None:
        return {"steps": 0}
    own = warm.get("seed")
    if own is not None and (not isinstance(own, int) or isinstance(own, bool) or own < 0):
        raise ConfigError(f"vae_warmup.seed={own!r} must be a non-negative integer, or null to follow the run's seed")
    args: dict[str, Any] = {}
    for key, kind, default in (("steps", int, 0), ("lr", float, 1e-3), ("batch_size", int, 16),
                               ("kl_weight", float, 1e-6), ("equivariance", float, 0.0)):
        value = warm.get(key, default)
        wrong = isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
        if wrong or (kind is int and int(value) != value):
            what = "integer" if kind is int else "number"
            raise ConfigError(f"vae_warmup.{key}={value!r} must be a non-negative {what}")
        args[key] = kind(value)
    args.update({"seed": int(own), "own_init": True} if own is not None else {"seed": int(cfg.get("seed") or 0)})
    return args


def _build_model(cfg: DictConfig, datamodule):
    """The model with its starting weights: ``init_from`` / the VAE warm-up for a new run; for a resumed run the
    checkpoint's weights (so that a latent cache is keyed and built with the trained VAE, as before)."""
    from hydra.utils import instantiate

    model = instantiate(cfg.model)
    if cfg.get("ckpt_path"):
        ckpt = torch.load(str(cfg.ckpt_path), map_location="cpu", mmap=True, weights_only=True)
        model.load_state_dict({k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")})
        saved = OmegaConf.select(OmegaConf.create(ckpt.get("config") or {}), "model.scale_factor")
        if saved is not None and float(saved) != model.scale_factor:  # a latent scale calibrated by the first run
            model.set_scale_factor(float(saved))
            cfg.model.scale_factor = float(saved)
        return model
    if OmegaConf.select(cfg, "init_from.path"):
        initialize_weights(model, cfg.init_from)
    warm, args = OmegaConf.select(cfg, "vae_warmup"), vae_warmup_args(cfg)
    if OmegaConf.select(cfg, "init_from.path") and args["steps"] > 0:
        log.info("vae_warmup skipped: the VAE comes from init_from.path")
    elif args["steps"] > 0:
        from .vae_warmup import warmup_vae

        uids = datamodule.prepare_renders()
        warmup_vae(model, datamodule.root, uids, int(cfg.model.image_size), int(cfg.model.view_num), **args)
        if warm.get("calibrate_scale", False):
            from .vae_warmup import latent_scale

            scale = latent_scale(model.first_stage_model, datamodule.root, uids, int(cfg.model.image_size),
                                 int(cfg.model.view_num))
            log.info("vae warm-up: latent scale %.5f for unit-variance latents (config had %s)", scale,
                     cfg.model.scale_factor)
            model.set_scale_factor(scale)
            cfg.model.scale_factor = scale  # into the run config, so checkpoints rebuild the same model
    return model


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job; returns the final callback metrics (floats) and the run's paths."""
    from hydra.utils import instantiate

    from ..config import instantiate_reporting
    from ..data.dataset import DataError
    from .callbacks import ConfigInCheckpoint

    check_config(cfg)
    cfg = _with_requeue_resume(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    datamodule = instantiate_reporting(cfg.data, (DataError, ConfigError))  # a bad data.* value: one line
    if hasattr(datamodule, "check"):
        datamodule.check()
    model = _build_model(cfg, datamodule)
    system = instantiate(cfg.system, model=model)
    if getattr(datamodule, "latent_cache", None) is not None:
        datamodule.attach_encoder(model)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    callbacks = instantiate_callbacks(cfg.get("callbacks")) + [ConfigInCheckpoint(resolved)]
    loggers = instantiate_loggers(cfg.get("logger"))
    if not loggers:  # logger=none: Lightning's LR monitor refuses to run without a logger
        from lightning.pytorch.callbacks import LearningRateMonitor

        callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
    if cfg.get("ckpt_path"):
        step = torch.load(str(cfg.ckpt_path), map_location="cpu", mmap=True, weights_only=True)["global_step"]
        keep_csv_rows_before(loggers, int(step))
    for lg in loggers:
        if hasattr(lg, "log_hyperparams"):
            lg.log_hyperparams(resolved)
    signal_checkpoint = _install_signal_checkpoint()
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks + signal_checkpoint, logger=loggers or False)
    if cfg.get("float32_matmul_precision"):
        torch.set_float32_matmul_precision(str(cfg.float32_matmul_precision))
    try:
        trainer.fit(system, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    finally:
        for cb in signal_checkpoint:
            cb.uninstall()
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
