"""The KL-regularised autoencoder ("first stage") of SyncDreamer / Zero123 / Stable Diffusion 1.x.

The network itself is diffusers' :class:`~diffusers.AutoencoderKL`, configured from the numbers of the
official LDM ``ddconfig`` (``ch``, ``ch_mult``, ``num_res_blocks``, ``z_channels``, ...). This module adds
the SyncDreamer conventions on top of it:

* ``encode`` returns the *scaled* latent ``(mean + std * noise) * scale_factor`` (SyncDreamer samples the
  posterior everywhere, also at inference), ``decode`` undoes the scale first;
* the official LDM checkpoint keys (``encoder.down.0.block.0.conv1.weight``, ...) are mapped onto our
  state-dict keys by :func:`convert_official_vae_state_dict`, which reuses diffusers' own LDM converter.

Shapes: images are ``(B, in_channels, H, W)`` in [-1, 1]; latents are ``(B, z_channels, H/f, W/f)`` with
``f = 2 ** (len(ch_mult) - 1)`` (8 for the official model).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

try:  # diffusers >= 0.27
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint as _diffusers_convert_ldm_vae
except ImportError as _err:  # pragma: no cover - depends on the installed diffusers
    raise ImportError("syncdreamer.models.vae needs diffusers >= 0.27 "
                      "(diffusers.loaders.single_file_utils.convert_ldm_vae_checkpoint)") from _err
from diffusers import AutoencoderKL

__all__ = ["KLAutoencoder", "convert_official_vae_state_dict", "OFFICIAL_VAE_PREFIX"]

#: Prefix of the VAE keys inside the official SyncDreamer / Zero123 checkpoints.
OFFICIAL_VAE_PREFIX = "first_stage_model."

#: Name of the attribute that holds the diffusers model (so our keys are ``vae.<diffusers key>``).
_INNER = "vae"

# The official posterior clamps logvar to this range (ldm DiagonalGaussianDistribution).
_LOGVAR_MIN, _LOGVAR_MAX = -30.0, 20.0


class KLAutoencoder(nn.Module):
    """KL-f8 autoencoder with the official LDM structure, built on diffusers' ``AutoencoderKL``.

    Args:
        ch: base channel width (official 128).
        ch_mult: channel multiplier per resolution level (official (1, 2, 4, 4)); the latent is
            downsampled by ``2 ** (len(ch_mult) - 1)``.
        num_res_blocks: residual blocks per encoder level (the decoder has ``num_res_blocks + 1``).
        z_channels: latent channels (official 4).
        embed_dim: channels after ``quant_conv`` (official 4); must equal ``z_channels`` here.
        in_channels: image channels in (3).
        out_ch: image channels out (3).
        scale_factor: latent scale (official 0.18215), applied in :meth:`encode` and undone in :meth:`decode`.
        norm_num_groups: GroupNorm groups (32; the GroupNorm eps is 1e-6 inside diffusers' blocks).
        resolution: nominal image size (256); only used as the tile size when tiling is enabled.
        double_z: must be True (the encoder predicts mean and logvar).
        attn_resolutions: must be empty (the official VAE has attention only in the mid blocks).

    Submodule ``vae`` is the diffusers model; ``state_dict()`` keys are ``vae.<diffusers key>``.
    """

    def __init__(self, ch: int = 128, ch_mult: Sequence[int] = (1, 2, 4, 4), num_res_blocks: int = 2,
                 z_channels: int = 4, embed_dim: int = 4, in_channels: int = 3, out_ch: int = 3,
                 scale_factor: float = 0.18215, norm_num_groups: int = 32, resolution: int = 256,
                 double_z: bool = True, attn_resolutions: Sequence[int] = ()):
        super().__init__()
        ch_mult = tuple(int(m) for m in ch_mult)
        if not ch_mult or ch <= 0 or any(m <= 0 for m in ch_mult):
            raise ValueError(f"KLAutoencoder: ch ({ch}) and every ch_mult entry {ch_mult} must be positive")
        if embed_dim != z_channels:
            raise ValueError(f"KLAutoencoder: embed_dim ({embed_dim}) must equal z_channels ({z_channels}) "
                             "(diffusers' AutoencoderKL has a square quant_conv)")
        if not double_z:
            raise ValueError("KLAutoencoder: double_z=False is not supported (the KL posterior needs mean and logvar)")
        if len(tuple(attn_resolutions)) > 0:
            raise ValueError(f"KLAutoencoder: attn_resolutions must be empty, got {tuple(attn_resolutions)} "
                             "(only the mid-block attention of the official VAE is supported)")
        widths = [ch * m for m in ch_mult]
        bad = [w for w in widths if w % norm_num_groups]
        if bad:
            raise ValueError(f"KLAutoencoder: channel widths {widths} must be divisible by norm_num_groups "
                             f"({norm_num_groups})")
        if scale_factor <= 0:
            raise ValueError(f"KLAutoencoder: scale_factor must be positive, got {scale_factor}")
        self.ch, self.ch_mult, self.num_res_blocks = int(ch), ch_mult, int(num_res_blocks)
        self.z_channels, self.in_channels, self.out_ch = int(z_channels), int(in_channels), int(out_ch)
        self.scale_factor = float(scale_factor)
        self.downsample_factor = 2 ** (len(ch_mult) - 1)
        self.vae = AutoencoderKL(
            in_channels=in_channels,
            out_channels=out_ch,
            down_block_types=("DownEncoderBlock2D",) * len(ch_mult),
            up_block_types=("UpDecoderBlock2D",) * len(ch_mult),
            block_out_channels=tuple(widths),
            layers_per_block=num_res_blocks,
            act_fn="silu",
            latent_channels=z_channels,
            norm_num_groups=norm_num_groups,
            sample_size=resolution,
            scaling_factor=scale_factor,
            force_upcast=False,
            use_quant_conv=True,
            use_post_quant_conv=True,
            mid_block_add_attention=True,
        )

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_ddconfig(cls, ddconfig: Mapping, embed_dim: int, scale_factor: float = 0.18215) -> "KLAutoencoder":
        """Build from an official LDM ``ddconfig`` dict (keys ch, ch_mult, num_res_blocks, z_channels,
        in_channels, out_ch, resolution, double_z, attn_resolutions; dropout must be 0)."""
        if float(ddconfig.get("dropout", 0.0)) != 0.0:
            raise ValueError(f"KLAutoencoder: ddconfig dropout must be 0, got {ddconfig['dropout']}")
        return cls(ch=ddconfig["ch"], ch_mult=ddconfig["ch_mult"], num_res_blocks=ddconfig["num_res_blocks"],
                   z_channels=ddconfig["z_channels"], embed_dim=embed_dim, in_channels=ddconfig["in_channels"],
                   out_ch=ddconfig["out_ch"], scale_factor=scale_factor,
                   resolution=ddconfig.get("resolution", 256), double_z=ddconfig.get("double_z", True),
                   attn_resolutions=ddconfig.get("attn_resolutions", ()))

    # ------------------------------------------------------------------ memory options
    def enable_slicing(self, enabled: bool = True) -> None:
        """Encode/decode a batch one sample at a time (same numbers, less peak memory)."""
        self.vae.enable_slicing() if enabled else self.vae.disable_slicing()

    def enable_tiling(self, enabled: bool = True) -> None:
        """Encode/decode images larger than ``resolution`` in overlapping tiles (blended; numbers change)."""
        self.vae.enable_tiling() if enabled else self.vae.disable_tiling()

    # ------------------------------------------------------------------ forward passes
    def _check_image(self, x: torch.Tensor) -> None:
        if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"KLAutoencoder: expected an image batch (B,{self.in_channels},H,W), "
                             f"got {tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
        f = self.downsample_factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"KLAutoencoder: image size {tuple(x.shape[-2:])} must be divisible by {f}")

    def moments(self, x: torch.Tensor) -> torch.Tensor:
        """``quant_conv(encoder(x))``: (B, in_channels, H, W) -> (B, 2*z_channels, H/f, W/f) = [mean, logvar]
        (logvar not clamped)."""
        self._check_image(x)
        return self.vae.encode(x).latent_dist.parameters

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Posterior of x: ``(mean, logvar, std)``, each (B, z_channels, H/f, W/f); logvar clamped to [-30, 20]."""
        mean, logvar = torch.chunk(self.moments(x), 2, dim=1)
        logvar = logvar.clamp(_LOGVAR_MIN, _LOGVAR_MAX)
        return mean, logvar, torch.exp(0.5 * logvar)

    def encode(self, x: torch.Tensor, sample: bool = True, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled latent, SyncDreamer's ``encode_first_stage``.

        Args:
            x: (B, in_channels, H, W) image in [-1, 1].
            sample: draw ``mean + std * noise`` (official behaviour everywhere); False gives the mean.
            noise: (B, z_channels, H/f, W/f) standard normal noise; drawn with ``torch.randn`` when None.
        Returns:
            (B, z_channels, H/f, W/f) latent multiplied by ``scale_factor``.
        """
        mean, _, std = self.posterior(x)
        if not sample:
            if noise is not None:
                raise ValueError("KLAutoencoder.encode: noise given with sample=False")
            return mean * self.scale_factor
        if noise is None:
            noise = torch.randn_like(mean)
        elif noise.shape != mean.shape:
            raise ValueError(f"KLAutoencoder.encode: noise shape {tuple(noise.shape)} != latent shape "
                             f"{tuple(mean.shape)}")
        return (mean + std * noise.to(mean)) * self.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Image from a *scaled* latent: (B, z_channels, h, w) -> (B, out_ch, h*f, w*f), not clamped."""
        if not torch.is_tensor(z) or z.ndim != 4 or z.shape[1] != self.z_channels:
            raise ValueError(f"KLAutoencoder.decode: expected a latent (B,{self.z_channels},h,w), "
                             f"got {tuple(z.shape) if torch.is_tensor(z) else type(z).__name__}")
        return self.vae.decode(z / self.scale_factor).sample

    def forward(self, x: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """Reconstruction ``decode(encode(x, sample))``: (B, in_channels, H, W) -> (B, out_ch, H, W)."""
        return self.decode(self.encode(x, sample=sample))

    # ------------------------------------------------------------------ official checkpoints
    def load_official_state_dict(self, sd: Mapping[str, torch.Tensor], strict: bool = True):
        """Load official LDM VAE weights (keys ``encoder.*``, ``decoder.*``, ``quant_conv.*``,
        ``post_quant_conv.*``, without the ``first_stage_model.`` prefix).

        With ``strict`` a missing key, an unexpected key or a shape mismatch raises a ValueError naming them.
        Returns the ``(missing, unexpected)`` key lists (in our naming, resp. official naming).
        """
        converted, unused = _convert(sd, num_levels=len(self.ch_mult))
        own = self.state_dict()
        missing = sorted(k for k in own if k not in converted)
        unexpected = sorted(unused + [k for k in converted if k not in own])
        shapes = sorted(f"{k} {tuple(v.shape)} vs ours {tuple(own[k].shape)}" for k, v in converted.items()
                        if k in own and tuple(v.shape) != tuple(own[k].shape))
        if shapes:
            raise ValueError(f"KLAutoencoder: shape mismatch for {len(shapes)} keys: {'; '.join(shapes[:8])}")
        if strict and (missing or unexpected):
            raise ValueError(f"KLAutoencoder: {len(missing)} missing keys {missing[:8]}, "
                             f"{len(unexpected)} unexpected keys {unexpected[:8]}")
        self.load_state_dict({k: v for k, v in converted.items() if k in own}, strict=False)
        return missing, unexpected


def _convert(sd: Mapping[str, torch.Tensor], num_levels: int) -> tuple[dict, list]:
    """Map official keys to ours key by key with diffusers' converter; returns (converted, unused keys)."""
    prefixed = [k for k in sd if any(k.startswith(p) for p in (OFFICIAL_VAE_PREFIX, "vae."))]
    if prefixed:
        raise ValueError(f"convert_official_vae_state_dict: strip the checkpoint prefix first "
                         f"(e.g. {prefixed[0]!r}); expected keys like 'encoder.conv_in.weight'")
    config = {"down_block_types": [None] * num_levels, "up_block_types": [None] * num_levels}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if not torch.is_tensor(value):
            raise ValueError(f"convert_official_vae_state_dict: value of {key!r} is a "
                             f"{type(value).__name__}, not a tensor")
        groups.setdefault(key.rpartition(".")[0], {})[key] = value
    out: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    # One module (weight + bias) at a time: diffusers' converter silently drops keys it does not know,
    # which we must report; it only renames module paths, so the leaf name (weight/bias) identifies a key.
    for part in groups.values():
        try:
            got = {k: v for k, v in _diffusers_convert_ldm_vae(part, config).items() if v is not None}
        except KeyError:  # e.g. an upsample weight without its bias
            got = {}
        by_leaf = {k.rpartition(".")[2]: (k, v) for k, v in got.items()}
        for key in part:
            leaf = key.rpartition(".")[2]
            if leaf not in by_leaf:
                unused.append(key)
                continue
            new_key, new_value = by_leaf.pop(leaf)
            new_key = f"{_INNER}.{new_key}"
            if new_key in out:
                raise ValueError(f"convert_official_vae_state_dict: two keys map to {new_key!r}")
            out[new_key] = new_value
    return out, unused


def convert_official_vae_state_dict(sd: Mapping[str, torch.Tensor], num_levels: int | None = None) -> dict:
    """Official LDM VAE keys -> :class:`KLAutoencoder` state-dict keys (``vae.<diffusers key>``).

    Args:
        sd: official keys without the ``first_stage_model.`` prefix (``encoder.*``, ``decoder.*``,
            ``quant_conv.*``, ``post_quant_conv.*``); tensors on any device (``meta`` included).
            The 1x1-conv attention weights become linear weights (views of the inputs, nothing copied).
        num_levels: number of resolution levels (``len(ch_mult)``); inferred from the keys when None.
    Raises:
        ValueError: on prefixed keys, non-tensor values or keys the converter does not know.
    """
    if num_levels is None:
        levels = {int(k.split(".")[2]) for k in sd if k.startswith(("encoder.down.", "decoder.up."))
                  and len(k.split(".")) > 2 and k.split(".")[2].isdigit()}
        num_levels = max(levels) + 1 if levels else 1
    out, unused = _convert(sd, num_levels)
    if unused:
        raise ValueError(f"convert_official_vae_state_dict: {len(unused)} keys are not official VAE keys: "
                         f"{sorted(unused)[:8]}")
    return out
