"""The SyncDreamer model: Zero123 UNet + depth-wise attention + spatial/frustum volumes + VAE + CLIP.

The module tree mirrors the official ``SyncMultiviewDiffusion`` so that ``state_dict()`` keys are the
official ones (``model.diffusion_model.*``, ``cc_projection.*``, ``time_embed.*``, ``spatial_volume.*``,
``clip_image_encoder.model.*``, the camera and schedule buffers); only the VAE, which reuses diffusers'
``AutoencoderKL``, needs a key conversion (see :mod:`syncdreamer.checkpoints`).

Shapes: B objects, N views, latents (B, N, 4, h, w) with h = image_size / 8; view i of the rig is at
azimuth ``i * 360 / N`` and the fixed elevation; the input view sits at view 0's azimuth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from .. import cameras
from ..config import dataclass_from
from .layers import timestep_embedding
from .precision import PRECISIONS, autocast_or_null, cast_weights, to_channels_last
from .schedule import register_schedule
from .unet import MultiviewUNet, UNetConfig
from .volume import SpatialVolumeNet, VolumeConfig


@dataclass
class Condition:
    """Everything the denoiser needs from the input view, computed once per object.

    ``input_latent`` (B, 4, h, w) is the *scaled* VAE posterior sample (as ``encode_first_stage`` returns);
    ``clip_embed`` (B, 1, 768) the raw CLIP image embedding; ``elevation`` (B,) the input elevation in radians.
    ``view_embed`` (B, N, 4) and ``clip_tokens`` (B, N, 768) are filled by :meth:`SyncDreamer.complete`.
    """

    input_latent: torch.Tensor
    clip_embed: torch.Tensor
    elevation: torch.Tensor
    view_embed: torch.Tensor | None = None
    clip_tokens: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.input_latent.shape[0]


class UNetWrapper(nn.Module):
    """Concat + CFG + condition dropping around the UNet (official name ``model``, UNet at ``diffusion_model``).

    forward(x (M, 4, h, w) noisy target views, t (M,), clip_tokens (M, 1, 768), frustum {w: (M, ...)},
    concat (M, 4, h, w) scaled input latent) -> eps (M, 4, h, w). The concat latent is divided by the VAE
    scale factor (Zero123 was trained on unscaled latents) and stacked after x: 8 UNet input channels.
    """

    def __init__(self, unet: MultiviewUNet, scale_factor: float = 0.18215, drop_all: float = 0.0,
                 drop_concat: float = 0.0, drop_volume: float = 0.0, drop_clip: float = 0.0):
        super().__init__()
        self.diffusion_model = unet
        self.scale_factor = scale_factor
        self.drop_rates = dict(all=drop_all, concat=drop_concat, volume=drop_volume, clip=drop_clip)
        if sum(self.drop_rates.values()) > 1:
            raise ValueError(f"condition drop rates sum to more than 1: {self.drop_rates}")

    def _drop_masks(self, m: int, device) -> dict[str, torch.Tensor]:
        """Official scheme: r ~ U(0,1); r <= all drops everything, the next bands drop concat / volume / clip."""
        r = torch.rand(m, device=device)
        edges, lo = {}, 0.0
        for name in ("all", "concat", "volume", "clip"):
            edges[name] = (r > lo) & (r <= lo + self.drop_rates[name]) if name != "all" else r <= self.drop_rates[name]
            lo += self.drop_rates[name]
        keep = {k: 1.0 - (edges[k] | edges["all"]).float() for k in ("concat", "volume", "clip")}
        return keep

    def forward(self, x, t, clip_tokens, frustum, concat, drop_conditions: bool = False):
        if drop_conditions and any(self.drop_rates.values()):
            keep = self._drop_masks(x.shape[0], x.device)
            view = lambda m, ref: m.view(-1, *([1] * (ref.dim() - 1))).to(ref.dtype)  # noqa: E731
            clip_tokens = clip_tokens * view(keep["clip"], clip_tokens)
            concat = concat * view(keep["concat"], concat)
            frustum = {k: v * view(keep["volume"], v) for k, v in frustum.items()} if frustum else frustum
        h = torch.cat([x, concat / self.scale_factor], 1)
        return self.diffusion_model(h, t, clip_tokens, frustum)

    def forward_cfg(self, x, t, clip_tokens, frustum, concat, cfg_scale: float):
        """Classifier-free guidance with both branches in one UNet call.

        The unconditional branch zeros the projected CLIP token, the frustum features (all scales) and the
        concat latent; eps = eps_u + s (eps_c - eps_u).
        """
        x2, t2 = torch.cat([x, x]), torch.cat([t, t])
        tokens = torch.cat([clip_tokens, torch.zeros_like(clip_tokens)])
        concat2 = torch.cat([concat, torch.zeros_like(concat)])
        frustum2 = {k: torch.cat([v, torch.zeros_like(v)]) for k, v in frustum.items()} if frustum else frustum
        eps_c, eps_u = self.forward(x2, t2, tokens, frustum2, concat2).chunk(2)
        return eps_u + cfg_scale * (eps_c - eps_u)


class SyncDreamer(nn.Module):
    """The whole SyncDreamer network (plain ``nn.Module``; training lives in :mod:`syncdreamer.systems`).

    Every structural number is an argument; the defaults are the official model (``conf/model/syncdreamer.yaml``).
    ``volume_resolution`` is V, ``frustum_depth`` is D. ``vae`` / ``clip`` are keyword dicts for
    :class:`~syncdreamer.models.vae.KLAutoencoder` / :class:`~syncdreamer.models.clip.CLIPImageEmbedder`, or
    ``None`` to build the denoiser only (the golden ``denoiser_tiny`` fixture holds exactly that part).
    ``prediction_type``: what the UNet outputs, ``eps`` (official) or ``v`` (``v = sqrt(ac) eps - sqrt(1-ac) x0``,
    for training from scratch: at high t an eps-network must reproduce x_t almost exactly to say anything about
    x0, a v-network does not). Either way every method here returns eps, so samplers and guidance are unchanged.
    """

    def __init__(self, view_num: int = 16, image_size: int = 256, volume_resolution: int = 32,
                 frustum_depth: int = 48, elevation_deg: float = 30.0, camera_distance: float = 1.5,
                 focal: float | None = None, latent_channels: int = 4, clip_dim: int = 768, viewpoint_dim: int = 4,
                 time_embed_dim: int = 256, scale_factor: float = 0.18215, unet: dict | UNetConfig | None = None,
                 volume: dict | None = None, vae: dict | None = None, clip: dict | None = None,
                 schedule: dict | None = None, condition_drop: dict | None = None, use_checkpoint: bool = False,
                 attention_backend: str = "sdpa", prediction_type: str = "eps"):
        super().__init__()
        if prediction_type not in ("eps", "v"):
            raise ValueError(f"prediction_type={prediction_type!r}: use eps (official) or v")
        self.prediction_type = prediction_type
        if image_size % 8:
            raise ValueError(f"image_size={image_size} must be divisible by 8 (the VAE downsamples by 8)")
        self.view_num, self.image_size, self.latent_size = view_num, image_size, image_size // 8
        self.latent_channels, self.clip_dim, self.viewpoint_dim = latent_channels, clip_dim, viewpoint_dim
        self.time_embed_dim, self.scale_factor = time_embed_dim, scale_factor
        self.elevation_target = math.radians(elevation_deg)

        unet_cfg = dataclass_from(UNetConfig, unet)
        unet_cfg.use_checkpoint = unet_cfg.use_checkpoint or use_checkpoint
        unet_cfg.attention_backend = attention_backend
        unet_cfg.context_dim = clip_dim
        unet_cfg.out_channels = latent_channels
        unet_cfg.in_channels = 2 * latent_channels
        vol = dict(volume or {})
        vol.update(view_num=view_num, latent_channels=latent_channels, image_size=image_size,
                   latent_size=self.latent_size, volume_resolution=volume_resolution, frustum_depth=frustum_depth,
                   origin_depth=camera_distance, time_dim=time_embed_dim, view_dim=viewpoint_dim)
        vol_cfg = dataclass_from(VolumeConfig, vol)
        unet_cfg.volume_dims = tuple(vol_cfg.frustum_dims)
        self.unet_config, self.volume_config = unet_cfg, vol_cfg

        self.model = UNetWrapper(MultiviewUNet(unet_cfg), scale_factor, **dict(condition_drop or {}))
        self.cc_projection = nn.Linear(clip_dim + viewpoint_dim, clip_dim)
        with torch.no_grad():  # Zero123's init: identity on the CLIP part, zero on the view part
            self.cc_projection.weight.zero_()
            self.cc_projection.weight[:, :clip_dim].copy_(torch.eye(clip_dim))
            self.cc_projection.bias.zero_()
        self.time_embed = nn.Sequential(nn.Linear(time_embed_dim, time_embed_dim), nn.SiLU(),
                                        nn.Linear(time_embed_dim, time_embed_dim))
        self.spatial_volume = SpatialVolumeNet(vol_cfg)

        self.first_stage_model = None
        if vae is not None:
            from .vae import KLAutoencoder

            self.first_stage_model = KLAutoencoder(**{"scale_factor": scale_factor, **dict(vae)})
        self.clip_image_encoder = None
        if clip is not None:
            from .clip import CLIPImageEmbedder

            self.clip_image_encoder = CLIPImageEmbedder(**dict(clip))

        register_schedule(self, **dict(schedule or {}))
        self.num_timesteps = self.betas.shape[0]
        focal = focal if focal is not None else cameras.focal_from_lens(35.0, 32.0, image_size)
        rig = cameras.make_rig(view_num, elevation_deg, camera_distance, image_size, focal).torch()
        self.register_buffer("poses", rig["poses"])
        self.register_buffer("Ks", rig["Ks"])
        self.register_buffer("azimuth", rig["azimuth"])
        self.precision = "fp32"
        self.channels_last = False

    # ------------------------------------------------------------------------------------------------------
    # precision
    # ------------------------------------------------------------------------------------------------------
    def denoiser_modules(self) -> list[nn.Module]:
        """The networks called at every sampling step (UNet + depth attention, volumes, time MLP, cc_projection)."""
        return [self.model, self.spatial_volume, self.time_embed, self.cc_projection]

    def set_scale_factor(self, scale_factor: float) -> "SyncDreamer":
        """Set the latent scale everywhere it is used (VAE encode/decode, the UNet's concat input)."""
        if not scale_factor > 0:
            raise ValueError(f"scale_factor must be positive, got {scale_factor}")
        self.scale_factor = self.model.scale_factor = float(scale_factor)
        if self.first_stage_model is not None:
            self.first_stage_model.scale_factor = float(scale_factor)
        return self

    def set_precision(self, precision: str = "fp32", channels_last: bool | None = None) -> "SyncDreamer":
        """Run :meth:`predict_eps` in ``fp32`` | ``bf16`` | ``fp16``: the denoiser's matmul/conv weights are cast
        once to that dtype (norm layers, buffers and geometry stay float32) and the networks run under autocast.
        ``channels_last`` stores the conv weights NHWC (``False``: the standard NCHW layout); ``None`` picks NHWC
        for the reduced precisions, where oneDNN's and cuDNN's NHWC kernels are the fast ones (full model, bf16 on
        an avx512_bf16 CPU: 0.37x the fp32 step with NHWC, 0.53x without; README, issue 14), and NCHW for fp32.
        The VAE and CLIP are left alone. Returns ``self``."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if channels_last is None:
            channels_last = precision != "fp32"
        for module in self.denoiser_modules():
            cast_weights(module, PRECISIONS[precision])
            to_channels_last(module, channels_last)
        self.channels_last = channels_last
        self.precision = precision
        return self

    # ------------------------------------------------------------------------------------------------------
    # parameter groups
    # ------------------------------------------------------------------------------------------------------
    def frozen_modules(self) -> list[nn.Module]:
        """Modules never trained and kept in eval mode: the VAE and CLIP (``cc_projection``, a plain Linear
        without a train / eval difference, is frozen unless ``finetune_unet``; :meth:`freeze_for_training`)."""
        return [m for m in (self.first_stage_model, self.clip_image_encoder) if m is not None]

    def trainable_parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"depth_attention": [...], "volume": [...]}``: the only parameters SyncDreamer optimises
        (the volume group = ``spatial_volume`` + volume ``time_embed``, trained at 10x the learning rate)."""
        return {"depth_attention": self.model.diffusion_model.depth_attention_parameters(),
                "volume": list(self.spatial_volume.parameters()) + list(self.time_embed.parameters())}

    def base_parameters(self) -> list[nn.Parameter]:
        """The base Zero123 network's parameters (UNet + ``cc_projection``), trained with ``finetune_unet``."""
        return list(self.model.diffusion_model.parameters()) + list(self.cc_projection.parameters())

    def freeze_for_training(self, finetune_unet: bool = False) -> None:
        """``requires_grad=False`` on everything outside :meth:`trainable_parameter_groups` (so no gradients
        are computed for the ~860 M frozen parameters, unlike the official code). ``finetune_unet`` also trains
        the base Zero123 network as Zero123 trained it: the UNet and ``cc_projection``, the only way the target
        view's pose reaches the UNet when depth-wise attention is off (and the way it learns one from scratch)."""
        trainable = {id(p) for g in self.trainable_parameter_groups().values() for p in g}
        if finetune_unet:
            trainable |= {id(p) for p in self.base_parameters()}
        for p in self.parameters():
            p.requires_grad_(id(p) in trainable)
        for m in self.frozen_modules():
            m.eval()

    # ------------------------------------------------------------------------------------------------------
    # conditioning
    # ------------------------------------------------------------------------------------------------------
    def view_embedding(self, elevation: torch.Tensor) -> torch.Tensor:
        """elevation (B,) input elevation in radians -> (B, N, 4) ``[d_e, sin d_a, cos d_a, 0]``.

        Zero123's convention: elevations are negated, so ``d_e = (-target) - (-input) = input - target``;
        ``d_a = azimuth[i] - azimuth[0]`` (the input view is at view 0's azimuth).
        """
        elevation = elevation.reshape(-1).to(self.azimuth.dtype)
        B, N = elevation.shape[0], self.azimuth.shape[0]
        d_e = (-self.elevation_target - (-elevation)).unsqueeze(1).expand(B, N)
        d_a = (self.azimuth - self.azimuth[0]).unsqueeze(0).expand(B, N)
        return torch.stack([d_e, torch.sin(d_a), torch.cos(d_a), torch.zeros_like(d_a)], -1)

    def embed_time(self, t: torch.Tensor) -> torch.Tensor:
        """t (B,) integer timesteps -> (B, time_embed_dim) volume time embedding."""
        return self.time_embed(timestep_embedding(t, self.time_embed_dim))

    def project_clip(self, clip_embed: torch.Tensor, view_embed: torch.Tensor) -> torch.Tensor:
        """clip_embed (B, 1, C), view_embed (B, N, 4) -> per-view context tokens (B, N, C) via ``cc_projection``."""
        B, N, _ = view_embed.shape
        return self.cc_projection(torch.cat([clip_embed.expand(B, N, -1), view_embed.to(clip_embed.dtype)], -1))

    def complete(self, cond: Condition) -> Condition:
        """Fill the per-object caches (view embedding, projected CLIP tokens) once."""
        if cond.view_embed is None:
            cond.view_embed = self.view_embedding(cond.elevation)
        if cond.clip_tokens is None:
            with autocast_or_null(cond.clip_embed.device, PRECISIONS[self.precision]):
                cond.clip_tokens = self.project_clip(cond.clip_embed, cond.view_embed).float()
        return cond

    def _require(self, name: str):
        module = getattr(self, name)
        if module is None:
            raise RuntimeError(f"this SyncDreamer was built without `{name}`; pass its config (model.vae / model.clip)")
        return module

    def encode_first_stage(self, images: torch.Tensor, sample: bool = True, noise: torch.Tensor | None = None):
        """images (B, 3, H, W) in [-1, 1] -> scaled latents (B, 4, H/8, W/8) (posterior sample x 0.18215)."""
        return self._require("first_stage_model").encode(images, sample=sample, noise=noise)

    def decode_first_stage(self, latents: torch.Tensor) -> torch.Tensor:
        """scaled latents (..., 4, h, w) -> images (..., 3, 8h, 8w), not clamped."""
        lead = latents.shape[:-3]
        out = self._require("first_stage_model").decode(latents.reshape(-1, *latents.shape[-3:]))
        return out.reshape(*lead, *out.shape[-3:])

    def encode_clip(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] -> raw CLIP embedding (B, 1, clip_dim)."""
        return self._require("clip_image_encoder")(images)

    def prepare_condition(self, input_image: torch.Tensor, elevation: torch.Tensor, sample: bool = True,
                          noise: torch.Tensor | None = None) -> Condition:
        """input_image (B, 3, H, W) in [-1, 1], elevation (B,) radians -> :class:`Condition` (with caches)."""
        cond = Condition(self.encode_first_stage(input_image, sample=sample, noise=noise),
                         self.encode_clip(input_image), elevation.reshape(-1).float())
        return self.complete(cond)

    # ------------------------------------------------------------------------------------------------------
    # denoising
    # ------------------------------------------------------------------------------------------------------
    def spatial_volume_for(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition,
                           t_embed: torch.Tensor | None = None) -> torch.Tensor:
        """x_t (B, N, 4, h, w) -> spatial volume (B, C, V, V, V) shared by every view (and both CFG branches).

        ``None`` when depth-wise attention is off (the Zero123 baseline): nothing would read the volume.
        """
        if not self.unet_config.depth_attention:
            return None
        cond = self.complete(cond)
        t_embed = self.embed_time(t) if t_embed is None else t_embed
        return self.spatial_volume.construct_spatial_volume(x_t, t_embed, cond.view_embed, self.poses, self.Ks)

    def target_view_inputs(self, spatial_volume: torch.Tensor | None, t_embed: torch.Tensor, cond: Condition,
                           target_indices: torch.Tensor):
        """Frustum features, context tokens (B*TN, 1, C) and concat latents (B*TN, 4, h, w) of target views."""
        B, TN = target_indices.shape
        frustum = None
        if spatial_volume is not None:
            frustum = self.spatial_volume.construct_view_frustum_volume(spatial_volume, t_embed, cond.view_embed,
                                                                        self.poses, self.Ks, target_indices)
        rows = torch.arange(B, device=target_indices.device)[:, None]
        tokens = cond.clip_tokens[rows, target_indices].reshape(B * TN, 1, -1)
        concat = cond.input_latent.repeat_interleave(TN, 0)
        return frustum, tokens, concat

    def denoise_views(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition, target_indices: torch.Tensor,
                      spatial_volume: torch.Tensor, t_embed: torch.Tensor, cfg_scale: float = 1.0,
                      drop_conditions: bool = False) -> torch.Tensor:
        """eps of the target views: x_t (B, N, 4, h, w) (all views), target_indices (B, TN) -> (B, TN, 4, h, w)."""
        B, TN = target_indices.shape
        rows = torch.arange(B, device=target_indices.device)[:, None]
        x = x_t[rows, target_indices].reshape(B * TN, *x_t.shape[2:])
        frustum, tokens, concat = self.target_view_inputs(spatial_volume, t_embed, cond, target_indices)
        tt = t.repeat_interleave(TN, 0)
        if cfg_scale != 1.0:
            eps = self.model.forward_cfg(x, tt, tokens, frustum, concat, cfg_scale)
        else:
            eps = self.model(x, tt, tokens, frustum, concat, drop_conditions=drop_conditions)
        if self.prediction_type == "v":  # the UNet predicted v = a eps - b x0; eps = a v + b x_t (exact, a^2 + b^2 = 1)
            shape = (-1,) + (1,) * (x.dim() - 1)
            a, b = self.sqrt_alphas_cumprod[tt].view(shape), self.sqrt_one_minus_alphas_cumprod[tt].view(shape)
            eps = (a * eps.float() + b * x.float()).to(eps.dtype)
        return eps.reshape(B, TN, *eps.shape[1:])

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition, cfg_scale: float = 1.0,
                    batch_view_num: int | None = None) -> torch.Tensor:
        """eps for all N views: x_t (B, N, 4, h, w), t (B,) -> (B, N, 4, h, w).

        One spatial volume per call; views go through the UNet in chunks of ``batch_view_num`` (memory knob).
        Runs in :attr:`precision` (see :meth:`set_precision`); eps is returned in float32.
        """
        cond = self.complete(cond)
        B, N = x_t.shape[:2]
        with autocast_or_null(x_t.device, PRECISIONS[self.precision]):
            t_embed = self.embed_time(t)
            volume = self.spatial_volume_for(x_t, t, cond, t_embed)
            chunk = batch_view_num or N
            out = []
            for start in range(0, N, chunk):
                idx = torch.arange(start, min(start + chunk, N), device=x_t.device).unsqueeze(0).expand(B, -1)
                out.append(self.denoise_views(x_t, t, cond, idx, volume, t_embed, cfg_scale))
        return torch.cat(out, 1).float()
