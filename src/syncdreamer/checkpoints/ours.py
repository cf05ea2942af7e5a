"""Our own checkpoints (``train.py``'s Lightning files, plain state dicts, safetensors) and the one
:func:`load_model` that generation, the app, evaluation and ``load_model_from_checkpoint`` share.

EMA: ``train.py`` with ``system.ema.decay`` stores the averaged parameters under ``checkpoint["ema"]["shadow"]``
(keyed by SyncDreamer parameter names). :func:`load_model` uses them by default (``use_ema=True``), the
weights the validation samples were drawn with; ``use_ema=False`` loads the raw trained weights. Which ones
were taken is recorded in ``model.checkpoint_info`` (and from there in ``cameras.json``).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from ..config import to_plain
from .official import official_to_model_keys
from .safe_load import CheckpointError, check_and_load, listing, read_checkpoint

__all__ = ["build_model", "load_model", "ema_weights"]


def _model_config_from_extras(extras: dict) -> dict | None:
    cfg = extras.get("config")
    if cfg is None and isinstance(extras.get("hyper_parameters"), Mapping):
        cfg = extras["hyper_parameters"].get("config")
    if isinstance(cfg, Mapping):
        model_cfg = cfg.get("model", cfg)
        return dict(model_cfg) if isinstance(model_cfg, Mapping) else None
    return None


def _strip_system_prefix(sd: dict[str, torch.Tensor], own_keys) -> dict[str, torch.Tensor]:
    """Our LightningModule holds the network as ``model``: drop that prefix (and EMA copies) when needed."""
    own_keys = set(own_keys)
    if any(k in own_keys for k in sd):
        return sd
    for prefix in ("model.", "net.", "module."):
        stripped = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if stripped and any(k in own_keys for k in stripped):
            return stripped
    return sd


def build_model(model_cfg: Mapping | None = None, **overrides) -> nn.Module:
    """Instantiate :class:`~syncdreamer.models.SyncDreamer` from a (Hydra) model config mapping."""
    from ..models import SyncDreamer

    cfg = {k: v for k, v in dict(model_cfg or {}).items() if k != "_target_"}
    cfg.update(overrides)
    cfg = {k: to_plain(v) for k, v in cfg.items()}
    return SyncDreamer(**cfg)


def ema_weights(extras: Mapping, own_keys) -> dict[str, torch.Tensor] | None:
    """The EMA parameters stored beside the state dict (``extras["ema"]["shadow"]``), or None when absent.

    Raises :class:`CheckpointError` when the EMA names parameters the model does not have.
    """
    ema = extras.get("ema")
    shadow = ema.get("shadow") if isinstance(ema, Mapping) else None
    if not isinstance(shadow, Mapping) or not shadow:
        return None
    own_keys = set(own_keys)
    unknown = [k for k in shadow if k not in own_keys]
    if unknown:
        raise CheckpointError(f"the EMA in this checkpoint names {len(unknown)} parameters the model does not "
                              f"have: {listing(unknown)}")
    return {k: v for k, v in shadow.items() if torch.is_tensor(v)}


def load_model(checkpoint: str | Path, model_cfg: Mapping | None = None, device: str | torch.device = "cpu",
               prefer_checkpoint_config: bool = True, use_ema: bool = True, strict: bool = True) -> nn.Module:
    """Build a SyncDreamer and load ``checkpoint`` (official ckpt, our Lightning ckpt, or a state dict).

    The model config is the one stored in our checkpoints when present (``prefer_checkpoint_config``), else
    ``model_cfg`` (e.g. ``conf/model/syncdreamer.yaml`` for the official checkpoint). With ``use_ema`` and an
    EMA in the checkpoint the averaged parameters replace the trained ones. A checkpoint that does not fit
    the config raises :class:`CheckpointError` naming the keys. The returned model (eval mode) carries
    ``model.checkpoint_info``: ``{"path", "weights": "ema" | "raw", "ema_available", "global_step",
    "config"}`` (``config`` = the full run config stored in our checkpoints, else None).
    """
    sd, extras = read_checkpoint(checkpoint)
    stored = _model_config_from_extras(extras)
    cfg = stored if (stored is not None and prefer_checkpoint_config) else model_cfg
    if cfg is None:
        raise CheckpointError(f"{checkpoint}: holds no model config; pass one (e.g. model=syncdreamer)")
    try:
        model = build_model(cfg)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"invalid model config for {checkpoint}: {err}") from None
    own = model.state_dict().keys()
    sd = official_to_model_keys(_strip_system_prefix(sd, own))
    ema = ema_weights(extras, own)
    if use_ema and ema is not None:
        sd = {**sd, **{k: v.to(sd[k].dtype) if k in sd else v for k, v in ema.items()}}
    check_and_load(model, sd, str(checkpoint), strict=strict)
    config = extras.get("config")
    model.checkpoint_info = {
        "path": str(checkpoint), "weights": "ema" if (use_ema and ema is not None) else "raw",
        "ema_available": ema is not None, "global_step": extras.get("global_step"),
        "config": to_plain(config) if isinstance(config, Mapping) else None,
    }
    return model.to(device).eval()
