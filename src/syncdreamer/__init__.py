"""SyncDreamer: single image (or text) to multiview-consistent images to 3D.

Subpackages, each found by its name: ``cameras`` (the one camera convention), ``models`` (plain
``nn.Module``s), ``diffusion`` (schedule, loss, synchronized sampler), ``checkpoints`` (official
checkpoint loading), ``data``, ``systems`` (LightningModules), ``pipelines``, ``recon``, ``metrics``.
"""

__version__ = "0.1.0"
