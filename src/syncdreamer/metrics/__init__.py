"""Image and geometry metrics and the benchmark protocol.

* :mod:`.image` -- PSNR, SSIM (torchmetrics), LPIPS-VGG (``lpips`` package) on views composited on white.
* :mod:`.geometry` -- Chamfer (voxel 0.01, Euclidean, symmetric mean), Volume IoU (official: mesh2sdf 64^3
  over [-1, 1]^3; exact: ours), F-score.
* :mod:`.protocol` -- GSO object list and rotation table, prediction layouts, per-sample evaluation, reports.
* :mod:`.benchmark` -- the ``evaluate.py`` driver (generate hook, reconstruct, CSV / markdown / W&B).
"""
from .geometry import GeometryError, chamfer_distance, fscore, volume_iou
from .image import LPIPSMetric, MissingWeightsError, psnr, ssim

__all__ = ["GeometryError", "chamfer_distance", "fscore", "volume_iou", "LPIPSMetric", "MissingWeightsError",
           "psnr", "ssim"]
