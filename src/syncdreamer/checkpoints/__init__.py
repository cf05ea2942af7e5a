"""Loading checkpoints: the official SyncDreamer / Zero123 / OpenAI CLIP files and our own.

One documented entry point per file kind:

* :func:`load_official_checkpoint` — ``syncdreamer-pretrain.ckpt`` (Lightning checkpoint, weights under
  ``"state_dict"`` in the official key layout) into a :class:`~syncdreamer.models.SyncDreamer`, strict.
* :func:`init_from_zero123` — ``zero123-xl.ckpt``: the base UNet, the VAE, ``cc_projection`` and the
  schedule buffers; SyncDreamer's new modules (depth attention, volumes, volume time MLP) keep their init.
* :func:`load_openai_clip` — OpenAI's ``ViT-L-14.pt`` (a TorchScript archive) into the CLIP image encoder.
* :func:`load_model` — build a model from a config and load any of: the official checkpoint, one of our
  Lightning checkpoints (the resolved config is stored inside), or a plain state dict / safetensors file.

Safety: files are read with ``torch.load(weights_only=True)`` or safetensors. Lightning checkpoints carry
a few harmless non-tensor objects (paths, hyper-parameter containers); those globals are replaced by inert
stand-ins that are never executed, so a checkpoint from the internet cannot run code here.

Every problem (missing file, not a checkpoint, missing / unexpected keys, shape mismatch) raises
:class:`CheckpointError` with a one-line message that names the keys.
"""
from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..config import to_plain

__all__ = [
    "CheckpointError",
    "read_checkpoint",
    "official_to_model_keys",
    "load_official_checkpoint",
    "init_from_zero123",
    "load_openai_clip",
    "load_model",
    "build_model",
]

VAE_PREFIX = "first_stage_model."
ZERO123_PREFIXES = ("model.diffusion_model.", VAE_PREFIX, "cc_projection.")
_MAX_LISTED = 8


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with a one-line reason."""


def _listing(keys) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _inert_stub(qualified_name: str) -> type:
    """A class standing in for a non-tensor global of a checkpoint: it records its arguments, runs nothing."""

    class _Stub:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

        def __setstate__(self, state):
            self.state = state

        def __call__(self, *args, **kwargs):  # functions pickled by reference
            return _Stub(*args, **kwargs)

    _Stub.__name__ = _Stub.__qualname__ = f"Stub[{qualified_name}]"
    return _Stub


_SAFE_BUILTINS = {t.__name__: t for t in (dict, list, tuple, set, frozenset, int, float, complex, str, bytes, bool,
                                          bytearray, slice, range)}


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``; unsupported globals become inert stubs (retried one at a time)."""
    stubs: list[tuple[type, str]] = []
    for _ in range(256):
        try:
            with torch.serialization.safe_globals(stubs):
                return torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
            if not match:
                lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
                why = next((ln for ln in lines if "GLOBAL" in ln), lines[0] if lines else type(err).__name__)
                raise CheckpointError(f"{path}: refused, it is not a plain weights file ({why[:200]})") from None
            name = match.group(1)
            if any(n == name for _, n in stubs):
                raise CheckpointError(f"{path}: cannot be read safely (global {name} keeps failing)") from None
            if "." not in name:  # a builtin: harmless container types are allowed as themselves
                builtin = _SAFE_BUILTINS.get(name)
                if builtin is None:
                    raise CheckpointError(f"{path}: refused, it is not a plain weights file (builtin {name})")
                stubs.append((builtin, f"builtins.{name}"))
            else:
                stubs.append((_inert_stub(name), name))
        except Exception as err:  # zip, pickle and torch errors all mean "not a checkpoint"
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{path}: not a PyTorch checkpoint ({first[:200]})") from None
    raise CheckpointError(f"{path}: too many non-tensor objects to read safely")


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint file -> ``(state_dict, extras)``.

    ``.safetensors`` -> (tensors, metadata); a Lightning checkpoint -> (``ckpt["state_dict"]``, the rest of
    the dict, e.g. ``config``, ``global_step``); a plain state dict -> (it, {}).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path} (check the path; official weights go under ckpt/)")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(str(path), "pt") as f:
                meta = dict(f.metadata() or {})
            return load_file(str(path)), meta
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({str(err)[:200]})") from None
    obj = _torch_load(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        sd, extras = dict(obj["state_dict"]), {k: v for k, v in obj.items() if k != "state_dict"}
    elif isinstance(obj, Mapping):
        sd, extras = dict(obj), {}
    else:
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict or Lightning checkpoint")
    if not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise CheckpointError(f"{path}: no tensors under 'state_dict' (not a model checkpoint)")
    return sd, extras


# ----------------------------------------------------------------------------------------------------------
# key mapping
# ----------------------------------------------------------------------------------------------------------
def official_to_model_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official key layout -> ours. Everything is identical except the VAE (diffusers' ``AutoencoderKL``):
    ``first_stage_model.{encoder,decoder,quant_conv,post_quant_conv}.*`` become ``first_stage_model.vae.*``."""
    from ..models.vae import convert_official_vae_state_dict

    out = {k: v for k, v in sd.items() if not k.startswith(VAE_PREFIX)}
    vae = {k[len(VAE_PREFIX):]: v for k, v in sd.items() if k.startswith(VAE_PREFIX)}
    if vae:
        if any(k.startswith("vae.") for k in vae):  # already in our layout
            out.update({VAE_PREFIX + k: v for k, v in vae.items()})
        else:
            vae = {k: v for k, v in vae.items() if not k.startswith("loss.")}  # LDM keeps a loss module
            out.update({VAE_PREFIX + k: v for k, v in convert_official_vae_state_dict(vae).items()})
    return out


def _check_and_load(model: nn.Module, sd: Mapping[str, torch.Tensor], what: str, strict: bool = True,
                    allow_missing_prefixes: tuple[str, ...] = ()) -> dict:
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.startswith(allow_missing_prefixes)]
    unexpected = [k for k in sd if k not in own]
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
        raise CheckpointError(f"{what} does not match the model config; " + "; ".join(parts))
    shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in sd
              if k in own and sd[k].shape != own[k].shape]
    if shapes:
        raise CheckpointError(f"{what} does not match the model config; {len(shapes)} shape mismatches: "
                              f"{_listing(shapes)}")
    usable = {k: v for k, v in sd.items() if k in own}
    model.load_state_dict(usable, strict=False)
    return {"loaded": len(usable), "missing": missing, "unexpected": unexpected}


# ----------------------------------------------------------------------------------------------------------
# official files
# ----------------------------------------------------------------------------------------------------------
def load_official_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> dict:
    """Load ``syncdreamer-pretrain.ckpt`` (official Lightning checkpoint) into ``model``, strictly.

    The camera buffers ``poses``/``Ks``/``azimuth`` and the schedule come from the file, as in the official
    code. Returns ``{"loaded", "missing", "unexpected"}``.
    """
    sd, _ = read_checkpoint(path)
    return _check_and_load(model, official_to_model_keys(sd), f"{path}", strict=strict)


def init_from_zero123(model: nn.Module, path: str | Path) -> dict:
    """Initialise from ``zero123-xl.ckpt``: base UNet, VAE, ``cc_projection`` and schedule buffers.

    Every base-UNet / VAE / cc_projection key of ``model`` must be in the file with the same shape, except
    that an ``input_blocks.0.0.weight`` with fewer input channels is zero-padded (as the official training
    script does). SyncDreamer's new modules (``middle_conditions``, ``output_conditions``, ``spatial_volume``,
    ``time_embed``) and CLIP keep their initialisation; Zero123's ``cond_stage_model`` is ignored.
    """
    sd, _ = read_checkpoint(path)
    sd = official_to_model_keys({k: v for k, v in sd.items()
                                 if k.startswith(ZERO123_PREFIXES) or k in _schedule_names()})
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if k in own}
    key = "model.diffusion_model.input_blocks.0.0.weight"
    if key in sd and key in own and sd[key].shape != own[key].shape:
        src, dst = sd[key], own[key]
        if src.shape[0] == dst.shape[0] and src.shape[1] < dst.shape[1] and src.shape[2:] == dst.shape[2:]:
            padded = torch.zeros_like(dst)
            padded[:, :src.shape[1]] = src
            sd[key] = padded
    new_modules = ("model.diffusion_model.middle_conditions.", "model.diffusion_model.output_conditions.",
                   "spatial_volume.", "time_embed.", "clip_image_encoder.", "poses", "Ks", "azimuth")
    return _check_and_load(model, sd, f"{path} (Zero123 init)", strict=True, allow_missing_prefixes=new_modules)


def _schedule_names() -> tuple[str, ...]:
    from ..models.schedule import SCHEDULE_BUFFERS

    return SCHEDULE_BUFFERS


def load_openai_clip(model: nn.Module, path: str | Path) -> None:
    """Load OpenAI's ``ViT-L-14.pt`` into ``model.clip_image_encoder`` (TorchScript read without executing it)."""
    encoder = getattr(model, "clip_image_encoder", None)
    if encoder is None:
        raise CheckpointError("this model has no CLIP image encoder (model.clip is null in the config)")
    try:
        encoder.load_openai_checkpoint(path)
    except FileNotFoundError as err:
        raise CheckpointError(str(err)) from None
    except (ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: {str(err).splitlines()[0]}") from None


# ----------------------------------------------------------------------------------------------------------
# our own checkpoints
# ----------------------------------------------------------------------------------------------------------
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


def load_model(checkpoint: str | Path, model_cfg: Mapping | None = None, device: str | torch.device = "cpu",
               prefer_checkpoint_config: bool = True) -> nn.Module:
    """Build a SyncDreamer and load ``checkpoint`` (official ckpt, our Lightning ckpt, or a state dict).

    The model config is the one stored in our checkpoints when present (``prefer_checkpoint_config``), else
    ``model_cfg`` (e.g. ``conf/model/syncdreamer.yaml`` for the official checkpoint). A checkpoint that does
    not fit the config raises :class:`CheckpointError` naming the keys.
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
    sd = official_to_model_keys(_strip_system_prefix(sd, model.state_dict().keys()))
    _check_and_load(model, sd, str(checkpoint), strict=True)
    return model.to(device).eval()
