"""The official files: SyncDreamer's ``syncdreamer-pretrain.ckpt``, Zero123's ``zero123-xl.ckpt`` and OpenAI's
CLIP ``ViT-L-14.pt``, mapped onto our :class:`~syncdreamer.models.SyncDreamer`."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from .safe_load import CheckpointError, check_and_load, read_checkpoint

__all__ = ["VAE_PREFIX", "ZERO123_PREFIXES", "official_to_model_keys", "load_official_checkpoint",
           "init_from_zero123", "load_openai_clip"]

VAE_PREFIX = "first_stage_model."
ZERO123_PREFIXES = ("model.diffusion_model.", VAE_PREFIX, "cc_projection.")


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


def load_official_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> dict:
    """Load ``syncdreamer-pretrain.ckpt`` (official Lightning checkpoint) into ``model``, strictly.

    The camera buffers ``poses``/``Ks``/``azimuth`` and the schedule come from the file, as in the official
    code. Returns ``{"loaded", "missing", "unexpected"}``.
    """
    sd, _ = read_checkpoint(path)
    return check_and_load(model, official_to_model_keys(sd), f"{path}", strict=strict)


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
    return check_and_load(model, sd, f"{path} (Zero123 init)", strict=True, allow_missing_prefixes=new_modules)


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
