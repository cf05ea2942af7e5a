"""Image metrics of the benchmark protocol: PSNR, SSIM and LPIPS (VGG) on views composited on white.

Protocol (spec 5.2, ``experiments/protocol.md``): for each of the 16 views compare ground truth and
prediction as RGB in [0, 1] after alpha-compositing on white; PSNR from the mean squared error of all
pixels of a view, SSIM = ``torchmetrics`` ``structural_similarity_index_measure`` with its defaults, LPIPS
with the VGG network on [-1, 1]; each metric is averaged over the views (view 0, the input viewpoint,
included).

LPIPS goes through the ``lpips`` package. Its VGG backbone needs torchvision's ImageNet VGG-16 weights
``vgg16-397923af.pth`` in ``<torch hub dir>/checkpoints/`` (``torch.hub.get_dir()``, usually
``~/.cache/torch/hub``); the linear calibration weights ship inside the ``lpips`` package. Nothing is
downloaded: a missing file raises :class:`MissingWeightsError` naming the file and the folder.
``pretrained=False`` builds LPIPS with a random backbone and random linear layers (tests).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from ..imaging import composite_on_white

__all__ = ["MissingWeightsError", "composite_on_white", "to_unit_rgb", "psnr", "ssim", "LPIPSMetric",
           "VGG16_WEIGHTS"]

VGG16_WEIGHTS = "vgg16-397923af.pth"


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights are not on disk (the message names the file and where it goes)."""


def to_unit_rgb(images) -> torch.Tensor:
    """Views as a float tensor (N, 3, H, W) in [0, 1] composited on white.

    Accepts uint8 or float numpy/torch arrays (N, H, W, C) with C in {3, 4} (floats must be in [0, 1])."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.ndim != 4 or x.shape[-1] not in (3, 4):
        raise ValueError(f"expected views (N, H, W, 3|4), got shape {tuple(x.shape)}")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.min() < -1e-6 or x.max() > 1 + 1e-6:
        raise ValueError("float views must be in [0, 1]")
    return composite_on_white(x).permute(0, 3, 1, 2).contiguous()


def _pair(pred, gt):
    p, g = to_unit_rgb(pred), to_unit_rgb(gt)
    if p.shape != g.shape:
        raise ValueError(f"predicted views {tuple(p.shape)} and ground truth {tuple(g.shape)} differ in shape "
                         "(N, 3, H, W)")
    return p, g


def psnr(pred, gt) -> np.ndarray:
    """Per-view PSNR (N,) in dB of views (N, H, W, 3|4) in [0, 1]; ``inf`` for identical views."""
    p, g = _pair(pred, gt)
    mse = ((p.double() - g.double()) ** 2).flatten(1).mean(1)
    with np.errstate(divide="ignore"):
        return (10 * np.log10(1.0 / mse.numpy())).astype(np.float64)


def ssim(pred, gt, data_range: float | None = None) -> np.ndarray:
    """Per-view SSIM (N,) with torchmetrics defaults (Gaussian 11x11, sigma 1.5; ``data_range=None``
    lets torchmetrics infer it from the data, as the official evaluation does)."""
    p, g = _pair(pred, gt)
    out = [structural_similarity_index_measure(p[i:i + 1], g[i:i + 1], data_range=data_range)
           for i in range(len(p))]
    return torch.stack(out).double().numpy()


class LPIPSMetric:
    """LPIPS-VGG of the ``lpips`` package on views composited on white, mapped to [-1, 1].

    Args:
        pretrained: True -> the published LPIPS (ImageNet VGG-16 + calibrated linear layers, read from
            disk only); False -> random backbone and random linear layers (reproducible with
            ``torch.manual_seed`` before construction), for tests.
        device: torch device for the network.
        batch_size: views per forward pass.
    """

    def __init__(self, pretrained: bool = True, device: str | torch.device = "cpu", batch_size: int = 4):
        import lpips

        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        if pretrained:
            ckpt = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_WEIGHTS
            if not ckpt.is_file():
                raise MissingWeightsError(
                    f"LPIPS-VGG needs torchvision's ImageNet VGG-16 weights: put {VGG16_WEIGHTS} in "
                    f"{ckpt.parent}/ (or set TORCH_HOME), or use lpips.pretrained=false for a random backbone")
            lin = Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"
            if not lin.is_file():
                raise MissingWeightsError(f"LPIPS linear weights missing: reinstall the lpips package ({lin})")
            self.net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=False, verbose=False)
        else:
            self.net = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False)
        self.net = self.net.to(self.device).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def per_view(self, pred, gt) -> np.ndarray:
        """Per-view LPIPS (N,) of views (N, H, W, 3|4) in [0, 1]."""
        p, g = _pair(pred, gt)
        out = []
        for i in range(0, len(p), self.batch_size):
            a = p[i:i + self.batch_size].to(self.device) * 2 - 1
            b = g[i:i + self.batch_size].to(self.device) * 2 - 1
            out.append(self.net(a, b).flatten().double().cpu())
        return torch.cat(out).numpy()

    def __call__(self, pred, gt) -> float:
        """Mean LPIPS over the views."""
        return float(self.per_view(pred, gt).mean())


def foreground_mask(views, white_threshold: float = 0.1) -> np.ndarray:
    """Foreground masks (N, H, W) bool of views (N, H, W, 3|4): alpha > 0.5 for RGBA, else the pixels whose
    darkest channel is more than ``white_threshold`` below white (views composited on white)."""
    x = np.asarray(views)
    x = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    if x.ndim != 4 or x.shape[-1] not in (3, 4):
        raise ValueError(f"expected views (N, H, W, 3|4), got shape {x.shape}")
    if x.shape[-1] == 4:
        return x[..., 3] > 0.5
    return x.min(-1) < 1.0 - white_threshold


def foreground_psnr(pred, gt, white_threshold: float = 0.1) -> np.ndarray:
    """Per-view PSNR (N,) in dB over the ground truth's foreground pixels only (:func:`foreground_mask`; its
    alpha for RGBA), both composited on white: the object's colours, which the white background dominates in
    :func:`psnr` (a model that greys every colour scores well there). ``nan`` where the GT mask is empty,
    ``inf`` for identical foregrounds."""
    p, g = _pair(pred, gt)
    mask = torch.as_tensor(foreground_mask(gt, white_threshold))
    if mask.shape != p.shape[:1] + p.shape[2:]:
        raise ValueError(f"ground-truth mask {tuple(mask.shape)} does not match the views {tuple(p.shape)}")
    se = ((p.double() - g.double()) ** 2).mean(1) * mask
    count = mask.flatten(1).sum(1)
    mse = (se.flatten(1).sum(1) / count.clamp(min=1)).numpy()
    with np.errstate(divide="ignore"):
        out = 10 * np.log10(1.0 / mse)
    return np.where(count.numpy() > 0, out, np.nan).astype(np.float64)


def mask_iou(pred, gt, white_threshold: float = 0.1) -> np.ndarray:
    """Per-view foreground-mask IoU (N,) of predicted views against ground truth (N, H, W, 3|4).

    The prediction's mask comes from its pixels composited on white (alpha is ignored, so a generator's
    own segmentation does not count); the ground truth's from its alpha (:func:`foreground_mask`).
    Two empty masks give IoU 1."""
    p = to_unit_rgb(pred).permute(0, 2, 3, 1).numpy()
    g = np.asarray(gt)
    if p.shape[:3] != g.shape[:3]:
        raise ValueError(f"predicted views {p.shape[:3]} and ground truth {g.shape[:3]} differ in (N, H, W)")
    pm, gm = foreground_mask(p, white_threshold), foreground_mask(g, white_threshold)
    inter = (pm & gm).reshape(len(pm), -1).sum(1)
    union = (pm | gm).reshape(len(pm), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)
